//! What a [`RedisCluster`](super::RedisCluster) is started with.

use std::time::Duration;

use crate::servers::RedisOptions;
use crate::tls::TestCertificates;

const DEFAULT_MASTERS: usize = 3;
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// Configuration of a [`RedisCluster`](crate::RedisCluster).
#[derive(Debug, Clone)]
pub struct RedisClusterOptions {
    pub(super) masters: usize,
    pub(super) node_timeout: Duration,
    pub(super) ready_timeout: Duration,
    pub(super) node_options: RedisOptions,
    pub(super) tls: Option<TlsFiles>,
    pub(super) replicas: usize,
}

/// Where a TLS cluster's nodes find their certificate, key and CA.
#[derive(Debug, Clone)]
pub(super) struct TlsFiles {
    pub(super) cert: String,
    pub(super) key: String,
    pub(super) ca: String,
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

    /// How long [`RedisCluster::start_with`](crate::RedisCluster::start_with) waits, after forming the cluster,
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
    /// the TLS ports (see [`RedisCluster::tls_seed_urls`](crate::RedisCluster::tls_seed_urls)). The plain ports
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
    /// [`RedisCluster::wait_failover`](crate::RedisCluster::wait_failover)); replication is asynchronous, so
    /// [`RedisCluster::wait_replicated`](crate::RedisCluster::wait_replicated) tells when a replica has caught up.
    pub fn replicas(mut self, per_master: usize) -> Self {
        self.replicas = per_master;
        self
    }
}
