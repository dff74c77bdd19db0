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

mod iptables;

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};

pub(crate) use iptables::remove_all;
use iptables::{Chain, Table, iptables};

use crate::error::{TestkitError, io_error};

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
