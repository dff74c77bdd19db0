//! The servers the kit runs: `redis-server`, PostgreSQL and PgBouncer, each
//! through the one spawner of [`crate::process`], each saying only what is
//! its own (command line, readiness probe).

mod pgbouncer;
pub(crate) mod postgres;
pub(crate) mod redis;

use std::thread;

pub use pgbouncer::{PgBouncer, PgBouncerOptions, PoolMode};
pub use postgres::{PgOptions, PgServer};
pub use redis::{RedisOptions, RedisServer};

use crate::error::{TestkitError, io_error};

impl RedisServer {
    /// Starts `n` independent servers with the default [`RedisOptions`]: the
    /// nodes of a Redlock, each on its own port with its own data.
    ///
    /// See [`start_several_with`](Self::start_several_with).
    pub fn start_several(n: usize) -> Result<Vec<Self>, TestkitError> {
        Self::start_several_with(n, RedisOptions::default())
    }

    /// Starts `n` independent servers with `options`, concurrently (one thread
    /// each), so five take about as long as one. Each answers `PING` when this
    /// returns; the servers know nothing of each other.
    ///
    /// When any of them fails to start, the ones already started are killed and
    /// the first error is returned.
    pub fn start_several_with(n: usize, options: RedisOptions) -> Result<Vec<Self>, TestkitError> {
        start_concurrently(n, |_| Self::start_with(options.clone()))
    }
}

/// Runs `start(i)` for `i` in `0..n` on `n` threads; all servers or none.
pub(crate) fn start_concurrently<T, F>(n: usize, start: F) -> Result<Vec<T>, TestkitError>
where
    T: Send,
    F: Fn(usize) -> Result<T, TestkitError> + Sync,
{
    let results: Vec<Result<T, TestkitError>> = thread::scope(|scope| {
        let start = &start;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                thread::Builder::new()
                    .name(format!("lock-testkit-start-{i}"))
                    .spawn_scoped(scope, move || start(i))
                    .map_err(io_error("could not start a thread to start a server"))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle?.join().unwrap_or_else(|_| {
                    Err(TestkitError::Other(
                        "a thread starting a server panicked".into(),
                    ))
                })
            })
            .collect()
    });
    // On the first error, the servers collected so far and those after it are
    // dropped, which kills them.
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_kills_the_servers_already_started() {
        let pids = std::sync::Mutex::new(Vec::new());
        let result = start_concurrently(4, |i| {
            if i == 2 {
                return Err(TestkitError::Other("node 2 refuses".into()));
            }
            let server = RedisServer::start()?;
            pids.lock()
                .expect("pids")
                .push(server.pid().expect("running"));
            Ok(server)
        });
        assert!(
            matches!(&result, Err(TestkitError::Other(m)) if m == "node 2 refuses"),
            "{result:?}"
        );
        let pids = pids.into_inner().expect("pids");
        assert_eq!(pids.len(), 3);
        for pid in pids {
            assert!(!crate::process_is_alive(pid), "{pid} survived");
        }
    }
}
