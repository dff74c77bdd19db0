//! How a [`RedisLock`] connects and names its keys.

use std::fmt;
use std::time::Duration;

use distlock_api::{Backoff, Drift, LockError};

use crate::{RedisLock, Redlock};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "distlock:";

/// Options for [`RedisLock`], with sane defaults; finish with
/// [`connect`](RedisLockOptions::connect).
///
/// ```no_run
/// use std::time::Duration;
/// use distlock_redis::RedisLockOptions;
///
/// # async fn demo() -> Result<(), distlock_redis::distlock_api::LockError> {
/// let locks = RedisLockOptions::new()
///     .prefix("booking:locks:")
///     .connect_timeout(Duration::from_secs(2))
///     .response_timeout(Duration::from_millis(500))
///     .connect("redis://127.0.0.1:6379/0")
///     .await?;
/// # let _ = locks;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct RedisLockOptions {
    pub(crate) prefix: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) wake_on_release: bool,
    pub(crate) backoff: Backoff,
    pub(crate) drift: Drift,
    /// PEM CA certificates to trust for `rediss://` instead of the OS store.
    pub(crate) tls_root_certificate: Option<Vec<u8>>,
    /// Connect even to a server whose eviction policy may evict locks.
    pub(crate) accept_eviction_policy: bool,
}

impl Default for RedisLockOptions {
    fn default() -> Self {
        RedisLockOptions {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(1),
            wake_on_release: true,
            backoff: Backoff::default(),
            drift: Drift::default(),
            tls_root_certificate: None,
            accept_eviction_policy: false,
        }
    }
}

impl fmt::Debug for RedisLockOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLockOptions")
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("wake_on_release", &self.wake_on_release)
            .field("tls_root_certificate", &self.tls_root_certificate.is_some())
            .field("accept_eviction_policy", &self.accept_eviction_policy)
            .finish_non_exhaustive()
    }
}

impl RedisLockOptions {
    /// The defaults: prefix `distlock:`, connect timeout 3 s, response
    /// timeout 1 s, wake-ups on release on.
    pub fn new() -> Self {
        Self::default()
    }

    /// The prefix of every key (default `distlock:`). Must not contain `{`
    /// or `}`, which would break the hash tag that keeps a lock and its
    /// fencing counter in one cluster slot.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to open a connection may take (default 3 s).
    /// An unreachable server gives [`LockError::Connection`] within about
    /// this time.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a command may wait for its reply (default 1 s). A command
    /// that also has to wait for a reconnect is bounded by
    /// `connect_timeout + response_timeout`.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Whether a release wakes waiters at once (default `true`): the release
    /// script `PUBLISH`es the name, and one subscriber connection per
    /// [`RedisLock`] wakes the waiters of this process. Off, waiters notice a
    /// release by backoff alone and the lock uses one connection instead of
    /// two.
    pub fn wake_on_release(mut self, enabled: bool) -> Self {
        self.wake_on_release = enabled;
        self
    }

    /// The backoff between attempts while waiting, the fallback for a
    /// release no wake-up reports (an expiry, a missed message).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The clock-drift allowance for guards' `valid_until`.
    pub fn drift(mut self, drift: Drift) -> Self {
        self.drift = drift;
        self
    }

    /// Whether to connect to a server whose `maxmemory-policy` may evict
    /// keys, or cannot be read (default `false`).
    ///
    /// At connect, [`RedisLock`] reads the policy from `INFO memory` (of
    /// every master, on a cluster) and refuses, with
    /// [`LockError::InvalidConfig`], any policy but `noeviction`: the
    /// `volatile-*` policies may evict a held lock (it has a TTL), so the
    /// next client is granted it too, and the `allkeys-*` ones may also
    /// evict a fencing counter, so tokens start again at 1. `INFO` answers
    /// where `CONFIG` is renamed or disabled; a server that refuses `INFO`
    /// too (renamed, or an ACL without `+info`) is refused as well, since
    /// its policy is unknown. Set this when you know better (e.g. the
    /// server never reaches its `maxmemory`); it then logs a warning
    /// instead. The check is made once, at connect: a policy changed later
    /// is not noticed.
    pub fn accept_eviction_policy(mut self, accept: bool) -> Self {
        self.accept_eviction_policy = accept;
        self
    }

    /// Trusts the CA certificate(s) in `pem` for `rediss://` connections,
    /// instead of the operating system's trust store: for servers with a
    /// certificate from a private CA.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificate = Some(pem.into());
        self
    }

    /// Connects to the Redis server at `url` with these options.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidUrl`] for a URL that does not parse,
    /// [`LockError::InvalidConfig`] for an unusable option or a server
    /// whose eviction policy may evict locks (see
    /// [`accept_eviction_policy`](Self::accept_eviction_policy)), and
    /// [`LockError::Connection`] when the server cannot be reached within
    /// the connect timeout (or refuses the credentials).
    pub async fn connect(self, url: &str) -> Result<RedisLock, LockError> {
        RedisLock::connect_with(url, self).await
    }

    /// Connects to a Redis Cluster through `seeds` (`redis://` URLs of some
    /// of its masters) with these options. See
    /// [`RedisLock::connect_cluster`].
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); [`LockError::InvalidConfig`] for an
    /// empty seed list.
    pub async fn connect_cluster<S: AsRef<str> + Sync>(
        self,
        seeds: &[S],
    ) -> Result<RedisLock, LockError> {
        RedisLock::connect_cluster_with(seeds, self).await
    }

    /// Connects a [`Redlock`] over the independent servers at `urls` with
    /// these options (the same for every node). See [`Redlock::connect`].
    ///
    /// # Errors
    ///
    /// As [`Redlock::connect`].
    pub async fn connect_redlock<S: AsRef<str> + Sync>(
        self,
        urls: &[S],
    ) -> Result<Redlock, LockError> {
        Redlock::connect_with(urls, self).await
    }

    /// Connects a [`Redlock`] over the servers of a `redis+redlock://` URL
    /// with these options. See [`Redlock::connect_url`].
    ///
    /// # Errors
    ///
    /// As [`Redlock::connect_url`].
    pub async fn connect_redlock_url(self, url: &str) -> Result<Redlock, LockError> {
        Redlock::connect_url_with(url, self).await
    }

    pub(crate) fn validate(&self) -> Result<(), LockError> {
        crate::keys::check_prefix(&self.prefix).map_err(LockError::InvalidConfig)?;
        for (name, value) in [
            ("connect_timeout", self.connect_timeout),
            ("response_timeout", self.response_timeout),
        ] {
            if value.is_zero() || value > Duration::from_secs(24 * 60 * 60) {
                return Err(LockError::InvalidConfig(format!(
                    "{name} is {value:?}; it must be more than zero and at most a day"
                )));
            }
        }
        Ok(())
    }
}
