//! A fault-injecting TCP proxy on loopback: put it between a client and a
//! server to make the network slow, silent or cut without touching either end.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read as _, Write as _};
use std::mem;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{TestkitError, io_error};
use crate::process::{PORT_ATTEMPTS, free_port, wait_until};

/// How long the proxy tries to reach the upstream server for a new connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest delay [`LinkProxy::set_delay`] accepts; longer ones are capped.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// How often a write stuck on a peer that does not read checks whether the
/// connection was closed meanwhile.
const WRITE_POLL: Duration = Duration::from_millis(100);
/// How long `cut`, `restore` and `drop` wait for the sockets they reset to close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `drop` waits for the proxy's threads to end (above the connect timeout).
const DROP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a socket in one go, and so the largest chunk forwarded at once.
const CHUNK_SIZE: usize = 64 * 1024;
const BACKLOG: libc::c_int = 128;

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

/// One proxied connection: the accepted client socket and the socket to the
/// upstream server, with a queue of chunks for each direction.
struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    pipes: Mutex<Pipes>,
    /// Wakes the writers: a chunk was queued, or the connection closed.
    wake: Condvar,
}

#[derive(Default)]
struct Pipes {
    to_upstream: Pipe,
    to_client: Pipe,
    /// Reset: the pump threads stop, queued chunks are gone.
    closed: bool,
    /// Bytes were dropped by a blackhole: the stream has a hole.
    lost_data: bool,
}

#[derive(Default)]
struct Pipe {
    queue: VecDeque<Chunk>,
    /// The end of the stream was forwarded (the writer shut its side down).
    finished: bool,
}

struct Chunk {
    /// Not to be forwarded before this: read time plus the delay then.
    due: Instant,
    /// `None` is the end of the stream.
    bytes: Option<Vec<u8>>,
}

/// A pump thread's body: a reader or a writer of one direction.
type Pump = fn(&Shared, &Arc<Conn>, Direction);

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream,
    ToClient,
}

impl Conn {
    fn lock_pipes(&self) -> MutexGuard<'_, Pipes> {
        self.pipes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn source(&self, direction: Direction) -> &TcpStream {
        match direction {
            Direction::ToUpstream => &self.client,
            Direction::ToClient => &self.upstream,
        }
    }

    fn destination(&self, direction: Direction) -> &TcpStream {
        match direction {
            Direction::ToUpstream => &self.upstream,
            Direction::ToClient => &self.client,
        }
    }

    fn is_closed(&self) -> bool {
        self.lock_pipes().closed
    }

    /// Drops the chunks still waiting out their delay, as a blackhole does.
    fn discard_pending(&self) {
        let mut pipes = self.lock_pipes();
        if !pipes.to_upstream.queue.is_empty() || !pipes.to_client.queue.is_empty() {
            pipes.to_upstream.queue.clear();
            pipes.to_client.queue.clear();
            pipes.lost_data = true;
        }
    }

    /// Resets both sockets: the pump threads stop, and when the last of them
    /// lets go of the connection, both sockets close with an RST.
    fn abort(&self) {
        {
            let mut pipes = self.lock_pipes();
            if pipes.closed {
                return;
            }
            pipes.closed = true;
            pipes.to_upstream.queue.clear();
            pipes.to_client.queue.clear();
        }
        for stream in [&self.client, &self.upstream] {
            let _ = set_linger_zero(stream);
            // Wakes a reader blocked on this socket (it reads end-of-file) and
            // sends nothing: the peer's first news is the RST.
            let _ = stream.shutdown(Shutdown::Read);
        }
        self.wake.notify_all();
    }
}

impl Pipes {
    fn pipe(&mut self, direction: Direction) -> &mut Pipe {
        match direction {
            Direction::ToUpstream => &mut self.to_upstream,
            Direction::ToClient => &mut self.to_client,
        }
    }
}

/// Resets `connections` and waits (bounded) until their sockets are closed, so
/// that the RSTs are out when the caller returns.
fn close_all(connections: Vec<Arc<Conn>>) {
    if connections.is_empty() {
        return;
    }
    for conn in &connections {
        conn.abort();
    }
    // The pump threads hold the other references; they let go within
    // WRITE_POLL at worst, and the last reference dropped closes the sockets.
    wait_until(CLOSE_TIMEOUT, || {
        connections.iter().all(|conn| Arc::strong_count(conn) == 1)
    });
}

fn accept_loop(shared: &Arc<Shared>) {
    loop {
        let accepted = shared.listener.accept();
        let mut state = shared.lock_state();
        if state.stopping {
            return;
        }
        match accepted {
            Ok((client, _)) => {
                shared.accepted.fetch_add(1, Ordering::Relaxed);
                if state.link == LinkState::Cut {
                    // Accepted just before the listener was shut down.
                    drop(state);
                    reset_stream(client);
                    continue;
                }
                drop(state);
                let conn_shared = Arc::clone(shared);
                // On failure the closure, and with it the client socket, is dropped.
                let _ = shared.spawn("ru", move || connect_and_pump(&conn_shared, client));
            }
            Err(_) if state.link == LinkState::Cut => {
                // The listener is shut down: accept fails at once until restore.
                while state.link == LinkState::Cut && !state.stopping {
                    state = shared
                        .state_changed
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            Err(_) => {
                // E.g. out of file descriptors: try again without spinning.
                drop(state);
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// Connects `client` to the upstream server, starts the other three pumps and
/// becomes the client-to-upstream reader.
fn connect_and_pump(shared: &Arc<Shared>, client: TcpStream) {
    let Ok(upstream) = TcpStream::connect_timeout(&shared.upstream, UPSTREAM_CONNECT_TIMEOUT)
    else {
        reset_stream(client);
        return;
    };
    // Nagle's algorithm would add its own delays to small requests and replies.
    let configured = [&client, &upstream]
        .iter()
        .all(|s| s.set_nodelay(true).is_ok() && s.set_write_timeout(Some(WRITE_POLL)).is_ok());
    let conn = Arc::new(Conn {
        client,
        upstream,
        pipes: Mutex::new(Pipes::default()),
        wake: Condvar::new(),
    });
    {
        let mut state = shared.lock_state();
        if !configured || state.stopping || state.link == LinkState::Cut {
            drop(state);
            conn.abort();
            return;
        }
        state.connections.push(Arc::clone(&conn));
    }
    let pumps: [(&str, Direction, Pump); 3] = [
        ("rd", Direction::ToClient, read_pump),
        ("wu", Direction::ToUpstream, write_pump),
        ("wd", Direction::ToClient, write_pump),
    ];
    for (role, direction, pump) in pumps {
        let (pump_shared, pump_conn) = (Arc::clone(shared), Arc::clone(&conn));
        if shared
            .spawn(role, move || pump(&pump_shared, &pump_conn, direction))
            .is_err()
        {
            shared.abort(&conn);
            return;
        }
    }
    read_pump(shared, &conn, Direction::ToUpstream);
}

/// Reads from the source of `direction` and queues what it read, stamped with
/// when it may be forwarded; in a blackhole, drops it instead.
fn read_pump(shared: &Shared, conn: &Arc<Conn>, direction: Direction) {
    let source = conn.source(direction);
    let mut buffer = vec![0u8; CHUNK_SIZE];
    loop {
        let n = match (&*source).read(&mut buffer) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => {
                shared.abort(conn);
                return;
            }
        };
        let read_at = Instant::now();
        let state = shared.lock_state();
        let mut pipes = conn.lock_pipes();
        if pipes.closed {
            return;
        }
        match state.link {
            LinkState::Open => {
                let bytes = (n > 0).then(|| buffer[..n].to_vec());
                let due = read_at + state.delay;
                pipes.pipe(direction).queue.push_back(Chunk { due, bytes });
                conn.wake.notify_all();
            }
            LinkState::Blackholed => pipes.lost_data = true,
            // Not reached: a cut closes every connection first.
            LinkState::Cut => return,
        }
        if n == 0 {
            return;
        }
    }
}

/// Forwards the queued chunks of `direction`, each once its time has come.
fn write_pump(shared: &Shared, conn: &Arc<Conn>, direction: Direction) {
    let destination = conn.destination(direction);
    loop {
        let chunk = {
            let mut pipes = conn.lock_pipes();
            loop {
                if pipes.closed {
                    return;
                }
                let now = Instant::now();
                let due = match pipes.pipe(direction).queue.front() {
                    Some(chunk) if chunk.due <= now => None,
                    Some(chunk) => Some(chunk.due),
                    None => Some(now + MAX_DELAY),
                };
                match due {
                    None => match pipes.pipe(direction).queue.pop_front() {
                        Some(chunk) => break chunk,
                        None => continue,
                    },
                    Some(due) => {
                        pipes = conn
                            .wake
                            .wait_timeout(pipes, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                    }
                }
            }
        };
        let Some(bytes) = chunk.bytes else {
            // The source ended its stream: pass the FIN on.
            if destination.shutdown(Shutdown::Write).is_err() {
                shared.abort(conn);
                return;
            }
            let both_finished = {
                let mut pipes = conn.lock_pipes();
                pipes.pipe(direction).finished = true;
                pipes.to_upstream.finished && pipes.to_client.finished
            };
            if both_finished {
                shared.forget(conn);
            }
            return;
        };
        match write_all(conn, destination, &bytes) {
            Ok(true) => {}
            Ok(false) => return,
            Err(_) => {
                shared.abort(conn);
                return;
            }
        }
    }
}

/// Writes all of `bytes`; `Ok(false)` when the connection was closed meanwhile.
/// The socket's write timeout ([`WRITE_POLL`]) keeps a peer that reads nothing
/// from blocking the writer forever.
fn write_all(conn: &Conn, mut stream: &TcpStream, mut bytes: &[u8]) -> io::Result<bool> {
    while !bytes.is_empty() {
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if conn.is_closed() {
                    return Ok(false);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Binds a free port of `127.0.0.1` by number, so that the kernel keeps it
/// bound while [`LinkProxy::cut`] has the listener shut down, and clears
/// `SO_REUSEADDR` (std sets it), so that nobody else can bind it meanwhile.
fn bind_listener() -> Result<TcpListener, TestkitError> {
    let mut attempt = 1;
    loop {
        let port = free_port()?;
        match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(listener) => {
                set_socket_option(
                    listener.as_raw_fd(),
                    libc::SO_REUSEADDR,
                    &(0 as libc::c_int),
                )
                .map_err(io_error("could not configure the proxy's listener"))?;
                return Ok(listener);
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < PORT_ATTEMPTS => {
                attempt += 1;
            }
            Err(e) => {
                return Err(io_error(format!("could not listen on 127.0.0.1:{port}"))(e));
            }
        }
    }
}

/// Closes `stream` with an RST rather than a FIN.
fn reset_stream(stream: TcpStream) {
    let _ = set_linger_zero(&stream);
}

/// Makes the socket's close send an RST and drop unsent data.
fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    set_socket_option(stream.as_raw_fd(), libc::SO_LINGER, &linger)
}

fn set_socket_option<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    let len = libc::socklen_t::try_from(size_of::<T>()).map_err(io::Error::other)?;
    // SAFETY: `value` points to `len` readable bytes for the duration of the
    // call; an fd that is not a socket only makes the call fail.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            std::ptr::from_ref(value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Stops a listening socket: pending and future connections are refused and a
/// blocked `accept` fails with `EINVAL`; the port stays bound (it was bound by
/// number), so [`listen`] can resume.
fn shutdown_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) has no memory-safety preconditions.
    if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn listen(fd: RawFd) -> io::Result<()> {
    // SAFETY: listen(2) has no memory-safety preconditions.
    if unsafe { libc::listen(fd, BACKLOG) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
