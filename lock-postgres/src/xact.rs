//! Transaction-scoped advisory locks (`pg_advisory_xact_lock`), taken inside
//! a caller's transaction and released by its commit or rollback.
//!
//! # When to use which
//!
//! | | [`PgAdvisoryLock`](crate::PgAdvisoryLock) (session locks) | [`XactLocks`] (transaction locks) |
//! |---|---|---|
//! | held until | `release`, drop, TTL, or the session ends | the transaction ends |
//! | connection | one of its own per held lock | the caller's transaction's |
//! | TTL, `extend`, renewal | yes (server-enforced via `idle_session_timeout`) | no — bound the transaction instead (`statement_timeout`, `idle_in_transaction_session_timeout`) |
//! | behind PgBouncer in *transaction* pooling | **no**: a session lock would outlive the transaction on a server connection other clients then get | **yes** |
//! | lock spans work outside the database | yes | only while the transaction stays open |
//!
//! Use the transaction form when the protected work *is* a database
//! transaction (book the ticket: `SELECT … FOR UPDATE` would also do, but
//! the advisory lock also covers rows that do not exist yet), and always
//! behind a transaction-pooling PgBouncer. Both forms share one key space
//! and one fencing sequence, so a session lock and a transaction lock on the
//! same name exclude each other.
//!
//! ```no_run
//! use lock_postgres::xact;
//!
//! # async fn book(pool: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! let mut tx = pool.begin().await?;
//! match xact::try_lock(&mut tx, "ticket:42").await? {
//!     Some(fence) => {
//!         sqlx::query("UPDATE tickets SET holder = $1, fence = $2 WHERE id = 42 AND fence < $2")
//!             .bind("alice")
//!             .bind(fence as i64)
//!             .execute(&mut *tx)
//!             .await?;
//!         tx.commit().await?; // releases the lock
//!     }
//!     None => tx.rollback().await?, // someone else is booking it
//! }
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use lock_api::{LockError, validate_name};
use sqlx::postgres::{PgConnection, Postgres};
use sqlx::{Connection as _, Transaction};

use crate::error::{from_sqlx, sqlstate};
use crate::sql::qualified;
use crate::{lock_key_in, sequence};

const TRY_LOCK: &str = "\
SELECT CASE WHEN pg_catalog.to_regclass($2) IS NULL THEN -1 \
            WHEN pg_catalog.pg_try_advisory_xact_lock($1) \
                 THEN pg_catalog.nextval(pg_catalog.to_regclass($2)) \
            ELSE 0 END";

const SET_LOCK_TIMEOUT: &str = "\
SELECT pg_catalog.to_regclass($2) IS NOT NULL, p.prev, \
       pg_catalog.set_config('lock_timeout', $1, true) \
FROM (SELECT pg_catalog.current_setting('lock_timeout') AS prev OFFSET 0) p";

const LOCK: &str = "\
SELECT f.fence, pg_catalog.set_config('lock_timeout', $3, true) \
FROM (SELECT pg_catalog.nextval(pg_catalog.to_regclass($2)) AS fence \
      FROM (SELECT pg_catalog.pg_advisory_xact_lock($1) OFFSET 0) l OFFSET 0) f";

/// Transaction-scoped locks with a key namespace and a fencing sequence.
///
/// The defaults (no namespace, `public.distlock_fencing_token`) match
/// [`PgLockOptions`](crate::PgLockOptions)'s, so keys and tokens agree with
/// session locks; [`PgAdvisoryLock::xact`](crate::PgAdvisoryLock::xact)
/// gives one configured like its client.
///
/// Unlike [`PgAdvisoryLock`](crate::PgAdvisoryLock), these calls never
/// create the sequence (a transaction-pooled connection should not run
/// DDL): run [`create_sequence`](Self::create_sequence) once, or
/// `CREATE SEQUENCE public.distlock_fencing_token` in a migration.
#[derive(Debug, Clone)]
pub struct XactLocks {
    namespace: String,
    schema: String,
    sequence: String,
}

impl Default for XactLocks {
    fn default() -> Self {
        XactLocks {
            namespace: String::new(),
            schema: "public".to_owned(),
            sequence: qualified("public", "distlock_fencing_token"),
        }
    }
}

impl XactLocks {
    /// No key namespace, tokens from `public.distlock_fencing_token`.
    pub fn new() -> Self {
        Self::default()
    }

    /// A prefix hashed in front of every name (see [`lock_key_in`]).
    pub fn key_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The sequence fencing tokens come from.
    pub fn fencing_sequence(mut self, schema: impl Into<String>, name: impl Into<String>) -> Self {
        self.schema = schema.into();
        self.sequence = qualified(&self.schema, &name.into());
        self
    }

    pub(crate) fn fencing_sequence_qualified(mut self, schema: String, sequence: String) -> Self {
        self.schema = schema;
        self.sequence = sequence;
        self
    }

    /// The key `name` maps to.
    pub fn key(&self, name: &str) -> i64 {
        lock_key_in(&self.namespace, name)
    }

    /// Creates the fencing sequence if it is missing and checks that this
    /// role may use it. Run it once (at start-up, outside transaction pooling).
    ///
    /// # Errors
    ///
    /// [`LockError::Backend`] saying what to create or grant when the role
    /// may not.
    pub async fn create_sequence(&self, conn: &mut PgConnection) -> Result<(), LockError> {
        sequence::ensure(conn, &self.sequence, &self.schema).await
    }

    /// Takes `name` for the rest of `tx` if it is free: `Some(fencing
    /// token)`, or `None` when another session or transaction holds it.
    /// Never waits, never aborts the transaction on a held lock.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidName`] for a name that breaks the naming rules;
    /// [`LockError::Backend`] when the fencing sequence is missing (the
    /// transaction stays usable) or the statement failed.
    pub async fn try_lock(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
    ) -> Result<Option<u64>, LockError> {
        validate_name(name)?;
        self.try_lock_key(tx, self.key(name)).await
    }

    /// [`try_lock`](Self::try_lock) by raw key.
    ///
    /// # Errors
    ///
    /// As [`try_lock`](Self::try_lock).
    pub async fn try_lock_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        key: i64,
    ) -> Result<Option<u64>, LockError> {
        let fence: i64 = sqlx::query_scalar(TRY_LOCK)
            .bind(key)
            .bind(&self.sequence)
            .fetch_one(&mut **tx)
            .await
            .map_err(from_sqlx)?;
        match fence {
            -1 => Err(self.missing_sequence()),
            0 => Ok(None),
            fence => Ok(Some(self.token(fence)?)),
        }
    }

    /// Takes `name` for the rest of `tx`, waiting up to `wait` on the server
    /// (`pg_advisory_xact_lock` under a `lock_timeout`). Returns the fencing
    /// token.
    ///
    /// The wait runs in a savepoint, so a `Timeout` leaves `tx` usable, and
    /// `lock_timeout` is back to its previous value afterwards either way.
    ///
    /// # Errors
    ///
    /// [`LockError::Timeout`] when the lock was not granted within `wait`;
    /// otherwise as [`try_lock`](Self::try_lock).
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe in the sense of leaving `tx` as it was: dropped
    /// mid-wait, the statement keeps waiting on the server and the savepoint
    /// is rolled back on the transaction's next use.
    pub async fn lock(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        name: &str,
        wait: Duration,
    ) -> Result<u64, LockError> {
        validate_name(name)?;
        self.lock_key(tx, self.key(name), wait).await
    }

    /// [`lock`](Self::lock) by raw key.
    ///
    /// # Errors
    ///
    /// As [`lock`](Self::lock).
    pub async fn lock_key(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        key: i64,
        wait: Duration,
    ) -> Result<u64, LockError> {
        if wait.is_zero() {
            return self.try_lock_key(tx, key).await?.ok_or(LockError::Timeout);
        }
        // lock_timeout is an int of milliseconds; 0 would mean "no limit".
        let timeout = u128::min(wait.as_nanos().div_ceil(1_000_000), i32::MAX as u128);
        let mut savepoint = tx.begin().await.map_err(from_sqlx)?;
        let (exists, previous, _): (bool, String, Option<String>) =
            sqlx::query_as(SET_LOCK_TIMEOUT)
                .bind(timeout.to_string())
                .bind(&self.sequence)
                .fetch_one(&mut *savepoint)
                .await
                .map_err(from_sqlx)?;
        if !exists {
            savepoint.rollback().await.map_err(from_sqlx)?;
            return Err(self.missing_sequence());
        }
        let locked = sqlx::query_as::<_, (i64, Option<String>)>(LOCK)
            .bind(key)
            .bind(&self.sequence)
            .bind(previous)
            .fetch_one(&mut *savepoint)
            .await;
        match locked {
            Ok((fence, _)) => {
                // RELEASE SAVEPOINT: the lock passes to the enclosing transaction.
                savepoint.commit().await.map_err(from_sqlx)?;
                self.token(fence)
            }
            Err(err) => {
                savepoint.rollback().await.map_err(from_sqlx)?;
                if sqlstate(&err).as_deref() == Some("55P03") {
                    Err(LockError::Timeout)
                } else {
                    Err(from_sqlx(err))
                }
            }
        }
    }

    fn token(&self, fence: i64) -> Result<u64, LockError> {
        u64::try_from(fence).map_err(|_| {
            LockError::backend(format!(
                "the fencing sequence {} returned {fence}; it must count up from 1",
                self.sequence
            ))
        })
    }

    fn missing_sequence(&self) -> LockError {
        LockError::backend(format!(
            "the fencing-token sequence {seq} does not exist; create it once (outside \
             transaction pooling) with XactLocks::create_sequence, by connecting a \
             PgAdvisoryLock, or with: CREATE SEQUENCE {seq}",
            seq = self.sequence
        ))
    }
}

/// [`XactLocks::try_lock`] with the defaults: no key namespace, tokens from
/// `public.distlock_fencing_token`.
///
/// # Errors
///
/// As [`XactLocks::try_lock`].
pub async fn try_lock(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
) -> Result<Option<u64>, LockError> {
    XactLocks::default().try_lock(tx, name).await
}

/// [`XactLocks::lock`] with the defaults.
///
/// # Errors
///
/// As [`XactLocks::lock`].
pub async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    name: &str,
    wait: Duration,
) -> Result<u64, LockError> {
    XactLocks::default().lock(tx, name, wait).await
}
