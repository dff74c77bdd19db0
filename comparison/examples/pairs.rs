//! Pairwise lock-cycle measurement for tuning: implementations run in turn
//! (A B C A B C …) on throwaway servers pinned to CPU 0 with the client on
//! CPU 1; each run reports cycles/s, p50 and client/server CPU per cycle,
//! and the end prints medians with their min–max.
//!
//! ```text
//! cargo run --release -p distlock-comparison --example pairs -- \
//!     --tasks 64 --secs 3 --rounds 3 raw-redis distlock-redis rslock
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use distlock_comparison::cpu::CpuSample;
use distlock_comparison::cyclers::{Cycler, Distlock, DlPg, DlRedis, RawPg, RawRedis, RsLock};
use distlock_comparison::measure;
use distlock_testkit::{PgOptions, PgServer, RedisServer};

/// Counts allocations, to report allocations per cycle.
struct Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

// SAFETY: forwards to the system allocator.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: as the caller's contract.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as the caller's contract.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Row {
    name: String,
    ops: Vec<f64>,
    p50: Vec<f64>,
    client: Vec<f64>,
    server: Vec<f64>,
}

fn median(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let mut tasks = 64usize;
    let mut secs = 3.0f64;
    let mut rounds = 3usize;
    let mut names = Vec::new();
    // Instruction counting (under valgrind): a fixed number of cycles per
    // task instead of a timed run, and optionally a server of one's own.
    let mut count: Option<usize> = None;
    let mut redis_url: Option<String> = None;
    let mut pg_url: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tasks" => tasks = args.next().context("--tasks N")?.parse()?,
            "--secs" => secs = args.next().context("--secs S")?.parse()?,
            "--rounds" => rounds = args.next().context("--rounds N")?.parse()?,
            "--cycles" => count = Some(args.next().context("--cycles N")?.parse()?),
            "--redis-url" => redis_url = Some(args.next().context("--redis-url URL")?),
            "--pg-url" => pg_url = Some(args.next().context("--pg-url URL")?),
            other => names.push(other.to_owned()),
        }
    }
    if names.is_empty() {
        bail!(
            "name the implementations: raw-redis distlock-redis rslock dl-redis raw-pg distlock-pg distlock-pg-poll dl-pg"
        );
    }
    let redis = RedisServer::start()?;
    let pg = PgServer::start_with(PgOptions::new().max_connections(400))?;
    let redis_pid = redis.pid().context("redis pid")?;
    let pg_pid = pg.pid().context("pg pid")?;
    distlock_testkit::pin_apart(redis_pid)?;
    distlock_testkit::pin_process(pg_pid, 0)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let pg_url = match pg_url {
            Some(url) => url,
            None => pg.fresh_database()?,
        };
        let redis_url = redis_url.unwrap_or_else(|| redis.url());
        let pool = u32::try_from(tasks.max(1))?;
        let mut cyclers: Vec<(Arc<dyn Cycler>, u32)> = Vec::new();
        for name in &names {
            let cycler: Arc<dyn Cycler> = match name.as_str() {
                "raw-redis" => Arc::new(RawRedis::connect(&redis_url).await?),
                "distlock-redis" => Arc::new(Distlock::redis(&redis_url).await?),
                "distlock-redis-nowake" => Arc::new(Distlock::redis_without_wake_ups(&redis_url).await?),
                "rslock" => Arc::new(RsLock::connect(&redis_url).await?),
                "dl-redis" => Arc::new(DlRedis::connect(&redis_url).await?),
                "raw-pg" => Arc::new(RawPg::connect(&pg_url, pool).await?),
                "distlock-pg" => Arc::new(Distlock::postgres(&pg_url, pool).await?),
                "distlock-pg-poll" => Arc::new(Distlock::postgres_without_notify(&pg_url, pool).await?),
                "dl-pg" => Arc::new(DlPg::connect(&pg_url, pool).await?),
                other => bail!("unknown implementation {other}"),
            };
            let pid = if name.ends_with("pg") || name.contains("-pg") { pg_pid } else { redis_pid };
            cyclers.push((cycler, pid));
        }
        let mut rows: Vec<Row> = names
            .iter()
            .map(|n| Row { name: n.clone(), ops: vec![], p50: vec![], client: vec![], server: vec![] })
            .collect();
        if let Some(count) = count {
            for (cycler, _) in &cyclers {
                let workers: Vec<_> = (0..tasks)
                    .map(|task| {
                        let cycler = Arc::clone(cycler);
                        tokio::spawn(async move {
                            let name = measure::cycle_name(cycler.label(), task);
                            for _ in 0..count {
                                cycler.cycle(&name).await?;
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for worker in workers {
                    worker.await??;
                }
            }
            return Ok(());
        }
        for round in 0..rounds {
            for ((cycler, pid), row) in cyclers.iter().zip(rows.iter_mut()) {
                let warm = Duration::from_millis(300);
                // Warm-up run, then the measured one with CPU readings around it.
                measure::cycles(Arc::clone(cycler), tasks, Duration::ZERO, warm, None).await?;
                let cpu = CpuSample::start(Some(*pid));
                let allocs = ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed);
                let r = measure::cycles(Arc::clone(cycler), tasks, Duration::ZERO, Duration::from_secs_f64(secs), None).await?;
                let per = cpu.per_op(r.latency.samples as u64);
                let allocs = (ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed) - allocs) as f64
                    / r.latency.samples.max(1) as f64;
                println!(
                    "round {round} {:<22} {:>9.0}/s p50 {:>7.1} µs client {:>5.2} µs server {:>5.2} µs allocs {allocs:.1}",
                    row.name, r.ops_per_sec, r.latency.p50_us, per.client_us, per.server_us
                );
                row.ops.push(r.ops_per_sec);
                row.p50.push(r.latency.p50_us);
                row.client.push(per.client_us);
                row.server.push(per.server_us);
            }
        }
        println!("\n{tasks} tasks, {secs} s × {rounds} rounds, medians (min–max):");
        let base = median(&rows[0].ops).0;
        for row in &rows {
            let (o, olo, ohi) = median(&row.ops);
            let (p, plo, phi) = median(&row.p50);
            let (c, clo, chi) = median(&row.client);
            let (s, slo, shi) = median(&row.server);
            println!(
                "{:<22} {:>8.0}/s ({olo:.0}–{ohi:.0}) {:.2}× | p50 {p:.1} µs ({plo:.1}–{phi:.1}) | client {c:.2} µs ({clo:.2}–{chi:.2}) | server {s:.2} µs ({slo:.2}–{shi:.2})",
                row.name, o, o / base
            );
        }
        anyhow::Ok(())
    })
}
