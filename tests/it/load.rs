//! Load, per backend: 64 clients × 500 cycles over 8 names, a quarter of
//! the clients with renewal on (each holding its first lock longer than its
//! TTL), every operation recorded and the history checked afterwards: zero
//! violations, every release `Ok`, each seat's fenced writes consistent.

use crate::workload;

use std::sync::Arc;
use std::time::Duration;

use crate::ticket_booking::seat_log::check_seat_log;
use distlock::postgres::PgAdvisoryLock;
use distlock::redis::RedisLock;
use distlock_api::{DistributedLock, MemoryLock};
use workload::{Workload, within};

const CLIENTS: usize = 64;
const CYCLES: usize = 500;
const NAMES: usize = 8;
/// A quarter of the clients renew.
const RENEWING: usize = CLIENTS / 4;
/// No backend may take longer than this for the whole run.
const RUN_LIMIT: Duration = Duration::from_secs(120);

fn workload() -> Workload {
    Workload::new(CLIENTS, CYCLES, NAMES).renewing(RENEWING)
}

async fn load(backend: &str, locks: Arc<dyn DistributedLock>) {
    let workload = workload();
    let run = within(RUN_LIMIT, "the load run", workload::run(locks, &workload)).await;
    let report = run.history.check().merge(check_seat_log(&run.seats.log()));
    eprintln!(
        "load on {backend}: {CLIENTS} clients × {CYCLES} cycles over {NAMES} names in {:?}: {}",
        run.elapsed,
        report.summary()
    );
    report.assert_ok();
    assert!(run.acquire_errors.is_empty(), "{:?}", run.acquire_errors);
    assert!(run.release_errors.is_empty(), "{:?}", run.release_errors);
    assert_eq!(run.refused_writes, 0, "no holder wrote past its lease");
    assert_eq!(run.cycles, CLIENTS * CYCLES);
    let c = report.counts;
    assert_eq!(c.acquired, CLIENTS * CYCLES);
    assert_eq!(c.intervals, CLIENTS * CYCLES, "every grant held a while");
    assert_eq!(c.released_ok, CLIENTS * CYCLES);
    assert_eq!(c.storage_writes, CLIENTS * CYCLES);
    assert_eq!(c.unknown, 0);
    assert_eq!(c.overruns, 0, "{:?}", report.notes);
    assert_eq!(
        run.renewed,
        workload.long_holds(),
        "renewal kept every long hold alive past its first TTL"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_lock_under_load() {
    load("memory", Arc::new(MemoryLock::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_under_load() {
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::options()
        .prefix(format!("load-{}:", workload::unique()))
        .connect(&url)
        .await
        .expect("connect");
    load("redis", Arc::new(locks)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_under_load() {
    let url = distlock_testkit::database_url().expect("postgres");
    let locks = PgAdvisoryLock::options()
        .max_connections(24)
        .connect(&url)
        .await
        .expect("connect");
    load("postgres", Arc::new(locks)).await;
}
