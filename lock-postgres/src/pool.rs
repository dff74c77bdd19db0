//! The connections locks are taken on: a small pool of our own (or an
//! application's sqlx pool), where a connection that may hold a lock is
//! closed rather than put back.
//!
//! Why our own pool by default: sqlx's `Pool` pings every connection it gets
//! back (and, by default, every one it hands out) — a round trip per lock
//! cycle that would double its cost. We know exactly when a connection is
//! clean (its unlock just answered `true`), so ours puts it back without a ping;
//! a stale idle connection (server restarted) is found by the next statement
//! on it, which the caller retries on another connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use distlock_api::LockError;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, Postgres};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection as _, Row as _};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};
use tokio::time::Instant;

use crate::PoolExhausted;
use crate::error::{from_sqlx, pooled_session};

/// Where lock connections come from.
pub(crate) struct ConnPool {
    kind: Kind,
    /// Connections currently pinned by held locks.
    held: AtomicUsize,
    connect_timeout: Duration,
}

enum Kind {
    Own(Box<OwnPool>),
    Sqlx(PgPool),
}

struct OwnPool {
    options: PgConnectOptions,
    max: u32,
    permits: Arc<Semaphore>,
    /// Clean connections, most recently used at the back.
    idle: Mutex<VecDeque<IdleConn>>,
    connect_timeout: Duration,
    idle_timeout: Option<Duration>,
}

struct IdleConn {
    conn: PgConnection,
    since: Instant,
    backend_pid: Option<i32>,
    settings: Settings,
}

/// The TTL at and above which a released connection of our own pool keeps
/// its session settings: the pool then closes it once idle for half its
/// TTL (at least 5 s), which a busy client rarely reaches. Below, a
/// release restores the defaults, so short TTLs cost no reconnects.
pub(crate) const KEEP_SETTINGS_FROM: Duration = Duration::from_secs(10);

/// What a lock connection's server session has been set to by our
/// statements, so that a statement writes a setting only when it changes
/// (see [`crate::sql::Statements`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// The TTL its `idle_session_timeout` and `tcp_user_timeout` are set
    /// to (`None`: the defaults, or not known for sure).
    pub(crate) ttl: Option<Duration>,
    /// The `distlock.held_key` marker the session has (empty: none).
    pub(crate) marker: String,
}

impl Settings {
    /// Whether an idle connection must be closed rather than used: the
    /// server ends a session idle for its `idle_session_timeout`, and half
    /// of it leaves room for the time the answers took to arrive.
    fn expired(&self, idle: Duration) -> bool {
        self.ttl.is_some_and(|ttl| idle >= ttl / 2)
    }
}

/// Why no connection could be had.
pub(crate) enum AcquireError {
    /// Every connection is in use and none came free in time.
    Exhausted(PoolExhausted),
    /// A new connection could not be opened.
    Connect(LockError),
}

impl ConnPool {
    pub(crate) fn own(
        options: PgConnectOptions,
        max: u32,
        connect_timeout: Duration,
        idle_timeout: Option<Duration>,
    ) -> Arc<Self> {
        Arc::new(ConnPool {
            kind: Kind::Own(Box::new(OwnPool {
                options,
                max,
                permits: Arc::new(Semaphore::new(max as usize)),
                idle: Mutex::new(VecDeque::new()),
                connect_timeout,
                idle_timeout,
            })),
            held: AtomicUsize::new(0),
            connect_timeout,
        })
    }

    pub(crate) fn sqlx(pool: PgPool, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(ConnPool {
            kind: Kind::Sqlx(pool),
            held: AtomicUsize::new(0),
            connect_timeout,
        })
    }

    /// Whether released connections may keep their session settings: only
    /// in our own pool (an application's pool gets its connections back as
    /// they were).
    pub(crate) fn keeps_settings(&self) -> bool {
        matches!(self.kind, Kind::Own(_))
    }

    /// The pool's size.
    pub(crate) fn max_connections(&self) -> u32 {
        match &self.kind {
            Kind::Own(own) => own.max,
            Kind::Sqlx(pool) => pool.options().get_max_connections(),
        }
    }

    /// Connections pinned by held locks right now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Idle connections (own pool) right now.
    pub(crate) fn idle(&self) -> usize {
        match &self.kind {
            Kind::Own(own) => own.lock_idle().len(),
            Kind::Sqlx(pool) => pool.num_idle(),
        }
    }

    pub(crate) fn exhausted(&self) -> PoolExhausted {
        PoolExhausted {
            max_connections: self.max_connections(),
            held_by_locks: self.held(),
        }
    }

    /// A connection, waiting for one to come free until `until` (`None`:
    /// as long as it takes).
    ///
    /// Cancel safe: a connection is only ever handed out inside a [`Conn`],
    /// which closes it when dropped.
    pub(crate) async fn acquire(
        self: &Arc<Self>,
        until: Option<Instant>,
    ) -> Result<Conn, AcquireError> {
        match &self.kind {
            Kind::Own(own) => {
                let permit = match Arc::clone(&own.permits).try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(TryAcquireError::NoPermits) => {
                        let wait = Arc::clone(&own.permits).acquire_owned();
                        let permit = match until {
                            Some(until) => tokio::time::timeout_at(until, wait)
                                .await
                                .map_err(|_| AcquireError::Exhausted(self.exhausted()))?,
                            None => wait.await,
                        };
                        // The semaphore is never closed.
                        permit.map_err(|_| AcquireError::Exhausted(self.exhausted()))?
                    }
                    Err(TryAcquireError::Closed) => {
                        return Err(AcquireError::Exhausted(self.exhausted()));
                    }
                };
                if let Some(idle) = own.pop_idle() {
                    let mut conn = self.wrap(Inner::Own(idle.conn, permit), true);
                    conn.backend_pid = idle.backend_pid;
                    conn.settings = idle.settings;
                    return Ok(conn);
                }
                let connect = own.options.connect();
                let conn = match tokio::time::timeout(own.connect_timeout, connect).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(err)) => return Err(AcquireError::Connect(LockError::connection(err))),
                    Err(_) => {
                        return Err(AcquireError::Connect(LockError::connection(format!(
                            "could not connect to PostgreSQL within {:?}",
                            own.connect_timeout
                        ))));
                    }
                };
                Ok(self.wrap(Inner::Own(conn, permit), false))
            }
            Kind::Sqlx(pool) => {
                if let Some(conn) = pool.try_acquire() {
                    return Ok(self.wrap(Inner::Sqlx(conn), true));
                }
                // With room to open a connection, opening it may take the
                // connect timeout even when the caller's wait is shorter.
                let room = pool.size() < self.max_connections();
                let until = match (until, room) {
                    (Some(until), true) => Some(until.max(Instant::now() + self.connect_timeout)),
                    (until, _) => until,
                };
                let outcome = match until {
                    Some(until) => tokio::time::timeout_at(until, pool.acquire()).await,
                    None => Ok(pool.acquire().await),
                };
                let starved = || pool.num_idle() == 0 && pool.size() >= self.max_connections();
                match outcome {
                    Ok(Ok(conn)) => Ok(self.wrap(Inner::Sqlx(conn), true)),
                    Ok(Err(sqlx::Error::PoolTimedOut)) | Err(_) if starved() => {
                        Err(AcquireError::Exhausted(self.exhausted()))
                    }
                    Ok(Err(err)) => Err(AcquireError::Connect(LockError::connection(err))),
                    Err(_) => Err(AcquireError::Connect(LockError::connection(
                        "timed out waiting for a connection from the sqlx pool",
                    ))),
                }
            }
        }
    }

    fn wrap(self: &Arc<Self>, inner: Inner, reused: bool) -> Conn {
        Conn {
            inner: Some(inner),
            reused,
            backend_pid: None,
            settings: Settings::default(),
            pool: Arc::clone(self),
        }
    }
}

impl OwnPool {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, VecDeque<IdleConn>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection; drops those idle too long
    /// (for the pool, or for the TTL their session kept).
    fn pop_idle(&self) -> Option<IdleConn> {
        let mut idle = self.lock_idle();
        if let Some(limit) = self.idle_timeout {
            while idle.front().is_some_and(|c| c.since.elapsed() > limit) {
                // Dropping closes the socket; the server ends the session.
                idle.pop_front();
            }
        }
        while let Some(conn) = idle.pop_back() {
            if !conn.settings.expired(conn.since.elapsed()) {
                return Some(conn);
            }
        }
        None
    }

    fn push_idle(&self, conn: PgConnection, backend_pid: Option<i32>, settings: Settings) {
        self.lock_idle().push_back(IdleConn {
            conn,
            since: Instant::now(),
            backend_pid,
            settings,
        });
    }
}

enum Inner {
    Own(PgConnection, OwnedSemaphorePermit),
    Sqlx(PoolConnection<Postgres>),
}

/// One connection out of the pool. Dropping it **closes** it: whatever
/// session state it had (an advisory lock, a short `idle_session_timeout`)
/// ends with the session. Only [`Conn::recycle`] puts it back.
pub(crate) struct Conn {
    inner: Option<Inner>,
    /// It was used before (so it may have gone stale while idle).
    pub(crate) reused: bool,
    /// The server session's `pg_backend_pid()`, once a statement reported
    /// it (own pool only: it stays with the idle connection). A later
    /// statement on another pid means a pooler moved the connection.
    pub(crate) backend_pid: Option<i32>,
    /// What our statements set its session to.
    pub(crate) settings: Settings,
    pool: Arc<ConnPool>,
}

impl Conn {
    pub(crate) fn raw(&mut self) -> &mut PgConnection {
        match self.inner.as_mut() {
            Some(Inner::Own(conn, _)) => conn,
            Some(Inner::Sqlx(conn)) => conn,
            None => unreachable!("a Conn is only emptied by recycle or drop, which consume it"),
        }
    }

    /// Puts a connection known to be clean (no advisory lock, default
    /// settings, no statement in flight) back into the pool.
    pub(crate) fn recycle(mut self) {
        match self.inner.take() {
            Some(Inner::Own(conn, permit)) => {
                if let Kind::Own(own) = &self.pool.kind {
                    own.push_idle(conn, self.backend_pid, std::mem::take(&mut self.settings));
                }
                // After the push, so a waiter woken by the permit finds the connection.
                drop(permit);
            }
            // sqlx's own return path (it pings the connection first).
            Some(Inner::Sqlx(conn)) => drop(conn),
            None => {}
        }
    }

    /// Marks this connection as pinned by a held lock until the returned
    /// [`Pinned`] is dropped or recycled.
    pub(crate) fn pin(self) -> Pinned {
        self.pool.held.fetch_add(1, Ordering::Relaxed);
        let count = HeldCount(Arc::clone(&self.pool));
        Pinned {
            conn: self,
            _count: count,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        match self.inner.take() {
            // Closing the socket ends the session on the server, and its locks with it.
            Some(Inner::Own(conn, permit)) => {
                drop(conn);
                drop(permit);
            }
            Some(Inner::Sqlx(conn)) => drop(conn.detach()),
            None => {}
        }
    }
}

/// A connection that holds a lock. Dropping it closes the connection.
pub(crate) struct Pinned {
    conn: Conn,
    _count: HeldCount,
}

impl Pinned {
    pub(crate) fn raw(&mut self) -> &mut PgConnection {
        self.conn.raw()
    }

    /// What our statements set its session to.
    pub(crate) fn settings(&mut self) -> &mut Settings {
        &mut self.conn.settings
    }

    /// The lock is gone and the connection clean again: back to the pool.
    pub(crate) fn recycle(self) {
        let Pinned { conn, _count } = self;
        conn.recycle();
    }
}

/// Counts a pinned connection while it lives.
struct HeldCount(Arc<ConnPool>);

impl Drop for HeldCount {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The session setting the affinity check marks a session with.
const AFFINITY_MARK: &str = "distlock.affinity";
/// How many times the check looks from each side.
const AFFINITY_ROUNDS: usize = 3;

/// Checks, before the client grants its first lock, that a connection
/// keeps one server session of its own across transactions — which a
/// transaction (or statement) pooler does not give.
///
/// `conn` marks its session with a value of its own (a session-level
/// setting) and reads it back in later transactions, while a second
/// connection, opened from `connect` with `conn` still open, reads the
/// mark and the server pid on its side, three times each. PostgreSQL
/// reached directly or through session pooling passes: the session stays,
/// and the second connection has a session of its own. A transaction
/// pooler fails it: a pooler that resets sessions (`server_reset_query_always`)
/// wipes the mark, one that closes them (`server_lifetime = 0`) changes the
/// pid, and one that does neither hands the first connection's session to
/// the second (PgBouncer reuses the session used last). Only a busy pooler
/// that happens to route every one of these transactions apart can slip
/// through; then the checks in each lock statement are the backstop.
///
/// Simple queries only (no prepared statements), so that a pooler fails
/// the check and not the protocol.
pub(crate) async fn check_session_affinity(
    conn: &mut PgConnection,
    connect: &PgConnectOptions,
    timeout: Duration,
) -> Result<(), LockError> {
    static CHECKS: AtomicU64 = AtomicU64::new(0);
    let mark = format!(
        "{}-{}-{}",
        std::process::id(),
        CHECKS.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    );
    let set = format!(
        "SELECT pg_catalog.pg_backend_pid(), \
                pg_catalog.set_config('{AFFINITY_MARK}', '{mark}', false)"
    );
    let read = format!(
        "SELECT pg_catalog.pg_backend_pid(), \
                pg_catalog.current_setting('{AFFINITY_MARK}', true)"
    );
    let check = async {
        let (pid, _) = session_row(conn, &set).await?;
        let mut other = connect.connect().await.map_err(LockError::connection)?;
        for _ in 0..AFFINITY_ROUNDS {
            let (other_pid, other_mark) = session_row(&mut other, &read).await?;
            if other_pid == pid || other_mark.as_deref() == Some(mark.as_str()) {
                return Err(pooled_session(
                    "a second connection ran on the first one's server session",
                    false,
                ));
            }
            let (again_pid, again_mark) = session_row(conn, &read).await?;
            if again_pid != pid || again_mark.as_deref() != Some(mark.as_str()) {
                return Err(pooled_session(
                    "the server session behind a connection was reset or replaced between \
                     two of its transactions",
                    false,
                ));
            }
        }
        let _ = other.close().await;
        Ok(())
    };
    match tokio::time::timeout(timeout, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(LockError::connection(format!(
            "PostgreSQL did not answer the session check within {timeout:?}"
        ))),
    }
}

/// One row of (`pg_backend_pid()`, a setting) by a simple query.
async fn session_row(
    conn: &mut PgConnection,
    query: &str,
) -> Result<(i32, Option<String>), LockError> {
    let row = sqlx::raw_sql(AssertSqlSafe(query.to_owned()))
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    let pid = row.try_get(0).map_err(from_sqlx)?;
    let setting = row.try_get(1).map_err(from_sqlx)?;
    Ok((pid, setting))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kept TTL's session is closed before the server's
    /// `idle_session_timeout` could end it under the pool: at half the TTL.
    #[test]
    fn a_session_idle_for_half_its_ttl_is_not_reused() {
        let kept = Settings {
            ttl: Some(Duration::from_secs(30)),
            marker: "c1".into(),
        };
        assert!(!kept.expired(Duration::from_secs(14)));
        assert!(kept.expired(Duration::from_secs(15)));
        assert!(kept.expired(Duration::from_secs(29)));
        let defaults = Settings::default();
        assert!(!defaults.expired(Duration::from_secs(3600)));
    }
}
