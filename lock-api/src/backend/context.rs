//! What one attempt knows about the call it serves.

use std::time::Duration;

use tokio::time::Instant;

/// When the caller stops waiting for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// `try_acquire`: one attempt, which bounds its own waits (a pool
    /// checkout, a reply) by the backend's own limits.
    Once,
    /// `acquire`: the caller gives up at this instant, and an attempt waits
    /// for nothing of its own (a pooled connection, a session) past it. For
    /// a zero wait this is the call's start: no waiting for resources, one
    /// complete attempt.
    At(Instant),
    /// The caller waits without limit (a `wait` too large to add to the
    /// clock, such as `Duration::MAX`).
    Never,
}

/// What a [`LockBackend`](super::LockBackend) attempt is told about the
/// call it serves: the caller's [`Deadline`] and which attempt this is.
///
/// The waiting loop makes one per attempt. Backends read it to decide how
/// long to wait for resources of their own, so that what an attempt
/// returns at the deadline is its own typed error (say, "the connection
/// pool is exhausted") and not a bare timeout.
#[derive(Debug, Clone)]
pub struct AttemptContext {
    deadline: Deadline,
    attempt: u32,
    /// Whether a round trip in flight at the deadline is cut there (a
    /// wait's attempts) or completes (the one attempt of a zero wait).
    cut_at_deadline: bool,
}

impl AttemptContext {
    /// The context of a single attempt with no waiting ([`Deadline::Once`]).
    pub fn once() -> Self {
        AttemptContext {
            deadline: Deadline::Once,
            attempt: 1,
            cut_at_deadline: false,
        }
    }

    /// The context of the one attempt of an `acquire` with a zero wait,
    /// called at `now`: it waits for no resource of its own (the caller's
    /// deadline has come), but its round trip completes.
    pub fn no_wait(now: Instant) -> Self {
        AttemptContext {
            deadline: Deadline::At(now),
            attempt: 1,
            cut_at_deadline: false,
        }
    }

    /// The context of attempt number `attempt` (1-based; 0 for
    /// [`subscribe`](super::LockBackend::subscribe), which comes before the
    /// first attempt) of a call that gives up at `deadline`.
    pub fn new(deadline: Deadline, attempt: u32) -> Self {
        AttemptContext {
            deadline,
            attempt,
            cut_at_deadline: true,
        }
    }

    /// When the caller gives up.
    pub fn deadline(&self) -> Deadline {
        self.deadline
    }

    /// Whether the caller waits when this attempt finds the lock held:
    /// false for `try_acquire` and a zero wait, and once the deadline has
    /// passed. A backend can use it to tell the server in the same round
    /// trip that someone waits (so that the release wakes them), and to
    /// leave no such note when nobody will.
    ///
    /// ```
    /// use distlock_api::backend::{AttemptContext, Deadline};
    /// use tokio::time::{Duration, Instant};
    ///
    /// assert!(!AttemptContext::once().will_wait());
    /// assert!(!AttemptContext::no_wait(Instant::now()).will_wait());
    /// assert!(AttemptContext::new(Deadline::Never, 1).will_wait());
    /// let later = Instant::now() + Duration::from_secs(5);
    /// assert!(AttemptContext::new(Deadline::At(later), 1).will_wait());
    /// ```
    pub fn will_wait(&self) -> bool {
        match self.deadline {
            Deadline::Once => false,
            Deadline::At(deadline) => self.cut_at_deadline && deadline > Instant::now(),
            Deadline::Never => true,
        }
    }

    /// Which attempt of the call this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Until when this attempt may wait for a resource of the backend's own
    /// (a pooled connection): the caller's deadline, or `own_limit` from now
    /// for a single attempt. `None`: no limit.
    ///
    /// ```
    /// use std::time::Duration;
    /// use distlock_api::backend::{AttemptContext, Deadline};
    /// use distlock_api::Instant;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let limit = Duration::from_secs(5);
    /// let once = AttemptContext::once().wait_until(limit);
    /// assert_eq!(once, Some(Instant::now() + limit));
    /// let at = Instant::now() + Duration::from_millis(20);
    /// assert_eq!(AttemptContext::new(Deadline::At(at), 3).wait_until(limit), Some(at));
    /// assert_eq!(AttemptContext::new(Deadline::Never, 3).wait_until(limit), None);
    /// # }
    /// ```
    pub fn wait_until(&self, own_limit: Duration) -> Option<Instant> {
        match self.deadline {
            Deadline::Once => Instant::now().checked_add(own_limit),
            Deadline::At(deadline) => Some(deadline),
            Deadline::Never => None,
        }
    }

    /// The end of a step the backend bounds by `limit` (a round trip):
    /// `limit` from now, or the caller's deadline if that comes first —
    /// except in a single attempt ([`once`](Self::once),
    /// [`no_wait`](Self::no_wait)), whose round trip always gets `limit`.
    /// The flag tells whether the caller's deadline is the bound (then an
    /// attempt cut there answers [`LockError::Timeout`](crate::LockError::Timeout)).
    pub fn bound(&self, limit: Duration) -> (Instant, bool) {
        let now = Instant::now();
        let own = now.checked_add(limit).unwrap_or(now);
        match self.deadline {
            Deadline::At(deadline) if self.cut_at_deadline && deadline < own => (deadline, true),
            _ => (own, false),
        }
    }
}
