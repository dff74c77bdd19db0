//! Redis backends for [distlock](https://docs.rs/distlock): [`RedisLock`]
//! on one server or a Redis Cluster, and [`Redlock`] over several
//! independent servers.
//!
//! | | [`RedisLock`], one server | [`RedisLock`], cluster | [`Redlock`], 3 or 5 servers |
//! |---|---|---|---|
//! | connect | `redis://host:port` | `redis+cluster://h1:p1,h2:p2/` or [`RedisLock::connect_cluster`] | `redis+redlock://h1:p1,h2:p2,h3:p3/` or [`Redlock::connect`] |
//! | acquire | 1 round trip | 1 round trip, to the slot's master | 2 round trips, to every node at once |
//! | survives | nothing (use AOF for restarts) | nothing without replicas; failover may lose a lock | any minority of nodes down |
//!
//! ```no_run
//! use std::time::Duration;
//! use distlock_redis::RedisLock;
//! use distlock_redis::distlock_api::DistributedLock;
//!
//! # async fn demo() -> Result<(), distlock_redis::distlock_api::LockError> {
//! let locks = RedisLock::connect("redis://127.0.0.1:6379").await?;
//! let guard = locks.acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2)).await?;
//! // … write with guard.fencing_token() …
//! guard.release().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! - **One connection, shared.** A `RedisLock` holds one multiplexed,
//!   auto-reconnecting connection (redis-rs' `ConnectionManager`); clones
//!   share it, and concurrent operations pipeline on its socket. With
//!   wake-ups on (the default) it also holds one subscriber connection.
//! - **Acquire is one round trip**: a transaction (`MULTI`/`EXEC`) of
//!   `SET <lock> <token> NX PX <ttl>` and `INCR <fence>`. The counter moves
//!   on every attempt, but only a successful `SET` hands its value out, and
//!   since the two run atomically, tokens rise in the order locks are
//!   granted (with gaps where attempts failed). The server spends markedly
//!   less CPU on this than on the same step as a Lua script (see
//!   `cargo run --release -p distlock-redis --example cycle_cost`, which prints
//!   client and server CPU per cycle for both). When the lock is held, a second
//!   round trip marks it as waited for and reads the holder's remaining TTL
//!   (`PTTL`); a waiter never sleeps past it. Tokens are 128-bit random
//!   values, one per acquisition.
//! - **Release and extend compare the token** in a script (never a plain
//!   `DEL` or `PEXPIRE`), so a holder whose TTL ran out cannot touch the
//!   next holder's lock; either returns [`LockError::Lost`] when the lock
//!   is no longer ours. Scripts run by `EVALSHA`, and are loaded again when
//!   the server's script cache is empty (restart, `SCRIPT FLUSH`).
//! - **Keys**: `<prefix>{<name>}` for the lock and `<prefix>{<name>}:fence`
//!   for its counter (prefix `distlock:` by default), with `%` and `}` in
//!   the name written as `%25` and `%7D`. The braces are a Redis Cluster
//!   hash tag: the two keys always share a slot, whatever the name holds.
//!   Counters have no TTL, so they keep rising across acquisitions: about
//!   80 bytes of server memory per distinct name ever locked. The lock's
//!   value is the holder's token, with a `+` appended by the first attempt
//!   that finds it held. Release publishes the lock key (not the name).
//! - **Waiting**: a failed attempt marks the held lock (the `+`); a
//!   release that finds the mark `PUBLISH`es the lock key on
//!   `<prefix>released` (`<prefix>released@<db>` outside database 0), and
//!   each `RedisLock`'s subscriber connection wakes the first waiter of its
//!   process for that name, which tries again at once (an uncontended
//!   release publishes nothing). Waiters register before their first
//!   attempt, so a release cannot slip between an attempt and the wait, and
//!   waiters of one process queue up in arrival order instead of all racing
//!   for each release. Expiries and missed messages (a reconnecting
//!   subscriber) are caught by distlock-api's jittered backoff (2 ms doubling to
//!   100 ms, never past the holder's remaining TTL); after a resubscribe
//!   every waiter looks again.
//! - **Timeouts**: connecting takes at most the connect timeout (3 s by
//!   default); a command at most connect timeout + response timeout (1 s),
//!   so a dead or frozen server gives [`LockError::Connection`] in bounded
//!   time, never a hang.
//! - **Renewal** is distlock-api's: `guard.auto_renew()` extends at ttl/3 and
//!   marks the guard lost when the lock is found taken, or when the server
//!   stays unreachable past the guard's validity.
//!
//! - **Redis Cluster**: the two keys of a name share a hash tag, so they
//!   live in one slot and the acquire step is one script on that slot's
//!   master (a cluster client follows `MOVED` and `ASK` for a command, not
//!   inside a transaction). Wake-ups work across the cluster: a release
//!   published on any node reaches the subscriber, which listens through
//!   one seed node and moves to the next if that one fails.
//!
//! # Guarantees and their limits
//!
//! On one Redis server that keeps its data, at most one guard holds a name
//! at a time, until its TTL runs out, and fencing tokens strictly increase
//! per name. A server restarted without persistence forgets its locks and
//! counters: a lock can then be granted twice and tokens start again at 1 —
//! the fencing check in your storage keeps the protected write single only
//! while the counter survives (use AOF with `appendfsync always` if that
//! matters). A lock lives on the server clock; the guard's `valid_until`
//! is a conservative bound on the local monotonic clock (ttl minus 1 % and
//! 2 ms). Failover to a replica can lose the last writes, and with them a
//! lock: Redis replication is asynchronous. The same holds for each
//! master of a cluster. For what [`Redlock`] guarantees, and where that
//! breaks, see its docs.
//!
//! [`LockError::Lost`]: distlock_api::LockError::Lost
//! [`LockError::Connection`]: distlock_api::LockError::Connection

#![cfg_attr(docsrs, feature(doc_cfg))]

mod call;
mod connection;
mod error;
mod keys;
mod listener;
mod lock;
mod node;
mod options;
mod redlock;
mod scripts;
mod settings;
mod url;

pub use connection::RedisConnection;
pub use lock::{REDIS_MAX_TTL, RedisLease, RedisLock};
pub use options::{DEFAULT_PREFIX, RedisLockOptions};
pub use redlock::{Redlock, RedlockLease};

pub use distlock_api;
pub use redis;
