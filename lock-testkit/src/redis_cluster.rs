//! Several `redis-server`s at once: independent ones (the nodes of a Redlock)
//! and a Redis Cluster of masters, optionally with replicas, with the slot
//! moves and failovers a cluster client must survive.
//!
//! The cluster is formed by `redis-cli --cluster create`, then checked and
//! steered over raw RESP on a `TcpStream`, so the kit needs no Redis client.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{TestkitError, io_error};
use crate::exit_cleanup;
use crate::process::{self, PORT_ATTEMPTS, free_port};
use crate::redis_server::{RedisOptions, RedisServer};
use crate::tls::TestCertificates;

const CLI: &str = "redis-cli";
const CLUSTER: &str = "redis-cluster";
/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;
const DEFAULT_MASTERS: usize = 3;
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);
const CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read/write limit of one probe command (`CLUSTER INFO`, `CLUSTER SLOTS`, ...).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `MIGRATE`'s own limit, and a bit more for the reply to arrive.
const MIGRATE_TIMEOUT_MS: u32 = 5000;
const MIGRATE_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// Keys asked for per `CLUSTER GETKEYSINSLOT`, and moved per `MIGRATE`.
const MIGRATE_BATCH: usize = 100;

impl RedisServer {
    /// Starts `n` independent servers with the default [`RedisOptions`]: the
    /// nodes of a Redlock, each on its own port with its own data.
    ///
    /// See [`start_several_with`](Self::start_several_with).
    pub fn start_several(n: usize) -> Result<Vec<Self>, TestkitError> {
        Self::start_several_with(n, RedisOptions::default())
    }

    /// Starts `n` independent servers with `options`, concurrently (one thread
    /// each), so five take about as long as one. Each answers `PING` when this
    /// returns; the servers know nothing of each other.
    ///
    /// When any of them fails to start, the ones already started are killed and
    /// the first error is returned.
    pub fn start_several_with(n: usize, options: RedisOptions) -> Result<Vec<Self>, TestkitError> {
        start_concurrently(n, |_| Self::start_with(options.clone()))
    }
}

/// Runs `start(i)` for `i` in `0..n` on `n` threads; all servers or none.
fn start_concurrently<T, F>(n: usize, start: F) -> Result<Vec<T>, TestkitError>
where
    T: Send,
    F: Fn(usize) -> Result<T, TestkitError> + Sync,
{
    let results: Vec<Result<T, TestkitError>> = thread::scope(|scope| {
        let start = &start;
        let handles: Vec<_> = (0..n)
            .map(|i| {
                thread::Builder::new()
                    .name(format!("lock-testkit-start-{i}"))
                    .spawn_scoped(scope, move || start(i))
                    .map_err(io_error("could not start a thread to start redis-server"))
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle?.join().unwrap_or_else(|_| {
                    Err(TestkitError::Other(
                        "a thread starting redis-server panicked".into(),
                    ))
                })
            })
            .collect()
    });
    // On the first error, the servers collected so far and those after it are
    // dropped, which kills them.
    results.into_iter().collect()
}

/// Configuration of a [`RedisCluster`].
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    masters: usize,
    node_timeout: Duration,
    ready_timeout: Duration,
    node_options: RedisOptions,
    tls: Option<TlsFiles>,
    replicas: usize,
}

/// Where a TLS cluster's nodes find their certificate, key and CA.
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: String,
    key: String,
    ca: String,
}

impl Default for RedisClusterOptions {
    fn default() -> Self {
        Self {
            masters: DEFAULT_MASTERS,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            node_options: RedisOptions::default(),
            tls: None,
            replicas: 0,
        }
    }
}

impl RedisClusterOptions {
    /// The defaults: 3 masters, no replicas, `cluster-node-timeout` 2 s, 20 s
    /// for the cluster to become ready.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many masters (at least 3, as `redis-cli --cluster create` requires).
    /// The 16384 slots are split evenly between them.
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// `cluster-node-timeout` (default 2 s): how long a node may be unreachable
    /// before the others consider it failing. Whole milliseconds are used.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long [`RedisCluster::start_with`] waits, after forming the cluster,
    /// for every node to report it ready (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Options every node starts with (e.g. [`RedisOptions::append_only`]); the
    /// cluster directives (`cluster-enabled`, `cluster-config-file`,
    /// `cluster-node-timeout`, `cluster-port`) are added after them.
    pub fn node_options(mut self, options: RedisOptions) -> Self {
        self.node_options = options;
        self
    }

    /// Serves TLS too, with `certs`' server certificate: every node also
    /// listens on a TLS port of its own, and the nodes talk to each other
    /// over TLS (`tls-cluster yes`), so a client connected by TLS is sent to
    /// the TLS ports (see [`RedisCluster::tls_seed_urls`]). The plain ports
    /// stay open for the kit's own probes. Client certificates are not asked
    /// for from clients (the nodes present theirs to each other on the
    /// cluster bus; the kit's certificate serves both ends). `certs` must
    /// outlive the cluster: nodes read the files again when they restart.
    pub fn tls(mut self, certs: &TestCertificates) -> Self {
        let path = |file: std::path::PathBuf| file.display().to_string();
        self.tls = Some(TlsFiles {
            cert: path(certs.server_cert()),
            key: path(certs.server_key()),
            ca: path(certs.ca_cert()),
        });
        self
    }

    /// How many replicas each master gets (default 0). A replica takes over
    /// its master's slots when the master fails (see
    /// [`RedisCluster::wait_failover`]); replication is asynchronous, so
    /// [`RedisCluster::wait_replicated`] tells when a replica has caught up.
    pub fn replicas(mut self, per_master: usize) -> Self {
        self.replicas = per_master;
        self
    }
}

/// A Redis Cluster of masters on free loopback ports, by default without
/// replicas ([`RedisClusterOptions::replicas`] adds them), formed and stable
/// when [`start`](Self::start) returns: every node reports `cluster_state:ok`
/// and the same map of all 16384 slots, and every replica is in sync.
///
/// Each node is a [`RedisServer`] with its own directory, which holds its
/// `nodes.conf`: a node that is [killed](RedisServer::kill) and
/// [restarted](RedisServer::restart) through [`node_mut`](Self::node_mut)
/// keeps its identity and slots and rejoins (see [`wait_ready`](Self::wait_ready)).
/// Its cluster bus listens on a port chosen separately (`cluster-port`),
/// not on port + 10000.
///
/// Dropping the cluster kills every node and removes their directories.
///
/// ```no_run
/// use distlock_testkit::RedisCluster;
///
/// # fn main() -> Result<(), distlock_testkit::TestkitError> {
/// let mut cluster = RedisCluster::start()?;
/// let url = cluster.cluster_url(); // redis+cluster://127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3/
/// let slot = RedisCluster::key_slot("distlock:{ticket:42}");
/// let owner = cluster.node_for_slot(slot)?;
/// cluster.migrate_slot(slot, (owner + 1) % cluster.masters().len())?; // clients now get MOVED
/// cluster.node_mut(owner).kill()?;
/// cluster.node_mut(owner).restart()?;
/// cluster.wait_ready(std::time::Duration::from_secs(20))?;
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    ids: Vec<String>,
    /// Each master's TLS port, when the cluster serves TLS.
    tls_ports: Option<Vec<u16>>,
    replicas: Vec<Replica>,
}

/// A replica node: its server, cluster id and TLS port, and the index of
/// the master it follows.
#[derive(Debug)]
struct Replica {
    of: usize,
    server: RedisServer,
    id: String,
    tls_port: Option<u16>,
}

static SHARED: OnceLock<Result<RedisCluster, String>> = OnceLock::new();

/// Stops the shared cluster's nodes and removes their directories; called
/// at process exit.
pub(crate) fn shutdown_shared() {
    if let Some(Ok(cluster)) = SHARED.get() {
        for node in &cluster.nodes {
            crate::redis_server::shutdown_static(node);
        }
    }
}

impl RedisCluster {
    /// Starts a cluster with the default [`RedisClusterOptions`] (3 masters).
    pub fn start() -> Result<Self, TestkitError> {
        Self::start_with(RedisClusterOptions::default())
    }

    /// Starts the nodes concurrently, forms the cluster with
    /// `redis-cli --cluster create ... --cluster-replicas <n>`, and waits until
    /// every node reports `cluster_state:ok` and the same complete slot map,
    /// and every replica's link to its master is up.
    ///
    /// Fails with [`TestkitError::NotInstalled`] when `redis-server` or
    /// `redis-cli` is not on `PATH`, and with [`TestkitError::NotReady`] when
    /// the cluster is not ready within the options' ready timeout. On failure
    /// every node already started is killed.
    pub fn start_with(options: RedisClusterOptions) -> Result<Self, TestkitError> {
        if options.masters < 3 {
            return Err(TestkitError::Other(format!(
                "a Redis Cluster needs at least 3 masters, not {}",
                options.masters
            )));
        }
        let cli = find_cli()?;
        let node_timeout_ms = options.node_timeout.as_millis().max(1).to_string();
        let total = options.masters * (1 + options.replicas);
        let started = start_concurrently(total, |_| {
            start_node(
                &options.node_options,
                options.tls.as_ref(),
                &node_timeout_ms,
            )
        })?;

        let mut create = Command::new(&cli);
        create.args(["--cluster", "create"]);
        create.args(
            started
                .iter()
                .map(|(node, _)| format!("127.0.0.1:{}", node.port())),
        );
        let replicas = options.replicas.to_string();
        create.args(["--cluster-replicas", &replicas, "--cluster-yes"]);
        process::run_checked(create, CREATE_TIMEOUT)?;

        // redis-cli chooses which nodes serve and which follow: ask each.
        let (mut nodes, mut ids, mut tls_ports) = (Vec::new(), Vec::new(), Vec::new());
        let mut followers = Vec::new();
        for (server, tls_port) in started {
            let (id, master) = role(server.port())?;
            match master {
                None => {
                    nodes.push(server);
                    ids.push(id);
                    tls_ports.push(tls_port);
                }
                Some(master) => followers.push((server, id, tls_port, master)),
            }
        }
        let replicas = followers
            .into_iter()
            .map(|(server, id, tls_port, master)| {
                let of = ids
                    .iter()
                    .position(|known| *known == master)
                    .ok_or_else(|| {
                        TestkitError::Other(format!(
                            "127.0.0.1:{} replicates {master}, which is not a master",
                            server.port()
                        ))
                    })?;
                Ok(Replica {
                    of,
                    server,
                    id,
                    tls_port,
                })
            })
            .collect::<Result<Vec<_>, TestkitError>>()?;
        if nodes.len() != options.masters {
            return Err(TestkitError::Other(format!(
                "redis-cli made {} masters, not {}",
                nodes.len(),
                options.masters
            )));
        }
        let cluster = Self {
            nodes,
            ids,
            tls_ports: tls_ports.into_iter().collect(),
            replicas,
        };
        cluster.wait_ready(options.ready_timeout)?;
        Ok(cluster)
    }

    /// The 3-master cluster shared by every test in this process, started on
    /// first use and stopped when the process exits. Tests on it must use
    /// keys of their own; use a cluster of your own to kill or restart nodes.
    pub fn shared() -> Result<&'static RedisCluster, TestkitError> {
        SHARED
            .get_or_init(|| {
                exit_cleanup::register();
                RedisCluster::start().map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|message| TestkitError::SharedUnavailable {
                server: "redis cluster",
                message: message.clone(),
            })
    }

    /// The masters, in the order of [`seed_urls`](Self::seed_urls); an index
    /// here is what [`node_for_slot`](Self::node_for_slot) returns.
    pub fn masters(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Master `i`, for fault handles ([`kill`](RedisServer::kill),
    /// [`pause`](RedisServer::pause), [`restart`](RedisServer::restart), ...).
    /// After a restart, [`wait_ready`](Self::wait_ready) waits for it to rejoin.
    ///
    /// # Panics
    ///
    /// When `i` is not below the number of masters, like slice indexing.
    pub fn node_mut(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The cluster node id of master `i` (`CLUSTER MYID`), kept across restarts.
    ///
    /// # Panics
    ///
    /// When `i` is not below the number of masters, like slice indexing.
    pub fn node_id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// The replicas of master `i` (none unless started with
    /// [`RedisClusterOptions::replicas`]).
    pub fn replicas_of(&self, i: usize) -> impl Iterator<Item = &RedisServer> {
        self.replicas
            .iter()
            .filter(move |replica| replica.of == i)
            .map(|replica| &replica.server)
    }

    /// The `n`th replica of master `i`, for fault handles; after
    /// [`wait_failover`](Self::wait_failover), the old master is the last
    /// replica of the master that replaced it, and once
    /// [restarted](RedisServer::restart) rejoins as its replica (see
    /// [`wait_ready`](Self::wait_ready)).
    ///
    /// # Panics
    ///
    /// When master `i` has no `n`th replica, like slice indexing.
    pub fn replica_mut(&mut self, i: usize, n: usize) -> &mut RedisServer {
        let count = self.replicas_of(i).count();
        let replica = self
            .replicas
            .iter_mut()
            .filter(|replica| replica.of == i)
            .nth(n)
            .unwrap_or_else(|| panic!("master {i} has {count} replicas, not a replica {n}"));
        &mut replica.server
    }

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

    /// After master `i` was [killed](RedisServer::kill) or
    /// [paused](RedisServer::pause): waits up to `timeout` until one of its
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

    /// `redis://127.0.0.1:<port>/` for each master.
    pub fn seed_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// `rediss://127.0.0.1:<tls port>/` for each master, when the cluster
    /// was started with [`RedisClusterOptions::tls`]; `None` otherwise.
    pub fn tls_seed_urls(&self) -> Option<Vec<String>> {
        let ports = self.tls_ports.as_ref()?;
        Some(
            ports
                .iter()
                .map(|port| format!("rediss://127.0.0.1:{port}/"))
                .collect(),
        )
    }

    /// `rediss+cluster://127.0.0.1:<t1>,127.0.0.1:<t2>,.../`: every master's
    /// TLS port as a seed, when the cluster was started with
    /// [`RedisClusterOptions::tls`]; `None` otherwise.
    pub fn tls_cluster_url(&self) -> Option<String> {
        let ports = self.tls_ports.as_ref()?;
        let hosts: Vec<String> = ports
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        Some(format!("rediss+cluster://{}/", hosts.join(",")))
    }

    /// `redis+cluster://127.0.0.1:<p1>,127.0.0.1:<p2>,.../`: every master as a seed.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port()))
            .collect();
        format!("redis+cluster://{}/", hosts.join(","))
    }

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

    /// Moves `slot`, with its keys, from its current master to master `to`,
    /// the way an operator's resharding does: `CLUSTER SETSLOT IMPORTING` on
    /// the target, `MIGRATING` on the source, `MIGRATE` of every key, then
    /// `CLUSTER SETSLOT NODE` on every master. Returns when every master's
    /// `CLUSTER SLOTS` names the new owner, so a client that cached the old
    /// map gets `MOVED` from the old owner on its next command for the slot,
    /// and every master knows every master's config epoch, so the slot can
    /// be moved again at once.
    ///
    /// A no-op when `to` already serves the slot. Every master must be running.
    pub fn migrate_slot(&self, slot: u16, to: usize) -> Result<(), TestkitError> {
        check_slot(slot)?;
        if to >= self.nodes.len() {
            return Err(TestkitError::Other(format!(
                "there is no master {to}: the cluster has {}",
                self.nodes.len()
            )));
        }
        let from = self.node_for_slot(slot)?;
        if from == to {
            return Ok(());
        }
        let slot_arg = slot.to_string();
        let (src, dst) = (self.nodes[from].port(), self.nodes[to].port());
        // With `tls-cluster yes` a node's MIGRATE speaks TLS: it must go to
        // the target's TLS port.
        let migrate_port = self.tls_ports.as_ref().map_or(dst, |ports| ports[to]);
        expect_ok(
            dst,
            &[
                "CLUSTER",
                "SETSLOT",
                &slot_arg,
                "IMPORTING",
                &self.ids[from],
            ],
        )?;
        expect_ok(
            src,
            &["CLUSTER", "SETSLOT", &slot_arg, "MIGRATING", &self.ids[to]],
        )?;

        let batch = MIGRATE_BATCH.to_string();
        let dst_port = migrate_port.to_string();
        loop {
            let keys = match command(src, &["CLUSTER", "GETKEYSINSLOT", &slot_arg, &batch])? {
                Reply::Array(Some(keys)) => keys,
                other => return Err(unexpected(src, "CLUSTER GETKEYSINSLOT", &other)),
            };
            if keys.is_empty() {
                break;
            }
            let mut args: Vec<Vec<u8>> = [
                "MIGRATE",
                "127.0.0.1",
                &dst_port,
                "",
                "0",
                &MIGRATE_TIMEOUT_MS.to_string(),
                "KEYS",
            ]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
            for key in keys {
                match key {
                    Reply::Bulk(Some(key)) => args.push(key),
                    other => return Err(unexpected(src, "CLUSTER GETKEYSINSLOT", &other)),
                }
            }
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            match Connection::open(src, MIGRATE_REPLY_TIMEOUT)?.call(&args)? {
                Reply::Status(_) => {}
                other => return Err(unexpected(src, "MIGRATE", &other)),
            }
        }

        // The target first: it bumps its config epoch, so its claim wins everywhere.
        let order = std::iter::once(to)
            .chain(std::iter::once(from))
            .chain((0..self.nodes.len()).filter(|&i| i != to && i != from));
        for i in order {
            expect_ok(
                self.nodes[i].port(),
                &["CLUSTER", "SETSLOT", &slot_arg, "NODE", &self.ids[to]],
            )?;
        }

        // Every master names the new owner, and every master knows every
        // master's new config epoch. Until the epochs have spread, a gossip
        // message the old owner sent before it let go of the slot still wins
        // over the new owner's claim wherever the new owner's old, lower
        // epoch is known, and hands the slot back to the old owner there; a
        // slot moved again before that can end with two masters each
        // sending clients to the other.
        self.wait_for(DEFAULT_READY_TIMEOUT, |cluster| {
            for node in &cluster.nodes {
                let owner = cluster.owner_seen_by(node.port(), slot)?;
                if owner != to {
                    return Ok(Err((
                        node.port(),
                        format!("master {owner} still owns slot {slot}, not master {to}"),
                    )));
                }
            }
            Ok(cluster.epochs_settled())
        })
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
    fn wait_for(
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
    fn epochs_settled(&self) -> Result<(), (u16, String)> {
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
    fn owner_seen_by(&self, port: u16, slot: u16) -> Result<usize, TestkitError> {
        self.slot_map(port)?
            .into_iter()
            .find(|&(first, last, _)| first <= slot && slot <= last)
            .map(|(_, _, owner)| owner)
            .ok_or_else(|| {
                TestkitError::Other(format!("127.0.0.1:{port} knows no master for slot {slot}"))
            })
    }
}

/// Starts one cluster node; its bus port (and TLS port) is chosen here, and
/// chosen again when someone else took it. Returns the node and its TLS port.
fn start_node(
    base: &RedisOptions,
    tls: Option<&TlsFiles>,
    node_timeout_ms: &str,
) -> Result<(RedisServer, Option<u16>), TestkitError> {
    let mut attempt = 1;
    loop {
        let bus_port = free_port()?;
        let mut options = base
            .clone()
            .config("cluster-enabled", "yes")
            .config("cluster-config-file", "nodes.conf")
            .config("cluster-node-timeout", node_timeout_ms)
            .config("cluster-port", bus_port.to_string());
        let mut tls_port = None;
        if let Some(files) = tls {
            let port = free_port()?;
            tls_port = Some(port);
            options = options
                .config("tls-port", port.to_string())
                .config("tls-cert-file", files.cert.as_str())
                .config("tls-key-file", files.key.as_str())
                .config("tls-ca-cert-file", files.ca.as_str())
                .config("tls-auth-clients", "no")
                .config("tls-cluster", "yes");
        }
        match RedisServer::start_with(options) {
            Err(e) if e.is_port_in_use() && attempt < PORT_ATTEMPTS => attempt += 1,
            result => return result.map(|server| (server, tls_port)),
        }
    }
}

/// The node on `port`'s own id, and the id of the master it replicates
/// (`None` for a master), from the `myself` line of `CLUSTER NODES`.
fn role(port: u16) -> Result<(String, Option<String>), TestkitError> {
    let text = text(port, &["CLUSTER", "NODES"])?;
    // <id> <ip:port@bus> <flags> <master> ...
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(id), Some(flags), Some(master)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        if !flags.contains(&"myself") {
            continue;
        }
        let master = (flags.contains(&"slave") && *master != "-").then(|| (*master).to_owned());
        return Ok(((*id).to_owned(), master));
    }
    Err(TestkitError::Other(format!(
        "127.0.0.1:{port}: CLUSTER NODES has no myself line"
    )))
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

fn find_cli() -> Result<std::path::PathBuf, TestkitError> {
    process::find_on_path(CLI).ok_or_else(|| TestkitError::NotInstalled {
        program: CLI.into(),
        searched: "on PATH".into(),
        hint: "install it with `apt-get install redis-tools`".into(),
    })
}

fn check_slot(slot: u16) -> Result<(), TestkitError> {
    if slot < SLOTS {
        Ok(())
    } else {
        Err(TestkitError::Other(format!(
            "slot {slot} does not exist: slots are 0..=16383"
        )))
    }
}

/// `Err(what is missing)` unless the sorted ranges cover every slot exactly once.
fn check_coverage(map: &[(u16, u16, usize)]) -> Result<(), String> {
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

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// One connection to a node, for commands with a time limit each.
struct Connection {
    port: u16,
    stream: BufReader<TcpStream>,
}

impl Connection {
    fn open(port: u16, timeout: Duration) -> Result<Self, TestkitError> {
        let context = || format!("could not talk to 127.0.0.1:{port}");
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream =
            TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).map_err(io_error(context()))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(io_error(context()))?;
        Ok(Self {
            port,
            stream: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply (an error reply is a `Reply::Error`).
    fn call(&mut self, args: &[&[u8]]) -> Result<Reply, TestkitError> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        let port = self.port;
        let name = String::from_utf8_lossy(args.first().copied().unwrap_or_default()).into_owned();
        let context = || format!("{name} on 127.0.0.1:{port}");
        self.stream
            .get_mut()
            .write_all(&request)
            .map_err(io_error(context()))?;
        self.read_reply().map_err(io_error(context()))
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what);
        let mut line = Vec::new();
        self.stream.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(invalid("truncated RESP reply"));
        }
        line.truncate(line.len() - 2);
        let (&kind, rest) = line
            .split_first()
            .ok_or_else(|| invalid("empty RESP line"))?;
        let text = String::from_utf8_lossy(rest).into_owned();
        let number = || {
            text.parse::<i64>()
                .map_err(|_| invalid("bad number in RESP reply"))
        };
        Ok(match kind {
            b'+' => Reply::Status(text),
            b'-' => Reply::Error(text),
            b':' => Reply::Int(number()?),
            b'$' => match usize::try_from(number()?) {
                Err(_) => Reply::Bulk(None),
                Ok(len) => {
                    let mut bytes = vec![0; len + 2];
                    self.stream.read_exact(&mut bytes)?;
                    bytes.truncate(len);
                    Reply::Bulk(Some(bytes))
                }
            },
            b'*' => match usize::try_from(number()?) {
                Err(_) => Reply::Array(None),
                Ok(len) => Reply::Array(Some(
                    (0..len)
                        .map(|_| self.read_reply())
                        .collect::<std::io::Result<_>>()?,
                )),
            },
            _ => return Err(invalid("unknown RESP reply type")),
        })
    }
}

/// Runs one command on a new connection, with [`PROBE_TIMEOUT`].
fn command(port: u16, args: &[&str]) -> Result<Reply, TestkitError> {
    let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
    Connection::open(port, PROBE_TIMEOUT)?.call(&args)
}

/// Runs a command that must answer `+OK`.
/// Runs a command whose reply is a text (`CLUSTER INFO`, `CLUSTER NODES`,
/// `INFO ...`) on the node on `port`; any other reply is an error.
fn text(port: u16, args: &[&str]) -> Result<String, TestkitError> {
    match command(port, args)? {
        Reply::Bulk(Some(text)) => Ok(String::from_utf8_lossy(&text).into_owned()),
        other => Err(unexpected(port, &args.join(" "), &other)),
    }
}

fn expect_ok(port: u16, args: &[&str]) -> Result<(), TestkitError> {
    match command(port, args)? {
        Reply::Status(status) if status == "OK" => Ok(()),
        other => Err(unexpected(port, &args.join(" "), &other)),
    }
}

fn unexpected(port: u16, what: &str, reply: &Reply) -> TestkitError {
    TestkitError::Other(format!("{what} on 127.0.0.1:{port} answered {reply:?}"))
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
    fn a_failed_start_kills_the_servers_already_started() {
        let pids = std::sync::Mutex::new(Vec::new());
        let result = start_concurrently(4, |i| {
            if i == 2 {
                return Err(TestkitError::Other("node 2 refuses".into()));
            }
            let server = RedisServer::start()?;
            pids.lock()
                .expect("pids")
                .push(server.pid().expect("running"));
            Ok(server)
        });
        assert!(
            matches!(&result, Err(TestkitError::Other(m)) if m == "node 2 refuses"),
            "{result:?}"
        );
        let pids = pids.into_inner().expect("pids");
        assert_eq!(pids.len(), 3);
        for pid in pids {
            assert!(!crate::process_is_alive(pid), "{pid} survived");
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
