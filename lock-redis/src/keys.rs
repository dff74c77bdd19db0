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

/// What follows a lock key in its fencing counter's key.
pub(crate) const FENCE_SUFFIX: &str = ":fence";
/// What follows a lock key in its release record's key.
pub(crate) const RELEASED_SUFFIX: &str = ":released";

/// The fencing counter's key for a lock key: same hash tag, `:fence` after.
pub(crate) fn fence_key(lock_key: &str) -> String {
    format!("{lock_key}{FENCE_SUFFIX}")
}

/// The release record's key for a lock key: same hash tag, `:released` after.
#[cfg(test)]
pub(crate) fn released_key(lock_key: &str) -> String {
    format!("{lock_key}{RELEASED_SUFFIX}")
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
            assert_eq!(
                hash_tag(&lock),
                hash_tag(&released_key(&lock)),
                "name {name:?}"
            );
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
            assert!(
                seen.insert(released_key(&lock)),
                "release record key collision: {name:?}"
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

/// Properties over arbitrary names: the encoding is injective (it decodes
/// back), a lock and its counter always share one non-empty hash tag, and
/// exactly the names of 1..=1024 bytes are valid.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Undoes the escaping of a hash tag: `%25` → `%`, `%7D` → `}`.
    fn unescape(tag: &str) -> String {
        tag.replace("%7D", "}").replace("%25", "%")
    }

    /// Names rich in the characters the encoding treats specially.
    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[%{}:*\n\0a7D25]{1,12}",
            proptest::collection::vec(
                prop_oneof![
                    Just("%"),
                    Just("}"),
                    Just("%7D"),
                    Just("%25"),
                    Just("{"),
                    Just(":fence")
                ],
                1..8
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    fn prefix() -> impl Strategy<Value = String> {
        "[^{}]{0,12}"
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_hash_tag_decodes_back_to_the_name(name in name(), prefix in prefix()) {
            prop_assume!(!name.is_empty()); // not a valid name
            let lock = lock_key(&prefix, &name);
            prop_assert!(lock.starts_with(&prefix));
            let tag = hash_tag(&lock);
            prop_assert_eq!(unescape(tag), name);
        }

        #[test]
        fn distinct_names_never_share_a_key(a in name(), b in name(), prefix in prefix()) {
            prop_assume!(a != b);
            let (lock_a, lock_b) = (lock_key(&prefix, &a), lock_key(&prefix, &b));
            let (fence_a, fence_b) = (fence_key(&lock_a), fence_key(&lock_b));
            prop_assert_ne!(&lock_a, &lock_b);
            prop_assert_ne!(&fence_a, &fence_b);
            prop_assert_ne!(&lock_a, &fence_b);
            prop_assert_ne!(&fence_a, &lock_b);
        }

        #[test]
        fn a_lock_and_its_counter_share_one_slot(name in name(), prefix in prefix()) {
            prop_assume!(!name.is_empty());
            let lock = lock_key(&prefix, &name);
            let fence = fence_key(&lock);
            let tag = hash_tag(&lock);
            prop_assert!(!tag.is_empty());
            prop_assert_ne!(tag, lock.as_str(), "the key has a hash tag");
            prop_assert_eq!(tag, hash_tag(&fence));
            prop_assert!(check_prefix(&prefix).is_ok());
        }

        #[test]
        fn exactly_names_of_1_to_1024_bytes_are_valid(name in prop_oneof![
            any::<String>(),
            (1020usize..1030).prop_map(|n| "é".repeat(n / 2) + &"x".repeat(n % 2)),
            Just(String::new()),
        ]) {
            let valid = distlock_api::validate_name(&name);
            if (1..=distlock_api::MAX_NAME_LEN).contains(&name.len()) {
                prop_assert!(valid.is_ok(), "{} bytes: {:?}", name.len(), valid);
            } else {
                prop_assert!(
                    matches!(valid, Err(distlock_api::LockError::InvalidName(_))),
                    "{} bytes: {:?}", name.len(), valid
                );
            }
        }

        #[test]
        fn prefixes_with_a_brace_are_refused(prefix in "[^{}]{0,8}[{}][^{}]{0,8}") {
            prop_assert!(check_prefix(&prefix).is_err());
        }
    }
}
