//! Telling releasers that someone waits, so that a release announces itself
//! with `NOTIFY` only when it is worth it.
//!
//! A `NOTIFY` costs the server about as much as the lock and the unlock
//! together (it writes a commit record and signals every listening
//! session), and most releases have nobody waiting. So a client whose
//! waiters wait for a key holds a *shared* advisory lock on the key's
//! **interest key** — the same 64 bits as the lock's key, but in
//! PostgreSQL's other advisory key space, the one of two `int4`s (see
//! [`interest_key`]) — on a session of its own. A release, in the statement
//! that unlocks, tries to take the interest key exclusively for the length
//! of that statement (`pg_try_advisory_xact_lock`): that fails exactly when
//! some client holds the interest, and only then does the release notify.
//!
//! The interest is taken by the first attempt that finds the key held and
//! will wait ([`AttemptContext::will_wait`]), so an uncontended `acquire`
//! costs nothing here; that attempt then tries once more, because the
//! holder may have released between the two.
//!
//! Why no wake-up is lost: a waiter waits only after an attempt that came
//! after its client's interest in the key was granted (and after its
//! `LISTEN` was in place). A release that unlocks after that attempt checks
//! for interest later still, sees it, and notifies. (If another local
//! waiter's registration granted the interest while this waiter's attempt
//! ran, that waiter's own second attempt comes after the grant; the local
//! queue hands its turn on when it leaves.) A spurious `NOTIFY` — interest
//! just given up, or an unrelated application using the `int4` key space —
//! only wakes a waiter to try once more.
//!
//! Interest is given up lazily: a sweep every [`LINGER`] unlocks the keys
//! no local waiter waits for any more, so a key waited for again and again
//! (a hand-off between two clients) costs no statement per wait. All of
//! this speeds up waking and nothing else: if the interest session cannot
//! be had or is lost, waiters fall back on their backoff schedule, and no
//! lock is ever granted or refused because of it.
//!
//! [`AttemptContext::will_wait`]: distlock_api::backend::AttemptContext::will_wait

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use distlock_api::LockError;
use distlock_api::backend::WakeHub;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};

use crate::error::{from_sqlx, query_timed_out};

/// How often interest in keys nobody here waits for any more is given up.
const LINGER: Duration = Duration::from_millis(250);

/// The interest key of a lock key: its high and low 32 bits, as the two
/// `int4` arguments of the advisory-lock functions. A different lock from
/// the `int8` key with the same bits (PostgreSQL keeps the two key spaces
/// apart), so a waiter's interest never blocks the lock itself.
pub(crate) fn interest_key(key: i64) -> (i32, i32) {
    // Truncations intended: the two halves of the 64 bits.
    ((key >> 32) as i32, key as i32)
}

/// One client's interest session.
pub(crate) struct Interest {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    connect_timeout: Duration,
    query_timeout: Duration,
    /// Who waits for what (keys in decimal); woken all at once when a lost
    /// interest session is replaced, as releases in between were silent.
    hub: WakeHub,
    session: tokio::sync::Mutex<Session>,
}

#[derive(Default)]
struct Session {
    conn: Option<PgConnection>,
    /// The keys whose interest `conn` holds (each exactly once; empty
    /// without a connection).
    held: HashSet<i64>,
    /// The sweep runs (it stops when nothing is held).
    sweeping: bool,
    /// A session that held interest was lost since.
    lost: bool,
    /// A statement was under way when its caller was cancelled: what the
    /// session holds is not known, so it is closed at the next use.
    in_doubt: bool,
}

impl Session {
    /// Drops the connection, which ends all the interest it held.
    fn close(&mut self) {
        self.conn = None;
        self.lost |= !self.held.is_empty();
        self.held.clear();
    }
}

impl Interest {
    pub(crate) fn new(
        options: PgConnectOptions,
        connect_timeout: Duration,
        query_timeout: Duration,
        hub: WakeHub,
    ) -> Self {
        Interest {
            inner: Arc::new(Inner {
                options,
                connect_timeout,
                query_timeout,
                hub,
                session: tokio::sync::Mutex::new(Session::default()),
            }),
        }
    }

    /// Makes sure the server knows that this client waits for `key`.
    /// `Ok(true)` when the interest was taken now (the caller then tries
    /// the key once more), `Ok(false)` when it was held already.
    ///
    /// Cancel safe: a cancelled statement leaves the session in doubt, and
    /// the next call closes it.
    pub(crate) async fn ensure(&self, key: i64) -> Result<bool, LockError> {
        let inner = &self.inner;
        let mut session = inner.session.lock().await;
        inner.settle_doubt(&mut session);
        if session.held.contains(&key) {
            return Ok(false);
        }
        if session.conn.is_none() {
            let connect = PgConnection::connect_with(&inner.options);
            let conn = match tokio::time::timeout(inner.connect_timeout, connect).await {
                Ok(conn) => conn.map_err(from_sqlx)?,
                Err(_) => {
                    return Err(LockError::connection(format!(
                        "the interest session was not connected within {:?}",
                        inner.connect_timeout
                    )));
                }
            };
            session.conn = Some(conn);
        }
        // Blocks only behind a release's check, which lasts one statement.
        inner
            .run(&mut session, "pg_advisory_lock_shared", &[key])
            .await?;
        session.held.insert(key);
        if std::mem::take(&mut session.lost) {
            inner.hub.notify_all();
        }
        if !std::mem::replace(&mut session.sweeping, true) {
            tokio::spawn(Arc::clone(inner).sweep());
        }
        Ok(true)
    }
}

impl Inner {
    /// Closes a session a cancelled statement left in doubt.
    fn settle_doubt(&self, session: &mut Session) {
        if std::mem::take(&mut session.in_doubt) {
            session.close();
        }
    }

    /// `function(high, low)` for each key, in one statement. On failure the
    /// session is closed, which ends all it held.
    async fn run(
        &self,
        session: &mut Session,
        function: &str,
        keys: &[i64],
    ) -> Result<(), LockError> {
        let Some(conn) = session.conn.as_mut() else {
            return Ok(());
        };
        let (high, low): (Vec<i32>, Vec<i32>) = keys.iter().map(|key| interest_key(*key)).unzip();
        let sql = format!(
            "SELECT pg_catalog.{function}(h, l) \
             FROM ROWS FROM (pg_catalog.unnest($1::int4[]), pg_catalog.unnest($2::int4[])) AS k(h, l)"
        );
        session.in_doubt = true;
        let statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(high)
            .bind(low)
            .fetch_all(&mut *conn);
        let outcome = tokio::time::timeout(self.query_timeout, statement).await;
        session.in_doubt = false;
        let err = match outcome {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(err)) => from_sqlx(err),
            Err(_) => query_timed_out(function, self.query_timeout),
        };
        session.close();
        Err(err)
    }

    /// Every [`LINGER`], gives up the interest in keys no local waiter
    /// waits for any more; ends when none is held.
    async fn sweep(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LINGER).await;
            let mut session = self.session.lock().await;
            self.settle_doubt(&mut session);
            let idle: Vec<i64> = session
                .held
                .iter()
                .filter(|key| !self.hub.is_waiting(&key.to_string()))
                .copied()
                .collect();
            if !idle.is_empty() {
                match self
                    .run(&mut session, "pg_advisory_unlock_shared", &idle)
                    .await
                {
                    Ok(()) => {
                        for key in &idle {
                            session.held.remove(key);
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "giving up interest failed"),
                }
            }
            if session.held.is_empty() {
                session.sweeping = false;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interest_keys_are_the_two_halves() {
        assert_eq!(interest_key(0), (0, 0));
        assert_eq!(interest_key(-1), (-1, -1));
        assert_eq!(interest_key(1 << 32 | 7), (1, 7));
        assert_eq!(interest_key(i64::MIN), (i32::MIN, 0));
    }
}
