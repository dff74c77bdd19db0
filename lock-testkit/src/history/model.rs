//! What a [`History`](super::History) records: one [`Op`] per acquisition,
//! with the outcome of each call.

use distlock_api::{Instant, LockError};

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

/// Identifies one recorded acquisition (and its release) in a [`History`](crate::History).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpId(pub(super) usize);

impl OpId {
    /// The position of the operation in [`History::ops`](crate::History::ops).
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
