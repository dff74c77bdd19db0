//! [`RedisLock`]: the backend, and [`RedisLease`]: one granted lock.
//!
//! Slightly over 600 lines: the lease's state machine (maybe held,
//! released, not held) is read against the acquire that sets it, and the
//! token construction's fork argument sits next to its one user.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::LockError;
use distlock_api::backend::{
    Attempt, AttemptContext, Backoff, Drift, Lease, Listener, LockBackend, WakeHub, Wakeup,
    ttl_millis,
};

use crate::call::{ScriptCall, key_command};
use crate::connection::RedisConnection;
use crate::keys::{FENCE_SUFFIX, RELEASED_SUFFIX, lock_key};
use crate::node::{Node, Reconnect};
use crate::options::RedisLockOptions;
use crate::scripts::{ACQUIRE, EXTEND, MARK_WAITED, RELEASE, RELEASE_ONE};
use crate::url::Topology;

/// The largest TTL [`RedisLock`] accepts: ten years (Redis itself takes
/// more, but a lock held that long is a bug).
pub const REDIS_MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Locks in one Redis server: `SET key token NX PX ttl` with a fencing
/// counter, compare-token release and extend, waiters woken on release.
///
/// Cheap to clone: clones share one multiplexed, auto-reconnecting
/// connection (concurrent operations pipeline on it) and, with wake-ups on,
/// one subscriber connection. Implements
/// [`DistributedLock`](distlock_api::DistributedLock) through
/// [`LockBackend`]; see the [crate docs](crate) for keys, scripts and
/// guarantees.
///
/// # Server settings the locks rely on
///
/// - **`maxmemory-policy noeviction`**: any other policy may evict a held
///   lock (every lock key has a TTL) or, for `allkeys-*`, a fencing counter.
///   [`connect`](Self::connect) refuses such a server (see
///   [`RedisLockOptions::accept_eviction_policy`]).
/// - **A wall clock that does not jump** on the Redis host. Redis stores a
///   key's expiry as an absolute wall-clock time (also in RDB and AOF
///   files), so setting that clock forward by *d* ends every lock *d*
///   early: the next client is granted a lock whose holder still counts
///   it valid (fencing tokens still rise). Setting it back makes locks
///   live longer (no double grant, only waiting). Keep the host on NTP
///   with slewing (no steps), and do not move data files to a host whose
///   clock is far off. The client's own clock does not matter: guards
///   count validity on the local monotonic clock.
#[derive(Clone)]
pub struct RedisLock {
    inner: Arc<Inner>,
}

struct Inner {
    /// The server, or the cluster.
    node: Node,
    /// Where [`RedisLock::connection`] opens users' own connections.
    source: Source,
    /// Whether `node` is a cluster (acquire is then a script: a cluster
    /// client follows a `MOVED` for one command, not inside a transaction).
    cluster: bool,
    options: RedisLockOptions,
    /// Where releases are published (also with wake-ups off here: other
    /// clients may be listening).
    channel: String,
    wake: WakeHub,
    /// Stops the subscriber task when the last clone goes away.
    _listener: Option<Listener>,
}

/// What a [`RedisLock`] connected to, to open more connections there.
enum Source {
    /// The server's URL (with its password: never printed).
    Single(String),
    /// The cluster's seed URLs.
    Cluster(Vec<String>),
}

impl Inner {
    /// How long a cluster release keeps its record (0 on one server, which
    /// never sends a command twice): as long as one command may take, so
    /// any copy the cluster client sends again while we still wait for the
    /// answer finds it.
    fn release_record_ms(&self) -> u64 {
        if self.cluster {
            let limit = self
                .options
                .connect_timeout
                .saturating_add(self.options.response_timeout);
            ttl_millis(limit)
        } else {
            0
        }
    }
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("server", &self.inner.node.target)
            .field("prefix", &self.inner.options.prefix)
            .field("wake_on_release", &self.inner.options.wake_on_release)
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    /// Connects to the Redis server at `url`:
    /// `redis://[user[:password]@]host[:port][/db]`, `rediss://…` for TLS
    /// (with the `tls` feature), or a Redis Cluster as
    /// `redis+cluster://[user[:password]@]host:port,host:port,…/` (or
    /// `rediss+cluster://…`), listing some of its masters as seeds.
    ///
    /// Uses the default [`RedisLockOptions`]; use those to change the key
    /// prefix or the timeouts.
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidUrl`] for a URL that does not parse (or names a
    /// Redlock: use [`Redlock::connect`](crate::Redlock::connect));
    /// [`LockError::Connection`] when the server cannot be reached within
    /// the connect timeout (3 s by default); [`LockError::Backend`] when it
    /// refuses the credentials.
    pub async fn connect(url: &str) -> Result<Self, LockError> {
        Self::connect_with(url, RedisLockOptions::default()).await
    }

    /// Connects to a Redis Cluster through `seeds`: `redis://` URLs of some
    /// of its masters (one that answers is enough; the client learns the
    /// slot map from it and follows `MOVED` and `ASK` redirections).
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); [`LockError::InvalidConfig`] for an
    /// empty seed list.
    pub async fn connect_cluster<S: AsRef<str> + Sync>(seeds: &[S]) -> Result<Self, LockError> {
        RedisLockOptions::default().connect_cluster(seeds).await
    }

    /// The options for [`RedisLockOptions::connect`].
    pub fn options() -> RedisLockOptions {
        RedisLockOptions::default()
    }

    pub(crate) async fn connect_with(
        url: &str,
        options: RedisLockOptions,
    ) -> Result<Self, LockError> {
        options.validate()?;
        match crate::url::topology(url)? {
            Topology::Single => {}
            Topology::Cluster(seeds) => return Self::connect_cluster_with(&seeds, options).await,
            Topology::Redlock(_) => {
                return Err(LockError::InvalidUrl(format!(
                    "{}: a redis+redlock:// URL names several independent servers; \
                     connect to it with distlock_redis::Redlock::connect",
                    crate::url::redact(url)
                )));
            }
        }
        let (node, client) = Node::connect(url, &options, Reconnect::Retry).await?;
        // Pub/sub spans all databases of a server: name the database in the
        // channel so that locks in another one do not wake our waiters.
        let channel = match client.get_connection_info().redis_settings().db() {
            0 => format!("{}released", options.prefix),
            db => format!("{}released@{db}", options.prefix),
        };
        let source = Source::Single(url.to_owned());
        Self::finish(node, source, vec![client], channel, options).await
    }

    pub(crate) async fn connect_cluster_with<S: AsRef<str> + Sync>(
        seeds: &[S],
        options: RedisLockOptions,
    ) -> Result<Self, LockError> {
        options.validate()?;
        if seeds.is_empty() {
            return Err(LockError::InvalidConfig(
                "a Redis Cluster needs at least one seed node URL".into(),
            ));
        }
        let seeds: Vec<String> = seeds.iter().map(|s| s.as_ref().to_owned()).collect();
        for seed in &seeds {
            if crate::url::topology(seed)? != Topology::Single {
                return Err(LockError::InvalidUrl(format!(
                    "{}: a seed is the redis:// URL of one cluster node",
                    crate::url::redact(seed)
                )));
            }
        }
        let (node, clients) = Node::connect_cluster(&seeds, &options).await?;
        let source = Source::Cluster(seeds);
        // A cluster has database 0 only, and a message published on any of
        // its nodes reaches subscribers on all of them.
        let channel = format!("{}released", options.prefix);
        Self::finish(node, source, clients, channel, options).await
    }

    async fn finish(
        node: Node,
        source: Source,
        subscribe_through: Vec<redis::Client>,
        channel: String,
        options: RedisLockOptions,
    ) -> Result<Self, LockError> {
        crate::settings::check_eviction(&node, &options).await?;
        let wake = WakeHub::new();
        let listener = if options.wake_on_release {
            let listener = crate::listener::start(
                subscribe_through,
                channel.clone(),
                wake.clone(),
                options.connect_timeout,
                node.target.clone(),
                true,
            )
            .await?;
            Some(listener)
        } else {
            None
        };
        let cluster = matches!(source, Source::Cluster(_));
        Ok(RedisLock {
            inner: Arc::new(Inner {
                node,
                source,
                cluster,
                options,
                channel,
                wake,
                _listener: listener,
            }),
        })
    }

    /// The key prefix this lock uses.
    pub fn prefix(&self) -> &str {
        &self.inner.options.prefix
    }

    /// Whether this lock talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        self.inner.cluster
    }

    /// Opens a connection of your own to the same server (or cluster),
    /// with this lock's options (URL, credentials, TLS, timeouts), for
    /// commands next to the locks.
    ///
    /// It is never the connection the locks use: a `SELECT`, a blocking
    /// command (`BLPOP`, `WAIT`), `MULTI` or `CLIENT REPLY OFF` on it
    /// cannot move the locks to another database or stall them. Each call
    /// opens a new one (for a cluster, sockets to its masters): keep it,
    /// and clone it to share it (clones share its socket). It reconnects
    /// by itself, and is then back on the URL's database.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect): [`LockError::Connection`] when the
    /// server cannot be reached within the connect timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a dropped call leaves nothing open.
    pub async fn connection(&self) -> Result<RedisConnection, LockError> {
        let node = match &self.inner.source {
            Source::Single(url) => {
                Node::connect(url, &self.inner.options, Reconnect::Retry)
                    .await?
                    .0
            }
            Source::Cluster(seeds) => Node::connect_cluster(seeds, &self.inner.options).await?.0,
        };
        Ok(node.conn)
    }
}

/// A per-acquisition token: 128 bits as 32 lowercase hex digits.
pub(crate) type Token = [u8; 32];

/// A token no other acquisition has, in this process or any other: 64
/// bits drawn from the operating system once per process, then a counter
/// shared by all threads.
///
/// The process part is drawn again whenever the process id changes, so a
/// `fork()`ed child never repeats its parent's tokens (a thread-local
/// random generator would: its state is copied into the child, and rand
/// 0.9 does not reseed on fork). Uniqueness within a process rests on the
/// counter alone; across processes, on 64 fresh random bits each (a
/// collision among a million processes has odds of about 1 in 3·10⁷).
/// Cheap: one `getpid` and one atomic add per token.
pub(crate) fn new_token() -> Token {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let count = TOKEN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = (u128::from(process_key()) << 64) | u128::from(count);
    std::array::from_fn(|i| HEX[((bits >> (4 * (31 - i))) & 0xf) as usize])
}

/// Tokens made by this process so far (carried into a forked child, where
/// the process key differs).
static TOKEN_COUNTER: AtomicU64 = AtomicU64::new(0);
/// The process [`PROCESS_KEY`] was drawn in (0: not yet).
static KEY_PID: AtomicU32 = AtomicU32::new(0);
/// This process's random part of every token.
static PROCESS_KEY: AtomicU64 = AtomicU64::new(0);

/// The random part of this process's tokens, drawn afresh in a new process.
fn process_key() -> u64 {
    let pid = std::process::id();
    if KEY_PID.load(Ordering::Acquire) == pid {
        return PROCESS_KEY.load(Ordering::Relaxed);
    }
    // First token, or first in a forked child. Threads racing here each
    // draw and store a key; any of them is fine, since the counter already
    // tells this process's tokens apart.
    let key = draw_process_key(pid);
    PROCESS_KEY.store(key, Ordering::Relaxed);
    KEY_PID.store(pid, Ordering::Release);
    key
}

/// 64 bits from the operating system's generator (never the thread-local
/// one, whose state a child inherits); should that fail, a mix of the
/// process id, the time and a thread-local draw, which still differs from
/// the parent's.
fn draw_process_key(pid: u32) -> u64 {
    use rand::TryRngCore;
    rand::rngs::OsRng.try_next_u64().unwrap_or_else(|_| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        rand::random::<u64>() ^ nanos.rotate_left(32) ^ u64::from(pid)
    })
}

/// What an acquire answered (see [`ACQUIRE`]): the fencing token when
/// granted, or when held how long it has left (`None`: unknown).
fn decode_acquire(reply: i64, key: &str) -> Result<Result<u64, Option<Duration>>, LockError> {
    match reply {
        fence @ 1.. => Ok(Ok(fence.unsigned_abs())),
        // Held, by a key without a TTL (or, on a cluster, a late copy of
        // an acquire we released): retry on the backoff schedule.
        -1 => Ok(Err(None)),
        held @ ..=-2 => Ok(Err(Some(Duration::from_millis((-2 - held).unsigned_abs())))),
        0 => Err(LockError::backend(format!(
            "the acquire script for {key} answered 0, which no version of it sends"
        ))),
    }
}

impl RedisLock {
    /// The acquire step on one server: `SET NX PX` and `INCR` of the
    /// fencing counter in one `MULTI`/`EXEC` transaction, answered as the
    /// cluster's script [`ACQUIRE`] is: the token when granted, −1 when
    /// held (its TTL unknown).
    ///
    /// **Why the tokens are in grant order.** The transaction runs as a
    /// whole: no other client's command runs between its `SET` and its
    /// `INCR`, however long the server stalls, so the order of the
    /// counter's values is the order of the grants (the counter also moves
    /// on refused attempts, whose values nobody is given). Native commands
    /// in a transaction cost the server far less than a script doing the
    /// same (measured with callgrind on Redis 7.0: about 16,000 fewer
    /// instructions per acquire), which is why one server does not use one.
    async fn acquire_one(&self, lease: &RedisLease, ttl: Duration) -> Result<i64, LockError> {
        let key = &lease.key;
        let mut set = redis::Cmd::with_capacity(6, key.len() + 64);
        set.arg("SET")
            .arg(key.as_str())
            .arg(&lease.token[..])
            .arg("NX")
            .arg("PX")
            .arg(ttl_millis(ttl));
        let incr = key_command("INCR", key, FENCE_SUFFIX);
        let mut transaction = redis::Pipeline::with_capacity(2);
        transaction.atomic().add_command(set).add_command(incr);
        let (granted, fence): (bool, i64) = self.inner.node.query("acquire", &transaction).await?;
        Ok(match (granted, fence) {
            (false, _) => -1,
            (true, fence) if fence > 0 => fence,
            (true, fence) => {
                return Err(LockError::backend(format!(
                    "fencing counter {key}{FENCE_SUFFIX} holds {fence}; it must be a positive integer"
                )));
            }
        })
    }
}

#[async_trait]
impl LockBackend for RedisLock {
    type Key = String;
    type Lease = RedisLease;

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn max_ttl(&self) -> Duration {
        REDIS_MAX_TTL
    }

    fn drift(&self) -> Drift {
        self.inner.options.drift
    }

    fn backoff(&self) -> Backoff {
        self.inner.options.backoff
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(lock_key(&self.inner.options.prefix, name))
    }

    async fn try_lock(
        &self,
        key: &String,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<RedisLease>, LockError> {
        // Built before the request: if this future is dropped, or the reply
        // is lost, after the server may have granted the lock, dropping the
        // lease releases it in the background.
        let mut lease = RedisLease {
            inner: self.inner.clone(),
            key: key.clone(),
            token: new_token(),
            state: State::MaybeHeld,
        };
        let will_wait = ctx.will_wait();
        let reply = if self.inner.cluster {
            // One script (a cluster client follows a MOVED for one command,
            // not inside a transaction): see ACQUIRE.
            let mut call = ScriptCall::new(&ACQUIRE, 3, 3, 3 * key.len() + 64);
            call.key(key)
                .key_with(key, FENCE_SUFFIX)
                .key_with(key, RELEASED_SUFFIX)
                .arg(&lease.token[..])
                .arg(ttl_millis(ttl))
                .arg(if will_wait { "1" } else { "0" });
            self.inner.node.eval("acquire", &call).await?
        } else {
            self.acquire_one(&lease, ttl).await?
        };
        match decode_acquire(reply, key)? {
            Ok(fencing_token) => Ok(Attempt::Acquired {
                lease,
                fencing_token,
            }),
            Err(mut retry_after) => {
                lease.state = State::NotHeld;
                if will_wait && !self.inner.cluster {
                    // Held, and we will wait: mark it as waited for, so that
                    // its release publishes, and learn how long it has left.
                    let mut call = ScriptCall::new(&MARK_WAITED, 1, 0, key.len());
                    call.key(key);
                    let pttl: i64 = self.inner.node.eval("mark", &call).await?;
                    retry_after = match pttl {
                        // Released since the attempt: try again at once.
                        -2 => Some(Duration::ZERO),
                        pttl => u64::try_from(pttl).ok().map(Duration::from_millis),
                    };
                }
                Ok(Attempt::Held { retry_after })
            }
        }
    }

    async fn subscribe(&self, key: &String, _ctx: &AttemptContext) -> Option<Wakeup> {
        // The subscriber connection is already listening, so registering
        // here is enough for no release to slip by.
        self.inner
            .options
            .wake_on_release
            .then(|| self.inner.wake.subscribe(key))
    }
}

/// Whether the server may still hold our token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Granted, or possibly granted (reply not seen): release it.
    MaybeHeld,
    /// Released by us.
    Released,
    /// Known not to be ours: never granted, expired or taken over.
    NotHeld,
}

/// One lock granted by [`RedisLock`]: its key and token.
///
/// Guards own it; users meet it only when implementing their own backend
/// on top. Dropped while possibly held, it releases itself in the
/// background (on the current Tokio runtime, if any); otherwise the TTL
/// frees the lock.
pub struct RedisLease {
    inner: Arc<Inner>,
    /// The lock key (the name, prefixed and escaped).
    key: String,
    token: Token,
    state: State,
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RedisLease {
    /// Marks the lease as nothing to release, so dropping it does nothing.
    fn disarm(&mut self) {
        self.state = State::NotHeld;
    }

    async fn release_on_server(&mut self) -> Result<(), LockError> {
        let released: i64 = if self.inner.cluster {
            let mut call = ScriptCall::new(
                &RELEASE,
                2,
                3,
                2 * self.key.len() + self.inner.channel.len() + 64,
            );
            call.key(&self.key)
                .key_with(&self.key, RELEASED_SUFFIX)
                .arg(&self.token[..])
                .arg(&self.inner.channel)
                .arg(self.inner.release_record_ms());
            self.inner.node.eval("release", &call).await?
        } else {
            let mut call = ScriptCall::new(
                &RELEASE_ONE,
                1,
                2,
                self.key.len() + self.inner.channel.len() + 64,
            );
            call.key(&self.key)
                .arg(&self.token[..])
                .arg(&self.inner.channel);
            self.inner.node.eval("release", &call).await?
        };
        if released == 1 {
            self.state = State::Released;
            Ok(())
        } else {
            self.state = State::NotHeld;
            Err(LockError::Lost)
        }
    }
}

#[async_trait]
impl Lease for RedisLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        if self.state != State::MaybeHeld {
            return Err(LockError::Lost);
        }
        let mut call = ScriptCall::new(&EXTEND, 1, 2, self.key.len() + 64);
        call.key(&self.key)
            .arg(&self.token[..])
            .arg(ttl_millis(ttl));
        let extended: i64 = self.inner.node.eval("extend", &call).await?;
        if extended == 1 {
            Ok(())
        } else {
            self.state = State::NotHeld;
            Err(LockError::Lost)
        }
    }

    async fn release(&mut self) -> Result<(), LockError> {
        match self.state {
            State::Released => Ok(()),
            State::NotHeld => Err(LockError::Lost),
            State::MaybeHeld => self.release_on_server().await,
        }
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        if self.state != State::MaybeHeld {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the TTL frees the lock.
        };
        // Disarmed: if the task is dropped unfinished (runtime shutting
        // down), this copy must not try again from its own drop.
        let mut lease = RedisLease {
            inner: self.inner.clone(),
            key: std::mem::take(&mut self.key),
            token: self.token,
            state: State::NotHeld,
        };
        self.disarm();
        runtime.spawn(async move {
            if let Err(err) = lease.release_on_server().await {
                tracing::debug!(lock.key = %lease.key, error = %err, "background release failed; the TTL will free the lock");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens made in a forked child after the parent made some: the child
    /// must not repeat the parent's. The child only computes tokens into a
    /// stack array and writes them to a pipe (no allocation after fork).
    #[test]
    fn a_forked_child_makes_tokens_of_its_own() {
        const N: usize = 16;
        let _warm = new_token(); // the parent's generator is in use
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors into `fds`.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
        let [read_end, write_end] = fds;
        // SAFETY: the child calls only new_token (no allocation, no locks),
        // write and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let tokens: [Token; N] = std::array::from_fn(|_| new_token());
            let bytes = tokens.as_flattened();
            let mut written = 0;
            while written < bytes.len() {
                // SAFETY: writes from a live buffer to our pipe.
                let n = unsafe {
                    libc::write(
                        write_end,
                        bytes[written..].as_ptr().cast(),
                        bytes.len() - written,
                    )
                };
                if n <= 0 {
                    // SAFETY: ends the child without running the parent's
                    // destructors or test harness.
                    unsafe { libc::_exit(1) };
                }
                written += n as usize;
            }
            // SAFETY: as above.
            unsafe { libc::_exit(0) };
        }
        // SAFETY: closes our copy of the write end.
        unsafe { libc::close(write_end) };
        let parent: Vec<Token> = (0..N).map(|_| new_token()).collect();
        let mut child = vec![0u8; N * 32];
        let mut read = 0;
        while read < child.len() {
            // SAFETY: reads into a live buffer from our pipe.
            let n = unsafe {
                libc::read(
                    read_end,
                    child[read..].as_mut_ptr().cast(),
                    child.len() - read,
                )
            };
            assert!(n > 0, "the child wrote {read} of {} bytes", child.len());
            read += n as usize;
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        // SAFETY: closes our read end.
        unsafe { libc::close(read_end) };
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        let child: Vec<&[u8]> = child.chunks(32).collect();
        let shared: Vec<String> = parent
            .iter()
            .filter(|token| child.contains(&&token[..]))
            .map(|token| String::from_utf8_lossy(token).into_owned())
            .collect();
        assert!(
            shared.is_empty(),
            "{} of {N} tokens made after fork() are the same in parent and child, e.g. {:?}",
            shared.len(),
            shared.first()
        );
    }

    #[test]
    fn tokens_are_unique_across_threads() {
        let tokens: Vec<Token> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| scope.spawn(|| (0..1000).map(|_| new_token()).collect::<Vec<_>>()))
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().expect("worker"))
                .collect()
        });
        let distinct: std::collections::HashSet<Token> = tokens.iter().copied().collect();
        assert_eq!(distinct.len(), tokens.len());
        assert!(
            tokens
                .iter()
                .all(|token| token.iter().all(|b| b"0123456789abcdef".contains(b)))
        );
    }
}
