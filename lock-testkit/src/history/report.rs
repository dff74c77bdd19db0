//! What a check found: [`Violation`]s that make a run wrong, [`Note`]s
//! worth knowing, [`Counts`], and a readable listing of them all.

use std::fmt;
use std::time::Duration;

use distlock_api::Instant;

use super::OpId;

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
    /// A rule of the protected storage was broken, as a domain check over
    /// what the storage accepted found it (the ticket example's seat log:
    /// a seat sold twice, a write accepted with a token that did not rise).
    Storage {
        /// The rule, e.g. `"double sale"`.
        rule: &'static str,
        /// What broke it, readably.
        detail: String,
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
    /// Writes to the protected storage checked by a domain check.
    pub storage_writes: usize,
    /// Violations found.
    pub violations: usize,
}

/// What [`History::check`](crate::History::check) (or a domain check of the
/// protected storage, merged in with [`Report::merge`]) found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// What makes the run wrong; empty for a correct run.
    pub violations: Vec<Violation>,
    /// What is worth knowing but not wrong.
    pub notes: Vec<Note>,
    /// Totals.
    pub counts: Counts,
    /// The instant times are shown relative to (the history's creation).
    pub(super) origin: Option<Instant>,
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
    /// history and the storage check of one run).
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
        a.storage_writes += b.storage_writes;
        a.violations = self.violations.len();
        self.origin = self.origin.or(other.origin);
        self
    }

    /// One line of totals, e.g. for a test's output.
    pub fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} clients, {} acquires ({} granted, {} failed), {} held intervals, \
             releases {} ok / {} lost, {} unknown, {} overruns, {} storage writes, {} violations",
            c.clients,
            c.ops,
            c.acquired,
            c.failed,
            c.intervals,
            c.released_ok,
            c.released_lost,
            c.unknown,
            c.overruns,
            c.storage_writes,
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
                Violation::Storage { rule, detail } => {
                    writeln!(f, "  {}: {detail}", rule.to_uppercase())?
                }
            }
        }
        if self.violations.len() > SHOWN {
            writeln!(f, "  … and {} more", self.violations.len() - SHOWN)?;
        }
        Ok(())
    }
}
