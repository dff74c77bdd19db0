//! One attempt to take a key, and the state every handle of one client
//! shares: the pool, the statements, the fencing sequence, the wake-ups.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use distlock_api::{Attempt, Backoff, LockError, WakeHub, Wakeup};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tokio_util::sync::DropGuard;

use crate::error::{
    from_sqlx, pooled_session, pooler_statement_error, query_timed_out, session_gone, sqlstate,
};
use crate::lease::PgLease;
use crate::listener::Listener;
use crate::pool::{AcquireError, ConnPool};
use crate::sequence::{Fell, TokenFloor};
use crate::sql::{SESSION_CHANGED, SESSION_SHARED, Statements};
use crate::{WaitStrategy, lock_key_in};

/// The largest TTL: `idle_session_timeout` is an `int` of milliseconds.
pub(crate) const MAX_TTL: Duration = Duration::from_millis(i32::MAX as u64);

/// A TTL in whole milliseconds, rounded up (a lease must never be shorter
/// on the server than asked), as the text `set_config` takes.
pub(crate) fn ttl_millis(ttl: Duration) -> String {
    let millis = ttl.as_nanos().div_ceil(1_000_000);
    millis.min(i32::MAX as u128).to_string()
}

tokio::task_local! {
    /// Set by `acquire` around distlock-api's waiting loop, so each attempt
    /// knows how long it may wait for a free connection.
    static WAIT: WaitScope;
}

/// What an attempt inside `acquire` needs to know about the wait it serves.
pub(crate) struct WaitScope {
    /// When the whole `acquire` gives up (`None`: never).
    deadline: Option<Instant>,
    /// Set while an attempt waits for a pool connection, so a `Timeout`
    /// that cuts that wait short is reported as pool exhaustion.
    waiting_for_pool: Cell<bool>,
}

/// Runs an `acquire` future with its deadline known to the attempts it
/// makes; turns a `Timeout` that hit while waiting for a connection into
/// the pool-exhaustion error.
pub(crate) async fn with_wait<F>(
    core: &Core,
    wait: Duration,
    acquire: F,
) -> Result<distlock_api::LockGuard, LockError>
where
    F: Future<Output = Result<distlock_api::LockGuard, LockError>>,
{
    let scope = WaitScope {
        deadline: Instant::now().checked_add(wait),
        waiting_for_pool: Cell::new(false),
    };
    let mut run = std::pin::pin!(WAIT.scope(scope, acquire));
    let outcome = (&mut run).await;
    match outcome {
        Err(LockError::Timeout)
            if run
                .as_mut()
                .take_value()
                .is_some_and(|scope| scope.waiting_for_pool.get()) =>
        {
            Err(LockError::connection(core.pool.exhausted()))
        }
        other => other,
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
    pub(crate) listener: Option<Listener>,
    /// Stops the listener task when the last handle goes.
    pub(crate) _stop: DropGuard,
}

impl Core {
    pub(crate) fn key(&self, name: &str) -> i64 {
        lock_key_in(&self.namespace, name)
    }

    /// One attempt to take `key` for `ttl` (see [`distlock_api::LockBackend::try_lock`]).
    ///
    /// Cancel safe: from the moment a connection leaves the pool it sits in
    /// a `Conn`, which closes it when dropped — so a lock the server granted
    /// to an attempt that was cancelled mid-statement dies with its session.
    pub(crate) async fn try_lock(
        self: &Arc<Self>,
        key: i64,
        ttl: Duration,
    ) -> Result<Attempt<PgLease>, LockError> {
        let ttl_ms = ttl_millis(ttl);
        self.ensure_sequence().await?;
        let until = match WAIT.try_with(|scope| scope.deadline) {
            Ok(deadline) => deadline,
            Err(_) => Instant::now().checked_add(self.pool_timeout),
        };
        // A stale idle connection (the server restarted or ended the session)
        // fails its first statement; try the next one, then a new one.
        let mut tries_left = self.pool.max_connections() as usize + 1;
        loop {
            tries_left -= 1;
            let mut conn = self.connection(until).await?;
            let query = sqlx::query_as::<_, (Option<i64>, i32)>(self.statements.acquire.clone())
                .bind(key)
                .bind(&ttl_ms)
                .bind(i64::from(conn.backend_pid.unwrap_or(0)));
            let floor = self.token_floor.before_draw();
            let outcome =
                tokio::time::timeout(self.query_timeout, query.fetch_one(conn.raw())).await;
            return match outcome {
                // `conn` is dropped, so closed: its server session is not ours alone.
                Ok(Ok((Some(SESSION_CHANGED), _))) => Err(pooled_session(
                    "the session under a pooled connection changed since its last statement",
                    false,
                )),
                Ok(Ok((Some(SESSION_SHARED), _))) => Err(pooled_session(
                    "a fresh lock connection's session already holds a lock",
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
                    Ok(Attempt::Acquired {
                        lease: PgLease::new(Arc::clone(self), key, pid, conn.pin()),
                        fencing_token,
                    })
                }
                Ok(Ok((None, pid))) => {
                    conn.backend_pid = Some(pid);
                    conn.recycle();
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
                Err(_) => Err(query_timed_out("pg_try_advisory_lock", self.query_timeout)),
            };
        }
    }

    /// A pool connection, or the pool-exhaustion error after `until`.
    async fn connection(
        self: &Arc<Self>,
        until: Option<Instant>,
    ) -> Result<crate::pool::Conn, LockError> {
        let _ = WAIT.try_with(|scope| scope.waiting_for_pool.set(true));
        let outcome = self.pool.acquire(until).await;
        let _ = WAIT.try_with(|scope| scope.waiting_for_pool.set(false));
        match outcome {
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

    /// Registers for a wake-up on `key`, starting the listener on first use.
    pub(crate) async fn subscribe(&self, key: i64) -> Option<Wakeup> {
        let listener = self.listener.as_ref()?;
        let wakeup = self.hub.subscribe(&key.to_string());
        listener.ensure_listening(self.connect_timeout).await;
        Some(wakeup)
    }

    /// Tells local waiters that `key` may be free (a hint).
    pub(crate) fn released(&self, key: i64) {
        if !self.hub.is_empty() {
            self.hub.notify(&key.to_string());
        }
    }
}
