//! The TTL is enforced by the server: a holder that goes silent — frozen,
//! or cut off by the network — has its session ended by PostgreSQL
//! (`idle_session_timeout`) once the TTL has passed, which frees the lock.
//! A released connection gets its default timeout back before it is reused.

use crate::common;

use std::time::{Duration, Instant};

use common::{app_name, client, database_url, holder_pid, observer, sessions_of, within};
use distlock_postgres::{DistributedLock, PgAdvisoryLock, PgLockOptions};
use distlock_testkit::LinkProxy;

/// How late the server may free a lock after its TTL on a loaded machine.
const SLACK: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_loses_its_lock_to_the_server() {
    let url = database_url().await;
    let locks = client(&url, &app_name("frozen"), PgLockOptions::new()).await;
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut outside = observer(&url).await;
    let ttl = Duration::from_millis(700);

    let name = common::name("frozen");
    // Acquired, then neither extended nor released: as if the process froze.
    let guard = locks
        .acquire(&name, ttl, Duration::ZERO)
        .await
        .expect("free");
    let acquired = Instant::now();
    let pid = holder_pid(&mut outside, locks.key(&name))
        .await
        .expect("held");

    let next = other
        .acquire(&name, Duration::from_secs(30), ttl + SLACK)
        .await
        .expect("the server frees a silent holder's lock after its TTL");
    let freed_after = acquired.elapsed();
    assert!(
        freed_after >= ttl - Duration::from_millis(50),
        "freed after only {freed_after:?}, before the TTL of {ttl:?}"
    );
    assert!(next.fencing_token() > guard.fencing_token());
    let sessions: Vec<i32> =
        distlock_postgres::sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE pid = $1")
            .bind(pid)
            .fetch_all(&mut outside)
            .await
            .expect("query");
    assert!(
        sessions.is_empty(),
        "the frozen holder's session {pid} is still there"
    );

    // The frozen guard wakes up: its lock is gone.
    assert!(guard.is_lost());
    let err = guard
        .release()
        .await
        .expect_err("the server ended the session");
    assert!(err.is_lost(), "{err}");
    next.release()
        .await
        .expect("the new holder's lock is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_holder_loses_its_lock_and_finds_out() {
    let url = database_url().await;
    let (server, database) = {
        let rest = url.split_once('@').expect("user@host").1;
        let (addr, db) = rest.split_once('/').expect("host/db");
        (addr.parse().expect("an address"), db.to_owned())
    };
    let proxy = LinkProxy::start(server).expect("a proxy");
    let behind = format!("postgres://postgres@{}/{database}", proxy.addr());
    let query_timeout = Duration::from_millis(500);
    let locks = PgLockOptions::new()
        .query_timeout(query_timeout)
        .connect(&behind)
        .await
        .expect("connect through the proxy");
    let other = PgAdvisoryLock::connect(&url)
        .await
        .expect("connect directly");
    let ttl = Duration::from_millis(800);

    let name = common::name("partition");
    let mut guard = locks
        .acquire(&name, ttl, Duration::ZERO)
        .await
        .expect("free");
    proxy.blackhole().expect("blackhole");
    let cut = Instant::now();

    // The server hears nothing more from the holder and ends its session.
    let next = other
        .acquire(&name, Duration::from_secs(30), ttl + SLACK)
        .await
        .expect("the server frees a partitioned holder's lock after its TTL");
    eprintln!("freed {:?} after the partition", cut.elapsed());

    // The holder learns it within the query timeout: no answer means Lost
    // (its connection is closed), never a hang.
    let started = Instant::now();
    let err = within(
        query_timeout + SLACK,
        "extend across a partition",
        guard.extend(ttl),
    )
    .await
    .expect_err("no answer");
    assert!(err.is_lost(), "{err}");
    assert!(started.elapsed() >= query_timeout);
    let err = guard.release().await.expect_err("lost");
    assert!(err.is_lost(), "{err}");
    next.release().await.expect("ours");
    proxy.restore().expect("restore");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_keeps_the_lock_on_the_server_past_its_first_ttl() {
    let url = database_url().await;
    let locks = client(&url, &app_name("extend"), PgLockOptions::new()).await;
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let ttl = Duration::from_millis(600);
    let name = common::name("extend");
    let mut guard = locks
        .acquire(&name, ttl, Duration::ZERO)
        .await
        .expect("free");
    let started = Instant::now();
    while started.elapsed() < ttl * 3 {
        tokio::time::sleep(ttl / 4).await;
        guard.extend(ttl).await.expect("still ours");
    }
    assert!(
        other.try_acquire(&name, ttl).await.expect("try").is_none(),
        "an extended lock was free after three TTLs"
    );
    guard.release().await.expect("ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_connections_go_back_without_the_lock_ttl() {
    let url = database_url().await;
    let app = app_name("reset");
    let locks = client(&url, &app, PgLockOptions::new().max_connections(1)).await;
    let mut outside = observer(&url).await;
    let ttl = Duration::from_millis(300);

    let guard = locks
        .acquire(&common::name("reset"), ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.release().await.expect("ours");
    let before = sessions_of(&mut outside, &app).await;
    assert_eq!(before.len(), 1, "one pooled connection");
    // Nothing happens for several TTLs: the pooled session must survive,
    // because release reset its idle_session_timeout in the same statement.
    tokio::time::sleep(ttl * 3).await;
    assert_eq!(sessions_of(&mut outside, &app).await, before);

    // And it is the one the next lock is taken on.
    let name = common::name("reset-again");
    let guard = locks
        .acquire(&name, ttl * 10, Duration::ZERO)
        .await
        .expect("free");
    assert_eq!(
        holder_pid(&mut outside, locks.key(&name)).await,
        Some(before[0])
    );
    guard.release().await.expect("ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttls_round_up_to_whole_milliseconds_and_have_a_ceiling() {
    let url = database_url().await;
    let locks = PgAdvisoryLock::connect(&url).await.expect("connect");
    let name = common::name("round");
    // 1.5 ms becomes 2 ms, never 1 ms (and never 0, which would disable it).
    let guard = locks
        .try_acquire(&name, Duration::from_micros(1500))
        .await
        .expect("a TTL of 1.5 ms is valid")
        .expect("free");
    drop(guard);
    let too_long = Duration::from_millis(i32::MAX as u64 + 1);
    let err = locks
        .try_acquire(&name, too_long)
        .await
        .expect_err("too long");
    assert!(
        matches!(err, distlock_postgres::LockError::InvalidTtl(_)),
        "{err}"
    );
    let longest = Duration::from_millis(i32::MAX as u64);
    let guard = within(
        Duration::from_secs(5),
        "acquire with the longest TTL",
        locks.acquire(&name, longest, Duration::from_secs(2)),
    )
    .await
    .expect("the longest TTL is valid");
    guard.release().await.expect("ours");
}
