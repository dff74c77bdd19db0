//! Fencing tokens: the number the protected storage uses to turn away a
//! holder whose time is up.

use std::time::Duration;

use super::Config;
use super::support::{Client, fail, show, unique_name};
use crate::DistributedLock;

/// How many times each name changes hands.
const HAND_OFFS: usize = 24;

/// Fencing tokens strictly increase per name over successive acquisitions,
/// whichever client acquires (they alternate) and however (`try_acquire`,
/// `acquire` with and without a wait, after a release or a drop).
///
/// Two names are used at once; their tokens are not compared with each
/// other, as the contract says nothing about that.
pub async fn fencing_tokens_increase(
    lock: &dyn DistributedLock,
    other: &dyn DistributedLock,
    config: &Config,
) {
    const CHECK: &str = "fencing_tokens_increase";
    let (a, b) = Client::pair(CHECK, lock, other, config);
    let first = unique_name(CHECK);
    let second = format!("{first}:second");
    let ttl = config.long_ttl;
    let mut last_first: Option<u64> = None;
    let mut last_second: Option<u64> = None;

    for i in 0..HAND_OFFS {
        // The clients take turns on each name, out of step with each other,
        // so a token counted per client (not per name) shows.
        let x = if i % 2 == 0 { a } else { b };
        let y = if i % 6 < 3 { b } else { a };
        let released = "its last holder released it";
        let one = if i % 4 == 0 && i > 0 {
            // The last hand-off was a drop, which releases in the background.
            let why = "its last holder was dropped, which releases it";
            x.must_acquire(&first, ttl, config.release_wait, why).await
        } else {
            match i % 3 {
                0 => x.must_try_acquire(&first, ttl, released).await,
                1 => x.must_acquire(&first, ttl, Duration::ZERO, released).await,
                _ => x.must_acquire(&first, ttl, config.slack, released).await,
            }
        };
        let two = y
            .must_try_acquire(&second, ttl, "its holder released it")
            .await;
        for (guard, last, client) in [(&one, &mut last_first, x), (&two, &mut last_second, y)] {
            let token = guard.fencing_token();
            if let Some(previous) = *last
                && token <= previous
            {
                fail!(
                    CHECK,
                    "acquisition #{} of {} (by {}) has fencing token {token}, not above the \
                     previous acquisition's {previous}",
                    i + 1,
                    show(guard.name()),
                    client.label
                );
            }
            *last = Some(token);
        }
        if i % 4 == 3 {
            drop(one);
        } else {
            x.release(one, "it was held well within its TTL").await;
        }
        y.release(two, "it was held well within its TTL").await;
    }

    // A failed attempt does not count as an acquisition, but must not make
    // the next token go backwards either.
    let held = a
        .must_acquire(&first, ttl, config.release_wait, "its holder let it go")
        .await;
    b.assert_held(&first, "lock holds it").await;
    let after = held.fencing_token();
    a.release(held, "it was held well within its TTL").await;
    let next = b.must_try_acquire(&first, ttl, "lock released it").await;
    assert!(
        next.fencing_token() > after,
        "conformance check `{CHECK}` failed: after a refused attempt, the next acquisition of {} \
         has fencing token {}, not above {after}",
        show(&first),
        next.fencing_token()
    );
    b.release(next, "it was held well within its TTL").await;
}
