//! The one error type of the kit: every failure says what went wrong and, for a
//! server that would not start, shows the end of its log.

use std::io;
use std::time::Duration;

/// Why the kit could not start, reach or control a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestkitError {
    /// A program the kit needs is not installed where it looked.
    #[error("{program} not found {searched}: {hint}")]
    NotInstalled {
        /// The missing program(s).
        program: String,
        /// Where the kit looked, e.g. "on PATH".
        searched: String,
        /// What to install or set instead.
        hint: String,
    },
    /// An operating-system call failed. The message includes the
    /// `io::Error`'s, so it is not also the `source()`.
    #[error("{context}: {error}")]
    Io {
        /// What the kit was doing.
        context: String,
        /// The underlying error.
        error: io::Error,
    },
    /// The server could not listen on its port because something else took it.
    #[error(
        "{server} could not listen on 127.0.0.1:{port}: address already in use; log tail:\n{log_tail}"
    )]
    PortInUse {
        /// Which server, e.g. "redis-server".
        server: &'static str,
        /// The port it tried.
        port: u16,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// The server process exited before it was ready.
    #[error("{server} on 127.0.0.1:{port} exited while starting ({status}); log tail:\n{log_tail}")]
    Exited {
        /// Which server.
        server: &'static str,
        /// Its port.
        port: u16,
        /// How it exited.
        status: String,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// The server did not answer its readiness probe in time.
    #[error("{server} on 127.0.0.1:{port} was not ready after {timeout:?}; log tail:\n{log_tail}")]
    NotReady {
        /// Which server.
        server: &'static str,
        /// Its port.
        port: u16,
        /// How long the kit waited.
        timeout: Duration,
        /// The last lines of the server's log.
        log_tail: String,
    },
    /// A helper command (initdb, psql, cp, ...) failed.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A helper command did not finish in time and was killed.
    #[error("{command} did not finish within {timeout:?} and was killed")]
    CommandTimedOut {
        /// The command line.
        command: String,
        /// The time limit.
        timeout: Duration,
    },
    /// A fault handle was used on a server in the wrong state, e.g. `pause` on a killed server.
    #[error("cannot {action} {server}: it is {state}")]
    InvalidState {
        /// Which server.
        server: &'static str,
        /// The requested operation.
        action: &'static str,
        /// The state it is in.
        state: &'static str,
    },
    /// The process-wide shared server failed to start (the first attempt's error,
    /// reported to every caller).
    #[error("the shared {server} is unavailable: {message}")]
    SharedUnavailable {
        /// Which server.
        server: &'static str,
        /// Why the first start failed.
        message: String,
    },
    /// Anything else, described in words.
    #[error("{0}")]
    Other(String),
}

impl TestkitError {
    /// Whether the failure was a port taken by someone else (worth retrying on a new port).
    pub fn is_port_in_use(&self) -> bool {
        matches!(self, Self::PortInUse { .. })
    }
}

/// Wraps an `io::Error` with what the kit was doing.
pub(crate) fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> TestkitError {
    let context = context.into();
    move |error| TestkitError::Io { context, error }
}
