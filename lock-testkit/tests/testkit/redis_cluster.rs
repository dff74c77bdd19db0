//! Several real redis-servers: independent ones for a Redlock, and Redis
//! Clusters that form, serve keys, move slots, lose and regain a node, and
//! leave no process behind.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::redis_command;
use distlock_testkit::{
    RedisCluster, RedisClusterOptions, RedisServer, TestkitError, process_is_alive,
};

const READY: Duration = Duration::from_secs(20);

fn cluster_info(node: &RedisServer) -> String {
    redis_command(node.addr(), &["CLUSTER", "INFO"]).expect("CLUSTER INFO")
}

fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    eprintln!("{label}: {:?}", started.elapsed());
    value
}

/// Waits (bounded) until every pid is gone.
fn assert_all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&pid| process_is_alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "still alive: {:?}",
            pids.iter()
                .filter(|&&pid| process_is_alive(pid))
                .collect::<Vec<_>>()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn pids(servers: &[RedisServer]) -> Vec<u32> {
    servers
        .iter()
        .map(|server| server.pid().expect("running"))
        .collect()
}

/// Which master serves each of a spread of slots.
fn owners(cluster: &RedisCluster) -> BTreeSet<usize> {
    (0..16384u16)
        .step_by(256)
        .chain([16383])
        .map(|slot| cluster.node_for_slot(slot).expect("node_for_slot"))
        .collect()
}

#[test]
fn a_three_master_cluster_forms_serves_keys_and_goes_away() {
    let cluster = timed("3-master cluster start", RedisCluster::start).expect("start cluster");
    let masters = cluster.masters();
    assert_eq!(masters.len(), 3);
    let ports: BTreeSet<u16> = masters.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 3, "distinct ports");

    for node in masters {
        let info = cluster_info(node);
        assert!(info.contains("cluster_state:ok"), "{info}");
        assert!(info.contains("cluster_slots_assigned:16384"), "{info}");
        assert!(info.contains("cluster_slots_ok:16384"), "{info}");
        assert!(info.contains("cluster_known_nodes:3"), "{info}");
        let myid = redis_command(node.addr(), &["CLUSTER", "MYID"]).expect("MYID");
        let i = masters
            .iter()
            .position(|m| m.port() == node.port())
            .expect("own index");
        assert!(myid.contains(cluster.node_id(i)), "{myid}");
    }
    assert_eq!(
        owners(&cluster),
        BTreeSet::from([0, 1, 2]),
        "each master serves slots"
    );

    let urls = cluster.seed_urls();
    let expected: Vec<String> = masters
        .iter()
        .map(|m| format!("redis://127.0.0.1:{}/", m.port()))
        .collect();
    assert_eq!(urls, expected);
    assert_eq!(
        cluster.cluster_url(),
        format!(
            "redis+cluster://127.0.0.1:{},127.0.0.1:{},127.0.0.1:{}/",
            masters[0].port(),
            masters[1].port(),
            masters[2].port()
        )
    );

    // A key written to the master of its slot is readable through a cluster client.
    let key = "distlock:{ticket:42}";
    let owner = cluster
        .node_for_slot(RedisCluster::key_slot(key))
        .expect("owner");
    let reply = redis_command(masters[owner].addr(), &["SET", key, "booked"]).expect("SET");
    assert_eq!(reply, "+OK\r\n");
    let other = (owner + 1) % 3;
    let reply = redis_command(masters[other].addr(), &["GET", key]).expect("GET");
    assert!(reply.starts_with("-MOVED 15244 "), "{reply}");
    let output = Command::new("redis-cli")
        .args(["-c", "-p", &masters[other].port().to_string(), "GET", key])
        .output()
        .expect("redis-cli -c");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "booked");

    let pids = pids(masters);
    let dirs: Vec<_> = masters.iter().map(|m| m.data_dir().to_path_buf()).collect();
    assert!(dirs.iter().all(|dir| dir.join("nodes.conf").is_file()));
    drop(cluster);
    assert_all_gone(&pids);
    assert!(dirs.iter().all(|dir| !dir.exists()), "{dirs:?}");
}

#[test]
fn key_slot_agrees_with_cluster_keyslot() {
    let cluster = RedisCluster::start().expect("start cluster");
    let keys = [
        "foo",
        "",
        "distlock:{ticket:42}",
        "distlock:ticket:42",
        "{ticket:42}",
        "ticket:42",
        "{}",
        "{}ticket",
        "a{}b{c}",
        "{{a}}",
        "a{b",
        "a}b{",
        "{user1000}.following",
        "lock:émoji 🔒 with spaces",
    ];
    for key in keys {
        let reply = redis_command(cluster.masters()[0].addr(), &["CLUSTER", "KEYSLOT", key])
            .expect("KEYSLOT");
        assert_eq!(
            reply,
            format!(":{}\r\n", RedisCluster::key_slot(key)),
            "key {key:?}"
        );
    }
    assert_eq!(
        RedisCluster::key_slot("distlock:{ticket:42}"),
        RedisCluster::key_slot("ticket:42")
    );
}

#[test]
fn migrate_slot_moves_keys_and_the_old_owner_answers_moved() {
    let cluster = RedisCluster::start().expect("start cluster");
    let key = "distlock:{ticket:7}";
    let other_key = "fence:{ticket:7}";
    let slot = RedisCluster::key_slot(key);
    let from = cluster.node_for_slot(slot).expect("owner");
    let to = (from + 1) % 3;
    let masters = cluster.masters();
    for k in [key, other_key] {
        let reply = redis_command(masters[from].addr(), &["SET", k, "v"]).expect("SET");
        assert_eq!(reply, "+OK\r\n");
    }

    timed("migrate_slot", || cluster.migrate_slot(slot, to)).expect("migrate");

    assert_eq!(cluster.node_for_slot(slot).expect("new owner"), to);
    let masters = cluster.masters();
    let reply = redis_command(masters[from].addr(), &["GET", key]).expect("GET old owner");
    assert_eq!(
        reply,
        format!("-MOVED {slot} 127.0.0.1:{}\r\n", masters[to].port())
    );
    for k in [key, other_key] {
        let reply = redis_command(masters[to].addr(), &["GET", k]).expect("GET new owner");
        assert_eq!(reply, "$1\r\nv\r\n", "key {k}");
    }
    for node in masters {
        let reply = redis_command(
            node.addr(),
            &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()],
        )
        .expect("COUNTKEYSINSLOT");
        let expected = if node.port() == masters[to].port() {
            2
        } else {
            0
        };
        assert_eq!(reply, format!(":{expected}\r\n"));
    }
    cluster
        .wait_ready(READY)
        .expect("still ready after the move");

    // Moving to the current owner changes nothing; bad input is an error.
    cluster.migrate_slot(slot, to).expect("no-op");
    assert!(matches!(
        cluster.migrate_slot(16384, 0),
        Err(TestkitError::Other(_))
    ));
    assert!(matches!(
        cluster.migrate_slot(slot, 3),
        Err(TestkitError::Other(_))
    ));
    assert!(cluster.node_for_slot(16384).is_err());
}

/// A slot moved again as soon as `migrate_slot` returns, many times over,
/// ends where it was sent each time, on every master, with its key. Before
/// `migrate_slot` waited for the config epochs to spread, a move right after
/// a move failed now and then: a stale gossip message handed the slot back
/// to its old owner on some masters ("I'm not the owner of hash slot").
#[test]
fn a_slot_moved_back_and_forth_at_once_stays_where_it_was_sent() {
    let cluster = RedisCluster::start().expect("start cluster");
    let key = "distlock:{seat:9}";
    let slot = RedisCluster::key_slot(key);
    let home = cluster.node_for_slot(slot).expect("owner");
    let reply = redis_command(cluster.masters()[home].addr(), &["SET", key, "v"]).expect("SET");
    assert_eq!(reply, "+OK\r\n");
    for round in 0..16 {
        // Out to each of the other two masters in turn, and back home.
        let to = if round % 2 == 0 {
            (home + 1 + round / 2 % 2) % 3
        } else {
            home
        };
        cluster
            .migrate_slot(slot, to)
            .unwrap_or_else(|e| panic!("move {round} to master {to}: {e}"));
        for node in cluster.masters() {
            let reply = redis_command(node.addr(), &["GET", key]).expect("GET");
            let expected = if node.port() == cluster.masters()[to].port() {
                "$1\r\nv\r\n".to_owned()
            } else {
                format!(
                    "-MOVED {slot} 127.0.0.1:{}\r\n",
                    cluster.masters()[to].port()
                )
            };
            assert_eq!(reply, expected, "move {round}, asking port {}", node.port());
        }
    }
}

#[test]
fn a_killed_node_restarts_and_rejoins() {
    let options = RedisClusterOptions::new().node_timeout(Duration::from_millis(1000));
    let mut cluster = RedisCluster::start_with(options).expect("start cluster");
    let id = cluster.node_id(0).to_owned();
    let slot = (0..16384u16)
        .find(|&s| cluster.node_for_slot(s).expect("owner") == 0)
        .expect("master 0 serves a slot");
    let old_pid = cluster.masters()[0].pid().expect("running");

    cluster.node_mut(0).kill().expect("kill");
    assert!(!process_is_alive(old_pid));
    // The others notice: with its slots unserved, the cluster fails.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cluster_info(&cluster.masters()[1]).contains("cluster_state:fail") {
        assert!(
            Instant::now() < deadline,
            "the cluster never noticed the kill"
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert!(cluster.wait_ready(Duration::from_millis(300)).is_err());

    timed("restart + rejoin", || {
        cluster.node_mut(0).restart().expect("restart");
        cluster.wait_ready(READY)
    })
    .expect("rejoined");
    let node = &cluster.masters()[0];
    let myid = redis_command(node.addr(), &["CLUSTER", "MYID"]).expect("MYID");
    assert!(myid.contains(&id), "same identity after restart: {myid}");
    assert_eq!(cluster.node_for_slot(slot).expect("owner"), 0);
    for node in cluster.masters() {
        assert!(cluster_info(node).contains("cluster_state:ok"));
    }
    let pids = pids(cluster.masters());
    drop(cluster);
    assert_all_gone(&pids);
}

/// A replica per master: each replica follows its master, catches up when
/// asked, takes over when its master is killed (same index, same slots, the
/// data written before), and the old master, restarted, follows it.
#[test]
fn a_replica_takes_over_its_killed_master_and_the_old_master_follows() {
    let options = RedisClusterOptions::new()
        .replicas(1)
        .node_timeout(Duration::from_millis(1000));
    let mut cluster = timed("start 3 masters + 3 replicas", || {
        RedisCluster::start_with(options)
    })
    .expect("start cluster");
    for i in 0..3 {
        assert_eq!(cluster.replicas_of(i).count(), 1, "master {i}");
        let replica = cluster.replicas_of(i).next().expect("one replica");
        let info = redis_command(replica.addr(), &["INFO", "replication"]).expect("INFO");
        assert!(info.contains("role:slave"), "{info}");
        assert!(
            info.contains(&format!("master_port:{}", cluster.masters()[i].port())),
            "{info}"
        );
    }
    let key = "distlock:{failover}";
    let slot = RedisCluster::key_slot(key);
    let owner = cluster.node_for_slot(slot).expect("owner");
    let reply = redis_command(cluster.masters()[owner].addr(), &["SET", key, "v"]).expect("SET");
    assert_eq!(reply, "+OK\r\n");
    cluster
        .wait_replicated(owner, READY)
        .expect("the replica catches up");
    let old_id = cluster.node_id(owner).to_owned();
    let replica_port = cluster.replicas_of(owner).next().expect("replica").port();

    cluster.node_mut(owner).kill().expect("kill the master");
    timed("failover", || cluster.wait_failover(owner, READY)).expect("failover");
    assert_eq!(cluster.masters()[owner].port(), replica_port);
    assert_ne!(cluster.node_id(owner), old_id);
    assert_eq!(cluster.node_for_slot(slot).expect("owner"), owner);
    let reply = redis_command(cluster.masters()[owner].addr(), &["GET", key]).expect("GET");
    assert_eq!(reply, "$1\r\nv\r\n", "the write made before the failover");

    assert!(
        !cluster.replica_mut(owner, 0).is_running(),
        "the old master"
    );
    timed("old master rejoins", || {
        cluster.replica_mut(owner, 0).restart().expect("restart");
        cluster.wait_ready(READY)
    })
    .expect("the old master rejoins as a replica");
    let rejoined = cluster.replicas_of(owner).next().expect("replica");
    let info = redis_command(rejoined.addr(), &["INFO", "replication"]).expect("INFO");
    assert!(
        info.contains(&format!("master_port:{replica_port}")),
        "{info}"
    );
    let pids: Vec<u32> = cluster
        .masters()
        .iter()
        .chain((0..3).flat_map(|i| cluster.replicas_of(i)))
        .map(|server| server.pid().expect("running"))
        .collect();
    assert_eq!(pids.len(), 6);
    drop(cluster);
    assert_all_gone(&pids);
}

#[test]
fn five_independent_servers_start_together() {
    let servers = timed("start_several(5)", || RedisServer::start_several(5)).expect("start 5");
    assert_eq!(servers.len(), 5);
    let ports: BTreeSet<u16> = servers.iter().map(RedisServer::port).collect();
    assert_eq!(ports.len(), 5, "distinct ports");
    for server in &servers {
        assert_eq!(
            redis_command(server.addr(), &["PING"]).expect("PING"),
            "+PONG\r\n"
        );
        // Independent: not cluster nodes, and a write to one is not on another.
        assert!(
            redis_command(server.addr(), &["INFO", "cluster"])
                .expect("INFO")
                .contains("cluster_enabled:0")
        );
    }
    redis_command(servers[0].addr(), &["SET", "k", "v"]).expect("SET");
    assert_eq!(
        redis_command(servers[1].addr(), &["EXISTS", "k"]).expect("EXISTS"),
        ":0\r\n"
    );
    assert!(RedisServer::start_several(0).expect("none").is_empty());

    let pids = pids(&servers);
    drop(servers);
    assert_all_gone(&pids);
}

#[test]
fn a_five_master_cluster_and_bad_sizes() {
    let cluster = timed("5-master cluster start", || {
        RedisCluster::start_with(RedisClusterOptions::new().masters(5))
    })
    .expect("start 5-master cluster");
    assert_eq!(cluster.masters().len(), 5);
    assert_eq!(owners(&cluster), BTreeSet::from([0, 1, 2, 3, 4]));
    for node in cluster.masters() {
        assert!(cluster_info(node).contains("cluster_known_nodes:5"));
    }
    let pids = pids(cluster.masters());
    drop(cluster);
    assert_all_gone(&pids);

    let err = RedisCluster::start_with(RedisClusterOptions::new().masters(2))
        .expect_err("2 masters are too few");
    assert!(err.to_string().contains("at least 3"), "{err}");
}

/// Re-executed by `a_missing_redis_cli_says_what_to_install` with an empty
/// `PATH`; does nothing in a normal run.
#[test]
fn child_without_redis_cli() {
    if std::env::var_os("LOCK_TESTKIT_CLUSTER_CHILD").is_none() {
        return;
    }
    let err = RedisCluster::start().expect_err("redis-cli must not be found");
    assert!(matches!(err, TestkitError::NotInstalled { .. }), "{err:?}");
    println!("CHILD_ERROR={err}");
}

#[test]
fn a_missing_redis_cli_says_what_to_install() {
    let exe = std::env::current_exe().expect("path of the test binary");
    let output = Command::new(exe)
        .args([
            "redis_cluster::child_without_redis_cli",
            "--exact",
            "--nocapture",
        ])
        .env("LOCK_TESTKIT_CLUSTER_CHILD", "1")
        .env("PATH", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("run the child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let error = stdout
        .split_once("CHILD_ERROR=")
        .map(|(_, error)| error.lines().next().unwrap_or_default())
        .expect("the child reports its error");
    assert!(error.contains("redis-cli not found on PATH"), "{error}");
    assert!(error.contains("apt-get install redis-tools"), "{error}");
}
