//! A minimal RESP2 client over a `TcpStream`: enough to probe a
//! `redis-server` and to form and steer a Redis Cluster without depending
//! on a Redis crate.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::error::{TestkitError, io_error};

/// Read/write limit of one probe command (`CLUSTER INFO`, `CLUSTER SLOTS`, ...).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One connection to a node, for commands with a time limit each.
pub(crate) struct Connection {
    port: u16,
    stream: BufReader<TcpStream>,
}

impl Connection {
    /// Connects to the node on `port` (within `timeout`, at most
    /// [`PROBE_TIMEOUT`]); each read and write then may take `timeout`.
    pub(crate) fn open(port: u16, timeout: Duration) -> Result<Self, TestkitError> {
        let context = || format!("could not talk to 127.0.0.1:{port}");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, timeout.min(PROBE_TIMEOUT))
            .map_err(io_error(context()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(io_error(context()))?;
        Ok(Self {
            port,
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply (an error reply is a `Reply::Error`).
    pub(crate) fn call(&mut self, args: &[&[u8]]) -> Result<Reply, TestkitError> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        let port = self.port;
        let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default()).into_owned();
        let context = || format!("{name} on 127.0.0.1:{port}");
        self.stream
            .get_mut()
            .write_all(&request)
            .map_err(io_error(context()))?;
        self.read_reply().map_err(io_error(context()))
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(invalid("truncated RESP reply"));
        }
        line.truncate(line.len() - 2);
        let (&kind, rest) = line
            .split_first()
            .ok_or_else(|| invalid("empty RESP line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let number = || {
            text.parse::<i64>()
                .map_err(|_| invalid("bad number in RESP reply"))
        };
        Ok(match kind {
            b'+' => Reply::Status(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => {
                    let mut bytes = vec![0; len + 2];
                    self.stream.read_exact(&mut bytes)?;
                    bytes.truncate(len);
                    Reply::Bulk(Some(bytes))
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(len) => Reply::Array(Some(
                    (0..len)
                        .map(|_| self.read_reply())
                        .collect::<std::io::Result<_>>()?,
                )),
            },
            _ => return Err(invalid("unknown RESP reply type")),
        })
    }
}

/// Runs one command on a new connection, with [`PROBE_TIMEOUT`].
pub(crate) fn command(port: u16, args: &[&str]) -> Result<Reply, TestkitError> {
    let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
    Connection::open(port, PROBE_TIMEOUT)?.call(&args)
}

/// Runs a command whose reply is a text (`CLUSTER INFO`, `CLUSTER NODES`,
/// `INFO ...`) on the node on `port`; any other reply is an error.
pub(crate) fn text(port: u16, args: &[&str]) -> Result<String, TestkitError> {
    match command(port, args)? {
        Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
        other => Err(unexpected(port, &args.join(" "), &other)),
    }
}

/// Runs a command that must answer `+OK`.
pub(crate) fn expect_ok(port: u16, args: &[&str]) -> Result<(), TestkitError> {
    match command(port, args)? {
        Reply::Status(status) if status == "OK" => Ok(()),
        other => Err(unexpected(port, &args.join(" "), &other)),
    }
}

/// The error for a reply that `what` should not have given.
pub(crate) fn unexpected(port: u16, what: &str, reply: &Reply) -> TestkitError {
    TestkitError::Other(format!("{what} on 127.0.0.1:{port} answered {reply:?}"))
}
