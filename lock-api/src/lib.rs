//! The distlock contract: one async trait for distributed locks, and the
//! machinery every backend shares.
//!
//! - [`DistributedLock`]: what users call (`try_acquire`, `acquire`).
//! - [`LockGuard`]: what they hold (fencing token, validity, `extend`,
//!   `release`, release on drop, `lost()`, opt-in `auto_renew`).
//! - [`DistributedLockExt::with_lock`]: run a closure under a renewed lock.
//! - [`LockError`]: one error type, with typed variants for bad input.
//! - [`LockBackend`] and [`Lease`]: the small interface a backend implements;
//!   waiting (jittered exponential backoff plus wake-ups), guards and renewal
//!   are built on it here, once.
//! - [`MemoryLock`]: an in-process backend for tests.
//! - `conformance` (feature `conformance`): the behaviour suite every backend
//!   must pass.
//!
//! # Flow of one lock
//!
//! `acquire` validates the name and TTL, subscribes to wake-ups for the name,
//! then calls [`LockBackend::try_lock`] until it succeeds or the wait runs out,
//! sleeping between attempts for a jittered backoff — or less, when the
//! backend says when the holder's lease ends or signals a release. A granted
//! [`Lease`] is wrapped in a [`LockGuard`] with no await point in between, so a
//! cancelled acquire never leaves a lock behind. The guard's validity is
//! `attempt start + ttl − drift` on the monotonic clock; `extend` and the
//! renewal task move it forward; `release` or drop give the lease back.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod error;
mod ext;
mod guard;
mod lock;
mod memory;
mod rules;
mod timing;
mod wakeup;

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;

pub use backend::{Attempt, Lease, LockBackend};
pub use error::{BoxError, LockError};
pub use ext::DistributedLockExt;
pub use guard::{LockContext, LockGuard};
pub use lock::DistributedLock;
pub use memory::{MEMORY_MAX_TTL, MemoryLease, MemoryLock};
pub use rules::{MAX_NAME_LEN, MIN_TTL, validate_name, validate_ttl};
pub use timing::{Backoff, Drift};
pub use wakeup::{WakeHub, Wakeup};

/// Re-exported so backends and tests name the same Tokio clock type the
/// guards use for [`LockGuard::valid_until`].
pub use tokio::time::Instant;
