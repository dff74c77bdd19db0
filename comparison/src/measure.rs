//! Per-operation sampling: the lock-cycle runs (p50/p99, throughput and CPU
//! per cycle at a number of concurrent tasks) and the hand-off runs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use distlock::{DistributedLock, LockGuard};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use crate::cpu::CpuSample;
use crate::cyclers::Cycler;
use crate::results::{CycleResult, HandOffResult, Latency};

/// Percentile `p` (0..=1) of `samples`, which must be sorted.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// p50 / p99 / max of `samples` (sorts them).
pub fn latency(samples: &mut [Duration]) -> Latency {
    samples.sort_unstable();
    Latency {
        samples: samples.len(),
        p50_us: percentile(samples, 0.50).as_secs_f64() * 1e6,
        p99_us: percentile(samples, 0.99).as_secs_f64() * 1e6,
        max_us: samples.last().copied().unwrap_or_default().as_secs_f64() * 1e6,
    }
}

/// The name that task `task` of a [`cycles`] run of the row `label` locks.
pub fn cycle_name(label: &str, task: usize) -> String {
    format!("cmp:cycle:{label}:{task}")
}

/// `tasks` tasks run acquire + release on a name of their own, back to back,
/// for `warm_up` (not recorded) and then `measure`; every cycle's latency is
/// recorded, throughput is cycles completed in the measured window per second.
/// The CPU time of this process and of the server `server_pid` (with its
/// children: PostgreSQL's backends) is read at the window's start and end,
/// and divided by the cycles counted.
pub async fn cycles(
    cycler: Arc<dyn Cycler>,
    tasks: usize,
    warm_up: Duration,
    measure: Duration,
    server_pid: Option<u32>,
) -> anyhow::Result<CycleResult> {
    let start = Instant::now() + warm_up;
    let end = start + measure;
    let workers: Vec<_> = (0..tasks)
        .map(|task| {
            let cycler = Arc::clone(&cycler);
            tokio::spawn(async move {
                let name = cycle_name(cycler.label(), task);
                let mut samples = Vec::with_capacity(4096);
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    cycler.cycle(&name).await?;
                    let t1 = Instant::now();
                    if t0 >= start && t1 <= end {
                        samples.push(t1 - t0);
                    }
                }
                anyhow::Ok(samples)
            })
        })
        .collect();
    // The readings scan /proc (the PostgreSQL tree: every process), which
    // would stall this single-threaded runtime's workers: off its thread.
    tokio::time::sleep_until(start.into()).await;
    let cpu = tokio::task::spawn_blocking(move || CpuSample::start(server_pid)).await?;
    tokio::time::sleep_until(end.into()).await;
    let mut all = Vec::new();
    let mut failed = None;
    for worker in workers {
        match worker.await? {
            Ok(samples) => all.extend(samples),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    let ops = all.len() as u64;
    let per_op = tokio::task::spawn_blocking(move || cpu.per_op(ops)).await?;
    let ops_per_sec = all.len() as f64 / measure.as_secs_f64();
    Ok(CycleResult {
        implementation: cycler.label().to_owned(),
        backend: cycler.backend().to_owned(),
        tasks,
        ops_per_sec,
        ops_per_sec_min: ops_per_sec,
        ops_per_sec_max: ops_per_sec,
        ops_per_sec_rounds: vec![ops_per_sec],
        client_cpu_us: per_op.client_us,
        server_cpu_us: server_pid.map(|_| per_op.server_us),
        latency: latency(&mut all),
    })
}

/// One waiter of a [`hand_off`] run: takes the one name (waiting as long
/// as it takes) and gives it back.
#[async_trait]
pub trait Turn: Send {
    /// Returns once this waiter holds `name`.
    async fn acquire(&mut self, name: &str) -> anyhow::Result<()>;
    /// Releases what [`acquire`](Self::acquire) took.
    async fn release(&mut self) -> anyhow::Result<()>;
}

/// A waiter taking turns through a distlock client (its own, or shared
/// with the other waiters).
pub struct DistlockTurn {
    locks: Arc<dyn DistributedLock>,
    guard: Option<LockGuard>,
}

impl DistlockTurn {
    /// A waiter using `locks`.
    pub fn new(locks: Arc<dyn DistributedLock>) -> Self {
        DistlockTurn { locks, guard: None }
    }
}

#[async_trait]
impl Turn for DistlockTurn {
    async fn acquire(&mut self, name: &str) -> anyhow::Result<()> {
        let wait = Duration::from_secs(60);
        self.guard = Some(self.locks.acquire(name, wait, wait).await?);
        Ok(())
    }
    async fn release(&mut self) -> anyhow::Result<()> {
        if let Some(guard) = self.guard.take() {
            guard.release().await?;
        }
        Ok(())
    }
}

/// The baseline: a session of its own that blocks in the server's
/// `pg_advisory_lock` until the key is free, and `pg_advisory_unlock`s it.
pub struct PgBlockingTurn {
    conn: PgConnection,
    key: Option<i64>,
}

impl PgBlockingTurn {
    /// Opens the session.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Ok(PgBlockingTurn {
            conn: PgConnection::connect(url).await?,
            key: None,
        })
    }
}

#[async_trait]
impl Turn for PgBlockingTurn {
    async fn acquire(&mut self, name: &str) -> anyhow::Result<()> {
        let key = crate::cyclers::key(name);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut self.conn)
            .await?;
        self.key = Some(key);
        Ok(())
    }
    async fn release(&mut self) -> anyhow::Result<()> {
        if let Some(key) = self.key.take() {
            let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .fetch_one(&mut self.conn)
                .await?;
            anyhow::ensure!(unlocked, "pg_advisory_unlock found no lock");
        }
        Ok(())
    }
}

/// `turns.len()` waiters take turns on one name, each holding it `hold`,
/// until `hand_offs` hand-offs happened. A hand-off is the time from one
/// holder's `release` call to the moment another waiter's `acquire`
/// returned.
pub async fn hand_off(
    backend: &str,
    implementation: &str,
    turns: Vec<Box<dyn Turn>>,
    name: &str,
    hold: Duration,
    hand_offs: usize,
) -> anyhow::Result<HandOffResult> {
    let waiters = turns.len();
    let released_at: Arc<Mutex<Option<(Instant, usize)>>> = Arc::new(Mutex::new(None));
    let gaps = Arc::new(Mutex::new(Vec::with_capacity(hand_offs)));
    let started = Instant::now();
    let workers: Vec<_> = turns
        .into_iter()
        .enumerate()
        .map(|(task, mut turn)| {
            let name = name.to_owned();
            let (released_at, gaps) = (Arc::clone(&released_at), Arc::clone(&gaps));
            tokio::spawn(async move {
                let mut longest = Duration::ZERO;
                loop {
                    if lock(&gaps).len() >= hand_offs {
                        break;
                    }
                    let asked = Instant::now();
                    turn.acquire(&name).await?;
                    let now = Instant::now();
                    longest = longest.max(now - asked);
                    if let Some((released, by)) = lock(&released_at).take()
                        && by != task
                    {
                        lock(&gaps).push(now - released);
                    }
                    tokio::time::sleep(hold).await;
                    *lock(&released_at) = Some((Instant::now(), task));
                    turn.release().await?;
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(longest)
            })
        })
        .collect();
    let mut longest_wait = Duration::ZERO;
    for worker in workers {
        longest_wait = longest_wait.max(worker.await??);
    }
    let elapsed = started.elapsed();
    let mut gaps = std::mem::take(&mut *lock(&gaps));
    Ok(HandOffResult {
        backend: backend.to_owned(),
        implementation: implementation.to_owned(),
        waiters,
        hold_ms: hold.as_secs_f64() * 1e3,
        hand_offs_per_sec: gaps.len() as f64 / elapsed.as_secs_f64(),
        longest_wait_ms: longest_wait.as_secs_f64() * 1e3,
        gap: latency(&mut gaps),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let l = latency(&mut samples);
        assert_eq!(l.samples, 100);
        assert_eq!(l.p50_us.round(), 51.0);
        assert_eq!(l.p99_us.round(), 99.0);
        assert_eq!(l.max_us.round(), 100.0);
        assert_eq!(latency(&mut []).p99_us, 0.0);
    }
}
