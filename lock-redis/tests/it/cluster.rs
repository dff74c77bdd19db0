//! RedisLock on a real 3-master Redis Cluster: the distlock-api conformance
//! suite, names spread over every master, connecting by seeds or URL,
//! wake-ups across nodes, a slot moved under a held lock (`MOVED`), a master
//! down, and a master failed over to its replica.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use distlock_api::conformance::Fixture;
use distlock_api::{Backoff, DistributedLock, LockError};
use distlock_redis::{RedisLock, RedisLockOptions};
use distlock_testkit::{History, LinkProxy, RedisCluster, RedisClusterOptions};

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
    distlock_api::conformance_tests!(super::fixture);
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
            let mut conn = holder.connection().await.expect("a connection of our own");
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

/// A cluster whose client traffic runs through one [`LinkProxy`] per
/// master: each master announces its proxy's port (`cluster-announce-port`),
/// so the client's slot map names the proxies.
struct ProxiedCluster {
    cluster: RedisCluster,
    proxies: Vec<LinkProxy>,
}

impl ProxiedCluster {
    fn start() -> Self {
        let cluster = RedisCluster::start().expect("a cluster of our own");
        let proxies: Vec<LinkProxy> = cluster
            .masters()
            .iter()
            .map(|master| LinkProxy::start(master.addr()).expect("proxy"))
            .collect();
        for (master, proxy) in cluster.masters().iter().zip(&proxies) {
            let mut conn = direct(master);
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-announce-port")
                .arg(proxy.port())
                .query(&mut conn)
                .expect("announce the proxy's port");
        }
        // The other masters learn the new ports by gossip: wait until every
        // master's slot map names only proxies.
        let ports: HashSet<u16> = proxies.iter().map(LinkProxy::port).collect();
        let deadline = std::time::Instant::now() + LIMIT;
        for master in cluster.masters() {
            let mut conn = direct(master);
            loop {
                let nodes: String = redis::cmd("CLUSTER")
                    .arg("NODES")
                    .query(&mut conn)
                    .expect("CLUSTER NODES");
                let announced = nodes.lines().all(|line| {
                    let addr = line.split(' ').nth(1).unwrap_or_default();
                    let port = addr.split(['@', ':']).nth(1).unwrap_or_default();
                    port.parse().is_ok_and(|port| ports.contains(&port))
                });
                if announced {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "the announced ports did not spread: {nodes}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        ProxiedCluster { cluster, proxies }
    }

    fn seed_urls(&self) -> Vec<String> {
        self.proxies
            .iter()
            .map(|proxy| format!("redis://127.0.0.1:{}/", proxy.port()))
            .collect()
    }

    /// The master that owns `key`'s slot (the one that answers for it
    /// rather than redirecting), and its proxy.
    fn owner(&self, key: &str) -> (&distlock_testkit::RedisServer, &LinkProxy) {
        let i = self
            .cluster
            .masters()
            .iter()
            .position(|master| {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query::<i64>(&mut direct(master))
                    .is_ok()
            })
            .expect("a master serves the key");
        (&self.cluster.masters()[i], &self.proxies[i])
    }
}

/// A connection straight to one node, past any proxy.
fn direct(server: &distlock_testkit::RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .expect("url")
        .get_connection()
        .expect("connect to the node")
}

/// Polls `key` on `server` (past the proxy) until `done` holds for its
/// value; bounded. There is no event to await: the server changes the key
/// while the proxy still holds the reply back.
async fn wait_for_value(
    server: &distlock_testkit::RedisServer,
    key: &str,
    done: impl Fn(Option<&str>) -> bool + Send + 'static,
) {
    let mut conn = direct(server);
    let key = key.to_owned();
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let value: Option<String> = redis::cmd("GET").arg(&key).query(&mut conn).expect("GET");
            if done(value.as_deref()) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{key} never changed as expected: {value:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    })
    .await
    .expect("poller");
}

/// The server runs the acquire script, its reply is lost with the
/// connection, and the cluster client sends the script again on a new
/// connection. The second run must answer "already yours" (with the
/// fencing token of the grant), not "held": else the grant is orphaned
/// until its TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_acquire_after_a_lost_reply_gets_its_own_grant() {
    let proxied = ProxiedCluster::start();
    let locks = RedisLockOptions::new()
        .wake_on_release(false)
        .response_timeout(Duration::from_secs(5))
        .connect_cluster(&proxied.seed_urls())
        .await
        .expect("connect through the proxies");
    let other = RedisLock::connect_cluster(&proxied.cluster.seed_urls())
        .await
        .expect("connect a second client directly");
    let name = "retried-acquire";
    let key = "distlock:{retried-acquire}";
    let (master, proxy) = proxied.owner(key);
    let history = History::new();
    // The reply is held back by the proxy long enough for the test to cut
    // the connection once the server has run the script.
    proxy.set_delay(Duration::from_millis(300));
    let op = history.invoke_acquire(0, name);
    let attempt = tokio::spawn({
        let locks = locks.clone();
        async move { locks.try_acquire(name, TTL).await }
    });
    wait_for_value(master, key, |value| value.is_some()).await;
    proxy.cut().expect("cut");
    proxy.set_delay(Duration::ZERO);
    proxy.restore().expect("restore");
    let result = tokio::time::timeout(LIMIT, attempt)
        .await
        .expect("bounded")
        .expect("task");
    let guard = match result {
        Ok(Some(guard)) => {
            history.acquired(op, &guard);
            guard
        }
        other => {
            history.acquire_unknown(op);
            panic!("the server granted the lock to this attempt, but it answered {other:?}");
        }
    };
    let held = history.held(op, guard);
    let second = history.invoke_acquire(1, name);
    let result = tokio::time::timeout(LIMIT, other.try_acquire(name, TTL))
        .await
        .expect("bounded");
    assert!(matches!(result, Ok(None)), "{result:?}");
    history.acquire_failed(second);
    assert_eq!(held.fencing_token(), 1, "the grant's own token");
    tokio::time::timeout(LIMIT, held.release())
        .await
        .expect("bounded")
        .expect("released");
    let third = history.invoke_acquire(1, name);
    let next = tokio::time::timeout(LIMIT, other.try_acquire(name, TTL))
        .await
        .expect("bounded")
        .expect("try")
        .expect("free once released");
    history.acquired(third, &next);
    assert_eq!(next.fencing_token(), 2);
    let next = history.held(third, next);
    next.release().await.expect("released");
    history.check().assert_ok();
}

/// The server runs the release script, its reply is lost with the
/// connection, and the cluster client sends it again: the second run finds
/// the lock gone, but must not report it lost — it was released by us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_release_after_a_lost_reply_is_not_a_false_lost() {
    let proxied = ProxiedCluster::start();
    let locks = RedisLockOptions::new()
        .wake_on_release(false)
        .response_timeout(Duration::from_secs(5))
        .connect_cluster(&proxied.seed_urls())
        .await
        .expect("connect through the proxies");
    let name = "retried-release";
    let key = "distlock:{retried-release}";
    let (master, proxy) = proxied.owner(key);
    let guard = tokio::time::timeout(LIMIT, locks.try_acquire(name, TTL))
        .await
        .expect("bounded")
        .expect("try")
        .expect("free");
    proxy.set_delay(Duration::from_millis(300));
    let release = tokio::spawn(guard.release());
    wait_for_value(master, key, |value| value.is_none()).await;
    proxy.cut().expect("cut");
    proxy.set_delay(Duration::ZERO);
    proxy.restore().expect("restore");
    let result = tokio::time::timeout(LIMIT, release)
        .await
        .expect("bounded")
        .expect("task");
    assert!(
        result.is_ok(),
        "the server released the lock for this guard, but it answered {result:?}"
    );
}

/// Every master's eviction policy is checked at connect, not only the
/// seed's: a cluster whose masters may evict lock keys is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_an_evicting_policy_is_refused() {
    let cluster = RedisCluster::start_with(
        RedisClusterOptions::new().node_options(
            distlock_testkit::RedisOptions::new()
                .config("maxmemory", "100mb")
                .config("maxmemory-policy", "volatile-lru"),
        ),
    )
    .expect("a cluster of our own");
    let err = RedisLock::connect_cluster(&cluster.seed_urls())
        .await
        .expect_err("evicting policy");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("volatile-lru"), "{err}");
    let locks = RedisLockOptions::new()
        .accept_eviction_policy(true)
        .connect_cluster(&cluster.seed_urls())
        .await
        .expect("accepted when asked to");
    let guard = locks
        .try_acquire("evictable", TTL)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("released");
}
