//! `distlock::connect(url)` picks the backend by the URL's scheme.

use std::time::{Duration, Instant};

use distlock::{DistributedLock, LockError};

const TTL: Duration = Duration::from_secs(10);
/// Generous bound for "fails in bounded time" (the connect timeout is 3 s).
const BOUND: Duration = Duration::from_secs(15);

async fn cycle(locks: &dyn DistributedLock, name: &str) {
    let guard = locks
        .acquire(name, TTL, Duration::from_secs(5))
        .await
        .expect("the lock is free");
    assert!(
        locks
            .try_acquire(name, TTL)
            .await
            .expect("an answer")
            .is_none(),
        "a held lock is not granted again"
    );
    guard.release().await.expect("still ours");
}

#[tokio::test]
async fn redis_urls_give_the_redis_backend() {
    let url = lock_testkit::redis_url().expect("a Redis server");
    let locks = distlock::connect(&url).await.expect("connects");
    cycle(&*locks, "connect:redis").await;
    let guard = locks
        .acquire("connect:kind", TTL, Duration::ZERO)
        .await
        .expect("free");
    assert_eq!(guard.backend(), "redis");
    guard.release().await.expect("still ours");

    // The scheme is case-insensitive.
    let upper = url.replacen("redis", "REDIS", 1);
    let locks = distlock::connect(&upper).await.expect("connects");
    cycle(&*locks, "connect:redis-upper").await;
}

#[tokio::test]
async fn postgres_urls_give_the_postgres_backend() {
    let url = lock_testkit::database_url().expect("a PostgreSQL database");
    for url in [url.clone(), url.replacen("postgres://", "postgresql://", 1)] {
        let locks = distlock::connect(&url).await.expect("connects");
        cycle(&*locks, "connect:postgres").await;
        let guard = locks
            .acquire("connect:kind", TTL, Duration::ZERO)
            .await
            .expect("free");
        assert_eq!(guard.backend(), "postgres");
        guard.release().await.expect("still ours");
    }
}

#[tokio::test]
async fn memory_urls_name_process_wide_spaces() {
    let a = distlock::connect("memory:connect-a")
        .await
        .expect("a space");
    let a_again = distlock::connect("memory://connect-a")
        .await
        .expect("the same space");
    let b = distlock::connect("memory:connect-b")
        .await
        .expect("another space");

    let guard = a.acquire("job", TTL, Duration::ZERO).await.expect("free");
    assert_eq!(guard.backend(), "memory");
    assert!(
        a_again
            .try_acquire("job", TTL)
            .await
            .expect("an answer")
            .is_none(),
        "one URL, one lock space"
    );
    let other = b.try_acquire("job", TTL).await.expect("an answer");
    assert!(other.is_some(), "another space has its own locks");
    guard.release().await.expect("still ours");

    let err = distlock::connect("memory:x?ttl=1")
        .await
        .err()
        .expect("no options");
    assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
}

#[tokio::test]
async fn unknown_schemes_and_garbage_are_invalid_urls_without_secrets() {
    for url in [
        "",
        "   ",
        "localhost:6379",
        "mysql://app:hunter2@127.0.0.1/db",
        "http://user:hunter2@example.com",
        "://hunter2",
        "redis",
        "\u{0}",
    ] {
        let err = distlock::connect(url).await.err().expect(url);
        assert!(matches!(err, LockError::InvalidUrl(_)), "{url:?}: {err:?}");
        assert!(!err.to_string().contains("hunter2"), "{url:?}: {err}");
    }
    // A known scheme with a broken rest is the backend's InvalidUrl, still without the secret.
    for url in [
        "redis://:hunter2@[::1",
        "postgres://app:hunter2@host:notaport/db",
    ] {
        let err = distlock::connect(url).await.err().expect(url);
        assert!(matches!(err, LockError::InvalidUrl(_)), "{url:?}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("hunter2"),
            "{url:?}: {err}"
        );
    }
}

#[tokio::test]
async fn unreachable_servers_are_connection_errors_in_bounded_time() {
    let port = free_port();
    for url in [
        format!("redis://:hunter2@127.0.0.1:{port}"),
        format!("postgres://app:hunter2@127.0.0.1:{port}/db"),
    ] {
        let started = Instant::now();
        let result = tokio::time::timeout(BOUND, distlock::connect(&url))
            .await
            .expect("connect gives up within its timeout");
        let err = result.err().expect("nothing listens there");
        assert!(matches!(err, LockError::Connection(_)), "{url}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("hunter2"),
            "{url}: {err}"
        );
        assert!(started.elapsed() < BOUND);
    }
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("an address").port()
}
