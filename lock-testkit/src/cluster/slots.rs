//! Redis Cluster's hash slots: which slot a key belongs to, and whether a
//! slot map covers them all.

use super::RedisCluster;
use crate::error::TestkitError;

/// The number of hash slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

impl RedisCluster {
    /// The hash slot of `key`, as Redis computes it (`CLUSTER KEYSLOT`): CRC16
    /// (XMODEM) modulo 16384 of the key, or of its hash tag, the part between
    /// the first `{` and the first `}` after it when that part is not empty.
    ///
    /// ```
    /// use distlock_testkit::RedisCluster;
    ///
    /// assert_eq!(RedisCluster::key_slot("foo"), 12182);
    /// assert_eq!(
    ///     RedisCluster::key_slot("distlock:{ticket:42}"),
    ///     RedisCluster::key_slot("ticket:42"),
    /// );
    /// ```
    pub fn key_slot(key: &str) -> u16 {
        let key = key.as_bytes();
        let hashed = key
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                let rest = &key[open + 1..];
                rest.iter()
                    .position(|&b| b == b'}')
                    .filter(|&close| close > 0)
                    .map(|close| &rest[..close])
            })
            .unwrap_or(key);
        crc16(hashed) % SLOTS
    }
}

pub(crate) fn check_slot(slot: u16) -> Result<(), TestkitError> {
    if slot < SLOTS {
        Ok(())
    } else {
        Err(TestkitError::Other(format!(
            "slot {slot} does not exist: slots are 0..=16383"
        )))
    }
}

/// `Err(what is missing)` unless the sorted ranges cover every slot exactly once.
pub(crate) fn check_coverage(map: &[(u16, u16, usize)]) -> Result<(), String> {
    let mut next = 0u32;
    for &(first, last, _) in map {
        if u32::from(first) != next || last < first {
            return Err(format!(
                "CLUSTER SLOTS does not cover the slots from {next} (next range: {first}-{last})"
            ));
        }
        next = u32::from(last) + 1;
    }
    if next == u32::from(SLOTS) {
        Ok(())
    } else {
        Err(format!(
            "CLUSTER SLOTS does not cover the slots from {next}"
        ))
    }
}

/// CRC16/XMODEM (polynomial 0x1021, initial value 0), Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_slot_matches_redis_cluster_keyslot() {
        // Expected values from `redis-cli CLUSTER KEYSLOT <key>` (Redis 7.0.15).
        let cases = [
            ("foo", 12182),
            ("bar", 5061),
            ("", 0),
            ("123456789", 12739),
            ("{user1000}.following", 3443),
            ("{user1000}.followers", 3443),
            ("foo{}{bar}", 8363),
            ("foo{{bar}}zap", 4015),
            ("foo{bar}{zap}", 5061),
            ("{}", 15257),
            ("{", 4092),
            ("}", 12090),
            ("{}foo", 9500),
            ("a{b", 13340),
            ("distlock:{ticket:42}", 15244),
            ("distlock:ticket:42", 6251),
            ("héllo", 11061),
        ];
        for (key, slot) in cases {
            assert_eq!(RedisCluster::key_slot(key), slot, "key {key:?}");
        }
    }

    #[test]
    fn crc16_is_xmodem() {
        // The check value of CRC-16/XMODEM.
        assert_eq!(crc16(b"123456789"), 0x31C3);
    }

    #[test]
    fn coverage_needs_every_slot_once() {
        assert!(check_coverage(&[(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 2)]).is_ok());
        assert!(check_coverage(&[(0, 5460, 0), (10923, 16383, 2)]).is_err());
        assert!(check_coverage(&[(0, 16382, 0)]).is_err());
        assert!(check_coverage(&[]).is_err());
    }
}
