//! Server settings that would break locks, checked at connect: a
//! `maxmemory-policy` that lets the server evict lock keys or counters.
//!
//! Every policy but `noeviction` can evict a held lock when memory runs
//! short: the `volatile-*` ones pick among keys with a TTL, which every
//! lock key has (the next client is then granted a lock that is still
//! held); the `allkeys-*` ones also pick fencing counters, which have no
//! TTL (tokens then start again at 1). The policy is read from
//! `INFO memory`, which servers answer where `CONFIG` is renamed or
//! disabled (as on many managed services); when `INFO` is refused too, the
//! policy is unknown, and unknown is refused like an evicting policy.

use std::time::Duration;

use distlock_api::LockError;
use redis::Value;
use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};

use crate::connection::RedisConnection;
use crate::node::{Node, bounded};
use crate::options::RedisLockOptions;

/// What a server said about its eviction policy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Policy {
    /// `noeviction`: keys are never evicted (writes fail with `OOM` instead).
    NoEviction,
    /// Any other policy, by name.
    Evicting(String),
    /// The server would not tell (`INFO` refused), with its reason.
    Unknown(String),
}

/// Refuses a server (every master of a cluster) whose `maxmemory-policy`
/// may evict locks, or cannot be read, unless `accept` is set; then it
/// only logs a warning.
pub(crate) async fn check_eviction(
    node: &Node,
    options: &RedisLockOptions,
) -> Result<(), LockError> {
    let accept = options.accept_eviction_policy;
    let limit = options
        .connect_timeout
        .saturating_add(options.response_timeout);
    let policies = policies(node, limit).await?;
    let bad: Vec<&Policy> = policies
        .iter()
        .filter(|policy| **policy != Policy::NoEviction)
        .collect();
    let Some(first) = bad.first() else {
        return Ok(());
    };
    let problem = match first {
        Policy::Evicting(name) => format!(
            "{} has maxmemory-policy {name}, which can evict lock keys{} when memory runs \
             short: a held lock would then be granted again",
            node.target,
            if name.starts_with("allkeys") {
                " and fencing counters"
            } else {
                ""
            }
        ),
        Policy::Unknown(reason) => format!(
            "the maxmemory-policy of {} cannot be read ({reason}), so it may evict lock keys",
            node.target
        ),
        Policy::NoEviction => unreachable!("filtered out"),
    };
    if accept {
        tracing::warn!(server = %node.target, "{problem}; connecting anyway, as configured");
        return Ok(());
    }
    Err(LockError::InvalidConfig(format!(
        "{problem}. Set maxmemory-policy noeviction on the server, or, if you know better, \
         RedisLockOptions::accept_eviction_policy(true)"
    )))
}

/// The policy of the server, or of every master of a cluster.
async fn policies(node: &Node, limit: Duration) -> Result<Vec<Policy>, LockError> {
    let mut info = redis::cmd("INFO");
    info.arg("memory");
    let mut conn = node.conn.clone();
    let reply = match &mut conn {
        RedisConnection::Single(single) => {
            let query = info.query_async::<Value>(single);
            bounded("read the eviction policy", &node.target, limit, query).await
        }
        RedisConnection::Cluster(cluster) => {
            let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
            let query = cluster.route_command(info, routing);
            bounded("read the eviction policy", &node.target, limit, query).await
        }
    };
    let reply = match reply {
        Ok(reply) => reply,
        // Wrong or missing credentials: the caller must hear that, not
        // that the policy is unknown.
        Err(err) if crate::error::is_auth_failure(&err) => return Err(err),
        // The server answered with an error: INFO is renamed, disabled or
        // not permitted to this user.
        Err(LockError::Backend(err)) => return Ok(vec![Policy::Unknown(err.to_string())]),
        Err(err) => return Err(err),
    };
    let mut texts = Vec::new();
    collect_texts(reply, &mut texts);
    if texts.is_empty() {
        return Ok(vec![Policy::Unknown("INFO memory said nothing".into())]);
    }
    Ok(texts.iter().map(|text| parse(text)).collect())
}

/// Every text in a reply: one per server (a cluster answers with a map of
/// node to reply).
fn collect_texts(value: Value, texts: &mut Vec<String>) {
    match value {
        Value::BulkString(bytes) => texts.push(String::from_utf8_lossy(&bytes).into_owned()),
        Value::SimpleString(text) => texts.push(text),
        Value::VerbatimString { text, .. } => texts.push(text),
        Value::Array(values) | Value::Set(values) => {
            for value in values {
                collect_texts(value, texts);
            }
        }
        Value::Map(pairs) => {
            for (_, value) in pairs {
                collect_texts(value, texts);
            }
        }
        _ => {}
    }
}

/// The policy in one server's `INFO memory` text.
fn parse(info: &str) -> Policy {
    let policy = info
        .lines()
        .find_map(|line| line.trim().strip_prefix("maxmemory_policy:"));
    match policy {
        Some("noeviction") => Policy::NoEviction,
        Some(name) => Policy::Evicting(name.to_owned()),
        None => Policy::Unknown("INFO memory has no maxmemory_policy".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_are_read_from_info_memory() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory:0\r\nmaxmemory_policy:noeviction\r\n";
        assert_eq!(parse(info), Policy::NoEviction);
        let info = "# Memory\r\nmaxmemory_policy:volatile-lru\r\n";
        assert_eq!(parse(info), Policy::Evicting("volatile-lru".into()));
        assert!(matches!(parse("# Memory\r\n"), Policy::Unknown(_)));
    }
}
