//! `connect(url)`: one entry point that picks the backend by the URL's scheme.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use distlock_api::{DistributedLock, LockError, MemoryLock};

/// Connects to the lock server a URL names, picking the backend by its scheme.
///
/// | scheme | backend | feature |
/// |---|---|---|
/// | `redis://`, `rediss://`, `redis+unix://`, `unix://` | [`RedisLock`](crate::redis::RedisLock) on one server | `redis` (`rediss` also `tls`) |
/// | `redis+cluster://h1:p1,h2:p2/`, `rediss+cluster://…` | [`RedisLock`](crate::redis::RedisLock) on a Redis Cluster (the hosts are seeds) | `redis` (`rediss` also `tls`) |
/// | `redis+redlock://h1:p1,h2:p2,h3:p3/`, `rediss+redlock://…` | [`Redlock`](crate::redis::Redlock) over 3 or 5 independent servers | `redis` (`rediss` also `tls`) |
/// | `postgres://`, `postgresql://` | [`PgAdvisoryLock`](crate::postgres::PgAdvisoryLock) | `postgres` |
/// | `memory:` or `memory:<space>` | [`MemoryLock`] | always |
///
/// Schemes are case-insensitive. A multi-host URL gives every host the
/// same user, password, database and query:
/// `redis+redlock://:secret@10.0.0.1:6379,10.0.0.2:6379,10.0.0.3:6379/0`.
/// Each call to a server opens a new client (its own connections); connect
/// once and share the `Arc`. For options beyond the URL (timeouts, pool
/// size, key prefix, a private CA), build the backend directly:
/// `RedisLock::options()…connect(url)`,
/// `RedisLock::options()…connect_redlock_url(url)`,
/// `PgAdvisoryLock::options()…connect(url)`.
///
/// `memory:` names an in-process lock space, the way a server URL names a
/// server: every `connect("memory:")` in a process returns the same locks,
/// and `memory:<space>` (for example `memory:test-42`) a separate space per
/// name. Use it to run code written against a server URL in unit tests;
/// [`MemoryLock::new`] gives a private space without a URL.
///
/// ```
/// use std::time::Duration;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock::LockError> {
/// // The URL would come from configuration: redis://…, postgres://…, memory:
/// let locks = distlock::connect("memory:docs-example").await?;
/// let guard = locks.acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2)).await?;
/// let same_space = distlock::connect("memory:docs-example").await?;
/// assert!(same_space.try_acquire("ticket:42", Duration::from_secs(10)).await?.is_none());
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Errors
///
/// - [`LockError::InvalidUrl`] when the URL has no scheme, an unknown one,
///   or one whose backend this build leaves out — the message names the
///   Cargo feature to enable — or when the backend cannot parse the rest.
/// - [`LockError::InvalidConfig`] for a Redlock URL that does not list an
///   odd number of servers, at least 3, or that lists one server twice.
/// - [`LockError::Connection`] when the server cannot be reached within the
///   backend's connect timeout (for a cluster, none of the seeds; for a
///   Redlock, fewer than a majority of its servers).
///
/// Messages never contain the URL's password.
pub async fn connect(url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    connect_with(url, Backends::THIS_BUILD).await
}

/// Which backends a build has (its Cargo features).
#[derive(Clone, Copy)]
struct Backends {
    redis: bool,
    postgres: bool,
}

impl Backends {
    const THIS_BUILD: Backends = Backends {
        redis: cfg!(feature = "redis"),
        postgres: cfg!(feature = "postgres"),
    };
}

/// [`connect`] as a build with `backends` does it: the full-feature tests
/// check here what a build without a backend says, with no build of their
/// own.
async fn connect_with(
    url: &str,
    backends: Backends,
) -> Result<Arc<dyn DistributedLock>, LockError> {
    let (scheme, rest) = split_scheme(url)?;
    // The drivers get the URL with its scheme in lower case.
    let normalized = format!("{scheme}:{rest}");
    match scheme.as_str() {
        "memory" => Ok(Arc::new(memory_space(rest)?)),
        "redis" | "rediss" | "redis+unix" | "unix" | "redis+cluster" | "rediss+cluster" => {
            if !backends.redis {
                return Err(feature_off("a Redis URL", "redis"));
            }
            connect_redis(&normalized).await
        }
        "redis+redlock" | "rediss+redlock" => {
            if !backends.redis {
                return Err(feature_off("a Redlock URL", "redis"));
            }
            connect_redlock(&normalized).await
        }
        "postgres" | "postgresql" => {
            if !backends.postgres {
                return Err(feature_off("a PostgreSQL URL", "postgres"));
            }
            connect_postgres(&normalized).await
        }
        other => Err(LockError::InvalidUrl(format!(
            "unknown scheme {other:?}: distlock serves redis://, rediss://, \
             redis+cluster://, redis+redlock://, postgres://, postgresql:// and memory:"
        ))),
    }
}

/// The scheme (lower-cased) and what follows its `:`.
fn split_scheme(url: &str) -> Result<(String, &str), LockError> {
    let missing = || {
        LockError::InvalidUrl(
            "no scheme: expected redis://…, rediss://…, postgres://…, postgresql://… or memory:"
                .to_owned(),
        )
    };
    let (scheme, rest) = url.trim_start().split_once(':').ok_or_else(missing)?;
    // RFC 3986: a letter, then letters, digits, `+`, `-` or `.`.
    let valid = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(missing());
    }
    Ok((scheme.to_ascii_lowercase(), rest))
}

/// The process-wide memory lock space named by what follows `memory:`.
fn memory_space(rest: &str) -> Result<MemoryLock, LockError> {
    let space = rest.strip_prefix("//").unwrap_or(rest);
    if space.contains(['?', '#']) {
        return Err(LockError::InvalidUrl(
            "memory: URLs take no options: use memory: or memory:<space>".to_owned(),
        ));
    }
    static SPACES: OnceLock<Mutex<HashMap<String, MemoryLock>>> = OnceLock::new();
    let mut spaces = SPACES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    Ok(spaces.entry(space.to_owned()).or_default().clone())
}

#[cfg(feature = "redis")]
async fn connect_redis(url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Ok(Arc::new(distlock_redis::RedisLock::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redis(_url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Err(feature_off("a Redis URL", "redis"))
}

#[cfg(feature = "redis")]
async fn connect_redlock(url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Ok(Arc::new(distlock_redis::Redlock::connect_url(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn connect_redlock(_url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Err(feature_off("a Redlock URL", "redis"))
}

#[cfg(feature = "postgres")]
async fn connect_postgres(url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Ok(Arc::new(
        distlock_postgres::PgAdvisoryLock::connect(url).await?,
    ))
}

#[cfg(not(feature = "postgres"))]
async fn connect_postgres(_url: &str) -> Result<Arc<dyn DistributedLock>, LockError> {
    Err(feature_off("a PostgreSQL URL", "postgres"))
}

fn feature_off(what: &str, feature: &str) -> LockError {
    LockError::InvalidUrl(format!(
        "{what} needs distlock's `{feature}` feature, which this build leaves out: \
         enable it in Cargo.toml (distlock = {{ version = \"{}\", features = [\"{feature}\"] }})",
        env!("CARGO_PKG_VERSION")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_are_case_insensitive_and_validated() {
        let (scheme, rest) = split_scheme("Redis://host").expect("a scheme");
        assert_eq!((scheme.as_str(), rest), ("redis", "//host"));
        for bad in [
            "",
            "no-scheme-here",
            "://host",
            "1redis://host",
            "re dis://host",
        ] {
            let err = split_scheme(bad).expect_err(bad);
            assert!(matches!(err, LockError::InvalidUrl(_)), "{bad}: {err:?}");
        }
    }

    const NO_REDIS: Backends = Backends {
        redis: false,
        postgres: true,
    };
    const NO_POSTGRES: Backends = Backends {
        redis: true,
        postgres: false,
    };

    #[tokio::test]
    async fn a_redis_url_without_the_feature_names_it() {
        for url in [
            "redis://127.0.0.1:1",
            "REDIS+CLUSTER://:secret@127.0.0.1:1,127.0.0.1:2/",
            "rediss+cluster://:secret@127.0.0.1:1,127.0.0.1:2/",
            "redis+redlock://:secret@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/",
            "Rediss+Redlock://:secret@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3/",
        ] {
            let err = connect_with(url, NO_REDIS)
                .await
                .err()
                .expect("no Redis backend");
            assert!(matches!(err, LockError::InvalidUrl(_)), "{url}: {err:?}");
            assert!(err.to_string().contains("`redis` feature"), "{url}: {err}");
            assert!(!format!("{err} {err:?}").contains("secret"), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn a_postgres_url_without_the_feature_names_it() {
        let err = connect_with("postgresql://app:secret@127.0.0.1:1/db", NO_POSTGRES)
            .await
            .err()
            .expect("no PostgreSQL backend");
        assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
        assert!(err.to_string().contains("`postgres` feature"), "{err}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
