//! A throwaway PostgreSQL server (the `postgres` postmaster as our own child
//! process, not daemonized by `pg_ctl`) on a free loopback port, with fault handles.

mod binaries;
mod psql;
mod template;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tempfile::TempDir;

use binaries::PgBinaries;
pub(crate) use binaries::pg_binaries;
pub(crate) use psql::psql;
use template::template_data_dir;

use crate::error::TestkitError;
use crate::exit_cleanup;
use crate::process::{
    PortChoice, Probe, ServerKind, Supervised, Tree, descendants, launch, run_checked, with_port,
};
use crate::workdir::{self, RunAs};

const SERVER: &str = "postgres";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(10);
const DROP_GRACE: Duration = Duration::from_secs(5);
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
    port: u16,
    kind: Postgres,
    process: Supervised,
}

/// What starts a postmaster: the installation, the user, the options and
/// the data directory.
#[derive(Debug)]
struct Postgres {
    bins: &'static PgBinaries,
    run_as: Option<RunAs>,
    options: PgOptions,
    data_dir: PathBuf,
    log_path: PathBuf,
    dir: TempDir,
}

impl ServerKind for Postgres {
    const NAME: &'static str = SERVER;
    const TREE: Tree = Tree::WithChildren;
    // SIGQUIT = immediate shutdown: the postmaster ends its children, then itself.
    const DEATH_SIGNAL: libc::c_int = libc::SIGQUIT;
    const MAX_NAP: Duration = Duration::from_millis(25);

    /// Only called while none of ours runs on the data directory.
    fn command(&self, port: u16) -> Result<Command, TestkitError> {
        self.remove_stale_files();
        let mut command = Command::new(&self.bins.postgres);
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(port.to_string());
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
        command.current_dir(self.dir.path());
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        Ok(command)
    }

    fn probe(&self, port: u16) -> Probe {
        // A TCP connect first: cheaper than running pg_isready before the port is open.
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            && self.pg_isready(port)
        {
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

impl Postgres {
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

    fn pg_isready(&self, port: u16) -> bool {
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
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
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

        let kind = Postgres {
            bins,
            run_as,
            options,
            log_path: dir.path().join("postgres.log"),
            data_dir,
            dir,
        };
        let (port, child) = with_port(PortChoice::Fresh, |port| {
            launch(&kind, port).map(|child| (port, child))
        })?;
        Ok(Self {
            port,
            kind,
            process: Supervised::new::<Postgres>(child),
        })
    }

    /// The server shared by every test in this process, started on first use
    /// (with `max_connections=200`) and stopped when the process exits. Give
    /// each test its own database with [`fresh_database`](Self::fresh_database);
    /// use a server of your own to inject faults.
    pub fn shared() -> Result<&'static PgServer, TestkitError> {
        exit_cleanup::shared(&SHARED, SERVER, || {
            PgServer::start_with(PgOptions::new().max_connections(200))
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
        self.process.pid()
    }

    /// The pids of the postmaster's current children (backends, background workers).
    pub fn child_pids(&self) -> Vec<u32> {
        self.pid().map(descendants).unwrap_or_default()
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

    /// The cluster's data directory (also holds the Unix socket).
    pub fn data_dir(&self) -> &Path {
        &self.kind.data_dir
    }

    /// The file that receives the server's log, across restarts.
    pub fn log_path(&self) -> &Path {
        &self.kind.log_path
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
        psql(self.port, database, sql)
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
        self.process.kill()
    }

    /// Freezes the postmaster and every backend with SIGSTOP: the port stays
    /// open and TCP connections are accepted (by the kernel), but nothing is
    /// answered until [`resume`](Self::resume).
    pub fn pause(&mut self) -> Result<(), TestkitError> {
        self.process.pause()
    }

    /// Lets a paused server run again (SIGCONT to all its processes). A no-op
    /// when it is not paused.
    pub fn resume(&mut self) -> Result<(), TestkitError> {
        self.process.resume()
    }

    /// Shuts the server down cleanly ("fast" shutdown: SIGINT; SIGKILL to the
    /// whole tree after 10 s). A no-op when it is not running.
    pub fn stop(&mut self) -> Result<(), TestkitError> {
        self.process.stop(Some((libc::SIGINT, STOP_GRACE)))
    }

    /// Starts the server again on the same port, options and data directory
    /// (data survives a [`kill`](Self::kill): PostgreSQL recovers from its
    /// WAL; see there for `synchronous_commit`), and waits until it accepts
    /// connections. A running server is [`stop`](Self::stop)ped first.
    pub fn restart(&mut self) -> Result<(), TestkitError> {
        self.stop()?;
        let child = with_port(PortChoice::Same(self.port), |port| launch(&self.kind, port))?;
        self.process.set_running(child);
        Ok(())
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // The data is thrown away: immediate shutdown is enough.
        let _ = self.process.stop(Some((libc::SIGQUIT, DROP_GRACE)));
    }
}

static SHARED: OnceLock<Result<PgServer, String>> = OnceLock::new();

/// Stops the shared server and removes its directory; called at process exit.
pub(crate) fn shutdown_shared() {
    let Some(Ok(server)) = SHARED.get() else {
        return;
    };
    if server
        .process
        .stop_shared(Some((libc::SIGQUIT, DROP_GRACE)))
    {
        let _ = fs::remove_dir_all(server.kind.dir.path());
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
