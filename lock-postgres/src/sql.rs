//! The statements, one round trip each: what is sent to take, keep and give
//! back a lock, built once per client (only the sequence name varies).
//!
//! Calls that must only run when the lock was granted (or released) sit
//! behind a `CASE`, the one construct whose evaluation order PostgreSQL
//! documents; each statement returns a single column.
//!
//! # What the TTL sets on the holding session
//!
//! The acquire and extend statements set two settings from the TTL (in ms,
//! as text), always together:
//!
//! - `idle_session_timeout`: the server ends a session silent for the TTL,
//!   which frees its lock — the TTL itself.
//! - `tcp_user_timeout`: the server's kernel must not give the connection
//!   up sooner. Otherwise TCP ends a holder's session on its own schedule
//!   when the client stops answering (a partition, a vanished host):
//!   keepalives after `tcp_keepalives_idle + interval × count` (25 s with
//!   [`TcpKeepalives::default`](crate::TcpKeepalives)), unacknowledged data
//!   after `tcp_retries2` (~15 min) or a `tcp_user_timeout` from
//!   `postgresql.conf` — freeing the lock while the holder's guard is still
//!   valid. With `tcp_user_timeout` set, Linux drops a connection only when
//!   it has heard nothing for that long (keepalives then only probe), so
//!   the TTL bounds the session both ways. Released sessions get the
//!   client's default back.

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
/// Any statement restarts the idle timer; this one also proves the lock,
/// and sets the session's TCP timers for the new TTL (see the module docs).
/// NULL when the session is not the one that took the lock (`$4`, its
/// `pg_backend_pid()`): a transaction pooler moved us to another one.
pub(crate) const EXTEND: &str = "\
SELECT CASE WHEN pg_catalog.pg_backend_pid() <> $4 THEN NULL \
            WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
                         WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid() \
                           AND granted AND objsubid = 1 AND classid = $1::oid AND objid = $2::oid) \
            THEN pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $3, false), \
                                   pg_catalog.set_config('tcp_user_timeout', $3, false)) IS NOT NULL \
            ELSE false END";

/// The session setting that marks a session holding one of our session
/// locks (the key as text; empty or unset when it holds none). A lock
/// connection is clean when it leaves the pool, so a set marker at acquire
/// time means the server session is shared — through a transaction pooler —
/// and taking the lock there would be re-entrant, i.e. granted twice.
pub(crate) const HELD_MARKER: &str = "distlock.held_key";

/// What a fresh connection reports about the server (and the session
/// defaults that release restores).
pub(crate) const SERVER_INFO: &str = "\
SELECT pg_catalog.current_setting('server_version_num')::int4, \
       pg_catalog.current_setting('idle_session_timeout', true), \
       pg_catalog.current_setting('synchronous_commit') IN ('off', 'local'), \
       pg_catalog.current_setting('tcp_user_timeout', true)";

/// What the acquire statement returns instead of a fencing token when the
/// connection's server session is not the one it had before (`$3`). Far
/// below any token, so a sequence gone negative is never mistaken for it
/// (`i64::MIN` itself would be read as `numeric` in SQL text).
pub(crate) const SESSION_CHANGED: i64 = i64::MIN + 1;
/// … when the session already holds one of our locks (see [`HELD_MARKER`]).
pub(crate) const SESSION_SHARED: i64 = i64::MIN + 2;

/// The per-client statements.
///
/// Each has a parameter list of its own (count or types), so that a
/// transaction pooler handing one client's named prepared statement to
/// another can only make the server refuse the bind, never run the wrong
/// statement.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// `$1` key, `$2` TTL in ms, `$3` the session's expected
    /// `pg_backend_pid()` (0: not known yet) → (the fencing token when
    /// granted, NULL when held, [`SESSION_CHANGED`] or [`SESSION_SHARED`]
    /// when the session is not ours alone; `pg_backend_pid()`). The TTL
    /// (see the module docs) and the [`HELD_MARKER`] are only set when granted.
    pub(crate) acquire: SqlStr,
    /// `$1` key, `$2` the default idle_session_timeout, `$3` channel, `$4`
    /// the holding session's pid → true when released (then also reset —
    /// `tcp_user_timeout` to the client's default, written into the text —
    /// and announced with `pg_notify`); NULL on another session.
    pub(crate) release_notify: SqlStr,
    /// `$1` key, `$2` the default idle_session_timeout, `$3` the holding
    /// session's pid → true when released (then also reset); NULL on
    /// another session.
    pub(crate) release_plain: SqlStr,
}

impl Statements {
    /// `durable_commits`: the sessions' default `synchronous_commit` makes
    /// a commit wait for its WAL flush (`on`, `remote_write`, `remote_apply`);
    /// `default_user_timeout`: their default `tcp_user_timeout`, restored
    /// on release.
    pub(crate) fn new(sequence: &str, durable_commits: bool, default_user_timeout: &str) -> Self {
        let sequence = quote_literal(sequence);
        let default_user_timeout = quote_literal(default_user_timeout);
        // When granted: set the TTL and the marker, and — on a server whose
        // commits do not wait for the WAL flush — make this one wait.
        // nextval WAL-logs only every 32nd value, and a crash that loses
        // that record would hand out old fencing tokens again; the commit is
        // a no-op for the other 31.
        let durable = if durable_commits {
            ""
        } else {
            ", pg_catalog.set_config('synchronous_commit', 'on', true)"
        };
        let settings = format!(
            "pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                               pg_catalog.set_config('tcp_user_timeout', $2, false), \
                               pg_catalog.set_config('{HELD_MARKER}', $1::text, false){durable})"
        );
        // The session checks cost no round trip: they ride in the statement
        // that takes the lock, before it is taken.
        let acquire = format!(
            "SELECT CASE WHEN $3::int8 <> 0 AND pg_catalog.pg_backend_pid() <> $3::int8 \
                         THEN {SESSION_CHANGED} \
                    WHEN pg_catalog.current_setting('{HELD_MARKER}', true) <> '' \
                         THEN {SESSION_SHARED} \
                    WHEN pg_catalog.pg_try_advisory_lock($1) THEN \
                    CASE WHEN {settings} IS NOT NULL \
                         THEN pg_catalog.nextval({sequence}::regclass) END END, \
                    pg_catalog.pg_backend_pid()"
        );
        // The release commits asynchronously: it writes nothing that must
        // survive a crash (the NOTIFY makes PostgreSQL log a commit record),
        // so it need not wait for a WAL flush. `concat` evaluates all its
        // arguments.
        let release_notify = format!(
            "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> $4 THEN NULL \
                    WHEN pg_catalog.pg_advisory_unlock($1) THEN \
                    pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                                      pg_catalog.set_config('tcp_user_timeout', {default_user_timeout}, false), \
                                      pg_catalog.set_config('{HELD_MARKER}', '', false), \
                                      pg_catalog.set_config('synchronous_commit', 'off', true), \
                                      pg_catalog.pg_notify($3, $1::text)) IS NOT NULL \
                    ELSE false END"
        );
        let release_plain = format!(
            "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> $3 THEN NULL \
                    WHEN pg_catalog.pg_advisory_unlock($1) THEN \
                    pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                                      pg_catalog.set_config('tcp_user_timeout', {default_user_timeout}, false), \
                                      pg_catalog.set_config('{HELD_MARKER}', '', false)) IS NOT NULL \
                    ELSE false END"
        );
        Statements {
            acquire: AssertSqlSafe(acquire).into_sql_str(),
            release_notify: AssertSqlSafe(release_notify).into_sql_str(),
            release_plain: AssertSqlSafe(release_plain).into_sql_str(),
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
