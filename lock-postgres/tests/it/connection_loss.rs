//! When the holding connection dies — `pg_terminate_backend`, a server
//! restart or crash — the guard reports `Lost`: on its next extend or
//! release, and with renewal on within about a third of the TTL. The client
//! itself keeps working.

use crate::common;

use std::time::{Duration, Instant};

use common::{app_name, client, database_url, holder_pid, observer, terminate, within};
use distlock_postgres::{DistributedLock, LockError, PgAdvisoryLock, PgLockOptions};
use distlock_testkit::PgServer;

const LONG_TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_holder_is_lost_on_its_next_extend_and_release() {
    let url = database_url().await;
    let locks = client(&url, &app_name("terminate"), PgLockOptions::new()).await;
    let other = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut outside = observer(&url).await;

    for call in ["extend", "release"] {
        let name = common::name("terminate");
        let mut guard = locks
            .acquire(&name, LONG_TTL, Duration::ZERO)
            .await
            .expect("free");
        let pid = holder_pid(&mut outside, locks.key(&name))
            .await
            .expect("the holder is in pg_locks");
        terminate(&mut outside, pid).await;
        // The session is gone, and its lock with it.
        let next = other
            .acquire(&name, LONG_TTL, Duration::from_secs(2))
            .await
            .expect("a terminated session's lock is free");
        assert!(next.fencing_token() > guard.fencing_token());
        match call {
            "extend" => {
                let err = guard
                    .extend(LONG_TTL)
                    .await
                    .expect_err("the session is gone");
                assert!(err.is_lost(), "extend: {err}");
                assert!(guard.is_lost());
                let err = guard.release().await.expect_err("already lost");
                assert!(err.is_lost(), "release after a lost extend: {err}");
            }
            _ => {
                let err = guard.release().await.expect_err("the session is gone");
                assert!(err.is_lost(), "release: {err}");
            }
        }
        next.release().await.expect("the new holder still holds it");
    }
    // The client goes on working, on a fresh connection.
    let name = common::name("terminate-after");
    let guard = locks
        .acquire(&name, LONG_TTL, Duration::ZERO)
        .await
        .expect("free");
    guard.release().await.expect("ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_notices_a_terminated_holder_within_a_third_of_the_ttl() {
    let url = database_url().await;
    let locks = client(&url, &app_name("renew-loss"), PgLockOptions::new()).await;
    let mut outside = observer(&url).await;
    let ttl = Duration::from_millis(1500);
    let slack = Duration::from_secs(1);

    let name = common::name("renew-loss");
    let mut guard = locks
        .acquire(&name, ttl, Duration::ZERO)
        .await
        .expect("free");
    guard.auto_renew();
    let pid = holder_pid(&mut outside, locks.key(&name))
        .await
        .expect("held");
    let lost = guard.lost();
    terminate(&mut outside, pid).await;
    let terminated = Instant::now();
    within(
        ttl / 3 + slack,
        "lost() after the holder was terminated",
        lost,
    )
    .await;
    assert!(guard.is_lost());
    eprintln!("renewal noticed the loss after {:?}", terminated.elapsed());
    let err = guard.release().await.expect_err("lost");
    assert!(err.is_lost(), "{err}");
}

/// Runs a blocking testkit call off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("the blocking task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_or_a_crash_holders_are_lost_and_the_client_recovers() {
    let server = blocking(PgServer::start)
        .await
        .expect("a server of our own");
    let url = server.url();
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let locks = PgLockOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("connect");

    for fault in ["restart", "kill"] {
        // Fill the pool with idle connections that the fault will make stale.
        let mut warm = Vec::new();
        for i in 0..3 {
            warm.push(
                locks
                    .acquire(&format!("warm:{i}"), LONG_TTL, Duration::ZERO)
                    .await
                    .expect("free"),
            );
        }
        for guard in warm {
            guard.release().await.expect("ours");
        }
        let mut guard = locks
            .acquire("held", LONG_TTL, Duration::ZERO)
            .await
            .expect("free");
        let token = guard.fencing_token();

        let handle = server.clone();
        blocking(move || {
            let mut server = handle.lock().expect("server");
            match fault {
                "restart" => server.restart(),
                _ => server.kill().and_then(|()| server.restart()),
            }
        })
        .await
        .unwrap_or_else(|err| panic!("{fault}: {err}"));

        let err = guard
            .extend(LONG_TTL)
            .await
            .expect_err("the session is gone");
        assert!(err.is_lost(), "{fault}: extend returned {err}");
        let err = guard.release().await.expect_err("lost");
        assert!(err.is_lost(), "{fault}: release returned {err}");

        // Stale pooled connections are skipped; new acquires just work.
        let guard = within(
            Duration::from_secs(10),
            "acquire after the fault",
            locks.acquire("held", LONG_TTL, Duration::from_secs(5)),
        )
        .await
        .unwrap_or_else(|err| panic!("{fault}: acquire after the fault: {err}"));
        assert!(
            guard.fencing_token() > token,
            "{fault}: fencing token went from {token} to {}",
            guard.fencing_token()
        );
        guard.release().await.expect("ours");
        let err = LockError::Lost;
        assert!(err.is_lost());
    }
}
