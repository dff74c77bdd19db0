//! Connection URLs: which schemes are ours, and errors that never show a password.

use std::str::FromStr;

use distlock_api::LockError;
use distlock_api::backend::redact_secret as redact;
use sqlx::postgres::PgConnectOptions;

/// Parses a `postgres://` or `postgresql://` URL into connect options.
pub(crate) fn parse(url: &str) -> Result<PgConnectOptions, LockError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some(s) if s.eq_ignore_ascii_case("postgres") || s.eq_ignore_ascii_case("postgresql") => {}
        Some(s) => {
            return Err(LockError::InvalidUrl(format!(
                "expected a postgres:// or postgresql:// URL, got scheme {:?}",
                redact(s, url)
            )));
        }
        None => {
            return Err(LockError::InvalidUrl(
                "expected a postgres:// or postgresql:// URL".to_owned(),
            ));
        }
    }
    PgConnectOptions::from_str(url).map_err(|err| {
        LockError::InvalidUrl(format!(
            "not a valid PostgreSQL URL: {}",
            redact(&err.to_string(), url)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_schemes_are_invalid_urls() {
        for url in ["redis://localhost", "mysql://u:p@h/d", "localhost:5432", ""] {
            assert!(matches!(parse(url), Err(LockError::InvalidUrl(_))), "{url}");
        }
        assert!(parse("postgresql://u@localhost/db").is_ok());
        assert!(parse("POSTGRES://u@localhost/db").is_ok());
    }
}
