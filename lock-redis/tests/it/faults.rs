//! A Redis server that is missing, restarted, frozen or behind a bad link:
//! typed errors in bounded time, and service resumes on the same `RedisLock`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use distlock_api::{DistributedLock, LockError};
use distlock_redis::{RedisLock, redis};
use distlock_testkit::{LinkProxy, RedisServer};

const TTL: Duration = Duration::from_secs(30);
/// How late a bounded failure may come beyond its configured timeout on a
/// loaded machine.
const SLACK: Duration = Duration::from_secs(3);

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

#[tokio::test]
async fn server_not_running_is_a_connection_error_within_the_connect_timeout() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let result = within(
        connect_timeout + SLACK,
        "connect to a closed port",
        RedisLock::options()
            .connect_timeout(connect_timeout)
            .connect(&url),
    )
    .await;
    let err = result.expect_err("nothing listens on the port");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        err.to_string().contains("127.0.0.1"),
        "the error names the server: {err}"
    );
    assert!(started.elapsed() < connect_timeout + SLACK);
}

#[tokio::test]
async fn silent_server_is_a_connection_error_within_the_connect_timeout() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = LinkProxy::start(server.addr()).expect("proxy");
    proxy.blackhole().expect("blackhole");
    let url = format!("redis://127.0.0.1:{}/", proxy.port());
    let connect_timeout = Duration::from_millis(500);
    let result = within(
        connect_timeout + SLACK,
        "connect through a silent link",
        RedisLock::options()
            .connect_timeout(connect_timeout)
            .connect(&url),
    )
    .await;
    let err = result.expect_err("the handshake gets no answer");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
}

#[tokio::test]
async fn a_link_gone_silent_mid_session_fails_commands_in_bounded_time_then_recovers() {
    let server = RedisServer::start().expect("redis-server");
    let proxy = LinkProxy::start(server.addr()).expect("proxy");
    let url = format!("redis://127.0.0.1:{}/", proxy.port());
    let (connect_timeout, response_timeout) =
        (Duration::from_millis(500), Duration::from_millis(300));
    let locks = RedisLock::options()
        .connect_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .connect(&url)
        .await
        .expect("connect");
    let guard = locks
        .acquire("silent", TTL, Duration::ZERO)
        .await
        .expect("free");

    proxy.blackhole().expect("blackhole");
    let limit = connect_timeout + response_timeout + SLACK;
    let err = within(
        limit,
        "try_acquire on a silent link",
        locks.try_acquire("silent-2", TTL),
    )
    .await
    .expect_err("no answer");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    let mut guard = guard;
    let err = within(limit, "extend on a silent link", guard.extend(TTL))
        .await
        .expect_err("no answer");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");

    proxy.restore().expect("restore");
    // The same RedisLock reconnects; the lock we held is still ours.
    let ok = within(Duration::from_secs(10), "recovery", async {
        loop {
            match guard.extend(TTL).await {
                Ok(()) => break Ok(()),
                Err(err) if err.is_retryable() => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(err) => break Err(err),
            }
        }
    })
    .await;
    ok.expect("the lock survives a short partition");
    guard.release().await.expect("release after recovery");
}

#[tokio::test]
async fn a_restart_loses_held_locks_and_the_same_client_keeps_working() {
    let mut server = RedisServer::start().expect("redis-server");
    let locks = RedisLock::connect(&server.url()).await.expect("connect");
    let guard = locks
        .acquire("restart", TTL, Duration::ZERO)
        .await
        .expect("free");
    let old_token = guard.fencing_token();

    server.restart().expect("restart (no persistence)");

    let err = within(
        Duration::from_secs(10),
        "release after restart",
        guard.release(),
    )
    .await
    .expect_err("the server forgot the lock");
    // The first command after the restart may see the reset connection;
    // once reconnected, the compare-delete finds no lock.
    match err {
        LockError::Lost | LockError::Connection(_) => {}
        other => panic!("release after a restart: {other:?}"),
    }
    let guard = within(
        Duration::from_secs(10),
        "acquire after restart",
        locks.acquire("restart", TTL, Duration::from_secs(5)),
    )
    .await
    .expect("the same RedisLock works after the restart");
    // Without persistence the counter started over: the documented limit.
    assert!(guard.fencing_token() <= old_token);
    guard.release().await.expect("release");
}

#[tokio::test]
async fn a_release_after_restart_is_lost_once_reconnected() {
    let mut server = RedisServer::start().expect("redis-server");
    let locks = RedisLock::connect(&server.url()).await.expect("connect");
    let first = locks
        .acquire("restart-lost", TTL, Duration::ZERO)
        .await
        .expect("free");
    let mut second = locks
        .acquire("restart-lost-2", TTL, Duration::ZERO)
        .await
        .expect("free");
    server.restart().expect("restart");
    // Reconnect through any command (it may fail once on the dead socket).
    let _ = second.extend(TTL).await;
    let err = within(Duration::from_secs(10), "release", first.release())
        .await
        .expect_err("lost");
    assert!(
        err.is_lost(),
        "after the reconnect a release is Lost: {err:?}"
    );
}

#[tokio::test]
async fn a_frozen_server_times_out_cleanly_and_work_resumes() {
    let mut server = RedisServer::start().expect("redis-server");
    let (connect_timeout, response_timeout) =
        (Duration::from_millis(500), Duration::from_millis(300));
    let locks = RedisLock::options()
        .connect_timeout(connect_timeout)
        .response_timeout(response_timeout)
        .connect(&server.url())
        .await
        .expect("connect");
    server.pause().expect("SIGSTOP");
    let limit = connect_timeout + response_timeout + SLACK;
    let err = within(
        limit,
        "acquire on a frozen server",
        locks.acquire("frozen", TTL, Duration::from_millis(200)),
    )
    .await
    .expect_err("frozen");
    assert!(err.is_retryable(), "{err:?}");
    server.resume().expect("SIGCONT");
    let guard = within(
        Duration::from_secs(10),
        "acquire after resume",
        locks.acquire("frozen", TTL, Duration::from_secs(5)),
    )
    .await
    .expect("works after resume");
    guard.release().await.expect("release");
}

#[tokio::test]
async fn script_flush_between_calls_is_harmless() {
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::connect(&url).await.expect("connect");
    let mut raw = locks.connection().await.expect("a connection of our own");
    let flush = || redis::cmd("SCRIPT").arg("FLUSH").clone();

    let _: () = flush().query_async(&mut raw).await.expect("flush");
    let mut guard = locks
        .acquire("flushed", TTL, Duration::ZERO)
        .await
        .expect("acquire after flush");
    let _: () = flush().query_async(&mut raw).await.expect("flush");
    guard.extend(TTL).await.expect("extend after flush");
    let _: () = flush().query_async(&mut raw).await.expect("flush");
    assert!(
        locks
            .try_acquire("flushed", TTL)
            .await
            .expect("try")
            .is_none()
    );
    let _: () = flush().query_async(&mut raw).await.expect("flush");
    guard.release().await.expect("release after flush");
    let again = locks
        .try_acquire("flushed", TTL)
        .await
        .expect("try")
        .expect("free again");
    again.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_notices_a_lock_taken_over() {
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::connect(&url).await.expect("connect");
    let ttl = Duration::from_millis(900);
    let mut guard = locks
        .acquire("taken-over", ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    // Someone else's token in the key: what a takeover after expiry looks like.
    let mut raw = locks.connection().await.expect("a connection of our own");
    let _: () = redis::cmd("SET")
        .arg("distlock:{taken-over}")
        .arg("someone-else")
        .query_async(&mut raw)
        .await
        .expect("overwrite");
    within(ttl + SLACK, "lost() after a takeover", guard.lost()).await;
    assert!(guard.is_lost());
    let err = guard.release().await.expect_err("not ours");
    assert!(err.is_lost(), "{err:?}");
    // The stale release did not delete the other holder's key.
    let holder: String = redis::cmd("GET")
        .arg("distlock:{taken-over}")
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(holder, "someone-else");
    let _: () = redis::cmd("DEL")
        .arg("distlock:{taken-over}")
        .query_async(&mut raw)
        .await
        .expect("del");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_gives_up_when_the_server_stays_away_past_the_validity() {
    let mut server = RedisServer::start().expect("redis-server");
    let locks = RedisLock::options()
        .connect_timeout(Duration::from_millis(300))
        .response_timeout(Duration::from_millis(300))
        .connect(&server.url())
        .await
        .expect("connect");
    let ttl = Duration::from_millis(900);
    let mut guard = locks
        .acquire("unreachable", ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    server.kill().expect("kill -9");
    within(
        ttl + SLACK,
        "lost() once the validity ran out",
        guard.lost(),
    )
    .await;
    assert!(guard.is_lost());
    assert_eq!(guard.remaining(), Duration::ZERO);
}
