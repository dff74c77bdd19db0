//! The small interface a backend implements; everything else a lock does
//! (waiting, guards, renewal, drop) is built on it once, in this crate.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Backoff, Drift, LockError, Wakeup};

/// The primitive operations of a lock server.
///
/// Implement this, and your type is a [`DistributedLock`](crate::DistributedLock)
/// through a blanket implementation: names and TTLs are validated before any
/// method here is called, and waiting, backoff, wake-ups, guards, renewal and
/// release-on-drop come from this crate.
///
/// Contract for implementors:
/// - [`try_lock`](LockBackend::try_lock) makes one attempt and never waits for
///   the lock. It must be **cancel safe**: if its future is dropped after the
///   server may have granted the lock, the lock must still be released (for
///   example by a drop guard that releases in the background), or be left to
///   expire within `ttl`.
/// - Names are opaque: distinct names must be distinct locks, whatever bytes
///   they contain.
/// - A lease must never outlive its TTL on the server by less than the TTL:
///   round sub-millisecond TTLs *up*, never down.
/// - Fencing tokens are strictly increasing per name across all clients of
///   one server.
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// What a granted lock carries: enough to extend and release it.
    type Lease: Lease;

    /// A short name for logs and metrics: `"redis"`, `"redlock"`, `"postgres"`, `"memory"`.
    fn kind(&self) -> &'static str;

    /// The largest TTL this backend accepts.
    fn max_ttl(&self) -> Duration;

    /// The clock-drift allowance for guards' `valid_until`.
    fn drift(&self) -> Drift {
        Drift::default()
    }

    /// The backoff between attempts while waiting.
    fn backoff(&self) -> Backoff {
        Backoff::default()
    }

    /// One attempt to take `name` for `ttl`.
    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Attempt<Self::Lease>, LockError>;

    /// Registers for a wake-up when `name` may have become free. Called
    /// *before* an attempt, so a release between the attempt and the wait is
    /// not missed. `None` (the default) means waiting relies on backoff alone.
    async fn subscribe(&self, name: &str) -> Option<Wakeup> {
        let _ = name;
        None
    }
}

/// The outcome of one [`LockBackend::try_lock`].
#[derive(Debug)]
pub enum Attempt<L> {
    /// The lock is ours.
    Acquired {
        /// The handle to extend and release it.
        lease: L,
        /// The fencing token of this acquisition.
        fencing_token: u64,
    },
    /// Someone else holds the lock.
    Held {
        /// How long the current holder's lease has left, if the server said.
        /// Waiters never sleep past it.
        retry_after: Option<Duration>,
    },
}

/// A granted lock on the server: the part of a guard that talks to the backend.
///
/// The guard serialises calls: `extend` and `release` never run at the same
/// time on one lease.
#[async_trait]
pub trait Lease: Send + 'static {
    /// Makes the lock live `ttl` from now, if it is still ours.
    ///
    /// Returns [`LockError::Lost`] when the server says the lock is no longer
    /// ours. Must tolerate being cancelled (the renewal task gives up on an
    /// extend that outlasts the lease's validity).
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError>;

    /// Gives the lock back, if it is still ours; [`LockError::Lost`] if not.
    ///
    /// The guard calls it at most once per lease, from a task of its own
    /// that the guard's user cannot cancel (a cancelled
    /// [`LockGuard::release`](crate::LockGuard::release) only stops waiting
    /// for it), and reports its answer as it is. The task can still be
    /// dropped mid-call when the runtime shuts down: a lease dropped without
    /// a successful release must not leave a lock behind for longer than its
    /// TTL (or its connection's life).
    async fn release(&mut self) -> Result<(), LockError>;
}
