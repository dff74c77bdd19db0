//! The suite is only worth something if it fails broken backends. Each test
//! here builds a backend with one deliberate flaw on the public
//! `LockBackend` / `Lease` interface, runs the check meant to catch that
//! flaw, and asserts that it panics — and that the same check passes on
//! `MemoryLock` and on the same backend without the flaw, so the failure is
//! the flaw's and not the test's.
#![cfg(feature = "conformance")]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::conformance::{self, Config};
use distlock_api::{
    Attempt, DistributedLock, Instant, Lease, LockBackend, LockError, MemoryLock, WakeHub, Wakeup,
};

/// The one thing wrong with a [`Flawed`] backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// Nothing: a correct backend, to show the harness itself passes.
    None,
    /// `release` deletes whoever holds the name (a plain `DEL`).
    ReleaseWithoutTokenCheck,
    /// `extend` extends whoever holds the name (a plain `PEXPIRE`).
    ExtendWithoutTokenCheck,
    /// Each client counts fencing tokens on its own.
    FencingTokenPerClient,
    /// `try_lock` always grants.
    NoMutualExclusion,
    /// `extend` says Ok and changes nothing.
    ExtendIsNoop,
    /// Locks never expire.
    TtlNeverExpires,
    /// Names are cut at the first NUL, as a C string would be.
    NamesCutAtNul,
    /// `try_lock` takes the lock, then awaits before it hands over the
    /// lease; dropped there, the lock stays behind until its TTL.
    NotCancelSafe,
}

#[derive(Default)]
struct Store {
    entries: Mutex<HashMap<String, Entry>>,
    next_holder: AtomicU64,
    wakeups: WakeHub,
}

#[derive(Default)]
struct Entry {
    fence: u64,
    holder: Option<(u64, Instant)>,
}

impl Entry {
    fn live(&self, now: Instant, flaw: Flaw) -> Option<u64> {
        self.holder
            .filter(|&(_, expires)| flaw == Flaw::TtlNeverExpires || expires > now)
            .map(|(id, _)| id)
    }
}

impl Store {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One client of a [`Store`] with a [`Flaw`].
struct Flawed {
    store: Arc<Store>,
    flaw: Flaw,
    /// This client's own fencing counter, for [`Flaw::FencingTokenPerClient`].
    own_fence: AtomicU64,
}

/// Two clients of one new store.
fn clients(flaw: Flaw) -> (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>) {
    let store = Arc::new(Store::default());
    let client = || Flawed {
        store: Arc::clone(&store),
        flaw,
        own_fence: AtomicU64::new(0),
    };
    (Arc::new(client()), Arc::new(client()))
}

impl Flawed {
    fn key(&self, name: &str) -> String {
        match (self.flaw, name.split_once('\0')) {
            (Flaw::NamesCutAtNul, Some((before, _))) => before.to_owned(),
            _ => name.to_owned(),
        }
    }
}

#[async_trait]
impl LockBackend for Flawed {
    type Lease = FlawedLease;

    fn kind(&self) -> &'static str {
        "flawed"
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Attempt<FlawedLease>, LockError> {
        let key = self.key(name);
        let granted = {
            let now = Instant::now();
            let mut entries = self.store.entries();
            let entry = entries.entry(key.clone()).or_default();
            if self.flaw != Flaw::NoMutualExclusion && entry.live(now, self.flaw).is_some() {
                return Ok(Attempt::Held { retry_after: None });
            }
            let id = self.store.next_holder.fetch_add(1, Ordering::Relaxed);
            entry.fence += 1;
            let fencing_token = if self.flaw == Flaw::FencingTokenPerClient {
                self.own_fence.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                entry.fence
            };
            entry.holder = Some((id, now + ttl));
            (id, fencing_token)
        };
        if self.flaw == Flaw::NotCancelSafe {
            tokio::task::yield_now().await;
        }
        let (id, fencing_token) = granted;
        Ok(Attempt::Acquired {
            lease: FlawedLease {
                store: Arc::clone(&self.store),
                flaw: self.flaw,
                key,
                id,
            },
            fencing_token,
        })
    }

    async fn subscribe(&self, name: &str) -> Option<Wakeup> {
        Some(self.store.wakeups.subscribe(&self.key(name)))
    }
}

struct FlawedLease {
    store: Arc<Store>,
    flaw: Flaw,
    key: String,
    id: u64,
}

#[async_trait]
impl Lease for FlawedLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let now = Instant::now();
        let mut entries = self.store.entries();
        let Some(entry) = entries.get_mut(&self.key) else {
            return Err(LockError::Lost);
        };
        match (entry.live(now, self.flaw), self.flaw) {
            (Some(holder), Flaw::ExtendWithoutTokenCheck) => {
                entry.holder = Some((holder, now + ttl));
                Ok(())
            }
            (Some(holder), Flaw::ExtendIsNoop) if holder == self.id => Ok(()),
            (Some(holder), _) if holder == self.id => {
                entry.holder = Some((holder, now + ttl));
                Ok(())
            }
            _ => Err(LockError::Lost),
        }
    }

    async fn release(&mut self) -> Result<(), LockError> {
        let now = Instant::now();
        let mut entries = self.store.entries();
        let Some(entry) = entries.get_mut(&self.key) else {
            return Err(LockError::Lost);
        };
        let ours = entry.live(now, self.flaw) == Some(self.id);
        if ours || self.flaw == Flaw::ReleaseWithoutTokenCheck {
            entry.holder = None;
            drop(entries);
            self.store.wakeups.notify(&self.key);
            Ok(())
        } else {
            if entry.holder.is_some_and(|(id, _)| id == self.id) {
                entry.holder = None; // our own, expired
            }
            Err(LockError::Lost)
        }
    }
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
