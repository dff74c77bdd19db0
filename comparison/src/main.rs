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
use distlock_comparison::results::{ClusterSpread, CycleResult, HandOffResult, Results};
use distlock_comparison::{booking, charts, hold, markdown, measure, report, system};
use distlock_postgres::PgLockOptions;
use distlock_redis::{DEFAULT_PREFIX, RedisLock, Redlock};
use distlock_testkit::{PgOptions, PgServer, RedisCluster, RedisServer};

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

/// Measures distlock's Redis and PostgreSQL backends side by side, with the
/// raw clients and the peer crates, on throwaway servers it starts itself.
///
/// Sections: the lock cycle (latency, throughput and client and server CPU
/// per cycle at 1, 16 and 64 tasks, in interleaved rounds), hand-off to the
/// next waiter (against PostgreSQL's own pg_advisory_lock), the cost and
/// capacity of held locks, booking transactions while locks are held, and
/// one Redis server against Redlock and a cluster. Prints each section as it finishes, then writes report.md,
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
        rt.block_on(hold::section(
            plan.redis_hold_ks,
            plan.pg_hold_ks,
            plan.redis_capacity,
            plan.quick,
            &mut results,
        ))?;
    }
    if runs(Section::Booking) {
        rt.block_on(booking::section(
            plan.booking_ks,
            plan.booking_time,
            &mut results,
        ))?;
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
    println!("{}", report::cycle_line_header());
}

fn print_cycle_row(round: &str, r: &CycleResult) {
    println!("{}", report::cycle_line(round, r));
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
        system::pin_server(server.pid(), results.pinned)?;
    }
    let cluster = RedisCluster::start().context("start a Redis Cluster of 3 masters")?;
    for master in cluster.masters() {
        system::pin_server(master.pid(), results.pinned)?;
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
    println!("{}", report::hand_off_line_header());
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
    println!("{}", report::hand_off_line(r));
}

fn write_report(out: &std::path::Path, r: &Results) -> anyhow::Result<()> {
    std::fs::write(out.join("results.json"), serde_json::to_string_pretty(r)?)?;
    std::fs::write(out.join("report.md"), markdown::markdown(r))?;
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
