//! Recording: the shared [`History`] clients write to, and [`Held`], a
//! guard that records its own release.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use distlock_api::{DistributedLock, Instant, LockError, LockGuard};

use super::check::check_ops;
use super::{Op, OpId, Outcome, Report};

/// A shared, append-only record of lock operations from many clients.
///
/// Cheap to clone; clones record into the same history. Recording takes a
/// short mutex, so it barely perturbs the run it observes.
///
/// # Model
///
/// Every client records, for each acquisition, on one monotonic clock
/// ([`distlock_api::Instant`], the clock of [`LockGuard::valid_until`]):
/// the name, when the acquire was invoked and when it completed, its outcome
/// ([`Outcome::Ok`], [`Outcome::Failed`] or [`Outcome::Unknown`]), the fencing
/// token, when the release was invoked and completed and its outcome, and the
/// guard's `valid_until` (read when the release is invoked, so renewals and
/// extends count).
///
/// A successful acquisition was **definitely held** during
/// `[acquire completed, min(release invoked, valid_until))`: the server
/// granted it before the acquire completed, it cannot have given it away
/// before its validity (a conservative bound) ended, and the client stops
/// relying on it once it asks to release it. The checker fails
/// ([`Violation`](crate::Violation)) on
///
/// - two definitely-held intervals of one name that overlap
///   ([`Violation::Overlap`](crate::Violation::Overlap));
/// - fencing tokens that do not strictly increase per name in acquisition
///   order, the order of the intervals' starts
///   ([`Violation::TokenNotIncreasing`](crate::Violation::TokenNotIncreasing)).
///
/// It reports, without failing ([`Note`](crate::Note)), lease overruns (the release was
/// invoked after `valid_until`, or never and the validity has passed: the
/// client worked past its lease),
/// acquisitions whose validity had passed before the reply arrived, and
/// operations whose outcome is unknown (a connection error or a cancelled
/// call: the server may or may not have acted).
///
/// The booking workloads check the database side too, with the ticket
/// example's seat log (beside the example's tests): the accepted writes in
/// commit order, each seat sold at most once at a time and accepted fencing
/// tokens strictly rising per seat; its findings merge in as
/// [`Violation::Storage`](crate::Violation::Storage).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use distlock_api::MemoryLock;
/// use distlock_testkit::History;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock_api::LockError> {
/// let locks = MemoryLock::new();
/// let history = History::new();
/// let ttl = Duration::from_secs(5);
/// for client in 0..3 {
///     // `acquire` records the call, `release` records its end.
///     let held = history.acquire(client, &locks, "seat:1", ttl, Duration::from_secs(1)).await?;
///     let _token = held.fencing_token(); // the protected work goes here
///     held.release().await?;
/// }
/// let report = history.check();
/// report.assert_ok(); // panics with a readable listing on a violation
/// assert_eq!(report.counts.acquired, 3);
/// # Ok(())
/// # }
/// ```
///
/// Scenarios the wrappers cannot express (a holder that stalls, a cancelled
/// call, a raw client) use the manual API: [`History::invoke_acquire`], then
/// [`History::acquired`] / [`History::acquire_failed`] /
/// [`History::acquire_unknown`], then [`History::invoke_release`] and
/// [`History::released`]. An acquire that is invoked and never completed
/// counts as unknown. Each records the current instant when it is called,
/// which errs on the safe side: an interval starts no earlier and ends no
/// later than the lock was really held. The methods that take an [`OpId`]
/// panic when it belongs to another history (a bug in the test).
#[derive(Clone)]
pub struct History {
    inner: Arc<Mutex<Vec<Op>>>,
    origin: Instant,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl fmt::Debug for History {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("History")
            .field("ops", &self.ops_locked().len())
            .finish_non_exhaustive()
    }
}

impl History {
    /// An empty history; its creation is time zero in reports.
    pub fn new() -> Self {
        History {
            inner: Arc::new(Mutex::new(Vec::new())),
            origin: Instant::now(),
        }
    }

    fn ops_locked(&self) -> MutexGuard<'_, Vec<Op>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, op: OpId, change: impl FnOnce(&mut Op)) {
        let mut ops = self.ops_locked();
        // An OpId from another history is a test bug: fail loudly.
        let op = ops
            .get_mut(op.0)
            .unwrap_or_else(|| panic!("{op:?} is not an operation of this history"));
        change(op);
    }

    /// A copy of everything recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops_locked().clone()
    }

    /// How many acquisitions have been recorded (invoked) so far.
    pub fn len(&self) -> usize {
        self.ops_locked().len()
    }

    /// True while nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.ops_locked().is_empty()
    }

    /// How many acquires have returned a lock so far.
    pub fn acquired_count(&self) -> usize {
        self.ops_locked()
            .iter()
            .filter(|op| op.acquire_outcome == Some(Outcome::Ok))
            .count()
    }

    /// Records that `client` invokes an acquire of `name`, now.
    pub fn invoke_acquire(&self, client: usize, name: &str) -> OpId {
        let now = Instant::now();
        let mut ops = self.ops_locked();
        ops.push(Op {
            client,
            name: name.to_owned(),
            acquire_invoked: now,
            acquire_completed: None,
            acquire_outcome: None,
            fencing_token: None,
            valid_until: None,
            release_invoked: None,
            release_completed: None,
            release_outcome: None,
        });
        OpId(ops.len() - 1)
    }

    /// Records that the acquire `op` returned `guard`, now.
    pub fn acquired(&self, op: OpId, guard: &LockGuard) {
        self.acquired_with(op, guard.fencing_token(), guard.valid_until());
    }

    /// Records that the acquire `op` was granted with `fencing_token`, valid
    /// until `valid_until`, now: for clients without a [`LockGuard`].
    pub fn acquired_with(&self, op: OpId, fencing_token: u64, valid_until: Instant) {
        let now = Instant::now();
        self.update(op, |op| {
            op.acquire_completed = Some(now);
            op.acquire_outcome = Some(Outcome::Ok);
            op.fencing_token = Some(fencing_token);
            op.valid_until = Some(valid_until);
        });
    }

    /// Records that the acquire `op` certainly failed, now.
    pub fn acquire_failed(&self, op: OpId) {
        self.acquire_ended(op, Outcome::Failed);
    }

    /// Records that the acquire `op` ended with an unknown outcome, now.
    pub fn acquire_unknown(&self, op: OpId) {
        self.acquire_ended(op, Outcome::Unknown);
    }

    fn acquire_ended(&self, op: OpId, outcome: Outcome) {
        let now = Instant::now();
        self.update(op, |op| {
            op.acquire_completed = Some(now);
            op.acquire_outcome = Some(outcome);
        });
    }

    /// Records the end of the acquire `op` from its result: a guard, or an
    /// error classified by [`Outcome::of_acquire`].
    pub fn record_acquire(&self, op: OpId, result: &Result<LockGuard, LockError>) {
        match result {
            Ok(guard) => self.acquired(op, guard),
            Err(_) => self.acquire_ended(op, Outcome::of_acquire(result)),
        }
    }

    /// Records that the release of `op` is invoked now, with the guard's
    /// current `valid_until` (which extends and renewals may have moved).
    pub fn invoke_release(&self, op: OpId, valid_until: Instant) {
        let now = Instant::now();
        self.update(op, |op| {
            op.release_invoked = Some(now);
            op.valid_until = Some(valid_until);
        });
    }

    /// Records that the release of `op` returned with `outcome`, now.
    pub fn released(&self, op: OpId, outcome: Outcome) {
        let now = Instant::now();
        self.update(op, |op| {
            op.release_completed = Some(now);
            op.release_outcome = Some(outcome);
        });
    }

    /// Acquires `name` through `locks` with [`DistributedLock::acquire`],
    /// recording the call; the guard comes back wrapped in a [`Held`] that
    /// records its release.
    ///
    /// # Errors
    ///
    /// Whatever `acquire` returns (recorded first).
    pub async fn acquire<L: DistributedLock + ?Sized>(
        &self,
        client: usize,
        locks: &L,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<Held, LockError> {
        let op = self.invoke_acquire(client, name);
        let result = locks.acquire(name, ttl, wait).await;
        self.record_acquire(op, &result);
        result.map(|guard| self.held(op, guard))
    }

    /// One attempt through [`DistributedLock::try_acquire`], recorded;
    /// `Ok(None)` (held by someone else) is recorded as failed.
    ///
    /// # Errors
    ///
    /// Whatever `try_acquire` returns (recorded first).
    pub async fn try_acquire<L: DistributedLock + ?Sized>(
        &self,
        client: usize,
        locks: &L,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<Held>, LockError> {
        let op = self.invoke_acquire(client, name);
        match locks.try_acquire(name, ttl).await {
            Ok(Some(guard)) => {
                self.acquired(op, &guard);
                Ok(Some(self.held(op, guard)))
            }
            Ok(None) => {
                self.acquire_failed(op);
                Ok(None)
            }
            Err(err) => {
                let result: Result<(), _> = Err(err);
                self.acquire_ended(op, Outcome::of_acquire(&result));
                result.map(|()| None)
            }
        }
    }

    /// Wraps a guard whose acquire was recorded as `op` so that its release
    /// is recorded too.
    pub fn held(&self, op: OpId, guard: LockGuard) -> Held {
        Held {
            guard: Some(guard),
            op,
            history: self.clone(),
        }
    }

    /// Checks the history: see [`History`] for the rules.
    pub fn check(&self) -> Report {
        check_ops(&self.ops(), Some(self.origin))
    }
}

/// A guard whose acquisition is recorded in a [`History`]; its release (or
/// drop) is recorded as well.
///
/// Dropping it without [`release`](Held::release) records a release invoked
/// at the drop with an unknown outcome, and drops the guard (which releases
/// in the background).
#[must_use = "the lock is released as soon as it is dropped"]
pub struct Held {
    guard: Option<LockGuard>,
    op: OpId,
    history: History,
}

impl fmt::Debug for Held {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Held")
            .field("op", &self.op)
            .field("guard", &self.guard)
            .finish()
    }
}

impl Held {
    /// The recorded acquisition.
    pub fn op(&self) -> OpId {
        self.op
    }

    /// The guard.
    pub fn guard(&self) -> &LockGuard {
        self.guard
            .as_ref()
            .expect("a Held has its guard until released")
    }

    /// The guard, for `extend` and `auto_renew`.
    pub fn guard_mut(&mut self) -> &mut LockGuard {
        self.guard
            .as_mut()
            .expect("a Held has its guard until released")
    }

    /// The guard's fencing token.
    pub fn fencing_token(&self) -> u64 {
        self.guard().fencing_token()
    }

    /// Releases the lock, recording the call (with the guard's
    /// `valid_until` at that moment) and its outcome.
    ///
    /// # Errors
    ///
    /// What [`LockGuard::release`] returns.
    pub async fn release(mut self) -> Result<(), LockError> {
        let guard = self
            .guard
            .take()
            .expect("a Held has its guard until released");
        self.history.invoke_release(self.op, guard.valid_until());
        let result = guard.release().await;
        self.history.released(self.op, Outcome::of_release(&result));
        result
    }

    /// Gives up the guard without recording a release: for a test that
    /// simulates a client that vanished (its interval ends at `valid_until`).
    pub fn into_guard(mut self) -> LockGuard {
        self.guard
            .take()
            .expect("a Held has its guard until released")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(guard) = self.guard.take() {
            self.history.invoke_release(self.op, guard.valid_until());
            drop(guard);
            self.history.released(self.op, Outcome::Unknown);
        }
    }
}
