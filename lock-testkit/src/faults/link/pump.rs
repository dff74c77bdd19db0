//! The proxy's moving parts: the accept loop, and per connection a reader
//! and a writer for each direction, which delay, drop or forward chunks.

use std::collections::VecDeque;
use std::io::{self, Read as _, Write as _};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::socket::{reset_stream, set_linger_zero};
use super::{
    CHUNK_SIZE, CLOSE_TIMEOUT, LinkState, MAX_DELAY, Shared, UPSTREAM_CONNECT_TIMEOUT, WRITE_POLL,
};
use crate::process::wait_until;

/// One proxied connection: the accepted client socket and the socket to the
/// upstream server, with a queue of chunks for each direction.
pub(super) struct Conn {
    client: TcpStream,
    upstream: TcpStream,
    pipes: Mutex<Pipes>,
    /// Wakes the writers: a chunk was queued, or the connection closed.
    wake: Condvar,
}

#[derive(Default)]
pub(super) struct Pipes {
    to_upstream: Pipe,
    to_client: Pipe,
    /// Reset: the pump threads stop, queued chunks are gone.
    closed: bool,
    /// Bytes were dropped by a blackhole: the stream has a hole.
    pub(super) lost_data: bool,
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
    pub(super) fn lock_pipes(&self) -> MutexGuard<'_, Pipes> {
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
    pub(super) fn discard_pending(&self) {
        let mut pipes = self.lock_pipes();
        if !pipes.to_upstream.queue.is_empty() || !pipes.to_client.queue.is_empty() {
            pipes.to_upstream.queue.clear();
            pipes.to_client.queue.clear();
            pipes.lost_data = true;
        }
    }

    /// Resets both sockets: the pump threads stop, and when the last of them
    /// lets go of the connection, both sockets close with an RST.
    pub(super) fn abort(&self) {
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
pub(super) fn close_all(connections: Vec<Arc<Conn>>) {
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

pub(super) fn accept_loop(shared: &Arc<Shared>) {
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
