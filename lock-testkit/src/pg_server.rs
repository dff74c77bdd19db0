//! A throwaway PostgreSQL server (the `postgres` postmaster as our own child
//! process, not daemonized by `pg_ctl`) on a free loopback port, with fault handles.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::error::{TestkitError, io_error};
use crate::pg_binaries::{PgBinaries, pg_binaries};
use crate::pg_template::template_data_dir;
use crate::process::{
    self, Log, PORT_ATTEMPTS, ServerProcess, descendants, free_port, is_unreaped, process_is_alive,
    run_checked, signal, signal_and_wait_stopped, start_time, wait_child, wait_until,
};
use crate::workdir::{self, RunAs};
use crate::{exit_cleanup, spawner};

const SERVER: &str = "postgres";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
const DROP_GRACE: Duration = Duration::from_secs(5);
const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const COPY_TIMEOUT: Duration = Duration::from_secs(120);
/// PostgreSQL's limit on identifier length, in bytes.
const MAX_NAME_BYTES: usize = 63;

/// Configuration of a [`PgServer`] beyond the kit's defaults.
///
/// The server always runs with `listen_addresses=127.0.0.1`, its Unix socket in
/// its own data directory, and durability off (`fsync=off`,
/// `synchronous_commit=off`, `full_page_writes=off`); everything else is
/// PostgreSQL's default unless set here. Settings are passed as `-c name=value`
/// after the kit's own, so they override them.
#[derive(Debug, Clone)]
pub struct PgOptions {
    settings: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        Self {
            settings: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

impl PgOptions {
    /// PostgreSQL's defaults, 10 s to become ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// `max_connections` (PostgreSQL's default: 100).
    pub fn max_connections(self, n: u32) -> Self {
        self.setting("max_connections", n.to_string())
    }

    /// `max_locks_per_transaction` (PostgreSQL's default: 64). The shared lock
    /// table, advisory locks included, holds about this times `max_connections` entries.
    pub fn max_locks_per_transaction(self, n: u32) -> Self {
        self.setting("max_locks_per_transaction", n.to_string())
    }

    /// Any server setting, passed as `-c name=value` (e.g. `setting("work_mem", "8MB")`).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// How long a start or restart may take before it fails (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A PostgreSQL server on `127.0.0.1` with its own data directory (a copy of a
/// template cluster: user `postgres`, trust authentication, UTF8, C locale).
///
/// Dropping it shuts the server down (SIGQUIT, i.e. immediate shutdown; SIGKILL
/// to the whole process tree after 5 s) and removes its directory. If the test
/// process dies without running destructors, the postmaster gets SIGQUIT from
/// the kernel (`PR_SET_PDEATHSIG`) and takes its backends down with it.
///
/// When the tests run as root, the server runs as the `nobody` user (PostgreSQL
/// refuses to run as root).
///
/// The fault handles take `&mut self`, so they cannot be used on the
/// process-wide [`shared`](Self::shared) server that other tests rely on.
#[derive(Debug)]
pub struct PgServer {
    bins: &'static PgBinaries,
    run_as: Option<RunAs>,
    port: u16,
    options: PgOptions,
    data_dir: PathBuf,
    log_path: PathBuf,
    process: Mutex<ServerProcess>,
    dir: TempDir,
}

impl PgServer {
    /// Starts a server with the default [`PgOptions`] and waits until it accepts connections.
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(PgOptions::default())
    }

    /// Starts a server with `options` and waits until it accepts connections.
    ///
    /// The first start in a process may run `initdb` (once per installation and
    /// user, reused by later processes); every start copies that template.
    /// Fails with [`TestkitError::NotInstalled`] when PostgreSQL is not found.
    pub fn start_with(options: PgOptions) -> Result<Self, TestkitError> {
        let bins = pg_binaries()?;
        let run_as = workdir::unprivileged_user()?;
        let template = template_data_dir(bins, run_as)?;
        let dir = workdir::instance_dir(workdir::PG_PREFIX, run_as)?;
        let data_dir = dir.path().join("data");
        let mut copy = Command::new("cp");
        copy.arg("-a")
            .arg("--reflink=auto")
            .arg(&template)
            .arg(&data_dir);
        run_checked(copy, COPY_TIMEOUT)?;

        let mut server = Self {
            bins,
            run_as,
            port: 0,
            options,
            log_path: dir.path().join("postgres.log"),
            data_dir,
            process: Mutex::new(ServerProcess::default()),
            dir,
        };
        let mut attempt = 1;
        loop {
            server.port = free_port()?;
            match server.launch() {
                Ok(child) => {
                    *server.process_mut() = ServerProcess::running(child);
                    return Ok(server);
                }
                Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// The server shared by every test in this process, started on first use
    /// (with `max_connections=200`) and stopped when the process exits. Give
    /// each test its own database with [`fresh_database`](Self::fresh_database);
    /// use a server of your own to inject faults.
    pub fn shared() -> Result<&'static PgServer, TestkitError> {
        SHARED
            .get_or_init(|| {
                exit_cleanup::register();
                PgServer::start_with(PgOptions::new().max_connections(200))
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|message| TestkitError::SharedUnavailable {
                server: SERVER,
                message: message.clone(),
            })
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            self.port,
            percent_encode(name)
        )
    }

    /// The TCP port, the same for the server's whole life (restarts included).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The postmaster's pid; `None` after [`kill`](Self::kill) or [`stop`](Self::stop).
    pub fn pid(&self) -> Option<u32> {
        self.lock_process().pid()
    }

    /// The pids of the postmaster's current children (backends, background workers).
    pub fn child_pids(&self) -> Vec<u32> {
        self.pid().map(descendants).unwrap_or_default()
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

    /// The cluster's data directory (also holds the Unix socket).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file that receives the server's log, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, TestkitError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
            return Err(TestkitError::Other(format!(
                "invalid database name {name:?}: it must be 1 to {MAX_NAME_BYTES} bytes without NUL"
            )));
        }
        self.psql(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))?;
        Ok(self.url_for(name))
    }

    /// Creates a database with a name unique on this machine and returns its URL:
    /// each test gets its own (advisory locks are per database).
    pub fn fresh_database(&self) -> Result<String, TestkitError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("distlock_test_{}_{n}", std::process::id()))
    }

    /// Runs `sql` with `psql` in database `postgres` and returns its output in
    /// unaligned, tuples-only form (`-At`: one row per line, columns separated
    /// by `|`), without the final newline.
    pub fn psql(&self, sql: &str) -> Result<String, TestkitError> {
        self.psql_in("postgres", sql)
    }

    /// Like [`psql`](Self::psql), in database `database`.
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, TestkitError> {
        let mut command = Command::new(&self.bins.psql);
        command
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("-c")
            .arg(sql)
            // Names through the environment are taken literally (a `-d` argument
            // containing `=` would be parsed as a connection string).
            .env("PGUSER", "postgres")
            .env("PGDATABASE", database)
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGOPTIONS")
            .env_remove("PGSERVICE");
        let output = run_checked(command, PSQL_TIMEOUT)?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        if text.ends_with('\n') {
            text.pop();
        }
        Ok(text)
    }

    /// Kills the postmaster and all its children with SIGKILL (a crash: clients
    /// see their connections reset, new ones are refused) and waits until all are gone.
    ///
    /// With the kit's default `synchronous_commit=off`, transactions committed
    /// in the last fraction of a second before the kill may be lost, as in a
    /// real crash of such a server; start it with
    /// `PgOptions::new().setting("synchronous_commit", "on")` when a test needs
    /// every commit to survive (cheap here, since `fsync` stays off).
    pub fn kill(&mut self) -> Result<(), TestkitError> {
        let process = self.process_mut();
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("kill"));
        };
        kill_tree(child)?;
        *process = ServerProcess::default();
        Ok(())
    }

    /// Freezes the postmaster and every backend with SIGSTOP: the port stays
    /// open and TCP connections are accepted (by the kernel), but nothing is
    /// answered until [`resume`](Self::resume).
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        let process = self.process_mut();
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("pause"));
        };
        if process.paused {
            return Ok(());
        }
        // The postmaster first, so it starts no new backend meanwhile.
        let pid = child.id();
        let stop = |pid| signal_and_wait_stopped(pid, libc::SIGSTOP, true);
        stop(pid).map_err(io_error("could not pause the postmaster"))?;
        for kid in descendants(pid) {
            stop(kid).map_err(io_error("could not pause a PostgreSQL backend"))?;
        }
        process.paused = true;
        Ok(())
    }

    /// Lets a paused server run again (SIGCONT to all its processes). A no-op
    /// when it is not paused.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        let process = self.process_mut();
        let Some(child) = process.child.as_mut() else {
            return Err(not_running("resume"));
        };
        if !process.paused {
            return Ok(());
        }
        let pid = child.id();
        let resume = |pid| signal_and_wait_stopped(pid, libc::SIGCONT, false);
        for kid in descendants(pid) {
            resume(kid).map_err(io_error("could not resume a PostgreSQL backend"))?;
        }
        resume(pid).map_err(io_error("could not resume the postmaster"))?;
        process.paused = false;
        Ok(())
    }

    /// Shuts the server down cleanly ("fast" shutdown: SIGINT; SIGKILL to the
    /// whole tree after 10 s). A no-op when it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.shut_down(libc::SIGINT, STOP_GRACE)
    }

    /// Starts the server again on the same port, options and data directory
    /// (data survives a [`kill`](Self::kill): PostgreSQL recovers from its
    /// WAL; see there for `synchronous_commit`), and waits until it accepts
    /// connections. A running server is [`stop`](Self::stop)ped first.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        let mut attempt = 1;
        let child = loop {
            match self.launch() {
                Ok(child) => break child,
                // Someone grabbed the port while we were down; it may be brief.
                Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => {
                    attempt += 1;
                    thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        };
        *self.process_mut() = ServerProcess::running(child);
        Ok(())
    }

    fn shut_down(&mut self, sig: libc::c_int, grace: Duration) -> Result<(), TestkitError> {
        let process = self.process_mut();
        if let Some(child) = process.child.as_mut() {
            terminate_tree(child, sig, grace)?;
        }
        *process = ServerProcess::default();
        Ok(())
    }

    /// Starts the postmaster; only called while none of ours runs on the data directory.
    fn launch(&self) -> Result<Child, TestkitError> {
        self.remove_stale_files();
        let log = Log::open(&self.log_path)?;
        let (stdout, stderr) = log.stdio()?;
        let mut command = Command::new(&self.bins.postgres);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string());
        let mut settings = vec![
            ("listen_addresses".to_owned(), "127.0.0.1".to_owned()),
            // Quoted: the setting is a comma-separated list.
            (
                "unix_socket_directories".to_owned(),
                format!("\"{}\"", self.data_dir.display()),
            ),
            ("fsync".to_owned(), "off".to_owned()),
            ("synchronous_commit".to_owned(), "off".to_owned()),
            ("full_page_writes".to_owned(), "off".to_owned()),
        ];
        settings.extend(self.options.settings.iter().cloned());
        for (name, value) in settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        command
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        // SIGQUIT = immediate shutdown: the postmaster ends its children, then itself.
        let mut child = spawner::spawn_owned(command, libc::SIGQUIT).map_err(io_error(format!(
            "could not run {}",
            self.bins.postgres.display()
        )))?;
        match self.wait_ready(&mut child, log.offset) {
            Ok(()) => Ok(child),
            Err(e) => {
                let _ = kill_tree(&mut child);
                Err(e)
            }
        }
    }

    /// Removes what a killed postmaster leaves behind: its pid file and its
    /// socket and socket lock file.
    fn remove_stale_files(&self) {
        let _ = fs::remove_file(self.data_dir.join("postmaster.pid"));
        let Ok(entries) = fs::read_dir(&self.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".s.PGSQL.") {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn wait_ready(&self, child: &mut Child, log_offset: u64) -> Result<(), TestkitError> {
        let timeout = self.options.ready_timeout;
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(5);
        loop {
            if let Some(status) = child
                .try_wait()
                .map_err(io_error("could not check on postgres"))?
            {
                return Err(process::startup_failure(
                    SERVER,
                    self.port,
                    status,
                    &self.log_path,
                    log_offset,
                ));
            }
            // A TCP connect first: cheaper than running pg_isready before the port is open.
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok()
                && self.pg_isready()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(TestkitError::NotReady {
                    server: SERVER,
                    port: self.port,
                    timeout,
                    log_tail: process::log_tail(&self.log_path, log_offset),
                });
            }
            thread::sleep(nap);
            nap = (nap * 2).min(Duration::from_millis(25));
        }
    }

    fn pg_isready(&self) -> bool {
        Command::new(&self.bins.pg_isready)
            .args([
                "-q",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-t",
                "2",
                "-p",
            ])
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        self.process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_process(&self) -> MutexGuard<'_, ServerProcess> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The data is thrown away: immediate shutdown is enough.
        let _ = self.shut_down(libc::SIGQUIT, DROP_GRACE);
    }
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// Stops the shared server and removes its directory; called at process exit.
pub(crate) fn shutdown_shared() {
    let Some(Ok(server)) = SHARED.get() else {
        return;
    };
    let mut process = match server.process.try_lock() {
        Ok(guard) => guard,
        Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
        Err(TryLockError::WouldBlock) => return,
    };
    if let Some(child) = process.child.as_mut() {
        let _ = terminate_tree(child, libc::SIGQUIT, DROP_GRACE);
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

/// Asks the postmaster to shut down with `sig`, waits `grace`, then kills the tree.
fn terminate_tree(
    child: &mut Child,
    sig: libc::c_int,
    grace: Duration,
) -> Result<(), TestkitError> {
    if !is_unreaped(child) {
        return Ok(());
    }
    let pid = child.id();
    let kids: Vec<(u32, Option<u64>)> = descendants(pid)
        .into_iter()
        .map(|kid| (kid, start_time(kid)))
        .collect();
    // A paused server would keep the shutdown signal pending: wake everyone.
    for &(kid, _) in &kids {
        let _ = signal(kid, libc::SIGCONT);
    }
    let _ = signal(pid, sig);
    let _ = signal(pid, libc::SIGCONT);
    if wait_child(child, grace)
        .map_err(io_error("could not wait for postgres"))?
        .is_none()
    {
        return kill_tree(child);
    }
    // The postmaster waits for its children before it exits; this is a safety
    // net. The postmaster no longer holds their pids, so a pid may have been
    // reused: only a process with the same start time is still ours.
    if !wait_until(grace, || {
        kids.iter().all(|&(kid, _)| !process_is_alive(kid))
    }) {
        for &(kid, started) in &kids {
            if started.is_some() && start_time(kid) == started {
                let _ = signal(kid, libc::SIGKILL);
            }
        }
    }
    Ok(())
}

/// SIGKILLs the postmaster and all its children, reaps it, and waits until the children are gone.
fn kill_tree(child: &mut Child) -> Result<(), TestkitError> {
    let mut kids = Vec::new();
    if is_unreaped(child) {
        let pid = child.id();
        // Frozen, the postmaster can neither start a backend we would miss nor
        // reap one (so no pid below is reused before our SIGKILL).
        let _ = signal(pid, libc::SIGSTOP);
        kids = descendants(pid);
        let _ = signal(pid, libc::SIGKILL);
        for &kid in &kids {
            let _ = signal(kid, libc::SIGKILL);
        }
    }
    child
        .wait()
        .map_err(io_error("could not wait for postgres to exit"))?;
    if wait_until(Duration::from_secs(5), || {
        kids.iter().all(|&kid| !process_is_alive(kid))
    }) {
        Ok(())
    } else {
        Err(TestkitError::Other(format!(
            "PostgreSQL processes {kids:?} were still alive 5 s after SIGKILL"
        )))
    }
}

/// Percent-encodes everything but unreserved URL characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
