//! One acquire + release of an uncontended name, done by each implementation
//! in the comparison: the raw clients, distlock's backends and the peers.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use distlock::DistributedLock;
use distlock_postgres::{PgAdvisoryLock, PgLockOptions, WaitStrategy};
use distlock_redis::RedisLock;
use distributed_lock_core::{DistributedLock as _, LockHandle as _, LockProvider as _};
use distributed_lock_postgres::PostgresLockProvider;
use distributed_lock_redis::RedisLockProvider;
use redis::aio::ConnectionManager;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// The TTL every implementation is asked for.
pub const TTL: Duration = Duration::from_secs(30);

/// The backend names used in tables.
pub const REDIS: &str = "Redis";
/// See [`REDIS`].
pub const POSTGRES: &str = "PostgreSQL";
/// See [`REDIS`]: a Redis Cluster (section 6).
pub const REDIS_CLUSTER: &str = "Redis Cluster";

/// One uncontended lock cycle.
#[async_trait]
pub trait Cycler: Send + Sync {
    /// The implementation's name in tables.
    fn label(&self) -> &str;
    /// [`REDIS`] or [`POSTGRES`].
    fn backend(&self) -> &str;
    /// Acquire `name` (it must be free) and release it.
    async fn cycle(&self, name: &str) -> anyhow::Result<()>;
}

/// A stable 64-bit key for a name, for the raw advisory-lock cycle and the
/// `pg_advisory_lock` hand-off baseline.
pub fn key(name: &str) -> i64 {
    let mut hasher = DefaultHasher::new();
    name.hash(&mut hasher);
    hasher.finish() as i64
}

/// What a hand-written Redis lock does: `SET NX PX` and a compare-delete
/// script, on one multiplexed connection (no fencing, no wake-ups).
pub struct RawRedis {
    conn: ConnectionManager,
    token: AtomicU64,
    script: redis::Script,
}

impl RawRedis {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        Ok(RawRedis {
            conn: ConnectionManager::new(client).await?,
            token: AtomicU64::new(1),
            script: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
            ),
        })
    }
}

#[async_trait]
impl Cycler for RawRedis {
    fn label(&self) -> &str {
        "raw redis-rs"
    }
    fn backend(&self) -> &str {
        REDIS
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let token = self.token.fetch_add(1, Ordering::Relaxed);
        let set: Option<String> = redis::cmd("SET")
            .arg(name)
            .arg(token)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if set.is_none() {
            bail!("raw lock {name} was held");
        }
        let released: i64 = self
            .script
            .key(name)
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        if released != 1 {
            bail!("raw release of {name} found another token");
        }
        Ok(())
    }
}

/// What a hand-written advisory lock does: `pg_try_advisory_lock` and
/// `pg_advisory_unlock` on a pooled connection (no fencing, no TTL).
pub struct RawPg {
    pool: PgPool,
}

impl RawPg {
    /// A pool of up to `connections` connections to `url`, without sqlx's
    /// ping on every checkout (distlock's own pool does not ping either).
    pub async fn connect(url: &str, connections: u32) -> anyhow::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        Ok(RawPg { pool })
    }
}

#[async_trait]
impl Cycler for RawPg {
    fn label(&self) -> &str {
        "raw sqlx"
    }
    fn backend(&self) -> &str {
        POSTGRES
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let mut conn = self.pool.acquire().await?;
        let key = key(name);
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            bail!("raw advisory lock {name} was held");
        }
        let unlocked: bool = sqlx::query_scalar("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .fetch_one(&mut *conn)
            .await?;
        if !unlocked {
            bail!("raw advisory unlock of {name} found no lock");
        }
        Ok(())
    }
}

/// distlock, through its public trait.
pub struct Distlock {
    locks: Arc<dyn DistributedLock>,
    backend: &'static str,
    label: String,
}

impl Distlock {
    /// Any distlock lock client (a [`RedisLock`] on one server or on a
    /// cluster, a [`Redlock`](distlock_redis::Redlock), ...) under a label of
    /// its own. The label names the row and goes into the cycle names, so
    /// two rows on shared servers never use the same names.
    pub fn new(
        locks: impl DistributedLock + 'static,
        backend: &'static str,
        label: impl Into<String>,
    ) -> Self {
        Distlock {
            locks: Arc::new(locks),
            backend,
            label: label.into(),
        }
    }

    /// distlock's Redis backend with its defaults (wake-ups on).
    pub async fn redis(url: &str) -> anyhow::Result<Self> {
        Ok(Distlock {
            locks: Arc::new(RedisLock::connect(url).await?),
            backend: REDIS,
            label: "distlock".to_owned(),
        })
    }

    /// distlock's Redis backend without wake-ups: the release script does
    /// not `PUBLISH`, and there is no subscriber connection.
    pub async fn redis_without_wake_ups(url: &str) -> anyhow::Result<Self> {
        let locks = RedisLock::options()
            .wake_on_release(false)
            .connect(url)
            .await?;
        Ok(Distlock {
            locks: Arc::new(locks),
            backend: REDIS,
            label: "distlock, no wake-ups".to_owned(),
        })
    }

    /// distlock's PostgreSQL backend with a pool of `connections` and its
    /// default waiting (the server's lock queue; `NOTIFY` only for releases
    /// someone waits for).
    pub async fn postgres(url: &str, connections: u32) -> anyhow::Result<Self> {
        Self::postgres_with(url, connections, WaitStrategy::default(), "distlock").await
    }

    /// distlock's PostgreSQL backend waiting by backoff only: no `NOTIFY`
    /// in the release statement.
    pub async fn postgres_without_notify(url: &str, connections: u32) -> anyhow::Result<Self> {
        Self::postgres_with(url, connections, WaitStrategy::Poll, "distlock, no NOTIFY").await
    }

    async fn postgres_with(
        url: &str,
        connections: u32,
        strategy: WaitStrategy,
        label: &'static str,
    ) -> anyhow::Result<Self> {
        let locks: PgAdvisoryLock = PgLockOptions::new()
            .max_connections(connections)
            .wait_strategy(strategy)
            .connect(url)
            .await?;
        Ok(Distlock {
            locks: Arc::new(locks),
            backend: POSTGRES,
            label: label.to_owned(),
        })
    }
}

#[async_trait]
impl Cycler for Distlock {
    fn label(&self) -> &str {
        &self.label
    }
    fn backend(&self) -> &str {
        self.backend
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let guard = self
            .locks
            .try_acquire(name, TTL)
            .await?
            .with_context(|| format!("{name} was held"))?;
        guard.release().await?;
        Ok(())
    }
}

/// The `rslock` crate (Redlock) with one server.
pub struct RsLock {
    manager: rslock::LockManager,
}

impl RsLock {
    /// A lock manager for the one server at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let manager = rslock::LockManager::new(vec![url.to_owned()]);
        Ok(RsLock { manager })
    }
}

#[async_trait]
impl Cycler for RsLock {
    fn label(&self) -> &str {
        "rslock"
    }
    fn backend(&self) -> &str {
        REDIS
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let lock = self
            .manager
            .lock(name, TTL)
            .await
            .map_err(|e| anyhow::anyhow!("rslock: {e}"))?;
        self.manager.unlock(&lock).await;
        Ok(())
    }
}

/// The `distributed-lock` crate's Redis backend (fred, one server).
pub struct DlRedis {
    provider: RedisLockProvider,
}

impl DlRedis {
    /// A provider for the one server at `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let provider = RedisLockProvider::builder()
            .url(url)
            .expiry(TTL)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock redis: {e}"))?;
        Ok(DlRedis { provider })
    }
}

#[async_trait]
impl Cycler for DlRedis {
    fn label(&self) -> &str {
        "distributed-lock"
    }
    fn backend(&self) -> &str {
        REDIS
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let lock = self.provider.create_lock(name);
        let handle = lock
            .try_acquire()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock redis: {e}"))?
            .with_context(|| format!("{name} was held"))?;
        handle
            .release()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock redis: {e}"))?;
        Ok(())
    }
}

/// The `distributed-lock` crate's PostgreSQL backend (session advisory
/// locks on its sqlx 0.8 pool, here of `connections` connections).
pub struct DlPg {
    provider: PostgresLockProvider,
}

impl DlPg {
    /// A provider on a pool of up to `connections` connections to `url`,
    /// without sqlx's ping on every checkout (`test_before_acquire(false)`,
    /// as the raw row's pool and distlock's own): the crate takes any
    /// `PgPool`, so this is a configuration its users can choose.
    pub async fn connect(url: &str, connections: u32) -> anyhow::Result<Self> {
        let pool = sqlx08::postgres::PgPoolOptions::new()
            .max_connections(connections)
            .min_connections(connections)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        let provider = PostgresLockProvider::builder()
            .pool(pool)
            .build()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock postgres: {e}"))?;
        Ok(DlPg { provider })
    }
}

#[async_trait]
impl Cycler for DlPg {
    fn label(&self) -> &str {
        "distributed-lock"
    }
    fn backend(&self) -> &str {
        POSTGRES
    }
    async fn cycle(&self, name: &str) -> anyhow::Result<()> {
        let lock = self.provider.create_lock(name);
        let handle = lock
            .try_acquire()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock postgres: {e}"))?
            .with_context(|| format!("{name} was held"))?;
        handle
            .release()
            .await
            .map_err(|e| anyhow::anyhow!("distributed-lock postgres: {e}"))?;
        Ok(())
    }
}
