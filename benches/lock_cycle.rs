//! Cost of one lock cycle (acquire + release) through the full `DistributedLock`
//! machinery: validation, guard, release. For now on the in-process
//! `MemoryLock`, which isolates the library's own overhead; the Redis and
//! PostgreSQL backends join this file as they land.
//!
//! Run: `scripts/bench.sh` (or `cargo bench --bench lock_cycle`).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use distlock::{DistributedLock, MemoryLock};

const TTL: Duration = Duration::from_secs(30);

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// One task, one name: the latency of acquire + release.
fn uncontended_cycle(c: &mut Criterion) {
    let rt = runtime();
    let locks: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let mut group = c.benchmark_group("lock_cycle/1_task");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("memory", "acquire+release"), |b| {
        b.to_async(&rt).iter(|| {
            let locks = Arc::clone(&locks);
            async move {
                let guard = locks
                    .acquire("bench:cycle", TTL, Duration::ZERO)
                    .await
                    .expect("the lock is free");
                black_box(guard.fencing_token());
                guard.release().await.expect("still ours");
            }
        });
    });
    group.finish();
}

/// N tasks on distinct names: throughput of the shared machinery.
fn concurrent_cycles(c: &mut Criterion) {
    let rt = runtime();
    let locks: Arc<dyn DistributedLock> = Arc::new(MemoryLock::new());
    let mut group = c.benchmark_group("lock_cycle/distinct_names");
    for tasks in [16usize, 64] {
        group.throughput(Throughput::Elements(tasks as u64));
        group.bench_with_input(BenchmarkId::new("memory", tasks), &tasks, |b, &tasks| {
            b.to_async(&rt).iter(|| {
                let locks = Arc::clone(&locks);
                async move {
                    let handles: Vec<_> = (0..tasks)
                        .map(|i| {
                            let locks = Arc::clone(&locks);
                            tokio::spawn(async move {
                                let name = format!("bench:task:{i}");
                                let guard = locks
                                    .acquire(&name, TTL, Duration::ZERO)
                                    .await
                                    .expect("the lock is free");
                                guard.release().await.expect("still ours");
                            })
                        })
                        .collect();
                    for handle in handles {
                        handle.await.expect("bench task");
                    }
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, uncontended_cycle, concurrent_cycles);
criterion_main!(benches);
