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
    /// ```
    /// use std::time::Duration;
    /// use distlock_api::{DistributedLockExt, MemoryLock};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), distlock_api::LockError> {
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
    /// # Errors
    ///
    /// [`LockError::Lost`] whenever the lock may not have been ours for the
    /// whole of `work`, even if `work` finished:
    /// - renewal found it taken, or could not reach the server before the
    ///   lease ran out: `work` is dropped at its next await point, so it
    ///   never runs on without the lock;
    /// - the guard's validity had passed when `work` finished;
    /// - the final release found the lock no longer ours (it expired, was
    ///   deleted, its session ended): `work` may have overlapped another
    ///   holder, and its value is discarded.
    ///
    /// A final release that cannot reach the server
    /// ([`LockError::Connection`] or [`LockError::Backend`]) does not turn
    /// the result into an error: the guard was still valid when `work`
    /// finished, so `work` ran under a valid lease. That failure is logged
    /// and the lock is freed by its TTL.
    ///
    /// Errors of the acquire (such as [`LockError::Timeout`]) are returned
    /// as they are, before `work` runs.
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
                Some(value) if !guard.is_lost() => match guard.release().await {
                    Ok(()) => Ok(value),
                    // The lock was not ours at the end: the work may have
                    // overlapped the next holder's.
                    Err(LockError::Lost) => Err(LockError::Lost),
                    Err(err) => {
                        // Valid when the work ended; the guard has logged the
                        // failed release, and the TTL frees the lock.
                        tracing::debug!(lock.name = name, error = %err, "release after with_lock failed");
                        Ok(value)
                    }
                },
                _ => {
                    let _ = guard.release().await;
                    Err(LockError::Lost)
                }
            }
        }
    }
}

impl<L: DistributedLock + ?Sized> DistributedLockExt for L {}
