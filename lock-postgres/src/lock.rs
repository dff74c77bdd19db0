//! The client users hold: connecting, locking by name or by raw key, and
//! the [`LockBackend`] implementation that gives it distlock-api's waiting,
//! guards and renewal.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::backend::{
    Attempt, AttemptContext, Backoff, LockBackend, WakeHub, Wakeup, acquire_with, try_acquire_with,
};
use distlock_api::{LockError, LockGuard};
use sqlx::Row as _;
use sqlx::postgres::{PgConnectOptions, PgPool};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::from_sqlx;
use crate::interest::Interest;
use crate::lease::PgLease;
use crate::pool::{AcquireError, ConnPool, check_session_affinity};
use crate::shared::{Core, MAX_TTL};
use crate::sql::{SERVER_INFO, Statements, qualified};
use crate::{PgLockOptions, WaitStrategy, XactLocks};

/// The oldest server this backend runs on: 14 brought `idle_session_timeout`,
/// which enforces lock TTLs on the server.
const MIN_SERVER_VERSION: i32 = 140_000;

/// Where a client's connections come from.
pub(crate) enum Source {
    Options(Box<PgConnectOptions>),
    Pool(PgPool),
}

/// Distributed locks on PostgreSQL advisory locks.
///
/// A handle to one server (one database): cheap to clone, clones share the
/// connections. See the [crate docs](crate) for how TTLs, waiting, keys and
/// pool sizing work.
///
/// ```no_run
/// use std::time::Duration;
/// use distlock_postgres::{DistributedLock, PgAdvisoryLock};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), distlock_api::LockError> {
/// let locks = PgAdvisoryLock::connect("postgres://app@localhost/shop").await?;
/// let guard = locks
///     .acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2))
///     .await?;
/// // … book the ticket, passing guard.fencing_token() to the UPDATE …
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct PgAdvisoryLock {
    core: Arc<Core>,
}

impl PgAdvisoryLock {
    /// Connects to `url` with the default [`PgLockOptions`].
    ///
    /// # Errors
    ///
    /// See [`PgLockOptions::connect`].
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        PgLockOptions::new().connect(url).await
    }

    /// Uses connections from an existing sqlx pool, with the default
    /// options otherwise (see [`PgLockOptions::from_pool`]).
    ///
    /// # Errors
    ///
    /// See [`PgLockOptions::from_pool`].
    pub async fn from_pool(pool: PgPool) -> Result<Self, LockError> {
        PgLockOptions::new().from_pool(pool).await
    }

    /// Options to build a client with (the same as [`PgLockOptions::new`]).
    pub fn options() -> PgLockOptions {
        PgLockOptions::new()
    }

    pub(crate) async fn open(options: PgLockOptions, source: Source) -> Result<Self, LockError> {
        let (pool, listen_options, target) = match source {
            Source::Options(connect) => {
                let connect = configure(*connect, &options);
                let target = describe(&connect);
                let pool = ConnPool::own(
                    connect.clone(),
                    options.max_connections,
                    options.connect_timeout,
                    options.idle_timeout,
                );
                (pool, connect, target)
            }
            Source::Pool(pool) => {
                let connect = (*pool.connect_options()).clone();
                let target = describe(&connect);
                (
                    ConnPool::sqlx(pool, options.connect_timeout),
                    connect,
                    target,
                )
            }
        };
        let server = check_server(&pool, &options, &listen_options).await?;
        let hub = WakeHub::new();
        let notify = options.wait_strategy != WaitStrategy::Poll;
        // Their own application names, so operators (and tests) can tell
        // the listening and the interest sessions from the lock sessions.
        let app = listen_options
            .get_application_name()
            .unwrap_or("distlock")
            .to_owned();
        let listener = notify.then(|| {
            crate::listener::listener(
                listen_options
                    .clone()
                    .application_name(&format!("{app}-listener")),
                options.connect_timeout,
                options.notify_channel.clone(),
                hub.clone(),
            )
        });
        let interest = notify.then(|| {
            Interest::new(
                listen_options.application_name(&format!("{app}-interest")),
                options.connect_timeout,
                options.query_timeout,
                hub.clone(),
            )
        });
        let sequence = qualified(&options.sequence_schema, &options.sequence_name);
        let core = Arc::new(Core {
            pool,
            statements: Statements::new(
                &sequence,
                server.durable_commits,
                &server.default_user_timeout,
            ),
            sequence,
            sequence_schema: options.sequence_schema.clone(),
            sequence_ready: OnceCell::new(),
            token_floor: Default::default(),
            namespace: options.key_namespace.clone(),
            strategy: options.wait_strategy,
            channel: options.notify_channel.clone(),
            backoff: options.backoff,
            pool_timeout: options.pool_timeout,
            query_timeout: options.query_timeout,
            connect_timeout: options.connect_timeout,
            default_idle_timeout: server.default_idle_timeout,
            hub,
            listener,
            interest,
            blocking: Default::default(),
            queue_off: Default::default(),
            target,
        });
        Ok(PgAdvisoryLock { core })
    }

    fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The advisory-lock key a name maps to on this client (with its key
    /// namespace): see [`lock_key_in`](crate::lock_key_in).
    pub fn key(&self, name: &str) -> i64 {
        self.core().key(name)
    }

    /// [`try_acquire`](distlock_api::DistributedLock::try_acquire) by raw advisory-lock
    /// key, for applications that already own a key space (the same lock as
    /// `pg_advisory_lock(key)` elsewhere). The guard's
    /// [`name`](LockGuard::name) is the key in decimal.
    ///
    /// # Errors
    ///
    /// As [`try_acquire`](distlock_api::DistributedLock::try_acquire).
    pub async fn try_acquire_key(
        &self,
        key: i64,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        try_acquire_with(self, &key.to_string(), ttl, |_| Ok(key)).await
    }

    /// [`acquire`](distlock_api::DistributedLock::acquire) by raw advisory-lock key (see
    /// [`try_acquire_key`](Self::try_acquire_key)).
    ///
    /// # Errors
    ///
    /// As [`acquire`](distlock_api::DistributedLock::acquire).
    pub async fn acquire_key(
        &self,
        key: i64,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        acquire_with(self, &key.to_string(), ttl, wait, |_| Ok(key)).await
    }

    /// Transaction-scoped locks with this client's key namespace and
    /// fencing sequence (see [`XactLocks`]). They share this client's
    /// record of the highest token granted, so a token that falls below
    /// one a session lock got is refused too, and the other way round.
    pub fn xact(&self) -> XactLocks {
        let core = self.core();
        XactLocks::new()
            .key_namespace(core.namespace.clone())
            .fencing_sequence_qualified(core.sequence_schema.clone(), core.sequence.clone())
            .token_floor(Arc::clone(&core.token_floor))
    }

    /// How many locks this client holds right now (each pins a connection).
    pub fn held_locks(&self) -> usize {
        self.core().pool.held()
    }

    /// The most connections this client uses for locks.
    pub fn max_connections(&self) -> u32 {
        self.core().pool.max_connections()
    }

    /// Unused connections in the pool right now.
    pub fn idle_connections(&self) -> usize {
        self.core().pool.idle()
    }
}

impl fmt::Debug for PgAdvisoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = self.core();
        f.debug_struct("PgAdvisoryLock")
            .field("server", &core.target)
            .field("max_connections", &core.pool.max_connections())
            .field("held_locks", &core.pool.held())
            .field("key_namespace", &core.namespace)
            .field("fencing_sequence", &core.sequence)
            .field("wait_strategy", &core.strategy)
            .finish()
    }
}

impl fmt::Display for PgAdvisoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL advisory locks at {}", self.core().target)
    }
}

#[async_trait]
impl LockBackend for PgAdvisoryLock {
    type Key = i64;
    type Lease = PgLease;

    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn max_ttl(&self) -> Duration {
        MAX_TTL
    }

    fn backoff(&self) -> Backoff {
        self.core.backoff
    }

    fn key(&self, name: &str) -> Result<i64, LockError> {
        Ok(self.core.key(name))
    }

    async fn try_lock(
        &self,
        key: &i64,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<PgLease>, LockError> {
        self.core.try_lock(*key, ttl, ctx).await
    }

    async fn subscribe(&self, key: &i64, ctx: &AttemptContext) -> Option<Wakeup> {
        self.core.subscribe(*key, ctx).await
    }
}

/// Our settings on top of the user's connect options.
fn configure(connect: PgConnectOptions, options: &PgLockOptions) -> PgConnectOptions {
    let connect = match (&options.application_name, connect.get_application_name()) {
        (Some(name), _) => connect.application_name(name),
        (None, Some(_)) => connect,
        (None, None) => connect.application_name("distlock"),
    };
    match options.keepalives {
        Some(keepalives) => connect.options([
            (
                "tcp_keepalives_idle",
                keepalives.idle.as_secs().max(1).to_string(),
            ),
            (
                "tcp_keepalives_interval",
                keepalives.interval.as_secs().max(1).to_string(),
            ),
            ("tcp_keepalives_count", keepalives.count.max(1).to_string()),
        ]),
        None => connect,
    }
}

/// `user@host:port/database`, never the password.
fn describe(connect: &PgConnectOptions) -> String {
    let host = match connect.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", connect.get_host(), connect.get_port()),
    };
    format!(
        "{}@{host}/{}",
        connect.get_username(),
        connect.get_database().unwrap_or_default()
    )
}

/// What a first connection learned about the server.
struct ServerInfo {
    /// The session's default `idle_session_timeout`, restored on every release.
    default_idle_timeout: String,
    /// Whether commits wait for the WAL flush by default.
    durable_commits: bool,
    /// The session's default `tcp_user_timeout`, restored on every release.
    default_user_timeout: String,
}

/// Connects once: the server must be reachable and new enough, and each
/// connection must keep a server session of its own (no transaction pooler).
async fn check_server(
    pool: &Arc<ConnPool>,
    options: &PgLockOptions,
    connect: &PgConnectOptions,
) -> Result<ServerInfo, LockError> {
    let until = Instant::now().checked_add(options.connect_timeout);
    let mut conn = match pool.acquire(until).await {
        Ok(conn) => conn,
        Err(AcquireError::Connect(err)) => return Err(err),
        Err(AcquireError::Exhausted(exhausted)) => return Err(LockError::connection(exhausted)),
    };
    // A simple query (no prepared statement), so that a transaction pooler
    // in front of the server is explained by the session check below, not
    // by a protocol error.
    let query = async {
        let row = sqlx::raw_sql(SERVER_INFO).fetch_one(conn.raw()).await?;
        Ok::<_, sqlx::Error>((
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        ))
    };
    let (version, idle_timeout, async_commits, user_timeout): (
        i32,
        Option<String>,
        bool,
        Option<String>,
    ) = tokio::time::timeout(options.connect_timeout, query)
        .await
        .map_err(|_| {
            LockError::connection(format!(
                "PostgreSQL did not answer within {:?}",
                options.connect_timeout
            ))
        })?
        .map_err(from_sqlx)?;
    match idle_timeout {
        Some(idle_timeout) if version >= MIN_SERVER_VERSION => {
            check_session_affinity(conn.raw(), connect, options.connect_timeout).await?;
            conn.recycle();
            Ok(ServerInfo {
                default_idle_timeout: idle_timeout,
                durable_commits: !async_commits,
                // 0: the operating system's default.
                default_user_timeout: user_timeout.unwrap_or_else(|| "0".to_owned()),
            })
        }
        _ => Err(LockError::backend(format!(
            "PostgreSQL 14 or later is required (this server is version {}): lock TTLs \
             are enforced by the server through idle_session_timeout, which older versions lack",
            show_version(version)
        ))),
    }
}

/// `server_version_num` as people write it: 130012 → "13.12", 90624 → "9.6.24".
fn show_version(num: i32) -> String {
    if num >= 100_000 {
        format!("{}.{}", num / 10_000, num % 10_000)
    } else {
        format!("{}.{}.{}", num / 10_000, num % 10_000 / 100, num % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use distlock_api::Lease as _;
    use sqlx::Executor as _;

    /// A client with a pool of one connection, on the test kit's database.
    async fn one_connection_client() -> PgAdvisoryLock {
        let url = tokio::task::spawn_blocking(distlock_testkit::database_url)
            .await
            .expect("task")
            .expect("a database");
        PgLockOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect")
    }

    /// PostgreSQL only logs a WARNING when `pg_advisory_unlock` finds no
    /// lock; the lease must turn that into `Lost` and close the connection.
    /// (A unit test: only here can a test reach the holding connection.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unlock_that_finds_no_lock_is_lost() {
        let locks = one_connection_client().await;
        let core = Arc::clone(locks.core());
        let key = core.key("unlock-false");
        let Attempt::Acquired { mut lease, .. } = core
            .try_lock(key, Duration::from_secs(30), &AttemptContext::once())
            .await
            .expect("attempt")
        else {
            panic!("the key is free");
        };
        assert_eq!(locks.held_locks(), 1);
        // Something on the session gives the lock up behind the lease's back.
        lease
            .connection_for_tests()
            .expect("held")
            .execute("SELECT pg_advisory_unlock_all()")
            .await
            .expect("unlock all");
        let err = lease.release().await.expect_err("the unlock found nothing");
        assert!(err.is_lost(), "{err}");
        assert!(lease.release().await.expect_err("still lost").is_lost());
        assert!(
            lease
                .extend(Duration::from_secs(1))
                .await
                .expect_err("lost")
                .is_lost()
        );
        assert_eq!(locks.held_locks(), 0);
        // The connection was closed, not pooled: the next lock gets a new one.
        assert_eq!(locks.idle_connections(), 0);
        let Attempt::Acquired { mut lease, .. } = core
            .try_lock(key, Duration::from_secs(30), &AttemptContext::once())
            .await
            .expect("attempt")
        else {
            panic!("the key is free");
        };
        lease.release().await.expect("ours");
        assert_eq!(locks.idle_connections(), 1);
    }

    /// The holding session's `tcp_user_timeout` follows the TTL (grant and
    /// extend), so TCP cannot end it sooner than the TTL; release puts the
    /// default back before the connection is pooled.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_ttl_sets_the_sessions_tcp_user_timeout_and_release_restores_it() {
        let locks = one_connection_client().await;
        let core = Arc::clone(locks.core());
        async fn show(conn: &mut sqlx::PgConnection) -> (String, String) {
            sqlx::query_as(
                "SELECT current_setting('tcp_user_timeout'), \
                        current_setting('idle_session_timeout')",
            )
            .fetch_one(conn)
            .await
            .expect("show")
        }
        let Attempt::Acquired { mut lease, .. } = core
            .try_lock(
                core.key("user-timeout"),
                Duration::from_secs(8),
                &AttemptContext::once(),
            )
            .await
            .expect("attempt")
        else {
            panic!("the key is free");
        };
        // tcp_user_timeout shows plain milliseconds (0 on a Unix socket:
        // the test server is reached over TCP).
        let held = lease.connection_for_tests().expect("held");
        assert_eq!(show(held).await, ("8000".to_owned(), "8s".to_owned()));
        lease
            .extend(Duration::from_millis(90_500))
            .await
            .expect("extend");
        let held = lease.connection_for_tests().expect("held");
        assert_eq!(show(held).await, ("90500".to_owned(), "90500ms".to_owned()));
        lease.release().await.expect("ours");
        let until = Instant::now().checked_add(Duration::from_secs(5));
        let Ok(mut pooled) = core.pool.acquire(until).await else {
            panic!("the pooled connection");
        };
        assert_eq!(show(pooled.raw()).await, ("0".to_owned(), "0".to_owned()));
        pooled.recycle();
    }

    /// On the client's own pool a connection released from a long TTL keeps
    /// its session settings and its marker, so the next lock with that TTL
    /// writes none; a short TTL's release restores the defaults.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_ttl_and_the_marker_stay_on_the_pooled_session() {
        let locks = one_connection_client().await;
        let core = Arc::clone(locks.core());
        async fn show(conn: &mut sqlx::PgConnection) -> (String, String, String) {
            sqlx::query_as(
                "SELECT current_setting('tcp_user_timeout'), \
                        current_setting('idle_session_timeout'), \
                        COALESCE(current_setting('distlock.held_key', true), '')",
            )
            .fetch_one(conn)
            .await
            .expect("show")
        }
        let key = core.key("kept-settings");
        let mut markers = Vec::new();
        for ttl in [30, 30, 8] {
            let ttl = Duration::from_secs(ttl);
            let Attempt::Acquired { mut lease, .. } = core
                .try_lock(key, ttl, &AttemptContext::once())
                .await
                .expect("attempt")
            else {
                panic!("the key is free");
            };
            lease.release().await.expect("ours");
            let until = Instant::now().checked_add(Duration::from_secs(5));
            let Ok(mut pooled) = core.pool.acquire(until).await else {
                panic!("the pooled connection");
            };
            let (user_timeout, idle_timeout, marker) = show(pooled.raw()).await;
            if ttl >= crate::pool::KEEP_SETTINGS_FROM {
                assert_eq!((user_timeout, idle_timeout), ("30000".into(), "30s".into()));
                assert!(!marker.is_empty());
                assert_eq!(pooled.settings.ttl, Some(ttl));
                assert_eq!(pooled.settings.marker, marker);
            } else {
                assert_eq!((user_timeout, idle_timeout), ("0".into(), "0".into()));
                assert_eq!(marker, "");
                assert_eq!(pooled.settings.ttl, None);
            }
            markers.push(marker);
            pooled.recycle();
        }
        // The connection kept its own marker across locks.
        assert_eq!(markers[0], markers[1]);
        assert_eq!(locks.idle_connections(), 1);
    }

    #[test]
    fn versions_read_as_people_write_them() {
        assert_eq!(show_version(130_012), "13.12");
        assert_eq!(show_version(150_020), "15.20");
        assert_eq!(show_version(90_624), "9.6.24");
    }
}
