//! The public trait users program against, and how any [`LockBackend`] implements it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::guard::BackendInfo;
use crate::{Attempt, LockBackend, LockError, LockGuard, validate_name, validate_ttl};

/// A distributed lock service: named locks with a TTL and a fencing token.
///
/// Object safe: hold it as `Arc<dyn DistributedLock>` and pick the backend at
/// run time. Every backend built on [`LockBackend`] implements it, with the
/// same waiting, guard and renewal behaviour.
///
/// ```
/// use std::time::Duration;
/// use lock_api::{DistributedLock, MemoryLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lock_api::LockError> {
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
    /// # Errors
    ///
    /// As [`try_acquire`](DistributedLock::try_acquire), plus
    /// [`LockError::Timeout`].
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
        validate_name(name)?;
        validate_ttl(ttl, self.max_ttl())?;
        attempt(self, name, ttl).await
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        validate_name(name)?;
        validate_ttl(ttl, self.max_ttl())?;
        let started = Instant::now();
        if wait.is_zero() {
            return attempt(self, name, ttl).await?.ok_or(LockError::Timeout);
        }
        let deadline = started.checked_add(wait);
        // Registered before the first attempt, so no release can slip between
        // a failed attempt and the wait that follows it.
        let mut wakeup = self.subscribe(name).await;
        let backoff = self.backoff();
        let mut failures: u32 = 0;
        loop {
            let try_started = Instant::now();
            let outcome = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, self.try_lock(name, ttl))
                    .await
                    .map_err(|_| LockError::Timeout)??,
                None => self.try_lock(name, ttl).await?,
            };
            let retry_after = match outcome {
                Attempt::Acquired {
                    lease,
                    fencing_token,
                } => {
                    let guard = grant(self, name, ttl, try_started, lease, fencing_token);
                    tracing::debug!(
                        lock.name = name,
                        lock.backend = self.kind(),
                        lock.fencing_token = fencing_token,
                        waited = ?started.elapsed(),
                        attempts = failures + 1,
                        "lock acquired"
                    );
                    return Ok(guard);
                }
                Attempt::Held { retry_after } => retry_after,
            };
            let mut delay = backoff.delay(failures);
            if let Some(retry_after) = retry_after {
                delay = delay.min(retry_after);
            }
            failures = failures.saturating_add(1);
            let now = Instant::now();
            let mut wake_at = now.checked_add(delay).unwrap_or(now);
            if let Some(deadline) = deadline {
                if now >= deadline {
                    return Err(timed_out(self, name, started));
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
                return Err(timed_out(self, name, started));
            }
        }
    }
}

fn timed_out<B: LockBackend>(backend: &B, name: &str, started: Instant) -> LockError {
    tracing::debug!(
        lock.name = name,
        lock.backend = backend.kind(),
        waited = ?started.elapsed(),
        "lock wait timed out"
    );
    LockError::Timeout
}

async fn attempt<B: LockBackend>(
    backend: &B,
    name: &str,
    ttl: Duration,
) -> Result<Option<LockGuard>, LockError> {
    let started = Instant::now();
    match backend.try_lock(name, ttl).await? {
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

    #[tokio::test]
    async fn shared_handles_and_trait_objects_are_locks_too() {
        let concrete = Arc::new(MemoryLock::new());
        let dynamic: Arc<dyn DistributedLock> = concrete.clone();
        assert_eq!(book(&concrete).await.expect("free"), 1);
        assert_eq!(book(&dynamic).await.expect("free"), 2);
        assert_eq!(book(&*concrete).await.expect("free"), 3);
    }
}
