//! Criterion groups of the comparison run (HTML report under
//! `target/criterion`): one uncontended lock cycle (acquire + release) and
//! 16 concurrent cycles, for every implementation side by side — the raw
//! clients, distlock's Redis and PostgreSQL backends, `rslock` and the
//! `distributed-lock` crate — on throwaway servers pinned to CPU 0, the
//! client on CPU 1. `scripts/compare.sh` runs it; the percentiles, hand-off,
//! hold-cost and booking sections come from the `distlock-compare` binary.
//!
//! ```text
//! cargo bench -p distlock-comparison --bench cycle [-- --quick]
//! ```

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use distlock_comparison::cyclers::{Cycler, Distlock, DlPg, DlRedis, RawPg, RawRedis, RsLock};
use distlock_testkit::{PgOptions, PgServer, RedisServer};

const TASKS: usize = 16;

fn main() {
    let redis = RedisServer::start().expect("redis-server");
    let pg = PgServer::start_with(PgOptions::new().max_connections(200)).expect("PostgreSQL");
    let pinned = distlock_testkit::pin_apart(redis.pid().expect("redis pid")).expect("pin");
    if pinned {
        distlock_testkit::pin_process(pg.pid().expect("postgres pid"), 0).expect("pin");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pg_url = pg.fresh_database().expect("database");
    let redis_url = redis.url();
    let cyclers: Vec<Arc<dyn Cycler>> = rt.block_on(async {
        let mut cyclers: Vec<Arc<dyn Cycler>> = vec![
            Arc::new(RawRedis::connect(&redis_url).await.expect("raw redis")),
            Arc::new(Distlock::redis(&redis_url).await.expect("distlock redis")),
            Arc::new(RsLock::connect(&redis_url).await.expect("rslock")),
            Arc::new(
                DlRedis::connect(&redis_url)
                    .await
                    .expect("distributed-lock redis"),
            ),
            Arc::new(
                RawPg::connect(&pg_url, TASKS as u32)
                    .await
                    .expect("raw sqlx"),
            ),
            Arc::new(
                Distlock::postgres(&pg_url, TASKS as u32)
                    .await
                    .expect("distlock pg"),
            ),
            Arc::new(
                DlPg::connect(&pg_url, TASKS as u32)
                    .await
                    .expect("distributed-lock pg"),
            ),
        ];
        cyclers.shrink_to_fit();
        cyclers
    });
    let mut criterion = Criterion::default().configure_from_args();

    let mut group = criterion.benchmark_group("cycle_1_task");
    group.throughput(Throughput::Elements(1));
    for cycler in &cyclers {
        let id = BenchmarkId::new(cycler.backend(), cycler.label());
        let name = format!("crit:1:{}", cycler.label());
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| {
                let (cycler, name) = (Arc::clone(cycler), name.clone());
                async move { cycler.cycle(&name).await.expect("cycle") }
            });
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group("cycle_16_tasks");
    group.throughput(Throughput::Elements(TASKS as u64));
    for cycler in &cyclers {
        let id = BenchmarkId::new(cycler.backend(), cycler.label());
        group.bench_function(id, |b| {
            b.to_async(&rt).iter(|| {
                let cycler = Arc::clone(cycler);
                async move {
                    let tasks: Vec<_> = (0..TASKS)
                        .map(|task| {
                            let cycler = Arc::clone(&cycler);
                            tokio::spawn(async move {
                                let name = format!("crit:{TASKS}:{}:{task}", cycler.label());
                                cycler.cycle(&name).await.expect("cycle");
                            })
                        })
                        .collect();
                    for task in tasks {
                        task.await.expect("task");
                    }
                }
            });
        });
    }
    group.finish();
    criterion.final_summary();
    // Let the connections close before the servers go.
    rt.block_on(async move {
        drop(cyclers);
        tokio::time::sleep(Duration::from_millis(50)).await;
    });
}
