//! How a lock name becomes the `bigint` an advisory lock is taken on: a
//! stable, documented hash that operators can recompute in SQL.

use sha2::{Digest, Sha256};

/// The SQL expression that computes the key of the name in `$1` on the
/// server, exactly as [`lock_key`] does in Rust.
///
/// Handy for operators: find who holds `ticket:42` with
///
/// ```sql
/// SELECT l.pid, a.application_name, a.client_addr
/// FROM pg_locks l JOIN pg_stat_activity a USING (pid)
/// WHERE l.locktype = 'advisory' AND l.objsubid = 1
///   AND (l.classid::bigint << 32 | l.objid::bigint)
///     = ('x' || substr(encode(sha256(convert_to('ticket:42', 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint;
/// ```
///
/// (The database must use a UTF-8 encoding — or at least one in which the
/// name's characters have the same bytes — for `convert_to` to agree.)
pub const KEY_SQL: &str =
    "('x' || substr(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 1, 16))::bit(64)::bigint";

/// The advisory-lock key of `name`: the first 8 bytes of SHA-256 of the
/// name's UTF-8 bytes, read as a big-endian `i64`.
///
/// Stable across processes, platforms, Rust and crate versions (pinned by
/// tests), and computable in SQL with [`KEY_SQL`]. `hashtext`, PostgreSQL's
/// own string hash, is not used: it is only 32 bits wide and not documented
/// as stable across versions.
///
/// # Collisions
///
/// Two distinct names share a key with probability 2⁻⁶⁴; among `n` names in
/// use at once, some pair collides with probability about `n² / 2⁶⁵` (one
/// million names: about 3 × 10⁻⁸). A collision makes two names one lock —
/// never two holders of one name.
///
/// ```
/// assert_eq!(distlock_postgres::lock_key("ticket:42"), -2853554027507961513);
/// ```
pub fn lock_key(name: &str) -> i64 {
    lock_key_in("", name)
}

/// The key of `name` under a key namespace: the key of `namespace` followed
/// by `name` (plain concatenation, like a key prefix in Redis).
///
/// ```
/// use distlock_postgres::{lock_key, lock_key_in};
/// assert_eq!(lock_key_in("shop:", "ticket:42"), lock_key("shop:ticket:42"));
/// ```
pub fn lock_key_in(namespace: &str, name: &str) -> i64 {
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    hasher.update(name.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The two 32-bit halves PostgreSQL shows for a `bigint` advisory key in
/// `pg_locks` (`classid` = high half, `objid` = low half, `objsubid` = 1).
pub(crate) fn pg_locks_halves(key: i64) -> (i64, i64) {
    let bits = key as u64;
    ((bits >> 32) as i64, (bits & 0xffff_ffff) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_match_what_pg_locks_shows() {
        // Seen in pg_locks for pg_try_advisory_lock(-1234567890123).
        assert_eq!(
            pg_locks_halves(-1_234_567_890_123),
            (4_294_967_008, 2_382_691_125)
        );
        assert_eq!(pg_locks_halves(1), (0, 1));
    }
}
