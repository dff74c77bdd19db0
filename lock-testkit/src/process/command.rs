//! Helper programs: finding them, and running one to completion within a
//! time limit.

use std::env;
use std::fs;
use std::io::{self, Read as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use super::proc::wait_child;
use super::spawn::spawn_owned;
use crate::error::{TestkitError, io_error};

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

/// Runs a helper command to completion within `timeout`, killing it when it takes
/// longer, and fails unless it exits with success.
pub(crate) fn run_checked(mut command: Command, timeout: Duration) -> Result<Output, TestkitError> {
    let description = format!("{command:?}");
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_owned(command, libc::SIGKILL)
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

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

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
