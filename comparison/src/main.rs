//! `distlock-compare`: the comparison run's own measurements (sampled
//! latencies, hand-off, hold cost, capacity, booking under held locks, and
//! the lock cycle on Redlock and on a Redis Cluster against one server),
//! printed as they go and written to `target/comparison/` as `report.md`,
//! SVG charts and `results.json`. `scripts/compare.sh` runs it after the
//! Criterion groups.
//!
//! ```text
//! cargo run --release -p distlock-comparison -- [--quick] [--rounds N] [--only SECTION,...] [--out DIR]
//! cargo run --release -p distlock-comparison -- --help
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use distlock::DistributedLock;
use distlock_comparison::cyclers::{
    Cycler, Distlock, DlPg, DlRedis, POSTGRES, REDIS, REDIS_CLUSTER, RawPg, RawRedis, RsLock,
};
use distlock_comparison::measure::{DistlockTurn, PgBlockingTurn, Turn};
use distlock_comparison::results::{
    BookingResult, ClusterSpread, CycleResult, HandOffResult, Results,
};
use distlock_comparison::{booking, charts, hold, measure, report, system};
use distlock_postgres::PgLockOptions;
use distlock_redis::{DEFAULT_PREFIX, RedisLock, Redlock};
use distlock_testkit::{PgOptions, PgServer, RedisCluster, RedisServer};
use sqlx::postgres::PgPoolOptions;

/// How long and how much each section measures.
struct Plan {
    quick: bool,
    /// Rounds of the lock-cycle section (`--rounds` overrides).
    rounds: usize,
    warm_up: Duration,
    measure: Duration,
    tasks: &'static [usize],
    waiters: &'static [usize],
    hand_offs: usize,
    /// K held Redis locks measured one at a time (the capacity run adds
    /// `redis_capacity`).
    redis_hold_ks: &'static [usize],
    /// K held PostgreSQL locks (one connection each: below max_connections).
    pg_hold_ks: &'static [usize],
    redis_capacity: usize,
    booking_ks: &'static [usize],
    booking_time: Duration,
}

const QUICK: Plan = Plan {
    quick: true,
    rounds: 1,
    warm_up: Duration::from_millis(100),
    measure: Duration::from_millis(400),
    tasks: &[1, 16, 64],
    waiters: &[2, 8, 32],
    hand_offs: 100,
    redis_hold_ks: &[10, 100, 1000],
    pg_hold_ks: &[10, 50, 90],
    redis_capacity: 20_000,
    booking_ks: &[0, 10, 20, 25],
    booking_time: Duration::from_secs(1),
};

const FULL: Plan = Plan {
    quick: false,
    rounds: 3,
    warm_up: Duration::from_millis(500),
    measure: Duration::from_secs(3),
    tasks: &[1, 16, 64],
    waiters: &[2, 8, 32],
    hand_offs: 1000,
    redis_hold_ks: &[10, 100, 1000, 10_000, 100_000],
    pg_hold_ks: &[10, 50, 90],
    redis_capacity: 1_000_000,
    booking_ks: &[0, 5, 10, 15, 18, 20, 25],
    booking_time: Duration::from_secs(4),
};

/// The sections of the run, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Section {
    /// 1 + 5: the lock cycle at 1, 16 and 64 tasks, in rounds.
    Cycles,
    /// 2: hand-off to the next waiter.
    HandOff,
    /// 3: the cost and capacity of held locks.
    Hold,
    /// 4: booking transactions while K locks are held.
    Booking,
    /// 6: one Redis server vs Redlock vs a cluster.
    Topologies,
}

impl Section {
    const ALL: [Section; 5] = [
        Section::Cycles,
        Section::HandOff,
        Section::Hold,
        Section::Booking,
        Section::Topologies,
    ];

    fn name(self) -> &'static str {
        match self {
            Section::Cycles => "cycles",
            Section::HandOff => "hand-off",
            Section::Hold => "hold",
            Section::Booking => "booking",
            Section::Topologies => "topologies",
        }
    }
}

/// Where section 4's K long-held locks live.
const BOOK_IN_REDIS: &str = REDIS;
/// See [`BOOK_IN_REDIS`]: distlock's PostgreSQL locks on the application's pool.
const BOOK_IN_PG_SHARED: &str = "PostgreSQL, app's pool";
/// See [`BOOK_IN_REDIS`]: distlock's PostgreSQL locks on a pool of their own.
const BOOK_IN_PG_OWN: &str = "PostgreSQL, own pool";

/// The booking setup of section 4.
const BOOKING_POOL: u32 = 20;
const BOOKING_CLIENTS: usize = 16;
const TICKETS: i64 = 1000;

/// Measures distlock's Redis and PostgreSQL backends side by side, with the
/// raw clients and the peer crates, on throwaway servers it starts itself.
///
/// Sections: the lock cycle (latency and throughput at 1, 16 and 64 tasks),
/// hand-off to the next waiter, the cost and capacity of held locks, booking
/// transactions while locks are held, and one Redis server against Redlock
/// and a cluster. Prints each section as it finishes, then writes report.md,
/// results.json and SVG charts to the output directory. scripts/compare.sh
/// runs it after the Criterion groups: run that for the whole comparison.
#[derive(Parser)]
#[command(
    name = "distlock-compare",
    version,
    after_help = "Environment:\n  \
        DISTLOCK_COMPARE_COMMAND  the command recorded in the report as the one that made it\n  \
        DISTLOCK_PG_BIN           the directory of the PostgreSQL binaries to start"
)]
struct Args {
    /// A smoke run (what CI runs): shorter samples, fewer hand-offs, held
    /// locks and booking levels.
    #[arg(long)]
    quick: bool,
    /// Rounds of the lock-cycle section (default: 3, quick: 1); in each
    /// round every implementation runs once per task count, interleaved.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=20))]
    rounds: Option<u64>,
    /// Run only these sections (comma-separated or repeated), for quick
    /// iteration; the report and charts then cover only them.
    #[arg(long, value_name = "SECTION", value_delimiter = ',')]
    only: Vec<Section>,
    /// Where report.md, results.json and the charts are written.
    #[arg(long, value_name = "DIR", default_value = "target/comparison")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let Args {
        quick,
        rounds,
        only,
        out,
    } = Args::parse();
    let mut plan = if quick { QUICK } else { FULL };
    if let Some(rounds) = rounds {
        plan.rounds = rounds as usize;
    }
    let sections: Vec<Section> = if only.is_empty() {
        Section::ALL.to_vec()
    } else {
        Section::ALL
            .into_iter()
            .filter(|s| only.contains(s))
            .collect()
    };
    let runs = |section: Section| sections.contains(&section);
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;

    let started = Instant::now();
    let mut results = Results {
        mode: if quick { "quick" } else { "full" }.to_owned(),
        started: utc_now(),
        command: std::env::var("DISTLOCK_COMPARE_COMMAND").unwrap_or_else(|_| {
            format!(
                "cargo run --release -p distlock-comparison --{}",
                if quick { " --quick" } else { "" }
            )
        }),
        cpus: distlock_testkit::available_cpus(),
        cpu_model: system::cpu_model(),
        servers: vec![system::version_of("redis-server"), pg_version()],
        load_before: system::load_average(),
        sections: sections.iter().map(|s| s.name().to_owned()).collect(),
        rounds: plan.rounds,
        cycle_secs: plan.measure.as_secs_f64(),
        ..Results::default()
    };

    // Servers on CPU 0, this thread (and the runtime it builds) on CPU 1.
    let redis = RedisServer::start().context("start redis-server")?;
    let pg =
        PgServer::start_with(PgOptions::new().max_connections(400)).context("start PostgreSQL")?;
    results.pinned = distlock_testkit::pin_apart(redis.pid().context("redis pid")?)?;
    if results.pinned {
        distlock_testkit::pin_process(pg.pid().context("postgres pid")?, 0)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "comparison run ({} mode): {} CPUs, servers {}; load average {}",
        results.mode,
        results.cpus,
        if results.pinned {
            "on CPU 0, client on CPU 1"
        } else {
            "not pinned"
        },
        results.load_before
    );
    let pids = ServerPids {
        redis: redis.pid(),
        pg: pg.pid(),
    };
    rt.block_on(async {
        let pg_url = pg.fresh_database()?;
        if runs(Section::Cycles) {
            cycles(&plan, &redis.url(), &pg_url, pids, &mut results).await?;
        }
        if runs(Section::HandOff) {
            hand_offs(&plan, &redis.url(), &pg_url, &mut results).await?;
        }
        anyhow::Ok(())
    })?;
    drop((redis, pg));

    if runs(Section::Topologies) {
        rt.block_on(topologies(&plan, &mut results))?;
    }
    if runs(Section::Hold) {
        rt.block_on(holding(&plan, &mut results))?;
    }
    if runs(Section::Booking) {
        rt.block_on(bookings(&plan, &mut results))?;
    }
    results.wall_secs = started.elapsed().as_secs_f64();

    write_report(&out, &results)?;
    if !results.cycles.is_empty() {
        println!(
            "\n1 + 5. lock cycle, median of {} round{} (cycles/s min–max over the rounds; CPU per cycle: medians):",
            results.rounds,
            if results.rounds == 1 { "" } else { "s" }
        );
        println!("{}", report::cycle_table(&results.cycles));
    }
    if !results.topologies.is_empty() {
        println!(
            "6. distlock on one Redis server, on Redlocks and on a Redis Cluster (all servers on one CPU):"
        );
        println!("{}", report::cycle_table(&results.topologies));
    }
    println!(
        "custom measurements took {:.0} s; report: {}/report.md (charts and results.json beside it)",
        results.wall_secs,
        out.display()
    );
    Ok(())
}

/// The pids whose CPU time the lock-cycle rows read.
#[derive(Clone, Copy)]
struct ServerPids {
    redis: Option<u32>,
    pg: Option<u32>,
}

/// Sections 1 and 5, in rounds: in each round every implementation runs
/// once per task count, the implementations interleaved (round 1: A B C …
/// at 1 task, A B C … at 16 tasks, …; round 2 the same), so that drift on
/// the machine hits all of them alike. A row is the median of its rounds.
async fn cycles(
    plan: &Plan,
    redis_url: &str,
    pg_url: &str,
    pids: ServerPids,
    results: &mut Results,
) -> anyhow::Result<()> {
    println!(
        "\n== 1 + 5. lock cycle (acquire + release), {} round{}, {} s per run after {} ms warm-up",
        plan.rounds,
        if plan.rounds == 1 { "" } else { "s" },
        plan.measure.as_secs_f64(),
        plan.warm_up.as_millis()
    );
    let max_tasks = plan.tasks.iter().copied().max().unwrap_or(1) as u32;
    let mut cyclers: Vec<Arc<dyn Cycler>> = vec![
        Arc::new(RawRedis::connect(redis_url).await?),
        Arc::new(Distlock::redis(redis_url).await?),
        Arc::new(Distlock::redis_without_wake_ups(redis_url).await?),
        Arc::new(RawPg::connect(pg_url, max_tasks).await?),
        Arc::new(Distlock::postgres(pg_url, max_tasks).await?),
        Arc::new(Distlock::postgres_without_notify(pg_url, max_tasks).await?),
    ];
    match RsLock::connect(redis_url).await {
        Ok(c) => cyclers.insert(3, Arc::new(c)),
        Err(e) => results.peers_left_out.push(format!("rslock: {e:#}")),
    }
    match DlRedis::connect(redis_url).await {
        Ok(c) => cyclers.insert(4, Arc::new(c)),
        Err(e) => results
            .peers_left_out
            .push(format!("distributed-lock (Redis): {e:#}")),
    }
    match DlPg::connect(pg_url, max_tasks).await {
        Ok(c) => cyclers.push(Arc::new(c)),
        Err(e) => results
            .peers_left_out
            .push(format!("distributed-lock (PostgreSQL): {e:#}")),
    }
    // rounds_of[cycler][tasks index]: that row's rounds so far.
    let mut rounds_of: Vec<Vec<Vec<CycleResult>>> =
        vec![vec![Vec::new(); plan.tasks.len()]; cyclers.len()];
    let mut failed = vec![false; cyclers.len()];
    print_cycle_header();
    for round in 1..=plan.rounds {
        for (t, &tasks) in plan.tasks.iter().enumerate() {
            for (c, cycler) in cyclers.iter().enumerate() {
                if failed[c] {
                    continue;
                }
                let server = if cycler.backend() == REDIS {
                    pids.redis
                } else {
                    pids.pg
                };
                match measure::cycles(
                    Arc::clone(cycler),
                    tasks,
                    plan.warm_up,
                    plan.measure,
                    server,
                )
                .await
                {
                    Ok(r) => {
                        print_cycle_row(&format!("{round}/{}", plan.rounds), &r);
                        rounds_of[c][t].push(r);
                    }
                    Err(e) => {
                        let note = format!(
                            "{} ({}) at {tasks} tasks failed in round {round}: {e:#}",
                            cycler.label(),
                            cycler.backend()
                        );
                        println!("{note}");
                        results.peers_left_out.push(note);
                        failed[c] = true;
                    }
                }
            }
        }
    }
    for per_tasks in &rounds_of {
        results
            .cycles
            .extend(per_tasks.iter().filter_map(|r| CycleResult::median_of(r)));
    }
    Ok(())
}

fn print_cycle_header() {
    println!(
        "{:<5} {:<13} {:<21} {:>5} {:>10} {:>10} {:>12} {:>11} {:>11}",
        "round",
        "backend",
        "implementation",
        "tasks",
        "p50",
        "p99",
        "cycles/s",
        "client CPU",
        "server CPU"
    );
}

fn print_cycle_row(round: &str, r: &CycleResult) {
    println!(
        "{:<5} {:<13} {:<21} {:>5} {:>10} {:>10} {:>12} {:>8.1} µs {:>11}",
        round,
        r.backend,
        r.implementation,
        r.tasks,
        report::micros(r.latency.p50_us),
        report::micros(r.latency.p99_us),
        report::count(r.ops_per_sec),
        r.client_cpu_us,
        r.server_cpu_us
            .map_or("–".to_owned(), |s| format!("{s:.1} µs"))
    );
}

/// Section 6: the uncontended cycle of section 1 (same tasks, same
/// measuring code, distlock's defaults) through `RedisLock` on one server,
/// `Redlock` on 3 and on 5 independent servers, and `RedisLock` on a Redis
/// Cluster of 3 masters. Every server is pinned to CPU 0, like the others.
async fn topologies(plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    println!(
        "\n== 6. lock cycle on one server vs Redlock (3, 5 servers) vs a Redis Cluster (3 masters); all servers on CPU 0"
    );
    let started = Instant::now();
    let servers = RedisServer::start_several(5).context("start 5 redis-servers")?;
    for server in &servers {
        pin(server.pid(), results.pinned)?;
    }
    let cluster = RedisCluster::start().context("start a Redis Cluster of 3 masters")?;
    for master in cluster.masters() {
        pin(master.pid(), results.pinned)?;
    }
    results.topology_start_secs = started.elapsed().as_secs_f64();
    println!(
        "5 redis-servers and a cluster of {} masters started in {:.1} s",
        cluster.masters().len(),
        results.topology_start_secs
    );
    let urls: Vec<String> = servers.iter().map(RedisServer::url).collect();
    let cyclers: Vec<Arc<dyn Cycler>> = vec![
        Arc::new(Distlock::new(
            RedisLock::connect(&urls[0]).await?,
            REDIS,
            "RedisLock, 1 server",
        )),
        Arc::new(Distlock::new(
            Redlock::connect(&urls[..3]).await?,
            REDIS,
            "Redlock, 3 servers",
        )),
        Arc::new(Distlock::new(
            Redlock::connect(&urls).await?,
            REDIS,
            "Redlock, 5 servers",
        )),
        Arc::new(Distlock::new(
            RedisLock::connect_cluster(&cluster.seed_urls()).await?,
            REDIS_CLUSTER,
            "RedisLock, 3 masters",
        )),
    ];
    for cycler in cyclers.iter().filter(|c| c.backend() == REDIS_CLUSTER) {
        for &tasks in plan.tasks {
            let spread = cluster_spread(&cluster, cycler.label(), tasks)?;
            println!(
                "{}: the names of {tasks} task{} land on the masters as {}",
                spread.implementation,
                if tasks == 1 { "" } else { "s" },
                report::spread(&spread.names_per_master)
            );
            results.cluster_spread.push(spread);
        }
    }
    print_cycle_header();
    for cycler in cyclers {
        for &tasks in plan.tasks {
            // Several servers: the client's CPU only.
            let r = measure::cycles(Arc::clone(&cycler), tasks, plan.warm_up, plan.measure, None)
                .await
                .with_context(|| {
                    format!("{} ({}) at {tasks} tasks", cycler.label(), cycler.backend())
                })?;
            print_cycle_row("1/1", &r);
            results.topologies.push(r);
        }
    }
    println!("section 6 took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Where the lock keys of the names of tasks `0..tasks` of the row `label`
/// land: the key's slot, then the master serving it.
fn cluster_spread(
    cluster: &RedisCluster,
    label: &str,
    tasks: usize,
) -> anyhow::Result<ClusterSpread> {
    let mut names_per_master = vec![0; cluster.masters().len()];
    for task in 0..tasks {
        let name = measure::cycle_name(label, task);
        // distlock's key for a name is `prefix{name}`, with `%` and `}`
        // escaped; the names here have neither, so this is the key itself.
        anyhow::ensure!(
            !name.contains(['%', '}']),
            "cycle name {name:?} would be escaped"
        );
        let slot = RedisCluster::key_slot(&format!("{DEFAULT_PREFIX}{{{name}}}"));
        names_per_master[cluster.node_for_slot(slot)?] += 1;
    }
    Ok(ClusterSpread {
        implementation: label.to_owned(),
        tasks,
        names_per_master,
    })
}

/// Section 2: the hand-off of one name between waiters holding it 1 ms
/// each: two tasks sharing one distlock client; 2, 8 and 32 waiters each
/// with a client of its own (as separate processes would be); and, as
/// PostgreSQL's baseline, the same waiters as sessions blocked in the
/// server's own `pg_advisory_lock`.
async fn hand_offs(
    plan: &Plan,
    redis_url: &str,
    pg_url: &str,
    results: &mut Results,
) -> anyhow::Result<()> {
    println!(
        "\n== 2. hand-off on one name, each holder keeps it 1 ms ({} hand-offs per row)",
        plan.hand_offs
    );
    println!(
        "{:<11} {:<26} {:>7} {:>10} {:>10} {:>12} {:>13}",
        "backend", "implementation", "waiters", "p50", "p99", "hand-offs/s", "longest wait"
    );
    let hold = Duration::from_millis(1);
    // Two tasks of one process sharing one client.
    for backend in [REDIS, POSTGRES] {
        let shared: Arc<dyn DistributedLock> = if backend == REDIS {
            Arc::new(RedisLock::connect(redis_url).await?)
        } else {
            Arc::new(PgLockOptions::new().connect(pg_url).await?)
        };
        let turns: Vec<Box<dyn Turn>> = (0..2)
            .map(|_| Box::new(DistlockTurn::new(Arc::clone(&shared))) as Box<dyn Turn>)
            .collect();
        let r = measure::hand_off(
            backend,
            HAND_OFF_SHARED,
            turns,
            "cmp:handoff:shared",
            hold,
            plan.hand_offs,
        )
        .await?;
        print_hand_off(&r);
        results.hand_offs.push(r);
    }
    for &waiters in plan.waiters {
        for (backend, implementation) in [
            (REDIS, HAND_OFF_OWN),
            (POSTGRES, HAND_OFF_OWN),
            (POSTGRES, HAND_OFF_PG_BLOCKING),
        ] {
            let mut turns: Vec<Box<dyn Turn>> = Vec::with_capacity(waiters);
            for _ in 0..waiters {
                turns.push(match (backend, implementation) {
                    (REDIS, _) => Box::new(DistlockTurn::new(Arc::new(
                        RedisLock::connect(redis_url).await?,
                    ))),
                    (_, HAND_OFF_PG_BLOCKING) => Box::new(PgBlockingTurn::connect(pg_url).await?),
                    _ => Box::new(DistlockTurn::new(Arc::new(
                        PgLockOptions::new()
                            .max_connections(1)
                            .connect(pg_url)
                            .await?,
                    ))),
                });
            }
            let name = format!("cmp:handoff:{implementation}:{waiters}");
            let r = measure::hand_off(backend, implementation, turns, &name, hold, plan.hand_offs)
                .await?;
            print_hand_off(&r);
            results.hand_offs.push(r);
        }
    }
    if let Some(line) = report::hand_off_against_baseline(&results.hand_offs) {
        println!("{line}");
    }
    Ok(())
}

/// Section 2's rows: distlock, each waiter its own client.
const HAND_OFF_OWN: &str = report::HAND_OFF_OWN;
/// Section 2's rows: distlock, the waiters are tasks sharing one client.
const HAND_OFF_SHARED: &str = report::HAND_OFF_SHARED;
/// Section 2's PostgreSQL baseline: sessions blocked in `pg_advisory_lock`.
const HAND_OFF_PG_BLOCKING: &str = report::HAND_OFF_PG_BLOCKING;

fn print_hand_off(r: &HandOffResult) {
    println!(
        "{:<11} {:<26} {:>7} {:>10} {:>10} {:>12.0} {:>10.1} ms",
        r.backend,
        r.implementation,
        r.waiters,
        report::micros(r.gap.p50_us),
        report::micros(r.gap.p99_us),
        r.hand_offs_per_sec,
        r.longest_wait_ms
    );
}

fn pin(pid: Option<u32>, pinned: bool) -> anyhow::Result<()> {
    if let (Some(pid), true) = (pid, pinned) {
        distlock_testkit::pin_process(pid, 0)?;
    }
    Ok(())
}

async fn holding(plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    println!("\n== 3. the cost of holding K locks (fresh servers, PostgreSQL with its defaults)");
    let redis = RedisServer::start()?;
    let pg = PgServer::start()?;
    pin(redis.pid(), results.pinned)?;
    pin(pg.pid(), results.pinned)?;
    let pg_url = pg.fresh_database()?;
    // Warm-up, not recorded: the first locks on a fresh server also pay for
    // script loading and client buffers.
    hold::redis_hold(&redis, 100).await?;
    println!(
        "{:<11} {:>9} {:>12} {:>14} {:>12} {:>14}",
        "backend", "K held", "connections", "memory growth", "per lock", "private/lock"
    );
    let mut measured = Vec::new();
    for &k in plan.redis_hold_ks {
        measured.push(hold::redis_hold(&redis, k).await?);
    }
    for &k in plan.pg_hold_ks {
        measured.push(hold::pg_hold(&pg, &pg_url, k).await?);
    }
    for r in measured {
        println!(
            "{:<11} {:>9} {:>12} {:>14} {:>12} {:>14}",
            r.backend,
            r.held,
            r.server_connections,
            report::bytes(r.memory_bytes as f64),
            report::bytes(r.bytes_per_lock),
            r.private_bytes.map_or("–".to_owned(), |p| report::bytes(
                p as f64 / r.held.max(1) as f64
            )),
        );
        results.holds.push(r);
    }

    println!("\n-- capacity");
    let pg_cap = hold::pg_capacity_distlock(&pg, &pg_url).await?;
    print_capacity(&pg_cap);
    results.capacity.push(pg_cap);
    drop(pg);

    let table = PgServer::start()?;
    pin(table.pid(), results.pinned)?;
    let table_url = table.fresh_database()?;
    let lock_table = hold::pg_capacity_lock_table(&table_url).await?;
    print_capacity(&lock_table);
    results.capacity.push(lock_table);
    drop(table);

    let label = if plan.quick {
        " (quick mode: not the full 1,000,000)"
    } else {
        ""
    };
    println!(
        "Redis: {} locks through one client{label} ...",
        report::count(plan.redis_capacity as f64)
    );
    let redis_cap = hold::redis_capacity(&redis, plan.redis_capacity).await?;
    print_capacity(&redis_cap);
    results.capacity.push(redis_cap);
    Ok(())
}

fn print_capacity(c: &distlock_comparison::results::CapacityResult) {
    println!(
        "{}: {} locks in {:.2} s{} — {}",
        c.backend,
        report::count(c.held as f64),
        c.acquire_secs,
        c.bytes_per_lock.map_or(String::new(), |b| format!(
            ", {} per lock",
            report::bytes(b)
        )),
        c.how
    );
    if let Some(e) = &c.error {
        println!("    stopped by: {e}");
    }
    for p in &c.probes {
        println!("    {}: {}", p.what, p.outcome);
    }
}

async fn bookings(plan: &Plan, results: &mut Results) -> anyhow::Result<()> {
    results.booking_setup = format!(
        "PostgreSQL with its default max_connections (100). The application has one sqlx pool of {BOOKING_POOL} connections \
         (acquire timeout 1 s) that {BOOKING_CLIENTS} tasks use for booking transactions (UPDATE tickets … fence < $2 + INSERT INTO ticket_log, \
         one transaction, on {TICKETS} seats; a sold seat is given back instead so the workload keeps going), {} s per row. \
         K long-held locks are taken before each row and held throughout: *in PostgreSQL* through distlock's PgAdvisoryLock \
         sharing the application's pool (`PgLockOptions::from_pool`, pool timeout 1 s) — each held lock pins one of the {BOOKING_POOL} connections \
         (rows `{BOOK_IN_PG_SHARED}`); *in PostgreSQL* through distlock's PgAdvisoryLock on a pool of its own (`PgLockOptions::connect`, \
         its default deployment: every option at its default except `max_connections`, raised from 10 to max(10, K) so that all K locks can be held — \
         each held lock then takes a server connection of its own, outside the application's pool; rows `{BOOK_IN_PG_OWN}`); \
         *in Redis* through distlock's RedisLock on a Redis server. K runs past the pool size.",
        plan.booking_time.as_secs()
    );
    println!(
        "\n== 4. booking transactions on PostgreSQL while K locks are held ({BOOKING_CLIENTS} clients, pool of {BOOKING_POOL})"
    );
    let pg = PgServer::start()?;
    let redis = RedisServer::start()?;
    pin(pg.pid(), results.pinned)?;
    pin(redis.pid(), results.pinned)?;
    let url = pg.fresh_database()?;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        booking::prepare(&mut conn, TICKETS).await?;
    }
    let redis_locks = RedisLock::connect(&redis.url()).await?;
    println!(
        "{:>4} {:<22} {:>5} {:>11} {:>10} {:>10} {:>7}  first error",
        "K", "locks in", "held", "bookings/s", "p50", "p99", "failed"
    );
    for &k in plan.booking_ks {
        for (locks_in, tag) in [
            (BOOK_IN_REDIS, "redis"),
            (BOOK_IN_PG_SHARED, "pg-shared"),
            (BOOK_IN_PG_OWN, "pg-own"),
        ] {
            let pool = PgPoolOptions::new()
                .max_connections(BOOKING_POOL)
                .acquire_timeout(Duration::from_secs(1))
                .connect(&url)
                .await?;
            let pg_locks;
            let locks: &dyn DistributedLock = match locks_in {
                BOOK_IN_REDIS => &redis_locks,
                BOOK_IN_PG_SHARED => {
                    pg_locks = PgLockOptions::new()
                        .pool_timeout(Duration::from_secs(1))
                        .from_pool(pool.clone())
                        .await?;
                    &pg_locks
                }
                _ => {
                    pg_locks = PgLockOptions::new()
                        .max_connections((k as u32).max(10))
                        .connect(&url)
                        .await?;
                    &pg_locks
                }
            };
            let attempts =
                (0..k).map(|n| locks.try_acquire_owned_name(format!("long:{tag}:{k}:{n}")));
            let outcomes = futures::future::join_all(attempts).await;
            let mut guards = Vec::new();
            let mut lock_error = None;
            for outcome in outcomes {
                match outcome {
                    Ok(Some(guard)) => guards.push(guard),
                    Ok(None) => anyhow::bail!("a long-held lock was already held"),
                    Err(e) => {
                        lock_error.get_or_insert(e.to_string());
                    }
                }
            }
            let w = booking::run(&pool, BOOKING_CLIENTS, TICKETS, plan.booking_time).await;
            let r = BookingResult {
                locks_in: locks_in.to_owned(),
                requested: k,
                held: guards.len(),
                tps: w.tps,
                latency: w.latency,
                errors: w.errors,
                first_error: w.first_error,
                lock_error,
            };
            println!(
                "{:>4} {:<22} {:>5} {:>11.0} {:>10} {:>10} {:>7}  {}",
                k,
                locks_in,
                r.held,
                r.tps,
                report::micros(r.latency.p50_us),
                report::micros(r.latency.p99_us),
                r.errors,
                r.first_error
                    .as_deref()
                    .or(r.lock_error.as_deref())
                    .unwrap_or("")
            );
            for guard in guards {
                guard.release().await?;
            }
            pool.close().await;
            results.booking.push(r);
        }
    }
    Ok(())
}

/// `try_acquire` with an owned name, for `join_all`.
trait TryOwned {
    fn try_acquire_owned_name(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<distlock::LockGuard>, distlock::LockError>>;
}

impl TryOwned for dyn DistributedLock + '_ {
    async fn try_acquire_owned_name(
        &self,
        name: String,
    ) -> Result<Option<distlock::LockGuard>, distlock::LockError> {
        self.try_acquire(&name, Duration::from_secs(3600)).await
    }
}

fn write_report(out: &std::path::Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("report.md"), report::markdown(r))?;
    charts::write_all(out, r)
}

fn pg_version() -> String {
    let bin = std::env::var("DISTLOCK_PG_BIN")
        .map(|b| format!("{b}/postgres"))
        .unwrap_or_else(|_| "postgres".to_owned());
    system::version_of(&bin)
}

/// The current UTC time, `YYYY-MM-DD HH:MM`.
fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
