//! The suite is only worth something if it fails broken backends. Each test
//! here takes the deliberately broken lock of `conformance::broken` with one
//! flaw, runs the check meant to catch that
//! flaw, and asserts that it panics — and that the same check passes on
//! `MemoryLock` and on the same backend without the flaw, so the failure is
//! the flaw's and not the test's.
#![cfg(feature = "conformance")]

use std::sync::Arc;
use std::time::Duration;

use distlock_api::conformance::broken::{BrokenStore, Flaw};
use distlock_api::conformance::{self, Config};
use distlock_api::{DistributedLock, MemoryLock};

/// Two clients of one new broken store.
fn clients(flaw: Flaw) -> (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>) {
    let store = BrokenStore::new(flaw);
    (Arc::new(store.client()), Arc::new(store.client()))
}

/// A conformance check, as a plain function pointer over owned clients.
type Check = fn(
    Arc<dyn DistributedLock>,
    Arc<dyn DistributedLock>,
) -> futures::future::BoxFuture<'static, ()>;

/// Wraps a check that takes `(lock, other, config)`.
macro_rules! check {
    ($check:path) => {
        (|lock, other| Box::pin(async move { $check(&*lock, &*other, &Config::default()).await }))
            as Check
    };
}

/// Runs `check` in its own task and says whether it panicked.
async fn panics(
    check: Check,
    (lock, other): (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>),
) -> bool {
    let outcome = tokio::time::timeout(Duration::from_secs(120), tokio::spawn(check(lock, other)))
        .await
        .expect("a conformance check must end (pass or panic) in bounded time");
    match outcome {
        Ok(()) => false,
        Err(err) => {
            assert!(
                err.is_panic(),
                "the check's task ended without a panic: {err}"
            );
            true
        }
    }
}

fn memory() -> (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>) {
    let locks = MemoryLock::new();
    (Arc::new(locks.clone()), Arc::new(locks))
}

/// `check` panics on a backend with `flaw`, and passes on `MemoryLock` and
/// on the same backend without the flaw.
async fn catches(flaw: Flaw, name: &str, check: Check) {
    assert!(
        !panics(check, memory()).await,
        "{name} must pass on MemoryLock (else the check itself is broken)"
    );
    assert!(
        !panics(check, clients(Flaw::None)).await,
        "{name} must pass on the test backend without a flaw"
    );
    assert!(
        panics(check, clients(flaw)).await,
        "{name} must fail a backend with the flaw {flaw:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_without_a_token_check_is_caught() {
    catches(
        Flaw::ReleaseWithoutTokenCheck,
        "stale_guard_cannot_extend_or_release",
        check!(conformance::stale_guard_cannot_extend_or_release),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_without_a_token_check_is_caught() {
    catches(
        Flaw::ExtendWithoutTokenCheck,
        "stale_guard_cannot_extend_or_release",
        check!(conformance::stale_guard_cannot_extend_or_release),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_per_client_are_caught() {
    catches(
        Flaw::FencingTokenPerClient,
        "fencing_tokens_increase",
        check!(conformance::fencing_tokens_increase),
    )
    .await;
    catches(
        Flaw::FencingTokenPerClient,
        "mutual_exclusion",
        check!(conformance::mutual_exclusion),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_mutual_exclusion_is_caught() {
    catches(
        Flaw::NoMutualExclusion,
        "mutual_exclusion",
        check!(conformance::mutual_exclusion),
    )
    .await;
    catches(
        Flaw::NoMutualExclusion,
        "try_acquire_on_held_lock",
        check!(conformance::try_acquire_on_held_lock),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_that_does_nothing_is_caught() {
    catches(
        Flaw::ExtendIsNoop,
        "extend_keeps_lock",
        check!(conformance::extend_keeps_lock),
    )
    .await;
    catches(
        Flaw::ExtendIsNoop,
        "auto_renew_keeps_lock",
        check!(conformance::auto_renew_keeps_lock),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_that_never_expires_is_caught() {
    catches(
        Flaw::TtlNeverExpires,
        "ttl_expiry_frees_lock",
        check!(conformance::ttl_expiry_frees_lock),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_cut_at_nul_are_caught() {
    catches(
        Flaw::NamesCutAtNul,
        "distinct_names_are_distinct_locks",
        check!(conformance::distinct_names_are_distinct_locks),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acquire_that_leaks_when_cancelled_is_caught() {
    catches(
        Flaw::NotCancelSafe,
        "cancelled_acquire_leaves_no_lock",
        check!(conformance::cancelled_acquire_leaves_no_lock),
    )
    .await;
}
