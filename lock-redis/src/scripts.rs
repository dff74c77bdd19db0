//! The Lua scripts for the steps that compare before they write (acquire
//! is a `MULTI`/`EXEC` transaction of native commands, in `lock.rs`).
//!
//! They run by `EVALSHA`; when the server's script cache is empty (after a
//! restart or `SCRIPT FLUSH`) the driver loads the script and runs it again.

use std::sync::LazyLock;

use redis::Script;

/// `KEYS[1]` lock.
///
/// After an attempt found the lock held: marks it as waited for, by
/// appending `+` to the holder's token (which keeps its TTL), so that its
/// release publishes. Returns the lock's remaining TTL in ms (`-2` when it
/// is gone already).
pub(crate) static MARK_WAITED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, -1) ~= '+' then
  redis.call('APPEND', KEYS[1], '+')
end
return redis.call('PTTL', KEYS[1])
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` channel.
///
/// Deletes the lock only if it still holds our token; if someone failed to
/// take it meanwhile (the `+` mark), publishes the lock key so waiters try
/// again. Returns 1 when released, 0 when the lock was no longer ours.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if held == ARGV[1] .. '+' then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], KEYS[1])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` new TTL in ms.
///
/// Returns 1 when the TTL was reset, 0 when the lock was no longer ours.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
",
    )
});
