//! The link proxy in front of a real redis-server: forwarding, delay,
//! blackhole, cut, restore, and a clean drop.

use std::fs;
use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use distlock_testkit::{LinkProxy, LinkState, RedisServer};

/// Bounds every wait for something that should happen (a reply, a reset).
const PATIENCE: Duration = Duration::from_secs(2);
/// How long a blackholed request waits for the reply that must not come.
const SILENCE: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------- helpers

fn start() -> (RedisServer, LinkProxy) {
    let redis = RedisServer::start().expect("redis-server");
    let link = LinkProxy::start(redis.addr()).expect("proxy");
    (redis, link)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, PATIENCE).expect("connect through the proxy");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(PATIENCE))
        .expect("write timeout");
    stream
}

/// Sends `PING` and reads the reply, within the stream's read timeout.
fn ping(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    assert_eq!(&reply, b"+PONG\r\n");
    Ok(())
}

fn assert_pings(addr: SocketAddr) {
    ping(&mut connect(addr)).expect("PING through a new connection");
}

/// Writes a RESP command and reads exactly `reply_len` bytes of reply.
fn command(stream: &mut TcpStream, args: &[&[u8]], reply_len: usize) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    stream.write_all(&request).expect("send command");
    let mut reply = vec![0u8; reply_len];
    stream.read_exact(&mut reply).expect("read reply");
    reply
}

/// SETs a value larger than the proxy's chunks and the socket buffers, GETs it
/// back and checks every byte.
fn assert_big_value_round_trips(stream: &mut TcpStream, key: &str) {
    let value: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let ok = command(stream, &[b"SET", key.as_bytes(), &value], 5);
    assert_eq!(ok, b"+OK\r\n");
    let header = format!("${}\r\n", value.len());
    let reply = command(
        stream,
        &[b"GET", key.as_bytes()],
        header.len() + value.len() + 2,
    );
    assert_eq!(&reply[..header.len()], header.as_bytes());
    assert!(
        reply[header.len()..reply.len() - 2] == value[..],
        "value garbled"
    );
    assert_eq!(&reply[reply.len() - 2..], b"\r\n");
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The request goes out but no reply comes within [`SILENCE`].
fn assert_silent(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(SILENCE))
        .expect("read timeout");
    stream.write_all(b"PING\r\n").expect("send PING");
    let mut reply = [0u8; 7];
    match stream.read(&mut reply) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("expected no reply within {SILENCE:?}, got {other:?}"),
    }
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
}

/// The connection is reset or closed: its next write or read fails or sees
/// end-of-file, promptly (not a read timeout).
fn assert_broken(stream: &mut TcpStream) {
    let started = Instant::now();
    if stream.write_all(b"PING\r\n").is_err() {
        return;
    }
    let mut reply = [0u8; 7];
    match stream.read(&mut reply) {
        Ok(0) => {}
        Err(e) if !is_timeout(&e) => {}
        other => panic!(
            "expected a reset or end-of-file, got {other:?} after {:?}",
            started.elapsed()
        ),
    }
}

fn assert_refused(addr: SocketAddr) {
    let err =
        TcpStream::connect_timeout(&addr, PATIENCE).expect_err("connection should be refused");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// Names of this process's threads that belong to the proxy on `port`.
fn proxy_threads(port: u16) -> Vec<String> {
    let prefix = format!("link:{port}:");
    fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("comm")).ok())
        .map(|comm| comm.trim_end().to_owned())
        .filter(|comm| comm.starts_with(&prefix))
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn forwards_sequential_and_concurrent_connections() {
    let (_redis, link) = start();
    assert_eq!(link.addr().port(), link.port());
    assert_eq!(link.state(), LinkState::Open);
    assert_eq!(link.delay(), Duration::ZERO);

    for _ in 0..50 {
        assert_pings(link.addr());
    }

    let mut big = connect(link.addr());
    assert_big_value_round_trips(&mut big, "link:big");

    let addr = link.addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            thread::spawn(move || {
                let mut stream = connect(addr);
                for _ in 0..25 {
                    ping(&mut stream).expect("concurrent PING");
                }
                stream
            })
        })
        .collect();
    let open: Vec<TcpStream> = clients
        .into_iter()
        .map(|client| client.join().expect("client thread"))
        .collect();
    // The 50 sequential ones close in the background.
    wait_for("8 clients + the big one are open", || {
        link.connections() == 9
    });
    assert_eq!(link.accepted(), 59);

    drop(open);
    drop(big);
    wait_for("closed connections leave the count", || {
        link.connections() == 0
    });
}

#[test]
fn delay_adds_latency_in_each_direction() {
    let (_redis, link) = start();
    let mut before = connect(link.addr());
    ping(&mut before).expect("PING without delay");

    link.set_delay(Duration::from_millis(50));
    assert_eq!(link.delay(), Duration::from_millis(50));
    let mut after = connect(link.addr());
    for stream in [&mut before, &mut after] {
        for _ in 0..3 {
            let started = Instant::now();
            ping(stream).expect("PING with delay");
            let round_trip = started.elapsed();
            assert!(
                round_trip >= Duration::from_millis(100),
                "a round trip took {round_trip:?} with 50 ms each way"
            );
        }
    }
    // Chunking and ordering survive the queues.
    assert_big_value_round_trips(&mut after, "link:delayed");

    link.set_delay(Duration::ZERO);
    ping(&mut before).expect("PING after the delay is removed");
    assert_pings(link.addr());
}

#[test]
fn blackhole_silences_the_link_until_restore() {
    let (_redis, link) = start();
    let mut busy = connect(link.addr());
    let mut idle = connect(link.addr());
    ping(&mut busy).expect("PING before the blackhole");
    ping(&mut idle).expect("PING before the blackhole");

    link.blackhole().expect("blackhole");
    assert_eq!(link.state(), LinkState::Blackholed);
    assert_silent(&mut busy);
    // New connections are accepted, then silent too.
    let mut newcomer = connect(link.addr());
    assert_silent(&mut newcomer);
    wait_for("3 connections are open", || link.connections() == 3);

    link.restore().expect("restore");
    assert_eq!(link.state(), LinkState::Open);
    assert_pings(link.addr());
    // Connections that lost bytes were reset; the idle one lost nothing.
    assert_broken(&mut busy);
    assert_broken(&mut newcomer);
    ping(&mut idle).expect("an idle connection survives the blackhole");
    // The one that PINGed after the restore closes in the background.
    wait_for("only the idle connection is left", || {
        link.connections() == 1
    });
}

#[test]
fn blackhole_drops_data_still_waiting_out_a_delay() {
    let (_redis, link) = start();
    let mut stream = connect(link.addr());
    link.set_delay(Duration::from_millis(200));
    stream.write_all(b"PING\r\n").expect("send PING");
    thread::sleep(Duration::from_millis(20));
    link.blackhole().expect("blackhole");
    stream
        .set_read_timeout(Some(SILENCE))
        .expect("read timeout");
    let mut reply = [0u8; 7];
    match stream.read(&mut reply) {
        Err(e) if is_timeout(&e) => {}
        other => panic!("the delayed PING should have been dropped, got {other:?}"),
    }
    link.restore().expect("restore");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    assert_broken(&mut stream);
}

#[test]
fn cut_resets_connections_and_refuses_new_ones_until_restore() {
    let (_redis, link) = start();
    let port = link.port();
    let mut open = connect(link.addr());
    ping(&mut open).expect("PING before the cut");

    link.cut().expect("cut");
    assert_eq!(link.state(), LinkState::Cut);
    assert_eq!(link.connections(), 0);
    assert_broken(&mut open);
    assert_refused(link.addr());
    link.cut().expect("a second cut is a no-op");
    assert_refused(link.addr());

    link.restore().expect("restore");
    assert_eq!(link.port(), port);
    assert_pings(link.addr());

    // A blackhole straight after a cut accepts connections again.
    link.cut().expect("cut");
    link.blackhole().expect("blackhole after cut");
    assert_silent(&mut connect(link.addr()));
    link.restore().expect("restore");
    assert_pings(link.addr());
}

#[test]
fn clients_are_reset_when_the_upstream_is_down() {
    let (mut redis, link) = start();
    assert_pings(link.addr());
    redis.kill().expect("kill redis");
    assert_broken(&mut connect(link.addr()));
    redis.restart().expect("restart redis");
    assert_pings(link.addr());
}

#[test]
fn drop_ends_the_threads_and_closes_the_port() {
    let (_redis, link) = start();
    let port = link.port();
    let addr = link.addr();
    let mut idle = connect(addr);
    ping(&mut idle).expect("PING");
    link.blackhole().expect("blackhole");
    let mut waiting = connect(addr);
    waiting.write_all(b"PING\r\n").expect("send PING");
    assert!(!proxy_threads(port).is_empty(), "the proxy runs threads");

    let started = Instant::now();
    drop(link);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "drop took {took:?}");

    assert_broken(&mut idle);
    assert_broken(&mut waiting);
    assert_refused(addr);
    wait_for("the proxy's threads end", || proxy_threads(port).is_empty());
}

#[test]
fn drop_while_cut() {
    let (_redis, link) = start();
    let port = link.port();
    let addr = link.addr();
    link.cut().expect("cut");
    drop(link);
    assert_refused(addr);
    wait_for("the proxy's threads end", || proxy_threads(port).is_empty());
}
