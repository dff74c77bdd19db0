//! A history checker for mutual exclusion: clients record what they did with
//! a lock, and [`History::check`] proves afterwards that no name was
//! definitely held twice at once and that fencing tokens rose.
//!
//! The rules and an example are on [`History`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use distlock_api::{DistributedLock, Instant, LockError, LockGuard};

/// The outcome of one recorded call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// It happened: the lock was granted, or released while still ours.
    Ok,
    /// It certainly did not happen: the lock was held by someone else (a
    /// timeout), the input was refused, or the release found the lock no
    /// longer ours ([`LockError::Lost`]).
    Failed,
    /// It may or may not have happened: a connection error, a server error
    /// or a cancelled call.
    Unknown,
}

impl Outcome {
    /// The outcome of an acquire that returned `result`: `Ok` for a guard,
    /// `Failed` for a timeout or refused input, `Unknown` for anything the
    /// server may have acted on (connection and server errors).
    pub fn of_acquire<T>(result: &Result<T, LockError>) -> Outcome {
        match result {
            Ok(_) => Outcome::Ok,
            Err(
                LockError::Timeout
                | LockError::InvalidName(_)
                | LockError::InvalidTtl(_)
                | LockError::InvalidUrl(_)
                | LockError::InvalidConfig(_),
            ) => Outcome::Failed,
            Err(_) => Outcome::Unknown,
        }
    }

    /// The outcome of a release that returned `result`: `Ok`, `Failed` for
    /// [`LockError::Lost`], `Unknown` otherwise.
    pub fn of_release(result: &Result<(), LockError>) -> Outcome {
        match result {
            Ok(()) => Outcome::Ok,
            Err(LockError::Lost) => Outcome::Failed,
            Err(_) => Outcome::Unknown,
        }
    }
}

/// Identifies one recorded acquisition (and its release) in a [`History`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(usize);

impl OpId {
    /// The position of the operation in [`History::ops`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// One acquisition as recorded: the acquire call and, if it came, the release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The client that made the calls (any number the test chooses).
    pub client: usize,
    /// The lock name.
    pub name: String,
    /// When the acquire was invoked.
    pub acquire_invoked: Instant,
    /// When the acquire returned; `None` while it runs, or if it was cancelled.
    pub acquire_completed: Option<Instant>,
    /// The acquire's outcome; `None` while it runs (checked as unknown).
    pub acquire_outcome: Option<Outcome>,
    /// The fencing token, for a granted lock.
    pub fencing_token: Option<u64>,
    /// The guard's `valid_until`: as granted, then as read when the release
    /// was invoked (extends and renewals move it).
    pub valid_until: Option<Instant>,
    /// When the release was invoked; `None` if it never was.
    pub release_invoked: Option<Instant>,
    /// When the release returned.
    pub release_completed: Option<Instant>,
    /// The release's outcome.
    pub release_outcome: Option<Outcome>,
}

impl Op {
    /// The interval during which this acquisition definitely held its lock:
    /// `[acquire completed, min(release invoked, valid_until))`. `None` for
    /// an acquire that did not certainly succeed, and for an empty interval
    /// (the validity had passed before the reply came).
    pub fn held_interval(&self) -> Option<(Instant, Instant)> {
        if self.acquire_outcome != Some(Outcome::Ok) {
            return None;
        }
        let start = self.acquire_completed?;
        let valid_until = self.valid_until?;
        let end = match self.release_invoked {
            Some(release) => release.min(valid_until),
            None => valid_until,
        };
        (start < end).then_some((start, end))
    }
}

/// One definitely-held interval, as a [`Violation`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    /// The acquisition.
    pub op: OpId,
    /// Its client.
    pub client: usize,
    /// Its fencing token.
    pub fencing_token: u64,
    /// Acquire completed.
    pub start: Instant,
    /// `min(release invoked, valid_until)`.
    pub end: Instant,
}

/// Something that must never happen: the checked run is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two definitely-held intervals of one name overlap: the lock was
    /// granted twice.
    Overlap {
        /// The lock name.
        name: String,
        /// The interval that started first.
        first: Interval,
        /// The interval that started before `first` ended.
        second: Interval,
    },
    /// A later acquisition of a name got a fencing token not larger than
    /// the one before it.
    TokenNotIncreasing {
        /// The lock name.
        name: String,
        /// The earlier acquisition.
        earlier: Interval,
        /// The next acquisition, whose token is not larger.
        later: Interval,
    },
    /// A seat was booked while it was sold already.
    DoubleSale {
        /// The seat (`ticket_id`).
        ticket_id: i64,
        /// The write that sold it first.
        first: SeatWrite,
        /// The write that sold it again.
        second: SeatWrite,
    },
    /// An accepted write to a seat carried a fencing token not larger than
    /// the write accepted before it.
    FenceNotIncreasing {
        /// The seat (`ticket_id`).
        ticket_id: i64,
        /// The earlier accepted write.
        earlier: SeatWrite,
        /// The later accepted write, whose token is not larger.
        later: SeatWrite,
    },
}

/// Something worth reporting that does not make a run wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The release was invoked after the guard's validity ended (or never,
    /// and the validity has passed by the time of the check): the client
    /// kept working past its lease. Safe only with fencing.
    LeaseOverrun {
        /// The acquisition.
        op: OpId,
        /// The lock name.
        name: String,
        /// How long past `valid_until` the release was invoked (zero when it
        /// never was).
        by: Duration,
        /// Whether the release was never invoked.
        never_released: bool,
    },
    /// The acquire returned a guard whose validity had already passed.
    ExpiredOnArrival {
        /// The acquisition.
        op: OpId,
        /// The lock name.
        name: String,
    },
    /// An acquire whose outcome is unknown (or that never completed).
    UnknownAcquire {
        /// The acquisition.
        op: OpId,
        /// The lock name.
        name: String,
    },
    /// A release whose outcome is unknown (or that never completed).
    UnknownRelease {
        /// The acquisition.
        op: OpId,
        /// The lock name.
        name: String,
    },
}

/// Totals of a check, for test output and closing notes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Distinct clients.
    pub clients: usize,
    /// Recorded acquire calls.
    pub ops: usize,
    /// Acquires that returned a guard.
    pub acquired: usize,
    /// Acquires that certainly failed (timeouts, refused input).
    pub failed: usize,
    /// Definitely-held (non-empty) intervals checked.
    pub intervals: usize,
    /// Releases that returned `Ok`.
    pub released_ok: usize,
    /// Releases that returned `Lost`.
    pub released_lost: usize,
    /// Acquires and releases with an unknown outcome.
    pub unknown: usize,
    /// Lease overruns.
    pub overruns: usize,
    /// Seat writes checked by [`check_seat_log`].
    pub seat_writes: usize,
    /// Violations found.
    pub violations: usize,
}

/// What [`History::check`] or [`check_seat_log`] found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What makes the run wrong; empty for a correct run.
    pub violations: Vec<Violation>,
    /// What is worth knowing but not wrong.
    pub notes: Vec<Note>,
    /// Totals.
    pub counts: Counts,
    /// The instant times are shown relative to (the history's creation).
    origin: Option<Instant>,
}

impl Report {
    /// True when there is no violation.
    pub fn is_ok(&self) -> bool {
        self.violations.is_empty()
    }

    /// Panics with a readable listing of the violations, if there are any.
    #[track_caller]
    pub fn assert_ok(&self) {
        assert!(self.is_ok(), "the history check failed:\n{self}");
    }

    /// The [`Violation::Overlap`]s.
    pub fn overlaps(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::Overlap { .. }))
    }

    /// The [`Violation::TokenNotIncreasing`]s.
    pub fn token_regressions(&self) -> impl Iterator<Item = &Violation> {
        self.violations
            .iter()
            .filter(|v| matches!(v, Violation::TokenNotIncreasing { .. }))
    }

    /// Adds `other`'s findings and counts to this report (e.g. the lock
    /// history and the seat log of one run).
    pub fn merge(mut self, other: Report) -> Report {
        self.violations.extend(other.violations);
        self.notes.extend(other.notes);
        let (a, b) = (&mut self.counts, other.counts);
        a.clients += b.clients;
        a.ops += b.ops;
        a.acquired += b.acquired;
        a.failed += b.failed;
        a.intervals += b.intervals;
        a.released_ok += b.released_ok;
        a.released_lost += b.released_lost;
        a.unknown += b.unknown;
        a.overruns += b.overruns;
        a.seat_writes += b.seat_writes;
        a.violations = self.violations.len();
        self.origin = self.origin.or(other.origin);
        self
    }

    /// One line of totals, e.g. for a test's output.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} clients, {} acquires ({} granted, {} failed), {} held intervals, \
             releases {} ok / {} lost, {} unknown, {} overruns, {} seat writes, {} violations",
            c.clients,
            c.ops,
            c.acquired,
            c.failed,
            c.intervals,
            c.released_ok,
            c.released_lost,
            c.unknown,
            c.overruns,
            c.seat_writes,
            c.violations
        )
    }

    fn at(&self, instant: Instant) -> String {
        match self.origin {
            Some(origin) if instant >= origin => {
                format!(
                    "{:.3}ms",
                    instant.duration_since(origin).as_secs_f64() * 1e3
                )
            }
            Some(origin) => format!(
                "-{:.3}ms",
                origin.duration_since(instant).as_secs_f64() * 1e3
            ),
            None => format!("{instant:?}"),
        }
    }

    fn interval(&self, i: &Interval) -> String {
        format!(
            "op {} (client {}, token {}) held [{}, {})",
            i.op.0,
            i.client,
            i.fencing_token,
            self.at(i.start),
            self.at(i.end)
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.summary())?;
        const SHOWN: usize = 20;
        for violation in self.violations.iter().take(SHOWN) {
            match violation {
                Violation::Overlap {
                    name,
                    first,
                    second,
                } => writeln!(
                    f,
                    "  OVERLAP on {name:?}: {} and {}",
                    self.interval(first),
                    self.interval(second)
                )?,
                Violation::TokenNotIncreasing {
                    name,
                    earlier,
                    later,
                } => writeln!(
                    f,
                    "  TOKEN NOT INCREASING on {name:?}: {} then {}",
                    self.interval(earlier),
                    self.interval(later)
                )?,
                Violation::DoubleSale {
                    ticket_id,
                    first,
                    second,
                } => writeln!(
                    f,
                    "  DOUBLE SALE of seat {ticket_id}: {first} and again {second}"
                )?,
                Violation::FenceNotIncreasing {
                    ticket_id,
                    earlier,
                    later,
                } => writeln!(
                    f,
                    "  FENCE NOT INCREASING on seat {ticket_id}: {earlier} then {later}"
                )?,
            }
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  … and {} more", self.violations.len() - SHOWN)?;
        }
        Ok(())
    }
}

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
/// ([`Violation`]) on
///
/// - two definitely-held intervals of one name that overlap
///   ([`Violation::Overlap`]);
/// - fencing tokens that do not strictly increase per name in acquisition
///   order, the order of the intervals' starts
///   ([`Violation::TokenNotIncreasing`]).
///
/// It reports, without failing ([`Note`]), lease overruns (the release was
/// invoked after `valid_until`, or never and the validity has passed: the
/// client worked past its lease),
/// acquisitions whose validity had passed before the reply arrived, and
/// operations whose outcome is unknown (a connection error or a cancelled
/// call: the server may or may not have acted).
///
/// The booking workloads check the database side too, with
/// [`check_seat_log`]: the accepted writes in commit order (the
/// `ticket_log` table of `examples/ticket_booking/schema.sql`), each seat
/// sold at most once at a time and accepted fencing tokens strictly rising
/// per seat.
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

fn check_ops(ops: &[Op], origin: Option<Instant>) -> Report {
    let checked_at = Instant::now();
    let mut report = Report {
        origin,
        ..Report::default()
    };
    let mut clients = std::collections::HashSet::new();
    let mut by_name: BTreeMap<&str, Vec<Interval>> = BTreeMap::new();
    for (index, op) in ops.iter().enumerate() {
        let id = OpId(index);
        clients.insert(op.client);
        report.counts.ops += 1;
        match op.acquire_outcome {
            Some(Outcome::Ok) => report.counts.acquired += 1,
            Some(Outcome::Failed) => report.counts.failed += 1,
            Some(Outcome::Unknown) | None => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownAcquire {
                    op: id,
                    name: op.name.clone(),
                });
            }
        }
        if op.acquire_outcome != Some(Outcome::Ok) {
            continue;
        }
        match op.release_outcome {
            Some(Outcome::Ok) => report.counts.released_ok += 1,
            Some(Outcome::Failed) => report.counts.released_lost += 1,
            Some(Outcome::Unknown) => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownRelease {
                    op: id,
                    name: op.name.clone(),
                });
            }
            None if op.release_invoked.is_some() => {
                report.counts.unknown += 1;
                report.notes.push(Note::UnknownRelease {
                    op: id,
                    name: op.name.clone(),
                });
            }
            None => {}
        }
        if let Some(valid_until) = op.valid_until {
            match op.release_invoked {
                Some(release) if release > valid_until => {
                    report.counts.overruns += 1;
                    report.notes.push(Note::LeaseOverrun {
                        op: id,
                        name: op.name.clone(),
                        by: release.duration_since(valid_until),
                        never_released: false,
                    });
                }
                // Never released and past its validity by now: the client
                // kept it (or vanished) past its lease.
                None if valid_until < checked_at => {
                    report.counts.overruns += 1;
                    report.notes.push(Note::LeaseOverrun {
                        op: id,
                        name: op.name.clone(),
                        by: Duration::ZERO,
                        never_released: true,
                    });
                }
                Some(_) | None => {}
            }
        }
        match (op.held_interval(), op.fencing_token) {
            (Some((start, end)), Some(fencing_token)) => {
                by_name.entry(&op.name).or_default().push(Interval {
                    op: id,
                    client: op.client,
                    fencing_token,
                    start,
                    end,
                });
            }
            _ => report.notes.push(Note::ExpiredOnArrival {
                op: id,
                name: op.name.clone(),
            }),
        }
    }
    report.counts.clients = clients.len();
    for (name, mut intervals) in by_name {
        report.counts.intervals += intervals.len();
        // Acquisition order: the order of the intervals' starts.
        intervals.sort_by_key(|i| (i.start, i.op));
        let mut latest_end: Option<Interval> = None;
        for pair in intervals.windows(2) {
            let (earlier, later) = (pair[0], pair[1]);
            if later.fencing_token <= earlier.fencing_token {
                report.violations.push(Violation::TokenNotIncreasing {
                    name: name.to_owned(),
                    earlier,
                    later,
                });
            }
        }
        for interval in intervals {
            if let Some(open) = latest_end
                && interval.start < open.end
            {
                report.violations.push(Violation::Overlap {
                    name: name.to_owned(),
                    first: open,
                    second: interval,
                });
            }
            if latest_end.is_none_or(|open| interval.end > open.end) {
                latest_end = Some(interval);
            }
        }
    }
    report.counts.violations = report.violations.len();
    report
}

/// What happened to a seat in one accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeatAction {
    /// The seat was sold (`'book'` in `ticket_log`).
    Book,
    /// A sale was undone (`'cancel'`).
    Cancel,
}

impl SeatAction {
    /// Parses `ticket_log.action`: `"book"` or `"cancel"`.
    pub fn parse(action: &str) -> Option<SeatAction> {
        match action {
            "book" => Some(SeatAction::Book),
            "cancel" => Some(SeatAction::Cancel),
            _ => None,
        }
    }
}

/// One write the protected storage accepted: a row of `ticket_log`
/// (`examples/ticket_booking/schema.sql`), independent of any driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatWrite {
    /// Commit order (`ticket_log.seq`).
    pub seq: i64,
    /// The seat.
    pub ticket_id: i64,
    /// Book or cancel.
    pub action: SeatAction,
    /// Who wrote it.
    pub holder: String,
    /// The fencing token the write carried.
    pub fence: i64,
}

impl fmt::Display for SeatWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {:?} by {:?} with token {}",
            self.seq, self.action, self.holder, self.fence
        )
    }
}

/// Checks the database side of a booking run: over the accepted writes in
/// commit order (`seq`), each seat is sold at most once at a time (a
/// `Book` while sold is a [`Violation::DoubleSale`]), and the fencing
/// tokens of the writes accepted for a seat strictly increase
/// ([`Violation::FenceNotIncreasing`]).
///
/// ```
/// use distlock_testkit::{SeatAction, SeatWrite, check_seat_log};
///
/// let write = |seq, fence, action| SeatWrite {
///     seq, ticket_id: 7, action, holder: format!("client-{fence}"), fence,
/// };
/// let good = [write(1, 1, SeatAction::Book), write(2, 2, SeatAction::Cancel), write(3, 3, SeatAction::Book)];
/// check_seat_log(&good).assert_ok();
/// let sold_twice = [write(1, 1, SeatAction::Book), write(2, 2, SeatAction::Book)];
/// assert_eq!(check_seat_log(&sold_twice).violations.len(), 1);
/// ```
pub fn check_seat_log(writes: &[SeatWrite]) -> Report {
    let mut sorted: Vec<&SeatWrite> = writes.iter().collect();
    sorted.sort_by_key(|w| w.seq);
    let mut report = Report::default();
    report.counts.seat_writes = writes.len();
    // Per seat: the last accepted write, and the write that sold it if sold.
    let mut seats: BTreeMap<i64, (&SeatWrite, Option<&SeatWrite>)> = BTreeMap::new();
    for write in sorted {
        let sold_by = match seats.get(&write.ticket_id) {
            Some(&(last, sold_by)) => {
                if write.fence <= last.fence {
                    report.violations.push(Violation::FenceNotIncreasing {
                        ticket_id: write.ticket_id,
                        earlier: last.clone(),
                        later: write.clone(),
                    });
                }
                sold_by
            }
            None => None,
        };
        let sold_by = match (write.action, sold_by) {
            (SeatAction::Book, Some(first)) => {
                report.violations.push(Violation::DoubleSale {
                    ticket_id: write.ticket_id,
                    first: first.clone(),
                    second: write.clone(),
                });
                Some(first)
            }
            (SeatAction::Book, None) => Some(write),
            (SeatAction::Cancel, _) => None,
        };
        seats.insert(write.ticket_id, (write, sold_by));
    }
    report.counts.violations = report.violations.len();
    report
}
