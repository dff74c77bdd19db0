//! Distributed locks for Rust services — "only one of us books the last
//! ticket" — with pluggable backends behind one async trait,
//! [`DistributedLock`].
//!
//! - **Backends**: Redis ([`redis`]: one server, a Redis Cluster, or a
//!   Redlock quorum over 3 or 5 independent servers) and PostgreSQL advisory
//!   locks ([`postgres`]), each behind a Cargo feature, plus [`MemoryLock`],
//!   an in-process backend for unit tests.
//! - **One behaviour everywhere**: waiting with jittered backoff and
//!   wake-ups, a [`LockGuard`] with a fencing token and a conservative
//!   [`valid_until`](LockGuard::valid_until), release on drop, opt-in
//!   background renewal ([`LockGuard::auto_renew`]), and
//!   [`with_lock`](DistributedLockExt::with_lock) — checked on every backend
//!   by the same conformance suite, against real servers.
//!
//! ```
//! use std::time::Duration;
//! use distlock::{DistributedLockExt, fencing::Fence};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), distlock::LockError> {
//! // redis://…, redis+cluster://…, redis+redlock://…, postgres://…, or memory:
//! let locks = distlock::connect("memory:").await?;
//! let ttl = Duration::from_secs(10); // freed on its own if this process vanishes
//! let guard = locks.acquire("ticket:42", ttl, Duration::from_secs(2)).await?;
//! let fence = Fence::of(&guard)?; // store it with the data you write
//! println!("booking ticket 42 with fencing token {fence}");
//! guard.release().await?; // Err(LockError::Lost) if it ran out meanwhile
//!
//! // Or: renewed in the background while the work runs, released after.
//! locks
//!     .with_lock("report:daily", ttl, Duration::ZERO, |lock| async move {
//!         assert!(lock.fencing_token() > 0);
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Where to start
//!
//! - [`connect`]: a backend picked by the URL's scheme, as
//!   `Arc<dyn DistributedLock>`.
//! - [`DistributedLock`] (`try_acquire`, `acquire`) and
//!   [`DistributedLockExt`] (`with_lock`): what you call.
//! - [`LockGuard`]: what you hold; [`LockError`]: what can go wrong.
//! - [`redis`]: [`RedisLock`](redis::RedisLock) (one server or a cluster) and
//!   [`Redlock`](redis::Redlock), with their options.
//! - [`postgres`]: [`PgAdvisoryLock`](postgres::PgAdvisoryLock), and
//!   transaction-scoped locks for PgBouncer in [`postgres::xact`].
//! - [`fencing`]: how the storage you protect turns a stalled holder away.
//! - [`MemoryLock`]: the same contract in process, for your unit tests.
//!
//! The [README](https://github.com/distlock/distlock#readme) compares the
//! backends with measured numbers and says, per backend and per fault, what
//! a holder sees and what the next client gets.
//!
//! # Feature flags
//!
//! | feature    | default | what it adds |
//! |------------|---------|--------------|
//! | `redis`    | yes     | [`distlock::redis`](redis) (crate `distlock-redis`, driver `redis`) |
//! | `postgres` | yes     | [`distlock::postgres`](postgres) (crate `distlock-postgres`, driver `sqlx`) |
//! | `tls`      | no      | `rediss://` and PostgreSQL `sslmode=require`/`verify-full` (rustls with ring) |
//! | `metrics`  | no      | `distlock_*` counters and histograms through the `metrics` facade (`distlock::metrics`) |
//!
//! [`MemoryLock`] and the whole contract are always there. With only `redis`,
//! no `sqlx` is compiled; with only `postgres`, no `redis`.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
pub mod fencing;

pub use connect::connect;
pub use distlock_api::*;

/// The Redis backend (crate `distlock-redis`), with its driver as
/// `distlock::redis::redis`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use distlock_redis as redis;

/// The PostgreSQL advisory-lock backend (crate `distlock-postgres`), with its
/// driver as `distlock::postgres::sqlx`.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use distlock_postgres as postgres;

// The READMEs are read on GitHub and crates.io, where rustdoc's hidden `# `
// lines would show: their examples are complete programs, compiled here.
#[cfg(all(doctest, feature = "redis", feature = "postgres"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(doctest)]
#[doc = include_str!("../lock-api/README.md")]
struct ApiReadmeDoctests;

#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../lock-redis/README.md")]
struct RedisReadmeDoctests;

#[cfg(all(doctest, feature = "postgres"))]
#[doc = include_str!("../lock-postgres/README.md")]
struct PostgresReadmeDoctests;
