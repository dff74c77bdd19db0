//! Where the lock machinery reports what it does: `tracing` spans and events
//! always, `metrics` counters and histograms with the `metrics` feature.
//!
//! Kept in one place so the waiting loop and the guard stay readable, and so
//! the hot path of an uncontended cycle pays for no more than a disabled span
//! when nobody listens: values that cost something (clock reads, formatting)
//! are only computed when a span or the `metrics` feature wants them. Without
//! the feature, the metric hooks are empty and compile away.
//!
//! What is reported, and under which names, is documented for users in the
//! crate docs (section *Observability*) and in `distlock_api::metrics`.

use std::time::Duration;

use tracing::Span;
use tracing::field::{Empty, debug};

use crate::{LockError, LockGuard};

/// The span around one [`acquire`](crate::DistributedLock::acquire): name,
/// backend, TTL and wait up front; token, time waited, attempts and outcome
/// recorded when it ends.
pub(crate) fn acquire_span(
    name: &str,
    backend: &'static str,
    ttl: Duration,
    wait: Duration,
) -> Span {
    tracing::debug_span!(
        "distlock.acquire",
        lock.name = name,
        lock.backend = backend,
        lock.ttl = ?ttl,
        lock.wait = ?wait,
        lock.fencing_token = Empty,
        lock.waited = Empty,
        lock.attempts = Empty,
        outcome = Empty,
    )
}

/// The span around one [`try_acquire`](crate::DistributedLock::try_acquire).
pub(crate) fn try_acquire_span(name: &str, backend: &'static str, ttl: Duration) -> Span {
    tracing::debug_span!(
        "distlock.try_acquire",
        lock.name = name,
        lock.backend = backend,
        lock.ttl = ?ttl,
        lock.fencing_token = Empty,
        lock.waited = Empty,
        outcome = Empty,
    )
}

/// Records how many attempts a wait took (only the waiting loop knows).
pub(crate) fn record_attempts(span: &Span, attempts: u32) {
    if !span.is_disabled() {
        span.record("lock.attempts", attempts);
    }
}

/// An acquire or try_acquire call begins.
#[inline]
pub(crate) fn acquire_started(backend: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::acquire_started(backend);
    #[cfg(not(feature = "metrics"))]
    let _ = backend;
}

/// An acquire or try_acquire call ends: `Ok(Some)` granted, `Ok(None)` not
/// granted in time (held by someone else), `Err` anything else.
pub(crate) fn acquire_finished(
    span: &Span,
    backend: &'static str,
    started: tokio::time::Instant,
    result: Result<Option<&LockGuard>, &LockError>,
) {
    let traced = !span.is_disabled();
    // One clock read, shared by the span and the histogram, and only when
    // one of them wants it.
    let waited = (traced || cfg!(feature = "metrics")).then(|| started.elapsed());
    let outcome = match result {
        Ok(Some(guard)) => {
            tracing::debug!(
                lock.name = %guard.name(),
                lock.backend = backend,
                lock.fencing_token = guard.fencing_token(),
                waited = ?waited.unwrap_or_else(|| started.elapsed()),
                "lock acquired"
            );
            if traced {
                span.record("lock.fencing_token", guard.fencing_token());
            }
            "acquired"
        }
        Ok(None) | Err(LockError::Timeout) => "timeout",
        Err(_) => "error",
    };
    if traced {
        span.record("outcome", outcome);
        if let Some(waited) = waited {
            span.record("lock.waited", debug(waited));
        }
    }
    #[cfg(feature = "metrics")]
    crate::metrics::acquire_finished(backend, waited, result);
}

/// A manual [`LockGuard::extend`] ended.
#[inline]
pub(crate) fn extended(backend: &'static str, result: &Result<(), LockError>) {
    #[cfg(feature = "metrics")]
    crate::metrics::extended(backend, result);
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, result);
}

/// The renewal task extended the lock.
#[inline]
pub(crate) fn renewed(backend: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::renewed(backend);
    #[cfg(not(feature = "metrics"))]
    let _ = backend;
}

/// One renewal attempt failed (the lock may still be ours; it is retried).
#[inline]
pub(crate) fn renewal_failed(backend: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::renewal_failed(backend);
    #[cfg(not(feature = "metrics"))]
    let _ = backend;
}

/// A guard found its lock lost (counted once per guard).
#[inline]
pub(crate) fn lost(backend: &'static str) {
    #[cfg(feature = "metrics")]
    crate::metrics::lost(backend);
    #[cfg(not(feature = "metrics"))]
    let _ = backend;
}

/// A guard stopped holding its lock (released or dropped): how long it held it.
#[inline]
pub(crate) fn held(backend: &'static str, acquired_at: tokio::time::Instant) {
    #[cfg(feature = "metrics")]
    crate::metrics::held(backend, acquired_at.elapsed());
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, acquired_at);
}

/// A release (explicit or on drop) ended.
#[inline]
pub(crate) fn released(backend: &'static str, result: &Result<(), LockError>) {
    #[cfg(feature = "metrics")]
    crate::metrics::released(backend, result);
    #[cfg(not(feature = "metrics"))]
    let _ = (backend, result);
}

/// The label value for a release or extend result.
pub(crate) fn outcome_label(result: &Result<(), LockError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(LockError::Lost) => "lost",
        Err(_) => "error",
    }
}
