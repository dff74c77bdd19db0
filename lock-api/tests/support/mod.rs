//! Test doubles shared by the distlock-api integration tests; each test file
//! uses part of them.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::backend::{Attempt, AttemptContext, Backoff, Lease, LockBackend, Wakeup};
use distlock_api::{LockError, MemoryLease, MemoryLock};

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
    /// Releases fail with a connection error (the server is not asked).
    pub(crate) release_unreachable: Arc<AtomicBool>,
}

pub(crate) struct SwitchableLease {
    inner: MemoryLease,
    extend: Arc<AtomicU8>,
    release_unreachable: Arc<AtomicBool>,
}

#[async_trait]
impl LockBackend for Switchable {
    type Key = String;
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

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(name.to_owned())
    }

    async fn try_lock(
        &self,
        name: &String,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<SwitchableLease>, LockError> {
        Ok(match self.inner.try_lock(name, ttl, ctx).await? {
            Attempt::Acquired {
                lease,
                fencing_token,
            } => Attempt::Acquired {
                lease: SwitchableLease {
                    inner: lease,
                    extend: Arc::clone(&self.extend),
                    release_unreachable: Arc::clone(&self.release_unreachable),
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

    async fn subscribe(&self, name: &String, ctx: &AttemptContext) -> Option<Wakeup> {
        self.inner.subscribe(name, ctx).await
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
        if self.release_unreachable.load(Ordering::SeqCst) {
            return Err(LockError::connection("server unreachable (test)"));
        }
        self.inner.release().await
    }
}

pub(crate) async fn bounded<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {BOUND:?}"))
}

/// MemoryLock whose server side answers slowly: a release or extend takes
/// effect at once, then its answer waits until the test opens the gate.
/// Each call signals `applied` once it has taken effect; a lease signals
/// `lease_dropped` when the guard machinery lets go of it (after reporting
/// its release).
#[derive(Clone)]
pub(crate) struct SlowAnswer {
    pub(crate) inner: MemoryLock,
    /// Notified (one permit) each time a release or extend has taken effect.
    pub(crate) applied: Arc<tokio::sync::Notify>,
    /// Answers wait for `true`.
    pub(crate) gate: tokio::sync::watch::Sender<bool>,
    /// Notified (one permit) when a lease is dropped.
    pub(crate) lease_dropped: Arc<tokio::sync::Notify>,
    /// Release calls that reached the server.
    pub(crate) releases: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for SlowAnswer {
    fn default() -> Self {
        SlowAnswer {
            inner: MemoryLock::new(),
            applied: Arc::default(),
            gate: tokio::sync::watch::Sender::new(false),
            lease_dropped: Arc::default(),
            releases: Arc::default(),
        }
    }
}

impl SlowAnswer {
    /// Lets every answer through, now and later.
    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(true);
    }
}

pub(crate) struct SlowAnswerLease {
    inner: MemoryLease,
    backend: SlowAnswer,
}

impl SlowAnswerLease {
    async fn answer<T>(&self, result: T) -> T {
        self.backend.applied.notify_one();
        let mut gate = self.backend.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        result
    }
}

impl Drop for SlowAnswerLease {
    fn drop(&mut self) {
        self.backend.lease_dropped.notify_one();
    }
}

#[async_trait]
impl LockBackend for SlowAnswer {
    type Key = String;
    type Lease = SlowAnswerLease;

    fn kind(&self) -> &'static str {
        "slow-answer"
    }

    fn max_ttl(&self) -> Duration {
        self.inner.max_ttl()
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(name.to_owned())
    }

    async fn try_lock(
        &self,
        name: &String,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<SlowAnswerLease>, LockError> {
        Ok(match self.inner.try_lock(name, ttl, ctx).await? {
            Attempt::Acquired {
                lease,
                fencing_token,
            } => Attempt::Acquired {
                lease: SlowAnswerLease {
                    inner: lease,
                    backend: self.clone(),
                },
                fencing_token,
            },
            Attempt::Held { retry_after } => Attempt::Held { retry_after },
        })
    }
}

#[async_trait]
impl Lease for SlowAnswerLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let result = self.inner.extend(ttl).await;
        self.answer(result).await
    }

    async fn release(&mut self) -> Result<(), LockError> {
        self.backend.releases.fetch_add(1, Ordering::SeqCst);
        let result = self.inner.release().await;
        self.answer(result).await
    }
}

/// Cancels `guard.release()` right after the server has carried it out,
/// before its answer arrives; then lets the answer through and waits until
/// the guard machinery has let go of the lease (its release reported).
pub(crate) async fn cancel_release_after_it_ran(
    locks: &SlowAnswer,
    guard: distlock_api::LockGuard,
) {
    let release = guard.release();
    tokio::select! {
        biased;
        () = locks.applied.notified() => {}
        result = release => panic!("the release answered before the gate opened: {result:?}"),
    }
    // The release future, and the guard with it, are gone now.
    locks.open_gate();
    bounded(
        "the lease let go after the cancelled release",
        locks.lease_dropped.notified(),
    )
    .await;
}

/// A backend whose attempts never get a "pooled connection": each waits for
/// one until its context's deadline (or a second, for a single attempt) and
/// then fails with its own typed error, as a pooled backend does.
#[derive(Clone, Default)]
pub(crate) struct Starved;

pub(crate) const STARVED: &str = "pool exhausted (test)";

#[async_trait]
impl LockBackend for Starved {
    type Key = String;
    type Lease = MemoryLease;

    fn kind(&self) -> &'static str {
        "starved"
    }

    fn max_ttl(&self) -> Duration {
        Duration::from_secs(3600)
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(name.to_owned())
    }

    async fn try_lock(
        &self,
        _key: &String,
        _ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<MemoryLease>, LockError> {
        match ctx.wait_until(Duration::from_secs(1)) {
            Some(until) => tokio::time::sleep_until(until).await,
            None => std::future::pending().await,
        }
        Err(LockError::connection(STARVED))
    }
}
