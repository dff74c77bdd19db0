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

/// One lock-cycle (acquire + release) run.
#[derive(Debug, Clone, Serialize)]
pub struct CycleResult {
    /// `raw redis-rs`, `distlock`, `rslock`, ...
    pub implementation: String,
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// Concurrent tasks, each on a name of its own.
    pub tasks: usize,
    /// Cycles completed per second in the measured window.
    pub ops_per_sec: f64,
    /// Latency of one cycle.
    pub latency: Latency,
}

/// One hand-off run: release → next waiter's acquire on one name.
#[derive(Debug, Clone, Serialize)]
pub struct HandOffResult {
    /// `Redis` or `PostgreSQL`.
    pub backend: String,
    /// Waiters on the one name, each its own client.
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
    /// Section 1 and 5.
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
