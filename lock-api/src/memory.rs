//! An in-process backend: for users' unit tests, and the reference the
//! conformance suite is first proven on.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::LockError;
use crate::backend::{Attempt, AttemptContext, Lease, LockBackend, WakeHub, Wakeup};

/// The largest TTL [`MemoryLock`] accepts: ten years.
pub const MEMORY_MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Locks that live in this process: TTLs, fencing tokens and wake-ups, with
/// the same behaviour as the network backends and no server.
///
/// Clones share their locks, like clients of one server. Use it in unit tests
/// of code that takes a `&dyn DistributedLock`, or for locks between tasks of
/// one process. Time is Tokio's clock, so `tokio::time::pause` works on it.
///
/// ```
/// use std::time::Duration;
/// use distlock_api::{DistributedLock, MemoryLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock_api::LockError> {
/// let locks = MemoryLock::new();
/// let other_client = locks.clone();
/// let first = locks.acquire("job", Duration::from_secs(1), Duration::ZERO).await?;
/// assert!(other_client.try_acquire("job", Duration::from_secs(1)).await?.is_none());
/// first.release().await?;
/// let second = other_client.acquire("job", Duration::from_secs(1), Duration::ZERO).await?;
/// assert!(second.fencing_token() > 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryLock {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: Mutex<HashMap<String, Entry>>,
    wakeups: WakeHub,
    next_holder: AtomicU64,
}

/// A name's state. Entries stay after release so fencing tokens keep rising.
#[derive(Default)]
struct Entry {
    fence: u64,
    holder: Option<Holder>,
}

#[derive(Clone, Copy)]
struct Holder {
    id: u64,
    expires: Instant,
}

impl Entry {
    /// The live holder, if any; an expired one no longer counts.
    fn live_holder(&self, now: Instant) -> Option<Holder> {
        self.holder.filter(|holder| holder.expires > now)
    }
}

impl std::fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLock")
            .field("names", &self.inner.lock_entries().len())
            .finish()
    }
}

impl Inner {
    fn lock_entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MemoryLock {
    /// A new, empty set of locks.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many locks are held right now (expired ones not counted).
    pub fn held(&self) -> usize {
        let now = Instant::now();
        self.inner
            .lock_entries()
            .values()
            .filter(|entry| entry.live_holder(now).is_some())
            .count()
    }

    /// Ends the current hold of `name` now, as if its TTL had run out on the
    /// server, without telling its guard: for tests of what a holder does
    /// when its lock is taken away behind its back (an operator deleting a
    /// key, a server that lost its data, a session that was killed).
    ///
    /// The guard keeps believing it holds the lock until it next asks (an
    /// extend, a renewal, the release, which then say [`LockError::Lost`]);
    /// anyone may take the lock at once, and waiters are woken. Returns
    /// whether `name` was held.
    pub fn expire_now(&self, name: &str) -> bool {
        let now = Instant::now();
        let mut entries = self.inner.lock_entries();
        let held = match entries.get_mut(name) {
            Some(entry) => match entry.live_holder(now) {
                Some(holder) => {
                    entry.holder = Some(Holder {
                        id: holder.id,
                        expires: now,
                    });
                    true
                }
                None => false,
            },
            None => false,
        };
        drop(entries);
        if held {
            self.inner.wakeups.notify(name);
        }
        held
    }
}

fn expiry(now: Instant, ttl: Duration) -> Instant {
    // TTLs are capped at ten years, which the clock can always add.
    now.checked_add(ttl).unwrap_or(now)
}

#[async_trait]
impl LockBackend for MemoryLock {
    type Key = String;
    type Lease = MemoryLease;

    fn kind(&self) -> &'static str {
        "memory"
    }

    fn max_ttl(&self) -> Duration {
        MEMORY_MAX_TTL
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(name.to_owned())
    }

    async fn try_lock(
        &self,
        name: &String,
        ttl: Duration,
        _ctx: &AttemptContext,
    ) -> Result<Attempt<MemoryLease>, LockError> {
        let now = Instant::now();
        let mut entries = self.inner.lock_entries();
        let entry = match entries.get_mut(name) {
            Some(entry) => entry,
            None => entries.entry(name.to_owned()).or_default(),
        };
        if let Some(holder) = entry.live_holder(now) {
            return Ok(Attempt::Held {
                retry_after: Some(holder.expires - now),
            });
        }
        let id = self.inner.next_holder.fetch_add(1, Ordering::Relaxed);
        entry.fence += 1;
        entry.holder = Some(Holder {
            id,
            expires: expiry(now, ttl),
        });
        Ok(Attempt::Acquired {
            lease: MemoryLease {
                inner: Arc::clone(&self.inner),
                name: name.to_owned(),
                id,
            },
            fencing_token: entry.fence,
        })
    }

    async fn subscribe(&self, name: &String, _ctx: &AttemptContext) -> Option<Wakeup> {
        Some(self.inner.wakeups.subscribe(name))
    }
}

/// A lock held in a [`MemoryLock`].
pub struct MemoryLease {
    inner: Arc<Inner>,
    name: String,
    id: u64,
}

impl std::fmt::Debug for MemoryLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLease")
            .field("name", &self.name)
            .finish()
    }
}

#[async_trait]
impl Lease for MemoryLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let now = Instant::now();
        let mut entries = self.inner.lock_entries();
        match entries.get_mut(&self.name) {
            Some(entry) if entry.live_holder(now).is_some_and(|h| h.id == self.id) => {
                entry.holder = Some(Holder {
                    id: self.id,
                    expires: expiry(now, ttl),
                });
                Ok(())
            }
            _ => Err(LockError::Lost),
        }
    }

    async fn release(&mut self) -> Result<(), LockError> {
        let now = Instant::now();
        let mut entries = self.inner.lock_entries();
        let Some(entry) = entries.get_mut(&self.name) else {
            return Err(LockError::Lost);
        };
        match entry.holder {
            Some(holder) if holder.id == self.id => {
                entry.holder = None;
                drop(entries);
                self.inner.wakeups.notify(&self.name);
                if holder.expires > now {
                    Ok(())
                } else {
                    Err(LockError::Lost)
                }
            }
            _ => Err(LockError::Lost),
        }
    }
}
