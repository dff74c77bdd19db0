//! What the lock machinery reports: `tracing` spans and events (always) and
//! `metrics` counters and histograms (feature `metrics`).
//!
//! Each test installs its own subscriber or recorder for its own thread only
//! and runs a current-thread runtime, so background tasks (renewal, release on
//! drop) report to it too and parallel tests do not see each other.

use std::cell::RefCell;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;

use distlock_api::{DistributedLock, LockError, MemoryLock};

mod support;
use support::*;

/// An acquire on [`Starved`] with a 200 ms wait: it ends at the deadline
/// with the backend's own connection error.
async fn starved_acquire() {
    let started = tokio::time::Instant::now();
    let err = Starved
        .acquire(
            "starved",
            Duration::from_secs(5),
            Duration::from_millis(200),
        )
        .await
        .expect_err("never granted");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    assert!(err.to_string().contains(STARVED), "{err}");
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(200),
        "ends at the deadline"
    );
}

/// A current-thread runtime with a paused clock: renewal schedules run
/// deterministically, and every task runs on the test's thread.
fn runtime() -> tokio::runtime::Runtime {
    tracing_output::install();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a Tokio runtime")
}

mod tracing_output {
    use super::*;

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record};
    use tracing::{Event, Level, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
    use tracing_subscriber::registry::LookupSpan;

    #[derive(Debug, Clone)]
    struct SpanRecord {
        id: u64,
        name: &'static str,
        target: &'static str,
        level: Level,
        fields: Vec<(String, String)>,
    }

    #[derive(Debug, Clone)]
    struct EventRecord {
        level: Level,
        target: &'static str,
        fields: Vec<(String, String)>,
    }

    impl EventRecord {
        fn message(&self) -> &str {
            field(&self.fields, "message").unwrap_or("")
        }
    }

    #[derive(Default)]
    struct Captured {
        spans: Vec<SpanRecord>,
        events: Vec<EventRecord>,
    }

    thread_local! {
        /// What this thread's test captures; `None` while it captures nothing.
        static CAPTURED: RefCell<Option<Captured>> = const { RefCell::new(None) };
    }

    fn with_captured(f: impl FnOnce(&mut Captured)) {
        CAPTURED.with(|captured| {
            if let Some(captured) = captured.borrow_mut().as_mut() {
                f(captured);
            }
        });
    }

    /// A layer that keeps every span's fields (as created and as recorded
    /// later) and every event, for the thread that asked.
    ///
    /// It is installed once, globally, before any test touches a lock:
    /// thread-local subscribers set while other threads hit the same
    /// callsites race with tracing's interest cache and can miss events.
    struct Capture;

    pub(super) fn install() {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Capture))
                .expect("no other global subscriber in this test binary");
        });
    }

    struct Fields<'a>(&'a mut Vec<(String, String)>);

    impl Visit for Fields<'_> {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0.push((field.name().to_owned(), format!("{value:?}")));
        }

        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_owned(), value.to_owned()));
        }
    }

    impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
        fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
            with_captured(|captured| {
                let mut fields = Vec::new();
                attrs.record(&mut Fields(&mut fields));
                captured.spans.push(SpanRecord {
                    id: id.into_u64(),
                    name: attrs.metadata().name(),
                    target: attrs.metadata().target(),
                    level: *attrs.metadata().level(),
                    fields,
                });
            });
        }

        fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
            with_captured(|captured| {
                if let Some(span) = captured
                    .spans
                    .iter_mut()
                    .rev()
                    .find(|span| span.id == id.into_u64())
                {
                    values.record(&mut Fields(&mut span.fields));
                }
            });
        }

        fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
            with_captured(|captured| {
                let mut fields = Vec::new();
                event.record(&mut Fields(&mut fields));
                captured.events.push(EventRecord {
                    level: *event.metadata().level(),
                    target: event.metadata().target(),
                    fields,
                });
            });
        }
    }

    fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
        fields
            .iter()
            .rev()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }

    /// Runs `test` on a fresh runtime with the capturing subscriber as this
    /// thread's default.
    fn traced<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> Captured {
        let runtime = runtime();
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(Captured::default()));
        runtime.block_on(test());
        drop(runtime);
        CAPTURED
            .with(|captured| captured.borrow_mut().take())
            .unwrap_or_default()
    }

    /// Nothing that looks like a connection string or a credential, in field
    /// names or values.
    fn assert_no_secrets(fields: &[(String, String)]) {
        for (name, value) in fields {
            let name = name.to_lowercase();
            for word in ["url", "password", "secret", "dsn"] {
                assert!(!name.contains(word), "field {name:?} looks like a secret");
            }
            assert!(
                !value.contains("://"),
                "field {name} = {value:?} holds a URL"
            );
            assert!(
                !value.to_lowercase().contains("password"),
                "field {name} = {value:?} mentions a password"
            );
        }
    }

    #[test]
    fn the_acquire_span_carries_name_backend_token_and_outcome() {
        let captured = traced(|| async {
            let locks = MemoryLock::new();
            let guard = locks
                .acquire("ticket:7", Duration::from_secs(5), Duration::from_secs(1))
                .await
                .expect("free");
            assert_eq!(guard.fencing_token(), 1);
            guard.release().await.expect("still ours");
        });

        let span = captured
            .spans
            .iter()
            .find(|span| span.name == "distlock.acquire")
            .expect("an acquire span");
        assert_eq!(field(&span.fields, "lock.name"), Some("ticket:7"));
        assert_eq!(field(&span.fields, "lock.backend"), Some("memory"));
        assert_eq!(field(&span.fields, "lock.ttl"), Some("5s"));
        assert_eq!(field(&span.fields, "lock.wait"), Some("1s"));
        assert_eq!(field(&span.fields, "lock.fencing_token"), Some("1"));
        assert_eq!(field(&span.fields, "lock.attempts"), Some("1"));
        assert_eq!(field(&span.fields, "outcome"), Some("acquired"));
        assert!(field(&span.fields, "lock.waited").is_some());

        let messages: Vec<&str> = captured.events.iter().map(EventRecord::message).collect();
        assert!(messages.contains(&"lock acquired"), "{messages:?}");
        assert!(messages.contains(&"lock released"), "{messages:?}");
        for event in &captured.events {
            assert!(
                event.level >= Level::DEBUG,
                "a successful cycle logged at {}: {:?}",
                event.level,
                event.fields
            );
            assert_no_secrets(&event.fields);
        }
        for span in &captured.spans {
            assert_no_secrets(&span.fields);
        }
        // `RUST_LOG=distlock=debug` selects everything distlock reports.
        let filter: tracing_subscriber::filter::Targets =
            "distlock=debug".parse().expect("a filter");
        for (target, level) in captured
            .spans
            .iter()
            .map(|span| (span.target, span.level))
            .chain(
                captured
                    .events
                    .iter()
                    .map(|event| (event.target, event.level)),
            )
        {
            assert!(
                filter.would_enable(target, &level),
                "target {target} is not selected by distlock=debug"
            );
        }
    }

    #[test]
    fn try_acquire_and_timeouts_record_their_outcome() {
        let captured = traced(|| async {
            let locks = MemoryLock::new();
            let guard = locks
                .try_acquire("busy", Duration::from_secs(5))
                .await
                .expect("answer")
                .expect("free");
            assert!(
                locks
                    .try_acquire("busy", Duration::from_secs(5))
                    .await
                    .expect("answer")
                    .is_none()
            );
            let timed_out = locks
                .acquire("busy", Duration::from_secs(5), Duration::from_millis(50))
                .await;
            assert!(matches!(timed_out, Err(LockError::Timeout)));
            guard.release().await.expect("still ours");
        });

        let outcomes: Vec<(&str, Option<&str>)> = captured
            .spans
            .iter()
            .map(|span| (span.name, field(&span.fields, "outcome")))
            .collect();
        assert_eq!(
            outcomes,
            [
                ("distlock.try_acquire", Some("acquired")),
                ("distlock.try_acquire", Some("timeout")),
                ("distlock.acquire", Some("timeout")),
            ]
        );
        let timeout_span = &captured.spans[2];
        assert_eq!(field(&timeout_span.fields, "lock.name"), Some("busy"));
        assert!(
            field(&timeout_span.fields, "lock.attempts")
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 1)
        );
    }

    /// An attempt that waits for a resource of its own until the deadline
    /// returns its own error, and the span records that error, not a
    /// timeout: what is recorded is what the caller gets.
    #[test]
    fn an_attempt_that_runs_into_the_deadline_reports_its_own_error() {
        let captured = traced(starved_acquire);
        let span = captured
            .spans
            .iter()
            .find(|span| span.name == "distlock.acquire")
            .expect("an acquire span");
        assert_eq!(field(&span.fields, "outcome"), Some("error"));
        assert_eq!(field(&span.fields, "lock.attempts"), None);
        let messages: Vec<&str> = captured.events.iter().map(EventRecord::message).collect();
        assert!(!messages.contains(&"lock wait timed out"), "{messages:?}");
    }

    #[test]
    fn a_lock_lost_under_renewal_is_a_warning() {
        let captured = traced(|| async {
            let locks = Switchable::default();
            let mut guard = locks
                .acquire("renew-lost", Duration::from_millis(300), Duration::ZERO)
                .await
                .expect("free");
            guard.auto_renew();
            locks.extend.store(EXTEND_LOST, Ordering::SeqCst);
            bounded("lost() after a failed renewal", guard.lost()).await;
            assert!(matches!(guard.release().await, Err(LockError::Lost)));
        });

        let lost: Vec<&EventRecord> = captured
            .events
            .iter()
            .filter(|event| event.message() == "lock lost")
            .collect();
        assert_eq!(lost.len(), 1, "one warning per lost lock: {lost:?}");
        assert_eq!(lost[0].level, Level::WARN);
        assert_eq!(field(&lost[0].fields, "lock.name"), Some("renew-lost"));
        assert_eq!(field(&lost[0].fields, "lock.backend"), Some("switchable"));
        assert_eq!(field(&lost[0].fields, "lock.fencing_token"), Some("1"));
    }

    #[test]
    fn a_failed_renewal_is_a_warning() {
        let captured = traced(|| async {
            let locks = Switchable::default();
            let ttl = Duration::from_millis(600);
            let mut guard = locks
                .acquire("renew-outage", ttl, Duration::ZERO)
                .await
                .expect("free");
            guard.auto_renew();
            locks.extend.store(EXTEND_UNREACHABLE, Ordering::SeqCst);
            tokio::time::sleep(ttl / 3 + ttl / 20).await;
            locks.extend.store(EXTEND_OK, Ordering::SeqCst);
            tokio::time::sleep(ttl).await;
            assert!(!guard.is_lost());
            guard.release().await.expect("still ours");
        });

        let failure = captured
            .events
            .iter()
            .find(|event| event.message().starts_with("lock renewal failed"))
            .expect("a renewal-failure event");
        assert_eq!(failure.level, Level::WARN);
        assert_eq!(field(&failure.fields, "lock.name"), Some("renew-outage"));
        assert!(
            field(&failure.fields, "error").is_some_and(|e| e.contains("unreachable")),
            "{failure:?}"
        );
        assert!(
            captured
                .events
                .iter()
                .any(|event| event.message() == "lock renewed" && event.level == Level::DEBUG)
        );
        assert!(
            !captured
                .events
                .iter()
                .any(|event| event.message() == "lock lost")
        );
    }

    /// A release cancelled after the server carried it out, whose answer
    /// comes late: the guard must report it as it happened (released, ok),
    /// not as a lost lock found by a second release in the background.
    #[test]
    fn a_release_cancelled_after_the_server_ran_is_not_reported_lost() {
        let captured = traced(|| async {
            let locks = SlowAnswer::default();
            let guard = locks
                .acquire("cancelled-release", Duration::from_secs(30), Duration::ZERO)
                .await
                .expect("free");
            cancel_release_after_it_ran(&locks, guard).await;
            let next = locks
                .try_acquire("cancelled-release", Duration::from_secs(30))
                .await
                .expect("try_acquire")
                .expect("the lock is free after the release");
            locks.open_gate();
            next.release().await.expect("still ours");
        });

        let lost: Vec<&EventRecord> = captured
            .events
            .iter()
            .filter(|event| event.message() == "lock lost")
            .collect();
        assert!(lost.is_empty(), "a released lock reported lost: {lost:?}");
        let released: Vec<&EventRecord> = captured
            .events
            .iter()
            .filter(|event| event.message().starts_with("lock released"))
            .collect();
        assert_eq!(
            released.len(),
            2,
            "one release event per guard: {released:?}"
        );
        for event in released {
            assert_eq!(field(&event.fields, "outcome"), Some("ok"), "{event:?}");
        }
    }
}

#[cfg(feature = "metrics")]
mod metrics_output {
    use super::*;

    use metrics_util::CompositeKey;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    /// One metric as the test reads it: name, sorted labels, value.
    #[derive(Debug)]
    struct Metric {
        name: String,
        labels: Vec<(String, String)>,
        unit: Option<metrics::Unit>,
        description: Option<String>,
        value: DebugValue,
    }

    fn snapshot(snapshotter: &Snapshotter) -> Vec<Metric> {
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, unit, description, value): (CompositeKey, _, _, _)| {
                let mut labels: Vec<(String, String)> = key
                    .key()
                    .labels()
                    .map(|label| (label.key().to_owned(), label.value().to_owned()))
                    .collect();
                labels.sort();
                Metric {
                    name: key.key().name().to_owned(),
                    labels,
                    unit,
                    description: description.map(|d| d.to_string()),
                    value,
                }
            })
            .collect()
    }

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut labels: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        labels
    }

    /// The counter `name` with exactly these labels; 0 when never incremented.
    fn counter(metrics: &[Metric], name: &str, with: &[(&str, &str)]) -> u64 {
        let with = labels(with);
        metrics
            .iter()
            .filter(|m| m.name == name && m.labels == with)
            .map(|m| match m.value {
                DebugValue::Counter(n) => n,
                ref other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    /// The samples of histogram `name` with exactly these labels.
    fn histogram(metrics: &[Metric], name: &str, with: &[(&str, &str)]) -> Vec<f64> {
        let with = labels(with);
        metrics
            .iter()
            .filter(|m| m.name == name && m.labels == with)
            .flat_map(|m| match &m.value {
                DebugValue::Histogram(samples) => {
                    samples.iter().map(|s| s.into_inner()).collect::<Vec<f64>>()
                }
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect::<Vec<f64>>()
    }

    /// Runs `test` on a fresh runtime with a debugging recorder as this
    /// thread's recorder, and returns what was recorded.
    fn recorded<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> Vec<Metric> {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        {
            let _local = metrics::set_default_local_recorder(&recorder);
            distlock_api::metrics::describe();
            runtime().block_on(test());
        }
        snapshot(&snapshotter)
    }

    const MEMORY: &[(&str, &str)] = &[("backend", "memory")];
    const SWITCHABLE: &[(&str, &str)] = &[("backend", "switchable")];

    #[test]
    fn a_cycle_counts_one_attempt_success_and_release_labelled_by_backend() {
        let metrics = recorded(|| async {
            let locks = MemoryLock::new();
            let guard = locks
                .acquire("ticket:1", Duration::from_secs(5), Duration::from_secs(1))
                .await
                .expect("free");
            tokio::time::sleep(Duration::from_millis(250)).await;
            guard.release().await.expect("still ours");
        });

        assert_eq!(
            counter(&metrics, "distlock_acquire_attempts_total", MEMORY),
            1
        );
        assert_eq!(
            counter(&metrics, "distlock_acquire_successes_total", MEMORY),
            1
        );
        assert_eq!(
            counter(&metrics, "distlock_acquire_timeouts_total", MEMORY),
            0
        );
        let ok = [("backend", "memory"), ("outcome", "ok")];
        assert_eq!(counter(&metrics, "distlock_releases_total", &ok), 1);
        assert_eq!(
            histogram(&metrics, "distlock_acquire_wait_seconds", MEMORY).len(),
            1
        );
        let held = histogram(&metrics, "distlock_lock_held_seconds", MEMORY);
        assert_eq!(held.len(), 1);
        assert!(
            (0.25..0.3).contains(&held[0]),
            "held for the 250 ms slept (paused clock), got {held:?}"
        );

        for metric in &metrics {
            assert!(metric.name.starts_with("distlock_"), "{metric:?}");
            assert!(
                metric
                    .labels
                    .iter()
                    .all(|(k, _)| k != "name" && k != "lock"),
                "lock names must not be labels: {metric:?}"
            );
            assert!(
                metric.description.is_some(),
                "describe() covers {}",
                metric.name
            );
        }
        let held_unit = metrics
            .iter()
            .find(|m| m.name == "distlock_lock_held_seconds")
            .and_then(|m| m.unit);
        assert_eq!(held_unit, Some(metrics::Unit::Seconds));
    }

    #[test]
    fn an_attempt_that_runs_into_the_deadline_is_counted_as_its_error() {
        let metrics = recorded(starved_acquire);
        let starved = [("backend", "starved")];
        assert_eq!(
            counter(&metrics, "distlock_acquire_timeouts_total", &starved),
            0
        );
        let connection = [("backend", "starved"), ("error", "connection")];
        assert_eq!(
            counter(&metrics, "distlock_acquire_errors_total", &connection),
            1
        );
    }

    #[test]
    fn timeouts_busy_try_acquires_and_bad_input_are_counted_apart() {
        let metrics = recorded(|| async {
            let locks = MemoryLock::new();
            let guard = locks
                .acquire("busy", Duration::from_secs(5), Duration::ZERO)
                .await
                .expect("free");
            let waited = locks
                .acquire("busy", Duration::from_secs(5), Duration::from_millis(100))
                .await;
            assert!(matches!(waited, Err(LockError::Timeout)));
            let tried = locks
                .try_acquire("busy", Duration::from_secs(5))
                .await
                .expect("answer");
            assert!(tried.is_none());
            let bad = locks
                .acquire("", Duration::from_secs(5), Duration::ZERO)
                .await;
            assert!(matches!(bad, Err(LockError::InvalidName(_))));
            guard.release().await.expect("still ours");
        });

        assert_eq!(
            counter(&metrics, "distlock_acquire_attempts_total", MEMORY),
            4
        );
        assert_eq!(
            counter(&metrics, "distlock_acquire_successes_total", MEMORY),
            1
        );
        assert_eq!(
            counter(&metrics, "distlock_acquire_timeouts_total", MEMORY),
            2
        );
        let invalid = [("backend", "memory"), ("error", "invalid_name")];
        assert_eq!(
            counter(&metrics, "distlock_acquire_errors_total", &invalid),
            1
        );
        assert_eq!(
            histogram(&metrics, "distlock_acquire_wait_seconds", MEMORY).len(),
            1,
            "only granted calls have a wait time"
        );
    }

    #[test]
    fn a_lock_lost_under_renewal_counts_a_failure_a_loss_and_a_lost_release() {
        let metrics = recorded(|| async {
            let locks = Switchable::default();
            let mut guard = locks
                .acquire("renew-lost", Duration::from_millis(300), Duration::ZERO)
                .await
                .expect("free");
            guard.auto_renew();
            locks.extend.store(EXTEND_LOST, Ordering::SeqCst);
            bounded("lost() after a failed renewal", guard.lost()).await;
            assert!(matches!(guard.release().await, Err(LockError::Lost)));
        });

        assert_eq!(counter(&metrics, "distlock_renewals_total", SWITCHABLE), 0);
        assert_eq!(
            counter(&metrics, "distlock_renewal_failures_total", SWITCHABLE),
            1
        );
        assert_eq!(
            counter(&metrics, "distlock_locks_lost_total", SWITCHABLE),
            1,
            "a loss is counted once, not again at release"
        );
        let lost = [("backend", "switchable"), ("outcome", "lost")];
        assert_eq!(counter(&metrics, "distlock_releases_total", &lost), 1);
        assert_eq!(
            histogram(&metrics, "distlock_lock_held_seconds", SWITCHABLE).len(),
            1
        );
    }

    #[test]
    fn renewals_and_failed_renewals_that_recover_are_counted() {
        let metrics = recorded(|| async {
            let locks = Switchable::default();
            let ttl = Duration::from_millis(300);
            let mut guard = locks
                .acquire("renew", ttl, Duration::ZERO)
                .await
                .expect("free");
            guard.auto_renew();
            // Renewals at 100 ms and 200 ms (a third of the TTL each).
            tokio::time::sleep(Duration::from_millis(250)).await;
            // The next renewal (300 ms) fails once; the retry 30 ms later works.
            locks.extend.store(EXTEND_UNREACHABLE, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(60)).await;
            locks.extend.store(EXTEND_OK, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(30)).await;
            assert!(!guard.is_lost());
            guard.release().await.expect("still ours");
        });

        assert_eq!(counter(&metrics, "distlock_renewals_total", SWITCHABLE), 3);
        assert_eq!(
            counter(&metrics, "distlock_renewal_failures_total", SWITCHABLE),
            1
        );
        assert_eq!(
            counter(&metrics, "distlock_locks_lost_total", SWITCHABLE),
            0
        );
    }

    #[test]
    fn manual_extends_are_counted_by_outcome() {
        let metrics = recorded(|| async {
            let locks = Switchable::default();
            let mut guard = locks
                .acquire("extend", Duration::from_secs(5), Duration::ZERO)
                .await
                .expect("free");
            guard.extend(Duration::from_secs(5)).await.expect("ours");
            locks.extend.store(EXTEND_UNREACHABLE, Ordering::SeqCst);
            assert!(matches!(
                guard.extend(Duration::from_secs(5)).await,
                Err(LockError::Connection(_))
            ));
            locks.extend.store(EXTEND_LOST, Ordering::SeqCst);
            assert!(matches!(
                guard.extend(Duration::from_secs(5)).await,
                Err(LockError::Lost)
            ));
            drop(guard);
        });

        for outcome in ["ok", "error", "lost"] {
            let with = [("backend", "switchable"), ("outcome", outcome)];
            assert_eq!(
                counter(&metrics, "distlock_extends_total", &with),
                1,
                "{outcome}"
            );
        }
        assert_eq!(
            counter(&metrics, "distlock_locks_lost_total", SWITCHABLE),
            1
        );
    }

    #[test]
    fn a_dropped_guard_counts_its_release_from_the_background_task() {
        let metrics = recorded(|| async {
            let locks = MemoryLock::new();
            let guard = locks
                .acquire("dropped", Duration::from_secs(30), Duration::ZERO)
                .await
                .expect("free");
            drop(guard);
            // The background release frees the lock long before its TTL.
            let again = bounded(
                "re-acquire after a drop",
                locks.acquire("dropped", Duration::from_secs(30), Duration::from_secs(5)),
            )
            .await
            .expect("released on drop");
            again.release().await.expect("still ours");
        });

        let ok = [("backend", "memory"), ("outcome", "ok")];
        assert_eq!(counter(&metrics, "distlock_releases_total", &ok), 2);
        assert_eq!(
            histogram(&metrics, "distlock_lock_held_seconds", MEMORY).len(),
            2
        );
        assert_eq!(
            counter(&metrics, "distlock_acquire_successes_total", MEMORY),
            2
        );
    }

    #[test]
    fn describe_gives_every_metric_a_description_and_unit() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            distlock_api::metrics::describe();
            // Touch every metric once so the snapshot lists it.
            for name in [
                distlock_api::metrics::ACQUIRE_ATTEMPTS,
                distlock_api::metrics::ACQUIRE_SUCCESSES,
                distlock_api::metrics::ACQUIRE_TIMEOUTS,
                distlock_api::metrics::ACQUIRE_ERRORS,
                distlock_api::metrics::EXTENDS,
                distlock_api::metrics::RENEWALS,
                distlock_api::metrics::RENEWAL_FAILURES,
                distlock_api::metrics::LOCKS_LOST,
                distlock_api::metrics::RELEASES,
            ] {
                metrics::counter!(name).increment(1);
            }
            for name in [
                distlock_api::metrics::ACQUIRE_WAIT_SECONDS,
                distlock_api::metrics::LOCK_HELD_SECONDS,
            ] {
                metrics::histogram!(name).record(1.0);
            }
        });
        let metrics = snapshot(&snapshotter);
        assert_eq!(metrics.len(), 11);
        for metric in &metrics {
            assert!(metric.description.is_some(), "{metric:?}");
            let expected = if metric.name.ends_with("_seconds") {
                metrics::Unit::Seconds
            } else {
                metrics::Unit::Count
            };
            assert_eq!(metric.unit, Some(expected), "{}", metric.name);
            assert!(
                metric.name.ends_with("_total") || metric.name.ends_with("_seconds"),
                "{}",
                metric.name
            );
        }
    }

    /// As the tracing test of the same name: one release, counted `ok`,
    /// and no lost lock.
    #[test]
    fn a_release_cancelled_after_the_server_ran_is_not_counted_lost() {
        let metrics = recorded(|| async {
            let locks = SlowAnswer::default();
            let guard = locks
                .acquire("cancelled-release", Duration::from_secs(30), Duration::ZERO)
                .await
                .expect("free");
            cancel_release_after_it_ran(&locks, guard).await;
        });
        let backend = [("backend", "slow-answer")];
        assert_eq!(counter(&metrics, "distlock_locks_lost_total", &backend), 0);
        assert_eq!(
            counter(
                &metrics,
                "distlock_releases_total",
                &[("backend", "slow-answer"), ("outcome", "ok")]
            ),
            1
        );
        assert_eq!(
            counter(
                &metrics,
                "distlock_releases_total",
                &[("backend", "slow-answer"), ("outcome", "lost")]
            ),
            0
        );
        assert_eq!(
            histogram(&metrics, "distlock_lock_held_seconds", &backend).len(),
            1,
            "one hold ended"
        );
    }
}
