//! Connection URLs: parsed by the driver, printed only with secrets removed.

use distlock_api::LockError;
pub(crate) use distlock_api::backend::redact_url as redact;

/// What a Redis URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Topology {
    /// One server: `redis://`, `rediss://`, `redis+unix://`, `unix://`.
    Single,
    /// A Redis Cluster, by the `redis://` URLs of its seed nodes
    /// (`redis+cluster://h1:p1,h2:p2/`).
    Cluster(Vec<String>),
    /// Independent servers for a Redlock, by their `redis://` URLs
    /// (`redis+redlock://h1:p1,h2:p2,h3:p3/`).
    Redlock(Vec<String>),
}

/// The multi-host schemes, the per-host scheme each becomes, and whether
/// it names a cluster (else a Redlock).
const MULTI_HOST: [(&str, &str, bool); 4] = [
    ("redis+cluster", "redis", true),
    ("rediss+cluster", "rediss", true),
    ("redis+redlock", "redis", false),
    ("rediss+redlock", "rediss", false),
];

/// Sorts `url` by what it names; a multi-host URL is split into one URL
/// per host, each with the same credentials, database and query.
pub(crate) fn topology(url: &str) -> Result<Topology, LockError> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Ok(Topology::Single); // `client` explains what is wrong.
    };
    let Some(&(_, per_host, cluster)) = MULTI_HOST
        .iter()
        .find(|(multi, _, _)| multi.eq_ignore_ascii_case(scheme))
    else {
        return Ok(Topology::Single);
    };
    let invalid = |why: &str| LockError::InvalidUrl(format!("{}: {why}", redact(url)));
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let hosts: Vec<&str> = hosts.split(',').map(str::trim).collect();
    if hosts.iter().any(|host| host.is_empty()) {
        return Err(invalid(
            "expected a comma-separated list of host:port after the scheme, with no empty entry",
        ));
    }
    let path = tail.split(['?', '#']).next().unwrap_or("");
    if cluster && !matches!(path, "" | "/" | "/0") {
        return Err(invalid("a Redis Cluster has only database 0"));
    }
    let urls = hosts
        .iter()
        .map(|host| format!("{per_host}://{userinfo}{host}{tail}"))
        .collect();
    Ok(if cluster {
        Topology::Cluster(urls)
    } else {
        Topology::Redlock(urls)
    })
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
                "{}: scheme {other:?} is not a Redis URL (use redis://, rediss://, \
                 redis+cluster://host:port,host:port/ or redis+redlock://host:port,host:port,host:port/)",
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
                " (rediss:// needs TLS support: enable distlock-redis' `tls` feature)"
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
    fn multi_host_urls_split_into_one_url_per_host() {
        assert_eq!(topology("redis://h:1/").expect("single"), Topology::Single);
        assert_eq!(
            topology("redis+cluster://u:pw@a:1,b:2/").expect("cluster"),
            Topology::Cluster(vec!["redis://u:pw@a:1/".into(), "redis://u:pw@b:2/".into()])
        );
        assert_eq!(
            topology("REDISS+CLUSTER://a:1,b:2").expect("cluster"),
            Topology::Cluster(vec!["rediss://a:1".into(), "rediss://b:2".into()])
        );
        assert_eq!(
            topology("redis+redlock://a:1, b:2,c:3/4?protocol=resp3").expect("redlock"),
            Topology::Redlock(vec![
                "redis://a:1/4?protocol=resp3".into(),
                "redis://b:2/4?protocol=resp3".into(),
                "redis://c:3/4?protocol=resp3".into(),
            ])
        );
    }

    #[test]
    fn bad_multi_host_urls_are_invalid_url_without_the_secret() {
        for url in [
            "redis+cluster://u:s3cret@a:1,,b:2/",
            "redis+cluster://u:s3cret@/",
            "redis+cluster://u:s3cret@a:1,b:2/3",
            "redis+redlock://u:s3cret@a:1,/",
        ] {
            let err = topology(url).expect_err(url);
            assert!(matches!(err, LockError::InvalidUrl(_)), "{url}: {err:?}");
            assert!(!err.to_string().contains("s3cret"), "{url}: {err}");
        }
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
