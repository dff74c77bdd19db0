//! Socket options the proxy needs and std does not offer: a listener that
//! can stop and resume listening on its port, and resets instead of FINs.

use std::io;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd as _, RawFd};

use super::BACKLOG;
use crate::error::{TestkitError, io_error};
use crate::process::{PortChoice, with_port};

/// Binds a free port of `127.0.0.1` by number, so that the kernel keeps it
/// bound while [`LinkProxy::cut`](crate::LinkProxy::cut) has the listener shut down, and clears
/// `SO_REUSEADDR` (std sets it), so that nobody else can bind it meanwhile.
pub(super) fn bind_listener() -> Result<TcpListener, TestkitError> {
    with_port(PortChoice::Fresh, |port| {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                TestkitError::PortInUse {
                    server: "link proxy",
                    port,
                    log_tail: e.to_string(),
                }
            } else {
                io_error(format!("could not listen on 127.0.0.1:{port}"))(e)
            }
        })?;
        set_socket_option(
            listener.as_raw_fd(),
            libc::SO_REUSEADDR,
            &(0 as libc::c_int),
        )
        .map_err(io_error("could not configure the proxy's listener"))?;
        Ok(listener)
    })
}

/// Closes `stream` with an RST rather than a FIN.
pub(super) fn reset_stream(stream: TcpStream) {
    let _ = set_linger_zero(&stream);
}

/// Makes the socket's close send an RST and drop unsent data.
pub(super) fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
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
pub(super) fn shutdown_listener(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) has no memory-safety preconditions.
    if unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn listen(fd: RawFd) -> io::Result<()> {
    // SAFETY: listen(2) has no memory-safety preconditions.
    if unsafe { libc::listen(fd, BACKLOG) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
