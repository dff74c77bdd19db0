//! The history checker (`distlock_testkit::History`) is only worth something if
//! it fails broken locks: each rule is shown on hand-made histories, and a
//! deliberately broken backend run under the load workload is caught, while
//! the same workload passes on `MemoryLock` and on the backend without its
//! flaw.

use crate::workload;

use std::sync::Arc;
use std::time::Duration;

use crate::ticket_booking::seat_log::{
    DOUBLE_SALE, FENCE_NOT_INCREASING, SeatAction, SeatWrite, check_seat_log,
};
use distlock_api::conformance::broken::{BrokenStore, Flaw};
use distlock_api::{DistributedLock, Instant, MemoryLock};
use distlock_testkit::{History, Note, Outcome, Violation};
use workload::{Workload, within};

const LIMIT: Duration = Duration::from_secs(30);

/// A maker of clients of one new broken store with `flaw`.
fn broken(flaw: Flaw) -> impl Fn() -> Arc<dyn DistributedLock> {
    let store = BrokenStore::new(flaw);
    move || Arc::new(store.client())
}

// ---------------------------------------------------------------------------
// The rules, on hand-made histories.

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

#[test]
fn sequential_holders_with_rising_tokens_pass() {
    let history = History::new();
    for (client, token) in [(0, 1), (1, 2), (0, 3)] {
        let op = history.invoke_acquire(client, "a");
        history.acquired_with(op, token, far());
        history.invoke_release(op, far());
        history.released(op, Outcome::Ok);
    }
    let report = history.check();
    report.assert_ok();
    assert_eq!(report.counts.acquired, 3);
    assert_eq!(report.counts.intervals, 3);
    assert_eq!(report.counts.released_ok, 3);
    assert_eq!(report.counts.clients, 2);
    assert!(report.notes.is_empty(), "{:?}", report.notes);
}

#[test]
fn overlapping_holders_of_one_name_fail() {
    let history = History::new();
    let a = history.invoke_acquire(0, "a");
    history.acquired_with(a, 1, far());
    let b = history.invoke_acquire(1, "a");
    history.acquired_with(b, 2, far());
    // Another name at the same time is fine.
    let c = history.invoke_acquire(2, "b");
    history.acquired_with(c, 1, far());
    for op in [a, b, c] {
        history.invoke_release(op, far());
        history.released(op, Outcome::Ok);
    }
    let report = history.check();
    assert!(!report.is_ok());
    assert_eq!(report.overlaps().count(), 1, "{report}");
    assert_eq!(report.token_regressions().count(), 0, "{report}");
    match &report.violations[0] {
        Violation::Overlap {
            name,
            first,
            second,
        } => {
            assert_eq!(name, "a");
            assert_eq!((first.op, second.op), (a, b));
        }
        other => panic!("{other:?}"),
    }
    let shown = report.to_string();
    assert!(shown.contains("OVERLAP on \"a\""), "{shown}");
    let panicked = std::panic::catch_unwind(|| report.assert_ok());
    assert!(panicked.is_err(), "assert_ok must panic on a violation");
}

#[test]
fn tokens_that_do_not_rise_fail() {
    let history = History::new();
    for (client, token) in [(0, 5), (1, 7), (2, 7), (3, 6)] {
        let op = history.invoke_acquire(client, "a");
        history.acquired_with(op, token, far());
        history.invoke_release(op, far());
        history.released(op, Outcome::Ok);
    }
    let report = history.check();
    assert_eq!(report.overlaps().count(), 0, "{report}");
    // 7 after 7, and 6 after 7.
    assert_eq!(report.token_regressions().count(), 2, "{report}");
    assert_eq!(report.counts.violations, 2);
}

#[test]
fn overruns_and_expired_grants_are_notes_not_violations() {
    let history = History::new();
    // A holder works past its validity: reported, not failed.
    let a = history.invoke_acquire(0, "a");
    let soon = Instant::now() + Duration::from_millis(1);
    history.acquired_with(a, 1, soon);
    std::thread::sleep(Duration::from_millis(5)); // the stall is the scenario
    // Its interval ended at `soon`, so the next holder does not overlap it.
    let b = history.invoke_acquire(1, "a");
    history.acquired_with(b, 2, far());
    history.invoke_release(a, soon);
    history.released(a, Outcome::Failed);
    history.invoke_release(b, far());
    history.released(b, Outcome::Ok);
    // A grant whose validity had passed before the reply holds nothing.
    let c = history.invoke_acquire(2, "a");
    let before = Instant::now();
    history.acquired_with(c, 3, before);
    history.invoke_release(c, before);
    history.released(c, Outcome::Failed);

    let report = history.check();
    report.assert_ok();
    assert_eq!(report.counts.overruns, 2, "{report}"); // a and c
    assert_eq!(report.counts.released_lost, 2);
    assert_eq!(report.counts.intervals, 2);
    assert!(
        report
            .notes
            .iter()
            .any(|n| matches!(n, Note::LeaseOverrun { op, never_released: false, .. } if *op == a)),
        "{:?}",
        report.notes
    );
    assert!(
        report
            .notes
            .iter()
            .any(|n| matches!(n, Note::ExpiredOnArrival { op, .. } if *op == c)),
        "{:?}",
        report.notes
    );
}

#[test]
fn unknown_outcomes_are_reported_and_hold_nothing() {
    let history = History::new();
    let held = history.invoke_acquire(0, "a");
    history.acquired_with(held, 2, far());
    // Never completed (a cancelled call), and completed as unknown: neither
    // counts as holding, so neither overlaps the holder.
    let cancelled = history.invoke_acquire(1, "a");
    let unknown = history.invoke_acquire(2, "a");
    history.acquire_unknown(unknown);
    let failed = history.invoke_acquire(3, "a");
    history.acquire_failed(failed);
    history.invoke_release(held, far());
    history.released(held, Outcome::Unknown);

    let report = history.check();
    report.assert_ok();
    assert_eq!(report.counts.unknown, 3, "{report}"); // two acquires, one release
    assert_eq!(report.counts.failed, 1);
    for op in [cancelled, unknown] {
        assert!(
            report
                .notes
                .iter()
                .any(|n| matches!(n, Note::UnknownAcquire { op: o, .. } if *o == op)),
            "{:?}",
            report.notes
        );
    }
}

#[tokio::test]
async fn the_wrappers_record_grants_timeouts_cancellations_and_drops() {
    let locks = MemoryLock::new();
    let history = History::new();
    let ttl = Duration::from_secs(10);
    let first = history
        .acquire(0, &locks, "a", ttl, Duration::ZERO)
        .await
        .expect("free");
    let err = history
        .acquire(1, &locks, "a", ttl, Duration::from_millis(10))
        .await
        .expect_err("held");
    assert!(err.is_timeout(), "{err:?}");
    assert!(
        history
            .try_acquire(2, &locks, "a", ttl)
            .await
            .expect("try")
            .is_none()
    );
    // A waiter cancelled mid-wait: its outcome is unknown.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(20),
        history.acquire(3, &locks, "a", ttl, Duration::from_secs(60)),
    )
    .await;
    assert!(cancelled.is_err(), "the waiter was cancelled");
    first.release().await.expect("release");
    // Dropped without release: recorded as a release of unknown outcome.
    let dropped = history
        .try_acquire(4, &locks, "a", ttl)
        .await
        .expect("try")
        .expect("free");
    let token = dropped.fencing_token();
    drop(dropped);
    let last = within(
        LIMIT,
        "acquire after a drop",
        history.acquire(5, &locks, "a", ttl, LIMIT),
    )
    .await
    .expect("freed by the drop");
    assert!(last.fencing_token() > token);
    last.release().await.expect("release");

    let report = history.check();
    report.assert_ok();
    let c = report.counts;
    assert_eq!((c.ops, c.acquired, c.failed), (6, 3, 2), "{report}");
    assert_eq!((c.released_ok, c.unknown), (2, 2), "{report}"); // cancel + drop
}

#[test]
fn seat_log_rules() {
    let write = |seq, ticket_id, action, fence| SeatWrite {
        seq,
        ticket_id,
        action,
        holder: format!("h{seq}"),
        fence,
    };
    use SeatAction::{Book, Cancel};
    // Out of order on input: the check sorts by seq (commit order).
    let good = [
        write(3, 1, Book, 3),
        write(1, 1, Book, 1),
        write(2, 1, Cancel, 2),
        write(4, 2, Book, 1),
    ];
    let report = check_seat_log(&good);
    report.assert_ok();
    assert_eq!(report.counts.storage_writes, 4);

    let sold_twice = [write(1, 1, Book, 1), write(2, 1, Book, 2)];
    let report = check_seat_log(&sold_twice);
    assert!(
        matches!(
            &report.violations[..],
            [Violation::Storage {
                rule: DOUBLE_SALE,
                ..
            }]
        ),
        "{report}"
    );
    assert!(
        report.to_string().contains("DOUBLE SALE: seat 1"),
        "{report}"
    );

    let stale = [
        write(1, 1, Book, 5),
        write(2, 1, Cancel, 5),
        write(3, 1, Book, 4),
    ];
    let report = check_seat_log(&stale);
    assert_eq!(report.violations.len(), 2, "{report}");
    assert!(
        report
            .violations
            .iter()
            .all(|v| matches!(v, Violation::Storage { rule: FENCE_NOT_INCREASING, detail } if detail.starts_with("seat 1:"))),
        "{report}"
    );
}

// ---------------------------------------------------------------------------
// The load workload against broken and correct backends.

fn small_load() -> Workload {
    Workload::new(16, 50, 2).wait(LIMIT)
}

async fn run_on(locks: Arc<dyn DistributedLock>) -> (distlock_testkit::Report, workload::Run) {
    let run = within(LIMIT, "the workload", workload::run(locks, &small_load())).await;
    let report = run.history.check().merge(check_seat_log(&run.seats.log()));
    eprintln!("{}", report.summary());
    (report, run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workload_passes_on_correct_locks() {
    for locks in [
        Arc::new(MemoryLock::new()) as Arc<dyn DistributedLock>,
        broken(Flaw::None)(),
    ] {
        let (report, run) = run_on(locks).await;
        report.assert_ok();
        assert_eq!(run.cycles, 16 * 50);
        assert!(run.release_errors.is_empty(), "{:?}", run.release_errors);
        assert_eq!(report.counts.intervals, 16 * 50);
        assert_eq!(report.counts.storage_writes, 16 * 50);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_that_always_grants_is_caught_in_the_history_and_the_seats() {
    let (report, _) = run_on(broken(Flaw::NoMutualExclusion)()).await;
    assert!(report.overlaps().count() > 0, "{report}");
    assert!(
        report.violations.iter().any(|v| matches!(
            v,
            Violation::Storage {
                rule: DOUBLE_SALE,
                ..
            }
        )),
        "the seat log shows the double sales: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_counted_per_client_are_caught() {
    // Each client is its own `Broken` over one store, as separate processes
    // would be.
    let client = broken(Flaw::FencingTokenPerClient);
    let history = History::new();
    let ttl = Duration::from_secs(10);
    let (a, b) = (client(), client());
    for (id, locks) in [(0, &a), (0, &a), (1, &b)] {
        let held = history
            .acquire(id, &**locks, "seat", ttl, Duration::ZERO)
            .await
            .expect("free");
        held.release().await.expect("release");
    }
    let report = history.check();
    assert_eq!(report.overlaps().count(), 0, "{report}");
    // a: 1, 2; then b: 1.
    assert_eq!(report.token_regressions().count(), 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_expires_locks_early_is_caught() {
    let locks = broken(Flaw::ExpiresEarly)();
    let history = History::new();
    let ttl = Duration::from_millis(400); // the server keeps it for 20 ms
    let first = history
        .acquire(0, &*locks, "seat", ttl, Duration::ZERO)
        .await
        .expect("free");
    let second = within(
        LIMIT,
        "second acquire",
        history.acquire(1, &*locks, "seat", ttl, Duration::from_secs(5)),
    )
    .await
    .expect("granted once the server dropped the first");
    let report = history.check();
    assert_eq!(report.overlaps().count(), 1, "{report}");
    drop((first, second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_deletes_the_next_holders_lock_is_caught() {
    for flaw in [Flaw::None, Flaw::ReleaseWithoutTokenCheck] {
        let locks = broken(flaw)();
        let history = History::new();
        let short = Duration::from_millis(20);
        let stale = history
            .acquire(0, &*locks, "seat", short, Duration::ZERO)
            .await
            .expect("free");
        tokio::time::sleep(short * 2).await; // the holder stalls past its TTL
        let next = history
            .acquire(1, &*locks, "seat", Duration::from_secs(10), Duration::ZERO)
            .await
            .expect("expired, so free");
        let stale_release = stale.release().await;
        let third = history
            .try_acquire(2, &*locks, "seat", Duration::from_secs(10))
            .await
            .expect("try");
        let report = history.check();
        if flaw == Flaw::None {
            assert!(stale_release.expect_err("not ours").is_lost());
            assert!(third.is_none(), "the next holder still holds it");
            report.assert_ok();
            assert_eq!(report.counts.overruns, 1, "{report}");
        } else {
            assert!(
                third.is_some(),
                "the stale release freed the next holder's lock"
            );
            assert_eq!(report.overlaps().count(), 1, "{report}");
        }
        drop((next, third));
    }
}
