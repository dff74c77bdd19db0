//! The public trait users program against, and how any [`LockBackend`] implements it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::backend::{Attempt, AttemptContext, Deadline, LockBackend, Wakeup};
use crate::guard::BackendInfo;
use crate::observe;
use crate::{LockError, LockGuard, validate_name, validate_ttl};

/// A distributed lock service: named locks with a TTL and a fencing token.
///
/// Object safe: hold it as `Arc<dyn DistributedLock>` and pick the backend at
/// run time. Every backend built on [`LockBackend`] implements it, with the
/// same waiting, guard and renewal behaviour.
///
/// ```
/// use std::time::Duration;
/// use distlock_api::{DistributedLock, MemoryLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock_api::LockError> {
/// let locks = MemoryLock::new();
/// let guard = locks.acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2)).await?;
/// assert!(locks.try_acquire("ticket:42", Duration::from_secs(10)).await?.is_none());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[async_trait]
pub trait DistributedLock: Send + Sync {
    /// One attempt; never waits. `Ok(None)` when someone else holds `name`.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] / [`LockError::InvalidTtl`] for input that
    /// breaks the rules; [`LockError::Connection`] / [`LockError::Backend`]
    /// when the server could not answer.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future leaves no lock behind.
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, LockError>;

    /// Waits up to `wait` (`Duration::ZERO` = one attempt).
    /// `Err(LockError::Timeout)` when not acquired in time.
    ///
    /// Between attempts it sleeps with capped, jittered exponential backoff,
    /// and wakes early when the backend signals a release. A `wait` too large
    /// to add to the clock (such as `Duration::MAX`) waits without limit.
    ///
    /// Waiters on one name through one client queue up in arrival order: a
    /// release wakes the first in line, and a newcomer behind others waits
    /// its turn instead of racing them (see [`WakeHub`](crate::WakeHub)).
    ///
    /// An attempt that fails with [`LockError::Connection`] does not end the
    /// wait: the server may be back (a restart, a reconnect) before the
    /// deadline, so attempts go on with the same backoff.
    ///
    /// Each attempt is told the deadline (see
    /// [`AttemptContext`](crate::backend::AttemptContext)), so a backend
    /// that has to wait for something of its own — PostgreSQL for a free
    /// pooled connection — waits no longer than the caller does, and what
    /// it then reports is what the call returns (and what its span and
    /// metrics record).
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](DistributedLock::try_acquire), plus
    /// [`LockError::Timeout`] when the lock stayed held until the deadline.
    /// When the latest attempt before the deadline failed to reach the
    /// server, that [`LockError::Connection`] is returned instead, so the
    /// cause is not hidden behind a timeout. With `wait` zero, a connection
    /// failure returns at once.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future at any point leaves no lock behind.
    async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError>;
}

#[async_trait]
impl<B: LockBackend> DistributedLock for B {
    async fn try_acquire(&self, name: &str, ttl: Duration) -> Result<Option<LockGuard>, LockError> {
        try_acquire_with(self, name, ttl, |name| self.key(name)).await
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        acquire_with(self, name, ttl, wait, |name| self.key(name)).await
    }
}

/// [`DistributedLock::try_acquire`] on `backend` with the key `key_of`
/// makes from the (validated) name, for backends that lock by more than
/// one key scheme (a name, or a raw key the application owns): see
/// [`backend`](crate::backend).
///
/// # Errors
///
/// As [`DistributedLock::try_acquire`], plus what `key_of` returns.
pub async fn try_acquire_with<B: LockBackend>(
    backend: &B,
    name: &str,
    ttl: Duration,
    key_of: impl FnOnce(&str) -> Result<B::Key, LockError> + Send,
) -> Result<Option<LockGuard>, LockError> {
    let span = observe::try_acquire_span(name, backend.kind(), ttl);
    observe::acquire_started(backend.kind());
    let started = Instant::now();
    let result = match validate_name(name)
        .and_then(|()| validate_ttl(ttl, backend.max_ttl()))
        .and_then(|()| key_of(name))
    {
        Ok(key) => {
            let ctx = AttemptContext::once();
            attempt(backend, name, &key, ttl, started, &ctx, &span).await
        }
        Err(err) => Err(err),
    };
    observe::acquire_finished(
        &span,
        backend.kind(),
        started,
        result.as_ref().map(Option::as_ref),
    );
    result
}

/// How long past the caller's deadline an attempt may run before the
/// waiting loop cuts it. Attempts are told the deadline and should end by
/// it with their own error; this only catches one that does not.
const OVERRUN: Duration = Duration::from_millis(20);

/// [`DistributedLock::acquire`] on `backend` with the key `key_of` makes
/// from the (validated) name (see [`try_acquire_with`]).
///
/// # Errors
///
/// As [`DistributedLock::acquire`], plus what `key_of` returns.
pub async fn acquire_with<B: LockBackend>(
    backend: &B,
    name: &str,
    ttl: Duration,
    wait: Duration,
    key_of: impl FnOnce(&str) -> Result<B::Key, LockError> + Send,
) -> Result<LockGuard, LockError> {
    // The span covers the whole call; only the backend's attempts run
    // inside it (instrumenting the whole wait would move its large
    // future on every call, which the uncontended path would pay for).
    let span = observe::acquire_span(name, backend.kind(), ttl, wait);
    observe::acquire_started(backend.kind());
    let started = Instant::now();
    let result = 'acquire: {
        let key = match validate_name(name)
            .and_then(|()| validate_ttl(ttl, backend.max_ttl()))
            .and_then(|()| key_of(name))
        {
            Ok(key) => key,
            Err(err) => break 'acquire Err(err),
        };
        if wait.is_zero() {
            let ctx = AttemptContext::no_wait(started);
            break 'acquire match attempt(backend, name, &key, ttl, started, &ctx, &span).await {
                Ok(guard) => guard.ok_or(LockError::Timeout),
                Err(err) => Err(err),
            };
        }
        let deadline = started.checked_add(wait);
        let limit = deadline.map_or(Deadline::Never, Deadline::At);
        // Registered before the first attempt, so no release can slip between
        // a failed attempt and the wait that follows it.
        let mut wakeup = backend
            .subscribe(&key, &AttemptContext::new(limit, 0))
            .await;
        let backoff = backend.backoff();
        let mut failures: u32 = 0;
        // The connection error of the latest attempt, if it failed with one:
        // what the caller gets at the deadline instead of `Timeout`.
        let mut last_error: Option<LockError> = None;
        // Waiters of this process queue up: one that arrives behind others
        // waits for its turn instead of racing them for the lock.
        let mut attempt_now = wakeup.as_ref().is_none_or(Wakeup::is_first);
        loop {
            let mut retry_after = None;
            if attempt_now {
                let try_started = Instant::now();
                let ctx = AttemptContext::new(limit, failures.saturating_add(1));
                let try_lock = backend.try_lock(&key, ttl, &ctx).instrument(span.clone());
                let outcome = match deadline.and_then(|deadline| deadline.checked_add(OVERRUN)) {
                    Some(cut) => match tokio::time::timeout_at(cut, try_lock).await {
                        Ok(outcome) => outcome,
                        // The attempt ignored its deadline; it counts as made.
                        Err(_) => Err(LockError::Timeout),
                    },
                    None => try_lock.await,
                };
                match outcome {
                    Ok(Attempt::Acquired {
                        lease,
                        fencing_token,
                    }) => {
                        let guard = grant(backend, name, ttl, try_started, lease, fencing_token);
                        // Leaving the line wakes the next waiter, whose
                        // attempt tells the server that someone still waits.
                        drop(wakeup);
                        observe::record_attempts(&span, failures.saturating_add(1));
                        break 'acquire Ok(guard);
                    }
                    Ok(Attempt::Held { retry_after: left }) => {
                        last_error = None;
                        retry_after = left;
                    }
                    // The server may be back before the deadline: keep trying.
                    Err(err @ LockError::Connection(_)) => {
                        tracing::debug!(
                            lock.name = name,
                            lock.backend = backend.kind(),
                            error = %err,
                            "lock attempt failed; retrying until the deadline"
                        );
                        last_error = Some(err);
                    }
                    // The attempt ran into the deadline.
                    Err(LockError::Timeout) => {
                        let attempts = failures.saturating_add(1);
                        break 'acquire Err(last_error.unwrap_or_else(|| {
                            timed_out(backend, name, started, &span, attempts)
                        }));
                    }
                    Err(err) => break 'acquire Err(err),
                }
                failures = failures.saturating_add(1);
            }
            // The first in line retries on the backoff schedule (and on
            // wake-ups); the others only now and then, as a safety net, and
            // otherwise wait for a wake-up to be passed down the line.
            let in_line = wakeup.as_ref().is_some_and(|wakeup| !wakeup.is_first());
            let mut delay = if in_line {
                backoff.max / 2 + backoff.delay(u32::MAX) / 2
            } else {
                backoff.delay(failures.saturating_sub(1))
            };
            if let Some(retry_after) = retry_after {
                delay = delay.min(retry_after);
            }
            let now = Instant::now();
            let mut wake_at = now.checked_add(delay).unwrap_or(now);
            if let Some(deadline) = deadline {
                if now >= deadline {
                    break 'acquire Err(last_error
                        .unwrap_or_else(|| timed_out(backend, name, started, &span, failures)));
                }
                wake_at = wake_at.min(deadline);
            }
            match wakeup.as_mut() {
                Some(wakeup) => {
                    tokio::select! {
                        () = wakeup.woken() => {}
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
                None => tokio::time::sleep_until(wake_at).await,
            }
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                break 'acquire Err(last_error
                    .unwrap_or_else(|| timed_out(backend, name, started, &span, failures)));
            }
            attempt_now = true;
        }
    };
    observe::acquire_finished(&span, backend.kind(), started, result.as_ref().map(Some));
    result
}

fn timed_out<B: LockBackend>(
    backend: &B,
    name: &str,
    started: Instant,
    span: &Span,
    attempts: u32,
) -> LockError {
    observe::record_attempts(span, attempts);
    tracing::debug!(
        lock.name = name,
        lock.backend = backend.kind(),
        waited = ?started.elapsed(),
        "lock wait timed out"
    );
    LockError::Timeout
}

/// The one attempt of `try_acquire` or of a zero wait, started at `started`
/// (the guard's validity counts from it).
async fn attempt<B: LockBackend>(
    backend: &B,
    name: &str,
    key: &B::Key,
    ttl: Duration,
    started: Instant,
    ctx: &AttemptContext,
    span: &Span,
) -> Result<Option<LockGuard>, LockError> {
    let try_lock = backend.try_lock(key, ttl, ctx);
    // Inside the span, so what the backend logs belongs to this acquire;
    // not even wrapped when nobody listens (the uncontended hot path).
    let outcome = if span.is_disabled() {
        try_lock.await?
    } else {
        try_lock.instrument(span.clone()).await?
    };
    match outcome {
        Attempt::Acquired {
            lease,
            fencing_token,
        } => Ok(Some(grant(
            backend,
            name,
            ttl,
            started,
            lease,
            fencing_token,
        ))),
        Attempt::Held { .. } => Ok(None),
    }
}

/// Wraps a granted lease in its guard. Synchronous on purpose: between the
/// grant and the guard there is no await point at which a cancellation could
/// drop the lease unguarded.
fn grant<B: LockBackend>(
    backend: &B,
    name: &str,
    ttl: Duration,
    started: Instant,
    lease: B::Lease,
    fencing_token: u64,
) -> LockGuard {
    LockGuard::new(
        name,
        BackendInfo {
            kind: backend.kind(),
            max_ttl: backend.max_ttl(),
            drift: backend.drift(),
        },
        fencing_token,
        Box::new(lease),
        started,
        ttl,
    )
}

/// Shared handles are locks too, so `Arc<dyn DistributedLock>` can go where a
/// `L: DistributedLock` is expected. Forwards the inner boxed future as is: no
/// second allocation per call.
impl<T: DistributedLock + ?Sized> DistributedLock for Arc<T> {
    fn try_acquire<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
        ttl: Duration,
    ) -> BoxFuture<'async_trait, Result<Option<LockGuard>, LockError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        T::try_acquire(self, name, ttl)
    }

    fn acquire<'life0, 'life1, 'async_trait>(
        &'life0 self,
        name: &'life1 str,
        ttl: Duration,
        wait: Duration,
    ) -> BoxFuture<'async_trait, Result<LockGuard, LockError>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        Self: 'async_trait,
    {
        T::acquire(self, name, ttl, wait)
    }
}

/// The future type `async_trait` gives the trait's methods.
type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryLock;

    async fn book<L: DistributedLock>(locks: &L) -> Result<u64, LockError> {
        let guard = locks
            .acquire("ticket:1", Duration::from_secs(5), Duration::ZERO)
            .await?;
        let token = guard.fencing_token();
        guard.release().await?;
        Ok(token)
    }

    /// Fails its first `failures` attempts as if the server were away.
    struct Flaky {
        inner: MemoryLock,
        failures: std::sync::atomic::AtomicU32,
    }

    #[async_trait]
    impl LockBackend for Flaky {
        type Key = String;
        type Lease = crate::MemoryLease;

        fn kind(&self) -> &'static str {
            "flaky"
        }

        fn max_ttl(&self) -> Duration {
            self.inner.max_ttl()
        }

        fn key(&self, name: &str) -> Result<String, LockError> {
            Ok(name.to_owned())
        }

        async fn try_lock(
            &self,
            key: &String,
            ttl: Duration,
            ctx: &AttemptContext,
        ) -> Result<Attempt<Self::Lease>, LockError> {
            use std::sync::atomic::Ordering;
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(LockError::connection("server restarting"));
            }
            self.inner.try_lock(key, ttl, ctx).await
        }
    }

    fn flaky(failures: u32) -> Flaky {
        Flaky {
            inner: MemoryLock::new(),
            failures: failures.into(),
        }
    }

    #[tokio::test]
    async fn connection_failures_are_retried_until_the_deadline() {
        let ttl = Duration::from_secs(5);
        let locks = flaky(3);
        let guard = locks
            .acquire("a", ttl, Duration::from_secs(10))
            .await
            .expect("the server came back within the wait");
        guard.release().await.expect("release");

        // Never back: the caller learns why, not just that time ran out.
        let locks = flaky(u32::MAX);
        let err = locks
            .acquire("a", ttl, Duration::from_millis(50))
            .await
            .expect_err("unreachable");
        assert!(matches!(err, LockError::Connection(_)), "{err:?}");

        // Without a wait there is no retry.
        let locks = flaky(1);
        let err = locks
            .acquire("a", ttl, Duration::ZERO)
            .await
            .expect_err("one attempt");
        assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    }

    #[tokio::test]
    async fn shared_handles_and_trait_objects_are_locks_too() {
        let concrete = Arc::new(MemoryLock::new());
        let dynamic: Arc<dyn DistributedLock> = concrete.clone();
        assert_eq!(book(&concrete).await.expect("free"), 1);
        assert_eq!(book(&dynamic).await.expect("free"), 2);
        assert_eq!(book(&*concrete).await.expect("free"), 3);
    }
}
