//! `with_lock` when the lock is taken away behind the holder's back while
//! the closure runs, on every backend (the suite's
//! `with_lock_reports_lost_lock`, fed a hook that takes the lock on the
//! server): Redis, Redis Cluster and Redlock delete the lock key with a raw
//! connection; PostgreSQL terminates the holding session. The in-memory
//! backend runs the same check in distlock-api's own tests.
//!
//! The TTL is long (30 s), so renewal never asks the server before the
//! closure ends: only the final release can tell that the work overlapped
//! another holder, and `with_lock` must then say `Lost`, not `Ok`.

use std::sync::Arc;

use distlock::postgres::PgAdvisoryLock;
use distlock::redis::{DEFAULT_PREFIX, RedisLock, redis};
use distlock_api::DistributedLock;
use distlock_api::conformance::{self, Config};
use distlock_testkit::{RedisCluster, RedisServer};
use sqlx::Connection;

/// The lock key of `name` under the default prefix (distlock-redis' `keys.rs`).
fn redis_lock_key(name: &str) -> String {
    let escaped = name.replace('%', "%25").replace('}', "%7D");
    format!("{DEFAULT_PREFIX}{{{escaped}}}")
}

/// Deletes `key` on the server at `url` with a plain connection of its own.
async fn delete_key(url: &str, key: &str) -> bool {
    let client = redis::Client::open(url).expect("a redis URL");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("a raw redis connection");
    let deleted: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    deleted == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_deleted_under_with_lock() {
    let url = distlock_testkit::redis_url().expect("a redis-server for the tests");
    let lock = RedisLock::connect(&url).await.expect("connect");
    let other = RedisLock::connect(&url)
        .await
        .expect("connect a second client");
    conformance::with_lock_reports_lost_lock(
        &lock,
        &other,
        &Config::default(),
        |name| async move {
            let key = redis_lock_key(&name);
            assert!(
                delete_key(&url, &key).await,
                "the lock key {key} exists while held"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_key_deleted_under_with_lock() {
    let cluster = RedisCluster::shared().expect("a redis cluster for the tests");
    let lock = RedisLock::connect(&cluster.cluster_url())
        .await
        .expect("connect");
    let other = RedisLock::connect(&cluster.cluster_url())
        .await
        .expect("connect a second client");
    conformance::with_lock_reports_lost_lock(
        &lock,
        &other,
        &Config::default(),
        |name| async move {
            let key = redis_lock_key(&name);
            let node = cluster
                .node_for_slot(RedisCluster::key_slot(&key))
                .expect("the slot's master");
            let url = cluster.masters()[node].url();
            assert!(
                delete_key(&url, &key).await,
                "the lock key {key} exists on its master"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_key_deleted_under_with_lock() {
    let nodes = RedisServer::start_several(3).expect("three redis-servers");
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let lock = RedisLock::options()
        .connect_redlock(&urls)
        .await
        .expect("connect the Redlock");
    let other = RedisLock::options()
        .connect_redlock(&urls)
        .await
        .expect("connect a second Redlock client");
    conformance::with_lock_reports_lost_lock(
        &lock,
        &other,
        &Config::default(),
        |name| async move {
            let key = redis_lock_key(&name);
            let mut deleted = 0;
            for url in &urls {
                deleted += usize::from(delete_key(url, &key).await);
            }
            // A grant needs a majority; one node may have missed it.
            assert!(
                deleted >= 2,
                "the lock key {key} was on only {deleted} of 3 nodes"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_session_terminated_under_with_lock() {
    let url = tokio::task::spawn_blocking(distlock_testkit::database_url)
        .await
        .expect("the testkit task")
        .expect("a PostgreSQL database for the tests");
    let lock = PgAdvisoryLock::connect(&url).await.expect("connect");
    let other = PgAdvisoryLock::connect(&url)
        .await
        .expect("connect a second client");
    let lock: Arc<dyn DistributedLock> = Arc::new(lock);
    conformance::with_lock_reports_lost_lock(
        &*lock,
        &other,
        &Config::default(),
        |name| async move {
            let mut observer = sqlx::PgConnection::connect(&url)
                .await
                .expect("an observer connection");
            let key = distlock::postgres::lock_key(&name);
            let bits = key as u64;
            let pid: i32 = sqlx::query_scalar(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND classid = $1::oid AND objid = $2::oid",
            )
            .bind((bits >> 32) as i64)
            .bind((bits & 0xffff_ffff) as i64)
            .fetch_one(&mut observer)
            .await
            .expect("the holding session is in pg_locks");
            let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                .bind(pid)
                .fetch_one(&mut observer)
                .await
                .expect("pg_terminate_backend");
            assert!(done, "the holding session {pid} did not end within 5 s");
        },
    )
    .await;
}
