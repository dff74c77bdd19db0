//! The guard machinery every backend shares: drop, renewal and loss,
//! `with_lock`, wake-ups. The backend here is a test double built on the
//! public `LockBackend` interface, so failures can be switched on at will.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use distlock_api::{
    DistributedLock, DistributedLockExt, Instant, LockBackend, LockError, MemoryLock,
};

use crate::support;
use support::*;

#[test]
fn dropping_a_guard_outside_any_runtime_does_not_panic_and_the_ttl_frees_the_lock() {
    let locks = MemoryLock::new();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let guard = runtime
        .block_on(locks.acquire("outside", Duration::from_millis(200), Duration::ZERO))
        .expect("free lock");
    drop(runtime);
    drop(guard); // no runtime left to release it: must not panic

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let again = bounded(
            "re-acquire after the TTL",
            locks.acquire("outside", Duration::from_secs(1), Duration::from_secs(5)),
        )
        .await
        .expect("the TTL frees the lock");
        again.release().await.expect("still ours");
    });
}

#[tokio::test]
async fn a_cancelled_release_still_releases_in_the_background() {
    let locks = MemoryLock::new();
    let guard = locks
        .acquire("cancelled-release", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("free lock");
    let release = guard.release();
    drop(release); // never polled
    let next = bounded(
        "acquire after a cancelled release",
        locks.acquire(
            "cancelled-release",
            Duration::from_secs(30),
            Duration::from_secs(2),
        ),
    )
    .await
    .expect("the dropped release frees the lock long before its TTL");
    next.release().await.expect("still ours");
}

#[tokio::test]
async fn valid_until_is_attempt_start_plus_ttl_minus_drift() {
    let locks = MemoryLock::new();
    let ttl = Duration::from_secs(10);
    let before = Instant::now();
    let guard = locks
        .acquire("validity", ttl, Duration::ZERO)
        .await
        .expect("free");
    let after = Instant::now();
    let trusted = locks.drift().trusted(ttl);
    assert!(guard.valid_until() >= before + trusted);
    assert!(guard.valid_until() <= after + trusted);
    assert!(
        trusted < ttl,
        "the drift allowance must shorten the validity"
    );
    assert!(!guard.is_lost());
    guard.release().await.expect("still ours");
}

#[tokio::test]
async fn renewal_marks_the_guard_lost_when_the_server_says_it_is_gone() {
    let locks = Switchable::default();
    let mut guard = locks
        .acquire("renew-lost", Duration::from_millis(300), Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    assert!(guard.is_renewing());
    locks.extend.store(EXTEND_LOST, Ordering::SeqCst);
    bounded("lost() after a failed renewal", guard.lost()).await;
    assert!(guard.is_lost());
    assert!(matches!(
        guard.extend(Duration::from_secs(1)).await,
        Err(LockError::Lost)
    ));
    assert!(matches!(guard.release().await, Err(LockError::Lost)));
}

#[tokio::test]
async fn renewal_gives_up_when_the_server_stays_unreachable_past_the_validity() {
    let locks = Switchable::default();
    let ttl = Duration::from_millis(300);
    let mut guard = locks
        .acquire("renew-unreachable", ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    locks.extend.store(EXTEND_UNREACHABLE, Ordering::SeqCst);
    let valid_until = guard.valid_until();
    bounded("lost() while the server is unreachable", guard.lost()).await;
    assert!(
        Instant::now() >= valid_until,
        "an unreachable server must not end the lease before its validity"
    );
    assert!(guard.is_lost());
}

#[tokio::test]
async fn renewal_rides_out_a_short_outage() {
    let locks = Switchable::default();
    let ttl = Duration::from_millis(600);
    let mut guard = locks
        .acquire("renew-outage", ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    // Unreachable for less than the validity left after a renewal.
    locks.extend.store(EXTEND_UNREACHABLE, Ordering::SeqCst);
    tokio::time::sleep(ttl / 3).await;
    locks.extend.store(EXTEND_OK, Ordering::SeqCst);
    tokio::time::sleep(ttl * 2).await;
    assert!(!guard.is_lost(), "renewal must retry transient failures");
    assert!(
        locks
            .try_acquire("renew-outage", ttl)
            .await
            .expect("answer")
            .is_none()
    );
    guard.release().await.expect("still ours");
}

#[tokio::test(start_paused = true)]
async fn renewal_waits_for_a_slow_extend_instead_of_abandoning_it() {
    let locks = Switchable::default();
    let ttl = Duration::from_millis(600);
    let mut guard = locks
        .acquire("renew-slow", ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    // Every extend takes longer than ttl / 3 but far less than the validity
    // left: a slow network, not a lost lock. (For PostgreSQL an abandoned
    // extend closes the connection and gives the lock up.)
    assert!(SLOW_EXTEND > ttl / 3);
    locks.extend.store(EXTEND_SLOW, Ordering::SeqCst);
    tokio::time::sleep(ttl * 5).await;
    assert!(
        !guard.is_lost(),
        "renewal abandoned extends that were on their way"
    );
    assert!(
        locks
            .try_acquire("renew-slow", ttl)
            .await
            .expect("answer")
            .is_none()
    );
    locks.extend.store(EXTEND_OK, Ordering::SeqCst);
    guard.release().await.expect("still ours");
}

#[tokio::test]
async fn with_lock_stops_the_work_when_the_lock_is_lost() {
    struct SetOnDrop(Arc<AtomicBool>);
    impl Drop for SetOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let locks = Switchable::default();
    let work_dropped = Arc::new(AtomicBool::new(false));
    let flag = SetOnDrop(Arc::clone(&work_dropped));
    let extend = Arc::clone(&locks.extend);
    let result = bounded(
        "with_lock returning after a loss",
        locks.with_lock(
            "with-lock-lost",
            Duration::from_millis(300),
            Duration::ZERO,
            |_lock| async move {
                let _flag = flag;
                extend.store(EXTEND_LOST, Ordering::SeqCst);
                std::future::pending::<()>().await
            },
        ),
    )
    .await;
    assert!(matches!(result, Err(LockError::Lost)), "{result:?}");
    assert!(
        work_dropped.load(Ordering::SeqCst),
        "the work must not run on without the lock"
    );
}

#[tokio::test]
async fn with_lock_returns_the_work_value_and_frees_the_lock() {
    let locks = MemoryLock::new();
    let token = locks
        .with_lock(
            "with-lock-ok",
            Duration::from_secs(5),
            Duration::ZERO,
            |lock| async move {
                assert_eq!(lock.name(), "with-lock-ok");
                assert!(!lock.is_lost());
                lock.fencing_token()
            },
        )
        .await
        .expect("free lock");
    assert_eq!(token, 1);
    assert_eq!(
        locks.held(),
        0,
        "with_lock must release when the work is done"
    );
}

#[tokio::test]
async fn a_waiter_is_woken_by_a_release_not_by_its_backoff() {
    // Backoff of 60 s and no expiry hint: only the wake-up can end this wait early.
    let locks = Switchable {
        slow_backoff: true,
        ..Switchable::default()
    };
    let holder = locks
        .acquire("wake", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("free");
    let waiter = {
        let locks = locks.clone();
        tokio::spawn(async move {
            locks
                .acquire("wake", Duration::from_secs(30), Duration::from_secs(30))
                .await
        })
    };
    // Release only after the waiter has been refused once, so it must be woken.
    bounded("the waiter's first attempt", locks.refused.notified()).await;
    holder.release().await.expect("still ours");
    let guard = bounded("the woken waiter", waiter)
        .await
        .expect("task")
        .expect("acquired after the release");
    guard.release().await.expect("still ours");
}

#[tokio::test]
async fn extend_rejects_bad_ttls_without_touching_the_lock() {
    let locks = MemoryLock::new();
    let mut guard = locks
        .acquire("extend-ttl", Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("free");
    for ttl in [Duration::ZERO, Duration::from_micros(500), Duration::MAX] {
        assert!(
            matches!(guard.extend(ttl).await, Err(LockError::InvalidTtl(_))),
            "{ttl:?}"
        );
    }
    assert!(!guard.is_lost());
    guard.release().await.expect("still ours");
}

/// A guard owned by a task that never finishes is dropped while its runtime
/// shuts down — the case where spawning from `Drop` is known to panic in
/// other libraries (tokio-rs/tokio#3043).
fn guard_dropped_by_runtime_shutdown(runtime: tokio::runtime::Runtime) {
    let locks = MemoryLock::new();
    let guard = runtime
        .block_on(locks.acquire("shutdown", Duration::from_millis(200), Duration::ZERO))
        .expect("free lock");
    let mut renewing = runtime
        .block_on(locks.acquire(
            "shutdown-renewing",
            Duration::from_millis(200),
            Duration::ZERO,
        ))
        .expect("free lock");
    runtime.block_on(async {
        renewing.auto_renew();
    });
    runtime.spawn(async move {
        let _held = (guard, renewing);
        std::future::pending::<()>().await;
    });
    drop(runtime); // drops the task, and with it the guards: must not panic

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        for name in ["shutdown", "shutdown-renewing"] {
            let again = bounded(
                "re-acquire after the TTL",
                locks.acquire(name, Duration::from_secs(1), Duration::from_secs(5)),
            )
            .await
            .expect("the TTL frees the lock");
            again.release().await.expect("still ours");
        }
    });
}

#[test]
fn guards_dropped_while_a_multi_thread_runtime_shuts_down_do_not_panic() {
    guard_dropped_by_runtime_shutdown(tokio::runtime::Runtime::new().expect("runtime"));
}

#[test]
fn guards_dropped_while_a_current_thread_runtime_shuts_down_do_not_panic() {
    guard_dropped_by_runtime_shutdown(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
    );
}

/// A release cancelled after the server carried it out (its answer slow):
/// the lock is free, and the server was asked once, not asked again by a
/// background release that would find the lock gone.
#[tokio::test]
async fn a_release_cancelled_after_the_server_ran_is_not_sent_again() {
    let locks = SlowAnswer::default();
    let guard = locks
        .acquire("cancelled-late", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("free lock");
    cancel_release_after_it_ran(&locks, guard).await;
    assert_eq!(
        locks.releases.load(Ordering::SeqCst),
        1,
        "one release reached the server"
    );
    let next = locks
        .try_acquire("cancelled-late", Duration::from_secs(30))
        .await
        .expect("try_acquire")
        .expect("the lock is free");
    next.release().await.expect("still ours");
}

/// An extend cancelled after the server carried it out, before its answer:
/// the guard keeps its old, conservative validity, is not lost, and a later
/// release still gives the lock back.
#[tokio::test]
async fn an_extend_cancelled_in_flight_keeps_the_old_validity() {
    let locks = SlowAnswer::default();
    let mut guard = locks
        .acquire("extend-cancelled", Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("free lock");
    let valid_until = guard.valid_until();
    tokio::select! {
        biased;
        () = locks.applied.notified() => {}
        result = guard.extend(Duration::from_secs(60)) => {
            panic!("the extend answered before the gate opened: {result:?}")
        }
    }
    assert_eq!(
        guard.valid_until(),
        valid_until,
        "an unanswered extend moves nothing"
    );
    assert_eq!(guard.ttl(), Duration::from_secs(30));
    assert!(!guard.is_lost());
    locks.open_gate();
    assert!(
        locks
            .try_acquire("extend-cancelled", Duration::from_secs(1))
            .await
            .expect("try_acquire")
            .is_none(),
        "still held"
    );
    bounded("release after a cancelled extend", guard.release())
        .await
        .expect("still ours");
    let next = locks
        .try_acquire("extend-cancelled", Duration::from_secs(30))
        .await
        .expect("try_acquire")
        .expect("the lock is free");
    next.release().await.expect("still ours");
}

/// A final release that cannot reach the server does not make `with_lock`
/// fail: the guard was valid when the work finished, so the work ran under
/// a valid lease (the TTL frees the lock).
#[tokio::test]
async fn with_lock_returns_the_value_when_only_the_final_release_cannot_reach_the_server() {
    let locks = Switchable::default();
    let unreachable = Arc::clone(&locks.release_unreachable);
    let value = bounded(
        "with_lock",
        locks.with_lock(
            "release-unreachable",
            Duration::from_secs(30),
            Duration::ZERO,
            |_| async move {
                unreachable.store(true, Ordering::SeqCst);
                7
            },
        ),
    )
    .await
    .expect("the work ran under a valid lease");
    assert_eq!(value, 7);
}
