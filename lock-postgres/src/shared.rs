//! One attempt to take a key, and the state every handle of one client
//! shares: the pool, the statements, the fencing sequence, the wake-ups.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use distlock_api::LockError;
use distlock_api::backend::{Attempt, AttemptContext, Backoff, Listener, WakeHub, Wakeup};
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::{
    from_sqlx, pooled_session, pooler_statement_error, query_timed_out, session_gone, sqlstate,
};
use crate::interest::Interest;
use crate::lease::PgLease;
use crate::pool::{AcquireError, ConnPool};
use crate::sequence::{Fell, TokenFloor};
use crate::sql::{SESSION_CHANGED, SESSION_SHARED, Statements};
use crate::{WaitStrategy, lock_key_in};

/// The largest TTL: `idle_session_timeout` is an `int` of milliseconds.
pub(crate) const MAX_TTL: Duration = Duration::from_millis(i32::MAX as u64);

/// A TTL in whole milliseconds, rounded up (a lease must never be shorter
/// on the server than asked), as the text `set_config` takes.
pub(crate) fn ttl_millis(ttl: Duration) -> String {
    distlock_api::backend::ttl_millis(ttl)
        .min(i32::MAX as u64)
        .to_string()
}

/// SQLSTATE of a lock wait that ran into `lock_timeout`.
const LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE of a statement cancelled (`statement_timeout`, or an operator).
const QUERY_CANCELED: &str = "57014";
/// SQLSTATE of a lock wait PostgreSQL ended to break a deadlock.
const DEADLOCK_DETECTED: &str = "40P01";
/// How much the server's end of a blocking wait is apart from the client's.
const LOCK_TIMEOUT_MARGIN: Duration = Duration::from_millis(10);

/// Leave to wait in the server's lock queue (`pg_advisory_lock`), which
/// pins a pooled connection for the wait: a client lets at most half its
/// pool (at least one connection) wait so, and further waiters wait for
/// `NOTIFY` wake-ups, holding no connection. Dropped when the attempt ends.
pub(crate) struct BlockingSlot<'a>(&'a AtomicU32);

impl<'a> BlockingSlot<'a> {
    fn take(core: &'a Core) -> Option<Self> {
        let limit = (core.pool.max_connections() / 2).max(1);
        core.blocking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| BlockingSlot(&core.blocking))
    }
}

impl Drop for BlockingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Shared by all clones of a `PgAdvisoryLock` and by the leases it grants.
pub(crate) struct Core {
    pub(crate) pool: Arc<ConnPool>,
    pub(crate) statements: Statements,
    /// `"schema"."name"` of the fencing sequence.
    pub(crate) sequence: String,
    /// The schema it lives in (unquoted).
    pub(crate) sequence_schema: String,
    pub(crate) sequence_ready: OnceCell<()>,
    /// The highest fencing token this client granted: later ones must rise
    /// above it. Shared with the [`XactLocks`](crate::xact::XactLocks) made
    /// from this client.
    pub(crate) token_floor: Arc<TokenFloor>,
    pub(crate) namespace: String,
    pub(crate) strategy: WaitStrategy,
    pub(crate) channel: String,
    pub(crate) backoff: Backoff,
    pub(crate) pool_timeout: Duration,
    pub(crate) query_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    /// The `idle_session_timeout` a fresh session has, restored on release.
    pub(crate) default_idle_timeout: String,
    pub(crate) hub: WakeHub,
    /// `user@host:port/database`, for Debug and Display (never a password).
    pub(crate) target: String,
    /// Stops its task when the last handle goes.
    pub(crate) listener: Option<Listener>,
    /// Tells releasers that this client's waiters wait (with the listener).
    pub(crate) interest: Option<Interest>,
    /// Attempts waiting in the server's lock queue now ([`BlockingSlot`]).
    pub(crate) blocking: AtomicU32,
    /// The server cancelled a queued wait: wait with NOTIFY only.
    pub(crate) queue_off: AtomicBool,
}

impl Core {
    pub(crate) fn key(&self, name: &str) -> i64 {
        lock_key_in(&self.namespace, name)
    }

    /// One attempt to take `key` for `ttl` (see
    /// [`LockBackend::try_lock`](distlock_api::backend::LockBackend::try_lock)):
    /// waits for a pooled connection until `ctx`'s deadline (or
    /// `pool_timeout` for a single attempt), then fails with
    /// [`PoolExhausted`](crate::PoolExhausted); the statement itself is
    /// bounded by `query_timeout` and by the deadline.
    ///
    /// Cancel safe: from the moment a connection leaves the pool it sits in
    /// a `Conn`, which closes it when dropped — so a lock the server granted
    /// to an attempt that was cancelled mid-statement dies with its session.
    pub(crate) async fn try_lock(
        self: &Arc<Self>,
        key: i64,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<PgLease>, LockError> {
        let ttl_ms = ttl_millis(ttl);
        self.ensure_sequence().await?;
        let until = ctx.wait_until(self.pool_timeout);
        // A stale idle connection (the server restarted or ended the session)
        // fails its first statement; try the next one, then a new one.
        let mut tries_left = self.pool.max_connections() as usize + 1;
        let mut interest_checked = false;
        loop {
            tries_left = tries_left.saturating_sub(1);
            let mut conn = self.connection(until).await?;
            // Settings are written only when they change (see Statements),
            // the marker with the TTL.
            let set_ttl = (conn.settings.ttl != Some(ttl)).then_some(ttl_ms.as_str());
            let marker = set_ttl.map(|_| {
                if !self.pool.keeps_settings() {
                    key.to_string()
                } else if conn.settings.marker.is_empty() {
                    // A value of this connection's own, kept with it.
                    format!("c{:x}-{:016x}", std::process::id(), rand::random::<u64>())
                } else {
                    conn.settings.marker.clone()
                }
            });
            let expected = conn.settings.marker.clone();
            let (bound, by_deadline) = ctx.bound(self.query_timeout);
            // A waiter waits in the server's lock queue, if a connection
            // can be spared for it (see `BlockingSlot`).
            let blocking = if ctx.will_wait()
                && self.strategy == WaitStrategy::Queue
                && !self.queue_off.load(Ordering::Relaxed)
            {
                BlockingSlot::take(self)
            } else {
                None
            };
            let statement = match blocking {
                Some(_) => self.statements.acquire_wait.clone(),
                None => self.statements.acquire.clone(),
            };
            let query = sqlx::query_as::<_, (Option<i64>, i32)>(statement)
                .bind(key)
                .bind(set_ttl)
                .bind(i64::from(conn.backend_pid.unwrap_or(0)))
                .bind(expected)
                .bind(marker.as_deref());
            // A blocking statement waits at most a quarter of the TTL: the
            // guard's validity counts from the attempt's start, so a grant
            // leaves it at least three quarters of its TTL. At the caller's
            // deadline (if it comes first) the client cuts the wait, which
            // closes the connection, the server's lock_timeout a little later
            // being only the backstop; otherwise the server gives up a
            // little before the client, and the attempt starts over.
            let mut cut_by_client = by_deadline;
            let query = match blocking {
                Some(_) => {
                    let left = bound.saturating_duration_since(Instant::now());
                    let window = ttl / 4;
                    let server = if by_deadline && left <= window {
                        left + LOCK_TIMEOUT_MARGIN
                    } else {
                        cut_by_client = false;
                        left.min(window).saturating_sub(LOCK_TIMEOUT_MARGIN)
                    };
                    query.bind(server.as_millis().max(1).to_string())
                }
                None => query,
            };
            let floor = self.token_floor.before_draw();
            let outcome = tokio::time::timeout_at(bound, query.fetch_one(conn.raw())).await;
            drop(blocking);
            return match outcome {
                // `conn` is dropped, so closed: its server session is not ours alone.
                Ok(Ok((Some(SESSION_CHANGED), _))) => Err(pooled_session(
                    "the session under a pooled connection changed since its last statement",
                    false,
                )),
                Ok(Ok((Some(SESSION_SHARED), _))) => Err(pooled_session(
                    "the session under a lock connection carries another connection's lock marker",
                    false,
                )),
                Ok(Ok((Some(fence), pid))) => {
                    let fencing_token = match self.token_floor.admit(&self.sequence, floor, fence) {
                        Ok(token) => token,
                        Err(fell) => {
                            // Closing the session frees the lock it was just granted.
                            drop(conn);
                            return Err(self.token_fell(fell).await);
                        }
                    };
                    conn.backend_pid = Some(pid);
                    if let Some(marker) = marker {
                        conn.settings.ttl = Some(ttl);
                        conn.settings.marker = marker;
                    }
                    Ok(Attempt::Acquired {
                        lease: PgLease::new(Arc::clone(self), key, pid, conn.pin()),
                        fencing_token,
                    })
                }
                Ok(Ok((None, pid))) => {
                    conn.backend_pid = Some(pid);
                    conn.recycle();
                    // A waiter tells releasers that it waits, then tries
                    // once more: the holder may have released meanwhile.
                    if let Some(interest) = &self.interest
                        && ctx.will_wait()
                        && !interest_checked
                    {
                        interest_checked = true;
                        let (bound, _) = ctx.bound(self.query_timeout);
                        match tokio::time::timeout_at(bound, interest.ensure(key)).await {
                            Ok(Ok(true)) => continue,
                            Ok(Ok(false)) => {}
                            Ok(Err(err)) => tracing::debug!(
                                error = %err,
                                "interest not registered; waiting on the backoff schedule"
                            ),
                            Err(_) => tracing::debug!(
                                "interest not registered in time; waiting on the backoff schedule"
                            ),
                        }
                    }
                    Ok(Attempt::Held { retry_after: None })
                }
                // The lock_timeout of a blocking wait ran out. A grant can
                // race the timeout (the statement fails, the session holds
                // the lock): unlocked if so, or the connection closed.
                Ok(Err(err)) if sqlstate(&err).as_deref() == Some(LOCK_NOT_AVAILABLE) => {
                    if cut_by_client {
                        return Err(LockError::Timeout);
                    }
                    self.unlock_if_held(conn, key).await;
                    Ok(Attempt::Held {
                        retry_after: Some(Duration::ZERO),
                    })
                }
                // statement_timeout (the role's or the server's) cut the
                // wait: this server will not let a statement wait, so this
                // client waits with NOTIFY from now on. `conn` is dropped,
                // so closed.
                Ok(Err(err)) if sqlstate(&err).as_deref() == Some(QUERY_CANCELED) => {
                    if !self.queue_off.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            error = %err,
                            "a lock wait in the server's queue was cancelled (statement_timeout?); \
                             this client waits with LISTEN/NOTIFY from now on"
                        );
                    }
                    Ok(Attempt::Held {
                        retry_after: Some(Duration::ZERO),
                    })
                }
                // Two sessions waiting for each other's keys: PostgreSQL
                // broke the cycle by failing this wait. `conn` is dropped,
                // so closed; the waiter goes on with backoff.
                Ok(Err(err)) if sqlstate(&err).as_deref() == Some(DEADLOCK_DETECTED) => {
                    tracing::debug!(lock.key = key, "blocking wait ended by deadlock detection");
                    Ok(Attempt::Held { retry_after: None })
                }
                Ok(Err(err)) if pooler_statement_error(&err) => Err(pooled_session(
                    &format!("pg_try_advisory_lock failed ({err})"),
                    false,
                )),
                Ok(Err(err)) if session_gone(&err) && conn.reused && tries_left > 0 => {
                    tracing::debug!(error = %err, "stale pooled connection, trying another");
                    continue;
                }
                // `conn` is dropped, so closed: a lock taken by a statement
                // that then failed goes with the session.
                Ok(Err(err)) => Err(self.explain(err)),
                // `conn` is dropped, so closed: a lock the statement may
                // have taken goes with the session.
                Err(_) if by_deadline => Err(LockError::Timeout),
                Err(_) => Err(query_timed_out("pg_try_advisory_lock", self.query_timeout)),
            };
        }
    }

    /// After a blocking wait's `lock_timeout`: frees `key` if the session
    /// got it all the same (a grant racing the timeout), then pools the
    /// connection; closes it if that cannot be made sure of.
    async fn unlock_if_held(&self, mut conn: crate::pool::Conn, key: i64) {
        let (high, low) = crate::key::pg_locks_halves(key);
        let unlock = sqlx::query(
            "SELECT pg_catalog.pg_advisory_unlock($1) FROM pg_catalog.pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() AND granted \
               AND objsubid = 1 AND classid::int8 = $2 AND objid::int8 = $3",
        )
        .bind(key)
        .bind(high)
        .bind(low)
        .fetch_all(conn.raw());
        if let Ok(Ok(_)) = tokio::time::timeout(self.query_timeout, unlock).await {
            conn.recycle();
        }
    }

    /// A pool connection, or the pool-exhaustion error after `until`.
    async fn connection(
        self: &Arc<Self>,
        until: Option<Instant>,
    ) -> Result<crate::pool::Conn, LockError> {
        match self.pool.acquire(until).await {
            Ok(conn) => Ok(conn),
            Err(AcquireError::Exhausted(exhausted)) => Err(LockError::connection(exhausted)),
            Err(AcquireError::Connect(err)) => Err(err),
        }
    }

    fn explain(&self, err: sqlx::Error) -> LockError {
        if sqlstate(&err).as_deref() == Some("42501") {
            return LockError::backend(format!(
                "permission denied on the fencing sequence {seq} ({err}); grant it with: \
                 GRANT USAGE ON SEQUENCE {seq} TO <role>",
                seq = self.sequence
            ));
        }
        from_sqlx(err)
    }

    /// The error for a grant whose token did not rise (its session already
    /// closed): [`Fell::explain`] over a pool connection, within bounds.
    async fn token_fell(self: &Arc<Self>, fell: Fell) -> LockError {
        const FREED: &str = "its session was closed, which freed the lock";
        let until = Instant::now().checked_add(self.pool_timeout);
        let Ok(mut conn) = self.connection(until).await else {
            return fell.error(&self.sequence, FREED);
        };
        let explain = fell.explain(conn.raw(), &self.sequence, FREED);
        // `conn` is dropped, so closed: it is not worth knowing whether the
        // look left it healthy.
        tokio::time::timeout(self.query_timeout * 2, explain)
            .await
            .unwrap_or_else(|_| fell.error(&self.sequence, FREED))
    }

    /// Makes sure the fencing sequence exists and is usable, once per client.
    async fn ensure_sequence(self: &Arc<Self>) -> Result<(), LockError> {
        if self.sequence_ready.initialized() {
            return Ok(());
        }
        self.sequence_ready
            .get_or_try_init(|| async {
                let until = Instant::now().checked_add(self.pool_timeout);
                let mut conn = self.connection(until).await?;
                let check =
                    crate::sequence::ensure(conn.raw(), &self.sequence, &self.sequence_schema);
                match tokio::time::timeout(self.query_timeout * 2, check).await {
                    Ok(Ok(())) => {
                        conn.recycle();
                        Ok(())
                    }
                    Ok(Err(err)) => Err(err),
                    Err(_) => Err(query_timed_out(
                        "setting up the fencing sequence",
                        self.query_timeout * 2,
                    )),
                }
            })
            .await
            .map(|_| ())
    }

    /// Registers for a wake-up on `key`, starting the listener on first
    /// use and waiting for its `LISTEN` (within the connect timeout and
    /// the caller's deadline).
    pub(crate) async fn subscribe(&self, key: i64, ctx: &AttemptContext) -> Option<Wakeup> {
        let listener = self.listener.as_ref()?;
        let wakeup = self.hub.subscribe(&key.to_string());
        let (until, _) = ctx.bound(self.connect_timeout);
        listener
            .ready(until.saturating_duration_since(Instant::now()))
            .await;
        Some(wakeup)
    }

    /// Tells local waiters that `key` may be free (a hint).
    pub(crate) fn released(&self, key: i64) {
        if !self.hub.is_empty() {
            self.hub.notify(&key.to_string());
        }
    }
}
