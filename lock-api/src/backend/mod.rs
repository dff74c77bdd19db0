//! The interface a backend implements, and the pieces every backend shares.
//!
//! Users of distlock never need this module: it is for the crates that put a
//! lock server behind [`DistributedLock`](crate::DistributedLock). Implement
//! [`LockBackend`] (one attempt, no waiting) and [`Lease`] (extend and
//! release one granted lock), and the blanket implementation gives your
//! type `try_acquire`, `acquire`, guards, renewal, release on drop, tracing
//! and metrics, exactly as every other backend has them.
//!
//! # Flow of one lock
//!
//! ```text
//! acquire(name, ttl, wait)
//!   validate name and TTL                          (crate rules)
//!   key = backend.key(name)                        (once per call)
//!   wakeup = backend.subscribe(&key, &ctx)         (before the first attempt)
//!   loop {
//!     backend.try_lock(&key, ttl, &ctx)            ctx: deadline, attempt number
//!       Acquired { lease, token } -> LockGuard     (no await in between)
//!       Held { retry_after }      -> sleep: backoff, wake-up or retry_after
//!       Err(Connection)           -> retry until the deadline, then return it
//!       Err(other)                -> return it
//!   }
//! guard.extend(ttl) -> lease.extend(ttl)          (serialised per lease)
//! guard.release()   -> lease.release()            (once, in a task owning the lease)
//! ```
//!
//! The [`AttemptContext`] carries the caller's deadline, so an attempt that
//! has to wait for something of its own (a free pooled connection, a
//! session) waits at most that long and returns its own typed error; the
//! waiting loop records and returns exactly what the attempt returned.
//!
//! # Shared pieces
//!
//! - [`WakeHub`] / [`Wakeup`]: in-process wake-ups by key, first come first served.
//! - [`Listener`] and [`Subscription`]: the task that keeps a server
//!   subscription (Redis `SUBSCRIBE`, PostgreSQL `LISTEN`) alive, resubscribing
//!   with jittered backoff, and turns its messages into wake-ups.
//! - [`redact_url`] and [`redact_secret`]: URLs and driver messages without passwords.
//! - [`ttl_millis`]: a TTL in whole milliseconds, rounded up.
//! - [`Backoff`] and [`Drift`]: waiting and validity parameters.

mod context;
mod listen;
mod url;

use std::time::Duration;

use async_trait::async_trait;

use crate::LockError;

pub use crate::lock::{acquire_with, try_acquire_with};
pub use crate::timing::{Backoff, Drift};
pub use crate::wakeup::{WakeHub, Wakeup};
pub use context::{AttemptContext, Deadline};
pub use listen::{ListenState, Listener, Message, Subscription};
pub use url::{redact_secret, redact_url};

/// The primitive operations of a lock server.
///
/// Implement this, and your type is a [`DistributedLock`](crate::DistributedLock)
/// through a blanket implementation: names and TTLs are validated before any
/// method here is called, and waiting, backoff, wake-ups, guards, renewal,
/// release-on-drop, tracing and metrics come from this crate.
///
/// Contract for implementors:
/// - [`key`](LockBackend::key) maps a valid name to what the server locks.
///   Distinct names must map to distinct keys (or, for a hashing backend,
///   the collision odds are documented), whatever bytes they contain.
/// - [`try_lock`](LockBackend::try_lock) makes one attempt and never waits
///   for the lock itself. Whatever else it waits for (a pooled connection,
///   a reply) it waits for no longer than the context's
///   [`Deadline`] allows. It must be **cancel safe**: if its future is
///   dropped after the server may have granted the lock, the lock must
///   still be released (for example by a lease whose drop releases in the
///   background), or be left to expire within `ttl`.
/// - A lease must never outlive its TTL on the server by less than the TTL:
///   round sub-millisecond TTLs *up* ([`ttl_millis`]), never down.
/// - Fencing tokens are strictly increasing per key across all clients of
///   one server.
///
/// ```
/// use std::time::Duration;
/// use distlock_api::backend::{Attempt, AttemptContext, Lease, LockBackend};
/// use distlock_api::{DistributedLock, LockError};
///
/// /// A backend that grants every lock (don't): the smallest implementation.
/// struct Yes;
/// struct Granted;
///
/// #[async_trait::async_trait]
/// impl Lease for Granted {
///     async fn extend(&mut self, _ttl: Duration) -> Result<(), LockError> { Ok(()) }
///     async fn release(&mut self) -> Result<(), LockError> { Ok(()) }
/// }
///
/// #[async_trait::async_trait]
/// impl LockBackend for Yes {
///     type Key = String;
///     type Lease = Granted;
///     fn kind(&self) -> &'static str { "yes" }
///     fn max_ttl(&self) -> Duration { Duration::from_secs(60) }
///     fn key(&self, name: &str) -> Result<String, LockError> { Ok(name.to_owned()) }
///     async fn try_lock(
///         &self,
///         _key: &String,
///         _ttl: Duration,
///         _ctx: &AttemptContext,
///     ) -> Result<Attempt<Granted>, LockError> {
///         Ok(Attempt::Acquired { lease: Granted, fencing_token: 1 })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), LockError> {
/// let guard = Yes.acquire("a", Duration::from_secs(1), Duration::ZERO).await?;
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait LockBackend: Send + Sync + 'static {
    /// What the server locks for a name: a prefixed key, a hashed integer, ...
    type Key: Send + Sync + 'static;

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

    /// The server's key for `name` (already checked against the naming
    /// rules). Called once per `acquire`, not once per attempt.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name this backend cannot lock.
    fn key(&self, name: &str) -> Result<Self::Key, LockError>;

    /// One attempt to take `key` for `ttl`, within `ctx`'s deadline.
    async fn try_lock(
        &self,
        key: &Self::Key,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<Self::Lease>, LockError>;

    /// Registers for a wake-up when `key` may have become free. Called
    /// *before* the first attempt, so a release between an attempt and the
    /// wait that follows it is not missed. `None` (the default) means
    /// waiting relies on backoff alone.
    async fn subscribe(&self, key: &Self::Key, ctx: &AttemptContext) -> Option<Wakeup> {
        let _ = (key, ctx);
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

/// `ttl` in whole milliseconds, rounded **up** (a lease must never be
/// shorter on the server than asked), saturating at `u64::MAX`.
///
/// ```
/// use std::time::Duration;
/// use distlock_api::backend::ttl_millis;
///
/// assert_eq!(ttl_millis(Duration::from_micros(1500)), 2);
/// assert_eq!(ttl_millis(Duration::from_millis(7)), 7);
/// assert_eq!(ttl_millis(Duration::MAX), u64::MAX);
/// ```
pub fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}
