//! What the integration tests share: databases from distlock-testkit, clients
//! with a recognisable application name, and queries that look at the
//! server's view of our sessions and locks.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use distlock_postgres::sqlx::{self, Connection, PgConnection};
use distlock_postgres::{PgAdvisoryLock, PgLockOptions};

/// A fresh database on the shared test server (or `$DATABASE_URL`).
pub async fn database_url() -> String {
    tokio::task::spawn_blocking(distlock_testkit::database_url)
        .await
        .expect("the testkit task")
        .expect("a PostgreSQL database for the tests")
}

/// A unique application name, so a test can find its own sessions.
pub fn app_name(test: &str) -> String {
    format!("t-{test}-{:08x}", rand::random::<u32>())
}

/// A client whose connections carry `app` as their application name.
pub async fn client(url: &str, app: &str, options: PgLockOptions) -> PgAdvisoryLock {
    options
        .application_name(app)
        .connect(url)
        .await
        .expect("connect")
}

/// A plain connection for looking at the server from outside.
pub async fn observer(url: &str) -> PgConnection {
    PgConnection::connect(url)
        .await
        .expect("an observer connection")
}

/// Advisory locks held by sessions named `app`.
pub async fn advisory_locks_of(observer: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
         WHERE l.locktype = 'advisory' AND a.application_name = $1",
    )
    .bind(app)
    .fetch_one(observer)
    .await
    .expect("count advisory locks")
}

/// Sessions named `app`.
pub async fn sessions_of(observer: &mut PgConnection, app: &str) -> Vec<i32> {
    sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid")
        .bind(app)
        .fetch_all(observer)
        .await
        .expect("list sessions")
}

/// The pid of the session of `app` that holds advisory key `key`.
pub async fn holder_pid(observer: &mut PgConnection, key: i64) -> Option<i32> {
    let bits = key as u64;
    sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
         AND classid = $1::oid AND objid = $2::oid",
    )
    .bind((bits >> 32) as i64)
    .bind((bits & 0xffff_ffff) as i64)
    .fetch_optional(observer)
    .await
    .expect("find the holder")
}

/// Ends a session from outside, as an administrator or a pooler would.
pub async fn terminate(observer: &mut PgConnection, pid: i32) {
    let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
        .bind(pid)
        .fetch_one(observer)
        .await
        .expect("pg_terminate_backend");
    assert!(done, "session {pid} did not end within 5 s");
}

/// Polls `check` every 10 ms until it holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: still not true after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `future`, failing the test if it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// A unique lock name.
pub fn name(test: &str) -> String {
    format!("{test}:{:016x}", rand::random::<u64>())
}
