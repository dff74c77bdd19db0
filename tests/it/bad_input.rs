//! Bad input through `distlock::connect(url)`, for every backend: names,
//! TTLs and URLs that break the rules are typed errors, never a panic or a
//! hang (every call here is bounded); legal but odd names are just names,
//! distinct from one another, and the history of their use checks clean.
//!
//! The per-backend details (prefixes, options, the password in errors, TLS
//! with a private CA) are in each backend's own `tests/`; the key encoding's
//! properties are a proptest in `lock-redis/src/keys.rs`.

use crate::workload;

use std::sync::Arc;
use std::time::Duration;

use distlock_api::{DistributedLock, LockError, MAX_NAME_LEN};
use distlock_testkit::{History, RedisOptions, RedisServer};
use workload::within;

const TTL: Duration = Duration::from_secs(10);
/// Any single call here must end within this.
const BOUND: Duration = Duration::from_secs(10);

/// Legal names that look like syntax somewhere: glob, line break, braces
/// (Redis hash tags), NUL (C strings), escapes of our own key encoding.
const ODD_NAMES: &[&str] = &[
    "*",
    "**",
    "\n",
    "\r\n",
    "{}",
    "{",
    "}",
    "}{",
    "\0",
    "a\0b",
    "a",
    "%7D",
    "%",
    "%25",
    " ",
    "'; DROP TABLE t; --",
    "🎫",
];

/// The servers of one run: a Redis of our own (the names are unprefixed),
/// a fresh PostgreSQL database, and a private memory space.
struct Backends {
    _redis: RedisServer,
    urls: Vec<(&'static str, String)>,
}

fn backends() -> Backends {
    let redis = RedisServer::start().expect("redis-server");
    let database = distlock_testkit::database_url().expect("postgres");
    let urls = vec![
        ("redis", redis.url()),
        ("postgres", database),
        ("memory", format!("memory:bad-input-{}", workload::unique())),
    ];
    Backends {
        _redis: redis,
        urls,
    }
}

async fn connect(url: &str) -> Arc<dyn DistributedLock> {
    within(BOUND, "connect", distlock::connect(url))
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

fn too_long() -> Vec<String> {
    let mut wide = "a".repeat(MAX_NAME_LEN - 1);
    wide.push('é'); // 1025 bytes in 1024 characters
    vec![String::new(), "x".repeat(MAX_NAME_LEN + 1), wide]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_names_are_invalid_name_on_every_backend() {
    let backends = backends();
    for (backend, url) in &backends.urls {
        let locks = connect(url).await;
        for name in too_long() {
            let outcomes = [
                within(BOUND, "try_acquire", locks.try_acquire(&name, TTL))
                    .await
                    .map(drop),
                within(BOUND, "acquire", locks.acquire(&name, TTL, Duration::ZERO))
                    .await
                    .map(drop),
                within(
                    BOUND,
                    "acquire with a wait",
                    locks.acquire(&name, TTL, Duration::from_secs(1)),
                )
                .await
                .map(drop),
            ];
            for outcome in outcomes {
                assert!(
                    matches!(outcome, Err(LockError::InvalidName(_))),
                    "{backend}, {}-byte name: {outcome:?}",
                    name.len()
                );
            }
        }
        // Exactly 1024 bytes is a name.
        let longest = "🔒".repeat(MAX_NAME_LEN / 4);
        let guard = within(BOUND, "acquire", locks.try_acquire(&longest, TTL))
            .await
            .unwrap_or_else(|err| panic!("{backend}: 1024 bytes: {err}"))
            .expect("free");
        guard.release().await.expect("release");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_ttls_are_invalid_ttl_on_every_backend() {
    let backends = backends();
    for (backend, url) in &backends.urls {
        let locks = connect(url).await;
        let name = format!("ttl-{}", workload::unique());
        for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let outcomes = [
                within(BOUND, "try_acquire", locks.try_acquire(&name, ttl))
                    .await
                    .map(drop),
                within(
                    BOUND,
                    "acquire with a wait",
                    locks.acquire(&name, ttl, Duration::from_secs(1)),
                )
                .await
                .map(drop),
            ];
            for outcome in outcomes {
                assert!(
                    matches!(outcome, Err(LockError::InvalidTtl(_))),
                    "{backend}, TTL {ttl:?}: {outcome:?}"
                );
            }
        }
        // A bad TTL on extend leaves the lock as it was.
        let mut guard = within(
            BOUND,
            "acquire with an endless wait",
            locks.acquire(&name, TTL, Duration::MAX),
        )
        .await
        .unwrap_or_else(|err| panic!("{backend}: a free lock with wait = MAX: {err}"));
        for ttl in [Duration::ZERO, Duration::from_nanos(1), Duration::MAX] {
            let err = within(BOUND, "extend", guard.extend(ttl))
                .await
                .expect_err("bad TTL");
            assert!(
                matches!(err, LockError::InvalidTtl(_)),
                "{backend}: {err:?}"
            );
        }
        assert!(!guard.is_lost(), "{backend}");
        within(BOUND, "release", guard.release())
            .await
            .unwrap_or_else(|err| panic!("{backend}: still ours: {err}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_are_distinct_locks_on_every_backend() {
    let backends = backends();
    for (backend, url) in &backends.urls {
        let locks = connect(url).await;
        let history = History::new();
        // While one odd name is held, it is taken and every other one is
        // free: no two of them are the same lock.
        for (client, name) in ODD_NAMES.iter().enumerate() {
            let held = within(
                BOUND,
                "acquire",
                history.acquire(client, &*locks, name, TTL, Duration::ZERO),
            )
            .await
            .unwrap_or_else(|err| panic!("{backend}: {name:?} is a legal name: {err}"));
            for other in ODD_NAMES {
                let attempt = within(
                    BOUND,
                    "try_acquire",
                    history.try_acquire(100 + client, &*locks, other, TTL),
                )
                .await
                .unwrap_or_else(|err| panic!("{backend}: {other:?}: {err}"));
                assert_eq!(
                    attempt.is_some(),
                    other != name,
                    "{backend}: {other:?} while {name:?} is held"
                );
                if let Some(other) = attempt {
                    other.release().await.expect("release");
                }
            }
            within(BOUND, "release", held.release())
                .await
                .unwrap_or_else(|err| panic!("{backend}: release: {err}"));
        }
        let report = history.check();
        report.assert_ok();
        assert_eq!(
            report.counts.released_ok,
            ODD_NAMES.len() * ODD_NAMES.len(),
            "{backend}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_are_typed_errors_in_bounded_time() {
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        listener.local_addr().expect("addr").port()
    };
    let database = distlock_testkit::database_url().expect("postgres");
    let cases: Vec<(String, Expected)> = vec![
        // Garbage and wrong schemes.
        ("".into(), is_invalid_url),
        ("not a url".into(), is_invalid_url),
        ("redis".into(), is_invalid_url),
        ("http://localhost:6379".into(), is_invalid_url),
        ("mysql://root@localhost/db".into(), is_invalid_url),
        ("redis://[::1".into(), is_invalid_url),
        ("redis://127.0.0.1:99999".into(), is_invalid_url),
        ("postgres://app@host:notaport/db".into(), is_invalid_url),
        ("redis://\0".into(), is_invalid_url),
        // Nothing listens.
        (format!("redis://127.0.0.1:{unreachable}"), is_connection),
        (
            format!("postgres://app@127.0.0.1:{unreachable}/db"),
            is_connection,
        ),
        // TLS demanded from a server that speaks none.
        (
            format!("{database}{}sslmode=require", sep(&database)),
            is_connection,
        ),
        // A role the server does not know (its test servers trust local
        // connections, so a wrong password alone is not refused).
        (
            database.replacen("postgres@", "nobody_here@", 1),
            is_refused,
        ),
    ];
    for (url, expected) in cases {
        let result = within(BOUND, &format!("connect({url:?})"), distlock::connect(&url)).await;
        let err = result.err().unwrap_or_else(|| panic!("{url:?} connected"));
        assert!(expected(&err), "{url:?}: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_redis_password_and_plain_text_rediss_are_typed_errors() {
    let secret = "right-password";
    let server = RedisServer::start_with(RedisOptions::new().config("requirepass", secret))
        .expect("redis-server");
    let port = server.port();
    let good = format!("redis://:{secret}@127.0.0.1:{port}/");
    let locks = connect(&good).await;
    let guard = within(BOUND, "acquire", locks.acquire("pw", TTL, Duration::ZERO))
        .await
        .expect("the right password works");
    guard.release().await.expect("release");
    for url in [
        format!("redis://:wrong@127.0.0.1:{port}/"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let err = within(BOUND, "connect", distlock::connect(&url))
            .await
            .err()
            .unwrap_or_else(|| panic!("{url} connected"));
        assert!(is_refused(&err), "{url}: {err:?}");
        assert!(!err.is_retryable(), "wrong credentials: {err:?}");
    }
    // TLS to a server that speaks plain text: a typed error, not a hang.
    let err = within(
        BOUND,
        "rediss to plain text",
        distlock::connect(&format!("rediss://:{secret}@127.0.0.1:{port}/")),
    )
    .await
    .err()
    .expect("no TLS there");
    if cfg!(feature = "tls") {
        assert!(is_refused(&err) || is_connection(&err), "{err:?}");
    } else {
        assert!(is_invalid_url(&err), "{err:?}");
    }
    assert!(!format!("{err} {err:?}").contains(secret), "{err}");
}

/// Which errors a case accepts.
type Expected = fn(&LockError) -> bool;

fn sep(url: &str) -> char {
    if url.contains('?') { '&' } else { '?' }
}

fn is_invalid_url(err: &LockError) -> bool {
    matches!(err, LockError::InvalidUrl(_))
}

fn is_connection(err: &LockError) -> bool {
    matches!(err, LockError::Connection(_))
}

/// The server answered and said no.
fn is_refused(err: &LockError) -> bool {
    matches!(err, LockError::Backend(_) | LockError::Connection(_))
}
