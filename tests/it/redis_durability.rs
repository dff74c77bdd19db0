//! Redis durability under `kill -9`: with `appendfsync always` a held lock
//! survives the crash with its TTL and is not granted twice, also when the
//! crash hits a contended run; without persistence the same crash can grant
//! it twice, and the history checker sees that — while the fencing token
//! still keeps the protected write single.

use crate::workload;

use std::sync::Arc;
use std::time::Duration;

use crate::ticket_booking::seat_log::{SeatAction, check_seat_log};
use distlock::redis::{RedisLock, redis};
use distlock_api::{DistributedLock, Instant};
use distlock_testkit::{Held, History, Outcome, RedisOptions, RedisServer};
use workload::{SeatStore, Workload, within};

const TTL: Duration = Duration::from_secs(10);
const NAME: &str = "seat:1";
/// The lock's key under the default prefix.
const KEY: &str = "distlock:{seat:1}";
const SEAT: i64 = 1;

async fn connect(url: &str) -> RedisLock {
    RedisLock::options()
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .connect(url)
        .await
        .expect("connect")
}

/// Waits until the lock's own connection answers again: an attempt on a
/// name of its own goes through (`connection()` would open a new one).
async fn reconnected(locks: &RedisLock) {
    within(Duration::from_secs(10), "reconnect", async {
        loop {
            let probe = locks
                .try_acquire("reconnected-probe", Duration::from_secs(10))
                .await;
            if let Ok(guard) = probe {
                if let Some(guard) = guard {
                    guard.release().await.expect("release the probe");
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Three holders one after another, each with an accepted fenced write,
/// then a fourth that keeps the lock after its write.
async fn warm_up(locks: &RedisLock, history: &History, seats: &SeatStore) -> Held {
    for client in 0..3 {
        let held = history
            .acquire(client, locks, NAME, TTL, Duration::ZERO)
            .await
            .expect("free");
        let action = if client % 2 == 0 {
            SeatAction::Book
        } else {
            SeatAction::Cancel
        };
        assert!(seats.write_fenced(SEAT, action, held.fencing_token(), "warm-up"));
        held.release().await.expect("release");
    }
    let holder = history
        .acquire(3, locks, NAME, TTL, Duration::ZERO)
        .await
        .expect("free");
    assert!(seats.write_fenced(SEAT, SeatAction::Cancel, holder.fencing_token(), "holder"));
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_appendfsync_always_a_held_lock_survives_kill_9() {
    let mut server =
        RedisServer::start_with(RedisOptions::new().append_only()).expect("redis-server");
    let locks = connect(&server.url()).await;
    let history = History::new();
    let seats = SeatStore::default();
    let holder = warm_up(&locks, &history, &seats).await;
    let token = holder.fencing_token();

    server.kill().expect("kill -9");
    server.restart().expect("restart from the append-only file");
    reconnected(&locks).await;

    // The lock is back, with what was left of its TTL.
    let mut conn = locks.connection().await.expect("a connection of our own");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(KEY)
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    let ttl_ms = i64::try_from(TTL.as_millis()).expect("fits");
    assert!(0 < pttl && pttl <= ttl_ms, "PTTL after restart: {pttl}");
    // Not granted twice.
    assert!(
        history
            .try_acquire(4, &locks, NAME, TTL)
            .await
            .expect("try")
            .is_none(),
        "the restarted server must still know the holder"
    );
    let err = history
        .acquire(5, &locks, NAME, TTL, Duration::from_millis(300))
        .await
        .expect_err("still held");
    assert!(err.is_timeout(), "{err:?}");
    // The holder's lock is still its own, and the counter went on.
    holder.release().await.expect("the holder still held it");
    let next = within(
        Duration::from_secs(10),
        "the next holder",
        history.acquire(6, &locks, NAME, TTL, Duration::from_secs(5)),
    )
    .await
    .expect("free after the release");
    assert!(next.fencing_token() > token);
    assert!(seats.write_fenced(SEAT, SeatAction::Book, next.fencing_token(), "next"));
    next.release().await.expect("release");

    let report = history.check().merge(check_seat_log(&seats.log()));
    eprintln!("appendfsync always, kill -9: {}", report.summary());
    report.assert_ok();
    assert_eq!(report.counts.acquired, 5);
    assert_eq!(report.counts.failed, 2);
    assert_eq!(report.counts.storage_writes, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_kill_9_can_grant_twice_and_fencing_keeps_the_write_single() {
    let mut server = RedisServer::start().expect("redis-server"); // no persistence
    let locks = connect(&server.url()).await;
    let history = History::new();
    let seats = SeatStore::default();
    let holder = warm_up(&locks, &history, &seats).await;
    let token = holder.fencing_token();

    server.kill().expect("kill -9");
    server.restart().expect("restart with no data");
    reconnected(&locks).await;

    // The server forgot the holder: a second client gets the lock while the
    // first still believes it holds it, with a counter that started over.
    let second = within(
        Duration::from_secs(10),
        "the second grant",
        history.acquire(4, &locks, NAME, TTL, Duration::from_secs(5)),
    )
    .await
    .expect("the restarted server grants the lock again");
    assert!(
        !holder.guard().is_lost(),
        "the first holder's lease is valid"
    );
    assert!(second.fencing_token() <= token);

    // The protected storage stays single-writer: it has seen the first
    // holder's larger token and refuses the second holder's write.
    assert!(!seats.write_fenced(SEAT, SeatAction::Book, second.fencing_token(), "second"));
    let err = holder.release().await.expect_err("the server forgot it");
    assert!(err.is_lost(), "{err:?}");
    second.release().await.expect("release");

    let report = history.check();
    eprintln!("no persistence, kill -9: {report}");
    // The checker sees the double grant and the counter going back.
    assert_eq!(report.overlaps().count(), 1, "{report}");
    assert_eq!(report.token_regressions().count(), 1, "{report}");
    let log = seats.log();
    let seat_report = check_seat_log(&log);
    seat_report.assert_ok();
    assert_eq!(log.len(), 4, "only the warm-up and the first holder wrote");
    assert!(log.iter().all(|write| write.holder != "second"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_load_with_appendfsync_always_grants_nothing_twice() {
    let mut server =
        RedisServer::start_with(RedisOptions::new().append_only()).expect("redis-server");
    let locks = Arc::new(connect(&server.url()).await);
    // Short TTLs: a lock whose release was lost in the crash frees itself
    // soon; long waits: acquires ride out the restart.
    let workload = Workload::new(16, 40, 4)
        .ttl(Duration::from_secs(1))
        .wait(Duration::from_secs(20));
    let history = History::new();
    let run = tokio::spawn({
        let (locks, workload, history) = (locks.clone(), workload.clone(), history.clone());
        async move { workload::run_recorded(locks, &workload, history).await }
    });
    within(Duration::from_secs(20), "the run gets under way", async {
        while history.acquired_count() < 100 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    server.kill().expect("kill -9 mid-run");
    // Down for a second: longer than the client's reconnect attempts, so
    // calls in flight fail and acquires wait for the server to come back.
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.restart().expect("restart from the append-only file");
    let restarted = Instant::now();
    let run = within(Duration::from_secs(60), "the run", run)
        .await
        .expect("workload task");

    let report = run.history.check().merge(check_seat_log(&run.seats.log()));
    eprintln!(
        "appendfsync always, kill -9 under load ({} acquire errors, {} release errors, {} refused writes): {}",
        run.acquire_errors.len(),
        run.release_errors.len(),
        run.refused_writes,
        report.summary()
    );
    report.assert_ok();
    let after_restart = run
        .history
        .ops()
        .iter()
        .filter(|op| op.acquire_outcome == Some(Outcome::Ok))
        .filter(|op| op.acquire_completed.is_some_and(|at| at > restarted))
        .count();
    assert!(
        after_restart > 0,
        "work went on after the restart: {report}"
    );
    assert!(report.counts.acquired >= 100 + after_restart, "{report}");
}
