//! [`RedisConnection`]: a multiplexed connection to one server or to a
//! cluster, the kind a [`RedisLock`](crate::RedisLock) uses and opens for
//! you ([`RedisLock::connection`](crate::RedisLock::connection)).

use std::fmt;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A multiplexed, auto-reconnecting connection, as
/// [`RedisLock::connection`](crate::RedisLock::connection) opens for
/// commands of your own (a separate one: never the lock's own socket).
///
/// It implements [`redis::aio::ConnectionLike`], so it runs any command or
/// pipeline (`redis::cmd("GET").arg(key).query_async(&mut conn)`). Cheap to
/// clone: clones share the socket(s).
#[derive(Clone)]
pub enum RedisConnection {
    /// One server, through redis-rs' `ConnectionManager` (reconnects itself).
    Single(ConnectionManager),
    /// A Redis Cluster, through redis-rs' cluster client: commands go to the
    /// master of their key's slot, and `MOVED` / `ASK` redirections are
    /// followed by the client.
    Cluster(ClusterConnection),
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisConnection::Single(_) => f.write_str("RedisConnection::Single"),
            RedisConnection::Cluster(_) => f.write_str("RedisConnection::Cluster"),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_command(cmd),
            RedisConnection::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            RedisConnection::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(conn) => conn.get_db(),
            RedisConnection::Cluster(conn) => conn.get_db(),
        }
    }
}
