//! Connection URLs: which schemes are ours, and errors that never show a password.

use std::str::FromStr;

use distlock_api::LockError;
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

/// The password in a URL's user-info part, if any (as written, percent-encoded).
fn password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then_some(password)
}

/// `text` with the URL's password (raw and percent-decoded) masked.
pub(crate) fn redact(text: &str, url: &str) -> String {
    let Some(secret) = password(url) else {
        return text.to_owned();
    };
    let mut out = text.replace(secret, "***");
    let decoded = percent_decode(secret);
    if !decoded.is_empty() && decoded != secret {
        out = out.replace(&decoded, "***");
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = s
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_masks_the_password() {
        let url = "postgres://app:s3cr%40t@db:5432/x?sslmode=require";
        assert_eq!(password(url), Some("s3cr%40t"));
        assert_eq!(redact("bad s3cr%40t and s3cr@t", url), "bad *** and ***");
        assert_eq!(password("postgres://app@db/x"), None);
        assert_eq!(password("postgres://db/x"), None);
    }

    #[test]
    fn other_schemes_are_invalid_urls() {
        for url in ["redis://localhost", "mysql://u:p@h/d", "localhost:5432", ""] {
            assert!(matches!(parse(url), Err(LockError::InvalidUrl(_))), "{url}");
        }
        assert!(parse("postgresql://u@localhost/db").is_ok());
        assert!(parse("POSTGRES://u@localhost/db").is_ok());
    }
}
