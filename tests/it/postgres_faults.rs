//! PostgreSQL faults under concurrent holders and waiters, with the history
//! checked afterwards and the server's view counted (sessions in
//! `pg_stat_activity`, advisory locks in `pg_locks`): holders' sessions
//! terminated, the server restarted and killed, the pool exhausted by held
//! locks, and server-side `statement_timeout` / `lock_timeout`. The
//! single-operation cases are in `lock-postgres/tests/`; this file adds the
//! scenarios. The standing partition nemesis (holders cut off in the kernel
//! for longer than the TTL) is at the end.
//!
//! How a fault is recorded: the lock ends on the server when the fault hits
//! (the session is gone), so the victim's definitely-held interval ends
//! there — the injector records the release as invoked at that instant,
//! while no acquire is between its grant and its registration (a gate the
//! workers hold shared and the injector exclusively). Every other overlap
//! is a double grant.

use crate::nemesis;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock::postgres::sqlx::{self, Connection as _, PgConnection};
use distlock::postgres::{PgAdvisoryLock, PgLockOptions, PoolExhausted, TcpKeepalives, xact};
use distlock::{DistributedLock, LockContext, LockError};
use distlock_api::Instant;
use distlock_testkit::{History, OpId, Outcome, PgServer, Report};
use rand::Rng as _;
use tokio::sync::RwLock;

const TTL: Duration = Duration::from_millis(900);
/// How much later than `TTL / 3` a renewing holder may learn of its loss on
/// a loaded 2-core machine (one extend round trip, scheduling).
const NOTICE_SLACK: Duration = Duration::from_millis(700);
const RUN_LIMIT: Duration = Duration::from_secs(60);

async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn app_name(test: &str) -> String {
    format!("f-{test}-{:08x}", rand::random::<u32>())
}

/// The server's view of one client (by application name).
struct Observer {
    url: String,
    app: String,
}

impl Observer {
    async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("observer")
    }

    /// (sessions, advisory locks) of the client's lock connections.
    async fn counts(&self) -> (i64, i64) {
        let mut conn = self.connect().await;
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = $1), \
                    (SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                     WHERE l.locktype = 'advisory' AND a.application_name = $1)",
        )
        .bind(&self.app)
        .fetch_one(&mut conn)
        .await
        .expect("count sessions and locks")
    }

    /// All advisory locks in the database, whoever holds them.
    async fn advisory_locks(&self) -> i64 {
        let mut conn = self.connect().await;
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&mut conn)
        .await
        .expect("count advisory locks")
    }

    /// The session holding advisory key `key`.
    async fn holder_pid(&self, conn: &mut PgConnection, key: i64) -> Option<i32> {
        let bits = key as u64;
        sqlx::query_scalar(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND classid = $1::oid AND objid = $2::oid",
        )
        .bind((bits >> 32) as i64)
        .bind((bits & 0xffff_ffff) as i64)
        .fetch_optional(conn)
        .await
        .expect("find the holder")
    }

    /// Waits (bounded, polling the server) until no advisory lock is left
    /// and the client has at most `max_sessions` sessions.
    async fn settled(&self, max_sessions: i64, limit: Duration) -> (i64, i64) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (sessions, locks) = self.counts().await;
            let all = self.advisory_locks().await;
            if sessions <= max_sessions && locks == 0 && all == 0 {
                return (sessions, locks);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled {limit:?} after the run: {sessions} sessions (at most \
                 {max_sessions} expected), {locks} advisory locks of ours, {all} in all"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A lock a worker holds right now, as the injector sees it.
struct Holding {
    op: OpId,
    key: i64,
    context: LockContext,
    /// Held long enough (with renewal) for the renewal to notice a fault.
    long: bool,
    /// When a fault ended it on the server.
    faulted_at: Option<Instant>,
}

/// Workers and an injector around one client.
#[derive(Clone)]
struct Run {
    locks: PgAdvisoryLock,
    history: History,
    /// Shared by workers between a grant and its registration, and between
    /// unregistering and invoking the release; exclusive for a fault.
    gate: Arc<RwLock<()>>,
    holders: Arc<Mutex<HashMap<OpId, Holding>>>,
    /// How long after its fault each renewing victim learned of its loss.
    notices: Arc<Mutex<Vec<Duration>>>,
    /// Errors from acquires that are allowed while faults happen.
    acquire_errors: Arc<Mutex<Vec<String>>>,
    faulted_releases: Arc<Mutex<Vec<String>>>,
}

impl Run {
    fn new(locks: PgAdvisoryLock) -> Self {
        Run {
            locks,
            history: History::new(),
            gate: Arc::new(RwLock::new(())),
            holders: Arc::new(Mutex::new(HashMap::new())),
            notices: Arc::new(Mutex::new(Vec::new())),
            acquire_errors: Arc::new(Mutex::new(Vec::new())),
            faulted_releases: Arc::new(Mutex::new(Vec::new())),
        }
    }

    async fn worker(self, worker: usize, cycles: usize, names: usize) {
        for cycle in 0..cycles {
            let name = format!("seat:{}", rand::rng().random_range(0..names));
            let long = cycle % 6 == 5;
            let (op, guard) = {
                let _shared = self.gate.read().await;
                let op = self.history.invoke_acquire(worker, &name);
                let result = self
                    .locks
                    .acquire(&name, TTL, Duration::from_millis(300))
                    .await;
                self.history.record_acquire(op, &result);
                match result {
                    Ok(guard) => {
                        self.holders.lock().expect("holders").insert(
                            op,
                            Holding {
                                op,
                                key: self.locks.key(&name),
                                context: guard.context(),
                                long,
                                faulted_at: None,
                            },
                        );
                        (op, guard)
                    }
                    Err(LockError::Timeout) => continue,
                    Err(err) => {
                        // Only while the server is down or restarting.
                        let registered = self.holders.lock().expect("holders").len();
                        self.acquire_errors.lock().expect("errors").push(format!(
                            "{err} (client: {} held, {} idle; {registered} registered holders)",
                            self.locks.held_locks(),
                            self.locks.idle_connections()
                        ));
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                }
            };
            let mut guard = guard;
            guard.auto_renew();
            let hold = if long {
                TTL * 2
            } else {
                Duration::from_millis(rand::rng().random_range(1..15))
            };
            let noticed = tokio::select! {
                () = tokio::time::sleep(hold) => None,
                () = guard.lost() => Some(Instant::now()),
            };
            let faulted_at = {
                let _shared = self.gate.read().await;
                let holding = self
                    .holders
                    .lock()
                    .expect("holders")
                    .remove(&op)
                    .expect("registered");
                if holding.faulted_at.is_none() {
                    self.history.invoke_release(op, guard.valid_until());
                }
                holding.faulted_at
            };
            // A victim faulted near the end of its hold: wait (bounded) for
            // its renewal to notice, as it would have had it held on.
            let noticed = match (faulted_at, noticed) {
                (Some(fault), None) if long => {
                    let limit = (fault + TTL / 3 + NOTICE_SLACK)
                        .saturating_duration_since(Instant::now())
                        + Duration::from_millis(1);
                    tokio::time::timeout(limit, guard.lost())
                        .await
                        .ok()
                        .map(|()| Instant::now())
                }
                (_, noticed) => noticed,
            };
            let result = guard.release().await;
            self.history.released(op, Outcome::of_release(&result));
            match faulted_at {
                None => result.unwrap_or_else(|err| {
                    panic!("worker {worker}: release of an unfaulted lock: {err}")
                }),
                Some(fault) => {
                    let err = result.expect_err("the session is gone");
                    assert!(err.is_lost(), "a faulted release: {err}");
                    self.faulted_releases
                        .lock()
                        .expect("list")
                        .push(err.to_string());
                    if long {
                        let noticed = noticed.expect("a renewing victim notices its loss");
                        self.notices
                            .lock()
                            .expect("notices")
                            .push(noticed.saturating_duration_since(fault));
                    }
                }
            }
        }
    }

    /// Marks `name`'s holder as ended by a fault, now.
    fn fault(&self, holding: &mut Holding) {
        let now = Instant::now();
        self.history
            .invoke_release(holding.op, holding.context.valid_until());
        holding.faulted_at = Some(now);
    }

    fn report(&self) -> Report {
        self.history.check()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_holders_are_lost_within_a_third_of_the_ttl_and_nothing_is_granted_twice() {
    const WORKERS: usize = 6;
    const CYCLES: usize = 30;
    const NAMES: usize = 3;
    let started = std::time::Instant::now();
    let url = blocking(distlock_testkit::database_url)
        .await
        .expect("a database");
    let app = app_name("terminate");
    // Headroom over one connection per worker: this test is about
    // terminations, the full pool has a test of its own.
    let max_connections = WORKERS as u32 + 2;
    let locks = PgLockOptions::new()
        .application_name(&app)
        .max_connections(max_connections)
        .connect(&url)
        .await
        .expect("connect");
    let observer = Observer {
        url: url.clone(),
        app: app.clone(),
    };
    let run = Run::new(locks.clone());
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(run.clone().worker(w, CYCLES, NAMES)))
        .collect();

    // The injector: every 100 ms, terminate the session of one registered
    // long holder.
    let injector = {
        let run = run.clone();
        let observer = Observer {
            url: url.clone(),
            app: app.clone(),
        };
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = done.clone();
        let task = tokio::spawn(async move {
            let mut conn = observer.connect().await;
            let mut faults = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _exclusive = run.gate.write().await;
                let victim = {
                    let holders = run.holders.lock().expect("holders");
                    holders
                        .iter()
                        .find(|(_, h)| h.long && h.faulted_at.is_none() && !h.context.is_lost())
                        .map(|(op, h)| (*op, h.key))
                };
                let Some((op, key)) = victim else { continue };
                let pid = observer
                    .holder_pid(&mut conn, key)
                    .await
                    .expect("a registered holder is in pg_locks");
                let done: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 5000)")
                    .bind(pid)
                    .fetch_one(&mut conn)
                    .await
                    .expect("terminate");
                assert!(done, "session {pid} did not end");
                let mut holders = run.holders.lock().expect("holders");
                let holding = holders.get_mut(&op).expect("still registered");
                run.fault(holding);
                faults += 1;
            }
            faults
        });
        (task, done)
    };

    within(RUN_LIMIT, "the workers", async {
        for worker in workers {
            worker.await.expect("worker");
        }
    })
    .await;
    injector.1.store(true, std::sync::atomic::Ordering::Relaxed);
    let faults = within(RUN_LIMIT, "the injector", injector.0)
        .await
        .expect("injector");

    let report = run.report();
    let notices = run.notices.lock().expect("notices").clone();
    let slowest = notices.iter().max().copied().unwrap_or_default();
    eprintln!(
        "terminate: {WORKERS} clients × {CYCLES} cycles on {NAMES} names, {faults} sessions \
         terminated, slowest notice {slowest:?} (bound {:?}), {} acquire errors: {}",
        TTL / 3 + NOTICE_SLACK,
        run.acquire_errors.lock().expect("errors").len(),
        report.summary()
    );
    report.assert_ok();
    assert!(faults >= 3, "only {faults} faults were injected");
    assert_eq!(notices.len(), faults, "every victim renewed and noticed");
    assert!(
        slowest <= TTL / 3 + NOTICE_SLACK,
        "a renewing holder learned of its loss after {slowest:?}"
    );
    assert_eq!(
        run.faulted_releases.lock().expect("list").len(),
        faults,
        "every victim's release said Lost"
    );
    // Reconnecting after terminations can leave a waiter briefly without a
    // connection at the end of its wait, reported as a full pool (about one
    // run in six on a loaded 2-core machine); nothing else may fail.
    let errors = run.acquire_errors.lock().expect("errors").clone();
    assert!(
        errors.iter().all(|e| e.contains("pool exhausted")),
        "acquire errors: {errors:?}"
    );
    assert!(errors.len() <= 3, "acquire errors: {errors:?}");
    // Nothing leaked: every lock gone, at most the pool's connections open.
    assert_eq!(locks.held_locks(), 0);
    let (sessions, _) = observer
        .settled(i64::from(max_connections) + 1, Duration::from_secs(5))
        .await;
    drop((locks, run));
    observer.settled(0, Duration::from_secs(5)).await;
    eprintln!(
        "terminate: {sessions} sessions before the client was dropped, 0 after; took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_or_killed_server_loses_every_holder_and_new_acquires_work() {
    const WORKERS: usize = 6;
    const CYCLES: usize = 40;
    const NAMES: usize = 3;
    let server = blocking(PgServer::start)
        .await
        .expect("a server of our own");
    let url = server.url();
    let server = Arc::new(Mutex::new(server));
    let app = app_name("restart");
    let max_connections = WORKERS as u32;
    let locks = PgLockOptions::new()
        .application_name(&app)
        .max_connections(max_connections)
        .connect(&url)
        .await
        .expect("connect");
    let observer = Observer {
        url: url.clone(),
        app: app.clone(),
    };
    let run = Run::new(locks.clone());
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(run.clone().worker(w, CYCLES, NAMES)))
        .collect();

    // Two faults, 300 ms apart: a clean restart, then a crash and restart.
    let mut faults = Vec::new();
    for fault in ["restart", "kill"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _exclusive = run.gate.write().await;
        let victims = {
            let mut holders = run.holders.lock().expect("holders");
            for holding in holders.values_mut().filter(|h| h.faulted_at.is_none()) {
                run.fault(holding);
            }
            holders.len()
        };
        let handle = server.clone();
        let began = Instant::now();
        blocking(move || {
            let mut server = handle.lock().expect("server");
            match fault {
                "restart" => server.restart(),
                _ => server.kill().and_then(|()| server.restart()),
            }
        })
        .await
        .unwrap_or_else(|err| panic!("{fault}: {err}"));
        faults.push((fault, victims, began.elapsed()));
    }
    let grants_before_end = run.history.check().counts.acquired;

    within(RUN_LIMIT, "the workers", async {
        for worker in workers {
            worker.await.expect("worker");
        }
    })
    .await;

    let report = run.report();
    let notices = run.notices.lock().expect("notices").clone();
    let slowest = notices.iter().max().copied().unwrap_or_default();
    let longest_outage = faults.iter().map(|f| f.2).max().unwrap_or_default();
    eprintln!(
        "restart: {WORKERS} clients × {CYCLES} cycles on {NAMES} names, faults {faults:?}, \
         {} victims noticed, slowest {slowest:?}; acquire errors {}: {}",
        notices.len(),
        run.acquire_errors.lock().expect("errors").len(),
        report.summary()
    );
    report.assert_ok();
    assert!(
        slowest <= longest_outage + TTL / 3 + NOTICE_SLACK,
        "a renewing holder learned of the restart after {slowest:?}"
    );
    // New acquires work after the faults.
    assert!(
        report.counts.acquired > grants_before_end,
        "no lock was granted after the last fault"
    );
    let after = run
        .history
        .ops()
        .iter()
        .rev()
        .take(WORKERS * 5)
        .filter(|op| op.acquire_outcome == Some(Outcome::Ok))
        .count();
    assert!(after > 0, "the last acquires of the run all failed");
    for err in run.acquire_errors.lock().expect("errors").iter() {
        assert!(
            err.contains("cannot reach"),
            "only connection errors are expected while the server restarts: {err}"
        );
    }
    assert_eq!(locks.held_locks(), 0);
    observer
        .settled(i64::from(max_connections) + 1, Duration::from_secs(5))
        .await;
    drop((locks, run));
    observer.settled(0, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_exhausted_by_held_locks_fails_clearly_and_leaks_nothing() {
    const WORKERS: usize = 6;
    const CYCLES: usize = 12;
    const POOL: u32 = 3;
    let url = blocking(distlock_testkit::database_url)
        .await
        .expect("a database");
    let app = app_name("exhaust");
    let locks = PgLockOptions::new()
        .application_name(&app)
        .max_connections(POOL)
        .wait_strategy(distlock::postgres::WaitStrategy::Poll)
        .connect(&url)
        .await
        .expect("connect");
    let observer = Observer {
        url: url.clone(),
        app: app.clone(),
    };
    // A warm pool: its connections open, as in a running service (a wait
    // shorter than a connect would otherwise end in closing the connection
    // being opened, again and again).
    let warm_names: Vec<String> = (0..POOL).map(|i| format!("warm:{i}")).collect();
    let warm: Vec<_> = futures::future::join_all(
        warm_names
            .iter()
            .map(|name| locks.acquire(name, TTL, Duration::from_secs(5))),
    )
    .await
    .into_iter()
    .map(|guard| guard.expect("warm-up"))
    .collect();
    for guard in warm {
        guard.release().await.expect("ours");
    }
    assert_eq!(locks.idle_connections(), POOL as usize);
    let history = History::new();
    let exhausted = Arc::new(Mutex::new(0usize));
    // The most connections a refusal found pinned by held locks.
    let pinned = Arc::new(AtomicUsize::new(0));
    let peak_sessions = Arc::new(Mutex::new(0i64));
    let mut workers = Vec::new();
    for worker in 0..WORKERS {
        let (locks, history, exhausted, pinned) = (
            locks.clone(),
            history.clone(),
            exhausted.clone(),
            pinned.clone(),
        );
        workers.push(tokio::spawn(async move {
            for cycle in 0..CYCLES {
                // Names of its own: the contention is for connections.
                let name = format!("w{worker}:{cycle}");
                let op = history.invoke_acquire(worker, &name);
                // Held longer than others wait: the pool runs out.
                match locks.acquire(&name, TTL, Duration::from_millis(30)).await {
                    Ok(guard) => {
                        history.acquired(op, &guard);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        history.invoke_release(op, guard.valid_until());
                        let result = guard.release().await;
                        history.released(op, Outcome::of_release(&result));
                        result.expect("released");
                    }
                    // The wait ended while a connection came free and its
                    // statement ran: a plain timeout (nothing was taken:
                    // the cancelled attempt's connection is closed).
                    Err(LockError::Timeout) => history.acquire_failed(op),
                    Err(err) => {
                        let details = err
                            .get_ref()
                            .and_then(|s| s.downcast_ref::<PoolExhausted>())
                            .unwrap_or_else(|| panic!("not a pool exhaustion: {err}"));
                        assert_eq!(details.max_connections, POOL);
                        assert!(details.held_by_locks <= POOL as usize);
                        pinned.fetch_max(details.held_by_locks, Ordering::Relaxed);
                        assert!(err.to_string().contains("pool exhausted"), "{err}");
                        // Certain: nothing was sent to the server.
                        history.acquire_failed(op);
                        *exhausted.lock().expect("count") += 1;
                    }
                }
            }
        }));
    }
    let sampler = {
        let (observer, peak) = (
            Observer {
                url: url.clone(),
                app: app.clone(),
            },
            peak_sessions.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (sessions, _) = observer.counts().await;
                {
                    let mut peak = peak.lock().expect("peak");
                    *peak = (*peak).max(sessions);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    within(RUN_LIMIT, "the workers", async {
        for worker in workers {
            worker.await.expect("worker");
        }
    })
    .await;
    sampler.abort();
    let report = history.check();
    let exhausted = *exhausted.lock().expect("count");
    let peak = *peak_sessions.lock().expect("peak");
    eprintln!(
        "exhaustion: {WORKERS} clients × {CYCLES} cycles on a pool of {POOL}: {exhausted} \
         refused as exhausted, at most {peak} sessions: {}",
        report.summary()
    );
    report.assert_ok();
    assert!(exhausted > 0, "the pool never ran out");
    assert!(
        pinned.load(Ordering::Relaxed) > 0,
        "no refusal found connections pinned by held locks"
    );
    // (An attempt whose statement is still running when its wait ends
    // closes its connection, and on a loaded machine that can keep the
    // pool cold for a while; some grants are all this test needs.)
    assert!(
        report.counts.acquired >= POOL as usize,
        "only {} of {} acquires got a connection",
        report.counts.acquired,
        WORKERS * CYCLES
    );
    // A connection the client closed (a cancelled attempt's) lingers in
    // pg_stat_activity for a moment while its backend exits, so a sample
    // may catch it next to its replacement; the settled count below is exact.
    assert!(
        peak <= i64::from(POOL) + 2,
        "{peak} sessions for a pool of {POOL}"
    );
    assert_eq!(locks.held_locks(), 0);
    assert!(locks.idle_connections() <= POOL as usize);
    observer
        .settled(i64::from(POOL), Duration::from_secs(5))
        .await;
    drop(locks);
    observer.settled(0, Duration::from_secs(5)).await;
}

/// What "honoured" means here. PostgreSQL's `statement_timeout` bounds one
/// statement; `lock_timeout` bounds one wait for a lock inside a statement.
/// Session locks never wait inside a statement (`pg_try_advisory_lock`;
/// waiting is client-side, between statements) and each statement is one
/// short round trip, so a server, database, role or URL setting of either —
/// however short — breaks nothing, and the time a lock is *held* (idle
/// between statements) is not statement time. Transaction locks that wait
/// do wait inside a statement: there the shorter of the caller's `wait`
/// and the session's `statement_timeout` wins, and either ends as
/// `LockError::Timeout` with the transaction still usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_and_lock_timeout_are_honoured() {
    let url = blocking(distlock_testkit::database_url)
        .await
        .expect("a database");
    let mut admin = PgConnection::connect(&url).await.expect("admin");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut admin)
        .await
        .expect("name");
    // Create the fencing sequence before the limits apply.
    let setup = PgAdvisoryLock::connect(&url).await.expect("connect");
    setup
        .try_acquire("setup", TTL)
        .await
        .expect("try")
        .expect("free")
        .release()
        .await
        .expect("ours");
    drop(setup);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER DATABASE \"{database}\" SET statement_timeout = '150ms'; \
         ALTER DATABASE \"{database}\" SET lock_timeout = '20ms'"
    )))
    .execute(&mut admin)
    .await
    .expect("set the limits");

    let history = History::new();
    let first = PgAdvisoryLock::connect(&url).await.expect("connect");
    let second = PgAdvisoryLock::connect(&url).await.expect("connect");
    let mut check: PgConnection = PgConnection::connect(&url).await.expect("check");
    let limits: (String, String) = sqlx::query_as(
        "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')",
    )
    .fetch_one(&mut check)
    .await
    .expect("limits");
    assert_eq!(limits, ("150ms".to_owned(), "20ms".to_owned()));

    // Held (idle) for longer than statement_timeout, extended, waited for
    // by a second client for longer than both limits.
    let mut held = history
        .acquire(0, &first, "seat:1", Duration::from_secs(5), Duration::ZERO)
        .await
        .expect("free");
    let waiter = {
        let (history, second) = (history.clone(), second.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let held = history
                .acquire(
                    1,
                    &second,
                    "seat:1",
                    Duration::from_secs(5),
                    Duration::from_secs(5),
                )
                .await;
            (held, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    held.guard_mut()
        .extend(Duration::from_secs(5))
        .await
        .expect("extend after idling past statement_timeout");
    tokio::time::sleep(Duration::from_millis(200)).await;
    held.release().await.expect("ours");
    let (next, waited) = within(Duration::from_secs(10), "the waiter", waiter)
        .await
        .expect("task");
    let next = next.expect("the waiter gets the lock despite lock_timeout");
    assert!(waited >= Duration::from_millis(500), "waited {waited:?}");

    // A transaction lock's wait is cut by statement_timeout: Timeout, and
    // the transaction stays usable.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .expect("pool");
    let mut tx = pool.begin().await.expect("begin");
    let started = Instant::now();
    let err = xact::lock(&mut tx, "seat:1", Duration::from_secs(5))
        .await
        .expect_err("held by the session lock");
    let took = started.elapsed();
    assert!(matches!(err, LockError::Timeout), "{err:?}");
    assert!(
        took < Duration::from_secs(2),
        "statement_timeout did not cut the wait: {took:?}"
    );
    let timeout: String = sqlx::query_scalar("SHOW lock_timeout")
        .fetch_one(&mut *tx)
        .await
        .expect("usable");
    assert_eq!(timeout, "20ms", "the caller's lock_timeout is back");
    tx.rollback().await.expect("rollback");
    next.release().await.expect("ours");

    let report = history.check();
    eprintln!("timeouts: {}", report.summary());
    report.assert_ok();
    assert_eq!(report.counts.acquired, 2);
    // This test's database only: pg_locks shows the whole server, where
    // other tests of this file (the partition nemesis) hold locks meanwhile.
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&mut check)
    .await
    .expect("count");
    assert_eq!(left, 0);
}

/// The standing partition nemesis (see `tests/it/nemesis.rs`): holders cut off in
/// the kernel for longer than the TTL, so that only the server's timers —
/// `idle_session_timeout`, and TCP's, which the TTL bounds — can free their
/// locks; no one may be granted a lock a partitioned holder's guard still
/// counts on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_holders_are_never_overlapped() {
    let started = std::time::Instant::now();
    let url = blocking(distlock_testkit::database_url)
        .await
        .expect("a database");
    let rest = url.split_once('@').expect("user@host").1;
    let (addr, database) = rest.split_once('/').expect("host/db");
    let port: u16 = addr
        .rsplit_once(':')
        .expect("host:port")
        .1
        .parse()
        .expect("a port");
    let app = app_name("partition");
    // Keepalives that give up on a silent client after about 2 s, inside
    // the TTL: the server must still keep a holder's session for the TTL.
    let ttl = Duration::from_secs(3);
    let keepalives = TcpKeepalives {
        idle: Duration::from_secs(1),
        interval: Duration::from_secs(1),
        count: 1,
    };
    let plan = nemesis::Plan {
        clients: 4,
        names: 2,
        ttl,
        partitions: 3,
        partition_for: ttl * 2 + Duration::from_millis(500),
        call_limit: ttl * 3,
    };
    let outcomes = nemesis::run(plan, port, |alias| {
        let (app, database) = (app.clone(), database.to_owned());
        async move {
            PgLockOptions::new()
                .application_name(&app)
                .max_connections(4)
                .connect_timeout(Duration::from_secs(1))
                .pool_timeout(Duration::from_secs(1))
                .query_timeout(Duration::from_millis(500))
                .tcp_keepalives(Some(keepalives))
                .connect(&format!("postgres://postgres@127.0.0.1:{alias}/{database}"))
                .await
                .expect("connect through an alias port")
        }
    })
    .await;
    outcomes.assert_ok(&plan, started);
    // The server let go of everything: no session of the clients holds a lock.
    let observer = Observer { url, app };
    observer.settled(0, ttl * 4).await;
}
