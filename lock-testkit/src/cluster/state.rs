//! What the nodes of a [`RedisCluster`] say about it: readiness, slot
//! maps, config epochs, replication and failover, each polled until it
//! holds or a time limit passes.

use std::thread;
use std::time::{Duration, Instant};

use super::slots::{check_coverage, check_slot};
use super::{CLUSTER, RedisCluster, role};
use crate::error::TestkitError;
use crate::process;
use crate::resp::{Reply, command, text, unexpected};

impl RedisCluster {
    /// Waits up to `timeout` until every running replica of master `i` has
    /// applied everything master `i` had written when this was called
    /// (`master_repl_offset` against each replica's `slave_repl_offset`), so
    /// a failover now loses none of it.
    pub fn wait_replicated(&self, i: usize, timeout: Duration) -> Result<(), TestkitError> {
        let master = self.nodes[i].port();
        let target = replication_field(master, "master_repl_offset")?;
        self.wait_for(timeout, |cluster| {
            for replica in cluster.replicas_of(i).filter(|r| r.is_running()) {
                let port = replica.port();
                let applied = match replication_field(port, "slave_repl_offset") {
                    Ok(offset) => offset,
                    Err(e) => return Ok(Err((port, e.to_string()))),
                };
                if applied < target {
                    return Ok(Err((
                        port,
                        format!("replica at offset {applied}, master {master} at {target}"),
                    )));
                }
            }
            Ok(Ok(()))
        })
    }

    /// After master `i` was [killed](crate::RedisServer::kill) or
    /// [paused](crate::RedisServer::pause): waits up to `timeout` until one of its
    /// replicas has been elected in its place (after `cluster-node-timeout`
    /// and a vote of the other masters), and the cluster is ready again as
    /// [`wait_ready`](Self::wait_ready) checks it. From then on master `i`
    /// ([`masters`](Self::masters), [`node_mut`](Self::node_mut),
    /// [`node_for_slot`](Self::node_for_slot)) is the promoted replica, and
    /// the old master becomes its last replica
    /// ([`replica_mut`](Self::replica_mut)).
    pub fn wait_failover(&mut self, i: usize, timeout: Duration) -> Result<(), TestkitError> {
        let started = Instant::now();
        let old = self.ids[i].clone();
        let mut promoted = None;
        self.wait_for(timeout, |cluster| {
            for (at, replica) in cluster.replicas.iter().enumerate() {
                if replica.of != i || !replica.server.is_running() {
                    continue;
                }
                let port = replica.server.port();
                if let Ok((_, None)) = role(port) {
                    promoted = Some(at);
                    return Ok(Ok(()));
                }
            }
            Ok(Err((
                cluster.nodes[i].port(),
                format!("no replica of master {i} ({old}) has taken over"),
            )))
        })?;
        let at = promoted.expect("set when the wait succeeds");
        let replica = &mut self.replicas[at];
        std::mem::swap(&mut self.nodes[i], &mut replica.server);
        std::mem::swap(&mut self.ids[i], &mut replica.id);
        if let Some(ports) = self.tls_ports.as_mut() {
            let port = replica
                .tls_port
                .as_mut()
                .expect("every node of a TLS cluster has one");
            std::mem::swap(&mut ports[i], port);
        }
        // The old master follows the new one from now on; keep it last.
        let old_master = self.replicas.remove(at);
        self.replicas.push(old_master);
        self.wait_ready(timeout.saturating_sub(started.elapsed()))
    }

    /// The index (into [`masters`](Self::masters)) of the master serving
    /// `slot`, read from `CLUSTER SLOTS` of the first master that answers.
    pub fn node_for_slot(&self, slot: u16) -> Result<usize, TestkitError> {
        check_slot(slot)?;
        let mut last_error = None;
        for node in &self.nodes {
            if !node.is_running() || node.is_paused() {
                continue;
            }
            match self.owner_seen_by(node.port(), slot) {
                Ok(owner) => return Ok(owner),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            TestkitError::Other("no master of the Redis Cluster is running".into())
        }))
    }

    /// Waits up to `timeout` until every master reports `cluster_state:ok`,
    /// knows every other master, and shows the same complete map of the 16384
    /// slots in `CLUSTER SLOTS`, with every slot served by one of these
    /// masters, and the same config epoch of every master (no two alike).
    /// Use it after restarting a node, to wait for it to rejoin.
    ///
    /// Fails with [`TestkitError::NotReady`] (naming what was still wrong and
    /// showing that node's log) when the time runs out.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), TestkitError> {
        let known = format!(
            "cluster_known_nodes:{}",
            self.nodes.len() + self.replicas.len()
        );
        self.wait_for(timeout, |cluster| {
            let mut first_map = None;
            for node in &cluster.nodes {
                let port = node.port();
                let info = match text(port, &["CLUSTER", "INFO"]) {
                    Ok(info) => info,
                    Err(e) => return Ok(Err((port, e.to_string()))),
                };
                if !info.lines().any(|line| line.trim() == "cluster_state:ok") {
                    return Ok(Err((port, "cluster_state is not ok".into())));
                }
                if !info.lines().any(|line| line.trim() == known) {
                    return Ok(Err((port, format!("does not report {known}"))));
                }
                let map = match cluster.slot_map(port) {
                    Ok(map) => map,
                    Err(e) => return Ok(Err((port, e.to_string()))),
                };
                if let Err(gap) = check_coverage(&map) {
                    return Ok(Err((port, gap)));
                }
                match &first_map {
                    None => first_map = Some(map),
                    Some(first) if *first != map => {
                        return Ok(Err((
                            port,
                            "its slot map differs from another node's".into(),
                        )));
                    }
                    Some(_) => {}
                }
            }
            for replica in &cluster.replicas {
                if !replica.server.is_running() || replica.server.is_paused() {
                    continue;
                }
                let port = replica.server.port();
                match role(port) {
                    Ok((_, Some(master))) if master == cluster.ids[replica.of] => {}
                    Ok((_, master)) => {
                        return Ok(Err((
                            port,
                            format!(
                                "follows {master:?}, not master {} ({})",
                                replica.of, cluster.ids[replica.of]
                            ),
                        )));
                    }
                    Err(e) => return Ok(Err((port, e.to_string()))),
                }
                match replication_info(port) {
                    Ok(info) if info.lines().any(|l| l.trim() == "master_link_status:up") => {}
                    Ok(_) => return Ok(Err((port, "its link to its master is not up".into()))),
                    Err(e) => return Ok(Err((port, e.to_string()))),
                }
            }
            Ok(cluster.epochs_settled())
        })
    }

    /// Polls `check` until it returns `Ok(Ok(()))` or `timeout` passes;
    /// `Ok(Err((port, reason)))` means not yet, `Err` gives up at once.
    pub(super) fn wait_for(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Self) -> Result<Result<(), (u16, String)>, TestkitError>,
    ) -> Result<(), TestkitError> {
        let deadline = Instant::now() + timeout;
        let mut nap = Duration::from_millis(5);
        loop {
            let (port, reason) = match check(self)? {
                Ok(()) => return Ok(()),
                Err(not_yet) => not_yet,
            };
            let now = Instant::now();
            if now >= deadline {
                let log_tail = self
                    .nodes
                    .iter()
                    .chain(self.replicas.iter().map(|replica| &replica.server))
                    .find(|node| node.port() == port)
                    .map(|node| process::log_tail(node.log_path(), 0))
                    .unwrap_or_default();
                return Err(TestkitError::NotReady {
                    server: CLUSTER,
                    port,
                    timeout,
                    log_tail: format!("{reason}\n{log_tail}"),
                });
            }
            thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(Duration::from_millis(50));
        }
    }

    /// `Ok(())` when every master reports the same config epoch for every
    /// master, and no two masters share one; otherwise the first node that
    /// disagrees and why.
    pub(super) fn epochs_settled(&self) -> Result<(), (u16, String)> {
        let mut first: Option<Vec<u64>> = None;
        for node in &self.nodes {
            let port = node.port();
            let epochs = self
                .config_epochs(port)
                .map_err(|e| (port, e.to_string()))?;
            let mut sorted = epochs.clone();
            sorted.sort_unstable();
            if sorted.windows(2).any(|pair| pair[0] == pair[1]) {
                return Err((
                    port,
                    format!("two masters share a config epoch: {epochs:?}"),
                ));
            }
            match &first {
                None => first = Some(epochs),
                Some(seen) if *seen != epochs => {
                    return Err((
                        port,
                        format!("config epochs {epochs:?}, another master sees {seen:?}"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The config epoch of each master (in master order) as the node on
    /// `port` knows it, from `CLUSTER NODES`.
    fn config_epochs(&self, port: u16) -> Result<Vec<u64>, TestkitError> {
        let text = text(port, &["CLUSTER", "NODES"])?;
        let mut epochs = vec![None; self.ids.len()];
        for line in text.lines() {
            // <id> <ip:port@bus> <flags> <master> <ping> <pong> <epoch> <link> <slots>...
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(id), Some(epoch)) = (fields.first(), fields.get(6)) else {
                continue;
            };
            let Some(i) = self.ids.iter().position(|known| known == id) else {
                continue;
            };
            let epoch = epoch.parse::<u64>().map_err(|_| {
                TestkitError::Other(format!(
                    "127.0.0.1:{port}: CLUSTER NODES has config epoch {epoch:?} for {id}"
                ))
            })?;
            epochs[i] = Some(epoch);
        }
        epochs
            .into_iter()
            .zip(&self.ids)
            .map(|(epoch, id)| {
                epoch.ok_or_else(|| {
                    TestkitError::Other(format!("127.0.0.1:{port} does not know master {id}"))
                })
            })
            .collect()
    }

    /// `CLUSTER SLOTS` of the node on `port`, as sorted `(first, last, master
    /// index)` ranges; a master that is not one of ours is an error.
    fn slot_map(&self, port: u16) -> Result<Vec<(u16, u16, usize)>, TestkitError> {
        let reply = command(port, &["CLUSTER", "SLOTS"])?;
        let bad = || unexpected(port, "CLUSTER SLOTS", &reply);
        let Reply::Array(Some(ranges)) = &reply else {
            return Err(bad());
        };
        let mut map = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Reply::Array(Some(fields)) = range else {
                return Err(bad());
            };
            let (Some(Reply::Int(first)), Some(Reply::Int(last)), Some(Reply::Array(Some(master)))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let Some(Reply::Int(master_port)) = master.get(1) else {
                return Err(bad());
            };
            let owner = self
                .nodes
                .iter()
                .position(|node| i64::from(node.port()) == *master_port)
                .ok_or_else(|| {
                    TestkitError::Other(format!(
                        "127.0.0.1:{port} says port {master_port} serves slots \
                         {first}-{last}, which is not a master of this cluster"
                    ))
                })?;
            let (Ok(first), Ok(last)) = (u16::try_from(*first), u16::try_from(*last)) else {
                return Err(bad());
            };
            map.push((first, last, owner));
        }
        map.sort_unstable();
        Ok(map)
    }

    /// The master serving `slot` according to the node on `port`.
    pub(super) fn owner_seen_by(&self, port: u16, slot: u16) -> Result<usize, TestkitError> {
        self.slot_map(port)?
            .into_iter()
            .find(|&(first, last, _)| first <= slot && slot <= last)
            .map(|(_, _, owner)| owner)
            .ok_or_else(|| {
                TestkitError::Other(format!("127.0.0.1:{port} knows no master for slot {slot}"))
            })
    }
}

/// `INFO replication` of the node on `port`.
fn replication_info(port: u16) -> Result<String, TestkitError> {
    text(port, &["INFO", "replication"])
}

/// A numeric field of `INFO replication` (`master_repl_offset`, ...).
fn replication_field(port: u16, field: &str) -> Result<u64, TestkitError> {
    let info = replication_info(port)?;
    info.lines()
        .find_map(|line| line.trim().strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| {
            TestkitError::Other(format!(
                "127.0.0.1:{port}: INFO replication has no numeric {field}"
            ))
        })
}
