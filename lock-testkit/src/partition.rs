//! Network partitions made by the kernel: packets dropped with iptables on
//! loopback, so that neither end — nor a proxy's own kernel — answers for
//! the other. A [`LinkProxy`](crate::LinkProxy) that blackholes a link still
//! acknowledges TCP keepalive probes and retransmissions on both sides; a
//! [`Partition`] does not, which is what a client that vanished from the
//! network looks like to a server.
//!
//! Rules live in chains of their own (`dl<pid>-<start>-<n>`, hooked into
//! `OUTPUT`: on loopback every packet passes there), removed when their
//! handle is dropped, at the process's normal exit, and — for a process
//! killed before it could — by the next process that makes a partition.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use crate::error::{TestkitError, io_error};
use crate::exit_cleanup;
use crate::process::{find_on_path, is_executable, process_is_alive, run_checked, start_time};

/// How long one iptables command may take (it may wait for the xtables lock).
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a failed iptables change is tried (another process may have
/// changed the rule set at the same moment).
const IPTABLES_ATTEMPTS: u32 = 3;
/// The prefix of every chain the kit makes.
const CHAIN_PREFIX: &str = "dl";

/// A second port on `127.0.0.1` that the kernel forwards (DNAT) to a
/// server's port, so that the connections of the clients given this port
/// can be cut off from the server with [`Partition::isolate`] while other
/// clients, connected to the server's own port, go on as before.
///
/// Nothing listens on the alias port: the kernel rewrites each connection
/// to it as it starts, and the server sees an ordinary client. The port is
/// reserved (bound, not listening) for the alias's life, and the NAT rule
/// is removed when the alias is dropped; connections made through it then
/// stop working.
///
/// ```no_run
/// use distlock_testkit::{AliasPort, Partition, RedisServer};
///
/// # fn main() -> Result<(), distlock_testkit::TestkitError> {
/// let redis = RedisServer::start()?;
/// let alias = AliasPort::new(redis.port())?;
/// let victim_url = format!("redis://127.0.0.1:{}/", alias.port());
/// let partition = Partition::isolate(&alias)?; // the victim's packets are dropped
/// drop(partition); // healed
/// # let _ = victim_url;
/// # Ok(())
/// # }
/// ```
pub struct AliasPort {
    port: u16,
    server_port: u16,
    chain: Chain,
    /// Keeps the port bound, so no other socket takes it.
    _reservation: OwnedFd,
}

impl AliasPort {
    /// A new alias on `127.0.0.1` for the server at `127.0.0.1:server_port`.
    ///
    /// # Errors
    ///
    /// As [`Partition::drop_port`]: iptables missing, not root, or a rule
    /// the kernel refused.
    pub fn new(server_port: u16) -> Result<Self, TestkitError> {
        let iptables = iptables()?;
        let reservation = reserve_port()?;
        let port = bound_port(&reservation)?;
        let chain = Chain::create(
            iptables,
            Table::Nat,
            &[vec![
                "-p".into(),
                "tcp".into(),
                "-d".into(),
                "127.0.0.1".into(),
                "--dport".into(),
                port.to_string(),
                "-j".into(),
                "DNAT".into(),
                "--to-destination".into(),
                format!("127.0.0.1:{server_port}"),
            ]],
        )?;
        Ok(AliasPort {
            port,
            server_port,
            chain,
            _reservation: reservation,
        })
    }

    /// The alias port: give `127.0.0.1:<port>` to the clients to partition.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server port it leads to.
    pub fn server_port(&self) -> u16 {
        self.server_port
    }

    /// The iptables chain (in the `nat` table) that holds the forwarding rule.
    pub fn chain_name(&self) -> &str {
        &self.chain.name
    }
}

impl fmt::Debug for AliasPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AliasPort")
            .field("port", &self.port)
            .field("server_port", &self.server_port)
            .field("chain", &self.chain.name)
            .finish()
    }
}

/// Packets dropped by the kernel until this handle is dropped (or
/// [`heal`](Self::heal)ed): a network partition on loopback.
///
/// Both directions are dropped, silently (no RST, no ICMP), for the
/// connections open now and for new ones, which hang in their handshake.
/// Neither end learns of the partition except by its own timers (TCP
/// retransmission, keepalives, `TCP_USER_TIMEOUT`, its application's
/// timeouts). Healing lets the surviving connections go on where they
/// stopped.
///
/// Needs root (iptables) and the Debian package `iptables`; without them
/// the constructors fail with an error that says so. The rules are removed
/// on drop, at the normal exit of the process (even when the handle was
/// leaked), and, if the process was killed, by the next process that makes
/// a partition.
#[must_use = "the partition heals when dropped"]
pub struct Partition {
    chain: Chain,
    what: String,
}

impl Partition {
    /// Drops every TCP packet to and from `127.0.0.1:port`: every client of
    /// the server on that port is cut off from it, including those that
    /// come through an [`AliasPort`].
    ///
    /// # Errors
    ///
    /// [`TestkitError::NotInstalled`] without iptables,
    /// [`TestkitError::Other`] when not running as root, and
    /// [`TestkitError::CommandFailed`] when the kernel refuses the rules.
    pub fn drop_port(port: u16) -> Result<Self, TestkitError> {
        let iptables = iptables()?;
        let port = port.to_string();
        let rule = |dir: &str, addr: &str| -> Vec<String> {
            vec![
                "-p".into(),
                "tcp".into(),
                dir.into(),
                "127.0.0.1".into(),
                addr.into(),
                port.clone(),
                "-j".into(),
                "DROP".into(),
            ]
        };
        let chain = Chain::create(
            iptables,
            Table::Filter,
            &[rule("-d", "--dport"), rule("-s", "--sport")],
        )?;
        Ok(Partition {
            chain,
            what: format!("127.0.0.1:{port}"),
        })
    }

    /// Drops every packet of the connections made through `alias`, both
    /// ways: those clients are cut off from the server, the others are not.
    ///
    /// # Errors
    ///
    /// As [`drop_port`](Self::drop_port).
    pub fn isolate(alias: &AliasPort) -> Result<Self, TestkitError> {
        let iptables = iptables()?;
        let chain = Chain::create(
            iptables,
            Table::Filter,
            &[vec![
                "-p".into(),
                "tcp".into(),
                "-m".into(),
                "conntrack".into(),
                "--ctorigdst".into(),
                "127.0.0.1".into(),
                "--ctorigdstport".into(),
                alias.port.to_string(),
                "-j".into(),
                "DROP".into(),
            ]],
        )?;
        Ok(Partition {
            chain,
            what: format!(
                "connections through 127.0.0.1:{} to port {}",
                alias.port, alias.server_port
            ),
        })
    }

    /// Removes the rules now, reporting a failure (dropping the handle
    /// does the same but can only log one).
    ///
    /// # Errors
    ///
    /// [`TestkitError::CommandFailed`] when iptables could not remove them;
    /// the exit cleanup tries again.
    pub fn heal(mut self) -> Result<(), TestkitError> {
        mem::replace(&mut self.chain, Chain::removed()).remove()
    }

    /// The iptables chain (in the `filter` table) that holds the rules.
    pub fn chain_name(&self) -> &str {
        &self.chain.name
    }
}

impl fmt::Debug for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Partition")
            .field("dropping", &self.what)
            .field("chain", &self.chain.name)
            .finish()
    }
}

/// Which iptables table a chain is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Table {
    Filter,
    Nat,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }
}

/// One chain of ours, hooked into the table's `OUTPUT`; removed on drop.
struct Chain {
    iptables: &'static Path,
    table: Table,
    /// Empty once removed.
    name: String,
}

/// Chains this process made and has not removed yet, for the exit cleanup.
static LIVE: Mutex<BTreeMap<String, (Table, &'static Path)>> = Mutex::new(BTreeMap::new());

impl Chain {
    /// A placeholder that owns nothing.
    fn removed() -> Self {
        Chain {
            iptables: Path::new(""),
            table: Table::Filter,
            name: String::new(),
        }
    }

    /// Makes the chain with `rules`, then hooks it in, so the rules take
    /// effect together.
    fn create(
        iptables: &'static Path,
        table: Table,
        rules: &[Vec<String>],
    ) -> Result<Self, TestkitError> {
        sweep_stale(iptables);
        exit_cleanup::register();
        let chain = Chain {
            iptables,
            table,
            name: chain_name(),
        };
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(chain.name.clone(), (table, iptables));
        // On failure `chain` is dropped, which removes what was made.
        chain.run(&["-N", &chain.name])?;
        for rule in rules {
            let mut args = vec!["-A", &chain.name];
            args.extend(rule.iter().map(String::as_str));
            chain.run(&args)?;
        }
        chain.run(&["-I", "OUTPUT", "1", "-j", &chain.name])?;
        Ok(chain)
    }

    fn run(&self, args: &[&str]) -> Result<(), TestkitError> {
        run_iptables(self.iptables, self.table, args)
    }

    fn remove(mut self) -> Result<(), TestkitError> {
        let name = mem::take(&mut self.name);
        if name.is_empty() {
            return Ok(());
        }
        remove_chain(self.iptables, self.table, &name)?;
        LIVE.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
        Ok(())
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let chain = Chain {
            iptables: self.iptables,
            table: self.table,
            name: mem::take(&mut self.name),
        };
        let name = chain.name.clone();
        if let Err(err) = chain.remove() {
            eprintln!("distlock-testkit: could not remove iptables chain {name}: {err}");
        }
    }
}

/// Unhooks, flushes and deletes a chain; a chain (or hook) that is already
/// gone counts as removed.
fn remove_chain(iptables: &Path, table: Table, name: &str) -> Result<(), TestkitError> {
    // The hook may be missing if creation failed half-way: ignore that.
    while run_iptables_once(iptables, table, &["-D", "OUTPUT", "-j", name]).is_ok() {}
    if !chain_exists(iptables, table, name) {
        return Ok(());
    }
    run_iptables(iptables, table, &["-F", name])?;
    run_iptables(iptables, table, &["-X", name])
}

fn chain_exists(iptables: &Path, table: Table, name: &str) -> bool {
    run_iptables_once(iptables, table, &["-S", name]).is_ok()
}

/// `dl<pid>-<process start time>-<n>`: unique per process (the start time
/// survives pid reuse), at most 28 characters as iptables allows.
fn chain_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let pid = std::process::id();
    let started = start_time(pid).unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{CHAIN_PREFIX}{pid}-{started}-{n}")
}

/// Removes the chains of kit processes that are gone (killed before their
/// exit cleanup ran), once per process.
fn sweep_stale(iptables: &'static Path) {
    static SWEEP: Once = Once::new();
    SWEEP.call_once(|| {
        for table in [Table::Filter, Table::Nat] {
            let Ok(listing) = iptables_output(iptables, table, &["-S"]) else {
                continue;
            };
            for line in listing.lines() {
                let Some(name) = line.strip_prefix("-N ") else {
                    continue;
                };
                if is_stale(name) {
                    let _ = remove_chain(iptables, table, name);
                }
            }
        }
    });
}

/// Whether `name` is a chain of ours whose process no longer runs.
fn is_stale(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(CHAIN_PREFIX) else {
        return false;
    };
    let mut parts = rest.split('-');
    let (Some(pid), Some(started), Some(n), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let (Ok(pid), Ok(started), Ok(_)) =
        (pid.parse::<u32>(), started.parse::<u64>(), n.parse::<u64>())
    else {
        return false;
    };
    !process_is_alive(pid) || start_time(pid).is_some_and(|now| now != started)
}

/// Removes every chain this process still has: the exit hook.
pub(crate) fn remove_all() {
    let live = mem::take(&mut *LIVE.lock().unwrap_or_else(PoisonError::into_inner));
    for (name, (table, iptables)) in live {
        // Plain commands: the exit hook runs while the process winds down.
        while exit_iptables(iptables, table, &["-D", "OUTPUT", "-j", &name]) {}
        exit_iptables(iptables, table, &["-F", &name]);
        exit_iptables(iptables, table, &["-X", &name]);
    }
}

fn exit_iptables(iptables: &Path, table: Table, args: &[&str]) -> bool {
    Command::new(iptables)
        .args(["-w", "5", "-t", table.name()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs iptables, trying again when another process changed the rules at
/// the same moment.
fn run_iptables(iptables: &Path, table: Table, args: &[&str]) -> Result<(), TestkitError> {
    let mut attempt = 1;
    loop {
        match run_iptables_once(iptables, table, args) {
            Ok(()) => return Ok(()),
            Err(_) if attempt < IPTABLES_ATTEMPTS => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
            }
            Err(err) => return Err(err),
        }
    }
}

fn run_iptables_once(iptables: &Path, table: Table, args: &[&str]) -> Result<(), TestkitError> {
    iptables_output(iptables, table, args).map(|_| ())
}

fn iptables_output(iptables: &Path, table: Table, args: &[&str]) -> Result<String, TestkitError> {
    let mut command = Command::new(iptables);
    command
        .args(["-w", "5", "-t", table.name()])
        .args(args.iter().map(OsStr::new));
    let output = run_checked(command, IPTABLES_TIMEOUT)?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The iptables binary, once root was checked: the one question every
/// constructor asks first.
fn iptables() -> Result<&'static Path, TestkitError> {
    static FOUND: Mutex<Option<&'static Path>> = Mutex::new(None);
    let mut found = FOUND.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(path) = *found {
        return Ok(path);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(TestkitError::Other(format!(
            "a network partition needs root to change iptables rules, and this test \
             process runs as uid {uid}: run the partition tests as root (CI does)"
        )));
    }
    let path = find_on_path("iptables")
        .or_else(|| {
            ["/usr/sbin/iptables", "/sbin/iptables"]
                .into_iter()
                .map(PathBuf::from)
                .find(|path| is_executable(path))
        })
        .ok_or_else(|| TestkitError::NotInstalled {
            program: "iptables".into(),
            searched: "on PATH, in /usr/sbin or /sbin".into(),
            hint: "install the Debian package iptables (scripts/ensure-servers.sh does)".into(),
        })?;
    let path: &'static Path = Box::leak(path.into_boxed_path());
    *found = Some(path);
    Ok(path)
}

/// A TCP socket bound to a free port of `127.0.0.1`, not listening: it
/// keeps the port from being handed to anyone else (connects included)
/// while nothing accepts on it.
fn reserve_port() -> Result<OwnedFd, TestkitError> {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_error("could not create a socket to reserve a port")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    let bound = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&raw const addr).cast(),
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if bound != 0 {
        return Err(io_error("could not reserve a port on 127.0.0.1")(
            io::Error::last_os_error(),
        ));
    }
    Ok(socket)
}

fn bound_port(socket: &OwnedFd) -> Result<u16, TestkitError> {
    // SAFETY: sockaddr_in is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` describe a buffer of the right size.
    let read =
        unsafe { libc::getsockname(socket.as_raw_fd(), (&raw mut addr).cast(), &raw mut len) };
    if read != 0 {
        return Err(io_error("could not read the reserved port")(
            io::Error::last_os_error(),
        ));
    }
    Ok(u16::from_be(addr.sin_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_fit_iptables_and_are_recognised() {
        let name = chain_name();
        assert!(name.len() <= 28, "{name}");
        assert!(!is_stale(&name), "this process is alive: {name}");
        assert!(is_stale("dl4194303-1-1") || process_is_alive(4_194_303));
        assert!(!is_stale("DOCKER-USER"));
        assert!(!is_stale("dl-other"));
    }
}
