//! The guard a caller holds while it owns a lock: validity, extend, release,
//! release-on-drop, loss notification and opt-in background renewal.
//!
//! Slightly over 600 lines: the guard, its one release task and its renewal
//! task share one state (`Shared`) whose invariants are argued once, here.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::Lease;
use crate::{Drift, LockError, observe, validate_ttl};

/// Proof that this process holds a lock, until [`release`](LockGuard::release),
/// drop, or loss.
///
/// # Validity
///
/// A lock lives on the server for its TTL. The guard keeps a conservative
/// [`valid_until`](LockGuard::valid_until) on the local monotonic clock: the
/// instant the acquire (or the last extend) *started*, plus the TTL, minus a
/// clock-drift allowance. Before that instant the lock is ours unless the
/// server lost it (a restart without persistence, a killed connection); after
/// it, [`is_lost`](LockGuard::is_lost) is true. Work that must not run without
/// the lock should pass [`fencing_token`](LockGuard::fencing_token) to the
/// storage it writes, which rejects a token older than one it has seen.
///
/// # Dropping
///
/// Dropping a guard without [`release`](LockGuard::release) gives the lock
/// back in the background on a best-effort basis: the release is spawned on
/// the Tokio runtime, so it is prompt but not complete when `drop` returns.
/// Drop never blocks and never panics, also outside a runtime; if no runtime
/// is left to run the release, the TTL (or, for PostgreSQL, the closed
/// connection) frees the lock.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard {
    shared: Arc<Shared>,
}

/// What a guard needs to know about the backend that granted it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BackendInfo {
    pub(crate) kind: &'static str,
    pub(crate) max_ttl: Duration,
    pub(crate) drift: Drift,
}

/// The outcome of a guard's one release, as [`Shared::start_release`] hands it out.
type PendingRelease = Pin<Box<dyn Future<Output = Result<(), LockError>> + Send>>;

/// State shared by a guard, its renewal task and its [`LockContext`]s.
struct Shared {
    name: String,
    kind: &'static str,
    fencing_token: u64,
    max_ttl: Duration,
    drift: Drift,
    /// The start of the winning attempt: where the hold time counts from.
    acquired_at: Instant,
    /// `None` once the release task has taken it.
    lease: tokio::sync::Mutex<Option<Box<dyn Lease>>>,
    /// Set when the one release of this guard has started (see
    /// [`Shared::start_release`]).
    release_started: AtomicBool,
    validity: Mutex<Validity>,
    /// Set when the lock was found lost (not when it was released).
    lost: AtomicBool,
    /// Cancelled when the guard stops holding the lock for any reason.
    ended: CancellationToken,
    /// Cancelled to stop the renewal task; `None` while renewal is off.
    renewal: Mutex<Option<CancellationToken>>,
    runtime: Option<Handle>,
}

#[derive(Debug, Clone, Copy)]
struct Validity {
    ttl: Duration,
    renewed_at: Instant,
    valid_until: Instant,
}

impl Validity {
    fn new(started: Instant, ttl: Duration, drift: Drift) -> Self {
        Validity {
            ttl,
            renewed_at: started,
            // Past the end of the clock's range means "no deadline we can represent":
            // treat the lease as already expired rather than as eternal.
            valid_until: started.checked_add(drift.trusted(ttl)).unwrap_or(started),
        }
    }
}

impl Shared {
    fn validity(&self) -> Validity {
        *self.validity.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn renewed(&self, started: Instant, ttl: Duration) {
        *self.validity.lock().unwrap_or_else(PoisonError::into_inner) =
            Validity::new(started, ttl, self.drift);
    }

    fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
            || self.ended.is_cancelled()
            || Instant::now() >= self.validity().valid_until
    }

    fn mark_lost(&self, reason: &str) {
        if !self.lost.swap(true, Ordering::AcqRel) {
            observe::lost(self.kind);
            tracing::warn!(
                lock.name = %self.name,
                lock.backend = self.kind,
                lock.fencing_token = self.fencing_token,
                reason,
                "lock lost"
            );
        }
        self.ended.cancel();
    }

    /// Reports the end of a release (explicit or on drop); one that found
    /// the lock gone marks the guard lost, so the loss is counted once.
    fn released(&self, result: &Result<(), LockError>, message: &'static str) {
        if matches!(result, Err(LockError::Lost)) {
            self.mark_lost("release found the lock gone");
        }
        observe::released(self.kind, result);
        match result {
            Err(err @ (LockError::Connection(_) | LockError::Backend(_))) => tracing::warn!(
                lock.name = %self.name,
                lock.backend = self.kind,
                lock.fencing_token = self.fencing_token,
                error = %err,
                "{message}: failed; the TTL frees the lock"
            ),
            _ => tracing::debug!(
                lock.name = %self.name,
                lock.backend = self.kind,
                lock.fencing_token = self.fencing_token,
                outcome = observe::outcome_label(result),
                "{message}"
            ),
        }
    }

    fn stop_renewal(&self) {
        if let Some(stop) = self
            .renewal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            stop.cancel();
        }
    }

    /// The runtime to run background work on: the current one, else the
    /// one the guard was granted on.
    fn handle(&self) -> Option<Handle> {
        Handle::try_current().ok().or_else(|| self.runtime.clone())
    }

    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        // Spawning onto a runtime that has shut down drops the task, which
        // is the best we can do then: the TTL frees the lock.
        if let Some(handle) = self.handle() {
            drop(handle.spawn(task));
        }
    }

    /// Starts the one release of this guard's lease, unless it has started
    /// already (then `None`), and returns a future of its result.
    ///
    /// The release runs in a task of its own that owns the lease, so a
    /// caller that stops waiting (a cancelled [`LockGuard::release`], a
    /// dropped guard) cannot abort the request halfway: the server is asked
    /// once, and its answer is reported once, as it is. Dropping the
    /// returned future only stops waiting for it. Without a runtime to spawn
    /// on, the future itself does the release, and dropping it drops the
    /// lease (the TTL, or for PostgreSQL the closed connection, frees it).
    fn start_release(self: &Arc<Self>, message: &'static str) -> Option<PendingRelease> {
        if self.release_started.swap(true, Ordering::AcqRel) {
            return None;
        }
        // The hold ends now, whether or not a runtime is left to tell the
        // server.
        observe::held(self.kind, self.acquired_at);
        // Take the lease now unless an extend has it, so that it goes with
        // the task even if the task never runs.
        let lease = match self.lease.try_lock() {
            Ok(mut slot) => Some(slot.take()),
            Err(_) => None,
        };
        let shared = Arc::clone(self);
        let task = async move {
            let lease = match lease {
                Some(lease) => lease,
                // The renewal task is mid-extend: release once it lets go.
                None => shared.lease.lock().await.take(),
            };
            shared.finish_release(lease, message).await
        };
        Some(match self.handle() {
            Some(handle) => {
                let task = handle.spawn(task);
                Box::pin(async move {
                    match task.await {
                        Ok(result) => result,
                        Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                        Err(_) => Err(LockError::connection(
                            "the runtime shut down before the release finished; the TTL frees \
                             the lock",
                        )),
                    }
                })
            }
            None => Box::pin(task),
        })
    }

    /// Releases `lease` on the server and reports the outcome (once per
    /// guard, as the caller gets it).
    async fn finish_release(
        &self,
        lease: Option<Box<dyn Lease>>,
        message: &'static str,
    ) -> Result<(), LockError> {
        let mut lease = lease;
        let result = match lease.as_mut() {
            Some(lease) => lease.release().await,
            None => Err(LockError::Lost),
        };
        self.ended.cancel();
        let result = match result {
            // A lock found lost before cannot be released as ours.
            Ok(()) if self.lost.load(Ordering::Acquire) => Err(LockError::Lost),
            other => other,
        };
        self.released(&result, message);
        // Only now: a lease may hold resources (a connection) until dropped.
        drop(lease);
        result
    }

    fn lost_future(self: &Arc<Self>) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(self);
        async move {
            loop {
                let valid_until = shared.validity().valid_until;
                tokio::select! {
                    () = shared.ended.cancelled() => return,
                    () = tokio::time::sleep_until(valid_until) => {
                        // An extend may have moved the deadline while we slept.
                        if Instant::now() >= shared.validity().valid_until {
                            return;
                        }
                    }
                }
            }
        }
    }
}

impl LockGuard {
    pub(crate) fn new(
        name: &str,
        backend: BackendInfo,
        fencing_token: u64,
        lease: Box<dyn Lease>,
        started: Instant,
        ttl: Duration,
    ) -> Self {
        let BackendInfo {
            kind,
            max_ttl,
            drift,
        } = backend;
        LockGuard {
            shared: Arc::new(Shared {
                name: name.to_owned(),
                kind,
                fencing_token,
                max_ttl,
                drift,
                acquired_at: started,
                lease: tokio::sync::Mutex::new(Some(lease)),
                release_started: AtomicBool::new(false),
                validity: Mutex::new(Validity::new(started, ttl, drift)),
                lost: AtomicBool::new(false),
                ended: CancellationToken::new(),
                renewal: Mutex::new(None),
                runtime: Handle::try_current().ok(),
            }),
        }
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Strictly increasing per lock name across successful acquisitions on
    /// one backend (while the server keeps its data). Pass it to the storage
    /// you protect, and have it reject writes with a token lower than the
    /// highest it has accepted: that keeps a holder that stalled past its TTL
    /// from overwriting the next holder's work.
    pub fn fencing_token(&self) -> u64 {
        self.shared.fencing_token
    }

    /// The backend that granted the lock: `"redis"`, `"redlock"`, `"postgres"`, `"memory"`, ….
    pub fn backend(&self) -> &'static str {
        self.shared.kind
    }

    /// The TTL of the last successful acquire or extend.
    pub fn ttl(&self) -> Duration {
        self.shared.validity().ttl
    }

    /// The instant (monotonic clock) until which the lock is certainly ours,
    /// barring server-side loss: start of the last acquire or extend + TTL −
    /// drift allowance.
    pub fn valid_until(&self) -> Instant {
        self.shared.validity().valid_until
    }

    /// How much of the validity is left (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// True once the lock is known lost (an extend or renewal found it gone)
    /// or its validity has passed without a successful extend.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// A future that resolves when this guard stops holding the lock: it was
    /// found lost, its validity passed, or the guard was released or dropped.
    ///
    /// It does not borrow the guard, so it can race the protected work in
    /// `tokio::select!` or move into a task.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.lost_future()
    }

    /// A cheap, cloneable view of this guard for code that must not own it
    /// (see [`LockContext`]).
    pub fn context(&self) -> LockContext {
        LockContext {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Makes the lock live `ttl` from now, if it is still ours.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the lock is no longer ours (expired, taken,
    /// connection gone) — the guard is then lost for good;
    /// [`LockError::InvalidTtl`] for a TTL the backend does not accept;
    /// [`LockError::Connection`] when the server could not be asked (the
    /// lease keeps its old validity).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe in the sense that matters: if the future is dropped, the
    /// lock may or may not have been extended, and `valid_until` keeps the
    /// old, conservative value.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        validate_ttl(ttl, self.shared.max_ttl)?;
        if self.shared.lost.load(Ordering::Acquire) {
            return Err(LockError::Lost);
        }
        let mut slot = self.shared.lease.lock().await;
        let Some(lease) = slot.as_mut() else {
            return Err(LockError::Lost);
        };
        let started = Instant::now();
        let result = lease.extend(ttl).await;
        observe::extended(self.shared.kind, &result);
        match result {
            Ok(()) => {
                self.shared.renewed(started, ttl);
                tracing::debug!(
                    lock.name = %self.shared.name,
                    lock.backend = self.shared.kind,
                    lock.fencing_token = self.shared.fencing_token,
                    ?ttl,
                    "lock extended"
                );
                Ok(())
            }
            Err(LockError::Lost) => {
                self.shared.mark_lost("extend found the lock gone");
                Err(LockError::Lost)
            }
            Err(err) => {
                tracing::debug!(
                    lock.name = %self.shared.name,
                    lock.backend = self.shared.kind,
                    error = %err,
                    "extend failed"
                );
                Err(err)
            }
        }
    }

    /// Gives the lock back now and says whether it was still ours.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`] when the lock was no longer ours at release time
    /// (or had been found lost before); [`LockError::Connection`] when the
    /// server could not be asked, in which case the lock is freed by its TTL.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe. The request runs in a task of its own (on the Tokio
    /// runtime), which the future only waits for: if the future is dropped,
    /// the release still completes in the background, the server is asked
    /// exactly once, and its answer is logged and counted as it is — a
    /// release the server carried out is never reported as a lost lock.
    pub async fn release(self) -> Result<(), LockError> {
        self.shared.stop_renewal();
        match self.shared.start_release("lock released") {
            Some(release) => release.await,
            // Unreachable: only `release` (which takes the guard) and drop
            // start a release.
            None => Err(LockError::Lost),
        }
    }

    /// Starts renewing the lock in the background: about every `ttl / 3`
    /// it extends the lock by the current TTL, until the guard is released
    /// or dropped.
    ///
    /// Each extend may take until the guard's validity runs out (a slow
    /// answer is still an answer); one that fails with a connection error is
    /// retried about every `ttl / 10`. When an extend finds the lock gone,
    /// or the server stays unreachable until the validity runs out, renewal
    /// stops and the guard becomes lost:
    /// [`is_lost`](LockGuard::is_lost) turns true and [`lost`](LockGuard::lost)
    /// resolves. Calling it again while renewal runs does nothing. Needs a
    /// Tokio runtime (it spawns a task); outside one it does nothing.
    pub fn auto_renew(&mut self) -> &mut Self {
        let mut renewal = self
            .shared
            .renewal
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if renewal.is_none() && !self.shared.ended.is_cancelled() {
            let stop = CancellationToken::new();
            *renewal = Some(stop.clone());
            self.shared.spawn(renew(Arc::clone(&self.shared), stop));
        }
        drop(renewal);
        self
    }

    /// True while background renewal runs (see [`auto_renew`](LockGuard::auto_renew)).
    pub fn is_renewing(&self) -> bool {
        self.shared
            .renewal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(|stop| !stop.is_cancelled())
            && !self.shared.ended.is_cancelled()
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.shared.name)
            .field("backend", &self.shared.kind)
            .field("fencing_token", &self.shared.fencing_token)
            .field("ttl", &self.ttl())
            .field("remaining", &self.remaining())
            .field("lost", &self.is_lost())
            .finish()
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.shared.stop_renewal();
        self.shared.ended.cancel();
        // Spawned unless a release already runs; nothing to wait for here.
        drop(self.shared.start_release("lock released on drop"));
    }
}

/// A cloneable, read-only view of a held lock: what
/// [`with_lock`](crate::DistributedLockExt::with_lock) hands to its closure.
///
/// It does not keep the lock: when the guard goes, the context reports lost.
#[derive(Clone)]
pub struct LockContext {
    shared: Arc<Shared>,
}

impl LockContext {
    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The fencing token of the acquisition (see [`LockGuard::fencing_token`]).
    pub fn fencing_token(&self) -> u64 {
        self.shared.fencing_token
    }

    /// See [`LockGuard::valid_until`].
    pub fn valid_until(&self) -> Instant {
        self.shared.validity().valid_until
    }

    /// See [`LockGuard::is_lost`]; also true once the guard is released or dropped.
    pub fn is_lost(&self) -> bool {
        self.shared.is_lost()
    }

    /// See [`LockGuard::lost`].
    pub fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        self.shared.lost_future()
    }
}

impl fmt::Debug for LockContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockContext")
            .field("name", &self.shared.name)
            .field("fencing_token", &self.shared.fencing_token)
            .field("lost", &self.is_lost())
            .finish()
    }
}

/// The renewal task: extend at a third of the TTL; on trouble, retry until
/// the validity runs out, then declare the lock lost.
async fn renew(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let validity = shared.validity();
        let next = validity.renewed_at + validity.ttl / 3;
        tokio::select! {
            () = stop.cancelled() => return,
            () = shared.ended.cancelled() => return,
            () = tokio::time::sleep_until(next) => {}
        }
        loop {
            let mut slot = tokio::select! {
                () = stop.cancelled() => return,
                slot = shared.lease.lock() => slot,
            };
            let Some(lease) = slot.as_mut() else { return };
            let Validity {
                ttl, valid_until, ..
            } = shared.validity();
            let started = Instant::now();
            // An extend may take until the lease runs out: cutting it short
            // earlier would abandon a request that may still succeed (and
            // for some backends, such as PostgreSQL, abandoning it gives the
            // lock up). Backends bound their own commands.
            let attempt_limit = valid_until
                .saturating_duration_since(started)
                .max(Duration::from_millis(1));
            let outcome = tokio::time::timeout(attempt_limit, lease.extend(ttl)).await;
            drop(slot);
            let err = match outcome {
                Ok(Ok(())) => {
                    shared.renewed(started, ttl);
                    observe::renewed(shared.kind);
                    tracing::debug!(
                        lock.name = %shared.name,
                        lock.backend = shared.kind,
                        lock.fencing_token = shared.fencing_token,
                        ?ttl,
                        "lock renewed"
                    );
                    break;
                }
                Ok(Err(LockError::Lost)) => {
                    observe::renewal_failed(shared.kind);
                    shared.mark_lost("renewal found the lock gone");
                    return;
                }
                Ok(Err(err)) => err.to_string(),
                Err(_) => format!("extend did not answer within {attempt_limit:?}"),
            };
            observe::renewal_failed(shared.kind);
            let valid_until = shared.validity().valid_until;
            let now = Instant::now();
            if now >= valid_until {
                shared.mark_lost("renewal could not reach the server before the lease ran out");
                return;
            }
            tracing::warn!(
                lock.name = %shared.name,
                lock.backend = shared.kind,
                lock.fencing_token = shared.fencing_token,
                error = %err,
                "lock renewal failed; retrying until the lease runs out"
            );
            let retry_at = (now + (ttl / 10).max(Duration::from_millis(1))).min(valid_until);
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep_until(retry_at) => {}
            }
        }
    }
}
