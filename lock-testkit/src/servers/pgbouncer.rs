//! A throwaway PgBouncer (Debian's `pgbouncer`) in front of a [`PgServer`],
//! on a free loopback port, so tests can see what a connection pooler does to
//! session state such as advisory locks.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::postgres::{PgServer, psql};
use crate::error::{TestkitError, io_error};
use crate::process::{
    PortChoice, Probe, ServerKind, Supervised, find_on_path, is_executable, launch, with_port,
};
use crate::workdir::{self, RunAs};

const SERVER: &str = "pgbouncer";
/// The environment variable naming the `pgbouncer` program to run.
const PGBOUNCER_ENV: &str = "DISTLOCK_PGBOUNCER";
/// Where Debian installs it (off an unprivileged user's `PATH`).
const DEBIAN_PATH: &str = "/usr/sbin/pgbouncer";
const HINT: &str = "install it with `apt-get install pgbouncer` (scripts/ensure-servers.sh does), \
                    or point DISTLOCK_PGBOUNCER at the program";
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How PgBouncer hands server connections to clients (`pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A server connection per client connection, for the client's whole
    /// session: session state (advisory locks, `SET`) works as on PostgreSQL.
    Session,
    /// A server connection per transaction: between transactions a client's
    /// next statement may run on another server session, and its session
    /// state (a session-level advisory lock) stays behind on the old one.
    Transaction,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// Configuration of a [`PgBouncer`].
///
/// The defaults: transaction pooling, 4 server connections per database and
/// user (`default_pool_size`), up to 200 clients, trust authentication for
/// the user `postgres`, and `ignore_startup_parameters = extra_float_digits`
/// (which sqlx sends). Other `[pgbouncer]` settings are added with
/// [`setting`](Self::setting), after the kit's, so they override them.
#[derive(Debug, Clone)]
pub struct PgBouncerOptions {
    pool_mode: PoolMode,
    pool_size: u32,
    settings: Vec<(String, String)>,
    ready_timeout: Duration,
}

impl Default for PgBouncerOptions {
    fn default() -> Self {
        Self {
            pool_mode: PoolMode::Transaction,
            pool_size: 4,
            settings: Vec::new(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
        }
    }
}

impl PgBouncerOptions {
    /// Transaction pooling, 4 server connections.
    pub fn new() -> Self {
        Self::default()
    }

    /// `pool_mode` (default [`PoolMode::Transaction`]).
    pub fn pool_mode(mut self, mode: PoolMode) -> Self {
        self.pool_mode = mode;
        self
    }

    /// `default_pool_size`: server connections per database and user (default 4).
    pub fn pool_size(mut self, n: u32) -> Self {
        self.pool_size = n.max(1);
        self
    }

    /// Any `[pgbouncer]` setting, e.g. `setting("server_round_robin", "1")`.
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((name.into(), value.into()));
        self
    }

    /// How long a start may take before it fails (default 10 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }
}

/// A `pgbouncer` child process on `127.0.0.1` in front of one [`PgServer`]
/// (every database of it, as user `postgres`).
///
/// When the tests run as root it runs as the same unprivileged user as the
/// PostgreSQL server (PgBouncer refuses to run as root). Dropping it stops
/// it (SIGTERM, SIGKILL after 5 s) and removes its directory; if the test
/// process dies, the kernel kills it (`PR_SET_PDEATHSIG`).
///
/// ```no_run
/// use distlock_testkit::{PgBouncer, PgBouncerOptions, PgServer, PoolMode};
///
/// # fn main() -> Result<(), distlock_testkit::TestkitError> {
/// let pg = PgServer::start()?;
/// let bouncer = PgBouncer::start(&pg, PgBouncerOptions::new().pool_mode(PoolMode::Transaction))?;
/// let url = bouncer.url_for("postgres"); // connect clients here instead of pg.url()
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct PgBouncer {
    port: u16,
    pool_mode: PoolMode,
    kind: Bouncer,
    process: Supervised,
}

/// What starts a `pgbouncer`: the program, its user, its files and the
/// PostgreSQL port it serves.
#[derive(Debug)]
struct Bouncer {
    binary: &'static Path,
    run_as: Option<RunAs>,
    pg_port: u16,
    options: PgBouncerOptions,
    config: PathBuf,
    auth_file: PathBuf,
    log_path: PathBuf,
    _dir: TempDir,
}

impl ServerKind for Bouncer {
    const NAME: &'static str = SERVER;
    const MAX_NAP: Duration = Duration::from_millis(25);

    fn command(&self, port: u16) -> Result<Command, TestkitError> {
        self.write_config(port)?;
        let mut command = Command::new(self.binary);
        command.arg(&self.config);
        if let Some(dir) = self.config.parent() {
            command.current_dir(dir);
        }
        if let Some(user) = self.run_as {
            command.uid(user.uid).gid(user.gid);
        }
        Ok(command)
    }

    fn probe(&self, port: u16) -> Probe {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            return Probe::NotYet;
        }
        // Listening; a query through it proves it reaches PostgreSQL.
        match psql(port, "postgres", "SELECT 1") {
            Ok(output) if output.trim() == "1" => Probe::Ready,
            Ok(output) => Probe::Failed(format!(
                "SELECT 1 through pgbouncer on port {port} returned {output:?}"
            )),
            Err(e) => Probe::Failed(e.to_string()),
        }
    }

    fn log_path(&self) -> &Path {
        &self.log_path
    }

    fn ready_timeout(&self) -> Duration {
        self.options.ready_timeout
    }
}

impl Bouncer {
    /// Writes the configuration for listening on `port` (readable by the
    /// user PgBouncer runs as).
    fn write_config(&self, port: u16) -> Result<(), TestkitError> {
        fs::write(&self.config, self.config_text(port)).map_err(io_error(format!(
            "could not write {}",
            self.config.display()
        )))?;
        if let Some(user) = self.run_as {
            workdir::chown(&self.config, user)?;
        }
        Ok(())
    }

    fn config_text(&self, port: u16) -> String {
        let options = &self.options;
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addr".into(), "127.0.0.1".into()),
            ("listen_port".into(), port.to_string()),
            // No Unix socket: it would need a directory of its own.
            ("unix_socket_dir".into(), String::new()),
            ("auth_type".into(), "trust".into()),
            ("auth_file".into(), self.auth_file.display().to_string()),
            ("pool_mode".into(), options.pool_mode.as_str().into()),
            ("default_pool_size".into(), options.pool_size.to_string()),
            ("max_client_conn".into(), "200".into()),
            (
                "ignore_startup_parameters".into(),
                "extra_float_digits".into(),
            ),
            ("admin_users".into(), "postgres".into()),
            // Fail fast rather than queue forever when PostgreSQL is down.
            ("server_connect_timeout".into(), "5".into()),
            ("query_wait_timeout".into(), "30".into()),
        ];
        settings.extend(options.settings.iter().cloned());
        let mut text = format!(
            "[databases]\n* = host=127.0.0.1 port={}\n\n[pgbouncer]\n",
            self.pg_port
        );
        for (name, value) in settings {
            text.push_str(&format!("{name} = {value}\n"));
        }
        text
    }
}

impl PgBouncer {
    /// Starts PgBouncer in front of `server` and waits until a query
    /// through it succeeds.
    ///
    /// Fails with [`TestkitError::NotInstalled`] when `pgbouncer` is not found
    /// (`$DISTLOCK_PGBOUNCER`, `PATH`, `/usr/sbin/pgbouncer`).
    pub fn start(server: &PgServer, options: PgBouncerOptions) -> Result<Self, TestkitError> {
        let binary = pgbouncer_binary()?;
        let run_as = workdir::unprivileged_user()?;
        let dir = workdir::instance_dir(workdir::PG_PREFIX, run_as)?;
        let auth_file = dir.path().join("userlist.txt");
        fs::write(&auth_file, "\"postgres\" \"\"\n")
            .map_err(io_error(format!("could not write {}", auth_file.display())))?;
        if let Some(user) = run_as {
            workdir::chown(&auth_file, user)?;
        }
        let kind = Bouncer {
            binary,
            run_as,
            pg_port: server.port(),
            config: dir.path().join("pgbouncer.ini"),
            log_path: dir.path().join("pgbouncer.log"),
            auth_file,
            options,
            _dir: dir,
        };
        let (port, child) = with_port(PortChoice::Fresh, |port| {
            launch(&kind, port).map(|child| (port, child))
        })?;
        Ok(Self {
            port,
            pool_mode: kind.options.pool_mode,
            kind,
            process: Supervised::new::<Bouncer>(child),
        })
    }

    /// The URL of database `name` through PgBouncer, as user `postgres`.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, name)
    }

    /// The TCP port PgBouncer listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The pool mode it runs with.
    pub fn pool_mode(&self) -> PoolMode {
        self.pool_mode
    }

    /// PgBouncer's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid().unwrap_or_default()
    }

    /// The file that receives PgBouncer's log.
    pub fn log_path(&self) -> &Path {
        &self.kind.log_path
    }

    /// Changes `[pgbouncer]` settings while it runs: rewrites its
    /// configuration with `settings` on top and reloads it (`RELOAD` on the
    /// admin console). E.g. `pool_mode = transaction` under clients that
    /// connected in session mode: their next transaction ends their hold on
    /// a server session.
    pub fn reconfigure(&mut self, settings: &[(&str, &str)]) -> Result<(), TestkitError> {
        for (name, value) in settings {
            self.kind.options = self.kind.options.clone().setting(*name, *value);
            if *name == "pool_mode" {
                self.pool_mode = match *value {
                    "session" => PoolMode::Session,
                    _ => PoolMode::Transaction,
                };
            }
        }
        self.kind.write_config(self.port)?;
        self.admin("RELOAD").map(|_| ())
    }

    /// Runs `command` on PgBouncer's admin console (the `pgbouncer`
    /// database, as the admin user `postgres`) and returns what it printed,
    /// e.g. `admin("RECONNECT")` to close every server connection once
    /// released, or `admin("SHOW SERVERS")`.
    pub fn admin(&self, command: &str) -> Result<String, TestkitError> {
        psql(self.port, "pgbouncer", command)
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.process.stop(Some((libc::SIGTERM, STOP_GRACE)));
    }
}

/// The `pgbouncer` program: `$DISTLOCK_PGBOUNCER`, else on `PATH`, else
/// Debian's `/usr/sbin/pgbouncer`; located once per process.
fn pgbouncer_binary() -> Result<&'static Path, TestkitError> {
    static FOUND: OnceLock<PathBuf> = OnceLock::new();
    if let Some(found) = FOUND.get() {
        return Ok(found);
    }
    let found = if let Some(path) = std::env::var_os(PGBOUNCER_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !is_executable(&path) {
            return Err(TestkitError::NotInstalled {
                program: SERVER.into(),
                searched: format!("at {PGBOUNCER_ENV}={}", path.display()),
                hint: HINT.into(),
            });
        }
        path
    } else if let Some(path) = find_on_path(SERVER) {
        path
    } else if is_executable(Path::new(DEBIAN_PATH)) {
        PathBuf::from(DEBIAN_PATH)
    } else {
        return Err(TestkitError::NotInstalled {
            program: SERVER.into(),
            searched: format!("in ${PGBOUNCER_ENV}, on PATH or at {DEBIAN_PATH}"),
            hint: HINT.into(),
        });
    };
    Ok(FOUND.get_or_init(|| found))
}
