//! Connection URLs: parsed by the driver, printed only with secrets removed.

use lock_api::LockError;

/// `url` with any password replaced by `***`, for `Debug`, logs and errors.
///
/// Covers the password in the user-info part (`redis://user:secret@host`,
/// `redis://:secret@host`) and in query parameters (`?password=`, `?pass=`).
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return "<unparsable URL>".to_owned();
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.find(':') {
                Some(colon) => {
                    out.push_str(&userinfo[..colon]);
                    out.push_str(":***");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    out.push_str(&redact_query(tail));
    out
}

fn redact_query(tail: &str) -> String {
    let Some(query_start) = tail.find('?') else {
        return tail.to_owned();
    };
    let (path, query) = tail.split_at(query_start + 1);
    let query = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") || key == "pass" => {
                format!("{key}=***")
            }
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&");
    format!("{path}{query}")
}

/// Parses `url` into a driver client, with errors that never echo a secret.
/// `root_certificate` (PEM) replaces the OS trust store for `rediss://`.
pub(crate) fn client(
    url: &str,
    root_certificate: Option<&[u8]>,
) -> Result<redis::Client, LockError> {
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("redis" | "rediss" | "redis+unix" | "unix") => {}
        Some(other) => {
            return Err(LockError::InvalidUrl(format!(
                "{}: scheme {other:?} is not a Redis URL (use redis:// or rediss://)",
                redact(url)
            )));
        }
        None => {
            return Err(LockError::InvalidUrl(format!(
                "{}: expected redis://[user[:password]@]host[:port][/db] or rediss://…",
                redact(url)
            )));
        }
    }
    open(url, root_certificate).map_err(|err| {
        let hint =
            if scheme == Some("rediss") && err.kind() == redis::ErrorKind::InvalidClientConfig {
                " (rediss:// needs TLS support: enable lock-redis' `tls` feature)"
            } else {
                ""
            };
        // The driver's message may quote the URL, so only its kind is kept.
        LockError::InvalidUrl(format!("{}: {:?}{hint}", redact(url), err.kind()))
    })
}

#[cfg(feature = "tls")]
fn open(url: &str, root_certificate: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    // rustls needs a crypto provider; install ring unless the application
    // installed one already (then this does nothing).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match root_certificate {
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
        None => redis::Client::open(url),
    }
}

#[cfg(not(feature = "tls"))]
fn open(url: &str, _root_certificate: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    redis::Client::open(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(not(feature = "tls"))]
    #[test]
    fn rediss_without_the_tls_feature_says_what_to_enable() {
        let err = client("rediss://:s3cret@localhost:6380", None).expect_err("no TLS");
        assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
        assert!(err.to_string().contains("`tls` feature"), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            redact("redis://user:s3cret@host:6379/2"),
            "redis://user:***@host:6379/2"
        );
        assert_eq!(redact("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact("rediss://host:6380"), "rediss://host:6380");
        assert_eq!(redact("redis://user@host"), "redis://user@host");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(redact("s3cret"), "<unparsable URL>");
    }

    #[test]
    fn bad_urls_are_invalid_url_without_the_secret() {
        for url in [
            "",
            "s3cret",
            "http://user:s3cret@host",
            "postgres://u:s3cret@host/db",
            "redis://user:s3cret@[::1",
            "redis://user:s3cret@host:notaport",
        ] {
            let err = client(url, None).expect_err(url);
            assert!(matches!(err, LockError::InvalidUrl(_)), "{url}: {err:?}");
            assert!(!err.to_string().contains("s3cret"), "{url}: {err}");
            assert!(!format!("{err:?}").contains("s3cret"), "{url}: {err:?}");
        }
    }
}
