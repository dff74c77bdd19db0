//! Process plumbing shared by both servers: finding programs, /proc inspection,
//! signals, bounded waits, logs and helper commands with a time limit.

use std::collections::BTreeSet;
use std::env;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{TestkitError, io_error};
use crate::spawner;

/// How many times a start is tried on a fresh port when the port was taken.
pub(crate) const PORT_ATTEMPTS: u32 = 3;

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

/// A free TCP port on 127.0.0.1 (free when we looked: someone may take it before
/// the server binds it, hence [`PORT_ATTEMPTS`]).
///
/// Never the same port twice in one process: a server killed by one test
/// frees its port, and its clients keep reconnecting there; were the port
/// handed to another test's server, they would reach the wrong server.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_error("could not reserve a free port on 127.0.0.1"))?;
        let port = listener
            .local_addr()
            .map_err(io_error("could not read the reserved port"))?
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(TestkitError::Other(
        "the kernel offered only ports this process has used before".into(),
    ))
}

/// Finds an executable `name` in the directories of `PATH`.
pub(crate) fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Whether `path` is a regular file with an execute bit.
pub(crate) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A server's log: opened for appending, so a restart keeps the earlier output.
pub(crate) struct Log {
    /// Where the server writes stdout and stderr.
    pub(crate) file: File,
    /// Where this start's output begins.
    pub(crate) offset: u64,
}

impl Log {
    pub(crate) fn open(path: &Path) -> Result<Self, TestkitError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io_error(format!(
                "could not open log file {}",
                path.display()
            )))?;
        let offset = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self { file, offset })
    }

    /// Two handles on the log, for the child's stdout and stderr.
    pub(crate) fn stdio(&self) -> Result<(Stdio, Stdio), TestkitError> {
        let out = self
            .file
            .try_clone()
            .map_err(io_error("could not duplicate the log file handle"))?;
        let err = self
            .file
            .try_clone()
            .map_err(io_error("could not duplicate the log file handle"))?;
        Ok((Stdio::from(out), Stdio::from(err)))
    }
}

/// The last lines of a log written since `from`.
pub(crate) fn log_tail(path: &Path, from: u64) -> String {
    const MAX_BYTES: u64 = 16 * 1024;
    const MAX_LINES: usize = 30;
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = from.max(len.saturating_sub(MAX_BYTES));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return format!("(could not read {})", path.display());
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(MAX_LINES)..].join("\n");
    if tail.trim().is_empty() {
        format!("({} is empty)", path.display())
    } else {
        tail
    }
}

/// The error for a server that exited during start: `PortInUse` when its log says so.
pub(crate) fn startup_failure(
    server: &'static str,
    port: u16,
    status: ExitStatus,
    log_path: &Path,
    offset: u64,
) -> TestkitError {
    let log_tail = log_tail(log_path, offset);
    if log_tail.contains("Address already in use") {
        TestkitError::PortInUse {
            server,
            port,
            log_tail,
        }
    } else {
        TestkitError::Exited {
            server,
            port,
            status: status.to_string(),
            log_tail,
        }
    }
}

/// Runs a helper command to completion within `timeout`, killing it when it takes
/// longer, and fails unless it exits with success.
pub(crate) fn run_checked(mut command: Command, timeout: Duration) -> Result<Output, TestkitError> {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawner::spawn_owned(command, libc::SIGKILL)
        .map_err(io_error(format!("could not run {description}")))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_all = |pipe: Option<Box<dyn io::Read + Send>>| {
        thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let out_reader = read_all(stdout.map(|p| Box::new(p) as Box<dyn io::Read + Send>));
    let err_reader = read_all(stderr.map(|p| Box::new(p) as Box<dyn io::Read + Send>));

    let status = wait_child(&mut child, timeout)
        .map_err(io_error(format!("could not wait for {description}")))?;
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(TestkitError::CommandTimedOut {
            command: description,
            timeout,
        });
    };
    let output = Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    };
    if output.status.success() {
        Ok(output)
    } else {
        Err(TestkitError::CommandFailed {
            command: description,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// The process behind a server, if one is running, and whether it is paused.
#[derive(Debug, Default)]
pub(crate) struct ServerProcess {
    pub(crate) child: Option<Child>,
    pub(crate) paused: bool,
}

impl ServerProcess {
    pub(crate) fn running(child: Child) -> Self {
        Self {
            child: Some(child),
            paused: false,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn helper_commands_report_failures_and_time_limits() {
        let mut ok = Command::new("sh");
        ok.args(["-c", "echo out; echo err >&2"]);
        let output = run_checked(ok, Duration::from_secs(10)).expect("sh succeeds");
        assert_eq!(output.stdout, b"out\n");

        let mut failing = Command::new("sh");
        failing.args(["-c", "echo broken >&2; exit 3"]);
        let err = run_checked(failing, Duration::from_secs(10)).expect_err("exit 3");
        assert!(err.to_string().contains("broken"), "{err}");

        let mut slow = Command::new("sleep");
        slow.arg("30");
        let started = Instant::now();
        let err = run_checked(slow, Duration::from_millis(100)).expect_err("too slow");
        assert!(
            matches!(err, TestkitError::CommandTimedOut { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
