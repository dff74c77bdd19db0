//! The one error type every backend returns, so callers match on meaning, not on drivers.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error from a backend's driver, kept inside a [`LockError`]
/// (see [`LockError::get_ref`]).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong when taking, keeping or giving back a lock.
///
/// Backends convert their driver errors into these variants. For
/// [`Connection`](LockError::Connection) and [`Backend`](LockError::Backend)
/// the message includes the driver error's own message, so it is not
/// repeated by [`source`](std::error::Error::source), which returns the
/// driver error's cause instead (as [`std::io::Error`] does); the driver
/// error itself is reachable with [`get_ref`](LockError::get_ref) and
/// [`into_inner`](LockError::into_inner) for `downcast_ref`. An error
/// reporter that walks the `source()` chain therefore prints each message
/// once. Messages never contain passwords from connection URLs.
///
/// ```
/// use std::error::Error as _;
/// use distlock_api::LockError;
///
/// let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
/// let err = LockError::connection(io);
/// assert_eq!(err.to_string(), "cannot reach the lock server: connection refused");
/// assert!(err.source().is_none(), "the message already says it");
/// let driver = err.get_ref().and_then(|e| e.downcast_ref::<std::io::Error>());
/// assert_eq!(driver.map(|e| e.kind()), Some(std::io::ErrorKind::ConnectionRefused));
/// ```
#[non_exhaustive]
#[derive(Debug)]
pub enum LockError {
    /// The lock was not acquired before the wait ran out.
    Timeout,
    /// The lock is no longer held by this guard: its TTL ran out, someone else
    /// took it, or the connection that held it is gone.
    Lost,
    /// The lock name breaks the naming rules (1..=1024 bytes of UTF-8).
    InvalidName(String),
    /// The TTL is zero, under one millisecond, or larger than the backend supports.
    InvalidTtl(String),
    /// The connection URL does not parse, or names a scheme this build cannot serve.
    InvalidUrl(String),
    /// A client option is out of range or inconsistent (a key prefix with a
    /// brace, a pool of zero connections, ...). The message names the option.
    InvalidConfig(String),
    /// The lock server could not be reached, or the connection failed mid-command.
    Connection(BoxError),
    /// The lock server answered with an error.
    Backend(BoxError),
}

impl fmt::Display for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockError::Timeout => f.write_str("timed out waiting for the lock"),
            LockError::Lost => f.write_str(
                "the lock is no longer held by this guard (expired, taken over, or its connection is gone)",
            ),
            LockError::InvalidName(why) => write!(f, "invalid lock name: {why}"),
            LockError::InvalidTtl(why) => write!(f, "invalid TTL: {why}"),
            LockError::InvalidUrl(why) => write!(f, "invalid URL: {why}"),
            LockError::InvalidConfig(why) => write!(f, "invalid configuration: {why}"),
            LockError::Connection(err) => write!(f, "cannot reach the lock server: {err}"),
            LockError::Backend(err) => write!(f, "the lock server returned an error: {err}"),
        }
    }
}

impl StdError for LockError {
    /// The driver error's cause: the driver error's own message is already
    /// part of this error's (see the type's docs).
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            LockError::Connection(err) | LockError::Backend(err) => err.source(),
            _ => None,
        }
    }
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

    /// The driver error of a [`Connection`](LockError::Connection) or
    /// [`Backend`](LockError::Backend) error, for `downcast_ref`.
    pub fn get_ref(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            LockError::Connection(err) | LockError::Backend(err) => Some(&**err),
            _ => None,
        }
    }

    /// The driver error of a [`Connection`](LockError::Connection) or
    /// [`Backend`](LockError::Backend) error, owned.
    pub fn into_inner(self) -> Option<BoxError> {
        match self {
            LockError::Connection(err) | LockError::Backend(err) => Some(err),
            _ => None,
        }
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

    /// A message is printed once: by the error that has it, not again by
    /// the one that wraps it.
    #[test]
    fn messages_do_not_repeat_their_source() {
        #[derive(Debug, thiserror::Error)]
        #[error("pool checkout failed")]
        struct Checkout(#[source] std::io::Error);

        let err = LockError::connection(Checkout(std::io::Error::other("connection refused")));
        let mut chain = vec![err.to_string()];
        let mut next = StdError::source(&err);
        while let Some(cause) = next {
            chain.push(cause.to_string());
            next = cause.source();
        }
        assert_eq!(
            chain,
            [
                "cannot reach the lock server: pool checkout failed",
                "connection refused"
            ]
        );
        let checkout = err.get_ref().and_then(|e| e.downcast_ref::<Checkout>());
        assert!(checkout.is_some(), "the driver error is reachable");
        assert!(LockError::Timeout.get_ref().is_none());
        assert!(LockError::backend("WRONGTYPE").into_inner().is_some());
    }
}
