//! Cancellation at random points, on every backend (MemoryLock as the
//! reference, Redis, PostgreSQL): many tasks whose acquires, extends and
//! releases are cut short by tiny random deadlines (`tokio::time::timeout`)
//! or lose a `select!` against a random sleep, as deadpool's cancellation
//! tests do. Afterwards: the history has no two definitely-held intervals of
//! one name overlapping, and — once every guard is gone and the background
//! releases have settled (awaited by polling the server, bounded) — no lock
//! is left and no connection leaked.
//!
//! The TTL is long (30 s), so a lock that a cancellation left behind would
//! still be there when the end state is checked, not hidden by its expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use distlock::postgres::sqlx::{self, Connection as _, PgConnection};
use distlock::postgres::{PgLockOptions, WaitStrategy};
use distlock::redis::{RedisLock, redis};
use distlock::{DistributedLock, MemoryLock};
use distlock_testkit::{History, Outcome, Report};
use rand::Rng as _;

const TTL: Duration = Duration::from_secs(30);
const WORKERS: usize = 8;
const ROUNDS: usize = 60;
const NAMES: usize = 3;
const RUN_LIMIT: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(10);

async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// What was cut short, for the closing line.
#[derive(Default)]
struct Cuts {
    acquires: AtomicUsize,
    extends: AtomicUsize,
    releases: AtomicUsize,
    dropped: AtomicUsize,
}

impl Cuts {
    fn summary(&self) -> String {
        format!(
            "cancelled {} acquires, {} extends, {} releases; dropped {} guards",
            self.acquires.load(Ordering::Relaxed),
            self.extends.load(Ordering::Relaxed),
            self.releases.load(Ordering::Relaxed),
            self.dropped.load(Ordering::Relaxed)
        )
    }
}

/// A random deadline between 5 µs and `max_us` µs, spread evenly over the
/// orders of magnitude: before the first await completes, mid-round-trip,
/// or after the call is done.
fn deadline(max_us: u64) -> Duration {
    let exponent = rand::rng().random_range(5f64.ln()..=(max_us.max(6) as f64).ln());
    Duration::from_micros(exponent.exp() as u64)
}

/// Runs `future`, and in three cases out of five cuts it short: under a
/// random `timeout`, or when a random sleep wins a `select!` — the two ways
/// callers cancel. `None` when it was cut short.
async fn maybe_cut<F: Future>(max_us: u64, future: F) -> Option<F::Output> {
    let (cut, by_timeout) = {
        let mut rng = rand::rng();
        (rng.random_bool(0.6), rng.random_bool(0.5))
    };
    let limit = deadline(max_us);
    if !cut {
        Some(future.await)
    } else if by_timeout {
        tokio::time::timeout(limit, future).await.ok()
    } else {
        tokio::select! {
            output = future => Some(output),
            () = tokio::time::sleep(limit) => None,
        }
    }
}

/// One worker: acquire (maybe cut), hold a moment, maybe extend (maybe
/// cut), then release (maybe cut) or just drop the guard.
async fn worker(
    locks: Arc<dyn DistributedLock>,
    history: History,
    cuts: Arc<Cuts>,
    worker: usize,
    max_us: u64,
) {
    for _ in 0..ROUNDS {
        let name = format!("seat:{}", rand::rng().random_range(0..NAMES));
        let op = history.invoke_acquire(worker, &name);
        let wait = Duration::from_micros(rand::rng().random_range(0..=max_us * 10));
        let acquired = maybe_cut(max_us * 4, locks.acquire(&name, TTL, wait)).await;
        let mut guard = match acquired {
            None => {
                cuts.acquires.fetch_add(1, Ordering::Relaxed);
                history.acquire_unknown(op);
                continue;
            }
            Some(result) => {
                history.record_acquire(op, &result);
                match result {
                    Ok(guard) => guard,
                    // With every connection busy (attempts in flight,
                    // background releases of dropped guards) a short wait
                    // ends as a full pool; the end state shows none leaked.
                    Err(err) => {
                        assert!(
                            err.is_timeout() || err.to_string().contains("pool exhausted"),
                            "worker {worker}: acquire: {err}"
                        );
                        continue;
                    }
                }
            }
        };
        let nap = Duration::from_micros(rand::rng().random_range(0..500));
        tokio::time::sleep(nap).await;
        let extend = rand::rng().random_bool(0.3);
        if extend {
            match maybe_cut(max_us, guard.extend(TTL)).await {
                None => {
                    cuts.extends.fetch_add(1, Ordering::Relaxed);
                }
                Some(result) => {
                    if let Err(err) = result {
                        assert!(err.is_lost(), "worker {worker}: extend: {err}");
                    }
                }
            }
        }
        // The holder goes on working: a cancelled extend must not have
        // given the lock up behind its back.
        let nap = Duration::from_micros(rand::rng().random_range(0..2000));
        tokio::time::sleep(nap).await;
        history.invoke_release(op, guard.valid_until());
        let just_drop = rand::rng().random_bool(0.2);
        if just_drop {
            cuts.dropped.fetch_add(1, Ordering::Relaxed);
            drop(guard);
            history.released(op, Outcome::Unknown);
            continue;
        }
        match maybe_cut(max_us, guard.release()).await {
            None => {
                cuts.releases.fetch_add(1, Ordering::Relaxed);
                history.released(op, Outcome::Unknown);
            }
            Some(result) => history.released(op, Outcome::of_release(&result)),
        }
    }
}

/// Runs the workers and checks the history.
async fn run(backend: &str, locks: Arc<dyn DistributedLock>, max_us: u64) -> Report {
    let history = History::new();
    let cuts = Arc::new(Cuts::default());
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            tokio::spawn(worker(
                locks.clone(),
                history.clone(),
                cuts.clone(),
                w,
                max_us,
            ))
        })
        .collect();
    within(RUN_LIMIT, "the workers", async {
        for task in tasks {
            task.await.expect("worker");
        }
    })
    .await;
    let report = history.check();
    eprintln!(
        "cancellation on {backend}: {WORKERS} clients × {ROUNDS} rounds on {NAMES} names in \
         {:?}; {}: {}",
        started.elapsed(),
        cuts.summary(),
        report.summary()
    );
    report.assert_ok();
    let cut = cuts.acquires.load(Ordering::Relaxed)
        + cuts.releases.load(Ordering::Relaxed)
        + cuts.extends.load(Ordering::Relaxed);
    assert!(cut > 0, "nothing was cancelled");
    assert!(report.counts.acquired > 0, "nothing was acquired");
    report
}

/// Polls `check` until it holds, failing after `limit`.
async fn settled<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let outcome = check().await;
        match outcome {
            Ok(()) => return,
            Err(state) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not settled after {limit:?}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_reference() {
    let locks = Arc::new(MemoryLock::new());
    run("memory", locks.clone(), 300).await;
    settled(SETTLE, "memory locks", || {
        let held = locks.held();
        async move {
            if held == 0 {
                Ok(())
            } else {
                Err(format!("{held} locks held"))
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis() {
    let url = tokio::task::spawn_blocking(distlock_testkit::redis_url)
        .await
        .expect("task")
        .expect("a Redis server");
    let prefix = format!("cancel{:08x}:", rand::random::<u32>());
    let locks = RedisLock::options()
        .prefix(&prefix)
        .connect(&url)
        .await
        .expect("connect");
    run("redis", Arc::new(locks.clone()), 1500).await;
    let mut conn = locks.connection().await.expect("a connection of our own");
    settled(SETTLE, "redis lock keys", || {
        let mut conn = conn.clone();
        let pattern = format!("{prefix}*");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            // Fencing counters stay by design; lock keys must not.
            let left: Vec<_> = keys.iter().filter(|k| !k.ends_with(":fence")).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("lock keys left: {left:?}"))
            }
        }
    })
    .await;
    let _: () = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("still answering");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    const POOL: u32 = 6;
    let url = tokio::task::spawn_blocking(distlock_testkit::database_url)
        .await
        .expect("task")
        .expect("a database");
    let app = format!("cancel-{:08x}", rand::random::<u32>());
    for strategy in [
        WaitStrategy::Queue,
        WaitStrategy::Notify,
        WaitStrategy::Poll,
    ] {
        let locks = PgLockOptions::new()
            .application_name(&app)
            .max_connections(POOL)
            .wait_strategy(strategy)
            .connect(&url)
            .await
            .expect("connect");
        // The fencing sequence exists before the first cancellation.
        locks
            .acquire("warm-up", TTL, Duration::ZERO)
            .await
            .expect("free")
            .release()
            .await
            .expect("ours");
        run(
            &format!("postgres ({strategy:?})"),
            Arc::new(locks.clone()),
            8000,
        )
        .await;
        // The listener and the interest session, if any, are two more.
        let max_sessions = i64::from(POOL) + 2 * i64::from(strategy != WaitStrategy::Poll);
        settled(SETTLE, "postgres locks and sessions", || {
            let (url, app) = (url.clone(), app.clone());
            let (held, idle) = (locks.held_locks(), locks.idle_connections());
            async move {
                let mut observer = PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                let (sessions, advisory): (i64, i64) = sqlx::query_as(
                    "SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name \
                             LIKE $1 || '%'), \
                            (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' \
                             AND database = (SELECT oid FROM pg_database \
                                             WHERE datname = current_database()))",
                )
                .bind(&app)
                .fetch_one(&mut observer)
                .await
                .map_err(|e| e.to_string())?;
                if held == 0 && advisory == 0 && sessions <= max_sessions && idle <= POOL as usize {
                    Ok(())
                } else {
                    Err(format!(
                        "{held} held by the client, {advisory} advisory locks and {sessions} \
                         sessions on the server, {idle} idle in the pool"
                    ))
                }
            }
        })
        .await;
        drop(locks);
        settled(SETTLE, "postgres sessions after the client", || {
            let (url, app) = (url.clone(), app.clone());
            async move {
                let mut observer = PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                let sessions: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1 || '%'",
                )
                .bind(&app)
                .fetch_one(&mut observer)
                .await
                .map_err(|e| e.to_string())?;
                if sessions == 0 {
                    Ok(())
                } else {
                    Err(format!("{sessions} sessions left"))
                }
            }
        })
        .await;
    }
}
