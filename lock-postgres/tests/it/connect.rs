//! Connecting: which URLs are ours, bounded failure when the server is not
//! there, `sslmode` honoured, and passwords that never show.

use crate::common;

use std::time::{Duration, Instant};

use common::{database_url, within};
use distlock_postgres::{DistributedLock, LockError, PgAdvisoryLock, PgLockOptions};
use distlock_testkit::LinkProxy;

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
        distlock_testkit::PgServer::start_with(
            distlock_testkit::PgOptions::new().setting("synchronous_commit", "on"),
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

/// A fencing sequence whose configuration does not give strictly rising
/// values across its lifetime must be refused before any lock is granted on
/// it: tokens that fall or repeat would let a stale holder's writes through
/// the storage's fence.
async fn refused_sequence(test: &str, create: &str) -> (LockError, PgAdvisoryLock) {
    let url = database_url().await;
    let mut direct = common::observer(&url).await;
    distlock_postgres::sqlx::raw_sql(distlock_postgres::sqlx::AssertSqlSafe(create.to_owned()))
        .execute(&mut direct)
        .await
        .expect("create the sequence");
    let locks = PgLockOptions::new()
        .fencing_sequence("public", test)
        .connect(&url)
        .await
        .expect("connect");
    let mut tokens = Vec::new();
    for _ in 0..5 {
        match locks.try_acquire(test, Duration::from_secs(5)).await {
            Ok(Some(guard)) => {
                tokens.push(guard.fencing_token());
                guard.release().await.expect("ours");
            }
            Ok(None) => panic!("nobody else holds {test}"),
            Err(err) => return (err, locks),
        }
    }
    panic!("{test}: the sequence was accepted and handed out tokens {tokens:?}");
}

fn assert_sequence_error(err: &LockError, needle: &str) {
    assert!(
        matches!(err, LockError::Backend(_)),
        "expected a Backend error, got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains(needle), "{text}");
    assert!(text.contains("ALTER SEQUENCE"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descending_fencing_sequence_is_refused() {
    let (err, _) = refused_sequence(
        "falling_tokens",
        "CREATE SEQUENCE public.falling_tokens INCREMENT -1 MINVALUE 1 MAXVALUE 1000 START 1000",
    )
    .await;
    assert_sequence_error(&err, "INCREMENT -1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycling_fencing_sequence_is_refused() {
    let (err, _) = refused_sequence(
        "cycling_tokens",
        "CREATE SEQUENCE public.cycling_tokens MAXVALUE 3 CYCLE",
    )
    .await;
    assert_sequence_error(&err, "CYCLE");
}

/// `ALTER SEQUENCE … RESTART` (or `setval`) after the client checked the
/// sequence: the next grant's token does not rise above one this client
/// already handed out. The grant is refused (its session closed, so the
/// lock is freed) and the error says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_restarted_after_connect_refuses_falling_tokens() {
    let url = database_url().await;
    let app = common::app_name("restart");
    let locks = common::client(
        &url,
        &app,
        PgLockOptions::new().fencing_sequence("public", "restarted_tokens"),
    )
    .await;
    let mut last = 0;
    for _ in 0..3 {
        let guard = locks
            .try_acquire("restarted", Duration::from_secs(5))
            .await
            .expect("try")
            .expect("free");
        assert!(guard.fencing_token() > last);
        last = guard.fencing_token();
        guard.release().await.expect("ours");
    }
    let mut direct = common::observer(&url).await;
    distlock_postgres::sqlx::raw_sql("ALTER SEQUENCE public.restarted_tokens RESTART")
        .execute(&mut direct)
        .await
        .expect("restart the sequence");
    let outcome = locks.try_acquire("restarted", Duration::from_secs(5)).await;
    let err = match outcome {
        Ok(Some(guard)) => panic!(
            "granted with token {} after tokens up to {last} were handed out",
            guard.fencing_token()
        ),
        Ok(None) => panic!("nobody else holds the lock"),
        Err(err) => err,
    };
    assert!(
        matches!(err, LockError::Backend(_)),
        "expected a Backend error, got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("did not rise"), "{text}");
    assert!(text.contains("setval"), "{text}");
    // The refused grant's session was closed: nothing stays locked.
    let deadline = Instant::now() + Duration::from_secs(5);
    while common::advisory_locks_of(&mut direct, &app).await > 0 {
        assert!(Instant::now() < deadline, "the refused lock is still held");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And a later change of direction is caught the same way.
    distlock_postgres::sqlx::raw_sql(
        "SELECT setval('public.restarted_tokens', 100); \
         ALTER SEQUENCE public.restarted_tokens INCREMENT -1",
    )
    .execute(&mut direct)
    .await
    .expect("turn the sequence around");
    let mut seen = Vec::new();
    loop {
        match locks.try_acquire("restarted", Duration::from_secs(5)).await {
            Ok(Some(guard)) => {
                seen.push(guard.fencing_token());
                guard.release().await.expect("ours");
                assert!(seen.len() < 3, "falling tokens granted: {seen:?}");
            }
            Ok(None) => panic!("nobody else holds the lock"),
            Err(err) => {
                assert!(matches!(err, LockError::Backend(_)), "{err:?}");
                assert!(err.to_string().contains("INCREMENT -1"), "{err}");
                break;
            }
        }
    }
}
