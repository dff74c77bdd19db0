//! The fencing-token sequence: created on first use when missing, checked
//! once, and explained clearly when the role may not create or use it.

use lock_api::LockError;
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
    let (usable, cache, is_sequence): (bool, Option<i64>, bool) = sqlx::query_as(
        "SELECT pg_catalog.has_sequence_privilege(c.oid, 'USAGE'), s.seqcache, s.seqrelid IS NOT NULL \
         FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_sequence s ON s.seqrelid = c.oid \
         WHERE c.oid = pg_catalog.to_regclass($1)",
    )
    .bind(sequence)
    .fetch_optional(&mut *conn)
    .await
    .map_err(from_sqlx)?
    .unwrap_or((false, None, false));
    if !is_sequence {
        return Err(LockError::backend(format!(
            "{sequence} is not a sequence; fencing tokens need one: drop or rename it, or \
             choose another name with PgLockOptions::fencing_sequence"
        )));
    }
    if !usable {
        return Err(LockError::backend(format!(
            "role {role:?} may not use the fencing-token sequence {sequence}; grant it with: \
             GRANT USAGE ON SEQUENCE {sequence} TO {}",
            quote_ident(&role)
        )));
    }
    if cache.is_some_and(|cache| cache > 1) {
        return Err(LockError::backend(format!(
            "the fencing-token sequence {sequence} caches values per session (CACHE {}), so \
             its values do not increase across sessions; run: ALTER SEQUENCE {sequence} CACHE 1",
            cache.unwrap_or_default()
        )));
    }
    Ok(())
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
