//! Fencing: how the storage you protect rejects a holder whose lock ran out.
//!
//! A lock alone cannot stop this: a holder takes the lock, then stalls — a
//! garbage-collection pause, a swapped-out VM, a slow payment provider —
//! for longer than its TTL. The lock expires, the next holder takes it and
//! writes. Then the first one wakes up and, still believing it holds the
//! lock, writes too. Renewal narrows that window but cannot close it: the
//! stalled process does not run its renewal either, and it cannot know
//! that it stalled.
//!
//! The fix is for the *storage* to check. Every grant carries a fencing
//! token that is larger than every earlier grant's for the same name
//! ([`LockGuard::fencing_token`](crate::LockGuard::fencing_token)). Store the
//! token of the last accepted write beside the data, and accept a write
//! only when its token is larger:
//!
//! ```sql
//! UPDATE tickets
//!    SET status = 'sold', holder = $3, fence = $2
//!  WHERE id = $1 AND status = 'available'
//!    AND fence < $2          -- the fencing condition: fence_condition!("fence", "$2")
//! ```
//!
//! A stale holder's write then updates no row, whatever happened in
//! between — even if the next holder sold the ticket and a refund made it
//! available again, which a check of `status` alone would miss. Treat "no
//! row updated" as "not done": re-read the row to tell the caller why.
//!
//! [`Fence`] carries a token in the form SQL databases store (a signed
//! 64-bit `BIGINT`), and [`fence_condition!`](crate::fence_condition) writes
//! the predicate as a string literal, so the statement stays a `&'static
//! str` (which sqlx 0.9 asks for, to rule out SQL injection).
//!
//! ```
//! use std::time::Duration;
//! use distlock::fencing::Fence;
//! use distlock::{DistributedLock, MemoryLock, fence_condition};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), distlock::LockError> {
//! let locks = MemoryLock::new();
//! let guard = locks.acquire("ticket:7", Duration::from_secs(10), Duration::from_secs(1)).await?;
//! let fence = Fence::of(&guard)?;
//! const BOOK: &str = concat!(
//!     "UPDATE tickets SET status = 'sold', holder = $3, fence = $2 ",
//!     "WHERE id = $1 AND status = 'available' AND ",
//!     fence_condition!("fence", "$2"),
//! );
//! assert!(BOOK.ends_with("AND fence < $2"));
//! // sqlx::query(&sql).bind(7_i64).bind(fence.get()).bind("ada")…
//! # let _ = fence.get();
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The column starts at 0 (tokens start at 1), is `NOT NULL`, and is written
//! by every fenced write: `SET fence = $2`. Tokens are per lock name, so use
//! one lock name per fenced row (or group of rows), e.g. `ticket:<id>`.

use std::fmt;

use distlock_api::{LockContext, LockError, LockGuard};

/// A fencing token as a signed 64-bit integer, ready to bind to a `BIGINT`
/// column (SQL has no unsigned 64-bit type).
///
/// Tokens from every distlock backend fit: Redis counters and PostgreSQL
/// sequences are signed 64-bit themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fence(i64);

impl Fence {
    /// The fence of a held lock.
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`] if the token does not fit in an `i64` — which
    /// no distlock backend produces.
    pub fn of(guard: &LockGuard) -> Result<Self, LockError> {
        Self::try_from(guard.fencing_token())
    }

    /// The fence of the lock a [`with_lock`](crate::DistributedLockExt::with_lock)
    /// closure runs under.
    ///
    /// # Errors
    ///
    /// As [`Fence::of`].
    pub fn of_context(context: &LockContext) -> Result<Self, LockError> {
        Self::try_from(context.fencing_token())
    }

    /// The value to bind in SQL.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<u64> for Fence {
    type Error = LockError;

    fn try_from(token: u64) -> Result<Self, LockError> {
        i64::try_from(token).map(Fence).map_err(|_| {
            LockError::backend(format!(
                "fencing token {token} does not fit in a signed 64-bit column"
            ))
        })
    }
}

impl fmt::Display for Fence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The SQL condition that admits a write only from a holder newer than the
/// last accepted one, as a string literal: `fence_condition!("fence", "$2")`
/// is `"fence < $2"`.
///
/// A literal fits into `concat!`, so the statement it completes is still a
/// `&'static str`. Put it into every `UPDATE` (or `DELETE`) of data the lock
/// protects, and set the column to the token in the same statement; a write
/// that matches no row came from a holder whose lock ran out. See the
/// [`fencing`](crate::fencing) module for why a lock needs this.
///
/// ```
/// use distlock::fence_condition;
///
/// assert_eq!(fence_condition!("fence", "$2"), "fence < $2");
/// const CANCEL: &str = concat!(
///     "UPDATE tickets SET status = 'available', fence = $2 WHERE id = $1 AND ",
///     fence_condition!("fence", "$2"),
/// );
/// # assert!(CANCEL.ends_with("fence < $2"));
/// ```
#[macro_export]
macro_rules! fence_condition {
    ($column:literal, $placeholder:literal) => {
        concat!($column, " < ", $placeholder)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_beyond_i64_are_a_typed_error() {
        assert_eq!(Fence::try_from(7).expect("fits").get(), 7);
        assert_eq!(
            Fence::try_from(i64::MAX as u64).expect("fits").get(),
            i64::MAX
        );
        let err = Fence::try_from(u64::MAX).expect_err("does not fit");
        assert!(matches!(err, LockError::Backend(_)), "{err:?}");
        assert!(err.to_string().contains("does not fit"), "{err}");
    }
}
