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
//! | behind PgBouncer in *transaction* pooling | **no** (refused with [`LockError::InvalidConfig`]): a session lock would outlive the transaction on a server connection other clients then get | **yes** (before PgBouncer 1.21: with [`XactLocks::simple_queries`]) |
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
//! use distlock_postgres::xact;
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

use std::sync::Arc;
use std::time::Duration;

use distlock_api::{LockError, validate_name};
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{AssertSqlSafe, Connection as _, Row as _, Transaction};

use crate::error::{from_sqlx, pooled_session, pooler_statement_error, sqlstate};
use crate::sequence::TokenFloor;
use crate::sql::{HELD_MARKER, qualified};
use crate::{lock_key_in, sequence};

// Each statement is written once with parameters. By default they go as
// sqlx's (named, cached) prepared statements; with `simple_queries` they go
// as simple queries with the values written in as literals (keys are
// integers, the rest escaped), which needs no prepared statement and so works
// through transaction poolers that hand one client's named statements to
// other clients' sessions (PgBouncer before 1.21). One round trip either way.

// What the statements return instead of a token when a check fails: far
// below any token, so a sequence set back below zero is never mistaken for
// one (`i64::MIN` itself would be read as `numeric` in SQL text). A held
// lock is NULL, so no value the sequence hands out means "held".
const SHARED_SESSION: i64 = i64::MIN + 1;
const MISSING_SEQUENCE: i64 = i64::MIN + 2;

/// `CASE` branches shared by the checks (`$2`: the sequence): the session
/// already holds one of our *session* locks (taken through a transaction
/// pooler; an advisory lock is re-entrant within a session, so granting
/// here would grant twice), or the fencing sequence is missing.
fn checks() -> String {
    format!(
        "WHEN pg_catalog.current_setting('{HELD_MARKER}', true) <> '' THEN {SHARED_SESSION} \
         WHEN pg_catalog.to_regclass($2) IS NULL THEN {MISSING_SEQUENCE}"
    )
}

/// `$1` key, `$2` sequence → the fencing token, NULL when held, or a check's code.
fn try_lock_sql() -> String {
    format!(
        "SELECT CASE {checks} \
                WHEN pg_catalog.pg_try_advisory_xact_lock($1) \
                     THEN pg_catalog.nextval(pg_catalog.to_regclass($2)) \
                ELSE NULL END",
        checks = checks()
    )
}

/// `$1` lock_timeout (ms, text), `$2` sequence → (a check's code or 0, the
/// previous lock_timeout).
fn set_lock_timeout_sql() -> String {
    format!(
        "SELECT (CASE {checks} ELSE 0 END)::int8, p.prev, \
                pg_catalog.set_config('lock_timeout', $1, true) \
         FROM (SELECT pg_catalog.current_setting('lock_timeout') AS prev OFFSET 0) p",
        checks = checks()
    )
}

/// `$1` key, `$2` sequence, `$3` the lock_timeout to restore → the fencing token.
const LOCK: &str = "\
SELECT f.fence, pg_catalog.set_config('lock_timeout', $3, true) \
FROM (SELECT pg_catalog.nextval(pg_catalog.to_regclass($2)) AS fence \
      FROM (SELECT pg_catalog.pg_advisory_xact_lock($1) OFFSET 0) l OFFSET 0) f";

/// A statement parameter.
enum Value<'a> {
    Key(i64),
    Text(&'a str),
}

impl Value<'_> {
    /// The value as an SQL literal.
    fn literal(&self) -> String {
        match self {
            Value::Key(key) => format!("'{key}'::int8"),
            // Means the same whatever `standard_conforming_strings` is.
            Value::Text(text) => format!("E'{}'", text.replace('\\', "\\\\").replace('\'', "''")),
        }
    }
}

/// `sql` with each `$n` replaced by the literal of `values[n - 1]`, in one
/// pass (so a literal that contains `$2` is left alone).
fn inline(sql: &str, values: &[Value<'_>]) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c == '$'
            && let Some(&(_, d)) = chars.peek()
            && let Some(n) = d.to_digit(10)
            && let Some(value) = values.get((n as usize).wrapping_sub(1))
        {
            chars.next();
            out.push_str(&value.literal());
            continue;
        }
        out.push(c);
    }
    out
}

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
///
/// Each `XactLocks` remembers the highest fencing token it granted, shared
/// by its clones and, for one made by
/// [`PgAdvisoryLock::xact`](crate::PgAdvisoryLock::xact), with its client's
/// session locks. A grant whose token does not rise above it — the sequence
/// was set back (`ALTER SEQUENCE … RESTART`, `setval`) or turned around
/// after it was set up — is refused with [`LockError::Backend`]. So keep one
/// `XactLocks` per database (the free functions [`try_lock`] and [`lock`]
/// start from nothing on every call, and cannot notice a sequence set back).
#[derive(Debug, Clone)]
pub struct XactLocks {
    namespace: String,
    schema: String,
    sequence: String,
    simple_queries: bool,
    /// The highest token granted through this value, its clones, and the
    /// client it came from.
    floor: Arc<TokenFloor>,
}

impl Default for XactLocks {
    fn default() -> Self {
        XactLocks {
            namespace: String::new(),
            schema: "public".to_owned(),
            sequence: qualified("public", "distlock_fencing_token"),
            simple_queries: false,
            floor: Arc::default(),
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

    /// Shares `floor` (a session client's) instead of starting from nothing.
    pub(crate) fn token_floor(mut self, floor: Arc<TokenFloor>) -> Self {
        self.floor = floor;
        self
    }

    /// Sends the statements as simple queries, their values written in as
    /// literals, instead of sqlx's named prepared statements (the default).
    ///
    /// Needed behind a transaction pooler that does not keep track of
    /// prepared statements — PgBouncer before 1.21, or later without
    /// `max_prepared_statements` — where a client's next transaction may
    /// run on a server session that lacks its statements or holds another
    /// client's under the same name (sqlx numbers them per connection).
    /// Without it such a pooler shows as [`LockError::InvalidConfig`]
    /// naming this option. The cost: the server parses and plans each
    /// statement (measured on a loaded 2-core VM: the try-lock statement
    /// took 0.08–0.12 ms instead of 0.03 ms per call); still one round trip.
    pub fn simple_queries(mut self, simple: bool) -> Self {
        self.simple_queries = simple;
        self
    }

    /// Runs `sql` with `values`, as a prepared statement or inlined.
    async fn run(
        &self,
        conn: &mut PgConnection,
        sql: &str,
        values: &[Value<'_>],
    ) -> Result<PgRow, sqlx::Error> {
        if self.simple_queries {
            return sqlx::raw_sql(AssertSqlSafe(inline(sql, values)))
                .fetch_one(conn)
                .await;
        }
        let mut query = sqlx::query(AssertSqlSafe(sql.to_owned()));
        for value in values {
            query = match *value {
                Value::Key(key) => query.bind(key),
                Value::Text(text) => query.bind(text.to_owned()),
            };
        }
        query.fetch_one(conn).await
    }

    /// A statement's error as a [`LockError`], naming
    /// [`simple_queries`](Self::simple_queries) when a pooler broke sqlx's
    /// prepared statements.
    fn explain(&self, err: sqlx::Error) -> LockError {
        if pooler_statement_error(&err) {
            LockError::InvalidConfig(format!(
                "a transaction-lock statement failed ({err}): a transaction pooler hands \
                 sqlx's named prepared statements to other clients' server sessions; use \
                 XactLocks::simple_queries(true) behind it (or PgBouncer 1.21+ with \
                 max_prepared_statements)"
            ))
        } else {
            from_sqlx(err)
        }
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
    /// transaction stays usable) or the statement failed; also when the
    /// token did not rise above the highest this value granted (the
    /// sequence was set back or turned around): then the lock is *not*
    /// granted, but it stays taken until `tx` ends — roll `tx` back.
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
        let floor = self.floor.before_draw();
        let fence: Option<i64> = self
            .run(
                tx,
                &try_lock_sql(),
                &[Value::Key(key), Value::Text(&self.sequence)],
            )
            .await
            .and_then(|row| row.try_get(0))
            .map_err(|err| self.explain(err))?;
        match fence {
            Some(SHARED_SESSION) => Err(shared_session()),
            Some(MISSING_SEQUENCE) => Err(self.missing_sequence()),
            None => Ok(None),
            Some(fence) => match self.floor.admit(&self.sequence, floor, fence) {
                Ok(token) => Ok(Some(token)),
                Err(fell) => {
                    let freed = "it stays taken until the transaction ends: roll it back";
                    Err(fell.explain(tx, &self.sequence, freed).await)
                }
            },
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
    /// [`LockError::Timeout`] when the lock was not granted within `wait`
    /// (or within the session's `statement_timeout`, when that is shorter);
    /// otherwise as [`try_lock`](Self::try_lock), except that a token that
    /// did not rise leaves nothing taken: the savepoint is rolled back and
    /// `tx` stays usable.
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
        let timeout = distlock_api::backend::ttl_millis(wait).min(i32::MAX as u64);
        let mut savepoint = tx.begin().await.map_err(from_sqlx)?;
        let timeout = timeout.to_string();
        let set = self
            .run(
                &mut savepoint,
                &set_lock_timeout_sql(),
                &[Value::Text(&timeout), Value::Text(&self.sequence)],
            )
            .await
            .and_then(|row| Ok((row.try_get::<i64, _>(0)?, row.try_get::<String, _>(1)?)));
        let (check, previous) = match set {
            Ok(set) => set,
            Err(err) => {
                savepoint.rollback().await.map_err(from_sqlx)?;
                return Err(self.explain(err));
            }
        };
        if check != 0 {
            savepoint.rollback().await.map_err(from_sqlx)?;
            return Err(if check == SHARED_SESSION {
                shared_session()
            } else {
                self.missing_sequence()
            });
        }
        let floor = self.floor.before_draw();
        let locked = self
            .run(
                &mut savepoint,
                LOCK,
                &[
                    Value::Key(key),
                    Value::Text(&self.sequence),
                    Value::Text(&previous),
                ],
            )
            .await
            .and_then(|row| row.try_get::<i64, _>(0));
        match locked {
            Ok(fence) => match self.floor.admit(&self.sequence, floor, fence) {
                Ok(token) => {
                    // RELEASE SAVEPOINT: the lock passes to the enclosing transaction.
                    savepoint.commit().await.map_err(from_sqlx)?;
                    Ok(token)
                }
                Err(fell) => {
                    let freed = "its savepoint was rolled back, which freed it";
                    let err = fell.explain(&mut savepoint, &self.sequence, freed).await;
                    savepoint.rollback().await.map_err(from_sqlx)?;
                    Err(err)
                }
            },
            Err(err) => {
                savepoint.rollback().await.map_err(from_sqlx)?;
                // lock_timeout (our `wait`), or the session's shorter
                // statement_timeout: either way not granted in time.
                if matches!(sqlstate(&err).as_deref(), Some("55P03" | "57014")) {
                    Err(LockError::Timeout)
                } else {
                    Err(self.explain(err))
                }
            }
        }
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

/// The transaction runs on a server session that holds a distlock session
/// lock: one taken through the same transaction pooler.
fn shared_session() -> LockError {
    pooled_session(
        "a transaction lock was asked for on a server session that holds a session-level \
         distlock lock (taken by a PgAdvisoryLock through this pooler)",
        false,
    )
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
