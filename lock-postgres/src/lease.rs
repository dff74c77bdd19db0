//! A granted advisory lock: the connection that holds it, and the two
//! statements that keep it (extend) and give it back (release).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::{Lease, LockError};
use tokio::sync::oneshot;

use crate::WaitStrategy;
use crate::error::{
    from_sqlx, pooled_session, pooler_statement_error, query_timed_out, session_gone,
};
use crate::interest::interest_key;
use crate::key::pg_locks_halves;
use crate::pool::{KEEP_SETTINGS_FROM, Pinned, Settings};
use crate::shared::{Core, ttl_millis};
use crate::sql::EXTEND;

/// The lease distlock-api's guard holds for a PostgreSQL advisory lock.
///
/// While the lock is held the lease owns the connection (session) that
/// holds it. A statement on that connection that is cancelled, times out or
/// fails in a way that leaves the session in doubt closes the connection —
/// which frees the lock — rather than guessing; dropping the lease without a
/// release does the same. Only a connection whose unlock answered `true`
/// goes back to the pool (on the client's own pool keeping a TTL of 10 s
/// or more as its session's setting, so the next lock need not write it).
pub struct PgLease {
    core: Arc<Core>,
    key: i64,
    /// `pg_backend_pid()` of the session that took the lock: extend and
    /// release check that they run on it.
    backend_pid: i32,
    state: State,
}

/// What an extend's task hands back: the connection and the statement's outcome.
type Extended = (
    Pinned,
    Result<Result<Option<bool>, sqlx::Error>, tokio::time::error::Elapsed>,
);

enum State {
    /// Ours, on this connection.
    Held(Pinned),
    /// An extend statement runs in a task of its own, which hands the
    /// connection back. Cancelling the caller's `extend` therefore does not
    /// cancel the statement: doing so would close the connection and free
    /// the lock while the guard, whose `valid_until` a cancelled extend
    /// leaves as it was, still counts on it.
    Extending(oneshot::Receiver<Extended>),
    /// Given back cleanly.
    Released,
    /// Not ours any more (or in doubt, and its connection closed).
    Gone,
}

impl PgLease {
    pub(crate) fn new(core: Arc<Core>, key: i64, backend_pid: i32, conn: Pinned) -> Self {
        PgLease {
            core,
            key,
            backend_pid,
            state: State::Held(conn),
        }
    }

    /// The lease found itself behind a transaction pooler: the lock may be
    /// stranded on the session that took it, which this lease cannot reach.
    fn pooled(&self, what: &str, stranded: bool) -> LockError {
        tracing::warn!(
            lock.key = self.key,
            lock.backend_pid = self.backend_pid,
            "postgres lease is behind a transaction pooler; giving it up"
        );
        pooled_session(what, stranded)
    }

    /// An extend found the lease behind a transaction pooler: logs why (the
    /// pooler explanation) and reports the lock [`LockError::Lost`].
    fn stranded(&self, what: &str) -> LockError {
        let why = self.pooled(what, true);
        tracing::warn!(lock.key = self.key, error = %why, "postgres lease stranded");
        self.lost("stranded on another server session")
    }

    /// Waits for an extend statement in flight (one whose caller was
    /// cancelled, or the current one) and applies its outcome; `Ok` when
    /// none is in flight.
    ///
    /// Cancel safe: the receiver stays in the state until the answer came.
    async fn finish_extend(&mut self) -> Result<(), LockError> {
        let State::Extending(answer) = &mut self.state else {
            return Ok(());
        };
        let answer = answer.await;
        self.state = State::Gone;
        match answer {
            Ok((conn, outcome)) => self.extended(conn, outcome),
            Err(_) => Err(self.lost("the extend task ended without an answer")),
        }
    }

    /// What an extend statement's outcome means for the lease.
    fn extended(
        &mut self,
        conn: Pinned,
        outcome: Result<Result<Option<bool>, sqlx::Error>, tokio::time::error::Elapsed>,
    ) -> Result<(), LockError> {
        match outcome {
            Ok(Ok(Some(true))) => {
                self.state = State::Held(conn);
                Ok(())
            }
            // Stranded: the lock sits on (or was reset with) a session this
            // lease cannot reach — lost to it, not a transient failure that
            // renewal should retry while the guard still counts on it.
            Ok(Ok(None)) => {
                drop(conn);
                Err(self.stranded("extend ran on another server session than the lock"))
            }
            Ok(Err(err)) if pooler_statement_error(&err) => {
                drop(conn);
                Err(self.stranded(&format!("extend failed ({err})")))
            }
            Ok(Ok(Some(false))) => {
                drop(conn);
                Err(self.lost("the session no longer holds the key"))
            }
            Ok(Err(err)) if session_gone(&err) => {
                drop(conn);
                Err(self.lost("the holding connection is gone"))
            }
            // The session is alive, so the lock is still held; only the
            // statement failed.
            Ok(Err(err)) => {
                self.state = State::Held(conn);
                Err(from_sqlx(err))
            }
            Err(_) => {
                drop(conn);
                tracing::warn!(
                    lock.key = self.key,
                    timeout = ?self.core.query_timeout,
                    "extend got no answer in time; closed the connection, giving the lock up"
                );
                Err(self.lost("extend timed out"))
            }
        }
    }

    fn lost(&self, why: &str) -> LockError {
        tracing::debug!(lock.key = self.key, why, "postgres lease lost");
        self.core.released(self.key);
        LockError::Lost
    }
}

#[async_trait]
impl Lease for PgLease {
    /// Restarts the server-side TTL (`idle_session_timeout`) after checking
    /// in `pg_locks` that this session still holds the key.
    ///
    /// # Cancel safety
    ///
    /// The statement runs in a task of its own (bounded by the query
    /// timeout): if the future is dropped, the statement still completes
    /// and the connection comes back to the lease, so the lock stays held
    /// — as the guard assumes — and the next `extend` or `release` picks up
    /// the outcome first.
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        self.finish_extend().await?;
        let mut conn = match std::mem::replace(&mut self.state, State::Gone) {
            State::Held(conn) => conn,
            State::Released => {
                self.state = State::Released;
                return Err(LockError::Lost);
            }
            State::Gone | State::Extending(_) => return Err(LockError::Lost),
        };
        // The session's TTL is the extend's from now on, or in doubt: the
        // release then restores the defaults.
        conn.settings().ttl = None;
        let (high, low) = pg_locks_halves(self.key);
        let query = sqlx::query_scalar::<_, Option<bool>>(EXTEND)
            .bind(high)
            .bind(low)
            .bind(ttl_millis(ttl))
            .bind(self.backend_pid);
        let timeout = self.core.query_timeout;
        let (done, outcome) = oneshot::channel();
        tokio::spawn(async move {
            let outcome = tokio::time::timeout(timeout, query.fetch_one(conn.raw())).await;
            // Nobody to hand it to (the lease was dropped): closing the
            // connection frees the lock.
            let _ = done.send((conn, outcome));
        });
        self.state = State::Extending(outcome);
        self.finish_extend().await
    }

    /// `pg_advisory_unlock` on the holding connection, in the same
    /// statement resetting its session settings where they are not kept,
    /// and — unless [`WaitStrategy::Poll`], when some client waits for the
    /// key — announcing the release.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped mid-statement, the connection is closed,
    /// which frees the lock; a later call returns [`LockError::Lost`].
    async fn release(&mut self) -> Result<(), LockError> {
        // An extend whose caller was cancelled still runs: its answer first.
        // A failed statement leaves the lock held; a lost one ends here.
        match self.finish_extend().await {
            Ok(()) => {}
            Err(err @ (LockError::Lost | LockError::InvalidConfig(_))) => return Err(err),
            Err(_) => {}
        }
        let mut conn = match std::mem::replace(&mut self.state, State::Gone) {
            State::Held(conn) => conn,
            State::Released => {
                self.state = State::Released;
                return Ok(());
            }
            State::Gone | State::Extending(_) => return Err(LockError::Lost),
        };
        let core = Arc::clone(&self.core);
        let timeout = core.query_timeout;
        // On our own pool a session keeps a long TTL's settings (the pool
        // closes it before they could end it idle); otherwise the defaults
        // come back.
        let keep = core.pool.keeps_settings()
            && conn
                .settings()
                .ttl
                .is_some_and(|ttl| ttl >= KEEP_SETTINGS_FROM);
        let channel = match core.strategy {
            WaitStrategy::Poll => None,
            _ => Some(core.channel.as_str()),
        };
        let (high, low) = interest_key(self.key);
        let query = sqlx::query_scalar::<_, Option<bool>>(core.statements.release.clone())
            .bind(self.key)
            .bind((!keep).then_some(core.default_idle_timeout.as_str()))
            .bind(self.backend_pid)
            .bind(channel)
            .bind(high)
            .bind(low);
        let outcome = tokio::time::timeout(timeout, query.fetch_one(conn.raw())).await;
        if !keep {
            *conn.settings() = Settings::default();
        }
        match outcome {
            Ok(Ok(None)) => {
                drop(conn);
                Err(self.pooled("release ran on another server session than the lock", true))
            }
            Ok(Err(err)) if pooler_statement_error(&err) => {
                drop(conn);
                Err(self.pooled(&format!("release failed ({err})"), true))
            }
            Ok(Ok(Some(true))) => {
                conn.recycle();
                self.state = State::Released;
                core.released(self.key);
                Ok(())
            }
            // PostgreSQL only logs a WARNING for this; the lock was not ours.
            Ok(Ok(Some(false))) => {
                drop(conn);
                Err(self.lost("pg_advisory_unlock returned false"))
            }
            Ok(Err(err)) if session_gone(&err) => {
                drop(conn);
                Err(self.lost("the holding connection is gone"))
            }
            // Closing the connection frees the lock all the same.
            Ok(Err(err)) => {
                drop(conn);
                core.released(self.key);
                Err(from_sqlx(err))
            }
            Err(_) => {
                drop(conn);
                core.released(self.key);
                Err(query_timed_out("pg_advisory_unlock", timeout))
            }
        }
    }
}

#[cfg(test)]
impl PgLease {
    /// The holding connection, for tests that tamper with the session.
    pub(crate) fn connection_for_tests(&mut self) -> Option<&mut sqlx::PgConnection> {
        match &mut self.state {
            State::Held(conn) => Some(conn.raw()),
            _ => None,
        }
    }
}
