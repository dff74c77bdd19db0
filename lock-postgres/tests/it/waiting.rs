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
    for strategy in [WaitStrategy::Queue, WaitStrategy::Notify] {
        woken_by_the_release(strategy).await;
    }
}

async fn woken_by_the_release(strategy: WaitStrategy) {
    let url = database_url().await;
    let holder = client(&url, &app_name("holder"), PgLockOptions::new()).await;
    let app = app_name("woken");
    let options = PgLockOptions::new().backoff(SLOW).wait_strategy(strategy);
    let waiting = client(&url, &app, options).await;
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
        eprintln!(
            "{strategy:?} round {round}: hand-off in {:?}",
            granted - released
        );
        next.release().await.expect("ours");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_losing_its_session() {
    let url = database_url().await;
    let holder = client(&url, &app_name("holder2"), PgLockOptions::new()).await;
    let app = app_name("relisten");
    let options = PgLockOptions::new()
        .backoff(SLOW)
        .wait_strategy(WaitStrategy::Notify);
    let waiting = client(&url, &app, options).await;
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

/// Shared advisory locks in the two-`int4` key space (PostgreSQL's
/// `objsubid = 2`) on `key`'s halves: a waiting client's interest.
async fn interest_in(observer: &mut sqlx::PgConnection, key: i64) -> i64 {
    advisory_locks_on(
        observer,
        key,
        "objsubid = 2 AND mode = 'ShareLock' AND granted",
    )
    .await
}

/// Rows of `pg_locks` on `key`'s two halves (either key space) that match
/// `filter`.
async fn advisory_locks_on(observer: &mut sqlx::PgConnection, key: i64, filter: &str) -> i64 {
    let bits = key as u64;
    let sql = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND {filter} \
           AND classid::int8 = $1 AND objid::int8 = $2"
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind((bits >> 32) as i64)
        .bind((bits & 0xffff_ffff) as i64)
        .fetch_one(observer)
        .await
        .expect("pg_locks")
}

/// The payloads of the notifications on `listener` before `sentinel`,
/// which the caller has sent after everything it wants to see: the
/// notifications of earlier commits arrive before it.
async fn notifications_before(
    listener: &mut sqlx::postgres::PgListener,
    observer: &mut sqlx::PgConnection,
    channel: &str,
    sentinel: &str,
) -> Vec<String> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(sentinel)
        .execute(observer)
        .await
        .expect("notify");
    let mut seen = Vec::new();
    loop {
        let notification = within(PROMPT, "the sentinel notification", listener.recv())
            .await
            .expect("recv");
        if notification.payload() == sentinel {
            return seen;
        }
        seen.push(notification.payload().to_owned());
    }
}

/// A release announces itself with `NOTIFY` only when some client waits for
/// the key: not after `try_acquire`, not after an uncontended `acquire`,
/// and not once the waiter has gone — but at once when one waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_notifies_only_when_someone_waits() {
    let url = database_url().await;
    let channel = format!("quiet_{:x}", rand::random::<u32>());
    let options = || {
        PgLockOptions::new()
            .notify_channel(&channel)
            .wait_strategy(WaitStrategy::Notify)
    };
    let holder = client(&url, &app_name("quiet-holder"), options()).await;
    let app = app_name("quiet-waiter");
    let waiting = client(&url, &app, options().backoff(SLOW)).await;
    let name = common::name("quiet");
    let key = holder.key(&name);
    let mut outside = observer(&url).await;
    let mut listener = sqlx::postgres::PgListener::connect(&url)
        .await
        .expect("listener");
    listener.listen(&channel).await.expect("listen");

    // Nobody waits: no NOTIFY.
    let guard = holder
        .try_acquire(&name, TTL)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("ours");
    let guard = holder
        .acquire(&name, TTL, Duration::from_secs(5))
        .await
        .expect("free");
    guard.release().await.expect("ours");
    let seen = notifications_before(&mut listener, &mut outside, &channel, "s1").await;
    assert!(
        seen.is_empty(),
        "releases nobody waited for notified: {seen:?}"
    );
    assert_eq!(interest_in(&mut outside, key).await, 0);

    // A waiter in another client: its interest is on the server before it
    // sleeps, and the release notifies (the 60 s backoff rules out polling).
    let guard = holder
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let task = waiter(&waiting, &name).await;
    common::eventually(Duration::from_secs(5), "the waiter's interest", || async {
        interest_in(&mut observer(&url).await, key).await == 1
    })
    .await;
    guard.release().await.expect("ours");
    let (next, _) = within(PROMPT, "the woken waiter", task)
        .await
        .expect("task")
        .expect("acquire");
    next.release().await.expect("ours");
    let seen = notifications_before(&mut listener, &mut outside, &channel, "s2").await;
    assert!(
        seen.contains(&key.to_string()),
        "the release the waiter waited for did not notify: {seen:?}"
    );

    // The waiter has gone: its interest goes too, and releases are quiet again.
    common::eventually(Duration::from_secs(5), "interest given up", || async {
        interest_in(&mut observer(&url).await, key).await == 0
    })
    .await;
    let guard = holder
        .try_acquire(&name, TTL)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("ours");
    let seen = notifications_before(&mut listener, &mut outside, &channel, "s3").await;
    assert!(
        seen.is_empty(),
        "a release after the waiter left notified: {seen:?}"
    );
}

/// Lock requests of the server's queue (`pg_advisory_lock`) not yet granted,
/// on `key`.
async fn queued_on(observer: &mut sqlx::PgConnection, key: i64) -> i64 {
    advisory_locks_on(observer, key, "objsubid = 1 AND NOT granted").await
}

/// With [`WaitStrategy::Queue`] waiters of different clients wait in the
/// server's lock queue: they get the lock in the order they arrived, and
/// one whose deadline comes gives up at it with `Timeout`, its blocked
/// connection closed (so nothing of it is left in the queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_waiters_are_served_in_arrival_order_and_leave_at_their_deadline() {
    let url = database_url().await;
    let name = common::name("queue");
    let mut clients = Vec::new();
    for i in 0..4 {
        let options = PgLockOptions::new().backoff(SLOW);
        clients.push(client(&url, &app_name(&format!("queue{i}")), options).await);
    }
    let key = clients[0].key(&name);
    let guard = clients[0]
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");

    // One waiter whose deadline comes first: it leaves the queue with Timeout.
    let started = Instant::now();
    let err = clients[3]
        .acquire(&name, TTL, Duration::from_millis(300))
        .await
        .expect_err("held");
    assert!(
        matches!(err, distlock_postgres::LockError::Timeout),
        "{err}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(300),
        "gave up early: {waited:?}"
    );
    // Its connection was closed; the server ends the session at the latest
    // when its lock_timeout, just past the deadline, runs out.
    common::eventually(Duration::from_secs(5), "its request gone", || async {
        queued_on(&mut observer(&url).await, key).await == 0
    })
    .await;

    // Two waiters, queued one after the other, served in that order.
    let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, locks) in clients[1..3].iter().enumerate() {
        let (locks, name, order_tx) = (locks.clone(), name.clone(), order_tx.clone());
        tasks.push(tokio::spawn(async move {
            let guard = locks.acquire(&name, TTL, Duration::from_secs(30)).await?;
            order_tx.send(i).expect("send");
            tokio::time::sleep(Duration::from_millis(20)).await;
            guard.release().await
        }));
        let queued = i as i64 + 1;
        common::eventually(
            Duration::from_secs(5),
            "the waiter in the queue",
            || async { queued_on(&mut observer(&url).await, key).await == queued },
        )
        .await;
    }
    guard.release().await.expect("ours");
    for task in tasks {
        within(Duration::from_secs(5), "the queued waiters", task)
            .await
            .expect("task")
            .expect("acquire and release");
    }
    assert_eq!(order.recv().await, Some(0));
    assert_eq!(order.recv().await, Some(1));
}
