//! The fencing-token sequence: created on first use when missing, checked
//! once, and explained clearly when the role may not create or use it; and
//! the floor every later token must rise above.
//!
//! A fencing token is only worth something if no holder can ever be handed
//! a token at or below one handed out before. The checks refuse what makes
//! a sequence fall or repeat: a per-session `CACHE`, a negative `INCREMENT`,
//! `CYCLE`. Someone can still change the sequence later (`ALTER SEQUENCE …
//! RESTART`, `setval`, `INCREMENT -1`), so each client also keeps the
//! highest token it has seen ([`TokenFloor`]) and refuses a grant whose token
//! does not rise above it.

use std::sync::atomic::{AtomicU64, Ordering};

use distlock_api::LockError;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Executor as _};

use crate::error::{from_sqlx, sqlstate};
use crate::sql::quote_ident;

/// Makes sure `sequence` (`"schema"."name"`, in `schema`) exists, can be
/// used by the current role, and hands out increasing values across sessions.
pub(crate) async fn ensure(
    conn: &mut PgConnection,
    sequence: &str,
    schema: &str,
) -> Result<(), LockError> {
    let (exists, role): (bool, String) =
        sqlx::query_as("SELECT pg_catalog.to_regclass($1) IS NOT NULL, current_user::text")
            .bind(sequence)
            .fetch_one(&mut *conn)
            .await
            .map_err(from_sqlx)?;
    if !exists {
        // Checked first: CREATE … IF NOT EXISTS needs the CREATE privilege
        // even when the sequence is already there.
        let create = format!("CREATE SEQUENCE IF NOT EXISTS {sequence}");
        match conn.execute(AssertSqlSafe(create)).await {
            Ok(_) => {}
            // Another client created it at the same moment.
            Err(err) if matches!(sqlstate(&err).as_deref(), Some("23505" | "42P07")) => {}
            Err(err) => return Err(cannot_create(err, sequence, schema, &role)),
        }
    }
    match problem(conn, sequence).await.map_err(from_sqlx)? {
        Some(err) => Err(err),
        None => Ok(()),
    }
}

/// What makes `sequence` unfit to hand out fencing tokens to the current
/// role — not a sequence, not usable, or able to fall or repeat — or `None`.
/// Read-only, so it can run inside a caller's transaction.
async fn problem(
    conn: &mut PgConnection,
    sequence: &str,
) -> Result<Option<LockError>, sqlx::Error> {
    let shape: Option<Shape> = sqlx::query_as(
        "SELECT pg_catalog.has_sequence_privilege(c.oid, 'USAGE'), s.seqcache, \
                s.seqrelid IS NOT NULL, s.seqincrement, s.seqcycle, current_user::text \
         FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid \
         WHERE c.oid = pg_catalog.to_regclass($1)",
    )
    .bind(sequence)
    .fetch_optional(&mut *conn)
    .await?;
    let (usable, cache, is_sequence, increment, cycle, role) =
        shape.unwrap_or((false, None, false, None, None, String::new()));
    if !is_sequence {
        return Ok(Some(LockError::backend(format!(
            "{sequence} is not a sequence; fencing tokens need one: drop or rename it, or \
             choose another name with PgLockOptions::fencing_sequence"
        ))));
    }
    if !usable {
        return Ok(Some(LockError::backend(format!(
            "role {role:?} may not use the fencing-token sequence {sequence}; grant it with: \
             GRANT USAGE ON SEQUENCE {sequence} TO {}",
            quote_ident(&role)
        ))));
    }
    if cache.is_some_and(|cache| cache > 1) {
        return Ok(Some(LockError::backend(format!(
            "the fencing-token sequence {sequence} caches values per session (CACHE {}), so \
             its values do not increase across sessions; run: ALTER SEQUENCE {sequence} CACHE 1",
            cache.unwrap_or_default()
        ))));
    }
    if let Some(increment) = increment.filter(|increment| *increment < 1) {
        return Ok(Some(LockError::backend(format!(
            "the fencing-token sequence {sequence} counts down (INCREMENT {increment}), so a \
             later holder would get a lower token than an earlier one; run: ALTER SEQUENCE \
             {sequence} INCREMENT 1, then setval it above the highest token handed out"
        ))));
    }
    if cycle == Some(true) {
        return Ok(Some(LockError::backend(format!(
            "the fencing-token sequence {sequence} has CYCLE: at its MAXVALUE it starts over \
             and hands out old tokens again; run: ALTER SEQUENCE {sequence} NO CYCLE"
        ))));
    }
    Ok(None)
}

/// What `pg_sequence` says about a relation: may we use it, its cache, is
/// it a sequence at all, its increment, whether it cycles; and who we are.
type Shape = (bool, Option<i64>, bool, Option<i64>, Option<bool>, String);

/// The highest fencing token one client has seen granted: a token that does
/// not rise above it means the sequence was set back or turned around after
/// it was checked, and the grant must not be reported.
///
/// One per client, shared by its session locks and the [`XactLocks`]
/// (and their clones) made from it.
///
/// [`XactLocks`]: crate::xact::XactLocks
#[derive(Debug, Default)]
pub(crate) struct TokenFloor(AtomicU64);

impl TokenFloor {
    /// The floor now: take it *before* sending the statement that draws a
    /// token. Every token seen by then was drawn before that statement's
    /// `nextval`, so a rising sequence must answer above it (grants that
    /// answer out of order in between are no false alarm).
    pub(crate) fn before_draw(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// `fence`, the value `sequence` handed out, as the grant's token when
    /// it rose above `floor` (what [`before_draw`](Self::before_draw)
    /// returned; the floor is raised to it); otherwise the refusal — also
    /// for a value below 1, which no fencing token may be. The caller must
    /// then free the lock the statement took.
    pub(crate) fn admit(&self, sequence: &str, floor: u64, fence: i64) -> Result<u64, Fell> {
        match u64::try_from(fence) {
            Ok(token) if token > floor => {
                self.0.fetch_max(token, Ordering::AcqRel);
                Ok(token)
            }
            _ => {
                tracing::warn!(
                    sequence,
                    token = fence,
                    floor,
                    "fencing token did not rise; refusing the grant"
                );
                Err(Fell {
                    token: fence,
                    floor,
                })
            }
        }
    }
}

/// A grant refused by [`TokenFloor::admit`]: its token, and the floor it
/// did not rise above.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fell {
    token: i64,
    floor: u64,
}

impl Fell {
    /// The error, after a fresh, read-only look at `sequence` over `conn`
    /// (which may be the caller's transaction): what is wrong with the
    /// sequence now (it counts down, cycles, …), or else that it was set
    /// back. `freed` says what became of the lock the statement took.
    pub(crate) async fn explain(
        self,
        conn: &mut PgConnection,
        sequence: &str,
        freed: &str,
    ) -> LockError {
        match problem(conn, sequence).await {
            Ok(Some(err)) => err,
            Ok(None) | Err(_) => self.error(sequence, freed),
        }
    }

    /// The error without a look at the sequence (no connection to look with).
    pub(crate) fn error(self, sequence: &str, freed: &str) -> LockError {
        let Fell { token, floor } = self;
        if floor == 0 {
            return LockError::backend(format!(
                "the fencing-token sequence {sequence} handed out {token}; tokens must count \
                 up from 1. The lock was not granted ({freed}). Run: SELECT \
                 setval('{sequence}', <the highest token ever handed out>), and check the \
                 sequence with ALTER SEQUENCE if it was changed"
            ));
        }
        LockError::backend(format!(
            "the fencing-token sequence {sequence} handed out {token}, which did not rise \
             above {floor}, a token this client already granted: it was set back (ALTER \
             SEQUENCE … RESTART or setval) or turned around. The lock was not granted \
             ({freed}). Run: SELECT setval('{sequence}', <the highest token ever handed \
             out>) — at least {floor} — and check the sequence with ALTER SEQUENCE if it \
             was changed"
        ))
    }
}

fn cannot_create(err: sqlx::Error, sequence: &str, schema: &str, role: &str) -> LockError {
    let grantee = quote_ident(role);
    let schema = quote_ident(schema);
    match sqlstate(&err).as_deref() {
        Some("42501") => LockError::backend(format!(
            "role {role:?} may not create the fencing-token sequence {sequence} ({err}). \
             Create it once as a role that may, and let this one use it: \
             CREATE SEQUENCE {sequence}; GRANT USAGE ON SEQUENCE {sequence} TO {grantee}; \
             — or GRANT CREATE ON SCHEMA {schema} TO {grantee}, or pick a schema it may \
             create in with PgLockOptions::fencing_sequence"
        )),
        Some("3F000") => LockError::backend(format!(
            "the schema of the fencing-token sequence {sequence} does not exist ({err}); \
             create it (CREATE SCHEMA {schema}) or pick another with PgLockOptions::fencing_sequence"
        )),
        _ => from_sqlx(err),
    }
}
