//! `RedisLock` against the raw redis-rs client doing the same commands, on a
//! throwaway redis-server, in one run.
//!
//! - `redis_cycle/1_task`: acquire + release, one at a time. Raw: `SET NX PX`
//!   and an `EVALSHA` compare-delete on a `ConnectionManager`; `distlock` and,
//!   to show what the subscriber connection costs, `distlock_no_wakeups`.
//! - `redis_cycle/64_tasks`: 64 concurrent cycles on distinct names, on one
//!   shared connection (one iteration = 64 cycles).
//! - hand-off (printed after Criterion): 2, 8 and 32 tasks on one name, each
//!   holding it 1 ms; the time from a holder's release call to the next
//!   holder's acquire, and the longest any task waited; with wake-ups on and
//!   off (backoff only), side by side.
//!
//! The server is pinned to CPU 0 and the benchmark (a current-thread Tokio
//! runtime) to CPU 1 when the machine has two or more.
//!
//! ```text
//! cargo bench -p distlock-redis --bench redis_lock            # full run
//! DISTLOCK_BENCH_QUICK=1 cargo bench -p distlock-redis --bench redis_lock   # seconds
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use distlock_api::DistributedLock;
use distlock_redis::{RedisLock, redis};
use distlock_testkit::RedisServer;
use redis::aio::ConnectionManager;
use tokio::runtime::Runtime;

const TTL: Duration = Duration::from_secs(30);
const TASKS: usize = 64;

fn quick() -> bool {
    std::env::var_os("DISTLOCK_BENCH_QUICK").is_some_and(|v| v != "0")
}

static RAW_RELEASE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    )
});

/// The raw cycle: what a hand-written lock does, without fencing or wake-ups.
async fn raw_cycle(conn: &mut ConnectionManager, key: &str, token: u64) {
    let set: Option<String> = redis::cmd("SET")
        .arg(key)
        .arg(token)
        .arg("NX")
        .arg("PX")
        .arg(TTL.as_millis() as u64)
        .query_async(conn)
        .await
        .expect("SET NX PX");
    assert!(set.is_some(), "raw lock {key} was held");
    let released: i64 = RAW_RELEASE
        .key(key)
        .arg(token)
        .invoke_async(conn)
        .await
        .expect("compare-delete");
    assert_eq!(released, 1);
}

async fn lock_cycle(locks: &RedisLock, name: &str) {
    let guard = locks
        .try_acquire(name, TTL)
        .await
        .expect("acquire")
        .expect("free");
    guard.release().await.expect("release");
}

fn cycles(c: &mut Criterion, rt: &Runtime, server: &RedisServer) {
    let (locks, conn) = rt.block_on(async {
        let locks = RedisLock::connect(&server.url()).await.expect("connect");
        let client = redis::Client::open(server.url()).expect("url");
        let conn = ConnectionManager::new(client).await.expect("raw connect");
        (locks, conn)
    });
    let tokens = Arc::new(AtomicU64::new(1));

    let mut group = c.benchmark_group("redis_cycle");
    if quick() {
        group
            .sample_size(10)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("raw", "1_task"), |b| {
        b.to_async(rt).iter(|| {
            let mut conn = conn.clone();
            let token = tokens.fetch_add(1, Ordering::Relaxed);
            async move { raw_cycle(&mut conn, "bench:raw:1", token).await }
        });
    });
    group.bench_function(BenchmarkId::new("distlock", "1_task"), |b| {
        b.to_async(rt).iter(|| lock_cycle(&locks, "bench:1"));
    });
    let nowake = rt
        .block_on(
            RedisLock::options()
                .wake_on_release(false)
                .connect(&server.url()),
        )
        .expect("connect");
    group.bench_function(BenchmarkId::new("distlock_no_wakeups", "1_task"), |b| {
        b.to_async(rt).iter(|| lock_cycle(&nowake, "bench:1"));
    });

    group.throughput(Throughput::Elements(TASKS as u64));
    group.bench_function(BenchmarkId::new("raw", "64_tasks"), |b| {
        b.to_async(rt).iter(|| {
            let conn = conn.clone();
            let tokens = tokens.clone();
            async move {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|task| {
                        let mut conn = conn.clone();
                        let token = tokens.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            raw_cycle(&mut conn, &format!("bench:raw:64:{task}"), token).await;
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
            }
        });
    });
    group.bench_function(BenchmarkId::new("distlock", "64_tasks"), |b| {
        b.to_async(rt).iter(|| {
            let locks = locks.clone();
            async move {
                let tasks: Vec<_> = (0..TASKS)
                    .map(|task| {
                        let locks = locks.clone();
                        tokio::spawn(async move {
                            lock_cycle(&locks, &format!("bench:64:{task}")).await;
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.expect("task");
                }
            }
        });
    });
    group.finish();
}

/// What one hand-off run measured.
struct HandOff {
    /// Release call → next holder's acquire returned, per hand-off.
    gaps: Vec<Duration>,
    /// The longest single wait of any task (acquire call → acquired).
    longest_wait: Duration,
    cycles: usize,
}

/// `tasks` tasks take turns on one name until `cycles` hand-offs happened,
/// each holding the lock for 1 ms.
async fn hand_off(locks: &RedisLock, name: &str, tasks: usize, cycles: usize) -> HandOff {
    // When the current holder called release, and which task it is; taken
    // by the next holder. A task that takes the lock straight back is no
    // hand-off and is not counted.
    let released_at: Arc<Mutex<Option<(Instant, usize)>>> = Arc::new(Mutex::new(None));
    let gaps = Arc::new(Mutex::new(Vec::with_capacity(cycles)));
    let done = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let (locks, name) = (locks.clone(), name.to_owned());
            let (released_at, gaps, done) = (released_at.clone(), gaps.clone(), done.clone());
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                while done.load(Ordering::Relaxed) < cycles as u64 {
                    let asked = Instant::now();
                    let guard = locks
                        .acquire(&name, TTL, Duration::from_secs(120))
                        .await
                        .expect("acquire within two minutes");
                    let now = Instant::now();
                    longest = longest.max(now - asked);
                    if let Some((released, by)) = released_at.lock().expect("lock").take()
                        && by != task
                    {
                        gaps.lock().expect("lock").push(now - released);
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    *released_at.lock().expect("lock") = Some((Instant::now(), task));
                    guard.release().await.expect("release");
                    // Let the others in before trying again.
                    tokio::task::yield_now().await;
                }
                longest
            })
        })
        .collect();
    let mut longest_wait = Duration::ZERO;
    for worker in workers {
        longest_wait = longest_wait.max(worker.await.expect("worker"));
    }
    let gaps = std::mem::take(&mut *gaps.lock().expect("lock"));
    HandOff {
        cycles: gaps.len(),
        gaps,
        longest_wait,
    }
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or_default()
}

fn hand_offs(rt: &Runtime, server: &RedisServer) {
    let cycles = if quick() { 100 } else { 1000 };
    println!();
    println!("hand-off on one name, each holder keeps it 1 ms ({cycles} hand-offs per row)");
    println!(
        "{:<10} {:>6} {:>14} {:>14} {:>16}",
        "waiting", "tasks", "median", "p99", "longest wait"
    );
    for tasks in [2, 8, 32] {
        for (label, wake) in [("wake-up", true), ("backoff", false)] {
            let mut run = rt.block_on(async {
                let locks = RedisLock::options()
                    .wake_on_release(wake)
                    .connect(&server.url())
                    .await
                    .expect("connect");
                hand_off(
                    &locks,
                    &format!("bench:handoff:{label}:{tasks}"),
                    tasks,
                    cycles,
                )
                .await
            });
            println!(
                "{:<10} {:>6} {:>11.3} ms {:>11.3} ms {:>13.1} ms   ({} samples)",
                label,
                tasks,
                median(&mut run.gaps).as_secs_f64() * 1e3,
                percentile(&mut run.gaps, 0.99).as_secs_f64() * 1e3,
                run.longest_wait.as_secs_f64() * 1e3,
                run.cycles,
            );
        }
    }
}

/// The positional arguments (Criterion's name filters), skipping the values
/// of Criterion's options.
fn name_filters() -> Vec<String> {
    const WITH_VALUE: &[&str] = &[
        "--warm-up-time",
        "--measurement-time",
        "--sample-size",
        "--save-baseline",
        "--baseline",
        "--load-baseline",
        "--output-format",
        "--profile-time",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--nresamples",
        "--color",
        "--format",
        "--plotting-backend",
    ];
    let mut filters = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if WITH_VALUE.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filters.push(arg);
        }
    }
    filters
}

fn main() {
    let server = RedisServer::start().expect("redis-server");
    if let Some(pid) = server.pid() {
        distlock_testkit::pin_apart(pid).expect("pin server and client to different CPUs");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();
    let filter = name_filters();
    cycles(&mut criterion, &rt, &server);
    criterion.final_summary();
    if filter.is_empty() || filter.iter().any(|f| "hand_off".contains(f.as_str())) {
        hand_offs(&rt, &server);
    }
}
