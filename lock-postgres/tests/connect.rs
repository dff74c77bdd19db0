//! Connecting: which URLs are ours, bounded failure when the server is not
//! there, `sslmode` honoured, and passwords that never show.

mod common;

use std::time::{Duration, Instant};

use common::{database_url, within};
use lock_postgres::{DistributedLock, LockError, PgAdvisoryLock, PgLockOptions};
use lock_testkit::LinkProxy;

const PASSWORD: &str = "s3cret-Pa55word";

/// A local port nobody listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

fn assert_no_password(text: &str) {
    assert!(!text.contains(PASSWORD), "the password shows in: {text}");
    assert!(
        !text.contains("Pa55"),
        "part of the password shows in: {text}"
    );
}

#[tokio::test]
async fn urls_that_are_not_postgres_urls_are_invalid() {
    for url in [
        "",
        "localhost:5432",
        "redis://localhost:6379",
        "mysql://u:p@localhost/db",
        "postgres://u@[::1/db",
        &format!("postgres://app:{PASSWORD}@localhost:notaport/db"),
        &format!("postgresql://app:{PASSWORD}@localhost:5432/db?sslmode=sometimes"),
    ] {
        match PgAdvisoryLock::connect(url).await {
            Err(err @ LockError::InvalidUrl(_)) => {
                assert_no_password(&err.to_string());
                assert_no_password(&format!("{err:?}"));
            }
            Err(err) => panic!("{url:?}: expected InvalidUrl, got {err}"),
            Ok(_) => panic!("{url:?}: connected"),
        }
    }
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:{}/db", closed_port());
    let started = Instant::now();
    let err = PgAdvisoryLock::connect(&url)
        .await
        .expect_err("nobody listens there");
    assert!(matches!(err, LockError::Connection(_)), "{err}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_no_password(&err.to_string());
    assert_no_password(&format!("{err:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_a_connection_error_within_the_connect_timeout() {
    let url = database_url().await;
    let server: std::net::SocketAddr = {
        let rest = url.split_once('@').expect("user@host").1;
        rest.split_once('/')
            .expect("host/db")
            .0
            .parse()
            .expect("an address")
    };
    let proxy = LinkProxy::start(server).expect("a proxy");
    proxy.blackhole().expect("blackhole");
    let url = format!(
        "postgres://app:{PASSWORD}@{}/{}",
        proxy.addr(),
        url.rsplit_once('/').expect("db").1
    );
    let timeout = Duration::from_millis(500);
    let started = Instant::now();
    let outcome = within(
        Duration::from_secs(10),
        "connect to a silent server",
        PgLockOptions::new().connect_timeout(timeout).connect(&url),
    )
    .await;
    let took = started.elapsed();
    let err = outcome.expect_err("the server never answers");
    assert!(matches!(err, LockError::Connection(_)), "{err}");
    assert!(took >= timeout, "gave up after only {took:?}");
    assert!(took < timeout + Duration::from_secs(2), "took {took:?}");
    assert_no_password(&err.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_shows_in_debug_or_display() {
    let url = database_url().await;
    // The test server trusts local connections, so the password is ignored.
    let with_password = url.replacen("postgres@", &format!("postgres:{PASSWORD}@"), 1);
    assert!(with_password.contains(PASSWORD));
    let locks = PgAdvisoryLock::connect(&with_password)
        .await
        .expect("connect");
    assert_no_password(&format!("{locks:?}"));
    assert_no_password(&locks.to_string());
    assert!(locks.to_string().contains("postgres@127.0.0.1"), "{locks}");
    let guard = locks
        .acquire(
            &common::name("password"),
            Duration::from_secs(10),
            Duration::ZERO,
        )
        .await
        .expect("free");
    assert_no_password(&format!("{guard:?}"));
    guard.release().await.expect("ours");
    assert_no_password(&format!("{:?}", PgLockOptions::new()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_is_honoured() {
    let url = database_url().await;
    let join = |mode: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}sslmode={mode}")
    };
    // The test server speaks no TLS: `disable` and `prefer` connect in plain
    // text, `require` must refuse to.
    for mode in ["disable", "prefer"] {
        let locks = PgAdvisoryLock::connect(&join(mode))
            .await
            .unwrap_or_else(|err| panic!("sslmode={mode}: {err}"));
        drop(locks);
    }
    let err = PgAdvisoryLock::connect(&join("require"))
        .await
        .expect_err("sslmode=require must not fall back to plain text");
    assert!(matches!(err, LockError::Connection(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_schemes_connect() {
    let url = database_url().await;
    let postgresql = url.replacen("postgres://", "postgresql://", 1);
    for url in [url, postgresql] {
        let locks = PgAdvisoryLock::connect(&url).await.expect("connect");
        let guard = locks
            .try_acquire(&common::name("scheme"), Duration::from_secs(5))
            .await
            .expect("try")
            .expect("free");
        guard.release().await.expect("ours");
    }
}

/// The kit's servers run with `synchronous_commit = off`, where the acquire
/// statement forces a durable commit of its own; on a server whose commits
/// are durable anyway the statement leaves that out. Both must work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_durable_commits_works_too() {
    let server = tokio::task::spawn_blocking(|| {
        lock_testkit::PgServer::start_with(
            lock_testkit::PgOptions::new().setting("synchronous_commit", "on"),
        )
    })
    .await
    .expect("task")
    .expect("a server of our own");
    let locks = PgAdvisoryLock::connect(&server.url())
        .await
        .expect("connect");
    let other = PgAdvisoryLock::connect(&server.url())
        .await
        .expect("connect");
    let mut last = 0;
    for _ in 0..3 {
        let guard = locks
            .acquire("durable", Duration::from_secs(5), Duration::ZERO)
            .await
            .expect("free");
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        assert!(
            other
                .try_acquire("durable", Duration::from_secs(5))
                .await
                .expect("try")
                .is_none()
        );
        guard.release().await.expect("ours");
    }
    drop((locks, other));
    drop(server);
}
