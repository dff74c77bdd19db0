//! Transaction-scoped locks: held until the caller's transaction ends,
//! exclusive with session locks on the same name, fencing tokens from the
//! same sequence, and a timed wait that leaves the transaction usable.

use crate::common;

use std::time::{Duration, Instant};

use common::database_url;
use distlock_postgres::sqlx::{self, postgres::PgPoolOptions};
use distlock_postgres::xact::{self, XactLocks};
use distlock_postgres::{DistributedLock, LockError, PgAdvisoryLock};

const TTL: Duration = Duration::from_secs(30);

async fn setup() -> (sqlx::PgPool, PgAdvisoryLock) {
    let url = database_url().await;
    // Connecting a PgAdvisoryLock and taking one lock creates the sequence.
    let session = PgAdvisoryLock::connect(&url).await.expect("connect");
    session
        .try_acquire(&common::name("setup"), TTL)
        .await
        .expect("try")
        .expect("free")
        .release()
        .await
        .expect("ours");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("a pool");
    (pool, session)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_lock_lasts_until_commit_or_rollback() {
    let (pool, session) = setup().await;
    for end in ["commit", "rollback"] {
        let name = common::name("xact");
        let mut tx = pool.begin().await.expect("begin");
        let fence = xact::try_lock(&mut tx, &name)
            .await
            .expect("try")
            .expect("free");
        assert!(fence > 0);
        // Exclusive with session locks and with other transactions.
        assert!(
            session
                .try_acquire(&name, TTL)
                .await
                .expect("try")
                .is_none()
        );
        let mut other_tx = pool.begin().await.expect("begin");
        assert_eq!(
            xact::try_lock(&mut other_tx, &name).await.expect("try"),
            None
        );
        other_tx.rollback().await.expect("rollback");
        // Still usable: a held lock is not an error.
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *tx)
            .await
            .expect("query");
        assert_eq!(one, 1);
        match end {
            "commit" => tx.commit().await.expect("commit"),
            _ => tx.rollback().await.expect("rollback"),
        }
        let guard = session
            .try_acquire(&name, TTL)
            .await
            .expect("try")
            .unwrap_or_else(|| panic!("still locked after {end}"));
        assert!(
            guard.fencing_token() > fence,
            "tokens come from one sequence"
        );
        guard.release().await.expect("ours");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_wait_gets_the_lock_when_it_is_released() {
    let (pool, session) = setup().await;
    let name = common::name("xact-wait");
    let guard = session
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let token = guard.fencing_token();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        guard.release().await
    });
    let mut tx = pool.begin().await.expect("begin");
    let fence = xact::lock(&mut tx, &name, Duration::from_secs(10))
        .await
        .expect("granted once the session lock is released");
    assert!(fence > token);
    release.await.expect("task").expect("ours");
    // The lock survived the savepoint it was taken in.
    assert!(
        session
            .try_acquire(&name, TTL)
            .await
            .expect("try")
            .is_none()
    );
    tx.commit().await.expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_wait_leaves_the_transaction_usable() {
    let (pool, session) = setup().await;
    let name = common::name("xact-timeout");
    let guard = session
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("SET LOCAL lock_timeout = '7s'")
        .execute(&mut *tx)
        .await
        .expect("set");
    let wait = Duration::from_millis(300);
    let started = Instant::now();
    let err = xact::lock(&mut tx, &name, wait).await.expect_err("held");
    assert!(matches!(err, LockError::Timeout), "{err}");
    let took = started.elapsed();
    assert!(took >= wait - Duration::from_millis(5), "after {took:?}");
    assert!(took < wait + Duration::from_secs(1), "after {took:?}");
    // Usable, with the caller's lock_timeout back.
    let timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("the transaction is still usable");
    assert_eq!(timeout, "7s");
    // No wait: Timeout at once, without touching the transaction.
    let err = xact::lock(&mut tx, &name, Duration::ZERO)
        .await
        .expect_err("held");
    assert!(matches!(err, LockError::Timeout), "{err}");
    tx.commit().await.expect("commit");
    guard.release().await.expect("ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_sequence_is_explained_and_harmless() {
    let (pool, _session) = setup().await;
    let locks =
        XactLocks::new().fencing_sequence("public", format!("missing_{:x}", rand::random::<u32>()));
    let mut tx = pool.begin().await.expect("begin");
    for outcome in [
        locks.try_lock(&mut tx, "x").await,
        locks
            .lock(&mut tx, "x", Duration::from_secs(1))
            .await
            .map(Some),
    ] {
        let err = outcome.expect_err("no sequence");
        assert!(matches!(err, LockError::Backend(_)), "{err}");
        assert!(err.to_string().contains("CREATE SEQUENCE"), "{err}");
    }
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .expect("usable");
    assert_eq!(one, 1);
    tx.rollback().await.expect("rollback");

    // create_sequence makes it, and then it works.
    let mut conn = pool.acquire().await.expect("conn");
    locks.create_sequence(&mut conn).await.expect("create");
    let mut tx = pool.begin().await.expect("begin");
    assert_eq!(locks.try_lock(&mut tx, "x").await.expect("try"), Some(1));
    tx.rollback().await.expect("rollback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_and_raw_keys_agree_with_the_session_client() {
    let url = database_url().await;
    let session = distlock_postgres::PgLockOptions::new()
        .key_namespace("app:")
        .connect(&url)
        .await
        .expect("connect");
    let name = common::name("xact-ns");
    let guard = session
        .acquire(&name, TTL, Duration::ZERO)
        .await
        .expect("free");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let locks = session.xact();
    assert_eq!(locks.key(&name), session.key(&name));
    assert_eq!(locks.try_lock(&mut tx, &name).await.expect("try"), None);
    assert_eq!(
        locks
            .try_lock_key(&mut tx, session.key(&name))
            .await
            .expect("try"),
        None
    );
    // The default namespace is another key.
    assert!(xact::try_lock(&mut tx, &name).await.expect("try").is_some());
    tx.rollback().await.expect("rollback");
    guard.release().await.expect("ours");
    let err = xact::try_lock(&mut pool.begin().await.expect("begin"), "")
        .await
        .expect_err("empty");
    assert!(matches!(err, LockError::InvalidName(_)));
}

/// `ALTER SEQUENCE … RESTART` (or `setval`, or `INCREMENT -1`) after the
/// sequence was set up: a transaction lock's token does not rise above one
/// this `XactLocks` (or the session client it came from) already handed
/// out. The grant is refused with a typed error, whether it came from
/// `try_lock` or from a timed `lock` (whose savepoint is rolled back, so
/// the lock is freed and the transaction stays usable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequence_restarted_after_setup_refuses_falling_transaction_tokens() {
    let url = database_url().await;
    let session = distlock_postgres::PgLockOptions::new()
        .fencing_sequence("public", "restarted_xact_tokens")
        .connect(&url)
        .await
        .expect("connect");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .expect("a pool");
    let locks = session.xact();
    let mut conn = pool.acquire().await.expect("conn");
    locks.create_sequence(&mut conn).await.expect("create");
    drop(conn);
    let name = common::name("xact-restart");
    let mut last = 0;
    for _ in 0..3 {
        let mut tx = pool.begin().await.expect("begin");
        let fence = locks
            .try_lock(&mut tx, &name)
            .await
            .expect("try")
            .expect("free");
        assert!(fence > last);
        let again = locks
            .clone()
            .lock(&mut tx, &format!("{name}-2"), Duration::from_secs(1))
            .await
            .expect("lock");
        assert!(again > fence);
        last = again;
        tx.commit().await.expect("commit");
    }
    let restart = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::raw_sql(sql)
                .execute(&pool)
                .await
                .expect("change the sequence");
        }
    };
    let refused = |outcome: Result<Option<u64>, LockError>, what: &str, expect: &str| {
        let err = match outcome {
            Ok(Some(fence)) => panic!(
                "{what}: granted with token {fence} after tokens up to {last} were handed out"
            ),
            Ok(None) => panic!("{what}: nobody else holds the lock"),
            Err(err) => err,
        };
        assert!(
            matches!(err, LockError::Backend(_)),
            "{what}: expected a Backend error, got {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(expect), "{what}: {text}");
    };
    restart("ALTER SEQUENCE public.restarted_xact_tokens RESTART").await;

    // try_lock: refused (the lock stays held until the transaction ends).
    let mut tx = pool.begin().await.expect("begin");
    refused(
        locks.try_lock(&mut tx, &name).await,
        "try_lock",
        "did not rise",
    );
    tx.rollback().await.expect("rollback");

    // A timed lock: refused, its savepoint rolled back — the lock is free
    // again while the transaction is still open and usable.
    let mut tx = pool.begin().await.expect("begin");
    refused(
        locks
            .lock(&mut tx, &name, Duration::from_secs(1))
            .await
            .map(Some),
        "lock",
        "setval",
    );
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *tx)
        .await
        .expect("usable");
    assert_eq!(one, 1);
    let mut other = pool.begin().await.expect("begin");
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(locks.key(&name))
        .fetch_one(&mut *other)
        .await
        .expect("try directly");
    assert!(free, "the refused lock is still held");
    other.rollback().await.expect("rollback");
    tx.rollback().await.expect("rollback");

    // `session.xact()` shares its client's record: the session lock is
    // refused too, though the session itself never saw those tokens.
    let err = session
        .try_acquire(&name, TTL)
        .await
        .map(|guard| guard.map(|guard| guard.fencing_token()));
    refused(err, "session lock", "did not rise");

    // A later change of direction is caught the same way, with the
    // specific error from re-checking the sequence.
    restart(
        "SELECT setval('public.restarted_xact_tokens', 1000000); \
         ALTER SEQUENCE public.restarted_xact_tokens INCREMENT -1",
    )
    .await;
    let mut seen = Vec::new();
    loop {
        let mut tx = pool.begin().await.expect("begin");
        match locks.try_lock(&mut tx, &name).await {
            Ok(Some(fence)) => {
                seen.push(fence);
                assert!(seen.len() < 3, "falling tokens granted: {seen:?}");
            }
            outcome => {
                refused(outcome, "INCREMENT -1", "INCREMENT -1");
                break;
            }
        }
        tx.rollback().await.expect("rollback");
    }
}
