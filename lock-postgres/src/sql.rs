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
//!   the TTL bounds the session both ways.
//!
//! On the client's own pool a released session keeps both (the next lock
//! on it usually has the same TTL, so nothing is written then), and the
//! pool closes a connection before it has been idle for half its TTL, so
//! the server never ends an idle pooled session under it. On a pool shared
//! with the application (`from_pool`), released sessions get the defaults
//! back.

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

/// The session setting that marks a session one of our lock connections
/// took a lock on. Each connection knows what its session's marker should
/// be: empty or unset on a fresh one; once it took a lock, a value of its
/// own (on the client's own pool, kept after release) or the key (on the
/// application's pool, cleared on release). A marker other than the one
/// the connection expects means the server session is shared — through a
/// transaction pooler — and taking the lock there could be re-entrant,
/// i.e. granted twice.
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
///
/// # What a lock cycle costs the server, and why it is this small
///
/// Measured with pgbench on PostgreSQL 15 (16 clients, server CPU per
/// acquire + release, from `/proc`): `pg_try_advisory_lock` +
/// `pg_advisory_unlock` alone 34–38 µs; with every session setting written
/// and reset in each cycle and a `NOTIFY` on every release, as distlock
/// did before, 69 µs — the `NOTIFY` about 19 µs, the `set_config` calls
/// (two per setting and cycle) about 16 µs. So, on the client's own pool:
///
/// - the settings are written only when they change: a connection
///   released from a TTL of 10 s or more keeps it (the pool does not reuse
///   a connection idle for half its TTL, so the server's
///   `idle_session_timeout` never ends one under it, see
///   [`crate::pool::KEEP_SETTINGS_FROM`]), and keeps its marker — a value
///   of its own, set once ([`HELD_MARKER`]); shorter TTLs are reset on
///   release, so that an idle pooled connection is not ended within
///   seconds;
/// - a release notifies only when some client waits for the key: a waiting
///   client holds a shared advisory lock on the key's *interest* key
///   ([`crate::interest`]), and the release notifies only when it cannot
///   take that key exclusively for a moment.
///
/// On a pool shared with the application (`from_pool`) every release
/// still restores the session's defaults: the application gets its
/// connections back as they were.
#[derive(Debug, Clone)]
pub(crate) struct Statements {
    /// `$1` key, `$2` TTL in ms (NULL: the session has it already), `$3`
    /// the session's expected `pg_backend_pid()` (0: not known yet), `$4`
    /// the [`HELD_MARKER`] value the session should have (`''`: none),
    /// `$5` the marker to set with the TTL (NULL when `$2` is) → (the fencing token when
    /// granted, NULL when held, [`SESSION_CHANGED`] or [`SESSION_SHARED`]
    /// when the session is not ours alone; `pg_backend_pid()`).
    pub(crate) acquire: SqlStr,
    /// As `acquire`, with `$6` a `lock_timeout` in ms (at least 1): waits
    /// in `pg_advisory_lock` up to that long, then fails with SQLSTATE
    /// `55P03` — after which the session may hold the lock all the same
    /// (a grant racing the timeout), so the connection is closed. Never
    /// answers "held".
    pub(crate) acquire_wait: SqlStr,
    /// `$1` key, `$2` the default `idle_session_timeout` to restore (NULL:
    /// keep the session's settings), `$3` the holding session's pid, `$4`
    /// the channel to notify (NULL: none), `$5`, `$6` the key's interest
    /// key → true when released (then also reset when asked, and announced
    /// when someone holds the interest key); NULL on another session.
    pub(crate) release: SqlStr,
}

impl Statements {
    /// `durable_commits`: the sessions' default `synchronous_commit` makes
    /// a commit wait for its WAL flush (`on`, `remote_write`, `remote_apply`);
    /// `default_user_timeout`: their default `tcp_user_timeout`, restored
    /// on release.
    pub(crate) fn new(sequence: &str, durable_commits: bool, default_user_timeout: &str) -> Self {
        let sequence = quote_literal(sequence);
        let default_user_timeout = quote_literal(default_user_timeout);
        let nextval = format!("pg_catalog.nextval({sequence}::regclass)");
        // When granted, on a server whose commits do not wait for the WAL
        // flush, make this one wait: nextval WAL-logs only every 32nd
        // value, and a crash that loses that record would hand out old
        // fencing tokens again; the commit is a no-op for the other 31.
        let (durable, granted) = if durable_commits {
            (String::new(), nextval.clone())
        } else {
            (
                ", pg_catalog.set_config('synchronous_commit', 'on', true)".to_owned(),
                format!(
                    "CASE WHEN pg_catalog.set_config('synchronous_commit', 'on', true) IS NOT NULL \
                          THEN {nextval} END"
                ),
            )
        };
        let settings = format!(
            "pg_catalog.concat(pg_catalog.set_config('idle_session_timeout', $2, false), \
                               pg_catalog.set_config('tcp_user_timeout', $2, false), \
                               pg_catalog.set_config('{HELD_MARKER}', $5, false){durable})"
        );
        // The session checks cost no round trip: they ride in the statement
        // that takes the lock, before it is taken; `take` is the CASE arm
        // that takes it (true when taken), `then` what follows a grant.
        let acquire_with = |take: &str| {
            format!(
                "SELECT CASE WHEN $3::int8 <> 0 AND pg_catalog.pg_backend_pid() <> $3::int8 \
                             THEN {SESSION_CHANGED} \
                        WHEN COALESCE(pg_catalog.current_setting('{HELD_MARKER}', true), '') \
                             <> $4::text \
                             THEN {SESSION_SHARED} \
                        {take} \
                        CASE WHEN $2::text IS NULL THEN {granted} \
                             WHEN {settings} IS NOT NULL THEN {nextval} END END, \
                        pg_catalog.pg_backend_pid()"
            )
        };
        let acquire = acquire_with("WHEN pg_catalog.pg_try_advisory_lock($1) THEN");
        // The blocking variant for a waiter: `pg_advisory_lock` under a
        // `lock_timeout` of `$6` ms (transaction local, so it ends with the
        // statement). `void` casts to ''.
        let acquire_wait = acquire_with(
            "WHEN pg_catalog.set_config('lock_timeout', $6, true) IS NULL THEN NULL \
             WHEN pg_catalog.pg_advisory_lock($1)::text IS NULL THEN NULL \
             ELSE",
        );
        // A notifying release commits asynchronously: it writes nothing
        // that must survive a crash (the NOTIFY makes PostgreSQL log a
        // commit record), so it need not wait for a WAL flush. `concat`
        // evaluates all its arguments.
        let release = format!(
            "SELECT CASE WHEN pg_catalog.pg_backend_pid() <> $3 THEN NULL \
                    WHEN pg_catalog.pg_advisory_unlock($1) THEN pg_catalog.concat( \
                      CASE WHEN $2::text IS NOT NULL THEN pg_catalog.concat( \
                        pg_catalog.set_config('idle_session_timeout', $2, false), \
                        pg_catalog.set_config('tcp_user_timeout', {default_user_timeout}, false), \
                        pg_catalog.set_config('{HELD_MARKER}', '', false)) END, \
                      CASE WHEN $4::text IS NULL THEN NULL \
                           WHEN pg_catalog.pg_try_advisory_xact_lock($5::int4, $6::int4) THEN NULL \
                           ELSE pg_catalog.concat( \
                             pg_catalog.set_config('synchronous_commit', 'off', true), \
                             pg_catalog.pg_notify($4, $1::text)) END) IS NOT NULL \
                    ELSE false END"
        );
        Statements {
            acquire: AssertSqlSafe(acquire).into_sql_str(),
            acquire_wait: AssertSqlSafe(acquire_wait).into_sql_str(),
            release: AssertSqlSafe(release).into_sql_str(),
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
