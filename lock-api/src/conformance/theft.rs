//! A lock taken away from its holder behind its back: what `with_lock`
//! must then tell its caller.
//!
//! The suite cannot take a lock away by itself (only the backend's server
//! can: delete a key, end a session), so this check takes a hook from the
//! backend's test and is not part of
//! [`conformance_tests!`](crate::conformance_tests).

use std::future::Future;

use tokio::sync::oneshot;

use super::Config;
use super::support::{Client, bounded, fail, show, unique_name};
use crate::{DistributedLock, DistributedLockExt, LockError};

/// `with_lock` returns [`LockError::Lost`] when the lock was taken away
/// while its closure ran, even though the closure itself finished.
///
/// The check runs `with_lock` with [`Config::long_ttl`] (so renewal does not
/// ask the server before the closure ends). Once the closure runs, it calls
/// `take_away(name)`, which must take the lock from its holder on the server
/// without going through the guard — Redis: delete the lock key;
/// PostgreSQL: terminate the holding session; [`MemoryLock`]:
/// [`expire_now`](crate::MemoryLock::expire_now). The other client must
/// then be granted the lock (that is what makes the closure's work
/// unprotected); then the closure returns at once. `with_lock` must say
/// `Lost`, not `Ok`: the work overlapped another holder.
///
/// [`MemoryLock`]: crate::MemoryLock
pub async fn with_lock_reports_lost_lock<T, F>(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
    take_away: T,
) where
    T: FnOnce(String) -> F + Send,
    F: Future<Output = ()> + Send,
{
    const CHECK: &str = "with_lock_reports_lost_lock";
    let (_, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.long_ttl;
    let (held_tx, held_rx) = oneshot::channel::<u64>();
    let (taken_tx, taken_rx) = oneshot::channel::<u64>();

    let work = lock.with_lock(&name, ttl, config.slack, move |context| async move {
        let _ = held_tx.send(context.fencing_token());
        // Runs on until the lock is someone else's, then finishes at once.
        taken_rx.await.ok()
    });
    let thief = async {
        let Ok(token) = held_rx.await else {
            // with_lock ended without running the closure; its result says why.
            return None;
        };
        take_away(name.clone()).await;
        let taken = b
            .must_acquire(
                &name,
                ttl,
                config.release_wait,
                "the lock was just taken away from its holder on the server",
            )
            .await;
        if taken.fencing_token() <= token {
            fail!(
                CHECK,
                "the other client got fencing token {} after the holder's {token}",
                taken.fencing_token()
            );
        }
        let _ = taken_tx.send(taken.fencing_token());
        Some(taken)
    };
    let limit = config.slack + config.release_wait + config.op_timeout * 3;
    let (outcome, taken) = bounded(
        CHECK,
        limit,
        || format!("with_lock({}) with the lock taken away", show(&name)),
        async { tokio::join!(work, thief) },
    )
    .await;
    let Some(taken) = taken else {
        fail!(
            CHECK,
            "with_lock({}) did not run its closure: it returned {outcome:?}",
            show(&name)
        );
    };
    let other_token = taken.fencing_token();
    b.release(taken, "it was granted with a long TTL").await;
    match outcome {
        Err(LockError::Lost) => {}
        Ok(Some(_)) => fail!(
            CHECK,
            "with_lock({}) returned Ok although the lock was taken away while its closure ran \
             and granted to another client (fencing token {other_token}) before the closure \
             finished: the work was not protected, so the result must be Err(Lost)",
            show(&name)
        ),
        Ok(None) => fail!(
            CHECK,
            "with_lock({}) returned Ok although its closure did not see the other client's grant",
            show(&name)
        ),
        Err(err) => fail!(
            CHECK,
            "with_lock({}) with the lock taken away returned `{err}`, not `Lost`",
            show(&name)
        ),
    }
}
