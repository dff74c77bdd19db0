//! Waiting for a lock: timeouts that keep their deadline, and waits,
//! acquires and guards that leave nothing behind when they are dropped.

use std::time::Duration;

use futures::FutureExt as _;
use tokio::time::Instant;

use super::Config;
use super::support::{Client, fail, in_rounds, show, unique_name};
use crate::{DistributedLock, LockError};

/// The wait in [`acquire_times_out_on_time`].
const WAIT: Duration = Duration::from_millis(300);

/// How long a waiting `acquire` is polled to show it is really waiting.
const STILL_WAITING: Duration = Duration::from_millis(30);

/// Cancellation points for an `acquire` or `try_acquire` future: timeouts
/// from "first poll only" to well into a network round trip.
const CANCEL_AFTER: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_nanos(1),
    Duration::from_micros(1),
    Duration::from_micros(10),
    Duration::from_micros(100),
    Duration::from_millis(1),
    Duration::from_millis(3),
    Duration::from_millis(10),
];

/// How many polls (with scheduler yields between them) an `acquire` gets
/// before it is dropped, for each count from one up.
const CANCEL_AFTER_POLLS: usize = 8;

/// `acquire` of a held lock returns `Timeout` — from either client — no
/// sooner than its wait of 300 ms and no later than [`Config::slack`] after
/// it; with no wait it returns `Timeout` at once.
pub async fn acquire_times_out_on_time(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "acquire_times_out_on_time";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    // The rounds only retry a late Timeout; the TTL they pass is not used.
    in_rounds(CHECK, config, |_| async move {
        let name = unique_name(CHECK);
        let holder = a
            .must_try_acquire(&name, config.long_ttl, "nobody has used the name")
            .await;
        for (client, wait) in [(b, WAIT), (a, WAIT), (b, Duration::ZERO)] {
            let started = Instant::now();
            let outcome = client.acquire(&name, config.long_ttl, wait).await;
            let took = started.elapsed();
            match outcome {
                Err(LockError::Timeout) => {}
                Ok(_) => fail!(
                    CHECK,
                    "{}.acquire({}, wait {wait:?}) was granted while lock held it",
                    client.label,
                    show(&name)
                ),
                Err(err) => fail!(
                    CHECK,
                    "{}.acquire of a held lock with a wait of {wait:?} returned `{err}`, \
                     expected Timeout",
                    client.label
                ),
            }
            if took < wait {
                fail!(
                    CHECK,
                    "{}.acquire with a wait of {wait:?} gave up with Timeout after only {took:?}",
                    client.label
                );
            }
            if took > wait + config.slack {
                let _ = a.release_raw(holder).await;
                return Err(format!(
                    "{}.acquire with a wait of {wait:?} returned Timeout only after {took:?}",
                    client.label
                ));
            }
        }
        a.release(holder, "it was held well within its TTL").await;
        Ok(())
    })
    .await;
}

/// Dropping an `acquire` that is waiting for a held lock leaves nothing
/// behind: once the holder releases, the name is free for the other client
/// (no ghost holder). Checked for a waiter dropped before the release, and
/// for one cancelled at several points just after it, as it is handed the lock.
pub async fn cancelled_wait_leaves_no_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "cancelled_wait_leaves_no_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.long_ttl;

    // `None`: drop the waiter before the release; `Some(t)`: release first,
    // then let the waiter run for `t` and drop it.
    let cases = std::iter::once(None).chain(CANCEL_AFTER.iter().copied().map(Some));
    for (case, cancel_after) in cases.enumerate() {
        for (holder_client, waiter_client) in [(b, a), (a, b)] {
            let holder = holder_client
                .must_acquire(
                    &name,
                    ttl,
                    config.release_wait,
                    "every earlier holder let it go",
                )
                .await;
            let mut waiter = waiter_client.lock.acquire(&name, ttl, config.long_ttl);
            match tokio::time::timeout(STILL_WAITING, &mut waiter).await {
                Err(_) => {}
                Ok(Ok(_)) => fail!(
                    CHECK,
                    "{}.acquire({}) was granted while {} held it",
                    waiter_client.label,
                    show(&name),
                    holder_client.label
                ),
                Ok(Err(err)) => fail!(
                    CHECK,
                    "{}.acquire waiting for a held lock returned `{err}`",
                    waiter_client.label
                ),
            }
            let when = match cancel_after {
                None => {
                    drop(waiter);
                    holder_client
                        .release(holder, "it was held well within its TTL")
                        .await;
                    "dropped while the lock was held".to_owned()
                }
                Some(after) => {
                    holder_client
                        .release(holder, "it was held well within its TTL")
                        .await;
                    match tokio::time::timeout(after, &mut waiter).await {
                        // Handed the lock before the cancellation: give it back.
                        Ok(Ok(guard)) => {
                            waiter_client.release(guard, "it was just acquired").await;
                        }
                        Ok(Err(err)) => fail!(
                            CHECK,
                            "{}.acquire waiting for a released lock returned `{err}`",
                            waiter_client.label
                        ),
                        Err(_) => {}
                    }
                    drop(waiter);
                    format!("cancelled {after:?} after the holder released")
                }
            };
            holder_client
                .assert_free(
                    &name,
                    &format!(
                        "the only other party was a waiting {}.acquire, {when} (case {case})",
                        waiter_client.label
                    ),
                )
                .await;
            waiter_client
                .assert_free(&name, &format!("nobody holds it (case {case})"))
                .await;
        }
    }
}

/// Cancelling `acquire` or `try_acquire` of a free lock at any point — by
/// timeouts from zero up, or by dropping it after a number of polls —
/// leaves no lock behind: afterwards the other client gets the name within
/// [`Config::release_wait`], far inside the TTL of 30 s the cancelled call asked for.
pub async fn cancelled_acquire_leaves_no_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "cancelled_acquire_leaves_no_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.long_ttl;
    assert!(
        config.release_wait < ttl,
        "conformance check `{CHECK}`: Config::release_wait must be below Config::long_ttl"
    );
    let free_because = |how: String| format!("the only call on it was {how}");

    for after in CANCEL_AFTER {
        for (call, waits) in [("acquire", true), ("try_acquire", false)] {
            let outcome = if waits {
                tokio::time::timeout(after, a.lock.acquire(&name, ttl, config.long_ttl))
                    .await
                    .map(|result| result.map(Some))
            } else {
                tokio::time::timeout(after, a.lock.try_acquire(&name, ttl)).await
            };
            match outcome {
                Ok(Ok(Some(guard))) => a.release(guard, "it was just acquired").await,
                Ok(Ok(None)) => fail!(
                    CHECK,
                    "lock.try_acquire({}) found the lock held, though nobody holds it",
                    show(&name)
                ),
                Ok(Err(err)) => fail!(CHECK, "lock.{call} of a free lock returned `{err}`"),
                Err(_) => {}
            }
            b.assert_free(
                &name,
                &free_because(format!("a lock.{call} cancelled by a timeout of {after:?}")),
            )
            .await;
        }
    }

    for polls in 1..=CANCEL_AFTER_POLLS {
        let mut acquire = a.lock.acquire(&name, ttl, config.long_ttl);
        let mut outcome = None;
        for _ in 0..polls {
            if let Some(result) = (&mut acquire).now_or_never() {
                outcome = Some(result);
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(acquire);
        match outcome {
            Some(Ok(guard)) => a.release(guard, "it was just acquired").await,
            Some(Err(err)) => fail!(CHECK, "lock.acquire of a free lock returned `{err}`"),
            None => {}
        }
        b.assert_free(
            &name,
            &free_because(format!("a lock.acquire dropped after {polls} poll(s)")),
        )
        .await;
    }
}

/// A guard dropped without `release` frees its lock in the background,
/// promptly: the other client acquires it within [`Config::release_wait`],
/// long before the TTL of 30 s — also when the guard was renewing.
pub async fn dropped_guard_frees_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "dropped_guard_frees_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.long_ttl;
    assert!(
        config.release_wait < ttl,
        "conformance check `{CHECK}`: Config::release_wait must be below Config::long_ttl"
    );

    for renewing in [false, true] {
        for (holder, next) in [(a, b), (b, a)] {
            let mut guard = holder
                .must_acquire(&name, ttl, config.release_wait, "its last holder let it go")
                .await;
            if renewing {
                guard.auto_renew();
            }
            drop(guard);
            let why = format!(
                "{}'s guard{} was dropped, which must release it in the background",
                holder.label,
                if renewing { " (renewing)" } else { "" }
            );
            let guard = next
                .must_acquire(&name, ttl, config.release_wait, &why)
                .await;
            next.release(guard, "it was held well within its TTL").await;
        }
    }
}
