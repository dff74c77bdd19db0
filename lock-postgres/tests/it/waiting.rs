//! Waiting: with `NOTIFY` wake-ups a waiter in another client gets a
//! released lock at once (not when its backoff ends), also after its
//! listener lost its connection; with polling there is no listener at all.

use crate::common;

use std::time::{Duration, Instant};

use common::{app_name, client, database_url, observer, terminate, within};
use distlock_postgres::distlock_api::Backoff;
use distlock_postgres::sqlx;
use distlock_postgres::{DistributedLock, PgLockOptions, WaitStrategy};

const TTL: Duration = Duration::from_secs(30);

/// Backoff so long that only a wake-up explains a prompt hand-off.
const SLOW: Backoff = Backoff {
    initial: Duration::from_secs(60),
    max: Duration::from_secs(60),
};

/// How soon after a release a woken waiter must hold the lock.
const PROMPT: Duration = Duration::from_secs(1);

/// Starts a waiter on `name` and returns once it is waiting (its first
/// attempt found the lock held).
async fn waiter(
    locks: &distlock_postgres::PgAdvisoryLock,
    name: &str,
) -> tokio::task::JoinHandle<
    Result<(distlock_postgres::LockGuard, Instant), distlock_postgres::LockError>,
> {
    let (locks, name) = (locks.clone(), name.to_owned());
    tokio::spawn(async move {
        let guard = locks.acquire(&name, TTL, Duration::from_secs(30)).await?;
        Ok((guard, Instant::now()))
    })
}

/// The listening session of clients named `app`, once it listens
/// (polled: the server has no event for a session starting to listen).
async fn listener_pid(url: &str, app: &str) -> i32 {
    let listener = format!("{app}-listener");
    let mut db = observer(url).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND query ILIKE 'LISTEN%'",
        )
        .bind(&listener)
        .fetch_optional(&mut db)
        .await
        .expect("query");
        if let Some(pid) = found {
            return pid;
        }
        assert!(Instant::now() < deadline, "no listener session after 5 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_in_another_client_is_woken_by_the_release() {
    let url = database_url().await;
    let holder = client(&url, &app_name("holder"), PgLockOptions::new()).await;
    let app = app_name("woken");
    let waiting = client(&url, &app, PgLockOptions::new().backoff(SLOW)).await;
    let name = common::name("woken");

    for round in 0..3 {
        let guard = holder
            .acquire(&name, TTL, Duration::ZERO)
            .await
            .expect("free");
        let task = waiter(&waiting, &name).await;
        // The waiter listens before its first attempt; give that attempt a
        // moment, so the release below finds it asleep in its 60 s backoff
        // (if it has not tried yet, it simply gets the lock when it does).
        listener_pid(&url, &app).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let released = Instant::now();
        guard.release().await.expect("ours");
        let (next, granted) = within(PROMPT, "the woken waiter", task)
            .await
            .expect("task")
            .expect("acquire");
        eprintln!("round {round}: hand-off in {:?}", granted - released);
        next.release().await.expect("ours");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_losing_its_session() {
    let url = database_url().await;
    let holder = client(&url, &app_name("holder2"), PgLockOptions::new()).await;
    let app = app_name("relisten");
    let waiting = client(&url, &app, PgLockOptions::new().backoff(SLOW)).await;
    let mut outside = observer(&url).await;
    let name = common::name("relisten");

    // Start the listener, then kill its session.
    let guard = holder
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let task = waiter(&waiting, &name).await;
    let first = listener_pid(&url, &app).await;
    terminate(&mut outside, first).await;
    // A new listening session appears...
    common::eventually(Duration::from_secs(5), "a new listener session", || async {
        listener_pid(&url, &app).await != first
    })
    .await;
    // ...and wakes the waiter on the next release.
    let released = Instant::now();
    guard.release().await.expect("ours");
    let (next, granted) = within(PROMPT, "the woken waiter after a reconnect", task)
        .await
        .expect("task")
        .expect("acquire");
    eprintln!("hand-off after reconnect in {:?}", granted - released);
    next.release().await.expect("ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_needs_no_listener() {
    let url = database_url().await;
    let app = app_name("poll");
    let holder = client(&url, &app_name("holder3"), PgLockOptions::new()).await;
    let polling = client(
        &url,
        &app,
        PgLockOptions::new().wait_strategy(WaitStrategy::Poll),
    )
    .await;
    let name = common::name("poll");
    let guard = holder
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let task = waiter(&polling, &name).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await.expect("ours");
    // Backoff is capped at 100 ms by default.
    let (next, _) = within(PROMPT, "the polling waiter", task)
        .await
        .expect("task")
        .expect("acquire");
    next.release().await.expect("ours");
    let listeners: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(format!("{app}-listener"))
            .fetch_one(&mut observer(&url).await)
            .await
            .expect("query");
    assert_eq!(listeners, 0, "a polling client opened a listener");
}
