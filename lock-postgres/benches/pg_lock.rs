//! PostgreSQL advisory locks through distlock, next to raw sqlx doing the
//! same statements, and hand-off latency of the two waiting strategies.
//!
//! Groups:
//! - `pg/cycle_1_task`: one acquire + release, uncontended, vs raw
//!   `pg_try_advisory_lock` + `pg_advisory_unlock` on one held connection.
//! - `pg/cycle_16_tasks`: 16 tasks on distinct names (throughput), vs 16 raw
//!   connections.
//! - `pg/handoff`: N waiters (each its own client, as separate processes
//!   would be) on one name, each holding it ~1 ms; time from one holder's
//!   release to the next holder's grant. `notify` (LISTEN/NOTIFY wake-ups,
//!   the default) vs `poll` (jittered backoff only). A summary with the
//!   median and the longest hand-off and wait is printed to stderr.
//!
//! Run: `cargo bench -p distlock-postgres --bench pg_lock` (full), or with
//! `DISTLOCK_BENCH_QUICK=1` for a smoke run of a few seconds;
//! `DISTLOCK_BENCH_BUSY=1` keeps the CPUs awake (see [`Spinners`]). The
//! server is a throwaway PostgreSQL from distlock-testkit (fsync off).

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use distlock_postgres::sqlx::{self, Connection, PgConnection};
use distlock_postgres::{DistributedLock, PgAdvisoryLock, PgLockOptions, WaitStrategy};
use distlock_testkit::PgServer;

const TTL: Duration = Duration::from_secs(30);
const HOLD: Duration = Duration::from_millis(1);

/// Keeps both CPUs busy with lowest-priority spinning threads while the
/// benchmarks run (`DISTLOCK_BENCH_BUSY=1`): on a VM, an idle vCPU takes
/// tens of microseconds to wake, which otherwise dominates every round trip
/// and hides what the statements themselves cost.
struct Spinners {
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Spinners {
    fn start_if_asked() -> Option<Self> {
        let asked =
            std::env::var_os("DISTLOCK_BENCH_BUSY").is_some_and(|v| !v.is_empty() && v != "0");
        if !asked {
            return None;
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    // SAFETY: setpriority on the calling thread (tid) with a
                    // valid nice value; it only lowers this thread's priority.
                    unsafe {
                        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
                    }
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        eprintln!("DISTLOCK_BENCH_BUSY: {cpus} nice-19 spinning threads keep the CPUs awake");
        Some(Spinners { stop, threads })
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn quick() -> bool {
    std::env::var_os("DISTLOCK_BENCH_QUICK").is_some_and(|v| !v.is_empty() && v != "0")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

struct Bench {
    rt: tokio::runtime::Runtime,
    url: String,
    _server: PgServer,
}

fn setup() -> Bench {
    let server = PgServer::start_with(distlock_testkit::PgOptions::new().max_connections(200))
        .expect("a throwaway PostgreSQL for the benchmarks");
    let url = server.fresh_database().expect("a database");
    Bench {
        rt: runtime(),
        url,
        _server: server,
    }
}

async fn client(url: &str, strategy: WaitStrategy, connections: u32) -> PgAdvisoryLock {
    PgLockOptions::new()
        .max_connections(connections)
        .wait_strategy(strategy)
        .connect(url)
        .await
        .expect("connect")
}

fn cycle_1_task(c: &mut Criterion, bench: &Bench) {
    let rt = &bench.rt;
    let mut group = c.benchmark_group("pg/cycle_1_task");
    group.throughput(Throughput::Elements(1));
    if quick() {
        group.warm_up_time(Duration::from_millis(100));
        group.measurement_time(Duration::from_millis(500));
        group.sample_size(10);
    }

    let raw = rt
        .block_on(PgConnection::connect(&bench.url))
        .expect("raw connection");
    let raw = Arc::new(tokio::sync::Mutex::new(raw));
    group.bench_function(BenchmarkId::new("raw_sqlx", "try_lock+unlock"), |b| {
        b.to_async(rt).iter(|| {
            let raw = Arc::clone(&raw);
            async move {
                let mut raw = raw.lock().await;
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(42_i64)
                    .fetch_one(&mut *raw)
                    .await
                    .expect("try lock");
                assert!(locked);
                let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                    .bind(42_i64)
                    .fetch_one(&mut *raw)
                    .await
                    .expect("unlock");
                assert!(unlocked);
            }
        });
    });

    for strategy in [WaitStrategy::Notify, WaitStrategy::Poll] {
        let locks = rt.block_on(client(&bench.url, strategy, 4));
        let id = format!("distlock_{strategy:?}").to_lowercase();
        group.bench_function(BenchmarkId::new(id, "acquire+release"), |b| {
            b.to_async(rt).iter(|| {
                let locks = locks.clone();
                async move {
                    let guard = locks
                        .acquire("bench:cycle", TTL, Duration::ZERO)
                        .await
                        .expect("free");
                    black_box(guard.fencing_token());
                    guard.release().await.expect("still ours");
                }
            });
        });
    }
    group.finish();
}

fn cycle_16_tasks(c: &mut Criterion, bench: &Bench) {
    const TASKS: usize = 16;
    let rt = &bench.rt;
    let mut group = c.benchmark_group("pg/cycle_16_tasks");
    group.throughput(Throughput::Elements(TASKS as u64));
    if quick() {
        group.warm_up_time(Duration::from_millis(100));
        group.measurement_time(Duration::from_millis(500));
        group.sample_size(10);
    }

    let raws: Vec<Arc<tokio::sync::Mutex<PgConnection>>> = rt.block_on(async {
        let mut raws = Vec::new();
        for _ in 0..TASKS {
            let conn = PgConnection::connect(&bench.url)
                .await
                .expect("raw connection");
            raws.push(Arc::new(tokio::sync::Mutex::new(conn)));
        }
        raws
    });
    group.bench_function(BenchmarkId::new("raw_sqlx", TASKS), |b| {
        b.to_async(rt).iter_custom(|iters| {
            let raws = raws.clone();
            async move {
                let started = Instant::now();
                let tasks: Vec<_> = raws
                    .into_iter()
                    .enumerate()
                    .map(|(i, conn)| {
                        tokio::spawn(async move {
                            let mut conn = conn.lock().await;
                            for _ in 0..iters {
                                let key = 1000 + i as i64;
                                let _: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                                    .bind(key)
                                    .fetch_one(&mut *conn)
                                    .await
                                    .expect("try lock");
                                let _: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                                    .bind(key)
                                    .fetch_one(&mut *conn)
                                    .await
                                    .expect("unlock");
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
                started.elapsed()
            }
        });
    });

    for strategy in [WaitStrategy::Notify, WaitStrategy::Poll] {
        let locks = rt.block_on(client(&bench.url, strategy, TASKS as u32 + 4));
        let id = format!("distlock_{strategy:?}").to_lowercase();
        group.bench_function(BenchmarkId::new(id, TASKS), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let locks = locks.clone();
                async move {
                    let started = Instant::now();
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|i| {
                            let locks = locks.clone();
                            tokio::spawn(async move {
                                let name = format!("bench:distinct:{i}");
                                for _ in 0..iters {
                                    let guard = locks
                                        .acquire(&name, TTL, Duration::ZERO)
                                        .await
                                        .expect("free");
                                    guard.release().await.expect("still ours");
                                }
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                    started.elapsed()
                }
            });
        });
    }
    group.finish();
}

/// What one hand-off run observed.
#[derive(Default)]
struct Handoffs {
    /// Release → next grant.
    gaps: Vec<Duration>,
    /// Time each acquire spent waiting.
    waits: Vec<Duration>,
}

/// The last release: when, and by which party.
type LastRelease = Option<(Instant, usize)>;

/// `clients.len()` parties contend for one name until `handoffs` grants
/// have gone to a party other than the one that released last. Each holds
/// the lock for [`HOLD`]; after releasing, a party steps back until another
/// has been granted the lock (at most 1 s), so every release has the other
/// `clients.len() − 1` parties waiting.
async fn contend(clients: &[PgAdvisoryLock], name: &str, handoffs: usize) -> Handoffs {
    let state: Arc<Mutex<(LastRelease, Handoffs)>> = Arc::default();
    // (grants so far, done)
    let (progress, _) = tokio::sync::watch::channel((0_u64, false));
    let progress = Arc::new(progress);
    let tasks: Vec<_> = clients
        .iter()
        .cloned()
        .enumerate()
        .map(|(party, locks)| {
            let (state, progress) = (state.clone(), progress.clone());
            let name = name.to_owned();
            tokio::spawn(async move {
                while !progress.borrow().1 {
                    let asked = Instant::now();
                    let guard = match locks.acquire(&name, TTL, Duration::from_secs(10)).await {
                        Ok(guard) => guard,
                        Err(err) => panic!("acquire under contention failed: {err}"),
                    };
                    let granted = Instant::now();
                    let finished = {
                        let mut state = state.lock().expect("lock");
                        if let Some((released, by)) = state.0.take()
                            && by != party
                        {
                            state
                                .1
                                .gaps
                                .push(granted.saturating_duration_since(released));
                            state.1.waits.push(granted - asked);
                        }
                        state.1.gaps.len() >= handoffs
                    };
                    let mut mine = 0;
                    progress.send_modify(|(count, done)| {
                        *count += 1;
                        mine = *count;
                        *done |= finished;
                    });
                    tokio::time::sleep(HOLD).await;
                    // Stamped before the release: the gap includes the unlock round trip.
                    state.lock().expect("lock").0 = Some((Instant::now(), party));
                    guard.release().await.expect("still ours");
                    let mut next = progress.subscribe();
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        next.wait_for(|(count, done)| *count > mine || *done),
                    )
                    .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("contender");
    }
    let state = Arc::try_unwrap(state).ok().expect("all tasks done");
    state.into_inner().expect("lock").1
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

fn handoff(c: &mut Criterion, bench: &Bench) {
    let rt = &bench.rt;
    let mut group = c.benchmark_group("pg/handoff");
    group.sample_size(10);
    if quick() {
        group.warm_up_time(Duration::from_millis(100));
        group.measurement_time(Duration::from_millis(500));
    } else {
        group.measurement_time(Duration::from_secs(5));
    }
    let mut summary = Vec::new();
    for waiters in [2usize, 8] {
        for strategy in [WaitStrategy::Notify, WaitStrategy::Poll] {
            let clients: Vec<PgAdvisoryLock> = rt.block_on(async {
                let mut clients = Vec::new();
                // The holder and its waiters, each a client of its own.
                for _ in 0..=waiters {
                    clients.push(client(&bench.url, strategy, 2).await);
                }
                clients
            });
            let id = format!("{strategy:?}").to_lowercase();
            let all = Arc::new(Mutex::new(Handoffs::default()));
            let name = format!("bench:handoff:{waiters}:{id}");
            group.bench_function(
                BenchmarkId::new(id.clone(), format!("{waiters}_waiters")),
                |b| {
                    b.to_async(rt).iter_custom(|iters| {
                        let (clients, all, name) = (clients.clone(), all.clone(), name.clone());
                        async move {
                            let seen = contend(&clients, &name, iters as usize).await;
                            let total: Duration = seen.gaps.iter().take(iters as usize).sum();
                            let mut all = all.lock().expect("lock");
                            all.gaps.extend(seen.gaps);
                            all.waits.extend(seen.waits);
                            total
                        }
                    });
                },
            );
            let mut all = Arc::try_unwrap(all)
                .ok()
                .expect("done")
                .into_inner()
                .expect("lock");
            all.gaps.sort();
            all.waits.sort();
            summary.push(format!(
                "handoff {id:>6} {waiters} waiters: release→grant median {:?} p99 {:?} max {:?}; \
                 wait median {:?} max {:?} ({} hand-offs)",
                percentile(&all.gaps, 0.5),
                percentile(&all.gaps, 0.99),
                all.gaps.last().copied().unwrap_or_default(),
                percentile(&all.waits, 0.5),
                all.waits.last().copied().unwrap_or_default(),
                all.gaps.len()
            ));
        }
    }
    group.finish();
    for line in summary {
        eprintln!("{line}");
    }
}

fn benches(c: &mut Criterion) {
    let bench = setup();
    let _spinners = Spinners::start_if_asked();
    cycle_1_task(c, &bench);
    cycle_16_tasks(c, &bench);
    handoff(c, &bench);
}

criterion_group!(pg, benches);
criterion_main!(pg);
