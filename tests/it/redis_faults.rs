//! Redis faults with the history checked afterwards: the server killed while
//! locks are held, frozen, a holder stalled past its TTL, a slow link and a
//! cut link. Each scenario runs in bounded time; the single-operation
//! behaviour is in `lock-redis/tests/it/faults.rs`, this file adds concurrent
//! holders and waiters and the mutual-exclusion check. The standing
//! partition nemesis (holders cut off in the kernel for longer than the TTL)
//! is at the end.

use crate::nemesis;
use crate::workload;

use std::sync::Arc;
use std::time::Duration;

use crate::ticket_booking::seat_log::{SeatAction, check_seat_log};
use distlock::redis::{RedisLock, redis};
use distlock_api::{DistributedLock, Instant, LockError};
use distlock_testkit::{History, LinkProxy, RedisServer, Violation};
use workload::{SeatStore, Workload, within};

const TTL: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
/// How late a bounded failure may come beyond its configured bound on a
/// loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// The longest any single command may take: reconnect, then reply.
const COMMAND_LIMIT: Duration = Duration::from_millis(800);

async fn connect(url: &str) -> RedisLock {
    RedisLock::options()
        .connect_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect(url)
        .await
        .expect("connect")
}

fn is_connection(err: &LockError) -> bool {
    matches!(err, LockError::Connection(_))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_locks_are_held() {
    let mut server = RedisServer::start().expect("redis-server");
    let locks = Arc::new(connect(&server.url()).await);
    let history = History::new();
    let names: Vec<String> = (0..4).map(|i| format!("killed:{i}")).collect();

    let mut holders = Vec::new();
    for (client, name) in names.iter().enumerate() {
        let held = history
            .acquire(client, &*locks, name, TTL, Duration::ZERO)
            .await
            .expect("free");
        holders.push(held);
    }
    // One waiter per name, queued behind the holders.
    let wait = Duration::from_millis(1500);
    let mut waiters = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (history, locks, name) = (history.clone(), Arc::clone(&locks), name.clone());
        waiters.push(tokio::spawn(async move {
            let started = Instant::now();
            let result = history.acquire(10 + i, &*locks, &name, TTL, wait).await;
            (result.map(|held| held.fencing_token()), started.elapsed())
        }));
    }
    // Each waiter's first attempt marks the lock as waited for (a `+` after
    // the holder's token): then they are all queued.
    within(Duration::from_secs(5), "the waiters queue up", async {
        let mut conn = locks.connection().await.expect("a connection of our own");
        for name in &names {
            loop {
                let token: Option<String> = redis::cmd("GET")
                    .arg(format!("distlock:{{{name}}}"))
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                if token.is_some_and(|token| token.ends_with('+')) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    })
    .await;
    server.kill().expect("kill -9");

    // Holders of the first two names notice while the server is down.
    let mut survivors = holders.split_off(2);
    for held in &mut holders {
        let err = within(COMMAND_LIMIT + SLACK, "extend on a dead server", async {
            held.guard_mut().extend(TTL).await
        })
        .await
        .expect_err("the server is gone");
        assert!(is_connection(&err) || err.is_lost(), "{err:?}");
    }
    for held in holders {
        let err = within(
            COMMAND_LIMIT + SLACK,
            "release on a dead server",
            held.release(),
        )
        .await
        .expect_err("the server is gone");
        assert!(is_connection(&err) || err.is_lost(), "{err:?}");
    }
    // No waiter blocks past its deadline.
    for waiter in waiters {
        let (result, waited) = within(wait + SLACK, "a waiter", waiter)
            .await
            .expect("waiter task");
        let err = result.expect_err("nobody can be granted a lock on a dead server");
        assert!(err.is_timeout() || is_connection(&err), "{err:?}");
        assert!(
            waited < wait + COMMAND_LIMIT,
            "a waiter returned {waited:?} after it started, past its wait of {wait:?}"
        );
    }

    server.restart().expect("restart without persistence");
    reconnected(&locks).await;
    // The other two holders learn after the restart that their locks are gone.
    for held in &mut survivors {
        let err = within(COMMAND_LIMIT + SLACK, "extend after restart", async {
            held.guard_mut().extend(TTL).await
        })
        .await
        .expect_err("the restarted server forgot the lock");
        assert!(err.is_lost(), "{err:?}");
    }
    for held in survivors {
        let err = held.release().await.expect_err("lost");
        assert!(err.is_lost(), "{err:?}");
    }
    let restarted = Instant::now();
    // Service resumes on the same RedisLock.
    for (i, name) in names.iter().enumerate() {
        let held = within(
            Duration::from_secs(10),
            "acquire after restart",
            history.acquire(20 + i, &*locks, name, TTL, Duration::from_secs(5)),
        )
        .await
        .expect("the same RedisLock works after the restart");
        held.release().await.expect("release after restart");
    }

    let report = history.check();
    eprintln!("kill -9: {}", report.summary());
    assert_eq!(report.overlaps().count(), 0, "{report}");
    // Without persistence the fencing counters start over: the documented
    // limit (see redis_durability.rs). Those are the only regressions, one
    // per name, each at the first grant after the restart.
    let regressions: Vec<_> = report.token_regressions().collect();
    assert_eq!(regressions.len(), names.len(), "{report}");
    for violation in regressions {
        let Violation::TokenNotIncreasing { later, .. } = violation else {
            unreachable!()
        };
        assert!(later.start > restarted, "{report}");
    }
    assert_eq!(report.counts.acquired, 2 * names.len());
    assert_eq!(report.counts.released_ok, names.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_for_two_seconds() {
    let mut server = RedisServer::start().expect("redis-server");
    let locks = Arc::new(connect(&server.url()).await);
    let history = History::new();
    let held = history
        .acquire(0, &*locks, "frozen:held", TTL, Duration::ZERO)
        .await
        .expect("free");

    server.pause().expect("SIGSTOP");
    let paused = Instant::now();
    let wait = Duration::from_millis(500);
    let mut attempts = Vec::new();
    for client in 1..=4 {
        let (history, locks) = (history.clone(), Arc::clone(&locks));
        attempts.push(tokio::spawn(async move {
            let started = Instant::now();
            let name = format!("frozen:{client}");
            let result = history.acquire(client, &*locks, &name, TTL, wait).await;
            (result.map(|held| held.fencing_token()), started.elapsed())
        }));
    }
    for attempt in attempts {
        let (result, waited) = within(wait + SLACK, "an acquire on a frozen server", attempt)
            .await
            .expect("task");
        let err = result.expect_err("frozen");
        assert!(err.is_retryable(), "{err:?}");
        assert!(waited < wait + COMMAND_LIMIT, "{waited:?}");
    }
    // The fault lasts two seconds.
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(paused.elapsed())).await;
    server.resume().expect("SIGCONT");

    // Work resumes: the lock held through the freeze is still ours, and a
    // burst of contended cycles runs clean.
    reconnected(&locks).await;
    held.release().await.expect("held through the freeze");
    let run = within(
        Duration::from_secs(30),
        "work after the freeze",
        workload::run(locks.clone(), &Workload::new(8, 20, 2)),
    )
    .await;
    assert!(run.acquire_errors.is_empty(), "{:?}", run.acquire_errors);
    assert!(run.release_errors.is_empty(), "{:?}", run.release_errors);
    let report = history
        .check()
        .merge(run.history.check())
        .merge(check_seat_log(&run.seats.log()));
    eprintln!("SIGSTOP 2 s: {}", report.summary());
    report.assert_ok();
    assert_eq!(report.counts.acquired, 1 + 8 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_past_its_ttl() {
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::options()
        .prefix(format!("stalled-{}:", workload::unique()))
        .connect(&url)
        .await
        .expect("connect");
    let history = History::new();
    let seats = SeatStore::default();
    let short = Duration::from_millis(300);

    let stale = history
        .acquire(0, &locks, "seat", short, Duration::ZERO)
        .await
        .expect("free");
    assert!(seats.write_fenced(1, SeatAction::Book, stale.fencing_token(), "stale"));
    // The holder stalls (a GC pause, a swapped-out process) past its TTL.
    within(short + SLACK, "the lease runs out", stale.guard().lost()).await;
    assert!(stale.guard().is_lost());

    let next = within(
        Duration::from_secs(10),
        "the next holder",
        history.acquire(1, &locks, "seat", TTL, Duration::from_secs(5)),
    )
    .await
    .expect("expired, so granted");
    assert!(next.fencing_token() > stale.fencing_token());
    assert!(seats.write_fenced(1, SeatAction::Cancel, next.fencing_token(), "next"));
    // The stale holder wakes up: its write is fenced off, its release Lost,
    // and the next holder still holds the lock.
    assert!(!seats.write_fenced(1, SeatAction::Book, stale.fencing_token(), "stale"));
    let err = stale.release().await.expect_err("stale");
    assert!(err.is_lost(), "{err:?}");
    assert!(
        locks.try_acquire("seat", TTL).await.expect("try").is_none(),
        "the stale release did not free the next holder's lock"
    );
    next.release().await.expect("release");

    let report = history.check().merge(check_seat_log(&seats.log()));
    eprintln!("stalled holder: {}", report.summary());
    report.assert_ok();
    assert_eq!(report.counts.overruns, 1, "the stall is reported: {report}");
    assert_eq!(report.counts.released_lost, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_link_is_correct_and_slower() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = LinkProxy::start(server.addr()).expect("proxy");
    let delay = Duration::from_millis(50);
    proxy.set_delay(delay);
    let locks = RedisLock::options()
        .response_timeout(Duration::from_secs(2))
        .connect(&format!("redis://127.0.0.1:{}/", proxy.port()))
        .await
        .expect("connect through the slow link");

    // One cycle is two round trips of at least 2 × 50 ms each.
    let started = Instant::now();
    let guard = locks
        .acquire("slow:alone", TTL, Duration::ZERO)
        .await
        .expect("free");
    guard.release().await.expect("release");
    let cycle = started.elapsed();
    assert!(cycle >= 4 * delay, "a cycle took only {cycle:?}");

    let workload = Workload::new(4, 5, 2);
    let run = within(
        Duration::from_secs(30),
        "cycles over the slow link",
        workload::run(Arc::new(locks), &workload),
    )
    .await;
    assert!(run.acquire_errors.is_empty(), "{:?}", run.acquire_errors);
    assert!(run.release_errors.is_empty(), "{:?}", run.release_errors);
    let report = run.history.check().merge(check_seat_log(&run.seats.log()));
    eprintln!("50 ms each way: {:?}: {}", run.elapsed, report.summary());
    report.assert_ok();
    assert_eq!(report.counts.acquired, 20);
    // Ten cycles per name, one after another: at least ten cycle times.
    assert!(run.elapsed >= 10 * 4 * delay, "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_is_a_connection_error_in_bounded_time() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = LinkProxy::start(server.addr()).expect("proxy");
    let locks = connect(&format!("redis://127.0.0.1:{}/", proxy.port())).await;
    let history = History::new();
    let mut held = history
        .acquire(0, &locks, "cut:held", TTL, Duration::ZERO)
        .await
        .expect("free");

    proxy.cut().expect("cut");
    let bound = COMMAND_LIMIT + SLACK;
    let err = within(
        bound,
        "extend over a cut link",
        held.guard_mut().extend(TTL),
    )
    .await
    .expect_err("cut");
    assert!(is_connection(&err), "{err:?}");
    let err = within(
        bound,
        "try_acquire over a cut link",
        history.try_acquire(1, &locks, "cut:other", TTL),
    )
    .await
    .expect_err("cut");
    assert!(is_connection(&err), "{err:?}");
    let wait = Duration::from_millis(700);
    let err = within(
        wait + bound,
        "a waiter over a cut link",
        history.acquire(2, &locks, "cut:held", TTL, wait),
    )
    .await
    .expect_err("cut");
    assert!(
        is_connection(&err),
        "the cause, not a bare timeout: {err:?}"
    );

    proxy.restore().expect("restore");
    // The server never lost the lock: once reconnected, it is still ours.
    within(Duration::from_secs(10), "extend after restore", async {
        loop {
            match held.guard_mut().extend(TTL).await {
                Ok(()) => return,
                Err(err) if is_connection(&err) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("extend after restore: {err:?}"),
            }
        }
    })
    .await;
    held.release().await.expect("release after restore");
    let again = history
        .acquire(3, &locks, "cut:held", TTL, Duration::from_secs(5))
        .await
        .expect("free again");
    again.release().await.expect("release");

    let report = history.check();
    eprintln!("cut link: {}", report.summary());
    report.assert_ok();
    assert_eq!(report.counts.acquired, 2);
    assert_eq!(report.counts.unknown, 2, "the two calls over the cut link");
}

/// The standing partition nemesis (see `tests/it/nemesis.rs`): holders cut off in
/// the kernel for longer than the TTL; the key expires on the server, and
/// no one may be granted a lock a partitioned holder's guard still counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holders_are_never_overlapped() {
    let started = std::time::Instant::now();
    let server = RedisServer::start().expect("redis-server");
    let ttl = Duration::from_millis(1500);
    let plan = nemesis::Plan {
        clients: 4,
        names: 2,
        ttl,
        partitions: 4,
        partition_for: ttl * 2 + Duration::from_millis(500),
        call_limit: ttl * 3,
    };
    let outcomes = nemesis::run(plan, server.port(), |alias| async move {
        connect(&format!("redis://127.0.0.1:{alias}/")).await
    })
    .await;
    outcomes.assert_ok(&plan, started);
}
