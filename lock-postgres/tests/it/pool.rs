//! Connections and held locks: a full pool is reported as such, and no
//! connection that may hold a lock — after a drop, a cancelled release or a
//! cancelled acquire — ever goes back to the pool.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    advisory_locks_of, app_name, client, database_url, eventually, observer, sessions_of,
};
use distlock_postgres::sqlx::postgres::PgPoolOptions;
use distlock_postgres::{DistributedLock, LockError, PgAdvisoryLock, PgLockOptions, PoolExhausted};

const TTL: Duration = Duration::from_secs(30);
const SETTLE: Duration = Duration::from_secs(2);

fn exhausted(err: &LockError) -> &PoolExhausted {
    assert!(
        matches!(err, LockError::Connection(_)),
        "expected a Connection error, got {err}"
    );
    assert!(err.to_string().contains("pool exhausted"), "{err}");
    err.get_ref()
        .and_then(|source| source.downcast_ref::<PoolExhausted>())
        .unwrap_or_else(|| panic!("no PoolExhausted behind {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_full_of_held_locks_is_reported_as_exhausted() {
    let url = database_url().await;
    let app = app_name("exhausted");
    let options = PgLockOptions::new()
        .max_connections(2)
        .pool_timeout(Duration::from_millis(200));
    let locks = client(&url, &app, options).await;
    let mut outside = observer(&url).await;

    let first = locks
        .acquire("held:1", TTL, Duration::ZERO)
        .await
        .expect("free");
    let second = locks
        .acquire("held:2", TTL, Duration::ZERO)
        .await
        .expect("free");
    assert_eq!(locks.held_locks(), 2);

    // acquire waits its `wait`, not longer, and says why it failed.
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let err = locks
        .acquire("third", TTL, wait)
        .await
        .expect_err("no connection");
    let took = started.elapsed();
    let details = exhausted(&err);
    assert_eq!(
        *details,
        PoolExhausted {
            max_connections: 2,
            held_by_locks: 2
        }
    );
    assert!(
        err.to_string().contains("2 of them pinned by locks"),
        "{err}"
    );
    assert!(
        took >= wait - Duration::from_millis(5),
        "gave up after {took:?}"
    );
    assert!(took < wait + Duration::from_secs(1), "took {took:?}");

    // No wait: at once.
    let started = Instant::now();
    let err = locks
        .acquire("third", TTL, Duration::ZERO)
        .await
        .expect_err("no connection");
    exhausted(&err);
    assert!(started.elapsed() < Duration::from_millis(200));

    // try_acquire waits the pool timeout.
    let started = Instant::now();
    let err = locks
        .try_acquire("third", TTL)
        .await
        .expect_err("no connection");
    exhausted(&err);
    assert!(started.elapsed() >= Duration::from_millis(195));

    // A release frees a connection for a waiting acquire.
    let waiting = {
        let locks = locks.clone();
        tokio::spawn(async move { locks.acquire("third", TTL, Duration::from_secs(5)).await })
    };
    first.release().await.expect("ours");
    let third = waiting
        .await
        .expect("task")
        .expect("a connection came free");
    third.release().await.expect("ours");
    second.release().await.expect("ours");

    assert_eq!(locks.held_locks(), 0);
    assert_eq!(advisory_locks_of(&mut outside, &app).await, 0);
    assert!(sessions_of(&mut outside, &app).await.len() <= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_guards_leave_no_locked_connection_behind() {
    let url = database_url().await;
    let app = app_name("dropped");
    let locks = client(&url, &app, PgLockOptions::new().max_connections(4)).await;
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut outside = observer(&url).await;

    let names: Vec<String> = (0..4)
        .map(|i| format!("{}:{i}", common::name("dropped")))
        .collect();
    for round in 0..3 {
        let mut guards = Vec::new();
        for name in &names {
            let mut guard = locks
                .acquire(name, TTL, Duration::ZERO)
                .await
                .expect("free");
            if round == 1 {
                guard.auto_renew();
            }
            guards.push(guard);
        }
        drop(guards);
        for name in &names {
            let guard = other
                .acquire(name, TTL, SETTLE)
                .await
                .unwrap_or_else(|err| panic!("round {round}: {name} not freed by the drop: {err}"));
            guard.release().await.expect("ours");
        }
        eventually(SETTLE, "no advisory lock left on our sessions", || async {
            advisory_locks_of(&mut observer(&url).await, &app).await == 0
        })
        .await;
        assert_eq!(locks.held_locks(), 0);
    }
    assert!(sessions_of(&mut outside, &app).await.len() <= 4);
}

/// Cancel `release` and `acquire` at many points: afterwards no session of
/// ours holds an advisory lock (so no pooled connection does), the other
/// client gets every name, and ours keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_releases_and_acquires_never_pool_a_locked_connection() {
    let url = database_url().await;
    let app = app_name("cancel");
    let locks = client(&url, &app, PgLockOptions::new().max_connections(3)).await;
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut outside = observer(&url).await;
    let cancel_after = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(10),
        Duration::from_micros(50),
        Duration::from_micros(100),
        Duration::from_micros(200),
        Duration::from_micros(500),
        Duration::from_millis(1),
        Duration::from_millis(3),
    ];
    let name = common::name("cancel");

    for (case, after) in cancel_after.into_iter().enumerate() {
        for _ in 0..3 {
            let guard = locks
                .acquire(&name, TTL, Duration::from_secs(5))
                .await
                .expect("free");
            let _ = tokio::time::timeout(after, guard.release()).await;

            let outcome =
                tokio::time::timeout(after, locks.acquire(&name, TTL, Duration::from_secs(5)))
                    .await;
            if let Ok(result) = outcome {
                result.expect("acquire").release().await.expect("ours");
            }
            let outcome = tokio::time::timeout(after, locks.try_acquire(&name, TTL)).await;
            if let Ok(Ok(Some(guard))) = outcome {
                guard.release().await.expect("ours");
            }
        }
        let guard = other
            .acquire(&name, TTL, SETTLE)
            .await
            .unwrap_or_else(|err| panic!("case {case} ({after:?}): the name stayed locked: {err}"));
        guard.release().await.expect("ours");
        eventually(SETTLE, "no advisory lock left on our sessions", || async {
            advisory_locks_of(&mut observer(&url).await, &app).await == 0
        })
        .await;
    }
    // Every connection still in the pool is clean: take them all at once.
    let mut all = Vec::new();
    for i in 0..3 {
        all.push(
            locks
                .acquire(&format!("{name}:{i}"), TTL, SETTLE)
                .await
                .expect("a clean connection"),
        );
    }
    for guard in all {
        guard.release().await.expect("ours");
    }
    assert_eq!(advisory_locks_of(&mut outside, &app).await, 0);
    assert_eq!(locks.held_locks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_pool_can_be_shared() {
    let url = database_url().await;
    let app = app_name("shared-pool");
    let connect: distlock_postgres::sqlx::postgres::PgConnectOptions =
        url.parse().expect("connect options");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(connect.application_name(&app))
        .await
        .expect("a pool");
    let locks = PgAdvisoryLock::from_pool(pool.clone())
        .await
        .expect("from_pool");
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut outside = observer(&url).await;

    let name = common::name("shared");
    let guard = locks
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    assert!(other.try_acquire(&name, TTL).await.expect("try").is_none());
    let second = locks
        .acquire(&format!("{name}:2"), TTL, Duration::ZERO)
        .await
        .expect("free");
    let err = locks
        .acquire(&format!("{name}:3"), TTL, Duration::from_millis(200))
        .await
        .expect_err("both connections are pinned");
    exhausted(&err);
    guard.release().await.expect("ours");
    second.release().await.expect("ours");
    // Dropped without release: closed, not returned holding the lock.
    drop(
        locks
            .acquire(&name, TTL, Duration::from_secs(2))
            .await
            .expect("free"),
    );
    let guard = other
        .acquire(&name, TTL, SETTLE)
        .await
        .expect("freed by the drop");
    guard.release().await.expect("ours");
    eventually(
        SETTLE,
        "no advisory lock left on the shared pool",
        || async { advisory_locks_of(&mut observer(&url).await, &app).await == 0 },
    )
    .await;
    // The application's own queries still work on the pool.
    let one: i32 = distlock_postgres::sqlx::query_scalar("SELECT 1")
        .fetch_one(&pool)
        .await
        .expect("the shared pool still works");
    assert_eq!(one, 1);
    assert!(sessions_of(&mut outside, &app).await.len() <= 2);
}
