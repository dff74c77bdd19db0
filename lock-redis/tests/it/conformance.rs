//! The distlock-api conformance suite against a real redis-server.

use std::sync::Arc;

use distlock_api::conformance::Fixture;
use distlock_redis::RedisLock;

async fn redis() -> Fixture {
    let url = distlock_testkit::redis_url().expect("a redis-server for the tests");
    let lock = RedisLock::connect(&url).await.expect("connect");
    let other = RedisLock::connect(&url)
        .await
        .expect("connect a second client");
    Fixture::new(Arc::new(lock), Arc::new(other))
}

distlock_api::conformance_tests!(redis);
