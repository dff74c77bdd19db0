//! One connection target (a server, or a whole cluster) with every command
//! bounded in time and its errors sorted: what [`RedisLock`](crate::RedisLock)
//! and each node of a [`Redlock`](crate::Redlock) talk through.

use std::future::Future;
use std::time::Duration;

use distlock_api::LockError;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::call::ScriptCall;
use crate::connection::RedisConnection;
use crate::error::{classify, timed_out};
use crate::options::RedisLockOptions;

/// A connection and what errors call it.
#[derive(Clone)]
pub(crate) struct Node {
    pub(crate) conn: RedisConnection,
    /// The URL without its password (for a cluster, the seed list), for
    /// `Debug` and errors.
    pub(crate) target: String,
    /// How long one command may take: a reconnect, then the reply.
    limit: Duration,
}

/// How hard a connection tries to reconnect before a command fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reconnect {
    /// A few times, with backoff: the only server a lock has.
    Retry,
    /// Once per command: a Redlock node, where the quorum stands in for
    /// the retries and a dead node must fail fast.
    Once,
}

fn manager_config(options: &RedisLockOptions, reconnect: Reconnect) -> ConnectionManagerConfig {
    let retries = match reconnect {
        Reconnect::Retry => 2,
        Reconnect::Once => 0,
    };
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(retries)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(1))
}

impl Node {
    /// Connects to one server; fails when it cannot be reached within the
    /// connect timeout. Also returns the driver client, for a subscriber.
    pub(crate) async fn connect(
        url: &str,
        options: &RedisLockOptions,
        reconnect: Reconnect,
    ) -> Result<(Node, redis::Client), LockError> {
        let client = crate::url::client(url, options.tls_root_certificate.as_deref())?;
        let target = crate::url::redact(url);
        let connecting =
            ConnectionManager::new_with_config(client.clone(), manager_config(options, reconnect));
        let conn = bounded("connect", &target, options.connect_timeout, connecting).await?;
        Ok((
            Node::new(RedisConnection::Single(conn), target, options),
            client,
        ))
    }

    /// A node that connects on its first command (and again after every
    /// failure): for a Redlock node that is down when the lock is created.
    pub(crate) fn lazy(
        url: &str,
        options: &RedisLockOptions,
        reconnect: Reconnect,
    ) -> Result<(Node, redis::Client), LockError> {
        let client = crate::url::client(url, options.tls_root_certificate.as_deref())?;
        let target = crate::url::redact(url);
        let conn = ConnectionManager::new_lazy_with_config(
            client.clone(),
            manager_config(options, reconnect),
        )
        .map_err(|err| crate::error::classify("connect", &target, err))?;
        Ok((
            Node::new(RedisConnection::Single(conn), target, options),
            client,
        ))
    }

    /// Connects to a Redis Cluster through any of `seeds` (`redis://` URLs
    /// of some of its masters); the client learns the slot map from the
    /// first that answers. Also returns a client per seed, for a subscriber.
    pub(crate) async fn connect_cluster(
        seeds: &[String],
        options: &RedisLockOptions,
    ) -> Result<(Node, Vec<redis::Client>), LockError> {
        let clients = seeds
            .iter()
            .map(|seed| crate::url::client(seed, options.tls_root_certificate.as_deref()))
            .collect::<Result<Vec<_>, _>>()?;
        let target = format!(
            "cluster [{}]",
            seeds
                .iter()
                .map(|seed| crate::url::redact(seed))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let infos = clients
            .iter()
            .map(|client| client.get_connection_info().clone());
        let builder = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(options.connect_timeout)
            .response_timeout(options.response_timeout)
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(500);
        let builder = with_root_certificate(builder, options);
        let cluster = builder
            .build()
            .map_err(|err| LockError::InvalidUrl(format!("{target}: {:?}", err.kind())))?;
        let conn = bounded(
            "connect",
            &target,
            options.connect_timeout,
            cluster.get_async_connection(),
        )
        .await?;
        Ok((
            Node::new(RedisConnection::Cluster(conn), target, options),
            clients,
        ))
    }

    fn new(conn: RedisConnection, target: String, options: &RedisLockOptions) -> Node {
        Node {
            conn,
            target,
            limit: options
                .connect_timeout
                .saturating_add(options.response_timeout),
        }
    }

    /// Runs one script invocation, bounded.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, LockError> {
        let mut conn = self.conn.clone();
        bounded(
            op,
            &self.target,
            self.limit,
            invocation.invoke_async(&mut conn),
        )
        .await
    }

    /// The server's `run_id` (from `INFO server`), bounded: what tells two
    /// addresses of one server apart from two servers.
    /// Sends `call`; when the server does not know its script (restarted,
    /// or `SCRIPT FLUSH`), loads it and sends the call again.
    pub(crate) async fn eval<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        call: &ScriptCall,
    ) -> Result<T, LockError> {
        let mut conn = self.conn.clone();
        let run = async {
            match call.cmd.query_async(&mut conn).await {
                Err(err)
                    if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    call.script.load_async(&mut conn).await?;
                    call.cmd.query_async(&mut conn).await
                }
                other => other,
            }
        };
        bounded(op, &self.target, self.limit, run).await
    }

    pub(crate) async fn run_id(&self) -> Result<String, LockError> {
        let mut conn = self.conn.clone();
        let info: String = bounded(
            "identify",
            &self.target,
            self.limit,
            redis::cmd("INFO").arg("server").query_async(&mut conn),
        )
        .await?;
        info.lines()
            .find_map(|line| line.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                LockError::backend(format!(
                    "{}: INFO server has no run_id; is this a Redis server?",
                    self.target
                ))
            })
    }

    /// Runs one pipeline (or transaction), bounded.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        pipeline: &redis::Pipeline,
    ) -> Result<T, LockError> {
        let mut conn = self.conn.clone();
        bounded(
            op,
            &self.target,
            self.limit,
            pipeline.query_async(&mut conn),
        )
        .await
    }
}

#[cfg(feature = "tls")]
fn with_root_certificate(
    builder: redis::cluster::ClusterClientBuilder,
    options: &RedisLockOptions,
) -> redis::cluster::ClusterClientBuilder {
    match &options.tls_root_certificate {
        Some(pem) => builder.certs(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        }),
        None => builder,
    }
}

#[cfg(not(feature = "tls"))]
fn with_root_certificate(
    builder: redis::cluster::ClusterClientBuilder,
    _options: &RedisLockOptions,
) -> redis::cluster::ClusterClientBuilder {
    builder
}

/// Awaits a driver future for at most `limit`, sorting its errors.
pub(crate) async fn bounded<T>(
    op: &'static str,
    target: &str,
    limit: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, LockError> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(classify(op, target, err)),
        Err(_) => Err(timed_out(op, target, limit)),
    }
}
