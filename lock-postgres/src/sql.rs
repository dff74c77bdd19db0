//! The statements, one round trip each: what is sent to take, keep and give
//! back a lock, built once per client (only the sequence name varies).
//!
//! Calls that must only run when the lock was granted (or released) sit
//! behind a `CASE`, the one construct whose evaluation order PostgreSQL
//! documents; each statement returns a single column.

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr};

/// `"schema"."name"`, quoted for SQL text.
pub(crate) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// An identifier in double quotes, with inner quotes doubled.
pub(crate) fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A string literal in single quotes, with inner quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Extend: if this session still holds the key in `pg_locks` (`$1`, `$2`:
/// the key's high and low halves), restart the TTL (`$3`, ms) → true.
/// Any statement restarts the idle timer; this one also proves the lock.
pub(crate) const EXTEND: &str = "\
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
                         WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() \
                           AND granted AND objsubid = 1 AND classid = $1::oid AND objid = $2::oid) \
            THEN pg_catalog.set_config('idle_session_timeout', $3, false) IS NOT NULL \
            ELSE false END";

/// What a fresh connection reports about the server.
pub(crate) const SERVER_INFO: &str = "\
SELECT pg_catalog.current_setting('server_version_num')::int4, \
       pg_catalog.current_setting('idle_session_timeout', true), \
       pg_catalog.current_setting('synchronous_commit') IN ('off', 'local')";

/// The per-client statements.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// `$1` key, `$2` TTL in ms → the fencing token when granted, NULL
    /// when held. The TTL (`idle_session_timeout`) is only set when granted.
    pub(crate) acquire: SqlStr,
    /// `$1` key, `$2` the default idle_session_timeout, `$3` channel → true
    /// when released (then also reset and announced with `pg_notify`).
    pub(crate) release_notify: SqlStr,
    /// `$1` key, `$2` the default idle_session_timeout → true when released
    /// (then also reset).
    pub(crate) release_plain: SqlStr,
}

impl Statements {
    /// `durable_commits`: the sessions' default `synchronous_commit` makes
    /// a commit wait for its WAL flush (`on`, `remote_write`, `remote_apply`).
    pub(crate) fn new(sequence: &str, durable_commits: bool) -> Self {
        let sequence = quote_literal(sequence);
        // When granted: set the TTL, and — on a server whose commits do not
        // wait for the WAL flush — make this one wait. nextval WAL-logs only
        // every 32nd value, and a crash that loses that record would hand
        // out old fencing tokens again; the commit is a no-op for the other 31.
        let settings = if durable_commits {
            "pg_catalog.set_config('idle_session_timeout', $2, false)".to_owned()
        } else {
            "pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                               pg_catalog.set_config('synchronous_commit', 'on', true))"
                .to_owned()
        };
        let acquire = format!(
            "SELECT CASE WHEN pg_catalog.pg_try_advisory_lock($1) THEN \
                    CASE WHEN {settings} IS NOT NULL \
                         THEN pg_catalog.nextval({sequence}::regclass) END END"
        );
        // The release commits asynchronously: it writes nothing that must
        // survive a crash (the NOTIFY makes PostgreSQL log a commit record),
        // so it need not wait for a WAL flush. `concat` evaluates all three.
        let release_notify = "\
            SELECT CASE WHEN pg_catalog.pg_advisory_unlock($1) THEN \
                   pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                                     pg_catalog.set_config('synchronous_commit', 'off', true), \
                                     pg_catalog.pg_notify($3, $1::text)) IS NOT NULL \
                   ELSE false END";
        let release_plain = "\
            SELECT CASE WHEN pg_catalog.pg_advisory_unlock($1) THEN \
                   pg_catalog.set_config('idle_session_timeout', $2, false) IS NOT NULL \
                   ELSE false END";
        Statements {
            acquire: AssertSqlSafe(acquire).into_sql_str(),
            release_notify: release_notify.into_sql_str(),
            release_plain: release_plain.into_sql_str(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(qualified("public", "seq"), r#""public"."seq""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_literal(r#""it's""#), r#"'"it''s"'"#);
    }
}
