//! A server's log file: where its output goes, and the tail that errors show.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;
use std::process::Stdio;

use crate::error::{TestkitError, io_error};

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
