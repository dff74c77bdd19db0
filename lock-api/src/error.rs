//! The one error type every backend returns, so callers match on meaning, not on drivers.

use std::error::Error as StdError;

/// A boxed error from a backend's driver, kept as the `source()` of a [`LockError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when taking, keeping or giving back a lock.
///
/// Backends convert their driver errors into these variants; the driver's own
/// error stays reachable through [`std::error::Error::source`]. Messages never
/// contain passwords from connection URLs.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// The lock was not acquired before the wait ran out.
    #[error("timed out waiting for the lock")]
    Timeout,
    /// The lock is no longer held by this guard: its TTL ran out, someone else
    /// took it, or the connection that held it is gone.
    #[error(
        "the lock is no longer held by this guard (expired, taken over, or its connection is gone)"
    )]
    Lost,
    /// The lock name breaks the naming rules (1..=1024 bytes of UTF-8).
    #[error("invalid lock name: {0}")]
    InvalidName(String),
    /// The TTL is zero, under one millisecond, or larger than the backend supports.
    #[error("invalid TTL: {0}")]
    InvalidTtl(String),
    /// The connection URL does not parse, or names a scheme this build cannot serve.
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// A client option is out of range or inconsistent (a key prefix with a
    /// brace, a pool of zero connections, ...). The message names the option.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The lock server could not be reached, or the connection failed mid-command.
    #[error("cannot reach the lock server: {0}")]
    Connection(#[source] BoxError),
    /// The lock server answered with an error.
    #[error("the lock server returned an error: {0}")]
    Backend(#[source] BoxError),
}

impl LockError {
    /// Builds a [`LockError::Connection`] from any error or message.
    pub fn connection(err: impl Into<BoxError>) -> Self {
        LockError::Connection(err.into())
    }

    /// Builds a [`LockError::Backend`] from any error or message.
    pub fn backend(err: impl Into<BoxError>) -> Self {
        LockError::Backend(err.into())
    }

    /// True for failures that may go away if the same call is made again
    /// later: [`Timeout`](LockError::Timeout) and
    /// [`Connection`](LockError::Connection).
    ///
    /// Invalid input, a lost lock and a server-side error are not retryable.
    pub fn is_retryable(&self) -> bool {
        matches!(self, LockError::Timeout | LockError::Connection(_))
    }

    /// True for [`LockError::Lost`].
    pub fn is_lost(&self) -> bool {
        matches!(self, LockError::Lost)
    }

    /// True for [`LockError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_timeouts_and_connection_failures_are_retryable() {
        assert!(LockError::Timeout.is_retryable());
        assert!(LockError::connection("refused").is_retryable());
        assert!(!LockError::Lost.is_retryable());
        assert!(!LockError::InvalidName("empty".into()).is_retryable());
        assert!(!LockError::backend("WRONGTYPE").is_retryable());
    }

    #[test]
    fn connection_errors_keep_their_source() {
        let err = LockError::connection(std::io::Error::other("connection refused"));
        assert_eq!(
            err.to_string(),
            "cannot reach the lock server: connection refused"
        );
        assert!(StdError::source(&err).is_some());
    }
}
