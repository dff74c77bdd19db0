//! PostgreSQL advisory-lock backend for [distlock](https://docs.rs/distlock):
//! [`PgAdvisoryLock`] implements [`DistributedLock`] with
//! `pg_try_advisory_lock` on a connection the guard owns, a TTL the
//! *server* enforces, fencing tokens from a sequence, and `LISTEN`/`NOTIFY`
//! wake-ups for waiters.
//!
//! ```no_run
//! use std::time::Duration;
//! use distlock_postgres::{DistributedLock, DistributedLockExt, PgAdvisoryLock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), distlock_postgres::LockError> {
//! let locks = PgAdvisoryLock::connect("postgres://app@db.internal/shop").await?;
//!
//! // Take it, do the work, give it back.
//! let guard = locks
//!     .acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2))
//!     .await?;
//! // UPDATE tickets SET holder = $1, fence = $2 WHERE id = 42 AND fence < $2
//! let _fence = guard.fencing_token();
//! guard.release().await?;
//!
//! // Or renew it in the background while the work runs.
//! locks
//!     .with_lock("report:daily", Duration::from_secs(30), Duration::ZERO, |lock| async move {
//!         let _ = lock.fencing_token(); // … a long job …
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! Build a client with [`PgLockOptions`] to set the pool size, timeouts, a
//! key namespace, the fencing sequence or the waiting strategy;
//! [`PgLockOptions::from_pool`] shares an application's sqlx pool instead.
//! The crate re-exports the [`sqlx`] it is built on.
//!
//! # One lock, one connection
//!
//! A session-level advisory lock belongs to the connection that took it, so
//! a held lock pins that connection until it is released: the guard owns
//! it. A connection goes back to the pool only after `pg_advisory_unlock`
//! answered `true` on it (PostgreSQL merely logs a WARNING for `false`; we
//! return [`LockError::Lost`]). Every other way out — the guard dropped
//! without `release`, a release or extend that was cancelled, timed out or
//! failed, a granted lock whose acquire was cancelled mid-statement —
//! **closes** the connection, which ends the session and frees whatever it
//! held. No pooled connection ever carries a lock (the failure that makes
//! deadpool-postgres run `pg_advisory_unlock_all()` on recycle).
//!
//! The pool is this crate's own (default 10 connections, see
//! [`PgLockOptions::max_connections`]) because sqlx's pings every connection
//! it gets back — a round trip per lock cycle; we know when a connection is
//! clean. A stale idle connection (the server restarted) fails its first
//! statement and the attempt moves on to another. Once a client has
//! waited, two more connections serve its waiters: one `LISTEN`s for
//! releases, one tells releasers that someone waits (see below).
//!
//! # What the TTL means
//!
//! Advisory locks never expire by themselves. Here the server enforces the
//! TTL: the statement that takes the lock also sets `idle_session_timeout =
//! ttl` on the holding session (PostgreSQL ≥ 14), so **a holding session
//! that stays silent for the TTL is ended by PostgreSQL, and its lock is
//! freed** — as a Redis key expires. The same statement sets the session's
//! `tcp_user_timeout = ttl`, so that TCP does not end the session *sooner*
//! (see below). [`extend`](LockGuard::extend) is one
//! statement on the holding connection that checks `pg_locks` for the key
//! and sets both again (any statement restarts the idle timer). So
//! the liveness check while holding *is* the renewal:
//! [`auto_renew`](LockGuard::auto_renew) extends every `ttl / 3`, and a
//! holder whose connection died learns it there, at the latest a third of
//! the TTL later. Release restores the session's defaults in the
//! same statement as the unlock. Sub-millisecond TTLs round up; the
//! longest TTL is `i32::MAX` ms (about 24.8 days).
//!
//! The guard's [`valid_until`](LockGuard::valid_until) (start of the
//! acquire or extend + TTL − drift allowance) always ends before the
//! server's deadline (that statement's arrival on the server + TTL, for
//! the idle timeout and the TCP timers alike), so a guard reports itself
//! lost before another client can have the lock. An
//! extend that gets no answer in time (within
//! [`query_timeout`](PgLockOptions::query_timeout); renewal waits for it
//! until the guard's validity ends) closes the connection and so gives the
//! lock up: in doubt, this backend lets go rather than guess. An extend
//! whose *caller* is cancelled is not cut short: its statement runs in a
//! task of its own and the next `extend` or `release` picks up the answer,
//! so the lock stays held while the guard — whose `valid_until` a
//! cancelled extend leaves as it was — still counts on it.
//!
//! | what happens to the holder | the lock on the server | the holder's guard |
//! |---|---|---|
//! | process frozen (GC pause, SIGSTOP, suspended VM) | freed TTL after the last statement (the acquire or last extend) | [`is_lost`](LockGuard::is_lost) once `valid_until` passes; `extend` / `release` return `Lost` when it wakes |
//! | process crashed or killed | freed at once (the kernel closes the socket) | — |
//! | host gone (power, kernel panic) or network partition | freed TTL after the last statement: the session sits idle, `idle_session_timeout` ends it (TCP keepalives and retransmissions cannot end it sooner: `tcp_user_timeout` = TTL) | `extend` gets no answer: after [`query_timeout`](PgLockOptions::query_timeout) (renewal: at the latest when the validity ends) the connection is closed and the result is `Lost` |
//! | session terminated (`pg_terminate_backend`, pooler, idle killer) | freed at once | `Lost` on the next `extend` / `release`; with renewal within `ttl / 3` ([`lost`](LockGuard::lost) resolves) |
//! | server restart or crash | every lock freed | as above; the client reconnects by itself |
//!
//! ## Every idle timer on the path bounds the lease
//!
//! Anything that ends a silent connection frees the lock it holds, and
//! must not fire before the TTL. A network partition makes the holder
//! silent without closing anything, and then the server's TCP stack ends
//! the session on its own schedule: keepalives after idle time plus
//! interval × count ([`PgLockOptions::tcp_keepalives`], by default
//! 10 s + 3 × 5 s = 25 s), unacknowledged data after `tcp_retries2` (about
//! 15 min), or a `tcp_user_timeout` from `postgresql.conf` — each would
//! free a lock whose holder still counts on it. So the holding session's
//! `tcp_user_timeout` is the TTL: Linux then drops the connection only
//! after hearing nothing for the TTL (keepalives still probe, but their
//! count no longer ends it), which `idle_session_timeout` does at the same
//! moment anyway. Idle pooled connections keep the keepalives as
//! configured, and get the default `tcp_user_timeout` back on release.
//! (This needs a server on an OS with `TCP_USER_TIMEOUT`, as Linux has;
//! elsewhere PostgreSQL logs that it is not supported: keep
//! `idle + interval × count` above your longest TTL, or turn keepalives
//! off.)
//!
//! Timers the client cannot set stay yours to check: a proxy or pooler
//! between client and server (PgBouncer's `client_idle_timeout` and its own
//! `tcp_keepalive`/`tcp_user_timeout` settings on the client side, an
//! HAProxy `timeout client`/`timeout server`, a NAT or firewall idle
//! timeout) must not close an idle connection sooner than your longest
//! TTL; if one does, the lock is freed early while the guard is valid.
//! sqlx sets no client-side keepalives; the query timeout bounds the client.
//!
//! Servers older than 14 have no `idle_session_timeout`: [`connect`](PgLockOptions::connect)
//! refuses them ([`LockError::Backend`]) rather than offer a TTL that a
//! frozen client would not honour.
//!
//! # Keys
//!
//! A name maps to the `bigint` key through [`lock_key`]: the first 8 bytes
//! of SHA-256 of its UTF-8 bytes, big-endian — stable across processes,
//! platforms and versions (vectors are pinned by tests), and computable in
//! SQL ([`KEY_SQL`]):
//!
//! ```sql
//! ('x' || substr(encode(sha256(convert_to('ticket:42', 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint
//! ```
//!
//! An optional [key namespace](PgLockOptions::key_namespace) is prepended.
//! Among `n` names in use, a collision (two names, one lock) has probability
//! about `n² / 2⁶⁵`: 3 × 10⁻⁸ for a million names. Applications that own a
//! key space lock raw keys with [`PgAdvisoryLock::acquire_key`] — the same
//! lock as `pg_advisory_lock(key)` anywhere else.
//!
//! # Fencing tokens
//!
//! Each grant takes `nextval` of one sequence (default
//! `public.distlock_fencing_token`) in the same statement as the lock, so
//! tokens strictly increase across all clients and names. The sequence is
//! created on first use (`CREATE SEQUENCE IF NOT EXISTS`) when missing; a
//! role that may not create or use it gets a [`LockError::Backend`] that
//! spells out the `CREATE SEQUENCE` / `GRANT USAGE` to run. A sequence
//! that can fall or repeat — `CACHE` above 1, a negative `INCREMENT`,
//! `CYCLE` — is refused ([`LockError::Backend`], naming the `ALTER
//! SEQUENCE` that fixes it) before the first grant. A change after that
//! (`ALTER SEQUENCE … RESTART`, `setval`, `INCREMENT -1`) is caught by the
//! token itself: each client refuses a grant whose token does not rise
//! above the highest it has granted (the session is closed, so the lock is
//! freed) and checks the sequence again for the error. Transaction locks
//! ([`xact::XactLocks`]) do the same, sharing the record of the client they
//! came from (a refused `lock` rolls its savepoint back; a refused
//! `try_lock` stays taken until the transaction ends); the free functions
//! `xact::try_lock` / `xact::lock` keep no record. On a server
//! whose default is `synchronous_commit = off` (or `local`), the acquire
//! statement makes its own commit wait for the WAL flush, so a crash cannot
//! hand out old tokens again (`nextval` logs only every 32nd value, so this
//! costs a flush per 32 grants).
//!
//! # Waiting, measured
//!
//! With [`WaitStrategy::Queue`] (the default), an
//! [`acquire`](DistributedLock::acquire) that has to wait waits in the
//! server's own lock queue: `pg_advisory_lock` under a `lock_timeout` of at
//! most a quarter of the TTL (then it queues again; never past its
//! deadline), so PostgreSQL hands the lock over the moment it is unlocked,
//! first come first served across clients. A waiting attempt pins a pooled
//! connection, so a client lets at most half its pool wait that way; its
//! other waiters, and every waiter with [`WaitStrategy::Notify`], wait for
//! a `NOTIFY` instead, holding no lock connection: the unlock statement
//! runs `pg_notify('distlock', key)` when some client waits for the key,
//! and one listener connection per client wakes that client's waiters on
//! the key (first in line first). A grant racing the `lock_timeout` (the
//! statement fails, the session holds the lock) is unlocked at once; a
//! server whose `statement_timeout` cancels the wait makes the client fall
//! back to `NOTIFY` waiting.
//!
//! *When some client waits*: an attempt that finds the key held and will
//! wait makes its client take a **shared** advisory lock on the key's
//! *interest key* — the same 64 bits in PostgreSQL's other advisory key
//! space, the one of two `int4`s (`pg_advisory_lock_shared(high, low)`) —
//! on a connection of its own, then tries once more. The unlock statement
//! tries to take that key exclusively for its own length, and notifies
//! only when it cannot. A client gives up the interest in keys it no
//! longer waits for every 250 ms. So releases nobody waits for cost no
//! `NOTIFY` — a transaction id and a commit record, about 20 µs of server
//! CPU, as much as the lock and unlock together; an application of yours
//! that uses two-`int4` advisory keys can at worst cause a spurious one (a
//! waiter tries once more). If the interest connection fails, waiters fall
//! back on the backoff schedule (2 ms doubling to 100 ms).
//!
//! The hand-off figures (one name, each holder keeps it 1 ms, each waiter a
//! client of its own, against PostgreSQL's own `pg_advisory_lock`
//! hand-off) and the cost of a lock cycle next to raw sqlx are in the
//! repository README's comparison, from `scripts/compare.sh`.
//!
//! Choose [`WaitStrategy::Poll`] for many short, rarely contended locks.
//!
//! # When the pool runs out
//!
//! Each held lock pins a connection, so a client holding
//! `max_connections` locks cannot take another. `acquire` then waits for a
//! connection at most its `wait` (`try_acquire`: at most
//! [`pool_timeout`](PgLockOptions::pool_timeout)) and fails with
//! [`LockError::Connection`] wrapping [`PoolExhausted`] — "connection pool
//! exhausted: all 10 connections are in use, 10 of them pinned by locks
//! this client holds …" — rather than a bare `Timeout`. Size the pool for
//! the locks you hold at once plus those being taken; on the server, every
//! held lock costs a backend process and a `max_connections` slot. Holding
//! many locks for a long time is what Redis is for.
//!
//! # Transaction-scoped locks and PgBouncer
//!
//! Behind PgBouncer in *transaction* pooling, a session lock would stay on
//! a server connection that other clients then use: use [`xact`] instead —
//! `pg_try_advisory_xact_lock` inside your own transaction, released by its
//! commit or rollback, sharing keys and fencing tokens with session locks.
//! [`xact`] explains when to use which. Behind *session* pooling this
//! client works as is (turn off [`tcp_keepalives`](PgLockOptions::tcp_keepalives),
//! which PgBouncer rejects as a startup option).
//!
//! Session locks through a transaction pooler are refused, never granted
//! twice, with [`LockError::InvalidConfig`] saying so (and pointing to
//! [`xact`]). [`connect`](PgLockOptions::connect) checks before the first
//! grant: one connection marks its server session (a session setting) and
//! reads the mark back in three later transactions, while a second
//! connection, opened alongside, looks for the mark and the first one's
//! `pg_backend_pid()` — one extra connection and seven small queries per
//! client. A pooler that resets sessions (`server_reset_query_always`),
//! closes them (`server_lifetime = 0`) or hands one session to both
//! connections (PgBouncer reuses the session used last) is refused there.
//! A busy pooler that happens to route every one of those transactions
//! apart can slip through; the lock statements are the backstop: each
//! returns the session's `pg_backend_pid()`, each later statement on the
//! connection (the next lock, `extend`, `release`) checks it runs on that
//! same session; a granted lock marks its session (`distlock.held_key`),
//! and no lock — session or transaction scoped — is granted on a session
//! that carries the mark (advisory locks are re-entrant within a session,
//! so that would be a double grant). An `extend` that finds itself on
//! another session reports [`LockError::Lost`] (renewal stops and
//! [`lost`](LockGuard::lost) resolves); a `release` there returns the
//! `InvalidConfig`. What the backstop cannot see is a pooler that resets
//! or closes the holding session *between* two statements of a lock that
//! passed the check — another reason never to put session locks behind a
//! transaction pooler. The errors PgBouncer ≤ 1.20 causes for sqlx's named
//! prepared statements (`prepared statement "sqlx_s_1" already exists`, …)
//! are reported as the same `InvalidConfig`. A lock whose `release` finds
//! itself on another session stays on the session that took it until that
//! session ends or idles for the TTL.
//!
//! Transaction locks ([`XactLocks`]) work through such a pooler; with
//! PgBouncer before 1.21 (which hands sqlx's named prepared statements to
//! other clients' sessions) turn on [`XactLocks::simple_queries`].
//!
//! # Connecting
//!
//! `postgres://` and `postgresql://` URLs with the libpq-style parameters
//! sqlx understands (`sslmode`, `sslrootcert`, `application_name`, `options`,
//! …). A URL that does not parse is [`LockError::InvalidUrl`]; a server that
//! cannot be reached is [`LockError::Connection`] within the
//! [connect timeout](PgLockOptions::connect_timeout) (default 5 s). No error,
//! `Debug` or `Display` output contains the URL's password. TLS needs one of
//! sqlx's TLS features enabled in your build; without one, `sslmode=require`
//! fails to connect rather than fall back to plain text.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod error;
mod interest;
mod key;
mod lease;
mod listener;
mod lock;
mod options;
mod pool;
mod sequence;
mod shared;
mod sql;
mod url;
pub mod xact;

pub use error::PoolExhausted;
pub use key::{KEY_SQL, lock_key, lock_key_in};
pub use lease::PgLease;
pub use lock::PgAdvisoryLock;
pub use options::{PgLockOptions, TcpKeepalives, WaitStrategy};
pub use xact::XactLocks;

pub use distlock_api;
pub use distlock_api::{DistributedLock, DistributedLockExt, LockError, LockGuard};
pub use sqlx;
