//! What the test modules share: a raw RESP client, so that the kit's servers
//! are checked without the kit's own code (or a Redis crate), and a bounded
//! wait for processes to be gone.

use std::io::{self, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use distlock_testkit::process_is_alive;

/// How long connecting and each reply may take.
const TIMEOUT: Duration = Duration::from_millis(500);

/// Sends one RESP command and returns the raw reply (up to 8 KiB).
pub(crate) fn redis_command(addr: SocketAddr, args: &[&str]) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(request.as_bytes())?;
    let mut reply = vec![0u8; 8192];
    let n = stream.read(&mut reply)?;
    Ok(String::from_utf8_lossy(&reply[..n]).into_owned())
}

/// Waits (bounded) until none of `pids` is alive; returns how long it took.
pub(crate) fn assert_all_gone(pids: &[u32], within: Duration) -> Duration {
    let start = Instant::now();
    while pids.iter().any(|&pid| process_is_alive(pid)) {
        let alive: Vec<_> = pids.iter().filter(|&&pid| process_is_alive(pid)).collect();
        assert!(
            start.elapsed() < within,
            "processes {alive:?} still alive after {within:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}
