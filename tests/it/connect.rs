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
    let url = distlock_testkit::redis_url().expect("a Redis server");
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

/// Two clients of one backend: a lock one holds, the other sees held.
async fn shared_cycle(a: &dyn DistributedLock, b: &dyn DistributedLock, name: &str, kind: &str) {
    let guard = tokio::time::timeout(BOUND, a.acquire(name, TTL, Duration::from_secs(5)))
        .await
        .expect("bounded")
        .expect("the lock is free");
    assert_eq!(guard.backend(), kind);
    let seen = tokio::time::timeout(BOUND, b.try_acquire(name, TTL))
        .await
        .expect("bounded")
        .expect("an answer");
    assert!(seen.is_none(), "the second client sees {name} held");
    guard.release().await.expect("still ours");
    let next = tokio::time::timeout(BOUND, b.acquire(name, TTL, Duration::from_secs(5)))
        .await
        .expect("bounded")
        .expect("free after the release");
    next.release().await.expect("still ours");
}

fn unique(name: &str) -> String {
    format!("connect:{name}:{:016x}", rand::random::<u64>())
}

#[tokio::test]
async fn cluster_urls_give_redis_on_the_cluster() {
    let cluster = distlock_testkit::RedisCluster::shared().expect("a Redis Cluster");
    let url = cluster.cluster_url();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    let a = distlock::connect(&url).await.expect("connects");
    // The scheme is case-insensitive.
    let upper = url.replacen("redis+cluster", "Redis+Cluster", 1);
    let b = distlock::connect(&upper).await.expect("connects");
    // Names on every master: the hosts are seeds, not the whole story.
    for i in 0..6 {
        shared_cycle(&*a, &*b, &unique(&format!("cluster{i}")), "redis").await;
    }
    // One seed is enough.
    let one_seed = format!("redis+cluster://127.0.0.1:{}/", cluster.masters()[1].port());
    let c = distlock::connect(&one_seed).await.expect("connects");
    shared_cycle(&*c, &*a, &unique("cluster-one-seed"), "redis").await;
}

#[tokio::test]
async fn redlock_urls_give_a_redlock() {
    let nodes = distlock_testkit::RedisServer::start_several(3).expect("three redis-servers");
    let hosts = nodes
        .iter()
        .map(|node| format!("127.0.0.1:{}", node.port()))
        .collect::<Vec<_>>()
        .join(",");
    let url = format!("redis+redlock://{hosts}/");
    let a = distlock::connect(&url).await.expect("connects");
    let b = distlock::connect(&format!("REDIS+REDLOCK://{hosts}"))
        .await
        .expect("connects");
    shared_cycle(&*a, &*b, "connect:redlock", "redlock").await;

    // The URL's hosts are the Redlock's nodes: a lock held through the URL
    // is held on each server, as a plain Redis client of each sees.
    let guard = a
        .acquire("connect:redlock-nodes", TTL, Duration::ZERO)
        .await
        .expect("free");
    for node in &nodes {
        let mut conn = distlock::redis::RedisLock::connect(&node.url())
            .await
            .expect("connects")
            .connection()
            .await
            .expect("a connection of our own");
        let value: Option<String> = redis::cmd("GET")
            .arg("distlock:{connect:redlock-nodes}")
            .query_async(&mut conn)
            .await
            .expect("GET");
        assert!(value.is_some(), "the key is on the node at {}", node.url());
    }
    guard.release().await.expect("still ours");
}

#[tokio::test]
async fn redlock_urls_with_an_even_or_too_small_node_count_are_invalid_config() {
    for url in [
        "redis+redlock://:hunter2@127.0.0.1:1,127.0.0.1:2/",
        "redis+redlock://:hunter2@127.0.0.1:1/",
        "redis+redlock://:hunter2@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4/",
        "redis+redlock://:hunter2@127.0.0.1:1,127.0.0.1:2,127.0.0.1:1/",
    ] {
        let err = tokio::time::timeout(BOUND, distlock::connect(url))
            .await
            .expect("refused before connecting")
            .err()
            .expect(url);
        assert!(matches!(err, LockError::InvalidConfig(_)), "{url}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("hunter2"),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn broken_multi_host_urls_are_invalid_urls_without_secrets() {
    for url in [
        "redis+cluster://u:hunter2@127.0.0.1:1,,127.0.0.1:2/",
        "redis+cluster://:hunter2@127.0.0.1:1,127.0.0.1:2/3",
        "rediss+cluster://:hunter2@,/",
        "redis+cluster://:hunter2@",
        "redis+redlock://:hunter2@127.0.0.1:1,127.0.0.1:2,/",
        "redis+redlock://:hunter2@127.0.0.1:1,127.0.0.1:notaport,127.0.0.1:3/",
        "redis+redlock://:hunter2@",
        "redis+redlock::hunter2@127.0.0.1:1,127.0.0.1:2,127.0.0.1:3",
        "redis+sentinel://:hunter2@127.0.0.1:1,127.0.0.1:2/",
    ] {
        let err = tokio::time::timeout(BOUND, distlock::connect(url))
            .await
            .expect("refused before connecting")
            .err()
            .expect(url);
        assert!(matches!(err, LockError::InvalidUrl(_)), "{url}: {err:?}");
        assert!(
            !format!("{err} {err:?}").contains("hunter2"),
            "{url}: {err}"
        );
    }
}

#[tokio::test]
async fn postgres_urls_give_the_postgres_backend() {
    let url = distlock_testkit::database_url().expect("a PostgreSQL database");
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
    let [port, p2, p3] = free_ports();
    for url in [
        format!("redis://:hunter2@127.0.0.1:{port}"),
        format!("postgres://app:hunter2@127.0.0.1:{port}/db"),
        format!("redis+cluster://:hunter2@127.0.0.1:{port},127.0.0.1:{p2}/"),
        format!("redis+redlock://:hunter2@127.0.0.1:{port},127.0.0.1:{p2},127.0.0.1:{p3}/"),
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

/// Distinct ports nothing listens on (bound together, then released).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [std::net::TcpListener; N] =
        std::array::from_fn(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"));
    listeners.map(|listener| listener.local_addr().expect("an address").port())
}
