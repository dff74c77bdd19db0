//! What every check leans on: unique names, bounded calls with clear
//! failure messages, and retries for checks that race a TTL.

use std::fmt::Write as _;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::Config;
use crate::{DistributedLock, LockError, LockGuard};

/// Panics with the check's name and the broken rule.
macro_rules! fail {
    ($check:expr, $($arg:tt)+) => {
        panic!("conformance check `{}` failed: {}", $check, format_args!($($arg)+))
    };
}
pub(crate) use fail;

/// How many times a check that races a TTL runs, doubling the TTL each
/// time, before a miss counts as a failure.
pub(crate) const ROUNDS: u32 = 3;

/// A lock name no other check, test or run uses.
pub(crate) fn unique_name(check: &str) -> String {
    format!(
        "distlock-conformance:{check}:{:016x}",
        rand::random::<u64>()
    )
}

/// A name for messages: quoted and escaped, shortened when long.
pub(crate) fn show(name: &str) -> String {
    const KEEP: usize = 72;
    if name.len() <= KEEP + 8 {
        return format!("{name:?}");
    }
    let mut end = KEEP;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut shown = format!("{:?}", &name[..end]);
    let _ = write!(shown, "… ({} bytes)", name.len());
    shown
}

/// Awaits `future`, failing the check if it takes longer than `limit`.
pub(crate) async fn bounded<F>(
    check: &str,
    limit: Duration,
    what: impl FnOnce() -> String + Send,
    future: F,
) -> F::Output
where
    F: Future + Send,
{
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => fail!(
            check,
            "{} did not finish within {limit:?}: it hangs",
            what()
        ),
    }
}

/// Runs a check that needs the machine to keep pace with a TTL.
///
/// `round` gets the TTL to use and returns `Err(why)` for a miss that a
/// stall of this process could explain (a renewal that came too late); it
/// panics itself on evidence no stall explains (two holders at once). A
/// miss is retried with twice the TTL; only [`ROUNDS`] misses in a row fail.
pub(crate) async fn in_rounds<R, F>(check: &str, config: &Config, mut round: R)
where
    R: FnMut(Duration) -> F + Send,
    F: Future<Output = Result<(), String>> + Send,
{
    let mut misses = Vec::new();
    let mut ttl = config.short_ttl;
    for _ in 0..ROUNDS {
        match round(ttl).await {
            Ok(()) => return,
            Err(why) => {
                // Shown with the test's output if it fails in the end.
                eprintln!("conformance check `{check}` missed with a TTL of {ttl:?}: {why}");
                misses.push(format!("with a TTL of {ttl:?}: {why}"));
            }
        }
        ttl = ttl.saturating_mul(2);
    }
    fail!(
        check,
        "{ROUNDS} rounds in a row, each with twice the TTL of the one before, missed:\n  {}",
        misses.join("\n  ")
    );
}

/// One client of the server, as a check sees it: every call bounded, every
/// unexpected error a failure that names the check, the client and the name.
#[derive(Clone, Copy)]
pub(crate) struct Client<'a> {
    pub(crate) lock: &'a dyn DistributedLock,
    pub(crate) label: &'static str,
    pub(crate) check: &'static str,
    pub(crate) config: &'a Config,
}

impl<'a> Client<'a> {
    /// The two clients of a check, labelled `lock` and `other`.
    pub(crate) fn pair(
        check: &'static str,
        lock: &'a dyn DistributedLock,
        other: &'a dyn DistributedLock,
        config: &'a Config,
    ) -> (Self, Self) {
        (
            Client {
                lock,
                label: "lock",
                check,
                config,
            },
            Client {
                lock: other,
                label: "other",
                check,
                config,
            },
        )
    }

    /// The only client of a check.
    pub(crate) fn one(
        check: &'static str,
        lock: &'a dyn DistributedLock,
        config: &'a Config,
    ) -> Self {
        Client {
            lock,
            label: "lock",
            check,
            config,
        }
    }

    /// `try_acquire`, bounded; an error fails the check.
    pub(crate) async fn try_acquire(&self, name: &str, ttl: Duration) -> Option<LockGuard> {
        match self.try_acquire_raw(name, ttl).await {
            Ok(guard) => guard,
            Err(err) => fail!(
                self.check,
                "{}.try_acquire({}, {ttl:?}) returned an error: {err}",
                self.label,
                show(name)
            ),
        }
    }

    /// `try_acquire`, bounded, with its result as is.
    pub(crate) async fn try_acquire_raw(
        &self,
        name: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard>, LockError> {
        let label = self.label;
        bounded(
            self.check,
            self.config.op_timeout,
            || format!("{label}.try_acquire({}, {ttl:?})", show(name)),
            self.lock.try_acquire(name, ttl),
        )
        .await
    }

    /// `acquire`, bounded by its wait plus the operation timeout, with its result as is.
    pub(crate) async fn acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard, LockError> {
        let label = self.label;
        bounded(
            self.check,
            wait.saturating_add(self.config.op_timeout),
            || format!("{label}.acquire({}, {ttl:?}, wait {wait:?})", show(name)),
            self.lock.acquire(name, ttl, wait),
        )
        .await
    }

    /// `acquire` that must succeed; `why` says why the lock must be free.
    pub(crate) async fn must_acquire(
        &self,
        name: &str,
        ttl: Duration,
        wait: Duration,
        why: &str,
    ) -> LockGuard {
        match self.acquire(name, ttl, wait).await {
            Ok(guard) => guard,
            Err(err) => fail!(
                self.check,
                "{}.acquire({}, {ttl:?}, wait {wait:?}) returned `{err}`, but {why}",
                self.label,
                show(name)
            ),
        }
    }

    /// `try_acquire` of a lock nobody holds: must be granted.
    pub(crate) async fn must_try_acquire(&self, name: &str, ttl: Duration, why: &str) -> LockGuard {
        match self.try_acquire(name, ttl).await {
            Some(guard) => guard,
            None => fail!(
                self.check,
                "{}.try_acquire({}, {ttl:?}) found the lock held, but {why}",
                self.label,
                show(name)
            ),
        }
    }

    /// `try_acquire` must find the lock held; `why` says who holds it.
    pub(crate) async fn assert_held(&self, name: &str, why: &str) {
        if let Some(guard) = self.try_acquire(name, self.config.long_ttl).await {
            let token = guard.fencing_token();
            // Give it back so one failure does not cascade into others.
            let _ = self.release_raw(guard).await;
            fail!(
                self.check,
                "{}.try_acquire({}) was granted (fencing token {token}) while {why}",
                self.label,
                show(name)
            );
        }
    }

    /// The lock must become free for this client within `release_wait`
    /// (time for a release in the background); it is then released again.
    pub(crate) async fn assert_free(&self, name: &str, why: &str) {
        let wait = self.config.release_wait;
        let guard = match self.acquire(name, self.config.long_ttl, wait).await {
            Ok(guard) => guard,
            Err(err) => fail!(
                self.check,
                "{}.acquire({}, wait {wait:?}) returned `{err}`: the lock should be free because {why}",
                self.label,
                show(name)
            ),
        };
        self.release(guard, "it was just acquired").await;
    }

    /// `release` that must succeed; `why` says why the guard still holds the lock.
    pub(crate) async fn release(&self, guard: LockGuard, why: &str) {
        let name = guard.name().to_owned();
        if let Err(err) = self.release_raw(guard).await {
            fail!(
                self.check,
                "{}'s release of {} returned `{err}`, but {why}",
                self.label,
                show(&name)
            );
        }
    }

    /// `release`, bounded, with its result as is.
    pub(crate) async fn release_raw(&self, guard: LockGuard) -> Result<(), LockError> {
        let label = self.label;
        let name = show(guard.name());
        bounded(
            self.check,
            self.config.op_timeout,
            || format!("{label}'s release of {name}"),
            guard.release(),
        )
        .await
    }

    /// `extend`, bounded, with its result as is.
    pub(crate) async fn extend_raw(
        &self,
        guard: &mut LockGuard,
        ttl: Duration,
    ) -> Result<(), LockError> {
        let label = self.label;
        let name = show(guard.name());
        bounded(
            self.check,
            self.config.op_timeout,
            || format!("{label}'s extend of {name} by {ttl:?}"),
            guard.extend(ttl),
        )
        .await
    }
}

/// Fails the check when a lock was granted while another guard certainly
/// still held it: `granted_at` (taken after the grant came back) is before
/// the holder's conservative `valid_until`, so the server gave the lock away
/// inside a TTL it had promised. If not, a stall let the holder's validity
/// pass first, and nothing is proven.
pub(crate) fn refute_two_holders(
    check: &str,
    name: &str,
    (holder_token, valid_until): (u64, Instant),
    granted_token: u64,
    granted_at: Instant,
    what: &str,
) {
    if granted_at < valid_until {
        fail!(
            check,
            "{what}: {} was granted again (fencing token {granted_token}) while the guard with \
             token {holder_token} was valid for another {:?}: two holders at once",
            show(name),
            valid_until - granted_at
        );
    }
}
