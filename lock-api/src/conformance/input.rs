//! Bad names and TTLs are typed errors — never a panic, an overflow, or a
//! lock under a mangled name.

use std::time::Duration;

use super::Config;
use super::support::{Client, bounded, fail, show, unique_name};
use crate::{DistributedLock, LockError, MAX_NAME_LEN, MIN_TTL};

/// Names outside 1..=1024 bytes are `InvalidName`, and TTLs of zero, under
/// a millisecond or beyond any backend's range are `InvalidTtl`, from
/// `try_acquire`, `acquire` (with and without a wait) and `extend`; such
/// calls leave no lock behind and do not disturb a held one. A TTL of
/// exactly 1 ms is valid, and `acquire` with `wait = Duration::MAX` works.
pub async fn invalid_input_is_rejected(lock: &dyn DistributedLock, config: &Config) {
    const CHECK: &str = "invalid_input_is_rejected";
    let a = Client::one(CHECK, lock, config);
    let ttl = config.long_ttl;

    let mut too_long_wide = "a".repeat(MAX_NAME_LEN - 1);
    too_long_wide.push('é');
    let bad_names = [String::new(), "x".repeat(MAX_NAME_LEN + 1), too_long_wide];
    for name in &bad_names {
        let shown = show(name);
        let outcomes = [
            ("try_acquire", a.try_acquire_raw(name, ttl).await.map(drop)),
            (
                "acquire with no wait",
                a.acquire(name, ttl, Duration::ZERO).await.map(drop),
            ),
            (
                "acquire with a wait",
                a.acquire(name, ttl, config.slack).await.map(drop),
            ),
        ];
        for (call, outcome) in outcomes {
            match outcome {
                Err(LockError::InvalidName(_)) => {}
                Ok(()) => fail!(
                    CHECK,
                    "{call} of the {}-byte name {shown} succeeded; names are 1..={MAX_NAME_LEN} \
                     bytes, anything else is InvalidName",
                    name.len()
                ),
                Err(err) => fail!(
                    CHECK,
                    "{call} of the {}-byte name {shown} returned `{err}`, expected InvalidName",
                    name.len()
                ),
            }
        }
    }

    let bad_ttls = [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_micros(500),
        MIN_TTL - Duration::from_nanos(1),
        Duration::from_millis(u64::MAX),
        Duration::MAX,
    ];
    let name = unique_name(CHECK);
    for &bad in &bad_ttls {
        let outcomes = [
            ("try_acquire", a.try_acquire_raw(&name, bad).await.map(drop)),
            (
                "acquire with no wait",
                a.acquire(&name, bad, Duration::ZERO).await.map(drop),
            ),
            (
                "acquire with a wait",
                a.acquire(&name, bad, config.slack).await.map(drop),
            ),
        ];
        for (call, outcome) in outcomes {
            match outcome {
                Err(LockError::InvalidTtl(_)) => {}
                Ok(()) => fail!(
                    CHECK,
                    "{call} with a TTL of {bad:?} succeeded, expected InvalidTtl"
                ),
                Err(err) => fail!(
                    CHECK,
                    "{call} with a TTL of {bad:?} returned `{err}`, expected InvalidTtl"
                ),
            }
        }
    }

    // Nothing was left behind by the rejected calls; and a held lock's
    // extend with a bad TTL is rejected without touching the lock.
    let mut guard = a
        .must_try_acquire(
            &name,
            ttl,
            "only calls with invalid TTLs have used the name",
        )
        .await;
    for &bad in &bad_ttls {
        match a.extend_raw(&mut guard, bad).await {
            Err(LockError::InvalidTtl(_)) => {}
            Ok(()) => fail!(
                CHECK,
                "extend with a TTL of {bad:?} succeeded, expected InvalidTtl"
            ),
            Err(err) => fail!(
                CHECK,
                "extend with a TTL of {bad:?} returned `{err}`, expected InvalidTtl"
            ),
        }
    }
    assert!(
        !guard.is_lost(),
        "conformance check `{CHECK}` failed: a rejected extend made the guard lost"
    );
    a.assert_held(&name, "lock holds it (rejected extends must not touch it)")
        .await;
    a.release(guard, "rejected extends must not have touched it")
        .await;

    // The smallest legal TTL is legal. The lock may be gone again by the
    // time it is released, so either answer of release is right.
    let tiny = format!("{name}:min-ttl");
    let min_ttl = config.min_ttl;
    match a.try_acquire_raw(&tiny, min_ttl).await {
        Ok(Some(guard)) => {
            let _ = a.release_raw(guard).await;
        }
        // A lease that short may be too short to confirm (Redlock's two
        // steps); what matters is that it is not refused.
        Ok(None) if min_ttl > MIN_TTL => {}
        Ok(None) => fail!(
            CHECK,
            "try_acquire of a fresh name with a TTL of {min_ttl:?} found it held"
        ),
        Err(err) => fail!(
            CHECK,
            "try_acquire with a TTL of {min_ttl:?} returned `{err}`; it is a valid TTL"
        ),
    }

    // An endless wait must not overflow a deadline.
    let endless = format!("{name}:endless-wait");
    let outcome = bounded(
        CHECK,
        config.op_timeout,
        || {
            format!(
                "acquire({}, wait Duration::MAX) of a free lock",
                show(&endless)
            )
        },
        lock.acquire(&endless, ttl, Duration::MAX),
    )
    .await;
    let guard = match outcome {
        Ok(guard) => guard,
        Err(err) => fail!(
            CHECK,
            "acquire of a free lock with wait = Duration::MAX returned `{err}`; an endless wait is valid"
        ),
    };
    a.release(guard, "it was held well within its TTL").await;
}
