//! Driver errors, sorted into the [`LockError`] kinds callers match on.

use std::time::Duration;

use distlock_api::LockError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// A failed Redis operation: what was attempted, against which server
/// (URL without its password), and the driver's error. The driver's
/// message is part of this one, so it is not also the `source()`.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {target}: {error}")]
pub(crate) struct RedisFailure {
    pub(crate) op: &'static str,
    pub(crate) target: String,
    pub(crate) error: RedisError,
}

/// An operation that did not finish in time.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {target}: no answer within {after:?}")]
pub(crate) struct TimedOut {
    pub(crate) op: &'static str,
    pub(crate) target: String,
    pub(crate) after: Duration,
}

/// True when `err` means the server could not be reached or is briefly
/// unable to serve (loading, failing over): worth retrying.
fn is_transient(err: &RedisError) -> bool {
    if err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
    {
        return true;
    }
    matches!(
        err.kind(),
        ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    // A redirection the cluster client could not complete:
                    // the slot's master is unreachable, or the slot is moving.
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::ReadOnly
            )
    )
}

/// Sorts a driver error: unreachable or briefly unavailable →
/// [`LockError::Connection`], anything else the server said →
/// [`LockError::Backend`].
pub(crate) fn classify(op: &'static str, target: &str, source: RedisError) -> LockError {
    let transient = is_transient(&source);
    let failure = RedisFailure {
        op,
        target: target.to_owned(),
        error: source,
    };
    if transient {
        LockError::connection(failure)
    } else {
        LockError::backend(failure)
    }
}

/// The error for an operation that ran out of time.
pub(crate) fn timed_out(op: &'static str, target: &str, after: Duration) -> LockError {
    LockError::connection(TimedOut {
        op,
        target: target.to_owned(),
        after,
    })
}

/// True when `err` is the server refusing our credentials (`NOAUTH`,
/// `WRONGPASS`): a wrong URL, to be reported as such, never mistaken for
/// a command the server merely does not allow.
pub(crate) fn is_auth_failure(err: &LockError) -> bool {
    let redis = err.get_ref().and_then(|inner| {
        inner
            .downcast_ref::<RedisFailure>()
            .map(|failure| &failure.error)
            .or_else(|| inner.downcast_ref::<RedisError>())
    });
    redis.is_some_and(|redis| {
        redis.kind() == ErrorKind::AuthenticationFailed
            || matches!(redis.code(), Some("NOAUTH" | "WRONGPASS"))
    })
}
