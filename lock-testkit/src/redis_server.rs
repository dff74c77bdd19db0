//! A throwaway `redis-server` on a free loopback port, with fault handles.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{TestkitError, io_error};
use crate::process::{
    self, Log, PORT_ATTEMPTS, ServerProcess, free_port, is_unreaped, signal_and_wait_stopped,
    wait_child,
};
use crate::{exit_cleanup, spawner, workdir};

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
    binary: PathBuf,
    port: u16,
    options: RedisOptions,
    log_path: PathBuf,
    process: Mutex<ServerProcess>,
    dir: TempDir,
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
        let log_path = dir.path().join("redis-server.log");
        let mut attempt = 1;
        loop {
            let port = free_port()?;
            match launch(&binary, dir.path(), &log_path, port, &options) {
                Ok(child) => {
                    return Ok(Self {
                        binary,
                        port,
                        options,
                        log_path,
                        process: Mutex::new(ServerProcess::running(child)),
                        dir,
                    });
                }
                Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The server shared by every test in this process, started on first use and
    /// stopped when the process exits. Use a server of your own to inject faults.
    pub fn shared() -> Result<&'static RedisServer, TestkitError> {
        SHARED
            .get_or_init(|| {
                exit_cleanup::register();
                RedisServer::start().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|message| TestkitError::SharedUnavailable {
                server: SERVER,
                message: message.clone(),
            })
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
        self.lock_process().pid()
    }

    /// Whether the server process is running (paused counts as running): false
    /// after [`kill`](Self::kill) or [`stop`](Self::stop), and when it exited by itself.
    pub fn is_running(&self) -> bool {
        self.lock_process().child.as_mut().is_some_and(is_unreaped)
    }

    /// Whether the server is paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        self.lock_process().paused
    }

    /// The server's working directory (`--dir`): RDB and AOF files live here.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file that receives the server's log, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Kills the server with SIGKILL (a crash: no shutdown, no final save) and
    /// waits until it has exited. Connections see a reset, new ones are refused.
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("kill"));
        };
        kill_and_reap(child)?;
        *process = ServerProcess::default();
        Ok(())
    }

    /// Freezes the server with SIGSTOP: it keeps its port and accepts TCP
    /// connections (the kernel does), but answers nothing until [`resume`](Self::resume).
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("pause"));
        };
        if !process.paused {
            signal_and_wait_stopped(child.id(), libc::SIGSTOP, true)
                .map_err(io_error("could not pause redis-server"))?;
            process.paused = true;
        }
        Ok(())
    }

    /// Lets a paused server run again (SIGCONT). A no-op when it is not paused.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("resume"));
        };
        if process.paused {
            signal_and_wait_stopped(child.id(), libc::SIGCONT, false)
                .map_err(io_error("could not resume redis-server"))?;
            process.paused = false;
        }
        Ok(())
    }

    /// Shuts the server down cleanly (SIGTERM; SIGKILL if it takes over 5 s).
    /// A no-op when it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = process.child.as_mut() {
            terminate(child)?;
        }
        *process = ServerProcess::default();
        Ok(())
    }

    /// Starts the server again on the same port with the same options and data
    /// directory (so an append-only file survives a [`kill`](Self::kill)), and
    /// waits until it answers `PING`. A running server is [`stop`](Self::stop)ped first.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        let mut attempt = 1;
        let child = loop {
            match launch(
                &self.binary,
                self.dir.path(),
                &self.log_path,
                self.port,
                &self.options,
            ) {
                Ok(child) => break child,
                // Someone grabbed the port while we were down; it may be brief.
                Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        *self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner) = ServerProcess::running(child);
        Ok(())
    }

    fn lock_process(&self) -> std::sync::MutexGuard<'_, ServerProcess> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // The data is thrown away, so there is nothing to shut down cleanly for
        // (and SIGTERM costs ~100 ms: redis acts on it in its next cron tick).
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(child) = process.child.as_mut() {
            let _ = kill_and_reap(child);
        }
    }
}

static SHARED: OnceLock<Result<RedisServer, String>> = OnceLock::new();

/// Stops the shared server and removes its directory; called at process exit.
pub(crate) fn shutdown_shared() {
    let Some(Ok(server)) = SHARED.get() else {
        return;
    };
    shutdown_static(server);
}

/// Kills a server that lives in a static (never dropped) and removes its
/// directory, unless another thread is using its process handle.
pub(crate) fn shutdown_static(server: &RedisServer) {
    let mut process = match server.process.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    if let Some(child) = process.child.as_mut() {
        let _ = kill_and_reap(child);
    }
    *process = ServerProcess::default();
    let _ = fs::remove_dir_all(server.dir.path());
}

fn not_running(action: &'static str) -> TestkitError {
    TestkitError::InvalidState {
        server: SERVER,
        action,
        state: "not running",
    }
}

fn kill_and_reap(child: &mut Child) -> Result<(), TestkitError> {
    if is_unreaped(child) {
        child
            .kill()
            .map_err(io_error("could not kill redis-server"))?;
    }
    child
        .wait()
        .map_err(io_error("could not wait for redis-server to exit"))?;
    Ok(())
}

fn terminate(child: &mut Child) -> Result<(), TestkitError> {
    if is_unreaped(child) {
        // SIGCONT in case it is paused: a stopped process would hold SIGTERM pending.
        let _ = process::signal(child.id(), libc::SIGTERM);
        let _ = process::signal(child.id(), libc::SIGCONT);
        let exited =
            wait_child(child, STOP_GRACE).map_err(io_error("could not wait for redis-server"))?;
        if exited.is_some() {
            return Ok(());
        }
    }
    kill_and_reap(child)
}

fn launch(
    binary: &Path,
    dir: &Path,
    log_path: &Path,
    port: u16,
    options: &RedisOptions,
) -> Result<Child, TestkitError> {
    let log = Log::open(log_path)?;
    let (stdout, stderr) = log.stdio()?;
    let mut command = Command::new(binary);
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
        .arg(dir);
    for (name, value) in &options.config {
        command.arg(format!("--{name}")).arg(value);
    }
    command
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let mut child = spawner::spawn_owned(command, libc::SIGKILL)
        .map_err(io_error(format!("could not run {}", binary.display())))?;
    match wait_ready(
        &mut child,
        port,
        log_path,
        log.offset,
        options.ready_timeout,
    ) {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = kill_and_reap(&mut child);
            Err(e)
        }
    }
}

fn wait_ready(
    child: &mut Child,
    port: u16,
    log_path: &Path,
    offset: u64,
    timeout: Duration,
) -> Result<(), TestkitError> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_error("could not check on redis-server"))?
        {
            return Err(process::startup_failure(
                SERVER, port, status, log_path, offset,
            ));
        }
        if ping(port) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(TestkitError::NotReady {
                server: SERVER,
                port,
                timeout,
                log_tail: process::log_tail(log_path, offset),
            });
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// Whether the server answers `PING` with `+PONG` (not `-LOADING`) within 200 ms.
/// A server with `requirepass` answers `-NOAUTH`, which also means it is up.
fn ping(port: u16) -> bool {
    const TIMEOUT: Duration = Duration::from_millis(200);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(TIMEOUT)).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    matches!(
        stream.read(&mut reply),
        Ok(n) if reply[..n].starts_with(b"+PONG") || reply[..n].starts_with(b"-NOAUTH")
    )
}
