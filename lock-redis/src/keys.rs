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

/// The lock key of `name` under `prefix` (which must not contain braces):
/// `prefix{escaped name}`.
pub(crate) fn lock_key(prefix: &str, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + name.len() + 2);
    key.push_str(prefix);
    key.push('{');
    for ch in name.chars() {
        match ch {
            '%' => key.push_str("%25"),
            '}' => key.push_str("%7D"),
            other => key.push(other),
        }
    }
    key.push('}');
    key
}

/// The fencing counter's key for a lock key: same hash tag, `:fence` after.
pub(crate) fn fence_key(lock_key: &str) -> String {
    format!("{lock_key}:fence")
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
        let lock = lock_key("distlock:", "ticket:42");
        assert_eq!(lock, "distlock:{ticket:42}");
        assert_eq!(fence_key(&lock), "distlock:{ticket:42}:fence");
    }

    #[test]
    fn lock_and_fence_share_a_hash_tag_whatever_the_name() {
        for name in [
            "}", "{", "{}", "}x{", "a}b", "%7D", "*", "\n", "\"'", "ключ", "🎟",
        ] {
            let lock = lock_key("distlock:", name);
            let fence = fence_key(&lock);
            assert_eq!(hash_tag(&lock), hash_tag(&fence), "name {name:?}");
            assert!(!hash_tag(&lock).is_empty(), "name {name:?}");
            assert_ne!(hash_tag(&lock), lock, "name {name:?} has no tag");
        }
    }

    #[test]
    fn escaping_is_injective() {
        let names = ["}", "%7D", "%", "%25", "a}", "a%7D", "x:fence", "x}:fence"];
        let mut seen = std::collections::HashSet::new();
        for name in names {
            let lock = lock_key("p:", name);
            assert!(
                seen.insert(fence_key(&lock)),
                "fence key collision: {name:?}"
            );
            assert!(seen.insert(lock), "lock key collision: {name:?}");
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
