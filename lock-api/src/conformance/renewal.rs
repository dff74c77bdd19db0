//! Keeping a lock past its TTL: by hand with `extend`, in the background
//! with `auto_renew`, and around a closure with `with_lock`.

use std::time::Duration;

use tokio::time::Instant;

use super::Config;
use super::support::{Client, bounded, fail, in_rounds, refute_two_holders, show, unique_name};
use crate::{DistributedLock, DistributedLockExt, LockError};

/// Extending at a third of the TTL keeps the lock for two TTLs and more:
/// the other client's `try_acquire` stays `None` past the first TTL, and the
/// final release succeeds.
///
/// A miss that a stall of this process could explain (an extend that came
/// too late and found the lock gone) is retried with a longer TTL; a grant to
/// the other client while the extended guard was valid fails at once.
pub async fn extend_keeps_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "extend_keeps_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    in_rounds(CHECK, config, |ttl| async move {
        let name = unique_name(CHECK);
        let mut guard = a
            .must_acquire(&name, ttl, Duration::ZERO, "nobody has used the name")
            .await;
        let acquired_at = Instant::now();
        // Past this instant the first TTL is over on the server, too.
        let hold_until = acquired_at + ttl * 2;
        let mut extends = 0u32;
        loop {
            tokio::time::sleep(ttl / 3).await;
            let asked_at = Instant::now();
            if let Some(taken) = b.try_acquire(&name, config.long_ttl).await {
                refute_two_holders(
                    CHECK,
                    &name,
                    (guard.fencing_token(), guard.valid_until()),
                    taken.fencing_token(),
                    Instant::now(),
                    &format!("other.try_acquire after {extends} successful extend(s)"),
                );
                let _ = b.release_raw(taken).await;
                return Err(format!(
                    "other acquired the lock {:?} after it was taken, once the guard's validity \
                     had passed (the extends came too late)",
                    asked_at - acquired_at
                ));
            }
            if asked_at > hold_until {
                break;
            }
            match a.extend_raw(&mut guard, ttl).await {
                Ok(()) => extends += 1,
                Err(LockError::Lost) => {
                    return Err(format!(
                        "extend #{} returned Lost {:?} after the lock was taken",
                        extends + 1,
                        acquired_at.elapsed()
                    ));
                }
                Err(err) => fail!(CHECK, "extend of a held lock returned `{err}`"),
            }
        }
        match a.release_raw(guard).await {
            Ok(()) => Ok(()),
            Err(LockError::Lost) => Err("the final release returned Lost".to_owned()),
            Err(err) => fail!(CHECK, "release of an extended lock returned `{err}`"),
        }
    })
    .await;
}

/// `auto_renew` keeps a lock with a short TTL for more than four TTLs: the
/// other client's `try_acquire` stays `None`, the guard is not lost and its
/// `valid_until` moves forward. After `release` the renewal stops: the name
/// is free at once, and a new holder keeps it for two TTLs more undisturbed.
pub async fn auto_renew_keeps_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "auto_renew_keeps_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    in_rounds(CHECK, config, |ttl| async move {
        let name = unique_name(CHECK);
        let mut guard = a
            .must_acquire(&name, ttl, Duration::ZERO, "nobody has used the name")
            .await;
        guard.auto_renew();
        assert!(
            guard.is_renewing(),
            "conformance check `{CHECK}` failed: is_renewing() is false right after auto_renew()"
        );
        let first_valid_until = guard.valid_until();
        let started = Instant::now();
        let hold_until = started + ttl * 4 + ttl / 2;
        loop {
            tokio::time::sleep(ttl / 4).await;
            if let Some(taken) = b.try_acquire(&name, config.long_ttl).await {
                refute_two_holders(
                    CHECK,
                    &name,
                    (guard.fencing_token(), guard.valid_until()),
                    taken.fencing_token(),
                    Instant::now(),
                    "other.try_acquire while lock renewed it",
                );
                let _ = b.release_raw(taken).await;
                return Err(format!(
                    "other acquired the lock {:?} in, after the renewed guard's validity had \
                     passed (the renewal came too late)",
                    started.elapsed()
                ));
            }
            if guard.is_lost() {
                return Err(format!(
                    "the renewed guard became lost {:?} in",
                    started.elapsed()
                ));
            }
            if Instant::now() > hold_until {
                break;
            }
        }
        assert!(
            guard.valid_until() > first_valid_until,
            "conformance check `{CHECK}` failed: valid_until() did not move forward during renewal"
        );
        assert!(
            guard.is_renewing(),
            "conformance check `{CHECK}` failed: is_renewing() turned false while the lock was held"
        );
        match a.release_raw(guard).await {
            Ok(()) => {}
            Err(LockError::Lost) => return Err("the final release returned Lost".to_owned()),
            Err(err) => fail!(CHECK, "release of a renewed lock returned `{err}`"),
        }

        // The renewal must be over: nothing re-takes or touches the lock.
        let mut fresh = b
            .must_try_acquire(
                &name,
                config.long_ttl,
                "lock released it; a release frees at once",
            )
            .await;
        tokio::time::sleep(ttl * 2 + ttl / 2).await;
        a.assert_held(
            &name,
            "other holds it (the released guard's renewal must have stopped)",
        )
        .await;
        assert!(
            !fresh.is_lost(),
            "conformance check `{CHECK}` failed: the new holder's guard reports lost"
        );
        if let Err(err) = b.extend_raw(&mut fresh, config.long_ttl).await {
            fail!(
                CHECK,
                "the new holder's extend returned `{err}`: the released guard's renewal must not \
                 touch the lock after release"
            );
        }
        b.release(fresh, "nothing else may have touched its lock")
            .await;
        Ok(())
    })
    .await;
}

/// `with_lock` runs its closure with the lock held (the other client's
/// `try_acquire` is `None` from inside it) and a fencing token above the
/// previous holder's, renews the lock while the closure runs for three TTLs,
/// returns the closure's value, and leaves the lock free.
pub async fn with_lock_holds_and_renews(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "with_lock_holds_and_renews";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    in_rounds(CHECK, config, |ttl| async move {
        let name = unique_name(CHECK);
        let before = a
            .must_try_acquire(&name, config.long_ttl, "nobody has used the name")
            .await;
        let previous = before.fencing_token();
        a.release(before, "it was held well within its TTL").await;

        let name_ref = &name;
        let work = lock.with_lock(name_ref, ttl, config.slack, |context| async move {
            let token = context.fencing_token();
            if token <= previous {
                fail!(
                    CHECK,
                    "with_lock's closure got fencing token {token}, not above the previous \
                     holder's {previous}"
                );
            }
            let started = Instant::now();
            loop {
                if let Some(taken) = b.try_acquire(name_ref, config.long_ttl).await {
                    refute_two_holders(
                        CHECK,
                        name_ref,
                        (token, context.valid_until()),
                        taken.fencing_token(),
                        Instant::now(),
                        "other.try_acquire from inside with_lock's closure",
                    );
                    let _ = b.release_raw(taken).await;
                    return Err(format!(
                        "other acquired the lock {:?} into the closure, after its validity had \
                         passed (the renewal came too late)",
                        started.elapsed()
                    ));
                }
                if started.elapsed() > ttl * 3 {
                    return Ok(token);
                }
                tokio::time::sleep(ttl / 4).await;
            }
        });
        let limit = ttl * 3 + config.slack + config.op_timeout;
        let outcome = bounded(
            CHECK,
            limit,
            || {
                format!(
                    "with_lock({}) around a closure of {:?}",
                    show(&name),
                    ttl * 3
                )
            },
            work,
        )
        .await;
        match outcome {
            Ok(Ok(_token)) => {}
            Ok(Err(why)) => return Err(why),
            Err(LockError::Lost) => {
                return Err(
                    "with_lock returned Lost: the lock was not kept while the closure ran"
                        .to_owned(),
                );
            }
            Err(err) => fail!(CHECK, "with_lock returned `{err}`"),
        }
        let after = b
            .must_try_acquire(
                &name,
                config.long_ttl,
                "with_lock returned, so it released the lock",
            )
            .await;
        b.release(after, "it was held well within its TTL").await;
        Ok(())
    })
    .await;
}
