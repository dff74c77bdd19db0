//! Everything about a [`PgAdvisoryLock`] that can be tuned, with defaults
//! that suit a service taking short-lived locks.

use std::fmt;
use std::time::Duration;

use distlock_api::{Backoff, LockError};
use sqlx::postgres::{PgConnectOptions, PgPool};

use crate::PgAdvisoryLock;

/// How waiters learn that a lock they wait for may be free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WaitStrategy {
    /// The server's own lock queue first: a waiter waits in
    /// `pg_advisory_lock` under a `lock_timeout` (at most a quarter of the
    /// TTL per statement, then it queues again, so that a grant leaves the
    /// guard at least three quarters of its validity; never past the
    /// deadline), and PostgreSQL hands the lock over the moment it is
    /// unlocked, first come first served across clients. That pins a
    /// pooled connection per waiting attempt, so a client lets at most half
    /// its pool (at least one connection) wait so; further waiters wait as
    /// with [`Notify`](Self::Notify), and so does every waiter of a client
    /// whose queued wait the server cancelled (a `statement_timeout`). The
    /// default.
    #[default]
    Queue,
    /// `LISTEN`/`NOTIFY`: a release someone waits for sends
    /// `pg_notify(channel, key)` in its unlock round trip, and one listener
    /// connection per [`PgAdvisoryLock`] wakes the waiters on that key at
    /// once; waiters hold no lock connection while they wait. Backoff (see
    /// [`PgLockOptions::backoff`]) remains as the fallback for missed
    /// notifications.
    Notify,
    /// Retry with jittered exponential backoff only: no listener connection,
    /// no `NOTIFY` on release. Hand-off takes longer (see the crate docs).
    Poll,
}

/// Server-side TCP keepalive settings for the lock connections, sent in the
/// startup packet (`options=-c tcp_keepalives_idle=…`).
///
/// They bound how long the server keeps an *idle pooled* session whose
/// client machine vanished: about `idle + interval × count`. While a
/// session holds a lock, its `tcp_user_timeout` is the lock's TTL, so the
/// keepalives only probe and cannot end the session (and free the lock)
/// before the TTL; see the crate docs on idle timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalives {
    /// Silence before the first probe (`tcp_keepalives_idle`). Default 10 s.
    pub idle: Duration,
    /// Time between probes (`tcp_keepalives_interval`). Default 5 s.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped
    /// (`tcp_keepalives_count`). Default 3.
    pub count: u32,
}

impl Default for TcpKeepalives {
    fn default() -> Self {
        TcpKeepalives {
            idle: Duration::from_secs(10),
            interval: Duration::from_secs(5),
            count: 3,
        }
    }
}

/// Options for a [`PgAdvisoryLock`]; start from [`PgLockOptions::new`] (or
/// [`PgAdvisoryLock::options`]) and finish with [`connect`](Self::connect),
/// [`connect_with`](Self::connect_with) or [`from_pool`](Self::from_pool).
///
/// ```no_run
/// use std::time::Duration;
/// use distlock_postgres::{PgLockOptions, WaitStrategy};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock_api::LockError> {
/// let locks = PgLockOptions::new()
///     .max_connections(32)
///     .key_namespace("shop:")
///     .fencing_sequence("locks", "fencing_token")
///     .wait_strategy(WaitStrategy::Notify)
///     .connect("postgres://app@db.internal/shop")
///     .await?;
/// # let _ = locks;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgLockOptions {
    pub(crate) max_connections: u32,
    pub(crate) connect_timeout: Duration,
    pub(crate) pool_timeout: Duration,
    pub(crate) query_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) key_namespace: String,
    pub(crate) sequence_schema: String,
    pub(crate) sequence_name: String,
    pub(crate) wait_strategy: WaitStrategy,
    pub(crate) notify_channel: String,
    pub(crate) backoff: Backoff,
    pub(crate) keepalives: Option<TcpKeepalives>,
    pub(crate) application_name: Option<String>,
}

impl fmt::Debug for PgLockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLockOptions")
            .field("max_connections", &self.max_connections)
            .field("connect_timeout", &self.connect_timeout)
            .field("pool_timeout", &self.pool_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("key_namespace", &self.key_namespace)
            .field(
                "fencing_sequence",
                &format_args!("{}.{}", self.sequence_schema, self.sequence_name),
            )
            .field("wait_strategy", &self.wait_strategy)
            .field("notify_channel", &self.notify_channel)
            .field("backoff", &self.backoff)
            .field("keepalives", &self.keepalives)
            .field("application_name", &self.application_name)
            .finish()
    }
}

impl Default for PgLockOptions {
    fn default() -> Self {
        PgLockOptions {
            max_connections: 10,
            connect_timeout: Duration::from_secs(5),
            pool_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(600)),
            key_namespace: String::new(),
            sequence_schema: "public".to_owned(),
            sequence_name: "distlock_fencing_token".to_owned(),
            wait_strategy: WaitStrategy::Queue,
            notify_channel: "distlock".to_owned(),
            backoff: Backoff::default(),
            keepalives: Some(TcpKeepalives::default()),
            application_name: None,
        }
    }
}

impl PgLockOptions {
    /// The defaults: 10 connections, 5 s connect / pool / query timeouts,
    /// no key namespace, fencing tokens from `public.distlock_fencing_token`,
    /// `NOTIFY` wake-ups on channel `distlock`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The most connections this client opens for locks (at least 1).
    /// Every *held* lock pins one of them until it is released, so this is
    /// also the most locks one client can hold at once. Default 10.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// How long opening one connection may take before it fails with
    /// [`LockError::Connection`]. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long `try_acquire` waits for a free connection when all are in
    /// use (`acquire` waits up to its own `wait` instead) before it fails
    /// with a "pool exhausted" [`LockError::Connection`]. Default 5 s.
    pub fn pool_timeout(mut self, timeout: Duration) -> Self {
        self.pool_timeout = timeout;
        self
    }

    /// The client-side bound on each round trip (lock, extend, release).
    /// A statement that outlasts it is abandoned and its connection closed,
    /// which frees any lock on it. Default 5 s.
    pub fn query_timeout(mut self, timeout: Duration) -> Self {
        self.query_timeout = timeout;
        self
    }

    /// How long an unused connection stays open in the pool; `None` keeps
    /// them. Default 10 minutes.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// A prefix hashed in front of every lock name, so applications that
    /// share a database do not share lock keys by accident (see
    /// [`lock_key_in`](crate::lock_key_in)). Raw keys are not affected.
    /// Default: none.
    pub fn key_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.key_namespace = namespace.into();
        self
    }

    /// The sequence fencing tokens come from, created on first use with
    /// `CREATE SEQUENCE IF NOT EXISTS` when missing. Every client that locks
    /// the same keys must use the same sequence. Default
    /// `public.distlock_fencing_token`.
    pub fn fencing_sequence(mut self, schema: impl Into<String>, name: impl Into<String>) -> Self {
        self.sequence_schema = schema.into();
        self.sequence_name = name.into();
        self
    }

    /// How waiters wait for a lock. Default [`WaitStrategy::Queue`].
    pub fn wait_strategy(mut self, strategy: WaitStrategy) -> Self {
        self.wait_strategy = strategy;
        self
    }

    /// The `NOTIFY` channel releases are announced on. Clients that lock
    /// the same keys must agree on it. Default `distlock`.
    pub fn notify_channel(mut self, channel: impl Into<String>) -> Self {
        self.notify_channel = channel.into();
        self
    }

    /// The backoff between attempts while waiting (distlock-api's default:
    /// 2 ms doubling to 100 ms, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Server-side TCP keepalives for the lock connections; `None` sends
    /// none (needed behind poolers that reject startup `options`, such as
    /// PgBouncer). Default [`TcpKeepalives::default`].
    pub fn tcp_keepalives(mut self, keepalives: Option<TcpKeepalives>) -> Self {
        self.keepalives = keepalives;
        self
    }

    /// The `application_name` of the lock connections, as shown in
    /// `pg_stat_activity` (the listener's gets `-listener` appended).
    /// Default: the URL's `application_name`, else `distlock`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = Some(name.into());
        self
    }

    /// Connects to `url` (`postgres://` or `postgresql://`; `sslmode` and
    /// the other libpq-style parameters are honoured).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidUrl`] for a URL that does not parse or has
    /// another scheme; [`LockError::Connection`] when the server cannot be
    /// reached within [`connect_timeout`](Self::connect_timeout);
    /// [`LockError::Backend`] for a server older than PostgreSQL 14.
    /// No message contains the URL's password.
    pub async fn connect(self, url: &str) -> Result<PgAdvisoryLock, LockError> {
        let options = crate::url::parse(url)?;
        PgAdvisoryLock::open(self, crate::lock::Source::Options(Box::new(options))).await
    }

    /// Connects with ready-made sqlx connect options.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect), without the URL errors.
    pub async fn connect_with(
        self,
        options: PgConnectOptions,
    ) -> Result<PgAdvisoryLock, LockError> {
        PgAdvisoryLock::open(self, crate::lock::Source::Options(Box::new(options))).await
    }

    /// Takes lock connections from an existing sqlx pool (shared with the
    /// application) instead of a pool of its own.
    ///
    /// A held lock then pins one of *that* pool's connections; the pool's
    /// own size applies ([`max_connections`](Self::max_connections) and the
    /// keepalive settings are not used). A connection that may still hold
    /// a lock is closed, never returned to the pool; a clean one goes back
    /// through the pool's usual return path (sqlx pings it first, so this
    /// costs one round trip more per lock than a pool of our own).
    ///
    /// # Errors
    ///
    /// [`LockError::Connection`] when no connection can be had from the
    /// pool; [`LockError::Backend`] for a server older than PostgreSQL 14.
    pub async fn from_pool(self, pool: PgPool) -> Result<PgAdvisoryLock, LockError> {
        PgAdvisoryLock::open(self, crate::lock::Source::Pool(pool)).await
    }
}
