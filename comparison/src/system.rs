//! What the machine and the servers report: process memory from /proc,
//! Redis `INFO`, the CPU model and the load.

use std::fs;

use redis::aio::MultiplexedConnection;

/// Memory of one process, in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcMemory {
    /// Resident set size (`VmRSS`), shared pages included.
    pub rss: i64,
    /// Pages only this process has (`Private_Clean + Private_Dirty`).
    pub private: i64,
}

/// Summed memory of the processes `pids` (those that vanished count zero).
pub fn memory_of(pids: &[u32]) -> ProcMemory {
    let mut total = ProcMemory::default();
    for pid in pids {
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            total.rss += kib_field(&status, "VmRSS:");
        }
        if let Ok(rollup) = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")) {
            total.private +=
                kib_field(&rollup, "Private_Clean:") + kib_field(&rollup, "Private_Dirty:");
        }
    }
    total
}

fn kib_field(text: &str, field: &str) -> i64 {
    text.lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<i64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// One numeric field of Redis `INFO`.
pub async fn redis_info(conn: &mut MultiplexedConnection, field: &str) -> anyhow::Result<i64> {
    let info: String = redis::cmd("INFO").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("INFO has no numeric {field}"))
}

/// The CPU model name.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_owned())
            })
        })
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The 1-, 5- and 15-minute load averages.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The first line of `program --version`.
pub fn version_of(program: &str) -> String {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.lines().next().unwrap_or_default().trim().to_owned())
        .unwrap_or_else(|| format!("{program}: unknown"))
}

/// Pins the server process `pid` to CPU 0, where the run keeps its
/// servers, when the run pins at all (`pinned`).
pub fn pin_server(pid: Option<u32>, pinned: bool) -> anyhow::Result<()> {
    if let (Some(pid), true) = (pid, pinned) {
        distlock_testkit::pin_process(pid, 0)?;
    }
    Ok(())
}
