//! A Redis Cluster of `redis-server`s, optionally with replicas, with the
//! slot moves and failovers a cluster client must survive.
//!
//! The cluster is formed by `redis-cli --cluster create`, then checked and
//! steered with the kit's own RESP client ([`crate::resp`]), so it needs no
//! Redis crate.

mod migrate;
mod options;
mod slots;
mod state;

use std::process::Command;
use std::sync::OnceLock;

pub use options::RedisClusterOptions;
use options::TlsFiles;

use crate::error::TestkitError;
use crate::exit_cleanup;
use crate::process::{self, PortChoice, free_port, with_port};
use crate::resp::text;
use crate::servers::{RedisOptions, RedisServer, start_concurrently};

const CLI: &str = "redis-cli";
const CLUSTER: &str = "redis-cluster";
const CREATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

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
            node.shutdown_static();
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
        exit_cleanup::shared(&SHARED, "redis cluster", RedisCluster::start)
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
}

/// Starts one cluster node; its bus port (and TLS port) is chosen here, and
/// chosen again when someone else took it. Returns the node and its TLS port.
fn start_node(
    base: &RedisOptions,
    tls: Option<&TlsFiles>,
    node_timeout_ms: &str,
) -> Result<(RedisServer, Option<u16>), TestkitError> {
    with_port(PortChoice::Fresh, |bus_port| {
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
        RedisServer::start_with(options).map(|server| (server, tls_port))
    })
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

fn find_cli() -> Result<std::path::PathBuf, TestkitError> {
    process::find_on_path(CLI).ok_or_else(|| TestkitError::NotInstalled {
        program: CLI.into(),
        searched: "on PATH".into(),
        hint: "install it with `apt-get install redis-tools`".into(),
    })
}
