//! The behaviour suite every backend must pass, so "works like the others"
//! is checked, not hoped for.
//!
//! Each check is a public async function that takes any
//! [`DistributedLock`] — and, where two parties are needed, `other`: a
//! *second, independent client* of the same server (for [`MemoryLock`],
//! a clone) — plus a [`Config`] for what differs between backends. A check
//! returns when the backend behaves and panics with a message naming the
//! check and the rule when it does not, so it is meant to be called from a
//! test (as object_store's `integration.rs` is).
//!
//! Every check takes locks under its own random names, so checks may run in
//! parallel against one server; every operation is bounded in time, so a
//! hanging backend fails instead of stalling CI; and timing bounds are
//! generous (see [`Config`]), so the suite is not flaky on a loaded machine.
//! Checks that need the machine to keep up with a TTL (extend, renewal,
//! `with_lock`, the timeout bound) only fail at once on evidence that two
//! parties held a lock together; any other miss is retried with a doubled
//! TTL before it counts.
//!
//! # Running the suite for a backend
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to one
//! `#[tokio::test]` per check, given a set-up that returns a [`Fixture`]
//! (or a `(lock, other, config)` tuple):
//!
//! ```
//! use std::sync::Arc;
//! use distlock_api::MemoryLock;
//! use distlock_api::conformance::{Config, Fixture};
//!
//! async fn memory() -> Fixture {
//!     let locks = MemoryLock::new();
//!     Fixture::new(Arc::new(locks.clone()), Arc::new(locks)).with_config(Config::default())
//! }
//!
//! distlock_api::conformance_tests!(memory);
//! # fn main() {}
//! ```
//!
//! A network backend's test file does the same with its own set-up, and
//! hands the throwaway server to [`Fixture::keep_alive`] so it lives as long
//! as the test:
//!
//! ```ignore
//! distlock_api::conformance_tests!(|| async {
//!     let server = distlock_testkit::RedisServer::start().expect("redis-server");
//!     let lock = RedisLock::connect(&server.url()).await.expect("connect");
//!     let other = RedisLock::connect(&server.url()).await.expect("connect");
//!     Fixture::new(Arc::new(lock), Arc::new(other))
//!         .with_config(Config { short_ttl: Duration::from_millis(500), ..Config::default() })
//!         .keep_alive(server)
//! });
//! ```
//!
//! [`run_all`] runs every check in turn, for a single test or a quick manual run.
//!
//! # The checks
//!
//! | check | rule |
//! |---|---|
//! | [`mutual_exclusion`] | one holder at a time under contention; tokens rise in critical-section order |
//! | [`try_acquire_on_held_lock`] | `try_acquire` of a held lock is `None`, from any client; `Some` after release |
//! | [`ttl_expiry_frees_lock`] | a lock that is not extended is free after its TTL; the old guard is lost |
//! | [`extend_keeps_lock`] | `extend` keeps the lock past its first TTL |
//! | [`stale_guard_cannot_extend_or_release`] | only the holder's token can extend or release |
//! | [`fencing_tokens_increase`] | tokens strictly increase per name, across clients |
//! | [`distinct_names_are_distinct_locks`] | names are opaque: odd characters, 1024 bytes, prefixes |
//! | [`invalid_input_is_rejected`] | `InvalidName` / `InvalidTtl`, never a panic or overflow |
//! | [`acquire_times_out_on_time`] | `Timeout` neither before the wait nor long after it |
//! | [`cancelled_wait_leaves_no_lock`] | dropping a waiting `acquire` leaves no lock behind |
//! | [`cancelled_acquire_leaves_no_lock`] | cancelling an `acquire` of a free lock at any point leaves no lock |
//! | [`dropped_guard_frees_lock`] | a dropped guard frees the lock long before its TTL |
//! | [`auto_renew_keeps_lock`] | renewal keeps the lock for many TTLs and stops at release |
//! | [`with_lock_holds_and_renews`] | `with_lock` holds, renews, and releases |
//! | [`lost_resolves_after_validity`] | `lost()` and `is_lost()` agree with the validity |
//!
//! One more check needs the backend's help and is called by each backend's
//! tests with a hook that takes a held lock away on the server (it is not in
//! [`run_all`] or [`conformance_tests!`](crate::conformance_tests)):
//!
//! | check | rule |
//! |---|---|
//! | [`with_lock_reports_lost_lock`] | `with_lock` returns `Lost`, not `Ok`, when the lock was taken away while its closure ran |
//!
//! [`MemoryLock`]: crate::MemoryLock

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::DistributedLock;

pub mod broken;
mod exclusion;
mod expiry;
mod fencing;
mod input;
mod renewal;
mod support;
mod theft;
mod waiting;

pub use exclusion::{
    distinct_names_are_distinct_locks, mutual_exclusion, try_acquire_on_held_lock,
};
pub use expiry::{
    lost_resolves_after_validity, stale_guard_cannot_extend_or_release, ttl_expiry_frees_lock,
};
pub use fencing::fencing_tokens_increase;
pub use input::invalid_input_is_rejected;
pub use renewal::{auto_renew_keeps_lock, extend_keeps_lock, with_lock_holds_and_renews};
pub use theft::with_lock_reports_lost_lock;
pub use waiting::{
    acquire_times_out_on_time, cancelled_acquire_leaves_no_lock, cancelled_wait_leaves_no_lock,
    dropped_guard_frees_lock,
};

/// What differs between backends: TTLs, time allowances, capabilities.
///
/// The defaults suit an in-process or local backend on a slow, loaded CI
/// machine. Change fields with struct update syntax:
///
/// ```
/// use std::time::Duration;
/// use distlock_api::conformance::Config;
///
/// let config = Config { short_ttl: Duration::from_millis(500), ..Config::default() };
/// assert!(config.ttl_enforced_by_server);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The TTL of locks that checks let run out, and the base TTL of the
    /// renewal checks (which double it on a retry). It sets how long the
    /// TTL-based checks take. Default 300 ms; a remote server may want more.
    pub short_ttl: Duration,
    /// The TTL of locks that must not run out during a check. Default 30 s.
    pub long_ttl: Duration,
    /// How late an expected event may come: a TTL-expired lock becoming
    /// free, a `Timeout` after its wait, `lost()` after the validity.
    /// Default 1 s.
    pub slack: Duration,
    /// How long a release in the background (after a guard is dropped or an
    /// acquire is cancelled) may take to free a lock. Must be well under
    /// `long_ttl`, so that a lock left behind shows up as a timeout rather
    /// than being freed by its TTL. Default 2 s.
    pub release_wait: Duration,
    /// The longest any single call may take before the suite calls it hung.
    /// Default 10 s.
    pub op_timeout: Duration,
    /// Whether the server frees a lock when its TTL runs out. `false` for a
    /// backend whose locks live until released or until their connection
    /// ends (PostgreSQL advisory locks): the checks that need a lock to
    /// expire on the server then check only the guard's side. Default `true`.
    pub ttl_enforced_by_server: bool,
    /// Tasks in [`mutual_exclusion`], half on each client. Default 32.
    pub contention_tasks: usize,
    /// Lock cycles per task in [`mutual_exclusion`]. Default 100.
    pub contention_cycles: usize,
    /// The smallest TTL the backend accepts. Default [`MIN_TTL`](crate::MIN_TTL);
    /// more for a backend whose clock-drift allowance would leave a shorter
    /// lease no validity (Redlock refuses those with `InvalidTtl`).
    pub min_ttl: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            short_ttl: Duration::from_millis(300),
            long_ttl: Duration::from_secs(30),
            slack: Duration::from_secs(1),
            release_wait: Duration::from_secs(2),
            op_timeout: Duration::from_secs(10),
            ttl_enforced_by_server: true,
            contention_tasks: 32,
            contention_cycles: 100,
            min_ttl: crate::MIN_TTL,
        }
    }
}

/// Two clients of one lock server, the [`Config`] to check them with, and
/// whatever must stay alive while they are checked (a throwaway server).
///
/// What a set-up for [`conformance_tests!`](crate::conformance_tests) returns.
/// A `(lock, other, config)` or `(lock, other, config, keep_alive)` tuple
/// converts into one.
pub struct Fixture {
    /// The first client.
    pub lock: Arc<dyn DistributedLock>,
    /// A second, independent client of the same server.
    pub other: Arc<dyn DistributedLock>,
    /// The configuration for this backend.
    pub config: Config,
    /// Dropped after the clients. (In a mutex only so that the fixture is
    /// `Sync` whatever is kept.)
    keep_alive: std::sync::Mutex<Vec<Box<dyn Send>>>,
}

impl Fixture {
    /// Two clients of one server, with the default [`Config`].
    ///
    /// `other` must be a separate client (its own connection), not the same
    /// object as `lock`, or the checks across clients prove nothing.
    pub fn new(lock: Arc<dyn DistributedLock>, other: Arc<dyn DistributedLock>) -> Self {
        Fixture {
            lock,
            other,
            config: Config::default(),
            keep_alive: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Keeps `value` (a server process, a temp dir, …) alive until the
    /// fixture is dropped, after the clients.
    pub fn keep_alive(mut self, value: impl Send + 'static) -> Self {
        self.keep_alive
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(value));
        self
    }

    /// Runs a set-up (an `async fn` or a closure returning a future) and
    /// converts what it returns. Used by [`conformance_tests!`](crate::conformance_tests).
    pub async fn set_up<S, F, T>(setup: S) -> Fixture
    where
        S: FnOnce() -> F + Send,
        F: Future<Output = T> + Send,
        T: Into<Fixture>,
    {
        setup().await.into()
    }
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl From<(Arc<dyn DistributedLock>, Arc<dyn DistributedLock>, Config)> for Fixture {
    fn from(
        (lock, other, config): (Arc<dyn DistributedLock>, Arc<dyn DistributedLock>, Config),
    ) -> Self {
        Fixture::new(lock, other).with_config(config)
    }
}

impl<K: Send + 'static>
    From<(
        Arc<dyn DistributedLock>,
        Arc<dyn DistributedLock>,
        Config,
        K,
    )> for Fixture
{
    fn from(
        (lock, other, config, keep): (
            Arc<dyn DistributedLock>,
            Arc<dyn DistributedLock>,
            Config,
            K,
        ),
    ) -> Self {
        Fixture::new(lock, other)
            .with_config(config)
            .keep_alive(keep)
    }
}

/// Runs every check, one after the other, and panics at the first violation.
///
/// `other` must be a second, independent client of the server `lock` talks to.
pub async fn run_all(lock: &dyn DistributedLock, other: &dyn DistributedLock, config: &Config) {
    mutual_exclusion(lock, other, config).await;
    try_acquire_on_held_lock(lock, other, config).await;
    ttl_expiry_frees_lock(lock, other, config).await;
    extend_keeps_lock(lock, other, config).await;
    stale_guard_cannot_extend_or_release(lock, other, config).await;
    fencing_tokens_increase(lock, other, config).await;
    distinct_names_are_distinct_locks(lock, other, config).await;
    invalid_input_is_rejected(lock, config).await;
    acquire_times_out_on_time(lock, other, config).await;
    cancelled_wait_leaves_no_lock(lock, other, config).await;
    cancelled_acquire_leaves_no_lock(lock, other, config).await;
    dropped_guard_frees_lock(lock, other, config).await;
    auto_renew_keeps_lock(lock, other, config).await;
    with_lock_holds_and_renews(lock, other, config).await;
    lost_resolves_after_validity(lock, config).await;
}

/// Uniform entry points for [`conformance_tests!`](crate::conformance_tests):
/// one per check, each taking the whole [`Fixture`].
#[doc(hidden)]
pub mod __macro_support {
    use super::Fixture;

    macro_rules! by_fixture {
        ($($check:ident($($arg:ident),*);)*) => {$(
            #[doc = concat!("Runs [`", stringify!($check), "`](super::", stringify!($check), ") on a fixture.")]
            pub async fn $check(fixture: &Fixture) {
                super::$check($(by_fixture!(@arg fixture, $arg)),*).await;
            }
        )*};
        (@arg $fixture:ident, lock) => { &*$fixture.lock };
        (@arg $fixture:ident, other) => { &*$fixture.other };
        (@arg $fixture:ident, config) => { &$fixture.config };
    }

    by_fixture! {
        mutual_exclusion(lock, other, config);
        try_acquire_on_held_lock(lock, other, config);
        ttl_expiry_frees_lock(lock, other, config);
        extend_keeps_lock(lock, other, config);
        stale_guard_cannot_extend_or_release(lock, other, config);
        fencing_tokens_increase(lock, other, config);
        distinct_names_are_distinct_locks(lock, other, config);
        invalid_input_is_rejected(lock, config);
        acquire_times_out_on_time(lock, other, config);
        cancelled_wait_leaves_no_lock(lock, other, config);
        cancelled_acquire_leaves_no_lock(lock, other, config);
        dropped_guard_frees_lock(lock, other, config);
        auto_renew_keeps_lock(lock, other, config);
        with_lock_holds_and_renews(lock, other, config);
        lost_resolves_after_validity(lock, config);
        run_all(lock, other, config);
    }
}

/// Expands to one `#[tokio::test]` (multi-threaded, two workers) per
/// conformance check, each named after its check and each running `setup`
/// for its own [`Fixture`](crate::conformance::Fixture).
///
/// `setup` is anything callable with no arguments that returns a future of
/// a `Fixture` (or of a tuple that converts into one): the path of an
/// `async fn`, or a closure `|| async { … }`. The calling crate needs `tokio`
/// with the `macros` and `rt-multi-thread` features (as a dev-dependency).
/// Invoke it at most once per module; wrap it in a `mod` to run the suite
/// with two set-ups in one file.
///
/// ```
/// use std::sync::Arc;
/// use distlock_api::{DistributedLock, MemoryLock};
/// use distlock_api::conformance::Config;
///
/// mod memory {
///     use super::*;
///     distlock_api::conformance_tests!(|| async {
///         let locks = MemoryLock::new();
///         let lock: Arc<dyn DistributedLock> = Arc::new(locks.clone());
///         let other: Arc<dyn DistributedLock> = Arc::new(locks);
///         (lock, other, Config::default())
///     });
/// }
/// # fn main() {}
/// ```
///
/// It does not include [`run_all`](crate::conformance::run_all), which
/// repeats the checks; call that from a test of your own if you want it.
#[macro_export]
macro_rules! conformance_tests {
    ($setup:expr $(,)?) => {
        $crate::__conformance_test!($setup, mutual_exclusion);
        $crate::__conformance_test!($setup, try_acquire_on_held_lock);
        $crate::__conformance_test!($setup, ttl_expiry_frees_lock);
        $crate::__conformance_test!($setup, extend_keeps_lock);
        $crate::__conformance_test!($setup, stale_guard_cannot_extend_or_release);
        $crate::__conformance_test!($setup, fencing_tokens_increase);
        $crate::__conformance_test!($setup, distinct_names_are_distinct_locks);
        $crate::__conformance_test!($setup, invalid_input_is_rejected);
        $crate::__conformance_test!($setup, acquire_times_out_on_time);
        $crate::__conformance_test!($setup, cancelled_wait_leaves_no_lock);
        $crate::__conformance_test!($setup, cancelled_acquire_leaves_no_lock);
        $crate::__conformance_test!($setup, dropped_guard_frees_lock);
        $crate::__conformance_test!($setup, auto_renew_keeps_lock);
        $crate::__conformance_test!($setup, with_lock_holds_and_renews);
        $crate::__conformance_test!($setup, lost_resolves_after_validity);
    };
}

/// One test of [`conformance_tests!`]; not for direct use.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test {
    ($setup:expr, $check:ident) => {
        #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $check() {
            let fixture = $crate::conformance::Fixture::set_up($setup).await;
            $crate::conformance::__macro_support::$check(&fixture).await;
        }
    };
}
