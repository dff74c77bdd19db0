//! A fault-injecting TCP proxy on loopback: put it between a client and a
//! server to make the network slow, silent or cut without touching either end.

mod pump;
mod socket;

use std::fmt;
use std::io;
use std::mem;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use pump::{Conn, accept_loop, close_all};
use socket::{bind_listener, listen, shutdown_listener};

use crate::error::{TestkitError, io_error};

/// How long the proxy tries to reach the upstream server for a new connection.
pub(super) const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest delay [`LinkProxy::set_delay`] accepts; longer ones are capped.
pub(super) const MAX_DELAY: Duration = Duration::from_secs(3600);
/// How often a write stuck on a peer that does not read checks whether the
/// connection was closed meanwhile.
pub(super) const WRITE_POLL: Duration = Duration::from_millis(100);
/// How long `cut`, `restore` and `drop` wait for the sockets they reset to close.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `drop` waits for the proxy's threads to end (above the connect timeout).
pub(super) const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a socket in one go, and so the largest chunk forwarded at once.
pub(super) const CHUNK_SIZE: usize = 64 * 1024;
pub(super) const BACKLOG: libc::c_int = 128;

/// What a [`LinkProxy`] does with connections and the bytes they carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkState {
    /// Forwarding both ways, after the [delay](LinkProxy::set_delay) if any.
    Open,
    /// Accepting connections and keeping them open, but forwarding nothing:
    /// see [`LinkProxy::blackhole`].
    Blackholed,
    /// Refusing connections; the open ones were reset: see [`LinkProxy::cut`].
    Cut,
}

/// A TCP proxy on `127.0.0.1` in front of one upstream server, with handles to
/// slow the link down, make it silent, or cut it.
///
/// Every connection accepted on [`port`](Self::port) is forwarded to the
/// upstream address, both ways, by plain threads (one accept thread; per
/// connection a reader and a writer for each direction). Clients connect to the
/// proxy instead of the server, e.g. with `redis://127.0.0.1:<proxy port>/`.
///
/// The handles take `&self`, so a proxy can be shared (e.g. in an `Arc`) by the
/// test and the code that injects the fault. Faults and what a client sees:
///
/// | handle | open connections | new connections |
/// |---|---|---|
/// | [`set_delay`](Self::set_delay) | each direction lags by the delay | same |
/// | [`blackhole`](Self::blackhole) | stay open, nothing arrives (reads time out) | accepted, nothing arrives |
/// | [`cut`](Self::cut) | reset (RST) | refused |
/// | [`restore`](Self::restore) | work again, unless they lost data (then reset) | forwarded |
///
/// The port stays the same through every fault. Dropping the proxy resets the
/// open connections, closes the port (new connections are refused) and ends
/// its threads, within a few seconds at worst.
///
/// Linux only, like the rest of the kit: [`cut`](Self::cut) refuses connections
/// by shutting the listening socket down and [`restore`](Self::restore) calls
/// `listen` on it again, which Linux allows.
///
/// ```no_run
/// use std::time::Duration;
/// use distlock_testkit::{LinkProxy, RedisServer};
///
/// # fn main() -> Result<(), distlock_testkit::TestkitError> {
/// let redis = RedisServer::start()?;
/// let link = LinkProxy::start(redis.addr())?;
/// let url = format!("redis://127.0.0.1:{}/", link.port()); // give this to the client
///
/// link.set_delay(Duration::from_millis(50)); // a round trip gains ~100 ms
/// link.blackhole()?; // requests go unanswered
/// link.cut()?; // connections reset, new ones refused
/// link.restore()?; // back to normal, same port
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
pub struct LinkProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl LinkProxy {
    /// Listens on a free port of `127.0.0.1` and forwards every connection to
    /// `upstream`, which is only contacted when a client connects.
    ///
    /// A client whose upstream connection fails (refused, or no answer within
    /// 2 s) is reset, as by a server that is down.
    pub fn start(upstream: SocketAddr) -> Result<Self, TestkitError> {
        let listener = bind_listener()?;
        let addr = listener
            .local_addr()
            .map_err(io_error("could not read the proxy's port"))?;
        let shared = Arc::new(Shared {
            listener,
            port: addr.port(),
            upstream,
            state: Mutex::new(State {
                link: LinkState::Open,
                delay: Duration::ZERO,
                stopping: false,
                connections: Vec::new(),
            }),
            state_changed: Condvar::new(),
            threads: Mutex::new(0),
            threads_done: Condvar::new(),
            accepted: AtomicU64::new(0),
        });
        let accept_shared = Arc::clone(&shared);
        shared
            .spawn("acc", move || accept_loop(&accept_shared))
            .map_err(io_error("could not start the proxy's accept thread"))?;
        Ok(Self { addr, shared })
    }

    /// `127.0.0.1:<port>`, where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to, the same for the proxy's whole life.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The server the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// Adds `delay` of latency to each direction (so a round trip gains twice
    /// `delay`), for bytes the proxy reads from now on. [`Duration::ZERO`]
    /// (the default) forwards at once; delays above one hour are capped.
    ///
    /// Each chunk is forwarded no earlier than `delay` after it was read, in
    /// order; chunks read meanwhile are not held up further, so the link keeps
    /// its throughput and only gains latency. What is in flight is buffered in
    /// memory without limit (fine for tests, not for bulk transfers).
    pub fn set_delay(&self, delay: Duration) {
        self.shared.lock_state().delay = delay.min(MAX_DELAY);
    }

    /// The current per-direction delay.
    pub fn delay(&self) -> Duration {
        self.shared.lock_state().delay
    }

    /// Makes the link silent, as when every packet is dropped: open connections
    /// stay open and new ones are accepted, but nothing is forwarded either way
    /// until [`restore`](Self::restore). Bytes read meanwhile (and bytes still
    /// waiting out a delay) are thrown away, never delivered late.
    ///
    /// Unlike TCP, the proxy does not retransmit what it dropped, so a
    /// connection that lost bytes could never be trusted again: `restore`
    /// resets it. A connection that sent nothing during the blackhole lost
    /// nothing and keeps working.
    pub fn blackhole(&self) -> Result<(), TestkitError> {
        self.shared.set_link(LinkState::Blackholed)
    }

    /// Cuts the link: every open connection is reset (both sockets closed with
    /// an RST, so both ends see `ECONNRESET` or end-of-file) and new
    /// connections are refused until [`restore`](Self::restore), which keeps
    /// the same port. The reset sockets are closed when `cut` returns.
    pub fn cut(&self) -> Result<(), TestkitError> {
        self.shared.set_link(LinkState::Cut)
    }

    /// Ends a [`blackhole`](Self::blackhole) or [`cut`](Self::cut): new
    /// connections are forwarded again, on the same port. Open connections
    /// that lost bytes in a blackhole are reset (closed when `restore`
    /// returns); the others carry on. The [delay](Self::set_delay) is kept.
    ///
    /// A no-op on an open link.
    pub fn restore(&self) -> Result<(), TestkitError> {
        self.shared.set_link(LinkState::Open)
    }

    /// Whether the link is open, blackholed or cut.
    pub fn state(&self) -> LinkState {
        self.shared.lock_state().link
    }

    /// How many proxied connections are open: connected to the upstream server
    /// and not yet closed by both ends, reset or cut.
    pub fn connections(&self) -> usize {
        self.shared.lock_state().connections.len()
    }

    /// How many connections the proxy has accepted since it started, including
    /// the ones it then reset (e.g. because the upstream server was down).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for LinkProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.shared.lock_state();
        f.debug_struct("LinkProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("state", &state.link)
            .field("delay", &state.delay)
            .field("connections", &state.connections.len())
            .finish()
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        let connections = {
            let mut state = self.shared.lock_state();
            state.stopping = true;
            // Wakes the accept thread (accept fails with EINVAL) and refuses
            // new connections; fails harmlessly when the link is cut already.
            let _ = shutdown_listener(self.shared.listener.as_raw_fd());
            self.shared.state_changed.notify_all();
            mem::take(&mut state.connections)
        };
        close_all(connections);
        self.shared.wait_for_threads(DROP_TIMEOUT);
    }
}

/// What the proxy's threads share with its handle.
struct Shared {
    listener: TcpListener,
    port: u16,
    upstream: SocketAddr,
    state: Mutex<State>,
    /// Wakes the accept thread when the link leaves [`LinkState::Cut`] or the proxy stops.
    state_changed: Condvar,
    /// How many of the proxy's threads are running.
    threads: Mutex<usize>,
    threads_done: Condvar,
    accepted: AtomicU64,
}

/// Lock order: `Shared::state` before any `Conn::pipes`.
struct State {
    link: LinkState,
    delay: Duration,
    stopping: bool,
    connections: Vec<Arc<Conn>>,
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a thread named `link:<port>:<role>`, counted until it ends.
    fn spawn(self: &Arc<Self>, role: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        *self.threads.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        // Moved into the thread; if the spawn fails it is dropped here instead.
        let counted = ThreadCount(Arc::clone(self));
        thread::Builder::new()
            .name(format!("link:{}:{role}", self.port))
            .spawn(move || {
                let _counted = counted;
                f();
            })
            .map(drop)
    }

    fn wait_for_threads(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut threads = self.threads.lock().unwrap_or_else(PoisonError::into_inner);
        while *threads > 0 {
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            threads = self
                .threads_done
                .wait_timeout(threads, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn set_link(&self, to: LinkState) -> Result<(), TestkitError> {
        let closing = {
            let mut state = self.lock_state();
            let from = state.link;
            let fd = self.listener.as_raw_fd();
            if from == LinkState::Cut && to != LinkState::Cut {
                listen(fd).map_err(io_error(format!(
                    "could not listen on 127.0.0.1:{} again",
                    self.port
                )))?;
            } else if from != LinkState::Cut && to == LinkState::Cut {
                shutdown_listener(fd).map_err(io_error(format!(
                    "could not stop listening on 127.0.0.1:{}",
                    self.port
                )))?;
            }
            state.link = to;
            self.state_changed.notify_all();
            match to {
                LinkState::Cut => mem::take(&mut state.connections),
                LinkState::Blackholed => {
                    for conn in &state.connections {
                        conn.discard_pending();
                    }
                    Vec::new()
                }
                LinkState::Open => {
                    let (lost, kept) = mem::take(&mut state.connections)
                        .into_iter()
                        .partition(|conn| conn.lock_pipes().lost_data);
                    state.connections = kept;
                    lost
                }
            }
        };
        close_all(closing);
        Ok(())
    }

    /// Takes `conn` out of the open connections (it ended normally).
    fn forget(&self, conn: &Arc<Conn>) {
        self.lock_state()
            .connections
            .retain(|other| !Arc::ptr_eq(other, conn));
    }

    /// Resets `conn` because one of its ends failed: the other end sees a reset too.
    fn abort(&self, conn: &Arc<Conn>) {
        self.forget(conn);
        conn.abort();
    }
}

/// One running thread of the proxy, for [`Shared::wait_for_threads`].
struct ThreadCount(Arc<Shared>);

impl Drop for ThreadCount {
    fn drop(&mut self) {
        let mut threads = self
            .0
            .threads
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *threads = threads.saturating_sub(1);
        self.0.threads_done.notify_all();
    }
}
