//! The naming and TTL rules every backend shares, checked once before a backend sees a call.

use std::time::Duration;

use crate::LockError;

/// The longest lock name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 1024;

/// The shortest TTL any backend accepts.
pub const MIN_TTL: Duration = Duration::from_millis(1);

/// Checks that `name` is a valid lock name: 1..=[`MAX_NAME_LEN`] bytes.
///
/// Any UTF-8 is allowed (spaces, colons, quotes, braces, newlines, NUL,
/// emoji); backends must treat names as opaque bytes, so distinct names are
/// always distinct locks.
///
/// ```
/// use distlock_api::{validate_name, LockError};
/// assert!(validate_name("ticket:42").is_ok());
/// assert!(matches!(validate_name(""), Err(LockError::InvalidName(_))));
/// assert!(matches!(validate_name(&"x".repeat(1025)), Err(LockError::InvalidName(_))));
/// ```
pub fn validate_name(name: &str) -> Result<(), LockError> {
    if name.is_empty() {
        return Err(LockError::InvalidName(
            "a lock name must not be empty".to_owned(),
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(LockError::InvalidName(format!(
            "a lock name is at most {MAX_NAME_LEN} bytes of UTF-8, this one is {} bytes",
            name.len()
        )));
    }
    Ok(())
}

/// Checks that `ttl` is at least [`MIN_TTL`] and at most `max` (the backend's limit).
///
/// ```
/// use std::time::Duration;
/// use distlock_api::{validate_ttl, LockError};
/// let max = Duration::from_secs(3600);
/// assert!(validate_ttl(Duration::from_secs(30), max).is_ok());
/// assert!(matches!(validate_ttl(Duration::ZERO, max), Err(LockError::InvalidTtl(_))));
/// assert!(matches!(validate_ttl(Duration::from_micros(500), max), Err(LockError::InvalidTtl(_))));
/// assert!(matches!(validate_ttl(Duration::MAX, max), Err(LockError::InvalidTtl(_))));
/// ```
pub fn validate_ttl(ttl: Duration, max: Duration) -> Result<(), LockError> {
    if ttl.is_zero() {
        return Err(LockError::InvalidTtl("a TTL must not be zero".to_owned()));
    }
    if ttl < MIN_TTL {
        return Err(LockError::InvalidTtl(format!(
            "a TTL must be at least 1 ms, got {ttl:?}"
        )));
    }
    if ttl > max {
        return Err(LockError::InvalidTtl(format!(
            "a TTL must be at most {max:?} on this backend, got {ttl:?}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_1024_bytes_is_a_valid_name_and_1025_is_not() {
        let emoji = "🔒".repeat(256); // 4 bytes each
        assert_eq!(emoji.len(), 1024);
        assert!(validate_name(&emoji).is_ok());
        let too_long = format!("{emoji}x");
        let err = validate_name(&too_long).expect_err("1025 bytes must be rejected");
        assert!(err.to_string().contains("1025 bytes"), "{err}");
    }

    #[test]
    fn odd_but_legal_names_are_accepted() {
        for name in ["a b", "a:b", "{tag}", "\"'", "\n", "\0", "*", "🎫"] {
            assert!(validate_name(name).is_ok(), "{name:?}");
        }
    }

    #[test]
    fn ttl_bounds_are_inclusive() {
        let max = Duration::from_secs(10);
        assert!(validate_ttl(MIN_TTL, max).is_ok());
        assert!(validate_ttl(max, max).is_ok());
        assert!(validate_ttl(max + Duration::from_nanos(1), max).is_err());
        assert!(validate_ttl(Duration::from_nanos(1), max).is_err());
    }
}
