//! Lock metrics through the [`metrics`](https://docs.rs/metrics) facade crate
//! (feature `metrics`), so they reach whichever exporter the application
//! installed (Prometheus, StatsD, OpenTelemetry, …).
//!
//! Every backend built on [`LockBackend`](crate::LockBackend) reports them,
//! from the one waiting loop, guard and renewal task in this crate. Each
//! metric carries a `backend` label with [`LockBackend::kind`](crate::LockBackend::kind)
//! (`"redis"`, `"postgres"`, `"memory"`, …). Lock names are deliberately *not*
//! a label: they are unbounded (one per ticket, per user, …) and would blow up
//! the exporter's memory; look for them in the `tracing` spans instead.
//!
//! | Name | Type | Labels | Meaning |
//! |------|------|--------|---------|
//! | `distlock_acquire_attempts_total` | counter | `backend` | Calls to `acquire` or `try_acquire` (one per call, however many tries it takes). |
//! | `distlock_acquire_successes_total` | counter | `backend` | Calls that got the lock. |
//! | `distlock_acquire_timeouts_total` | counter | `backend` | Calls that did not get the lock because it stayed held: `acquire` returned [`LockError::Timeout`], or `try_acquire` returned `Ok(None)`. |
//! | `distlock_acquire_errors_total` | counter | `backend`, `error` | Calls that failed otherwise. `error` is the kind: `invalid_name`, `invalid_ttl`, `connection`, `backend`, … (never the message). |
//! | `distlock_acquire_wait_seconds` | histogram | `backend` | Time from the call to the grant, for calls that got the lock. |
//! | `distlock_lock_held_seconds` | histogram | `backend` | Time from the start of the winning attempt to the guard's release or drop. |
//! | `distlock_extends_total` | counter | `backend`, `outcome` | Calls to [`LockGuard::extend`](crate::LockGuard::extend): `ok`, `lost` (the lock was gone) or `error` (e.g. server unreachable). |
//! | `distlock_renewals_total` | counter | `backend` | Successful extends by the background renewal task ([`LockGuard::auto_renew`](crate::LockGuard::auto_renew)). |
//! | `distlock_renewal_failures_total` | counter | `backend` | Failed renewal attempts (each retry counts), including the one that finds the lock gone. |
//! | `distlock_locks_lost_total` | counter | `backend` | Guards that found their lock lost, by an extend, the renewal task or the release; once per guard. |
//! | `distlock_releases_total` | counter | `backend`, `outcome` | Releases, explicit or on drop: `ok`, `lost` (no longer ours at release time) or `error` (server unreachable; the TTL frees the lock). |
//!
//! Call [`describe`] once after installing the recorder to give exporters
//! the descriptions and units above.
//!
//! ```
//! # fn install_your_exporter() {}
//! install_your_exporter(); // e.g. metrics_exporter_prometheus::PrometheusBuilder::new().install()
//! distlock_api::metrics::describe();
//! ```
//!
//! Without the feature, none of this code exists and `metrics` is not a
//! dependency.

use std::time::Duration;

use std::sync::{PoisonError, RwLock};

use ::metrics::{
    Key, Label, Level, Metadata, Unit, counter, describe_counter, describe_histogram, with_recorder,
};

use crate::{LockError, LockGuard};

/// Counter: calls to `acquire` or `try_acquire`.
pub const ACQUIRE_ATTEMPTS: &str = "distlock_acquire_attempts_total";
/// Counter: calls that got the lock.
pub const ACQUIRE_SUCCESSES: &str = "distlock_acquire_successes_total";
/// Counter: calls that did not get the lock because it stayed held.
pub const ACQUIRE_TIMEOUTS: &str = "distlock_acquire_timeouts_total";
/// Counter: calls that failed with another error (label `error`).
pub const ACQUIRE_ERRORS: &str = "distlock_acquire_errors_total";
/// Histogram (seconds): time from the call to the grant.
pub const ACQUIRE_WAIT_SECONDS: &str = "distlock_acquire_wait_seconds";
/// Histogram (seconds): time a guard held its lock.
pub const LOCK_HELD_SECONDS: &str = "distlock_lock_held_seconds";
/// Counter: manual extends (label `outcome`).
pub const EXTENDS: &str = "distlock_extends_total";
/// Counter: successful background renewals.
pub const RENEWALS: &str = "distlock_renewals_total";
/// Counter: failed background renewal attempts.
pub const RENEWAL_FAILURES: &str = "distlock_renewal_failures_total";
/// Counter: guards that found their lock lost.
pub const LOCKS_LOST: &str = "distlock_locks_lost_total";
/// Counter: releases, explicit or on drop (label `outcome`).
pub const RELEASES: &str = "distlock_releases_total";

/// Registers the description and unit of every distlock metric with the
/// installed recorder. Call it once, after installing the recorder; metrics
/// are recorded whether or not it was called.
pub fn describe() {
    describe_counter!(
        ACQUIRE_ATTEMPTS,
        Unit::Count,
        "Calls to acquire or try_acquire"
    );
    describe_counter!(
        ACQUIRE_SUCCESSES,
        Unit::Count,
        "Acquire calls that got the lock"
    );
    describe_counter!(
        ACQUIRE_TIMEOUTS,
        Unit::Count,
        "Acquire calls that did not get the lock because it stayed held"
    );
    describe_counter!(
        ACQUIRE_ERRORS,
        Unit::Count,
        "Acquire calls that failed with an error other than a timeout, by error kind"
    );
    describe_histogram!(
        ACQUIRE_WAIT_SECONDS,
        Unit::Seconds,
        "Time from an acquire call to the grant, for calls that got the lock"
    );
    describe_histogram!(
        LOCK_HELD_SECONDS,
        Unit::Seconds,
        "Time a guard held its lock, until release or drop"
    );
    describe_counter!(
        EXTENDS,
        Unit::Count,
        "Manual extends of held locks, by outcome (ok, lost, error)"
    );
    describe_counter!(
        RENEWALS,
        Unit::Count,
        "Successful extends by the background renewal task"
    );
    describe_counter!(
        RENEWAL_FAILURES,
        Unit::Count,
        "Failed attempts of the background renewal task"
    );
    describe_counter!(LOCKS_LOST, Unit::Count, "Guards that found their lock lost");
    describe_counter!(
        RELEASES,
        Unit::Count,
        "Releases of held locks, explicit or on drop, by outcome (ok, lost, error)"
    );
}

/// Where the metrics come from, for recorders that filter on it.
static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The keys of one backend's metrics. Built (and hashed) once per backend
/// kind rather than on every call: a lock cycle records several metrics, and
/// building a labelled key allocates.
struct Keys {
    backend: &'static str,
    attempts: Key,
    successes: Key,
    timeouts: Key,
    wait: Key,
    held: Key,
    renewals: Key,
    renewal_failures: Key,
    lost: Key,
    /// By outcome: ok, lost, error.
    extends: [Key; 3],
    /// By outcome: ok, lost, error.
    releases: [Key; 3],
}

impl Keys {
    fn new(backend: &'static str) -> Self {
        let key = |name: &'static str| Key::from_parts(name, vec![Label::new("backend", backend)]);
        let by_outcome = |name: &'static str| {
            ["ok", "lost", "error"].map(|outcome| {
                Key::from_parts(
                    name,
                    vec![
                        Label::new("backend", backend),
                        Label::new("outcome", outcome),
                    ],
                )
            })
        };
        Keys {
            backend,
            attempts: key(ACQUIRE_ATTEMPTS),
            successes: key(ACQUIRE_SUCCESSES),
            timeouts: key(ACQUIRE_TIMEOUTS),
            wait: key(ACQUIRE_WAIT_SECONDS),
            held: key(LOCK_HELD_SECONDS),
            renewals: key(RENEWALS),
            renewal_failures: key(RENEWAL_FAILURES),
            lost: key(LOCKS_LOST),
            extends: by_outcome(EXTENDS),
            releases: by_outcome(RELEASES),
        }
    }

    /// The keys for `backend`. Backend kinds are a handful of constants, so
    /// the cache (leaked, one entry per kind) stays tiny.
    fn of(backend: &'static str) -> &'static Keys {
        static CACHE: RwLock<Vec<&'static Keys>> = RwLock::new(Vec::new());
        let find = |cache: &[&'static Keys]| cache.iter().copied().find(|k| k.backend == backend);
        if let Some(keys) = find(&CACHE.read().unwrap_or_else(PoisonError::into_inner)) {
            return keys;
        }
        let mut cache = CACHE.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(keys) = find(&cache) {
            return keys;
        }
        let keys: &'static Keys = Box::leak(Box::new(Keys::new(backend)));
        cache.push(keys);
        keys
    }
}

fn increment(key: &Key) {
    with_recorder(|recorder| recorder.register_counter(key, &METADATA)).increment(1);
}

fn record(key: &Key, value: Duration) {
    with_recorder(|recorder| recorder.register_histogram(key, &METADATA)).record(value);
}

/// Index of a result's outcome in [`Keys::extends`] / [`Keys::releases`].
fn outcome_index(result: &Result<(), LockError>) -> usize {
    match result {
        Ok(()) => 0,
        Err(LockError::Lost) => 1,
        Err(_) => 2,
    }
}

pub(crate) fn acquire_started(backend: &'static str) {
    increment(&Keys::of(backend).attempts);
}

pub(crate) fn acquire_finished(
    backend: &'static str,
    waited: Option<Duration>,
    result: Result<Option<&LockGuard>, &LockError>,
) {
    let keys = Keys::of(backend);
    match result {
        Ok(Some(_)) => {
            increment(&keys.successes);
            if let Some(waited) = waited {
                record(&keys.wait, waited);
            }
        }
        Ok(None) | Err(LockError::Timeout) => increment(&keys.timeouts),
        // Not on any hot path: an ad-hoc key is fine.
        Err(err) => {
            counter!(ACQUIRE_ERRORS, "backend" => backend, "error" => error_label(err))
                .increment(1);
        }
    }
}

pub(crate) fn extended(backend: &'static str, result: &Result<(), LockError>) {
    increment(&Keys::of(backend).extends[outcome_index(result)]);
}

pub(crate) fn renewed(backend: &'static str) {
    increment(&Keys::of(backend).renewals);
}

pub(crate) fn renewal_failed(backend: &'static str) {
    increment(&Keys::of(backend).renewal_failures);
}

pub(crate) fn lost(backend: &'static str) {
    increment(&Keys::of(backend).lost);
}

pub(crate) fn held(backend: &'static str, held: Duration) {
    record(&Keys::of(backend).held, held);
}

pub(crate) fn released(backend: &'static str, result: &Result<(), LockError>) {
    increment(&Keys::of(backend).releases[outcome_index(result)]);
}

/// The label value naming an error's kind: a closed set, never the message.
fn error_label(err: &LockError) -> &'static str {
    match err {
        LockError::Timeout => "timeout",
        LockError::Lost => "lost",
        LockError::InvalidName(_) => "invalid_name",
        LockError::InvalidTtl(_) => "invalid_ttl",
        LockError::InvalidUrl(_) => "invalid_url",
        LockError::InvalidConfig(_) => "invalid_config",
        LockError::Connection(_) => "connection",
        LockError::Backend(_) => "backend",
    }
}
