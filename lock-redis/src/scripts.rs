//! The Lua scripts of every step (acquire, release, extend), and the steps
//! of a Redlock node.
//!
//! They run by `EVALSHA`; when the server's script cache is empty (after a
//! restart or `SCRIPT FLUSH`) the driver loads the script and runs it again.

use std::sync::LazyLock;

use redis::Script;

/// `KEYS[1]` lock.
///
/// On one server, after an attempt found the lock held and the caller will
/// wait: marks it as waited for, by appending `+` to the holder's token
/// (which keeps its TTL), so that its release publishes. Returns the
/// lock's remaining TTL in ms (`-2` when it is gone already).
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

/// `KEYS[1]` lock, `KEYS[2]` its fencing counter, `KEYS[3]` its release
/// record; `ARGV[1]` token, `ARGV[2]` TTL in ms, `ARGV[3]` `1` when the
/// caller will wait if the lock is held.
///
/// The acquire step on a Redis Cluster, where a redirected command is
/// retried by the client but a redirected transaction is not: `SET NX
/// PX`, then `INCR` of the counter if the lock was granted. Answers the
/// fencing token (> 0) when granted; when held, `-2 - PTTL` (≤ −2), or −1
/// when its TTL is unknown. When held and the caller will wait, it also
/// marks the lock as waited for (as [`MARK_WAITED`] does on one server),
/// in the same round trip.
///
/// A script runs atomically: nothing runs between its `SET` and its
/// `INCR`, so the counter's values follow the grants, and it moves only
/// with a grant. A counter that is not a positive integer (someone wrote
/// to it) is answered with an error, and the lock just set is deleted.
///
/// Idempotent per token, because the cluster client sends a script again
/// when the connection drops before its reply arrives (the first run may
/// have happened): a run that finds the lock holding our token answers
/// "granted" with the counter as it is, which is the value our grant took
/// (the counter moves only on a grant, and none can happen while the key
/// holds our token); its TTL is left alone, so the guard's validity,
/// counted from before the first send, stays conservative. A run that
/// finds our token in the release record (a copy still in flight after
/// this lease was released) grants nothing (−1).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if not held then
  if redis.call('GET', KEYS[3]) == ARGV[1] then
    return -1
  end
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  local fence = redis.call('INCR', KEYS[2])
  if fence > 0 then
    return fence
  end
  redis.call('DEL', KEYS[1])
  return redis.error_reply('fencing counter ' .. KEYS[2] .. ' holds ' .. fence .. '; it must be a positive integer')
end
if held == ARGV[1] or held == ARGV[1] .. '+' then
  local fence = redis.call('GET', KEYS[2])
  if not fence then
    fence = redis.call('INCR', KEYS[2])
  end
  fence = tonumber(fence)
  if fence and fence > 0 then
    return fence
  end
  return redis.error_reply('fencing counter ' .. KEYS[2] .. ' holds ' .. tostring(fence) .. '; it must be a positive integer')
end
if ARGV[3] == '1' and string.sub(held, -1) ~= '+' then
  redis.call('APPEND', KEYS[1], '+')
end
return -2 - redis.call('PTTL', KEYS[1])
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` channel.
///
/// Release on one server: deletes the lock only if it still holds our
/// token; if someone waits for it (the `+` mark), publishes the lock key
/// so waiters try again. Returns 1 when released, 0 when the lock was no
/// longer ours. The common case (our token, unmarked) compares once and
/// builds no string: a script call is most of a release's cost on the
/// server, so it stays as small as [`RELEASE`] allows.
pub(crate) static RELEASE_ONE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  return redis.call('DEL', KEYS[1])
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

/// `KEYS[1]` lock, `KEYS[2]` its release record; `ARGV[1]` token,
/// `ARGV[2]` channel, `ARGV[3]` how long to keep the release record in ms
/// (`0`: keep none).
///
/// Deletes the lock only if it still holds our token; if someone failed to
/// take it meanwhile (the `+` mark), publishes the lock key so waiters try
/// again. Returns 1 when released, 0 when the lock was no longer ours.
///
/// On a Redis Cluster (a non-zero `ARGV[3]`) the release also records our
/// token in `KEYS[2]` for that long, so that a run sent again by the
/// cluster client after a lost reply answers "released" rather than "not
/// ours", and a late copy of our acquire grants nothing (see [`ACQUIRE`]).
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '0' then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
  end
  if held ~= ARGV[1] then
    redis.call('PUBLISH', ARGV[2], KEYS[1])
  end
  return 1
end
if ARGV[3] ~= '0' and redis.call('GET', KEYS[2]) == ARGV[1] then
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` lock; `ARGV[1]` token, `ARGV[2]` new TTL in ms.
///
/// Returns 1 when the TTL was reset, 0 when the lock was no longer ours.
/// Idempotent: a run sent again after a lost reply resets the TTL once
/// more, from a later moment than the guard counts from.
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

/// `KEYS[1]` lock, `KEYS[2]` its fencing counter on this node, `KEYS[3]`
/// the node's dataset mark; `ARGV[1]` token, `ARGV[2]` TTL in ms, `ARGV[3]`
/// a fresh mark.
///
/// A Redlock's first step on one node: `SET NX PX`; when granted, returns
/// `{1, counter, mark}` with the node's counter as it is (0 if it has none)
/// and its dataset mark (set to `ARGV[3]` if the node has none: a key
/// without a TTL that disappears only with the node's data); when held,
/// marks the lock as waited for (as [`MARK_WAITED`]) and returns
/// `{0, remaining TTL in ms, ''}`.
pub(crate) static REDLOCK_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local mark = redis.call('GET', KEYS[3])
  if not mark then
    mark = ARGV[3]
    redis.call('SET', KEYS[3], mark)
  end
  return {1, tonumber(redis.call('GET', KEYS[2]) or '0'), mark}
end
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, -1) ~= '+' then
  redis.call('APPEND', KEYS[1], '+')
end
return {0, redis.call('PTTL', KEYS[1]), ''}
",
    )
});

/// `KEYS[1]` lock, `KEYS[2]` its fencing counter on this node; `ARGV[1]`
/// token, `ARGV[2]` the fencing token handed out.
///
/// A Redlock's second step: raises the node's counter to the token (never
/// lowers it). Returns 1 when the lock still holds our token on this node,
/// 0 when it is gone (expired between the steps).
pub(crate) static REDLOCK_FENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` lock, `KEYS[2]` its fencing counter on this node, `KEYS[3]`
/// the node's dataset mark; `ARGV[1]` token, `ARGV[2]` new TTL in ms,
/// `ARGV[3]` our fencing token, `ARGV[4]` the mark this node had when it
/// granted us (`''` if unknown), `ARGV[5]` a fresh mark.
///
/// A Redlock's extend on one node. Returns `{1, ''}` when the lock held
/// our token and its TTL was reset: our key had been there since it was
/// set, so nobody else can have held the lock on this node meanwhile.
/// Returns `{0, ''}` when someone else holds it, or when the key is gone
/// from a node that kept its data: it expired (or was deleted), and is
/// never re-created, since someone else may have held the lock in between.
/// Only when the node's mark differs from the one it had at our grant —
/// the node lost its data (restarted empty, flushed) since — is the key
/// created again and the counter raised to our token, so a quorum worn
/// down by restarts is repaired: `{2, the node's mark now}`.
pub(crate) static REDLOCK_EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or held == ARGV[1] .. '+' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, ''}
end
if held then
  return {0, ''}
end
local mark = redis.call('GET', KEYS[3])
if ARGV[4] == '' or mark == ARGV[4] then
  return {0, ''}
end
if not mark then
  mark = ARGV[5]
  redis.call('SET', KEYS[3], mark)
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[3])
end
return {2, mark}
",
    )
});
