//! One holder per name at a time, and names that never interfere.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use super::Config;
use super::support::{Client, bounded, fail, show, unique_name};
use crate::{DistributedLock, LockGuard, MAX_NAME_LEN};

/// How long one acquire in [`mutual_exclusion`] may wait: every other task
/// may get the lock first.
const CONTENTION_WAIT: Duration = Duration::from_secs(60);

/// How long the whole of [`mutual_exclusion`] may take.
const CONTENTION_LIMIT: Duration = Duration::from_secs(300);

/// Many tasks on both clients lock one name over and over: never two inside
/// the critical section at once, and fencing tokens strictly increasing in
/// the order the critical sections ran.
///
/// [`Config::contention_tasks`] tasks (half on `lock`, half on `other`) each
/// run [`Config::contention_cycles`] cycles of acquire (with a generous wait),
/// critical section (which yields to the scheduler), release (which must
/// succeed). The tasks run concurrently as futures of one Tokio task.
pub async fn mutual_exclusion(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "mutual_exclusion";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let contention = Contention {
        name: unique_name(CHECK),
        holders: AtomicUsize::new(0),
        last: Mutex::new((None, 0)),
    };
    let contention = &contention;
    let tasks = (0..config.contention_tasks).map(|task| {
        let client = if task % 2 == 0 { a } else { b };
        async move {
            for round in 0..config.contention_cycles {
                contention.cycle(client, task, round).await;
            }
        }
    });
    bounded(
        CHECK,
        CONTENTION_LIMIT,
        || {
            format!(
                "{} tasks × {} lock cycles",
                config.contention_tasks, config.contention_cycles
            )
        },
        futures::future::join_all(tasks),
    )
    .await;

    let ran = contention
        .last
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .1;
    let expected = config.contention_tasks * config.contention_cycles;
    assert_eq!(
        ran, expected,
        "conformance check `{CHECK}` failed: {ran} critical sections ran, expected {expected}"
    );
    a.assert_free(&contention.name, "every cycle released it")
        .await;
}

/// The shared state of [`mutual_exclusion`]'s tasks.
struct Contention {
    name: String,
    /// Tasks inside the critical section.
    holders: AtomicUsize,
    /// The previous critical section's fencing token, and how many have run.
    last: Mutex<(Option<u64>, usize)>,
}

impl Contention {
    /// One acquire, critical section, release.
    async fn cycle(&self, client: Client<'_>, task: usize, round: usize) {
        const CHECK: &str = "mutual_exclusion";
        let name = &self.name;
        let guard = client
            .must_acquire(
                name,
                client.config.long_ttl,
                CONTENTION_WAIT,
                "every holder releases it soon",
            )
            .await;
        let token = guard.fencing_token();
        let inside = self.holders.fetch_add(1, Ordering::SeqCst);
        if inside != 0 {
            fail!(
                CHECK,
                "task {task} ({}) got {} (fencing token {token}) in cycle {round} while {inside} \
                 other holder(s) were inside the critical section: no mutual exclusion",
                client.label,
                show(name)
            );
        }
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(previous) = last.0
                && token <= previous
            {
                fail!(
                    CHECK,
                    "critical section #{} (task {task}, {}) ran with fencing token {token}, \
                     not above the previous one's {previous}: tokens must strictly increase",
                    last.1,
                    client.label
                );
            }
            *last = (Some(token), last.1 + 1);
        }
        tokio::task::yield_now().await;
        self.holders.fetch_sub(1, Ordering::SeqCst);
        client
            .release(guard, "it held the lock for one yield")
            .await;
    }
}

/// `try_acquire` of a held lock is `None` from either client (and `acquire`
/// without a wait is `Timeout`); after the release it is granted.
pub async fn try_acquire_on_held_lock(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "try_acquire_on_held_lock";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let name = unique_name(CHECK);
    let ttl = config.long_ttl;

    let guard = a
        .must_try_acquire(&name, ttl, "nobody has used the name")
        .await;
    assert_eq!(
        guard.name(),
        name,
        "conformance check `{CHECK}` failed: the guard's name() is not the name it was acquired under"
    );
    b.assert_held(&name, "lock held it").await;
    a.assert_held(&name, "the same client held it (locks are not reentrant)")
        .await;
    match b.acquire(&name, ttl, Duration::ZERO).await {
        Err(err) if err.is_timeout() => {}
        Err(err) => fail!(
            CHECK,
            "other.acquire of a held lock with no wait returned `{err}`, expected Timeout"
        ),
        Ok(_) => fail!(
            CHECK,
            "other.acquire of a held lock with no wait was granted while lock held it"
        ),
    }
    a.release(guard, "it was held well within its TTL").await;

    let guard = b.must_try_acquire(&name, ttl, "lock had released it").await;
    a.assert_held(&name, "other held it").await;
    b.release(guard, "it was held well within its TTL").await;
    let guard = a
        .must_try_acquire(&name, ttl, "other had released it")
        .await;
    a.release(guard, "it was held well within its TTL").await;
}

/// Names that differ in any byte are different locks, whatever they hold:
/// spaces, colons, hash-tag braces (`{a}`, `{a}b`), quotes, control
/// characters, NUL, glob characters, Unicode in different normal forms, and
/// the longest legal name next to its own prefix. All are held at once by
/// `lock`, none blocks another, and each is freed on its own.
pub async fn distinct_names_are_distinct_locks(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "distinct_names_are_distinct_locks";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let names = odd_names(&unique_name(CHECK));
    let ttl = config.long_ttl;

    let mut held: Vec<LockGuard> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match a.try_acquire(name, ttl).await {
            Some(guard) => {
                assert_eq!(
                    guard.name(),
                    name,
                    "conformance check `{CHECK}` failed: guard.name() differs from the name acquired"
                );
                held.push(guard);
            }
            None => fail!(
                CHECK,
                "lock.try_acquire({}) found it held, though only these other names were held: \
                 the backend confuses distinct names: {}",
                show(name),
                names[..i]
                    .iter()
                    .map(|n| show(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    for name in &names {
        b.assert_held(name, "lock held that exact name").await;
    }
    // Free them one by one: only the released name may become free.
    let mut taken = Vec::with_capacity(names.len());
    let mut held = held.into_iter();
    for (i, name) in names.iter().enumerate() {
        if let Some(guard) = held.next() {
            a.release(
                guard,
                "it was held well within its TTL, and no other name is the same lock",
            )
            .await;
        }
        taken.push(
            b.must_try_acquire(name, ttl, "lock had just released it")
                .await,
        );
        for still_held in &names[i + 1..] {
            b.assert_held(
                still_held,
                &format!("lock still held it; only {} had been released", show(name)),
            )
            .await;
        }
    }
    for guard in taken {
        b.release(guard, "it was held well within its TTL").await;
    }
}

/// Names that a backend which escapes, hashes, truncates or normalises
/// names carelessly would confuse. All distinct, all legal, all unique to
/// this run through `base`.
fn odd_names(base: &str) -> Vec<String> {
    let mut names: Vec<String> = [
        "", " ", "  ", "\t", "\n", "\r\n", ":", ":a", ":A", ":a:b", ":a b", "{}", "{a}", "{a}b",
        "\"q\"", "'q'", "`", "\\", "/", "*", "?", "[a]", "%20", "\0", "\0a", "\0b", "é",
        "e\u{301}", "🎫", "🔒", "日本", "\u{200b}", "\u{feff}",
    ]
    .iter()
    .map(|suffix| format!("{base}{suffix}"))
    .collect();
    // Hash tags and separators in front, where a cluster key prefix sees them.
    names.extend(
        ["{a}", "{a}b", "{}", " ", ":"]
            .iter()
            .map(|p| format!("{p}{base}")),
    );

    // The longest legal name, its one-byte-shorter prefix, and a twin that
    // differs only in its last byte.
    let mut longest = format!("{base}:");
    longest.extend(std::iter::repeat_n(
        'x',
        MAX_NAME_LEN.saturating_sub(longest.len()),
    ));
    let mut twin = longest.clone();
    twin.pop();
    twin.push('y');
    names.push(longest[..MAX_NAME_LEN - 1].to_owned());
    names.push(longest);
    names.push(twin);
    // The same, in four-byte characters.
    let mut wide = format!("{base}:");
    while !(MAX_NAME_LEN - wide.len()).is_multiple_of(4) {
        wide.push('x');
    }
    while wide.len() < MAX_NAME_LEN {
        wide.push('🔒');
    }
    names.push(wide[..MAX_NAME_LEN - 4].to_owned());
    names.push(wide);

    let distinct: HashSet<&String> = names.iter().collect();
    assert_eq!(
        distinct.len(),
        names.len(),
        "the suite's own odd names must be distinct"
    );
    assert!(
        names.iter().all(|name| name.len() <= MAX_NAME_LEN),
        "the suite's own odd names must be legal"
    );
    names
}
