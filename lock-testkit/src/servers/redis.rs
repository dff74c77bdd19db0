//! A throwaway `redis-server` on a free loopback port, with fault handles.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use crate::error::TestkitError;
use crate::process::{self, PortChoice, Probe, ServerKind, Supervised, launch, with_port};
use crate::resp::{Connection, Reply};
use crate::{exit_cleanup, workdir};

const SERVER: &str = "redis-server";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Configuration of a [`RedisServer`] beyond the kit's defaults.
///
/// The server always runs with `--port <free port> --bind 127.0.0.1 --save ""
/// --appendonly no --dir <private temp dir>`; each [`config`](Self::config)
/// entry is appended after these as `--name value`, so it overrides them.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    config: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            config: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

impl RedisOptions {
    /// The defaults: no persistence, 10 s to become ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a configuration directive, passed as `--name value`
    /// (e.g. `config("maxmemory", "10mb")`).
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((name.into(), value.into()));
        self
    }

    /// Turns on the append-only file with an fsync after every write
    /// (`appendonly yes`, `appendfsync always`), so data survives
    /// [`RedisServer::kill`] followed by [`RedisServer::restart`].
    pub fn append_only(self) -> Self {
        self.config("appendonly", "yes")
            .config("appendfsync", "always")
    }

    /// How long a start or restart may take before it fails (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A `redis-server` child process on `127.0.0.1`, with its own data directory.
///
/// Dropping it kills the server (SIGKILL: its data is thrown away), reaps it
/// and removes its directory. If the test process dies without running destructors, the
/// server gets SIGKILL from the kernel (`PR_SET_PDEATHSIG`).
///
/// The fault handles take `&mut self`, so they cannot be used on the
/// process-wide [`shared`](Self::shared) server that other tests rely on.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    kind: Redis,
    process: Supervised,
}

/// What starts a `redis-server`: the program, its directory and options.
#[derive(Debug)]
struct Redis {
    binary: PathBuf,
    options: RedisOptions,
    log_path: PathBuf,
    dir: TempDir,
}

impl ServerKind for Redis {
    const NAME: &'static str = SERVER;

    fn command(&self, port: u16) -> Result<Command, TestkitError> {
        let mut command = Command::new(&self.binary);
        command
            .arg("--port")
            .arg(port.to_string())
            .args([
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                "",
            ])
            .arg("--dir")
            .arg(self.dir.path());
        for (name, value) in &self.options.config {
            command.arg(format!("--{name}")).arg(value);
        }
        command.current_dir(self.dir.path());
        Ok(command)
    }

    fn probe(&self, port: u16) -> Probe {
        if ping(port) {
            Probe::Ready
        } else {
            Probe::NotYet
        }
    }

    fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn ready_timeout(&self) -> Duration {
        self.options.ready_timeout
    }
}

impl RedisServer {
    /// Starts a server with the default [`RedisOptions`] and waits until it answers `PING`.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a server with `options` and waits until it answers `PING`.
    ///
    /// Fails with [`TestkitError::NotInstalled`] when `redis-server` is not on `PATH`.
    pub fn start_with(options: RedisOptions) -> Result<Self, TestkitError> {
        let binary = process::find_on_path(SERVER).ok_or_else(|| TestkitError::NotInstalled {
            program: SERVER.into(),
            searched: "on PATH".into(),
            hint: "install it with `apt-get install redis-server`, or set REDIS_URL to use a running server"
                .into(),
        })?;
        let dir = workdir::instance_dir(workdir::REDIS_PREFIX, None)?;
        let kind = Redis {
            binary,
            options,
            log_path: dir.path().join("redis-server.log"),
            dir,
        };
        let (port, child) = with_port(PortChoice::Fresh, |port| {
            launch(&kind, port).map(|child| (port, child))
        })?;
        Ok(Self {
            port,
            kind,
            process: Supervised::new::<Redis>(child),
        })
    }

    /// The server shared by every test in this process, started on first use and
    /// stopped when the process exits. Use a server of your own to inject faults.
    pub fn shared() -> Result<&'static RedisServer, TestkitError> {
        exit_cleanup::shared(&SHARED, SERVER, RedisServer::start)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port, the same for the server's whole life (restarts included).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pid of the server process; `None` after [`kill`](Self::kill) or [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Whether the server process is running (paused counts as running): false
    /// after [`kill`](Self::kill) or [`stop`](Self::stop), and when it exited by itself.
    pub fn is_running(&self) -> bool {
        self.process.is_running()
    }

    /// Whether the server is paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.process.is_paused()
    }

    /// The server's working directory (`--dir`): RDB and AOF files live here.
    pub fn data_dir(&self) -> &Path {
        self.kind.dir.path()
    }

    /// The file that receives the server's log, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.kind.log_path
    }

    /// Kills the server with SIGKILL (a crash: no shutdown, no final save) and
    /// waits until it has exited. Connections see a reset, new ones are refused.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        self.process.kill()
    }

    /// Freezes the server with SIGSTOP: it keeps its port and accepts TCP
    /// connections (the kernel does), but answers nothing until [`resume`](Self::resume).
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        self.process.pause()
    }

    /// Lets a paused server run again (SIGCONT). A no-op when it is not paused.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        self.process.resume()
    }

    /// Shuts the server down cleanly (SIGTERM; SIGKILL if it takes over 5 s).
    /// A no-op when it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop(Some((libc::SIGTERM, STOP_GRACE)))
    }

    /// Starts the server again on the same port with the same options and data
    /// directory (so an append-only file survives a [`kill`](Self::kill)), and
    /// waits until it answers `PING`. A running server is [`stop`](Self::stop)ped first.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        let child = with_port(PortChoice::Same(self.port), |port| launch(&self.kind, port))?;
        self.process.set_running(child);
        Ok(())
    }

    /// Kills the server of a static (never dropped) and removes its
    /// directory, unless another thread is using its process handle.
    pub(crate) fn shutdown_static(&self) {
        if self.process.stop_shared(None) {
            let _ = std::fs::remove_dir_all(self.kind.dir.path());
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The data is thrown away, so there is nothing to shut down cleanly for
        // (and SIGTERM costs ~100 ms: redis acts on it in its next cron tick).
        let _ = self.process.stop(None);
    }
}

static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();

/// Stops the shared server and removes its directory; called at process exit.
pub(crate) fn shutdown_shared() {
    if let Some(Ok(server)) = SHARED.get() {
        server.shutdown_static();
    }
}

/// Whether the server answers `PING` with `+PONG` (not `-LOADING`) within 200 ms.
/// A server with `requirepass` answers `-NOAUTH`, which also means it is up.
fn ping(port: u16) -> bool {
    const TIMEOUT: Duration = Duration::from_millis(200);
    match Connection::open(port, TIMEOUT).and_then(|mut connection| connection.call(&[b"PING"])) {
        Ok(Reply::Status(status)) => status == "PONG",
        Ok(Reply::Error(error)) => error.starts_with("NOAUTH"),
        _ => false,
    }
}
