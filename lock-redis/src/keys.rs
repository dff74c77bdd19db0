//! How a lock name becomes Redis keys.
//!
//! A name `n` under prefix `p` uses two keys that share the hash tag `{e}`,
//! where `e` is `n` with `%` written as `%25` and `}` as `%7D`:
//!
//! - `p{e}`: the lock itself, a string holding the holder's token, with a TTL;
//! - `p{e}:fence`: the name's fencing counter, an integer without a TTL.
//!
//! Because `e` never contains `}`, the hash tag is exactly `e` whatever the
//! name holds, so both keys always land in one Redis Cluster slot, and the
//! encoding is injective: distinct names never share a key.

/// The keys of one lock name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Keys {
    /// The lock key: holds the holder's token, expires with the TTL.
    pub(crate) lock: String,
    /// The fencing counter, `INCR`ed on each acquisition.
    pub(crate) fence: String,
}

impl Keys {
    /// The keys of `name` under `prefix` (which must not contain braces).
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let mut lock = String::with_capacity(prefix.len() + name.len() + 2);
        lock.push_str(prefix);
        lock.push('{');
        for ch in name.chars() {
            match ch {
                '%' => lock.push_str("%25"),
                '}' => lock.push_str("%7D"),
                other => lock.push(other),
            }
        }
        lock.push('}');
        let fence = format!("{lock}:fence");
        Keys { lock, fence }
    }
}

/// Why a key prefix is unusable, if it is.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.contains(['{', '}']) {
        return Err(format!(
            "key prefix {prefix:?} contains a brace; braces would change the hash tag \
             that keeps a lock and its fencing counter in one cluster slot"
        ));
    }
    if prefix.len() > 256 {
        return Err(format!(
            "key prefix is {} bytes; at most 256 are allowed",
            prefix.len()
        ));
    }
    Ok(())
}

/// The hash tag Redis Cluster uses for `key` (the whole key when it has none).
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_stay_readable() {
        let keys = Keys::new("distlock:", "ticket:42");
        assert_eq!(keys.lock, "distlock:{ticket:42}");
        assert_eq!(keys.fence, "distlock:{ticket:42}:fence");
    }

    #[test]
    fn lock_and_fence_share_a_hash_tag_whatever_the_name() {
        for name in [
            "}", "{", "{}", "}x{", "a}b", "%7D", "*", "\n", "\"'", "ключ", "🎟",
        ] {
            let keys = Keys::new("distlock:", name);
            assert_eq!(hash_tag(&keys.lock), hash_tag(&keys.fence), "name {name:?}");
            assert!(!hash_tag(&keys.lock).is_empty(), "name {name:?}");
            assert_ne!(hash_tag(&keys.lock), keys.lock, "name {name:?} has no tag");
        }
    }

    #[test]
    fn escaping_is_injective() {
        let names = ["}", "%7D", "%", "%25", "a}", "a%7D", "x:fence", "x}:fence"];
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let keys = Keys::new("p:", name);
            assert!(
                seen.insert(keys.lock.clone()),
                "lock key collision: {name:?}"
            );
            assert!(
                seen.insert(keys.fence.clone()),
                "fence key collision: {name:?}"
            );
        }
    }

    #[test]
    fn prefixes_with_braces_are_refused() {
        assert!(check_prefix("distlock:").is_ok());
        assert!(check_prefix("").is_ok());
        assert!(check_prefix("app{1}:").is_err());
        assert!(check_prefix(&"x".repeat(257)).is_err());
    }
}
