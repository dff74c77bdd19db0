//! The Lua scripts: each lock operation is one atomic server-side step.
//!
//! They run by `EVALSHA`; when the server's script cache is empty (after a
//! restart or `SCRIPT FLUSH`) the driver loads the script and runs it again.

use std::sync::LazyLock;

use redis::Script;

/// `KEYS[1]` lock, `KEYS[2]` fence; `ARGV[1]` token, `ARGV[2]` TTL in ms.
///
/// Returns `{1, fencing_token}` when the lock was free and is now ours, or
/// `{0, pttl}` with the holder's remaining TTL in ms when it is held. A
/// failed attempt marks the held lock as waited for, by appending `+` to
/// the holder's token (which keeps its TTL), so that its release publishes.
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, -1) ~= '+' then
  redis.call('APPEND', KEYS[1], '+')
end
return {0, redis.call('PTTL', KEYS[1])}
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` channel, `ARGV[3]` message
/// (the lock name).
///
/// Deletes the lock only if it still holds our token; if someone failed to
/// take it meanwhile (the `+` mark), publishes the name so waiters try
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
  redis.call('PUBLISH', ARGV[2], ARGV[3])
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
