//! The distlock contract: one async trait for distributed locks, and the
//! machinery every backend shares.
//!
//! - [`DistributedLock`]: what users call (`try_acquire`, `acquire`).
//! - [`LockGuard`]: what they hold (fencing token, validity, `extend`,
//!   `release`, release on drop, `lost()`, opt-in `auto_renew`).
//! - [`DistributedLockExt::with_lock`]: run a closure under a renewed lock.
//! - [`LockError`]: one error type, with typed variants for bad input.
//! - [`backend`]: the small interface a backend implements
//!   ([`backend::LockBackend`], [`backend::Lease`]) and
//!   the pieces backends share; waiting (jittered exponential backoff plus
//!   wake-ups), guards and renewal are built on it here, once.
//! - [`MemoryLock`]: an in-process backend for tests.
//! - `conformance` (feature `conformance`): the behaviour suite every backend
//!   must pass.
//!
//! # Flow of one lock
//!
//! `acquire` validates the name and TTL, subscribes to wake-ups for the name,
//! then calls [`backend::LockBackend::try_lock`] until it succeeds or the wait runs out,
//! sleeping between attempts for a jittered backoff — or less, when the
//! backend says when the holder's lease ends or signals a release. A granted
//! [`backend::Lease`] is wrapped in a [`LockGuard`] with no await point in between, so a
//! cancelled acquire never leaves a lock behind. The guard's validity is
//! `attempt start + ttl − drift` on the monotonic clock; `extend` and the
//! renewal task move it forward; `release` or drop give the lease back.
//!
//! # Observability
//!
//! Every backend built on [`backend::LockBackend`] reports the same things, from this
//! crate's waiting loop, guard and renewal task.
//!
//! **Tracing** (the `tracing` crate). Every target of every distlock crate
//! starts with `distlock` (`distlock_api::…`, `distlock_redis::…`,
//! `distlock_postgres::…`), so `RUST_LOG=distlock=debug` (or a
//! `Targets`/`EnvFilter` directive `distlock=debug`) selects them all. Lock names and
//! fencing tokens are logged; nothing from connection URLs ever is. A
//! successful acquire–release cycle logs nothing at `INFO` or above.
//!
//! | What | Level | Fields |
//! |------|-------|--------|
//! | span `distlock.acquire` | `DEBUG` | `lock.name`, `lock.backend`, `lock.ttl`, `lock.wait`; recorded at the end: `lock.fencing_token` (when granted), `lock.waited`, `lock.attempts`, `outcome` (`acquired`, `timeout`, `error`) |
//! | span `distlock.try_acquire` | `DEBUG` | as above, without `lock.wait` and `lock.attempts` |
//! | events `lock acquired`, `lock extended`, `lock renewed`, `lock released`, `lock released on drop` | `DEBUG` | `lock.name`, `lock.backend`, `lock.fencing_token`, and `waited`, `ttl` or `outcome` |
//! | events `lock attempt failed; retrying until the deadline`, `lock wait timed out`, `extend failed` | `DEBUG` | `lock.name`, `lock.backend`, `error` or `waited` |
//! | event `lock renewal failed; retrying until the lease runs out` | `WARN` | `lock.name`, `lock.backend`, `lock.fencing_token`, `error` |
//! | event `lock lost` | `WARN` | `lock.name`, `lock.backend`, `lock.fencing_token`, `reason` |
//! | event `…: failed; the TTL frees the lock` (release could not reach the server) | `WARN` | `lock.name`, `lock.backend`, `lock.fencing_token`, `error` |
//!
//! **Metrics** (feature `metrics`, through the `metrics` facade crate; see
//! `distlock_api::metrics` for details and `describe()`), all labelled by
//! `backend` ([`backend::LockBackend::kind`]), never by lock name:
//!
//! | Name | Type | Extra labels | Meaning |
//! |------|------|--------------|---------|
//! | `distlock_acquire_attempts_total` | counter | | `acquire` / `try_acquire` calls |
//! | `distlock_acquire_successes_total` | counter | | calls that got the lock |
//! | `distlock_acquire_timeouts_total` | counter | | calls that did not get it because it stayed held (`Timeout`, or `try_acquire` → `None`) |
//! | `distlock_acquire_errors_total` | counter | `error` | calls that failed otherwise, by error kind |
//! | `distlock_acquire_wait_seconds` | histogram | | call to grant, for calls that got the lock |
//! | `distlock_lock_held_seconds` | histogram | | winning attempt to release or drop |
//! | `distlock_extends_total` | counter | `outcome` | manual `extend` calls: `ok`, `lost`, `error` |
//! | `distlock_renewals_total` | counter | | successful background renewals |
//! | `distlock_renewal_failures_total` | counter | | failed background renewal attempts |
//! | `distlock_locks_lost_total` | counter | | guards that found their lock lost (once per guard) |
//! | `distlock_releases_total` | counter | `outcome` | releases, explicit or on drop: `ok`, `lost`, `error` |
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
mod error;
mod ext;
mod guard;
mod lock;
mod memory;
mod observe;
mod rules;
mod timing;
mod wakeup;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;

pub use error::{BoxError, LockError};
pub use ext::DistributedLockExt;
pub use guard::{LockContext, LockGuard};
pub use lock::DistributedLock;
pub use memory::{MEMORY_MAX_TTL, MemoryLease, MemoryLock};
pub use rules::{MAX_NAME_LEN, MIN_TTL, validate_name, validate_ttl};
pub use timing::{Backoff, Drift};

// The backend interface used to live at the crate root: these keep old
// paths compiling without putting backend plumbing on the front page.
#[doc(hidden)]
pub use backend::{Attempt, Lease, LockBackend, WakeHub, Wakeup};

/// Re-exported so backends and tests name the same Tokio clock type the
/// guards use for [`LockGuard::valid_until`].
pub use tokio::time::Instant;
