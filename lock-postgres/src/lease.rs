//! A granted advisory lock: the connection that holds it, and the two
//! statements that keep it (extend) and give it back (release).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use lock_api::{Lease, LockError};

use crate::WaitStrategy;
use crate::error::{from_sqlx, query_timed_out, session_gone};
use crate::key::pg_locks_halves;
use crate::pool::Pinned;
use crate::shared::{Core, ttl_millis};
use crate::sql::EXTEND;

/// The lease lock-api's guard holds for a PostgreSQL advisory lock.
///
/// While the lock is held the lease owns the connection (session) that
/// holds it. A statement on that connection that is cancelled, times out or
/// fails in a way that leaves the session in doubt closes the connection —
/// which frees the lock — rather than guessing; dropping the lease without a
/// release does the same. Only a connection whose unlock answered `true`
/// (and whose `idle_session_timeout` was reset in the same statement) goes
/// back to the pool.
pub(crate) struct PgLease {
    core: Arc<Core>,
    key: i64,
    state: State,
}

enum State {
    /// Ours, on this connection.
    Held(Pinned),
    /// Given back cleanly.
    Released,
    /// Not ours any more (or in doubt, and its connection closed).
    Gone,
}

impl PgLease {
    pub(crate) fn new(core: Arc<Core>, key: i64, conn: Pinned) -> Self {
        PgLease {
            core,
            key,
            state: State::Held(conn),
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
    /// The connection is taken out of the lease for the duration of the
    /// statement: if the future is dropped, the connection is closed (the
    /// lock is freed) and later calls return [`LockError::Lost`].
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let mut conn = match std::mem::replace(&mut self.state, State::Gone) {
            State::Held(conn) => conn,
            State::Released => {
                self.state = State::Released;
                return Err(LockError::Lost);
            }
            State::Gone => return Err(LockError::Lost),
        };
        let (high, low) = pg_locks_halves(self.key);
        let query = sqlx::query_scalar::<_, bool>(EXTEND)
            .bind(high)
            .bind(low)
            .bind(ttl_millis(ttl));
        let timeout = self.core.query_timeout;
        match tokio::time::timeout(timeout, query.fetch_one(conn.raw())).await {
            Ok(Ok(true)) => {
                self.state = State::Held(conn);
                Ok(())
            }
            Ok(Ok(false)) => {
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
                    ?timeout,
                    "extend got no answer in time; closed the connection, giving the lock up"
                );
                Err(self.lost("extend timed out"))
            }
        }
    }

    /// `pg_advisory_unlock` on the holding connection, resetting its
    /// `idle_session_timeout` (and, with [`WaitStrategy::Notify`], announcing
    /// the release) in the same statement.
    ///
    /// # Cancel safety
    ///
    /// If the future is dropped mid-statement, the connection is closed,
    /// which frees the lock; a later call returns [`LockError::Lost`].
    async fn release(&mut self) -> Result<(), LockError> {
        let mut conn = match std::mem::replace(&mut self.state, State::Gone) {
            State::Held(conn) => conn,
            State::Released => {
                self.state = State::Released;
                return Ok(());
            }
            State::Gone => return Err(LockError::Lost),
        };
        let core = Arc::clone(&self.core);
        let timeout = core.query_timeout;
        let outcome = match core.strategy {
            WaitStrategy::Notify => {
                let query = sqlx::query_scalar::<_, bool>(core.statements.release_notify.clone())
                    .bind(self.key)
                    .bind(&core.default_idle_timeout)
                    .bind(&core.channel);
                tokio::time::timeout(timeout, query.fetch_one(conn.raw())).await
            }
            WaitStrategy::Poll => {
                let query = sqlx::query_scalar::<_, bool>(core.statements.release_plain.clone())
                    .bind(self.key)
                    .bind(&core.default_idle_timeout);
                tokio::time::timeout(timeout, query.fetch_one(conn.raw())).await
            }
        };
        match outcome {
            Ok(Ok(true)) => {
                conn.recycle();
                self.state = State::Released;
                core.released(self.key);
                Ok(())
            }
            // PostgreSQL only logs a WARNING for this; the lock was not ours.
            Ok(Ok(false)) => {
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
