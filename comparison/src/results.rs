//! What the run measured, as written to `target/comparison/results.json`.

use serde::Serialize;

/// Latency percentiles of one measurement, in microseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// How many operations were sampled.
    pub samples: usize,
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Slowest sample.
    pub max_us: f64,
}

/// One lock-cycle (acquire + release) row: one run, or the median of
/// several rounds (see [`CycleResult::median_of`]).
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleResult {
    /// `raw redis-rs`, `distlock`, `rslock`, ...
    pub implementation: String,
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// Concurrent tasks, each on a name of its own.
    pub tasks: usize,
    /// Cycles completed per second in the measured window (over rounds:
    /// the median round's).
    pub ops_per_sec: f64,
    /// The lowest cycles/s of the rounds (one round: `ops_per_sec`).
    pub ops_per_sec_min: f64,
    /// The highest cycles/s of the rounds (one round: `ops_per_sec`).
    pub ops_per_sec_max: f64,
    /// Every round's cycles/s, in the order the rounds ran.
    pub ops_per_sec_rounds: Vec<f64>,
    /// This process's CPU time per cycle, µs (`/proc/self/stat` delta over
    /// the measured window; over rounds: the median).
    pub client_cpu_us: f64,
    /// The server's CPU time per cycle, µs (Redis: the redis-server
    /// process; PostgreSQL: the postmaster and its backends); `None` where
    /// not measured (several servers).
    pub server_cpu_us: Option<f64>,
    /// Latency of one cycle (over rounds: the median round's).
    pub latency: Latency,
}

impl CycleResult {
    /// One row from the rounds of one implementation at one task count:
    /// the median cycles/s with the min–max, the median CPU figures, and
    /// the latency of the median round. `None` for no rounds.
    pub fn median_of(rounds: &[CycleResult]) -> Option<CycleResult> {
        let mut by_ops: Vec<&CycleResult> = rounds.iter().collect();
        by_ops.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
        // The lower median for an even count: a real round, not an average.
        let middle = *by_ops.get((by_ops.len().checked_sub(1)?) / 2)?;
        let client: Vec<f64> = rounds.iter().map(|r| r.client_cpu_us).collect();
        let server: Vec<f64> = rounds.iter().filter_map(|r| r.server_cpu_us).collect();
        Some(CycleResult {
            ops_per_sec_min: by_ops.first().map_or(0.0, |r| r.ops_per_sec),
            ops_per_sec_max: by_ops.last().map_or(0.0, |r| r.ops_per_sec),
            ops_per_sec_rounds: rounds.iter().map(|r| r.ops_per_sec).collect(),
            client_cpu_us: median(client).unwrap_or(0.0),
            server_cpu_us: median(server),
            ..middle.clone()
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One hand-off run: release → next waiter's acquire on one name.
#[derive(Debug, Clone, Serialize)]
pub struct HandOffResult {
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// `distlock` (each waiter its own client), `distlock, 1 shared
    /// client` (the waiters are tasks sharing one client), or
    /// `pg_advisory_lock` (each waiter its own session, blocked in the
    /// server's own wait).
    pub implementation: String,
    /// Waiters on the one name.
    pub waiters: usize,
    /// How long each holder kept the lock.
    pub hold_ms: f64,
    /// Hand-offs per second over the whole run.
    pub hand_offs_per_sec: f64,
    /// The longest any waiter waited for one acquire.
    pub longest_wait_ms: f64,
    /// Release call → next holder's acquire returned.
    pub gap: Latency,
}

/// K locks held at once, and what that costs the server.
#[derive(Debug, Clone, Serialize)]
pub struct HoldResult {
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// Locks asked for.
    pub requested: usize,
    /// Locks actually held.
    pub held: usize,
    /// Time to take them.
    pub acquire_secs: f64,
    /// Server connections in use while they are held (client backends on
    /// PostgreSQL, `connected_clients` on Redis).
    pub server_connections: u64,
    /// Growth of the server's memory while they are held, in bytes:
    /// PostgreSQL: sum of the backends' RSS; Redis: `used_memory`.
    pub memory_bytes: i64,
    /// PostgreSQL only: growth of the backends' private memory (USS,
    /// `Private_*` in `smaps_rollup`), which RSS overstates with shared pages.
    pub private_bytes: Option<i64>,
    /// `memory_bytes / held`.
    pub bytes_per_lock: f64,
    /// The first error, when fewer than `requested` could be taken.
    pub error: Option<String>,
}

/// What another client's ordinary work saw at the moment a capacity limit was hit.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// What was tried.
    pub what: String,
    /// `ok` or the exact error.
    pub outcome: String,
}

/// How many locks a backend holds at once before it fails.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityResult {
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// How the locks were taken.
    pub how: String,
    /// Locks held at the end.
    pub held: usize,
    /// Seconds to take them.
    pub acquire_secs: f64,
    /// Seconds to release them (`None` when the session was closed instead).
    pub release_secs: Option<f64>,
    /// Server memory growth per lock, where measured.
    pub bytes_per_lock: Option<f64>,
    /// The error that stopped it (`None`: the target was reached).
    pub error: Option<String>,
    /// Other clients' work at that moment.
    pub probes: Vec<Probe>,
}

/// Booking throughput on PostgreSQL while K long-held locks are out.
#[derive(Debug, Clone, Serialize)]
pub struct BookingResult {
    /// Where the K locks live: `Redis` or `PostgreSQL`.
    pub locks_in: String,
    /// Locks asked for.
    pub requested: usize,
    /// Locks actually held during the measurement.
    pub held: usize,
    /// Committed booking transactions per second.
    pub tps: f64,
    /// Latency of one booking transaction (pool wait included).
    pub latency: Latency,
    /// Booking transactions that failed.
    pub errors: u64,
    /// The first booking error, if any.
    pub first_error: Option<String>,
    /// The first error taking a lock, if any.
    pub lock_error: Option<String>,
}

/// How the cycle names of one Redis Cluster row spread over its masters.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterSpread {
    /// The row's label (its names are `cmp:cycle:<label>:<task>`).
    pub implementation: String,
    /// Concurrent tasks: the names of tasks `0..tasks`.
    pub tasks: usize,
    /// How many of those names' keys land on each master (slot of the key,
    /// then the master serving it per `CLUSTER SLOTS`), in master order.
    pub names_per_master: Vec<usize>,
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Results {
    /// `quick` or `full`.
    pub mode: String,
    /// UTC start time.
    pub started: String,
    /// The command that produced them.
    pub command: String,
    /// CPUs available to the run.
    pub cpus: usize,
    /// CPU model, from /proc/cpuinfo.
    pub cpu_model: String,
    /// `redis-server --version`, `postgres --version`.
    pub servers: Vec<String>,
    /// Whether servers and client were pinned to different CPUs.
    pub pinned: bool,
    /// 1-minute load average before the run (other work on the machine).
    pub load_before: String,
    /// The sections that ran (all, unless `--only` named some).
    pub sections: Vec<String>,
    /// Rounds of the lock-cycle section: every implementation ran once per
    /// task count in each round, interleaved.
    pub rounds: usize,
    /// Measured seconds per lock-cycle run (after its warm-up).
    pub cycle_secs: f64,
    /// Section 1 and 5: one row per implementation and task count, the
    /// median of the rounds.
    pub cycles: Vec<CycleResult>,
    /// Peers that are not in the run, and why.
    pub peers_left_out: Vec<String>,
    /// Section 2.
    pub hand_offs: Vec<HandOffResult>,
    /// Section 3: fixed K.
    pub holds: Vec<HoldResult>,
    /// Section 3: capacity.
    pub capacity: Vec<CapacityResult>,
    /// Section 4 settings, in words.
    pub booking_setup: String,
    /// Section 4.
    pub booking: Vec<BookingResult>,
    /// Section 6: the uncontended cycle through distlock on one Redis
    /// server, on Redlocks of 3 and 5 servers and on a 3-master Redis
    /// Cluster.
    pub topologies: Vec<CycleResult>,
    /// Section 6: where the cluster rows' names land.
    pub cluster_spread: Vec<ClusterSpread>,
    /// Section 6: seconds to start the servers and to form the cluster.
    pub topology_start_secs: f64,
    /// Wall time of the custom measurements, seconds.
    pub wall_secs: f64,
}
