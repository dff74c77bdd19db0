//! Throwaway `redis-server` and PostgreSQL processes for distlock's tests and
//! benchmarks, with fault handles (kill, pause, resume, restart), and a proxy
//! that makes the network between client and server slow, silent or cut.
//!
//! Every server runs as a child process on a free port of `127.0.0.1`, in a
//! private temporary directory, and is ready when `start` returns. No process
//! is left behind: dropping a server stops it, and each server also gets a
//! signal from the kernel when the test process dies, even by SIGKILL
//! (`PR_SET_PDEATHSIG`, Linux only).
//!
//! The API is synchronous (std only), so it works from plain and async tests
//! alike; starting a server blocks for a few milliseconds (Redis) to about a
//! second (PostgreSQL).
//!
//! ```no_run
//! use distlock_testkit::{PgServer, RedisServer};
//!
//! # fn main() -> Result<(), distlock_testkit::TestkitError> {
//! // Most tests just need a server: one per process, each test its own database.
//! let redis_url = distlock_testkit::redis_url()?;
//! let database_url = distlock_testkit::database_url()?;
//!
//! // Fault injection needs a server of one's own.
//! let mut redis = RedisServer::start()?;
//! redis.pause()?; // clients time out
//! redis.resume()?;
//! redis.kill()?; // connections reset, new ones refused
//! redis.restart()?; // same port
//!
//! let mut pg = PgServer::start()?;
//! assert_eq!(pg.psql("SELECT 1")?, "1");
//! let url = pg.fresh_database()?;
//! # let _ = (redis_url, database_url, url);
//! # Ok(())
//! # }
//! ```
//!
//! Several servers: [`RedisServer::start_several`] starts independent
//! servers concurrently (the nodes of a Redlock), and [`RedisCluster`] a Redis
//! Cluster of masters formed by `redis-cli --cluster create`, ready when
//! `start` returns, whose nodes are `RedisServer`s with the usual fault
//! handles; [`RedisCluster::migrate_slot`] moves a slot so that clients get
//! `MOVED`.
//!
//! Faults of the network rather than the server come from a [`LinkProxy`]:
//! a TCP proxy on a loopback port of its own, forwarding to a server's
//! address, that clients use instead of the server.
//!
//! - [`set_delay`](LinkProxy::set_delay): latency added to each direction.
//! - [`blackhole`](LinkProxy::blackhole): connections stay open but nothing
//!   gets through, so clients time out.
//! - [`cut`](LinkProxy::cut): connections reset, new ones refused.
//! - [`restore`](LinkProxy::restore): back to normal, on the same port.
//!
//! A [`Partition`] drops packets in the kernel (iptables, as root), so that
//! nobody answers keepalives for the far end: [`Partition::drop_port`] for
//! every client of a server, [`Partition::isolate`] for the clients given an
//! [`AliasPort`]. Its rules go when it is dropped, even if the test fails.
//!
//! Whether a run under such faults stayed correct is for a [`History`] to
//! tell: clients record each acquire and release on one monotonic clock, and
//! [`History::check`] fails on a lock held twice at once or fencing tokens
//! that do not rise. A domain check of the protected data (the ticket
//! example's seat log, kept beside the example's tests) adds its findings
//! as [`Violation::Storage`].
//!
//! # Environment
//!
//! - Binaries: `redis-server` (and `redis-cli` for a cluster) from `PATH`;
//!   PostgreSQL from `$DISTLOCK_PG_BIN` (a directory), else `postgres` and
//!   `initdb` side by side on `PATH`, else the newest
//!   `/usr/lib/postgresql/*/bin`. A missing binary is an error that
//!   says what to install, never a skipped test.
//! - `REDIS_URL` / `DATABASE_URL`: when set, [`redis_url`] / [`database_url`]
//!   return them and start nothing.
//! - Directories live under `$DISTLOCK_TESTKIT_DIR/distlock-testkit-<uid>/`,
//!   by default in `/dev/shm` when it has 2 GiB free, else in the temporary
//!   directory. The PostgreSQL template cluster stays there for later runs;
//!   what a killed test process left behind is removed by the next one.
//! - As root, PostgreSQL runs as the `nobody` user (it refuses to run as root).

// The rooms, from the bottom up:
// - process:  spawning children that die with us; the one start → ready →
//             kill-on-failure → stop sequence every server goes through; ports
//             and the one port-retry loop; logs; /proc; helper commands.
// - servers:  redis-server, PostgreSQL (binaries, template, psql), PgBouncer:
//             each only its command line and readiness probe.
// - resp:     the RESP client the kit probes and steers Redis with.
// - cluster:  Redis Cluster: forming, slots, readiness, failover, migration.
// - faults:   process faults (kill, pause), the link proxy, iptables partitions.
// - history:  the generic lock-history checker.
// - workdir, tls, cpu, exit_cleanup, error: directories, certificates, CPU
//             pinning, the exit hook, the error type.
mod cluster;
mod cpu;
mod error;
mod exit_cleanup;
mod faults;
mod history;
mod process;
mod resp;
mod servers;
mod tls;
mod workdir;

pub use cluster::{RedisCluster, RedisClusterOptions};
pub use cpu::{available_cpus, pin_apart, pin_current_thread, pin_process};
pub use error::TestkitError;
pub use faults::{AliasPort, LinkProxy, LinkState, Partition};
pub use history::{Counts, Held, History, Interval, Note, Op, OpId, Outcome, Report, Violation};
pub use process::process_is_alive;
pub use servers::{
    PgBouncer, PgBouncerOptions, PgOptions, PgServer, PoolMode, RedisOptions, RedisServer,
};
pub use tls::TestCertificates;

/// The environment variable that points tests at an existing Redis server.
pub const REDIS_URL_ENV: &str = "REDIS_URL";
/// The environment variable that points tests at an existing PostgreSQL database.
pub const DATABASE_URL_ENV: &str = "DATABASE_URL";

/// A Redis URL for tests: `$REDIS_URL` when set (no process is started),
/// otherwise the URL of this process's [shared server](RedisServer::shared).
pub fn redis_url() -> Result<String, TestkitError> {
    match env_url(REDIS_URL_ENV) {
        Some(url) => Ok(url),
        None => Ok(RedisServer::shared()?.url()),
    }
}

/// A PostgreSQL URL for tests: `$DATABASE_URL` when set (no process is
/// started), otherwise a new, empty database on this process's
/// [shared server](PgServer::shared), different on every call.
pub fn database_url() -> Result<String, TestkitError> {
    match env_url(DATABASE_URL_ENV) {
        Some(url) => Ok(url),
        None => PgServer::shared()?.fresh_database(),
    }
}

fn env_url(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .filter(|url| !url.trim().is_empty())
}
