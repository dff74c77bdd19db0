//! Redlock over 3 and 5 real, independent redis-servers: the distlock-api
//! conformance suite, and what a quorum must survive — a minority down, a
//! majority down, a node restarted empty — plus the input it refuses.

use std::sync::Arc;
use std::time::Duration;

use distlock_api::conformance::{Config, Fixture};
use distlock_api::{DistributedLock, LockError};
use distlock_redis::{RedisLock, Redlock};
use distlock_testkit::RedisServer;

/// `n` independent throwaway servers.
fn servers(n: usize) -> Vec<RedisServer> {
    RedisServer::start_several(n).expect("redis-servers")
}

fn urls(servers: &[RedisServer]) -> Vec<String> {
    servers.iter().map(RedisServer::url).collect()
}

async fn fixture(n: usize) -> Fixture {
    let nodes = servers(n);
    let lock = Redlock::connect(&urls(&nodes)).await.expect("connect");
    let other = Redlock::connect(&urls(&nodes))
        .await
        .expect("connect a second client");
    // Shorter TTLs are within the default drift allowance: InvalidTtl.
    let config = Config {
        min_ttl: Duration::from_millis(3),
        ..Config::default()
    };
    Fixture::new(Arc::new(lock), Arc::new(other))
        .with_config(config)
        .keep_alive(nodes)
}

mod three_nodes {
    distlock_api::conformance_tests!(|| super::fixture(3));
}

mod five_nodes {
    distlock_api::conformance_tests!(|| super::fixture(5));
}

const TTL: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(20);

/// What `key` holds on one server, read directly.
async fn get(server: &RedisServer, key: &str) -> Option<String> {
    let locks = RedisLock::connect(&server.url()).await.expect("connect");
    let mut conn = locks.connection().await.expect("a connection of our own");
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .expect("GET")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_down_does_not_stop_acquire_extend_or_release() {
    let mut nodes = servers(3);
    let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
    nodes[2].kill().expect("kill one node");
    tokio::time::timeout(LIMIT, async {
        let mut guard = locks
            .acquire("minority", TTL, Duration::from_secs(5))
            .await
            .expect("acquired with 2 of 3 nodes");
        assert!(
            locks
                .try_acquire("minority", TTL)
                .await
                .expect("try")
                .is_none(),
            "held"
        );
        guard.extend(TTL).await.expect("extended with 2 of 3 nodes");
        let first = guard.fencing_token();
        guard.release().await.expect("released with 2 of 3 nodes");
        let again = locks
            .try_acquire("minority", TTL)
            .await
            .expect("try")
            .expect("free after release");
        assert!(again.fencing_token() > first, "tokens rise");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_down_is_a_clear_connection_error_within_the_wait() {
    let mut nodes = servers(3);
    let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
    nodes[0].kill().expect("kill");
    nodes[1].kill().expect("kill");
    let wait = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(LIMIT, locks.acquire("majority", TTL, wait))
        .await
        .expect("bounded")
        .expect_err("no majority");
    let took = started.elapsed();
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("2 of 3 nodes failed, and 2 must agree"),
        "{text}"
    );
    for node in &nodes[..2] {
        assert!(
            text.contains(&node.port().to_string()),
            "names node {}: {text}",
            node.port()
        );
    }
    assert!(took >= wait, "kept trying until the deadline: {took:?}");
    assert!(
        took < wait + Duration::from_secs(5),
        "answered soon after the deadline: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extend_repairs_a_node_restarted_empty() {
    let mut nodes = servers(3);
    let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
    let mut guard =
        tokio::time::timeout(LIMIT, locks.acquire("repair", TTL, Duration::from_secs(5)))
            .await
            .expect("bounded")
            .expect("acquired");
    let key = "distlock:{repair}";
    let token = get(&nodes[0], key).await.expect("our key on node 0");
    nodes[0].kill().expect("kill");
    nodes[0].restart().expect("restart without data");
    assert_eq!(get(&nodes[0], key).await, None, "restarted empty");
    tokio::time::timeout(LIMIT, async {
        // The node's connection may need a moment to notice the restart.
        loop {
            guard.extend(TTL).await.expect("extended");
            if get(&nodes[0], key).await.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("repaired within the limit");
    assert_eq!(
        get(&nodes[0], key).await.as_deref(),
        Some(token.as_str()),
        "same token"
    );
    let counter: Option<String> = get(&nodes[0], "distlock:{repair}:fence").await;
    assert_eq!(
        counter.as_deref(),
        Some(guard.fencing_token().to_string().as_str()),
        "the node's counter is raised to our token"
    );
    // Two nodes down now: the repaired node and one other still make a majority.
    nodes[1].kill().expect("kill");
    guard
        .extend(TTL)
        .await
        .expect("extended with the repaired node");
    guard.release().await.expect("released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_needs_a_majority_and_lets_a_minority_join_later() {
    let mut nodes = servers(3);
    nodes[2].kill().expect("kill");
    let locks = Redlock::connect(&urls(&nodes))
        .await
        .expect("2 of 3 are enough");
    let guard = locks
        .try_acquire("late", TTL)
        .await
        .expect("try")
        .expect("acquired");
    guard.release().await.expect("released");
    nodes[2].restart().expect("restart");
    nodes[1].kill().expect("kill");
    tokio::time::timeout(LIMIT, async {
        loop {
            match locks.try_acquire("late", TTL).await {
                Ok(Some(guard)) => break guard.release().await.expect("released"),
                Ok(None) => panic!("nobody holds it"),
                // The late node's connection is made on first use.
                Err(LockError::Connection(_)) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(err) => panic!("{err:?}"),
            }
        }
    })
    .await
    .expect("the late node joined");

    nodes[0].kill().expect("kill");
    let err = Redlock::connect(&urls(&nodes)).await.expect_err("1 of 3");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_node_lists_are_invalid_config() {
    let nodes = servers(3);
    let all = urls(&nodes);
    for (list, why) in [
        (vec![], "none"),
        (all[..1].to_vec(), "one"),
        (all[..2].to_vec(), "even"),
        (
            vec![all[0].clone(), all[1].clone(), all[0].clone()],
            "twice",
        ),
    ] {
        let err = Redlock::connect(&list).await.expect_err(why);
        assert!(matches!(err, LockError::InvalidConfig(_)), "{why}: {err:?}");
    }
    let err = Redlock::connect(&["redis://127.0.0.1:1/", "nonsense", "redis://127.0.0.1:2/"])
        .await
        .expect_err("bad URL");
    assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
    let multi = format!(
        "redis+redlock://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/",
        nodes[0].port(),
        nodes[1].port(),
        nodes[2].port()
    );
    let err = RedisLock::connect(&multi)
        .await
        .expect_err("not one server");
    assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
    let locks = Redlock::connect_url(&multi)
        .await
        .expect("the URL form works");
    assert_eq!((locks.node_count(), locks.quorum()), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_not_revived_by_extend() {
    let nodes = servers(3);
    let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
    let mut guard = locks
        .try_acquire("expired", Duration::from_millis(100))
        .await
        .expect("try")
        .expect("acquired");
    tokio::time::timeout(LIMIT, guard.lost())
        .await
        .expect("validity ends");
    let err = guard.extend(TTL).await.expect_err("past its validity");
    assert!(matches!(err, LockError::Lost), "{err:?}");
    // Not revived: free once its keys expire, long before a revived TTL.
    let other = tokio::time::timeout(LIMIT, locks.acquire("expired", TTL, Duration::from_secs(2)))
        .await
        .expect("bounded")
        .expect("free for the next holder");
    assert!(other.fencing_token() > guard.fencing_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_minority_does_not_hold_up_any_step() {
    let mut nodes = servers(3);
    // Waiting for the paused node would take its 10 s response timeout.
    let locks = distlock_redis::RedisLockOptions::new()
        .response_timeout(Duration::from_secs(10))
        .connect_redlock(&urls(&nodes))
        .await
        .expect("connect");
    nodes[1].pause().expect("pause one node");
    tokio::time::timeout(Duration::from_secs(5), async {
        for i in 0..3 {
            let name = format!("paused:{i}");
            let mut guard = locks
                .acquire(&name, TTL, Duration::from_secs(2))
                .await
                .expect("acquired by the other two");
            guard.extend(TTL).await.expect("extended by the other two");
            guard.release().await.expect("released by the other two");
        }
    })
    .await
    .expect("no step waited for the paused node");
    nodes[1].resume().expect("resume");
}

/// Sets `key` on one server directly, as another client's leftover would be.
async fn set_foreign(server: &RedisServer, key: &str) {
    let locks = RedisLock::connect(&server.url()).await.expect("connect");
    let mut conn = locks.connection().await.expect("a connection of our own");
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .expect("SET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_cannot_be_confirmed_is_a_connection_error_never_lost() {
    for round in 0..5 {
        let mut nodes = servers(3);
        let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
        let name = format!("unconfirmed:{round}");
        // Node 1 holds another client's key: we get nodes 0 and 2.
        set_foreign(&nodes[1], &format!("distlock:{{{name}}}")).await;
        let guard = locks
            .try_acquire(&name, TTL)
            .await
            .expect("try")
            .expect("granted by nodes 0 and 2");
        // With node 2 gone, only node 0 can confirm the release: one of
        // three. That is not a lost lock, whichever answer comes first.
        nodes[2].kill().expect("kill");
        let err = tokio::time::timeout(LIMIT, guard.release())
            .await
            .expect("bounded")
            .expect_err("no majority confirms the release");
        assert!(
            matches!(err, LockError::Connection(_)),
            "round {round}: {err:?}"
        );
    }

    // With every node up, the two that granted confirm it.
    let nodes = servers(3);
    let locks = Redlock::connect(&urls(&nodes)).await.expect("connect");
    set_foreign(&nodes[1], "distlock:{confirmed}").await;
    let guard = locks
        .try_acquire("confirmed", TTL)
        .await
        .expect("try")
        .expect("granted by nodes 0 and 2");
    guard.release().await.expect("released on nodes 0 and 2");
}

/// A TTL within the drift allowance leaves a lease no validity at all, and
/// its keys may expire between the two steps of an acquire, so two clients
/// could both be granted, with the same fencing token: it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_within_the_drift_allowance_is_invalid_ttl() {
    let nodes = servers(3);
    let first = Redlock::connect(&urls(&nodes)).await.expect("connect");
    let second = Redlock::connect(&urls(&nodes)).await.expect("connect");
    let (mut both, mut same_token, mut wrong) = (0, 0, Vec::new());
    for round in 0..20 {
        let name = format!("tiny:{round}");
        for ttl in [Duration::from_millis(1), Duration::from_millis(2)] {
            let (a, b) = tokio::time::timeout(
                LIMIT,
                futures::future::join(
                    first.try_acquire(&name, ttl),
                    // Staggered so the second comes as the first's key expires.
                    async {
                        tokio::time::sleep(Duration::from_micros(200 * (round % 10))).await;
                        second.try_acquire(&name, ttl).await
                    },
                ),
            )
            .await
            .expect("bounded");
            if let (Ok(Some(a)), Ok(Some(b))) = (&a, &b) {
                both += 1;
                same_token += usize::from(a.fencing_token() == b.fencing_token());
            }
            for result in [a, b] {
                match result {
                    Err(LockError::InvalidTtl(text)) => {
                        assert!(text.contains("at least 3ms"), "names the minimum: {text}");
                    }
                    other => wrong.push(format!("round {round}, TTL {ttl:?}: {other:?}")),
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "expected InvalidTtl; in {both} of 40 rounds both clients were granted, \
         {same_token} times with the same fencing token:\n{}",
        wrong.join("\n")
    );
    // The smallest TTL with any validity left is accepted.
    let guard = first
        .try_acquire("tiny:smallest", Duration::from_millis(3))
        .await
        .expect("a TTL of 3 ms is valid");
    drop(guard);
    // extend with a tiny TTL is refused too, and the lease is kept.
    let mut guard = first
        .try_acquire("tiny:extend", TTL)
        .await
        .expect("try")
        .expect("free");
    let err = guard
        .extend(Duration::from_millis(2))
        .await
        .expect_err("tiny");
    assert!(matches!(err, LockError::InvalidTtl(_)), "{err:?}");
    guard.extend(TTL).await.expect("still held");
    guard.release().await.expect("released");
}

/// One server under two addresses would vote twice: `localhost` and
/// `127.0.0.1` name the same server, and so does a proxy in front of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_under_two_addresses_is_invalid_config() {
    let nodes = servers(3);
    let all = urls(&nodes);
    let other_name = format!("redis://localhost:{}/", nodes[0].port());
    let err = Redlock::connect(&[all[0].clone(), other_name, all[1].clone()])
        .await
        .expect_err("node 0 listed twice");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("same server"), "{text}");
}

/// A node that is down at connect is identified when it first answers: if
/// it turns out to be a server already in the list, it never votes, so one
/// server can never make a majority of three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_node_that_is_a_listed_server_never_votes() {
    let mut nodes = servers(2);
    let proxy = distlock_testkit::LinkProxy::start(nodes[0].addr()).expect("proxy");
    proxy.cut().expect("down at connect");
    let list = vec![
        nodes[0].url(),
        nodes[1].url(),
        format!("redis://127.0.0.1:{}/", proxy.port()),
    ];
    let locks = Redlock::connect(&list).await.expect("2 of 3 reachable");
    proxy.restore().expect("the late node comes up");
    let mut guard = tokio::time::timeout(LIMIT, locks.acquire("dup:held", TTL, LIMIT))
        .await
        .expect("bounded")
        .expect("granted by node 0 and node 1");
    nodes[1].kill().expect("kill the other real server");
    // Only node 0 is left, reachable under two addresses: no majority.
    let extended = tokio::time::timeout(LIMIT, guard.extend(TTL))
        .await
        .expect("bounded");
    let text = match extended {
        Err(err @ LockError::Connection(_)) => err.to_string(),
        other => panic!("extend with one server left under two addresses: {other:?}"),
    };
    assert!(text.contains("same server"), "names the duplicate: {text}");
    for round in 0..5 {
        let result = tokio::time::timeout(LIMIT, locks.try_acquire(&format!("dup:{round}"), TTL))
            .await
            .expect("bounded");
        match result {
            Err(err @ LockError::Connection(_)) => {
                let text = err.to_string();
                assert!(text.contains("same server"), "names the duplicate: {text}");
            }
            other => panic!("round {round}: {other:?}"),
        }
    }
}

/// A node whose `maxmemory-policy` may evict keys can forget a held lock,
/// its counter or its dataset mark: refused at connect, as a single server
/// is, unless the caller accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_an_evicting_memory_policy_is_refused_at_connect() {
    let nodes = servers(3);
    let mut admin = redis::Client::open(nodes[1].url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("100mb")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");
    let err = Redlock::connect(&urls(&nodes))
        .await
        .expect_err("an evicting node is refused");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("volatile-lru"), "{err}");
    let locks = RedisLock::options()
        .accept_eviction_policy(true)
        .connect_redlock(&urls(&nodes))
        .await
        .expect("accepted when asked to");
    let guard = locks
        .acquire("evicting", TTL, Duration::ZERO)
        .await
        .expect("free");
    guard.release().await.expect("release");
}
