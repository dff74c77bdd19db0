//! A lock with one deliberate flaw, to prove that a check catches it.
//!
//! A test suite is only worth something if it fails broken backends. The
//! conformance suite's self-test and the history checker's run their checks
//! against [`BrokenLock`] with each [`Flaw`], expecting a failure, and
//! without a flaw ([`Flaw::None`]), expecting a pass.
//!
//! ```
//! use std::time::Duration;
//! use distlock_api::DistributedLock;
//! use distlock_api::conformance::broken::{BrokenStore, Flaw};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let store = BrokenStore::new(Flaw::NoMutualExclusion);
//! let (a, b) = (store.client(), store.client());
//! let ttl = Duration::from_secs(5);
//! let first = a.try_acquire("x", ttl).await.unwrap();
//! assert!(b.try_acquire("x", ttl).await.unwrap().is_some(), "two holders: the flaw");
//! # drop(first);
//! # }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::LockError;
use crate::backend::{Attempt, AttemptContext, Lease, LockBackend, WakeHub, Wakeup};

/// The one thing wrong with a [`BrokenLock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flaw {
    /// Nothing: a correct lock, to show the harness itself passes.
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
    /// The server keeps a lock for a twentieth of the TTL it promised.
    ExpiresEarly,
    /// Names are cut at the first NUL, as a C string would be.
    NamesCutAtNul,
    /// `try_lock` takes the lock, then awaits before it hands over the
    /// lease; dropped there, the lock stays behind until its TTL.
    NotCancelSafe,
}

/// The "server" the clients of one broken lock share.
pub struct BrokenStore {
    flaw: Flaw,
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

impl BrokenStore {
    /// A new, empty store whose clients all have `flaw`.
    pub fn new(flaw: Flaw) -> Arc<Self> {
        Arc::new(BrokenStore {
            flaw,
            entries: Mutex::default(),
            next_holder: AtomicU64::new(0),
            wakeups: WakeHub::new(),
        })
    }

    /// A new client of this store, with a fencing counter of its own (used
    /// only with [`Flaw::FencingTokenPerClient`]).
    pub fn client(self: &Arc<Self>) -> BrokenLock {
        BrokenLock {
            store: Arc::clone(self),
            own_fence: AtomicU64::new(0),
        }
    }

    fn entries(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long the store keeps a lock asked for `ttl`.
    fn kept(&self, ttl: Duration) -> Duration {
        if self.flaw == Flaw::ExpiresEarly {
            ttl / 20
        } else {
            ttl
        }
    }
}

/// One client of a [`BrokenStore`].
pub struct BrokenLock {
    store: Arc<BrokenStore>,
    own_fence: AtomicU64,
}

#[async_trait]
impl LockBackend for BrokenLock {
    type Key = String;
    type Lease = BrokenLease;

    fn kind(&self) -> &'static str {
        "broken"
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(match (self.store.flaw, name.split_once('\0')) {
            (Flaw::NamesCutAtNul, Some((before, _))) => before.to_owned(),
            _ => name.to_owned(),
        })
    }

    async fn try_lock(
        &self,
        key: &String,
        ttl: Duration,
        _ctx: &AttemptContext,
    ) -> Result<Attempt<BrokenLease>, LockError> {
        let flaw = self.store.flaw;
        let granted = {
            let now = Instant::now();
            let mut entries = self.store.entries();
            let entry = entries.entry(key.clone()).or_default();
            if flaw != Flaw::NoMutualExclusion && entry.live(now, flaw).is_some() {
                return Ok(Attempt::Held { retry_after: None });
            }
            let id = self.store.next_holder.fetch_add(1, Ordering::Relaxed);
            entry.fence += 1;
            let fencing_token = if flaw == Flaw::FencingTokenPerClient {
                self.own_fence.fetch_add(1, Ordering::Relaxed) + 1
            } else {
                entry.fence
            };
            entry.holder = Some((id, now + self.store.kept(ttl)));
            (id, fencing_token)
        };
        if flaw == Flaw::NotCancelSafe {
            tokio::task::yield_now().await;
        }
        let (id, fencing_token) = granted;
        Ok(Attempt::Acquired {
            lease: BrokenLease {
                store: Arc::clone(&self.store),
                key: key.clone(),
                id,
            },
            fencing_token,
        })
    }

    async fn subscribe(&self, key: &String, _ctx: &AttemptContext) -> Option<Wakeup> {
        Some(self.store.wakeups.subscribe(key))
    }
}

/// A lock granted by a [`BrokenLock`].
pub struct BrokenLease {
    store: Arc<BrokenStore>,
    key: String,
    id: u64,
}

#[async_trait]
impl Lease for BrokenLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let flaw = self.store.flaw;
        let now = Instant::now();
        let kept = self.store.kept(ttl);
        let mut entries = self.store.entries();
        let Some(entry) = entries.get_mut(&self.key) else {
            return Err(LockError::Lost);
        };
        match (entry.live(now, flaw), flaw) {
            (Some(holder), Flaw::ExtendWithoutTokenCheck) => {
                entry.holder = Some((holder, now + kept));
                Ok(())
            }
            (Some(holder), Flaw::ExtendIsNoop) if holder == self.id => Ok(()),
            (Some(holder), _) if holder == self.id => {
                entry.holder = Some((holder, now + kept));
                Ok(())
            }
            _ => Err(LockError::Lost),
        }
    }

    async fn release(&mut self) -> Result<(), LockError> {
        let flaw = self.store.flaw;
        let now = Instant::now();
        let mut entries = self.store.entries();
        let Some(entry) = entries.get_mut(&self.key) else {
            return Err(LockError::Lost);
        };
        let ours = entry.live(now, flaw) == Some(self.id);
        if ours || (flaw == Flaw::ReleaseWithoutTokenCheck && entry.holder.is_some()) {
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
