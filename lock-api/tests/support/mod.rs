//! Test doubles shared by the lock-api integration tests; each test file
//! uses part of them.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use lock_api::{Attempt, Backoff, Lease, LockBackend, LockError, MemoryLease, MemoryLock, Wakeup};

pub(crate) const BOUND: Duration = Duration::from_secs(10);

/// What the switchable backend's extends do.
pub(crate) const EXTEND_OK: u8 = 0;
pub(crate) const EXTEND_LOST: u8 = 1;
pub(crate) const EXTEND_UNREACHABLE: u8 = 2;
/// Each extend takes [`SLOW_EXTEND`] before it reaches the server.
pub(crate) const EXTEND_SLOW: u8 = 3;
pub(crate) const SLOW_EXTEND: Duration = Duration::from_millis(250);

/// MemoryLock with switchable extend failures and an optional huge backoff
/// (so only a wake-up can end a wait early).
#[derive(Clone, Default)]
pub(crate) struct Switchable {
    pub(crate) inner: MemoryLock,
    pub(crate) extend: Arc<AtomicU8>,
    pub(crate) slow_backoff: bool,
    /// Signalled each time an attempt finds the lock held.
    pub(crate) refused: Arc<tokio::sync::Notify>,
}

pub(crate) struct SwitchableLease {
    inner: MemoryLease,
    extend: Arc<AtomicU8>,
}

#[async_trait]
impl LockBackend for Switchable {
    type Lease = SwitchableLease;

    fn kind(&self) -> &'static str {
        "switchable"
    }

    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl()
    }

    fn backoff(&self) -> Backoff {
        if self.slow_backoff {
            Backoff {
                initial: Duration::from_secs(60),
                max: Duration::from_secs(60),
            }
        } else {
            Backoff::default()
        }
    }

    async fn try_lock(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Attempt<SwitchableLease>, LockError> {
        Ok(match self.inner.try_lock(name, ttl).await? {
            Attempt::Acquired {
                lease,
                fencing_token,
            } => Attempt::Acquired {
                lease: SwitchableLease {
                    inner: lease,
                    extend: Arc::clone(&self.extend),
                },
                fencing_token,
            },
            // Hide the holder's expiry: only a wake-up may cut a wait short.
            Attempt::Held { .. } => {
                self.refused.notify_one();
                Attempt::Held { retry_after: None }
            }
        })
    }

    async fn subscribe(&self, name: &str) -> Option<Wakeup> {
        self.inner.subscribe(name).await
    }
}

#[async_trait]
impl Lease for SwitchableLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        match self.extend.load(Ordering::SeqCst) {
            EXTEND_LOST => Err(LockError::Lost),
            EXTEND_UNREACHABLE => Err(LockError::connection("server unreachable (test)")),
            EXTEND_SLOW => {
                tokio::time::sleep(SLOW_EXTEND).await;
                self.inner.extend(ttl).await
            }
            _ => self.inner.extend(ttl).await,
        }
    }

    async fn release(&mut self) -> Result<(), LockError> {
        self.inner.release().await
    }
}

pub(crate) async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}
