//! How driver errors become [`LockError`]s, and the errors this crate adds.

use std::fmt;

use distlock_api::LockError;
use sqlx::postgres::{PgDatabaseError, PgSeverity};

/// Every connection this client may open is in use, and none came free in
/// time. Returned inside [`LockError::Connection`] (reach it with
/// [`LockError::get_ref`] and `downcast_ref`).
///
/// Each held lock pins one connection until it is released, so a client
/// holding as many locks as it has connections cannot take another: release
/// locks sooner, or raise [`PgLockOptions::max_connections`](crate::PgLockOptions::max_connections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolExhausted {
    /// The pool's size.
    pub max_connections: u32,
    /// How many of its connections were pinned by locks this client held.
    pub held_by_locks: usize,
}

impl fmt::Display for PoolExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connection pool exhausted: all {} connections are in use, {} of them pinned by \
             locks this client holds (each held PostgreSQL advisory lock keeps its own \
             connection); release locks or raise max_connections",
            self.max_connections, self.held_by_locks
        )
    }
}

impl std::error::Error for PoolExhausted {}

/// True when `err` means the session is gone or its connection unusable:
/// whatever locks the session held are freed (or will be, once the server
/// notices), and the connection must not be used again.
pub(crate) fn session_gone(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
            Some(pg) => {
                matches!(pg.severity(), PgSeverity::Fatal | PgSeverity::Panic)
                    || pg.code().starts_with("08")
                    || pg.code().starts_with("57P")
            }
            None => false,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::PoolClosed
        | sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// A driver error as a [`LockError`]: [`LockError::Connection`] when the
/// connection failed, [`LockError::Backend`] when the server refused, and
/// [`LockError::InvalidConfig`] for the prepared-statement errors a
/// transaction pooler causes (see [`pooler_statement_error`]).
pub(crate) fn from_sqlx(err: sqlx::Error) -> LockError {
    if pooler_statement_error(&err) {
        return pooled_session(&format!("a statement failed ({err})"), false);
    }
    if session_gone(&err) {
        LockError::connection(err)
    } else {
        LockError::backend(err)
    }
}

/// The SQLSTATE of a database error, if it is one.
pub(crate) fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// A round trip that did not answer within the query timeout.
pub(crate) fn query_timed_out(what: &str, timeout: std::time::Duration) -> LockError {
    LockError::connection(format!(
        "{what} got no answer from PostgreSQL within {timeout:?}; its connection was closed"
    ))
}

/// The server session under one of our connections changed between two
/// statements, or already held one of our locks when we took the
/// connection: something multiplexes server sessions between clients (a
/// pooler in transaction or statement mode). `what` says which statement
/// found out; `stranded` whether a lock may be left on the old session.
pub(crate) fn pooled_session(what: &str, stranded: bool) -> LockError {
    let left = if stranded {
        " The lock stays on the server session that took it until that session \
         ends or sits idle for the lock's TTL."
    } else {
        " No lock was taken."
    };
    LockError::InvalidConfig(format!(
        "{what}: the PostgreSQL server session behind this connection is shared with other \
         clients — a pooler in transaction or statement mode (e.g. PgBouncer with \
         pool_mode = transaction) sits between this client and PostgreSQL. Session-level \
         advisory locks cannot work through it: the lock would stay on a server session that \
         other clients then use. Connect PgAdvisoryLock to PostgreSQL directly or through \
         session pooling, or take transaction-scoped locks (distlock_postgres::xact) through the \
         pooler.{left}"
    ))
}

/// Errors that a transaction pooler causes for sqlx's named prepared
/// statements: the statement was prepared on another server session
/// (`26000` does not exist), another client prepared that name on this one
/// (`42P05` already exists), or the name on this session is another
/// client's statement, whose parameters do not match ours (`08P01` "bind
/// message supplies N parameters, but prepared statement … requires M",
/// `22P03` incorrect binary data format in a bind parameter). Our own
/// statements never cause these on a session of their own.
pub(crate) fn pooler_statement_error(err: &sqlx::Error) -> bool {
    match sqlstate(err).as_deref() {
        Some("26000" | "42P05" | "22P03") => true,
        Some("08P01") => err.to_string().contains("prepared statement"),
        _ => false,
    }
}
