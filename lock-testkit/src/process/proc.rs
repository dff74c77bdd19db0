//! What /proc and signals tell about a process: alive, stopped, its
//! children, its start time; and bounded waits for it.

use std::fs;
use std::io;
use std::process::{Child, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

/// Whether a process with this pid exists and has not terminated.
///
/// A zombie (exited, not yet reaped by its parent) counts as gone: it runs no
/// code and holds no sockets or memory.
pub fn process_is_alive(pid: u32) -> bool {
    matches!(proc_stat(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// `(state, ppid)` from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// When the process started (clock ticks since boot): with the pid, an identity
/// that survives pid reuse.
pub(crate) fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 of stat(5); the fields after the command name start at field 3.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Whether the process is stopped by a signal (SIGSTOP).
pub(crate) fn is_stopped(pid: u32) -> bool {
    matches!(proc_stat(pid), Some(('T', _)))
}

/// All processes below `pid` in the process tree, found through the ppid in /proc.
pub(crate) fn descendants(pid: u32) -> Vec<u32> {
    let mut links = Vec::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(p) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((_, ppid)) = proc_stat(p) {
                links.push((p, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid) in &links {
            if ppid == parent && !found.contains(&p) {
                found.push(p);
                frontier.push(p);
            }
        }
    }
    found
}

/// Sends `sig` to `pid`; a process that is already gone is not an error.
pub(crate) fn signal(pid: u32, sig: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
    // SAFETY: kill(2) has no memory-safety preconditions.
    if unsafe { libc::kill(pid, sig) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Polls `done` with a short, growing sleep until it is true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Waits up to `timeout` for `child` to exit and reaps it.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    let mut result = Ok(None);
    wait_until(timeout, || match child.try_wait() {
        Ok(None) => false,
        other => {
            result = other;
            true
        }
    });
    result
}

/// Whether `child` has not exited yet. While this holds (and until we reap it),
/// its pid cannot be reused, so signalling it is safe.
pub(crate) fn is_unreaped(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(None))
}

/// Sends `sig` to `pid` and waits until the process shows the wanted stopped state.
pub(crate) fn signal_and_wait_stopped(pid: u32, sig: libc::c_int, stopped: bool) -> io::Result<()> {
    signal(pid, sig)?;
    if wait_until(Duration::from_secs(2), || {
        !process_is_alive(pid) || is_stopped(pid) == stopped
    }) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "process {pid} did not {} within 2 s",
            if stopped { "stop" } else { "continue" }
        )))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn proc_inspection_sees_a_child_and_its_identity() {
        let mut child = Command::new("sleep").arg("5").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(process_is_alive(pid));
        assert!(descendants(std::process::id()).contains(&pid));
        let started = start_time(pid).expect("start time");
        assert_eq!(start_time(pid), Some(started));
        assert!(start_time(std::process::id()).expect("own start time") <= started);

        signal_and_wait_stopped(pid, libc::SIGSTOP, true).expect("stop");
        assert!(is_stopped(pid));
        signal_and_wait_stopped(pid, libc::SIGCONT, false).expect("continue");
        assert!(!is_stopped(pid));

        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!process_is_alive(pid));
        assert_eq!(start_time(pid), None);
    }
}
