//! RedisLock on a real 3-master Redis Cluster: the lock-api conformance
//! suite, names spread over every master, connecting by seeds or URL,
//! wake-ups across nodes, a slot moved under a held lock (`MOVED`), a master
//! down, and a master failed over to its replica.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lock_api::conformance::Fixture;
use lock_api::{Backoff, DistributedLock, LockError};
use lock_redis::{RedisLock, RedisLockOptions};
use lock_testkit::{RedisCluster, RedisClusterOptions};

const TTL: Duration = Duration::from_secs(10);
const LIMIT: Duration = Duration::from_secs(20);

fn shared() -> &'static RedisCluster {
    RedisCluster::shared().expect("a redis cluster")
}

async fn fixture() -> Fixture {
    let seeds = shared().seed_urls();
    let lock = RedisLock::connect_cluster(&seeds).await.expect("connect");
    let other = RedisLock::connect_cluster(&seeds)
        .await
        .expect("connect a second client");
    assert!(lock.is_cluster());
    Fixture::new(Arc::new(lock), Arc::new(other))
}

mod conformance {
    lock_api::conformance_tests!(super::fixture);
}

fn unique(name: &str) -> String {
    format!("{name}:{:016x}", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_spread_over_every_master_and_stay_exclusive() {
    let cluster = shared();
    let a = RedisLock::connect(&cluster.cluster_url())
        .await
        .expect("connect by URL");
    let b = RedisLock::connect_cluster(&cluster.seed_urls())
        .await
        .expect("connect by seeds");
    let base = unique("spread");
    let mut masters = HashSet::new();
    let mut guards = Vec::new();
    let mut tokens = HashSet::new();
    tokio::time::timeout(LIMIT, async {
        for i in 0..48 {
            let name = format!("{base}:{i}");
            let slot = RedisCluster::key_slot(&format!("distlock:{{{name}}}"));
            masters.insert(cluster.node_for_slot(slot).expect("owner"));
            let guard = a.try_acquire(&name, TTL).await.expect("try").expect("free");
            assert!(
                b.try_acquire(&name, TTL).await.expect("try").is_none(),
                "{name} is held"
            );
            tokens.insert(guard.fencing_token());
            guards.push(guard);
        }
        for guard in guards {
            guard.release().await.expect("released");
        }
    })
    .await
    .expect("bounded");
    assert_eq!(masters.len(), 3, "the names reached every master");
    assert_eq!(tokens, HashSet::from([1]), "each name has its own counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_reachable_seed_is_enough_and_none_is_a_clear_error() {
    let cluster = shared();
    let dead = "redis://127.0.0.1:1/".to_owned();
    let mut seeds = vec![dead.clone()];
    seeds.extend(cluster.seed_urls().into_iter().take(1));
    let locks = RedisLockOptions::new()
        .connect_timeout(Duration::from_secs(2))
        .connect_cluster(&seeds)
        .await
        .expect("one live seed");
    let name = unique("seed");
    let guard = locks
        .try_acquire(&name, TTL)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("released");

    let err = RedisLockOptions::new()
        .connect_timeout(Duration::from_secs(1))
        .connect_cluster(&[dead])
        .await
        .expect_err("no live seed");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    let err = RedisLock::connect_cluster::<&str>(&[])
        .await
        .expect_err("no seeds");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    let err = RedisLock::connect("redis+cluster://u:s3cret@127.0.0.1:1,,127.0.0.1:2/")
        .await
        .expect_err("empty host");
    assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_wakes_waiters_subscribed_through_another_node() {
    let cluster = shared();
    let holder = RedisLock::connect_cluster(&cluster.seed_urls())
        .await
        .expect("connect");
    // The waiter subscribes through a different first seed, and its backoff
    // is far longer than the test allows: only a wake-up gets it in time.
    let mut seeds = cluster.seed_urls();
    seeds.rotate_left(1);
    let waiter = RedisLockOptions::new()
        .backoff(Backoff {
            initial: Duration::from_secs(30),
            max: Duration::from_secs(30),
        })
        .connect_cluster(&seeds)
        .await
        .expect("connect");
    for i in 0..3 {
        let name = format!("{}:{i}", unique("wake"));
        let guard = holder
            .try_acquire(&name, TTL)
            .await
            .expect("try")
            .expect("free");
        let waiting = tokio::spawn({
            let waiter = waiter.clone();
            let name = name.clone();
            async move { waiter.acquire(&name, TTL, Duration::from_secs(15)).await }
        });
        // The waiter has found the lock held (and marked it) once its
        // first attempt is done; give it that long, bounded.
        tokio::time::timeout(LIMIT, async {
            let mut conn = holder.connection();
            loop {
                let value: Option<String> = redis::cmd("GET")
                    .arg(format!("distlock:{{{name}}}"))
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                if value.is_some_and(|v| v.ends_with('+')) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the waiter tried");
        let released = std::time::Instant::now();
        guard.release().await.expect("released");
        let got = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("woken well before its 30 s backoff")
            .expect("task")
            .expect("acquired");
        assert!(released.elapsed() < Duration::from_secs(10));
        got.release().await.expect("released");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_under_a_held_lock_is_followed() {
    let cluster = RedisCluster::start().expect("a cluster of our own");
    let locks = RedisLock::connect_cluster(&cluster.seed_urls())
        .await
        .expect("connect");
    let name = "moving";
    let slot = RedisCluster::key_slot("distlock:{moving}");
    let first = locks
        .try_acquire(name, TTL)
        .await
        .expect("try")
        .expect("free");
    assert_eq!(first.fencing_token(), 1);
    first.release().await.expect("released");
    let mut guard = locks
        .try_acquire(name, TTL)
        .await
        .expect("try")
        .expect("free");
    let from = cluster.node_for_slot(slot).expect("owner");
    let to = (from + 1) % 3;
    cluster
        .migrate_slot(slot, to)
        .expect("migrate the slot with its keys");
    assert_eq!(cluster.node_for_slot(slot).expect("owner"), to);
    tokio::time::timeout(LIMIT, async {
        // The client's slot map still names the old owner: MOVED, followed.
        guard.extend(TTL).await.expect("extended on the new owner");
        assert!(
            locks.try_acquire(name, TTL).await.expect("try").is_none(),
            "still held"
        );
        guard.release().await.expect("released on the new owner");
        let next = locks
            .try_acquire(name, TTL)
            .await
            .expect("try")
            .expect("free");
        assert_eq!(next.fencing_token(), 3, "the counter moved with the lock");
        // And back again, while held.
        cluster.migrate_slot(slot, from).expect("migrate back");
        next.release().await.expect("released after moving back");
    })
    .await
    .expect("bounded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_down_is_a_connection_error_until_it_is_back() {
    let mut cluster = RedisCluster::start().expect("a cluster of our own");
    let locks = RedisLockOptions::new()
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_millis(500))
        .connect_cluster(&cluster.seed_urls())
        .await
        .expect("connect");
    let name = "down";
    let owner = cluster
        .node_for_slot(RedisCluster::key_slot("distlock:{down}"))
        .expect("owner");
    let first = locks
        .try_acquire(name, TTL)
        .await
        .expect("try")
        .expect("free");
    first.release().await.expect("released");
    cluster
        .node_mut(owner)
        .kill()
        .expect("kill the slot's master");
    let wait = Duration::from_secs(1);
    let err = tokio::time::timeout(LIMIT, locks.acquire(name, TTL, wait))
        .await
        .expect("bounded")
        .expect_err("its master is down");
    assert!(matches!(err, LockError::Connection(_)), "{err:?}");
    cluster.node_mut(owner).restart().expect("restart");
    cluster
        .wait_ready(LIMIT)
        .expect("the cluster is whole again");
    let guard = tokio::time::timeout(LIMIT, locks.acquire(name, TTL, Duration::from_secs(10)))
        .await
        .expect("bounded")
        .expect("served again once the master is back");
    guard.release().await.expect("released");
}

/// A master dies and its replica takes over. A lock that had reached the
/// replica is still held there: its guard extends and releases on the new
/// master, the other client is kept out, and the fencing counter carries
/// on. The old master, restarted, comes back as a replica and does not
/// bring its stale copy of the lock back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_keeps_a_replicated_lock() {
    // Long enough to outlast the failover (node timeout, election, rejoin).
    const HELD: Duration = Duration::from_secs(60);
    let mut cluster = RedisCluster::start_with(
        RedisClusterOptions::new()
            .replicas(1)
            .node_timeout(Duration::from_secs(1)),
    )
    .expect("a cluster with a replica per master");
    let seeds = cluster.seed_urls();
    let a = RedisLock::connect_cluster(&seeds).await.expect("connect");
    let b = RedisLock::connect_cluster(&seeds)
        .await
        .expect("connect a second client");
    let name = "failover";
    let owner = cluster
        .node_for_slot(RedisCluster::key_slot("distlock:{failover}"))
        .expect("owner");
    let first = a.try_acquire(name, HELD).await.expect("try").expect("free");
    assert_eq!(first.fencing_token(), 1);
    first.release().await.expect("released");
    let mut guard = a.try_acquire(name, HELD).await.expect("try").expect("free");
    assert_eq!(guard.fencing_token(), 2);
    cluster
        .wait_replicated(owner, LIMIT)
        .expect("the replica has the lock");

    cluster.node_mut(owner).kill().expect("kill the master");
    cluster
        .wait_failover(owner, LIMIT)
        .expect("its replica takes over");
    tokio::time::timeout(LIMIT, async {
        guard
            .extend(HELD)
            .await
            .expect("extended on the new master");
        assert!(
            b.try_acquire(name, HELD).await.expect("try").is_none(),
            "still held after the failover"
        );
        guard.release().await.expect("released on the new master");
        let next = b.try_acquire(name, HELD).await.expect("try").expect("free");
        assert_eq!(next.fencing_token(), 3, "the counter survived the failover");
        next.release().await.expect("released");
    })
    .await
    .expect("bounded");

    cluster
        .replica_mut(owner, 0)
        .restart()
        .expect("restart the old master");
    cluster
        .wait_ready(LIMIT)
        .expect("the old master rejoins as a replica");
    let again = tokio::time::timeout(LIMIT, a.try_acquire(name, HELD))
        .await
        .expect("bounded")
        .expect("try")
        .expect("free: the old master's copy did not come back");
    assert_eq!(again.fencing_token(), 4);
    again.release().await.expect("released");
}
