//! The distlock-api conformance suite against a real PostgreSQL started by distlock-testkit.

use std::sync::Arc;
use std::time::Duration;

use distlock_api::conformance::{Config, Fixture};
use distlock_postgres::PgLockOptions;

async fn postgres() -> Fixture {
    let url = tokio::task::spawn_blocking(distlock_testkit::database_url)
        .await
        .expect("the testkit task")
        .expect("a PostgreSQL database for the tests");
    // distinct_names_are_distinct_locks holds some 45 locks at once, and
    // every held lock pins a connection.
    let options = PgLockOptions::new().max_connections(64);
    let lock = options.clone().connect(&url).await.expect("connect");
    let other = options
        .connect(&url)
        .await
        .expect("connect a second client");
    Fixture::new(Arc::new(lock), Arc::new(other)).with_config(Config {
        // The server ends a holder's session once it has been idle for the
        // TTL (idle_session_timeout), so expiry is real, not client-side.
        ttl_enforced_by_server: true,
        // Renewal runs at ttl/3; 600 ms leaves 200 ms between extends, which
        // a loaded two-core machine keeps up with.
        short_ttl: Duration::from_millis(600),
        ..Config::default()
    })
}

distlock_api::conformance_tests!(postgres);
