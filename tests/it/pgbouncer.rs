//! PgBouncer in transaction-pooling mode in front of PostgreSQL (Debian's
//! `pgbouncer`, started by distlock-testkit): session locks through it are
//! refused with a clear `InvalidConfig` error — never granted twice — and
//! transaction-scoped locks work through it with zero violations. Every run
//! is recorded and its history checked; afterwards no advisory lock is left
//! on the server.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::postgres::sqlx::postgres::{PgConnection, PgPoolOptions};
use distlock::postgres::sqlx::{self, Connection as _, Row as _};
use distlock::postgres::{PgAdvisoryLock, PgLockOptions, XactLocks};
use distlock::{DistributedLock, LockError};
use distlock_api::Instant;
use distlock_testkit::{History, Outcome, PgBouncer, PgBouncerOptions, PgServer, PoolMode};

const TTL: Duration = Duration::from_secs(2);
const LIMIT: Duration = Duration::from_secs(60);

/// A PostgreSQL server, a database on it (with the fencing sequence made
/// directly, as a migration would) and PgBouncer in front of it.
struct Setup {
    pg: PgServer,
    bouncer: PgBouncer,
    database: String,
}

impl Setup {
    async fn start(pool_size: u32) -> Setup {
        Setup::start_with(
            PgBouncerOptions::new()
                .pool_mode(PoolMode::Transaction)
                .pool_size(pool_size),
        )
        .await
    }

    async fn start_with(options: PgBouncerOptions) -> Setup {
        let (pg, bouncer, database) = tokio::task::spawn_blocking(move || {
            let pg = PgServer::start().expect("a PostgreSQL server");
            let bouncer = PgBouncer::start(&pg, options).expect("PgBouncer in front of it");
            pg.create_database("pooled").expect("a database");
            (pg, bouncer, "pooled".to_owned())
        })
        .await
        .expect("the setup task");
        let setup = Setup {
            pg,
            bouncer,
            database,
        };
        let mut direct = setup.direct().await;
        XactLocks::new()
            .create_sequence(&mut direct)
            .await
            .expect("the fencing sequence");
        setup
    }

    fn pooled_url(&self) -> String {
        self.bouncer.url_for(&self.database)
    }

    /// A connection to PostgreSQL itself, around PgBouncer.
    async fn direct(&self) -> PgConnection {
        PgConnection::connect(&self.pg.url_for(&self.database))
            .await
            .expect("a direct connection")
    }

    /// A lock client through PgBouncer (which rejects the startup
    /// `options` that carry TCP keepalives).
    async fn pooled_client(&self, max_connections: u32) -> PgAdvisoryLock {
        PgLockOptions::new()
            .tcp_keepalives(None)
            .max_connections(max_connections)
            .pool_timeout(Duration::from_secs(10))
            .connect(&self.pooled_url())
            .await
            .expect("connect through PgBouncer")
    }

    /// Advisory locks held in the database, seen directly.
    async fn advisory_locks(&self, direct: &mut PgConnection) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND d.datname = $1",
        )
        .bind(&self.database)
        .fetch_one(direct)
        .await
        .expect("count advisory locks")
    }

    /// Waits (bounded) until no advisory lock is left in the database.
    async fn assert_no_lock_left(&self, limit: Duration) {
        let mut direct = self.direct().await;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = self.advisory_locks(&mut direct).await;
            if left == 0 {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} advisory locks still held {limit:?} after the run"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// The refusal every pooled session lock must get: a typed, explained error.
fn assert_pooler_error(err: &LockError) {
    assert!(
        matches!(err, LockError::InvalidConfig(_)),
        "expected InvalidConfig, got {err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("pool_mode = transaction"), "{text}");
    assert!(text.contains("distlock_postgres::xact"), "{text}");
}

/// A session-lock client through a transaction pooler is refused at
/// connect, before it can grant anything: its two check connections end up
/// on one server session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_lock_client_through_a_transaction_pooler_is_refused_at_connect() {
    for pool_size in [1, 4] {
        let setup = Setup::start(pool_size).await;
        let err = PgLockOptions::new()
            .tcp_keepalives(None)
            .connect(&setup.pooled_url())
            .await
            .expect_err("a transaction pooler");
        assert_pooler_error(&err);
        assert!(err.to_string().contains("No lock was taken"), "{err}");
        // Transaction locks through the same pooler are fine.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect(&setup.pooled_url())
            .await
            .expect("an application pool through PgBouncer");
        let mut tx = pool.begin().await.expect("begin");
        let fence = XactLocks::new()
            .simple_queries(true)
            .try_lock(&mut tx, "seat:1")
            .await
            .expect("a transaction lock")
            .expect("free");
        assert!(fence > 0);
        tx.commit().await.expect("commit");
        setup.assert_no_lock_left(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_locks_through_a_transaction_pooler_are_refused_never_doubled() {
    const WORKERS: usize = 6;
    const CYCLES: usize = 30;
    // A pooler the connect-time check cannot see: the client connects
    // through session pooling, then PgBouncer is switched to transaction
    // pooling under it (two server sessions throughout, never closed). Only
    // the checks in each lock statement are left to notice.
    let mut setup = Setup::start_with(
        PgBouncerOptions::new()
            .pool_mode(PoolMode::Session)
            .pool_size(2),
    )
    .await;
    let locks = setup.pooled_client(WORKERS as u32).await;
    tokio::task::block_in_place(|| setup.bouncer.reconfigure(&[("pool_mode", "transaction")]))
        .expect("switch PgBouncer to transaction pooling");
    let history = History::new();
    let refusals = Arc::new(Mutex::new(Vec::<String>::new()));

    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (locks, history, refusals) = (locks.clone(), history.clone(), refusals.clone());
        tasks.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                let name = format!("seat:{}", cycle % 3);
                let op = history.invoke_acquire(worker, &name);
                match locks.try_acquire(&name, TTL).await {
                    Ok(Some(guard)) => {
                        history.acquired(op, &guard);
                        tokio::task::yield_now().await;
                        history.invoke_release(op, guard.valid_until());
                        let result = guard.release().await;
                        history.released(op, Outcome::of_release(&result));
                        if let Err(err) = result {
                            assert_pooler_error(&err);
                            refusals.lock().expect("list").push(err.to_string());
                        }
                    }
                    Ok(None) => history.acquire_failed(op),
                    Err(err) => {
                        // Refused before anything was taken.
                        history.acquire_failed(op);
                        assert_pooler_error(&err);
                        refusals.lock().expect("list").push(err.to_string());
                    }
                }
            }
        }));
    }
    within(LIMIT, "the pooled session-lock run", async {
        for task in tasks {
            task.await.expect("worker");
        }
    })
    .await;

    let report = history.check();
    let refusals = refusals.lock().expect("list").clone();
    eprintln!(
        "session locks through PgBouncer: {WORKERS} clients × {CYCLES} cycles: {}; {} refused",
        report.summary(),
        refusals.len()
    );
    report.assert_ok();
    assert!(
        !refusals.is_empty(),
        "with {WORKERS} clients on 2 server sessions the pooler must be noticed"
    );
    // Locks stranded on a server session by a refused release end with it:
    // PostgreSQL ends a session idle for the TTL.
    setup.assert_no_lock_left(TTL * 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_locks_work_through_a_transaction_pooler() {
    const WORKERS: usize = 8;
    const CYCLES: usize = 40;
    const NAMES: usize = 3;
    let setup = Setup::start(3).await;
    // More client connections than PgBouncer has server connections, so
    // transactions really move between server sessions.
    let pool = PgPoolOptions::new()
        .max_connections(WORKERS as u32)
        .connect(&setup.pooled_url())
        .await
        .expect("an application pool through PgBouncer");
    // PgBouncer 1.18 hands sqlx's named prepared statements around.
    let locks = XactLocks::new().simple_queries(true);
    let history = History::new();
    let pids = Arc::new(Mutex::new(BTreeSet::new()));
    // Transaction locks have no TTL: they last until the transaction ends.
    let far = Instant::now() + Duration::from_secs(3600);

    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (pool, locks, history, pids) =
            (pool.clone(), locks.clone(), history.clone(), pids.clone());
        tasks.push(tokio::spawn(async move {
            let (mut granted, mut busy) = (0, 0);
            for cycle in 0..CYCLES {
                let name = format!("seat:{}", (worker + cycle) % NAMES);
                let mut tx = pool.begin().await.expect("begin");
                let op = history.invoke_acquire(worker, &name);
                // Half wait on the server (lock_timeout), half try once.
                let outcome = if cycle % 2 == 0 {
                    locks
                        .lock(&mut tx, &name, Duration::from_secs(10))
                        .await
                        .map(Some)
                } else {
                    locks.try_lock(&mut tx, &name).await
                };
                match outcome.expect("no error through the pooler") {
                    Some(fence) => {
                        history.acquired_with(op, fence, far);
                        granted += 1;
                        let pid: i32 = sqlx::raw_sql("SELECT pg_backend_pid()")
                            .fetch_one(&mut *tx)
                            .await
                            .and_then(|row| row.try_get(0))
                            .expect("pid");
                        pids.lock().expect("pids").insert(pid);
                        history.invoke_release(op, far);
                        let committed = tx.commit().await;
                        history.released(
                            op,
                            if committed.is_ok() {
                                Outcome::Ok
                            } else {
                                Outcome::Unknown
                            },
                        );
                        committed.expect("commit");
                    }
                    None => {
                        history.acquire_failed(op);
                        busy += 1;
                        tx.rollback().await.expect("rollback");
                    }
                }
            }
            (granted, busy)
        }));
    }
    let (mut granted, mut busy) = (0, 0);
    within(LIMIT, "the pooled transaction-lock run", async {
        for task in tasks {
            let (g, b) = task.await.expect("worker");
            granted += g;
            busy += b;
        }
    })
    .await;

    let report = history.check();
    let pids = pids.lock().expect("pids").len();
    eprintln!(
        "transaction locks through PgBouncer: {WORKERS} clients × {CYCLES} cycles on {NAMES} names, \
         {pids} server sessions: {}; {granted} granted, {busy} busy",
        report.summary()
    );
    report.assert_ok();
    assert_eq!(granted + busy, WORKERS * CYCLES);
    assert!(
        granted >= WORKERS * CYCLES / 2,
        "every waiting lock is granted"
    );
    assert!(pids > 1, "transactions ran on {pids} server session(s)");
    assert_eq!(report.counts.unknown, 0);
    setup.assert_no_lock_left(Duration::from_secs(5)).await;
}

/// Without a pooler at hand that keeps sqlx's prepared statements apart
/// (PgBouncer ≥ 1.21), a session that already carries a lock is simulated:
/// every connection of this application pool starts with the marker a held
/// session lock sets. The lock statement refuses it, taking nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_already_holds_a_lock_is_refused() {
    let url = tokio::task::spawn_blocking(distlock_testkit::database_url)
        .await
        .expect("task")
        .expect("a database");
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET distlock.held_key = '42'")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&url)
        .await
        .expect("pool");
    let locks = PgLockOptions::new()
        .from_pool(pool.clone())
        .await
        .expect("from_pool");
    let err = locks
        .try_acquire("seat:1", TTL)
        .await
        .expect_err("the session is marked as holding a lock");
    assert_pooler_error(&err);
    for simple in [false, true] {
        let locks = XactLocks::new().simple_queries(simple);
        let mut tx = pool.begin().await.expect("begin");
        let err = locks
            .try_lock(&mut tx, "seat:1")
            .await
            .expect_err("the session is marked as holding a lock");
        assert_pooler_error(&err);
        let err = locks
            .lock(&mut tx, "seat:1", Duration::from_secs(1))
            .await
            .expect_err("the session is marked as holding a lock");
        assert_pooler_error(&err);
        tx.rollback().await.expect("rollback");
    }
    // Nothing was taken in this test's database (the shared server carries
    // other tests' locks meanwhile).
    let mut direct = PgConnection::connect(&url).await.expect("direct");
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut direct)
    .await
    .expect("count");
    assert_eq!(left, 0);
}

/// Without `simple_queries`, PgBouncer 1.18 breaks sqlx's named prepared
/// statements between transactions: that shows as a typed error naming the
/// option, never as a lock granted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_transaction_locks_through_the_pooler_fail_clearly() {
    const WORKERS: usize = 4;
    const CYCLES: usize = 20;
    let setup = Setup::start(2).await;
    let pool = PgPoolOptions::new()
        .max_connections(WORKERS as u32)
        .connect(&setup.pooled_url())
        .await
        .expect("an application pool through PgBouncer");
    let history = History::new();
    let far = Instant::now() + Duration::from_secs(3600);
    let errors = Arc::new(Mutex::new(0usize));
    let mut tasks = Vec::new();
    for worker in 0..WORKERS {
        let (pool, history, errors) = (pool.clone(), history.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let locks = XactLocks::new();
            for cycle in 0..CYCLES {
                let name = format!("seat:{}", cycle % 2);
                let mut tx = pool.begin().await.expect("begin");
                let op = history.invoke_acquire(worker, &name);
                match locks.try_lock(&mut tx, &name).await {
                    Ok(Some(fence)) => {
                        history.acquired_with(op, fence, far);
                        history.invoke_release(op, far);
                        tx.commit().await.expect("commit");
                        history.released(op, Outcome::Ok);
                    }
                    Ok(None) => {
                        history.acquire_failed(op);
                        tx.rollback().await.expect("rollback");
                    }
                    Err(err) => {
                        history.acquire_failed(op);
                        assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
                        assert!(err.to_string().contains("simple_queries(true)"), "{err}");
                        *errors.lock().expect("count") += 1;
                        tx.rollback().await.expect("rollback");
                    }
                }
            }
        }));
    }
    within(LIMIT, "the prepared run", async {
        for task in tasks {
            task.await.expect("worker");
        }
    })
    .await;
    let report = history.check();
    let errors = *errors.lock().expect("count");
    eprintln!(
        "prepared transaction locks through PgBouncer: {WORKERS} clients × {CYCLES} cycles: \
         {errors} refused: {}",
        report.summary()
    );
    report.assert_ok();
    assert!(
        errors > 0,
        "PgBouncer 1.18 did not break a prepared statement"
    );
    setup.assert_no_lock_left(Duration::from_secs(5)).await;
}

/// What a transaction pooler may do to the server session a session lock
/// was taken on, between two of the holder's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionReset {
    /// `server_reset_query_always = 1`: `DISCARD ALL` (which unlocks every
    /// advisory lock and drops sqlx's prepared statements) after every
    /// transaction.
    ResetQueryAlways,
    /// The same with `server_reset_query = SELECT pg_advisory_unlock_all()`:
    /// prepared statements survive (as with PgBouncer ≥ 1.21's
    /// `max_prepared_statements`), so nothing else gives the pooler away.
    UnlockAlways,
    /// `server_lifetime = 0`: every server connection is used once, then closed.
    LifetimeZero,
    /// `RECONNECT` on the admin console: server connections close once released.
    Reconnect,
}

/// The first session lock on a fresh client connection through a
/// transaction pooler: the pooler then resets or closes the server session
/// it was taken on, the lock is gone while the holder's guard is still
/// valid, and a client connected to PostgreSQL directly must not be granted
/// it in that time. The holder's client is refused (`InvalidConfig`) before
/// any lock is reported held; the history checker sees no overlap.
async fn first_session_lock_through_a_resetting_pooler(reset: SessionReset) {
    let options = PgBouncerOptions::new()
        .pool_mode(PoolMode::Transaction)
        .pool_size(1);
    let options = match reset {
        SessionReset::ResetQueryAlways => options.setting("server_reset_query_always", "1"),
        SessionReset::UnlockAlways => options
            .setting("server_reset_query_always", "1")
            .setting("server_reset_query", "SELECT pg_advisory_unlock_all()"),
        SessionReset::LifetimeZero => options.setting("server_lifetime", "0"),
        SessionReset::Reconnect => options,
    };
    let setup = Setup::start_with(options).await;
    let history = History::new();
    let holder_ttl = Duration::from_secs(30);

    let pooled = PgLockOptions::new()
        .tcp_keepalives(None)
        .max_connections(2)
        .connect(&setup.pooled_url())
        .await;
    let held = match pooled {
        Err(err) => {
            assert_pooler_error(&err);
            eprintln!("{reset:?}: refused at connect: {err}");
            None
        }
        Ok(locks) => {
            let op = history.invoke_acquire(0, "seat:1");
            match locks.try_acquire("seat:1", holder_ttl).await {
                Ok(Some(guard)) => {
                    history.acquired(op, &guard);
                    Some((op, guard))
                }
                Ok(None) => panic!("nobody else holds seat:1"),
                Err(err) => {
                    history.acquire_failed(op);
                    assert_pooler_error(&err);
                    eprintln!("{reset:?}: refused at the first lock: {err}");
                    None
                }
            }
        }
    };
    if reset == SessionReset::Reconnect {
        let out = tokio::task::block_in_place(|| setup.bouncer.admin("RECONNECT"))
            .expect("RECONNECT on the admin console");
        eprintln!("RECONNECT: {out:?}");
    }

    // Another client, straight to PostgreSQL, asks for the same lock while
    // the holder's guard is valid.
    let direct = PgLockOptions::new()
        .connect(&setup.pg.url_for(&setup.database))
        .await
        .expect("a direct client");
    let op = history.invoke_acquire(1, "seat:1");
    match direct.acquire("seat:1", TTL, Duration::from_secs(3)).await {
        Ok(guard) => {
            history.acquired(op, &guard);
            history.invoke_release(op, guard.valid_until());
            let result = guard.release().await;
            history.released(op, Outcome::of_release(&result));
        }
        Err(LockError::Timeout) => history.acquire_failed(op),
        Err(err) => panic!("the direct client failed: {err:?}"),
    }
    if let Some((op, guard)) = held {
        history.invoke_release(op, guard.valid_until());
        let result = guard.release().await;
        history.released(op, Outcome::of_release(&result));
    }
    let report = history.check();
    eprintln!("{reset:?}: {}", report.summary());
    report.assert_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_resets_sessions_never_strands_a_first_lock() {
    first_session_lock_through_a_resetting_pooler(SessionReset::ResetQueryAlways).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_unlocks_sessions_never_strands_a_first_lock() {
    first_session_lock_through_a_resetting_pooler(SessionReset::UnlockAlways).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_that_uses_sessions_once_never_strands_a_first_lock() {
    first_session_lock_through_a_resetting_pooler(SessionReset::LifetimeZero).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooler_reconnect_never_strands_a_first_lock() {
    first_session_lock_through_a_resetting_pooler(SessionReset::Reconnect).await;
}

/// An extend that finds itself on another server session than the lock
/// (a transaction pooler moved the client) reports the lock lost — the
/// guard can no longer reach it — rather than a configuration error that
/// renewal would retry while the guard still counts on the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extend_stranded_on_another_session_is_lost() {
    // Connected through session pooling, then switched (see above).
    let mut setup = Setup::start_with(
        PgBouncerOptions::new()
            .pool_mode(PoolMode::Session)
            .pool_size(2),
    )
    .await;
    let locks = setup.pooled_client(1).await;
    tokio::task::block_in_place(|| setup.bouncer.reconfigure(&[("pool_mode", "transaction")]))
        .expect("switch PgBouncer to transaction pooling");
    let mut guard = locks
        .try_acquire("seat:1", Duration::from_secs(30))
        .await
        .expect("the lock")
        .expect("free");
    let mut direct = setup.direct().await;
    let holder: i32 = sqlx::query_scalar(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted LIMIT 1",
    )
    .fetch_one(&mut direct)
    .await
    .expect("the holding session");
    // Keep the holding server session busy in a transaction of another
    // pooled client, so the holder's next statement runs on the other one.
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&setup.pooled_url())
        .await
        .expect("an application pool through PgBouncer");
    let mut busy = None;
    let mut others = Vec::new();
    for _ in 0..2 {
        let mut tx = pool.begin().await.expect("begin");
        let pid: i32 = sqlx::raw_sql("SELECT pg_backend_pid()")
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .expect("pid");
        if pid == holder {
            busy = Some(tx);
            break;
        }
        others.push(tx);
    }
    let busy = busy.expect("one of two transactions runs on the holding session");
    for tx in others {
        tx.commit().await.expect("commit");
    }
    let err = within(LIMIT, "the extend", guard.extend(Duration::from_secs(30)))
        .await
        .expect_err("the extend ran on another session");
    assert!(err.is_lost(), "expected Lost, got {err:?}");
    assert!(guard.is_lost());
    busy.commit().await.expect("commit");
}
