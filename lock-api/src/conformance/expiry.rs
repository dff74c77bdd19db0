//! What happens when a TTL runs out: the lock frees itself, the old guard
//! knows it is lost, and its token can no longer touch the lock.

use std::time::Duration;

use tokio::time::Instant;

use super::Config;
use super::support::{Client, bounded, fail, refute_two_holders, show, unique_name};
use crate::{DistributedLock, LockError};

/// A lock that is neither extended nor released is free once its TTL has
/// run out: another client acquires it (within [`Config::slack`]) with a
/// higher fencing token, and the old guard — kept alive, not forgotten —
/// reports `is_lost()` from its `valid_until()` on.
///
/// With [`Config::ttl_enforced_by_server`] off, only the guard's side is checked.
pub async fn ttl_expiry_frees_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "ttl_expiry_frees_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.short_ttl;

    let old = a
        .must_acquire(&name, ttl, Duration::ZERO, "nobody has used the name")
        .await;
    let acquired_at = Instant::now();
    // While the TTL runs, the lock is held (proven only if we are quick enough
    // to ask inside the guard's validity).
    if let Some(early) = b.try_acquire(&name, config.long_ttl).await {
        let granted_at = Instant::now();
        refute_two_holders(
            CHECK,
            &name,
            (old.fencing_token(), old.valid_until()),
            early.fencing_token(),
            granted_at,
            "other.try_acquire during the first lock's TTL",
        );
        b.release(early, "it was just acquired").await;
    }

    tokio::time::sleep_until(old.valid_until()).await;
    assert!(
        old.is_lost(),
        "conformance check `{CHECK}` failed: is_lost() is false although valid_until() has passed \
         without an extend"
    );
    if !config.ttl_enforced_by_server {
        drop(old);
        return;
    }

    // The server's TTL ends by `acquired_at + ttl`; allow the slack on top.
    let wait = (acquired_at + ttl).saturating_duration_since(Instant::now()) + config.slack;
    let new = match b.acquire(&name, config.long_ttl, wait).await {
        Ok(guard) => guard,
        Err(err) => fail!(
            CHECK,
            "other.acquire({}, wait {wait:?}) returned `{err}`: a lock with a TTL of {ttl:?} that \
             nobody extended must be free within {:?} after its TTL ran out",
            show(&name),
            config.slack
        ),
    };
    assert!(
        new.fencing_token() > old.fencing_token(),
        "conformance check `{CHECK}` failed: the lock taken over after the TTL ran out has fencing \
         token {}, not above the expired holder's {}",
        new.fencing_token(),
        old.fencing_token()
    );
    assert!(
        old.is_lost(),
        "conformance check `{CHECK}` failed: the expired guard's is_lost() turned false again"
    );
    b.release(new, "it was held well within its TTL").await;
    drop(old);
}

/// A guard whose TTL ran out, after another client took the lock, can
/// neither extend nor release it (both `Err(Lost)`), and neither call
/// disturbs the new holder: only the holder's token touches a lock.
///
/// Skipped with [`Config::ttl_enforced_by_server`] off (the lock never
/// changes hands without a release there).
pub async fn stale_guard_cannot_extend_or_release(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "stale_guard_cannot_extend_or_release";
    if !config.ttl_enforced_by_server {
        return;
    }
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.short_ttl;

    let mut stale = a
        .must_acquire(&name, ttl, Duration::ZERO, "nobody has used the name")
        .await;
    let acquired_at = Instant::now();
    tokio::time::sleep_until(stale.valid_until()).await;
    let wait = (acquired_at + ttl).saturating_duration_since(Instant::now()) + config.slack;
    let mut fresh = b
        .must_acquire(
            &name,
            config.long_ttl,
            wait,
            "the first holder's TTL ran out and it did not extend",
        )
        .await;
    assert!(
        fresh.fencing_token() > stale.fencing_token(),
        "conformance check `{CHECK}` failed: the new holder's fencing token {} is not above the \
         stale holder's {}",
        fresh.fencing_token(),
        stale.fencing_token()
    );

    match a.extend_raw(&mut stale, ttl).await {
        Err(LockError::Lost) => {}
        Ok(()) => fail!(
            CHECK,
            "extend by a guard whose TTL ran out returned Ok although other holds the lock now: \
             extend must check the holder's token"
        ),
        Err(err) => fail!(
            CHECK,
            "extend by a stale guard returned `{err}`, expected Lost"
        ),
    }
    assert!(
        stale.is_lost(),
        "conformance check `{CHECK}` failed: is_lost() is false after extend returned Lost"
    );
    a.assert_held(&name, "other holds it (after the stale guard's extend)")
        .await;

    match a.release_raw(stale).await {
        Err(LockError::Lost) => {}
        Ok(()) => fail!(
            CHECK,
            "release by a guard whose TTL ran out returned Ok although other holds the lock now: \
             release must compare the token and delete only its own lock"
        ),
        Err(err) => fail!(
            CHECK,
            "release by a stale guard returned `{err}`, expected Lost"
        ),
    }
    a.assert_held(
        &name,
        "other holds it (a stale guard's release must not delete the new holder's lock)",
    )
    .await;
    b.assert_held(&name, "other itself holds it").await;
    assert!(
        !fresh.is_lost(),
        "conformance check `{CHECK}` failed: the new holder's guard reports lost"
    );
    if let Err(err) = b.extend_raw(&mut fresh, config.long_ttl).await {
        fail!(
            CHECK,
            "the new holder's extend returned `{err}` after the stale guard's extend and release: \
             they must not have touched its lock"
        );
    }
    b.release(
        fresh,
        "the stale guard's calls must not have touched its lock",
    )
    .await;
}

/// `lost()` resolves once the validity of a guard that is not renewed has
/// passed — not before `valid_until()`, and within [`Config::slack`] after
/// it — and `is_lost()` agrees; both also report a guard that was released
/// or dropped.
pub async fn lost_resolves_after_validity(lock: &dyn DistributedLock, config: &Config) {
    const CHECK: &str = "lost_resolves_after_validity";
    let a = Client::one(CHECK, lock, config);
    let name = unique_name(CHECK);

    let guard = a
        .must_acquire(
            &name,
            config.short_ttl,
            Duration::ZERO,
            "nobody has used the name",
        )
        .await;
    let lost = guard.lost();
    let was_lost = guard.is_lost();
    // Only if the validity had not passed by the time we asked is `false` owed.
    if Instant::now() < guard.valid_until() {
        assert!(
            !was_lost,
            "conformance check `{CHECK}` failed: is_lost() is true for a fresh guard inside its validity"
        );
    }
    let valid_until = guard.valid_until();
    let limit = valid_until.saturating_duration_since(Instant::now()) + config.slack;
    bounded(
        CHECK,
        limit,
        || {
            format!(
                "lost() of a guard valid for {:?} more",
                limit - config.slack
            )
        },
        lost,
    )
    .await;
    let resolved_at = Instant::now();
    assert!(
        resolved_at >= valid_until,
        "conformance check `{CHECK}` failed: lost() resolved {:?} before valid_until()",
        valid_until - resolved_at
    );
    assert!(
        guard.is_lost(),
        "conformance check `{CHECK}` failed: lost() resolved but is_lost() is false"
    );
    bounded(
        CHECK,
        config.slack,
        || "a second lost() of a guard already lost".to_owned(),
        guard.lost(),
    )
    .await;
    // Lost or not on the server by now: either answer is right.
    let _ = a.release_raw(guard).await;

    // Release and drop end the guard too.
    let guard = a
        .must_acquire(
            &name,
            config.long_ttl,
            config.release_wait,
            "its last holder released it",
        )
        .await;
    let lost = guard.lost();
    let context = guard.context();
    assert!(
        !context.is_lost(),
        "conformance check `{CHECK}` failed: a fresh guard's context reports lost"
    );
    a.release(guard, "it was held well within its TTL").await;
    bounded(
        CHECK,
        config.slack,
        || "lost() of a released guard".to_owned(),
        lost,
    )
    .await;
    assert!(
        context.is_lost(),
        "conformance check `{CHECK}` failed: a released guard's context does not report lost"
    );

    let guard = a
        .must_acquire(
            &name,
            config.long_ttl,
            config.release_wait,
            "its last holder released it",
        )
        .await;
    let lost = guard.lost();
    drop(guard);
    bounded(
        CHECK,
        config.slack,
        || "lost() of a dropped guard".to_owned(),
        lost,
    )
    .await;
    a.assert_free(&name, "its guard was dropped").await;
}
