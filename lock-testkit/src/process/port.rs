//! Loopback ports: a free one for each server, and the one loop that tries
//! again when someone else took the port between our look and the bind.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use crate::error::{TestkitError, io_error};

/// How many times a start is tried when its port was taken.
const PORT_ATTEMPTS: u32 = 3;
/// How long to wait before binding a server's own port again: whoever took
/// it while the server was down may let go soon.
const SAME_PORT_PAUSE: Duration = Duration::from_millis(200);

/// Which port a start binds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PortChoice {
    /// A new [free port](free_port) for every attempt.
    Fresh,
    /// This port every time (a restart keeps the server's port).
    Same(u16),
}

/// Runs `start` on a port chosen by `choice`, and again (up to
/// [`PORT_ATTEMPTS`] in all) while it fails with
/// [`TestkitError::PortInUse`]: the only port-retry loop of the kit.
pub(crate) fn with_port<T>(
    choice: PortChoice,
    mut start: impl FnMut(u16) -> Result<T, TestkitError>,
) -> Result<T, TestkitError> {
    let mut attempt = 1;
    loop {
        let port = match choice {
            PortChoice::Fresh => free_port()?,
            PortChoice::Same(port) => port,
        };
        match start(port) {
            Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => {
                attempt += 1;
                if let PortChoice::Same(_) = choice {
                    thread::sleep(SAME_PORT_PAUSE);
                }
            }
            result => return result,
        }
    }
}

/// A free TCP port on 127.0.0.1 (free when we looked: someone may take it before
/// the server binds it, hence [`with_port`]).
///
/// Never the same port twice in one process: a server killed by one test
/// frees its port, and its clients keep reconnecting there; were the port
/// handed to another test's server, they would reach the wrong server.
pub(crate) fn free_port() -> Result<u16, TestkitError> {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    for _ in 0..64 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_error("could not reserve a free port on 127.0.0.1"))?;
        let port = listener
            .local_addr()
            .map_err(io_error("could not read the reserved port"))?
            .port();
        if HANDED_OUT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(port)
        {
            return Ok(port);
        }
    }
    Err(TestkitError::Other(
        "the kernel offered only ports this process has used before".into(),
    ))
}
