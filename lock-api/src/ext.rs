//! Conveniences on top of [`DistributedLock`] that every backend gets for free.

use std::future::Future;
use std::time::Duration;

use crate::{DistributedLock, LockContext, LockError};

/// Helpers for any [`DistributedLock`], including `dyn DistributedLock`.
/// Implemented for every lock; not meant to be implemented by hand.
pub trait DistributedLockExt: DistributedLock {
    /// Runs `work` while holding `name`, renewing the lock in the background
    /// so work may take longer than `ttl`, and releases it afterwards.
    ///
    /// Waits up to `wait` for the lock (see [`DistributedLock::acquire`]).
    /// `work` receives a [`LockContext`] with the fencing token to pass on to
    /// the storage it writes.
    ///
    /// If the lock is lost while `work` runs (renewal found it taken, or could
    /// not reach the server before the lease ran out), `work` is dropped at its
    /// next await point and the call returns [`LockError::Lost`]: the work
    /// never runs on without the lock. A failure of the final release is
    /// logged, not returned, since the work finished while the lock was held.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lock_api::{DistributedLockExt, MemoryLock};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), lock_api::LockError> {
    /// let locks = MemoryLock::new();
    /// let booked = locks
    ///     .with_lock("ticket:42", Duration::from_secs(5), Duration::from_secs(1), |lock| async move {
    ///         // UPDATE tickets SET holder = $1, fence = $2 WHERE id = 42 AND fence < $2
    ///         lock.fencing_token()
    ///     })
    ///     .await?;
    /// assert!(booked > 0);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `work` and releases the lock in the
    /// background.
    fn with_lock<'a, F, Fut, T>(
        &'a self,
        name: &'a str,
        ttl: Duration,
        wait: Duration,
        work: F,
    ) -> impl Future<Output = Result<T, LockError>> + Send + 'a
    where
        F: FnOnce(LockContext) -> Fut + Send + 'a,
        Fut: Future<Output = T> + Send + 'a,
        T: Send + 'a,
    {
        async move {
            let mut guard = self.acquire(name, ttl, wait).await?;
            guard.auto_renew();
            let lost = guard.lost();
            let outcome = tokio::select! {
                biased;
                value = work(guard.context()) => Some(value),
                () = lost => None,
            };
            match outcome {
                Some(value) if !guard.is_lost() => {
                    if let Err(err) = guard.release().await {
                        tracing::warn!(lock.name = name, error = %err, "release after with_lock failed");
                    }
                    Ok(value)
                }
                _ => {
                    let _ = guard.release().await;
                    Err(LockError::Lost)
                }
            }
        }
    }
}

impl<L: DistributedLock + ?Sized> DistributedLockExt for L {}
