//! CPU time spent by processes, from `/proc`: the client's own and a
//! server's (with the processes it forked, as PostgreSQL's backends), read
//! before and after a measured run so that a row can say how much CPU one
//! cycle cost on each side.
//!
//! The time of a process is the sum over its threads of
//! `/proc/<pid>/task/<tid>/schedstat`'s first field (nanoseconds on a CPU,
//! counted by the scheduler at every switch). The fallback where schedstat
//! is missing is `utime` plus `stime` of `/proc/<pid>/stat`: they come in
//! clock ticks (10 ms here) charged to whoever runs when the tick fires, so
//! a server that runs in bursts of tens of µs between idle spells can be
//! charged far from its real time over a window of a second (a 0.4 s quick
//! row read 0 ticks for a PostgreSQL backend doing thousands of cycles).

use std::fs;
use std::time::Duration;

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit
/// of the times in `/proc/<pid>/stat`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold
/// spaces and parentheses, so the line is split after its last `)`): index
/// 0 is the state (field 3 of proc(5)), 1 the parent pid, 11 `utime` and 12
/// `stime`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn ticks_of(fields: &[String]) -> u64 {
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Nanoseconds on a CPU of all threads of `pid` (schedstat), `None` where
/// the kernel does not provide it.
fn schedstat_nanos(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(text) = fs::read_to_string(entry.path().join("schedstat")) else {
            // A thread that ended between the listing and the read.
            continue;
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        any = true;
    }
    any.then_some(total)
}

/// CPU time of the process `pid` so far (all its threads): schedstat's
/// nanoseconds, or `utime` + `stime` where schedstat is missing; zero when
/// the process is gone.
pub fn process_time(pid: u32) -> Duration {
    if let Some(nanos) = schedstat_nanos(pid) {
        return Duration::from_nanos(nanos);
    }
    stat_fields(pid).map_or(Duration::ZERO, |fields| to_duration(ticks_of(&fields)))
}

/// CPU time of `pid` and of its living children (PostgreSQL: the
/// postmaster and its backends), as [`process_time`]. Children that exit
/// between two readings take their time with them: read around runs whose
/// connections stay open.
pub fn tree_time(pid: u32) -> Duration {
    let mut total = process_time(pid);
    let parent = pid.to_string();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(fields) = stat_fields(child)
                && fields.get(1) == Some(&parent)
            {
                total += process_time(child);
            }
        }
    }
    total
}

/// This process's user + system CPU time so far (all threads).
pub fn own_time() -> Duration {
    process_time(std::process::id())
}

fn to_duration(ticks: u64) -> Duration {
    let per_second = ticks_per_second();
    Duration::from_secs(ticks / per_second)
        + Duration::from_nanos((ticks % per_second) * 1_000_000_000 / per_second)
}

/// CPU readings of the client (this process) and of one server, taken at
/// the start of a run; [`CpuSample::per_op`] turns them into CPU per
/// operation at its end.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    server_pid: Option<u32>,
    client: Duration,
    server: Duration,
}

/// CPU per operation on each side, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuPerOp {
    /// The client process's CPU per operation.
    pub client_us: f64,
    /// The server's (process tree's) CPU per operation; 0 when no server
    /// was named.
    pub server_us: f64,
}

impl CpuSample {
    /// Reads the client's CPU time and that of the server `server_pid`
    /// (with its children).
    pub fn start(server_pid: Option<u32>) -> Self {
        CpuSample {
            server_pid,
            client: own_time(),
            server: server_pid.map_or(Duration::ZERO, tree_time),
        }
    }

    /// CPU spent since [`start`](Self::start), divided by `ops`.
    pub fn per_op(&self, ops: u64) -> CpuPerOp {
        if ops == 0 {
            return CpuPerOp::default();
        }
        let client = own_time().saturating_sub(self.client);
        let server = self.server_pid.map_or(Duration::ZERO, |pid| {
            tree_time(pid).saturating_sub(self.server)
        });
        CpuPerOp {
            client_us: client.as_secs_f64() * 1e6 / ops as f64,
            server_us: server.as_secs_f64() * 1e6 / ops as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_in_the_own_time() {
        // Spin until our CPU time has grown by 30 ms (however loaded the
        // machine, this process gets the CPU sooner or later), bounded.
        let before = own_time();
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while own_time() < before + Duration::from_millis(30) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "20 s of busy loop did not add 30 ms to /proc/self/stat's times"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        assert_eq!(
            process_time(u32::MAX),
            Duration::ZERO,
            "a pid that cannot exist"
        );
    }
}
