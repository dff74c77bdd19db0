//! [`Redlock`]: one lock over several independent Redis servers, granted by
//! a majority of them; and [`RedlockLease`]: one such grant.
//!
//! Over 600 lines on purpose: acquire, extend and release share one tally
//! of node answers and one argument for why the fencing token rises, and
//! that argument is easier to check when all three steps sit beside it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::backend::{
    Attempt, AttemptContext, Backoff, Drift, Lease, Listener, LockBackend, WakeHub, Wakeup,
    ttl_millis,
};
use distlock_api::{Instant, LockError};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};

use crate::keys::{fence_key, lock_key};
use crate::lock::{REDIS_MAX_TTL, Token, new_token};
use crate::node::{Node, Reconnect};
use crate::options::RedisLockOptions;
use crate::scripts::{REDLOCK_ACQUIRE, REDLOCK_EXTEND, REDLOCK_FENCE, RELEASE};
use crate::url::Topology;

/// A lock held on a majority of N independent Redis servers (N odd: 3 or
/// 5), after the Redlock algorithm, with a fencing token.
///
/// Use it when the lock must survive the loss of any minority of its
/// servers: with 3 nodes one may crash, pause or be cut off, with 5 two,
/// and locks are still granted, kept and released. A single
/// [`RedisLock`](crate::RedisLock) is faster (one round trip per acquire
/// instead of two, and one server to run) and, with AOF, as safe against a
/// crash; Redlock buys availability.
///
/// ```no_run
/// use std::time::Duration;
/// use distlock_redis::Redlock;
/// use distlock_redis::distlock_api::DistributedLock;
///
/// # async fn demo() -> Result<(), distlock_redis::distlock_api::LockError> {
/// let locks = Redlock::connect(&[
///     "redis://10.0.0.1:6379",
///     "redis://10.0.0.2:6379",
///     "redis://10.0.0.3:6379",
/// ])
/// .await?;
/// let guard = locks.acquire("ticket:42", Duration::from_secs(10), Duration::from_secs(2)).await?;
/// // … write with guard.fencing_token() …
/// guard.release().await?;
/// # Ok(())
/// # }
/// ```
///
/// # How it works
///
/// - **Acquire** sends, to every node at once, a script that does
///   `SET <lock> <token> NX PX <ttl>` and reads the node's fencing counter.
///   As soon as a majority has granted, it takes the largest counter they
///   returned, adds one — that is the fencing token — and raises the
///   counter on the granting nodes to it (a second round trip, which a
///   majority must confirm). The lock is ours if, after both steps, the
///   validity left, `ttl − elapsed − drift` (drift = ttl × 1 % + 2 ms by
///   default, [`RedisLockOptions::drift`]), is positive. Otherwise — held
///   elsewhere, a split vote, too few nodes answering, too slow — it
///   deletes its key wherever it may have been set, and distlock-api's waiting
///   loop tries again after a jittered backoff (or at once, woken by a
///   release) until the deadline. Requests still in flight when the
///   outcome is decided finish in the background. Once a majority has
///   answered without a decision (a split vote between two clients, with a
///   node slow or frozen), the rest get ttl/50 more (5 ms at least, the
///   response timeout at most), so a frozen node does not stall every
///   contended attempt for a whole response timeout; a node that already
///   let an attempt down that way is not waited for at all until it
///   answers again. A failed attempt deletes its key from every node at
///   once, without waiting for a frozen one, so it never blocks the
///   contenders' next attempts (with a node frozen, attempts that waited
///   for it kept the two live nodes split between contenders, attempt
///   after attempt, for seconds).
/// - **Extend** goes to every node: where the key still holds our token its
///   TTL is reset, and it succeeds when a majority of such keys answered
///   within the new validity. Such a key has been there since it was set,
///   so a majority of them proves nobody else held the lock meanwhile,
///   however late the answer comes. A key that is gone is never re-created
///   on a node that kept its data (it expired, and someone else may have
///   held the lock since): only on a node that lost its data since it
///   granted us — told by a dataset mark, a key without a TTL that each
///   node keeps (`<prefix>redlock:dataset`) and loses only with its data —
///   is our key created again and the counter raised to our token, so a
///   quorum worn down by restarts is repaired for the next extend (the
///   re-created key does not count towards this one). Extending a lease
///   past its validity is refused ([`LockError::Lost`]) without asking the
///   nodes.
/// - **TTLs** shorter than the drift allowance leaves any validity (3 ms
///   with the default drift) are [`LockError::InvalidTtl`]: such keys can
///   expire between the two steps of an acquire, so two clients could both
///   be granted, with the same fencing token.
/// - **Nodes are servers**, told apart by their `run_id`: one server listed
///   under two addresses (a host name and its IP, a proxy) would vote
///   twice. Found at connect, that is [`LockError::InvalidConfig`]; a node
///   down at connect is identified when first reached, and if it is a
///   server already listed it never votes (each of its calls fails with
///   [`LockError::Connection`] naming both addresses, logged as an error).
///   A server that later moves behind another listed address is not
///   noticed.
/// - **Release** goes to every node (compare-token delete) and succeeds
///   once a majority has deleted our key.
/// - **Errors**: when too few nodes answer for a majority to be possible,
///   the attempt fails with [`LockError::Connection`] naming each node's
///   error; distlock-api retries such attempts until the deadline and then
///   returns that error, so a majority down is reported as such, in
///   bounded time, not as a timeout.
/// - **Wake-ups**: a release that finds the lock waited for publishes on
///   each node, and a subscriber per node wakes the waiters of this
///   process.
/// - **Keys** are those of [`RedisLock`](crate::RedisLock) (same prefix and
///   encoding), on every node.
///
/// # The fencing token, and what it guarantees
///
/// Each node keeps a counter per name that only the holder of a majority
/// moves, to `1 + the largest counter of that majority`, before the lock is
/// reported held. Any two majorities share a node, and on that node the
/// later holder's `SET` can only succeed after the earlier holder's key is
/// gone — which is after the earlier holder raised the counter there. So
/// the later holder reads a counter at least as large as the earlier token,
/// and its own token is larger: **tokens strictly increase across
/// successive holders**, given two conditions:
///
/// - **No node forgets**: a node restarted without persistence loses its
///   keys and counters. If it was the only node shared by two majorities, a
///   lock can be granted twice and a token can repeat or go down. Run the
///   nodes with AOF (`appendfsync always`), or keep a crashed node down for
///   longer than the largest TTL in use before it rejoins (the Redlock
///   author's "delayed restart").
/// - **Clocks behave**: keys expire on each node's clock and validity is
///   judged on ours; a node whose clock jumps forward, or a client paused
///   longer than the drift allowance (GC, VM steal), can see two holders
///   overlap in real time. The fencing token is what protects the data
///   then: storage that refuses a token lower than the last one it
///   accepted keeps the protected write single, as with any lock.
///
/// Tokens are not comparable with those of a [`RedisLock`](crate::RedisLock)
/// on one of the same servers; use one kind of lock per name.
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Member>,
    /// What each node was found to be, by its `run_id`.
    identities: Mutex<Vec<Identity>>,
    /// The key that marks each node's dataset (see [`REDLOCK_EXTEND`]).
    mark_key: String,
    /// How many nodes make a majority.
    quorum: usize,
    options: RedisLockOptions,
    wake: WakeHub,
    /// Stop the subscriber tasks when the last clone goes away.
    _listeners: Vec<Listener>,
}

/// One node: its connection and where its releases are published.
struct Member {
    node: Node,
    channel: String,
    /// Set when an attempt gave up waiting for this node; cleared by its
    /// next answer. An attempt does not wait for nodes that stay silent.
    silent: Arc<AtomicBool>,
}

/// What a node is, as told by its `run_id` when it was first reached.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// Not reached yet.
    Unknown,
    /// A server of its own.
    Server(String),
    /// The server would not say (`INFO` refused): it votes, unchecked.
    Unchecked,
    /// A server another node of the list already is: it never votes. The
    /// message says which.
    Duplicate(String),
}

impl fmt::Debug for Redlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redlock")
            .field(
                "nodes",
                &self
                    .inner
                    .nodes
                    .iter()
                    .map(|member| member.node.target.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("quorum", &self.inner.quorum)
            .field("prefix", &self.inner.options.prefix)
            .finish_non_exhaustive()
    }
}

impl Redlock {
    /// Connects to the independent Redis servers at `urls` (`redis://` or
    /// `rediss://`, one per server; an odd number, 3 or 5) with the default
    /// [`RedisLockOptions`].
    ///
    /// A majority must be reachable now; nodes that are not are connected
    /// to in the background and join when they come up (a node found then
    /// to be a server already listed never votes: see "Nodes are servers"
    /// in the type's docs).
    ///
    /// # Errors
    ///
    /// [`LockError::InvalidConfig`] for an even number of nodes, fewer than
    /// 3, or one server listed twice (by address, or by `run_id`); [`LockError::InvalidUrl`] for a URL
    /// that does not parse; [`LockError::Connection`] when fewer than a
    /// majority can be reached within the connect timeout.
    pub async fn connect<S: AsRef<str> + Sync>(urls: &[S]) -> Result<Self, LockError> {
        RedisLockOptions::default().connect_redlock(urls).await
    }

    /// Connects to the servers of a `redis+redlock://` URL:
    /// `redis+redlock://[user[:password]@]host:port,host:port,host:port[/db]`
    /// (or `rediss+redlock://…`), the same credentials and database on
    /// every node.
    ///
    /// # Errors
    ///
    /// As [`connect`](Self::connect); [`LockError::InvalidUrl`] for a URL
    /// of another kind.
    pub async fn connect_url(url: &str) -> Result<Self, LockError> {
        RedisLockOptions::default().connect_redlock_url(url).await
    }

    pub(crate) async fn connect_url_with(
        url: &str,
        options: RedisLockOptions,
    ) -> Result<Self, LockError> {
        match crate::url::topology(url)? {
            Topology::Redlock(urls) => Self::connect_with(&urls, options).await,
            _ => Err(LockError::InvalidUrl(format!(
                "{}: expected redis+redlock://host:port,host:port,host:port/",
                crate::url::redact(url)
            ))),
        }
    }

    pub(crate) async fn connect_with<S: AsRef<str> + Sync>(
        urls: &[S],
        options: RedisLockOptions,
    ) -> Result<Self, LockError> {
        options.validate()?;
        let urls: Vec<&str> = urls.iter().map(AsRef::as_ref).collect();
        check_node_count(urls.len())?;
        let mut seen = Vec::with_capacity(urls.len());
        for url in &urls {
            if crate::url::topology(url)? != Topology::Single {
                return Err(LockError::InvalidUrl(format!(
                    "{}: a Redlock node is the redis:// URL of one server",
                    crate::url::redact(url)
                )));
            }
            let client = crate::url::client(url, options.tls_root_certificate.as_deref())?;
            let addr = client.get_connection_info().addr().to_string();
            if seen.contains(&addr) {
                return Err(LockError::InvalidConfig(format!(
                    "the Redlock nodes list {addr} twice; each node must be a separate \
                     server, or one server would vote twice"
                )));
            }
            seen.push(addr);
        }
        let quorum = urls.len() / 2 + 1;
        let connected = futures::future::join_all(
            urls.iter()
                .map(|url| Node::connect(url, &options, Reconnect::Once)),
        )
        .await;
        let mut nodes = Vec::with_capacity(urls.len());
        let mut down = Vec::new();
        for (url, connected) in urls.iter().zip(connected) {
            match connected {
                Ok((node, client)) => nodes.push((node, client, true)),
                Err(err @ LockError::Connection(_)) => {
                    down.push(err.to_string());
                    let (node, client) = Node::lazy(url, &options, Reconnect::Once)?;
                    nodes.push((node, client, false));
                }
                Err(err) => return Err(err),
            }
        }
        if urls.len() - down.len() < quorum {
            return Err(LockError::connection(QuorumFailure {
                op: "connect",
                total: urls.len(),
                quorum,
                errors: down,
                silent: None,
            }));
        }
        // One server under two addresses (a host name and its IP, a proxy)
        // would vote twice: nodes are told apart by the server's run_id.
        let run_ids = futures::future::join_all(nodes.iter().map(|(node, _, up)| async move {
            if *up { Some(node.run_id().await) } else { None }
        }))
        .await;
        let mut identities: Vec<Identity> = Vec::with_capacity(nodes.len());
        for (i, run_id) in run_ids.into_iter().enumerate() {
            let identity = match run_id {
                None | Some(Err(LockError::Connection(_))) => Identity::Unknown,
                Some(Err(err)) => {
                    tracing::warn!(node = %nodes[i].0.target, error = %err, "redlock: cannot read the node's run_id; one server listed under two addresses would go unnoticed");
                    Identity::Unchecked
                }
                Some(Ok(id)) => {
                    if let Some(j) = identities
                        .iter()
                        .position(|known| *known == Identity::Server(id.clone()))
                    {
                        return Err(LockError::InvalidConfig(same_server(
                            &nodes[i].0.target,
                            &nodes[j].0.target,
                            &id,
                        )));
                    }
                    Identity::Server(id)
                }
            };
            identities.push(identity);
        }
        // A node that may evict keys can forget a held lock or its counter
        // (and the dataset mark): checked on every node reached now, as
        // for a single server.
        for (node, _, up) in &nodes {
            if *up {
                crate::settings::check_eviction(node, &options).await?;
            }
        }
        let wake = WakeHub::new();
        let mut members = Vec::with_capacity(nodes.len());
        let mut listeners = Vec::new();
        for (node, client, up) in nodes {
            let channel = match client.get_connection_info().redis_settings().db() {
                0 => format!("{}released", options.prefix),
                db => format!("{}released@{db}", options.prefix),
            };
            if options.wake_on_release {
                listeners.push(
                    crate::listener::start(
                        vec![client],
                        channel.clone(),
                        wake.clone(),
                        options.connect_timeout,
                        node.target.clone(),
                        up,
                    )
                    .await?,
                );
            }
            members.push(Member {
                node,
                channel,
                silent: Arc::default(),
            });
        }
        Ok(Redlock {
            inner: Arc::new(Inner {
                nodes: members,
                identities: Mutex::new(identities),
                mark_key: format!("{}redlock:dataset", options.prefix),
                quorum,
                options,
                wake,
                _listeners: listeners,
            }),
        })
    }

    /// How many nodes this lock spans.
    pub fn node_count(&self) -> usize {
        self.inner.nodes.len()
    }

    /// How many nodes must agree: a majority, `node_count / 2 + 1`.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }

    /// The key prefix this lock uses.
    pub fn prefix(&self) -> &str {
        &self.inner.options.prefix
    }
}

/// Why two nodes are one: the message of the error.
fn same_server(node: &str, other: &str, run_id: &str) -> String {
    format!(
        "the Redlock nodes {other} and {node} are the same server (run_id {run_id}); each node \
         must be a separate server, or one server would vote twice"
    )
}

/// The smallest whole-millisecond TTL that `drift` leaves any validity,
/// if there is one.
fn min_ttl(drift: Drift) -> Option<Duration> {
    if drift.per_mille >= 1000 {
        return None;
    }
    // ttl − fixed − ttl × per_mille / 1000 > 0  ⇔  ttl > fixed × 1000 / (1000 − per_mille)
    let bound = drift.fixed.as_nanos() * 1000 / u128::from(1000 - drift.per_mille);
    let mut millis = u64::try_from(bound / 1_000_000).ok()?;
    loop {
        let ttl = Duration::from_millis(millis);
        if !drift.trusted(ttl).is_zero() {
            return Some(ttl);
        }
        millis = millis.checked_add(1)?;
    }
}

/// Refuses a TTL that the drift allowance leaves no validity: its keys can
/// expire between the two steps of an acquire, so two clients could both
/// be granted, with the same fencing token.
fn check_ttl(ttl: Duration, drift: Drift) -> Result<Duration, LockError> {
    let trusted = drift.trusted(ttl);
    if !trusted.is_zero() {
        return Ok(trusted);
    }
    Err(LockError::InvalidTtl(match min_ttl(drift) {
        Some(min) => format!(
            "a Redlock TTL must be at least {min:?} with this Redlock's clock-drift allowance \
             ({:?} + {}‰ of the TTL); {ttl:?} would leave the lock no validity",
            drift.fixed, drift.per_mille
        ),
        None => format!(
            "this Redlock's clock-drift allowance ({:?} + {}‰ of the TTL) leaves no TTL any \
             validity",
            drift.fixed, drift.per_mille
        ),
    }))
}

fn check_node_count(count: usize) -> Result<(), LockError> {
    match count {
        0 => Err(LockError::InvalidConfig(
            "a Redlock needs the URLs of 3 or 5 independent Redis servers; none were given".into(),
        )),
        1 => Err(LockError::InvalidConfig(
            "a Redlock of one node is a single server: use RedisLock, or give 3 or 5 nodes".into(),
        )),
        n if n % 2 == 0 => Err(LockError::InvalidConfig(format!(
            "a Redlock needs an odd number of nodes (3 or 5), got {n}: a majority of {n} \
             is {}, so {n} nodes tolerate no more failures than {}",
            n / 2 + 1,
            n - 1
        ))),
        _ => Ok(()),
    }
}

/// Too few nodes answered for a majority to be possible.
#[derive(Debug)]
struct QuorumFailure {
    op: &'static str,
    total: usize,
    quorum: usize,
    /// Each failed node's error (it names the node).
    errors: Vec<String>,
    /// Nodes that had not answered when the step gave up on them, and how
    /// long they were given.
    silent: Option<(usize, Duration)>,
}

impl fmt::Display for QuorumFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "redlock {}: {} of {} nodes failed",
            self.op,
            self.errors.len(),
            self.total,
        )?;
        if let Some((silent, wait)) = self.silent {
            write!(f, " and {silent} did not answer within {wait:?}")?;
        }
        write!(f, ", and {} must agree", self.quorum)?;
        for error in &self.errors {
            write!(f, "; {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for QuorumFailure {}

/// The answers to one step, counted towards a majority: a step is decided
/// once a majority said yes, or once so many said no or failed that a
/// majority no longer can.
struct Tally {
    quorum: usize,
    /// How many nodes take part.
    total: usize,
    yes: usize,
    no: usize,
    /// Each failed node's error (it names the node).
    errors: Vec<String>,
}

impl Tally {
    fn new(total: usize, quorum: usize) -> Self {
        Tally {
            quorum,
            total,
            yes: 0,
            no: 0,
            errors: Vec::new(),
        }
    }

    /// Counts one answer; true once the step is decided: a majority said
    /// yes, or so many said no or failed that a majority no longer can.
    fn count(&mut self, answer: Result<bool, LockError>) -> bool {
        match answer {
            Ok(true) => self.yes += 1,
            Ok(false) => self.no += 1,
            Err(err) => self.errors.push(err.to_string()),
        }
        self.won() || self.no + self.errors.len() > self.total - self.quorum
    }

    /// Whether the step is settled beyond doubt: a majority said yes, or
    /// so many said no that a majority cannot say yes.
    fn settled(&self) -> bool {
        self.won() || self.refused()
    }

    fn won(&self) -> bool {
        self.yes >= self.quorum
    }

    fn refused(&self) -> bool {
        self.no > self.total - self.quorum
    }

    /// The step failed for want of answers: the connection error to report.
    fn unreachable(self, op: &'static str) -> LockError {
        LockError::connection(self.failure(op))
    }

    fn failure(self, op: &'static str) -> QuorumFailure {
        QuorumFailure {
            op,
            total: self.total,
            quorum: self.quorum,
            errors: self.errors,
            silent: None,
        }
    }
}

/// One node's part in a step, as its future: owned, so that requests still
/// running when the step is decided can finish in the background.
struct NodeCall<T> {
    /// The node's index.
    node: usize,
    call: BoxFuture<'static, (usize, Result<T, LockError>)>,
}

/// How long a step waits for its last nodes once `answers` of them have
/// answered without deciding it (0: from the start): a split vote must not
/// wait out a frozen node's whole response timeout.
#[derive(Debug, Clone)]
struct Stragglers {
    answers: usize,
    wait: Duration,
    /// Per node: silent since an earlier step gave up on it. When every
    /// node still to answer is silent, the step does not wait at all.
    silent: Vec<bool>,
}

/// Runs `calls` at once and hands each answer to `tally` as it arrives,
/// until `tally` says the step is decided (returns `true`), all have
/// answered, or the stragglers' wait is over. Returns the nodes the
/// stragglers' wait gave up on. Calls still running are left to finish in
/// a background task, so a request already sent is not cut off mid-way.
async fn gather<T: Send + 'static>(
    calls: Vec<NodeCall<T>>,
    stragglers: Option<&Stragglers>,
    mut tally: impl FnMut(usize, Result<T, LockError>) -> bool,
) -> Vec<usize> {
    let mut waiting: Vec<usize> = calls.iter().map(|call| call.node).collect();
    let mut pending: FuturesUnordered<_> = calls.into_iter().map(|call| call.call).collect();
    let mut answered = 0;
    let mut deadline = None;
    let mut gave_up = Vec::new();
    loop {
        if let Some(stragglers) = stragglers
            && answered >= stragglers.answers
        {
            let all_silent = waiting
                .iter()
                .all(|&i| stragglers.silent.get(i).copied().unwrap_or(false));
            if all_silent {
                gave_up = waiting;
                break;
            }
            deadline.get_or_insert_with(|| Instant::now() + stragglers.wait);
        }
        let next = match deadline {
            Some(deadline) => match tokio::time::timeout_at(deadline, pending.next()).await {
                Ok(next) => next,
                Err(_) => {
                    gave_up = waiting;
                    break;
                }
            },
            None => pending.next().await,
        };
        let Some((i, answer)) = next else { break };
        waiting.retain(|&node| node != i);
        if tally(i, answer) {
            break;
        }
        answered += 1;
    }
    if !pending.is_empty()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(async move { while pending.next().await.is_some() {} });
    }
    gave_up
}

impl Inner {
    /// One call of `script` per node in `which`, on the lock key, its
    /// counter and the node's dataset mark, with `args(node)` as arguments.
    /// A node not yet identified is identified first; one found to be a
    /// server already in the list fails every call.
    fn calls<T: redis::FromRedisValue + Send + 'static>(
        self: &Arc<Self>,
        which: impl Iterator<Item = usize>,
        op: &'static str,
        script: &'static redis::Script,
        key: &str,
        args: impl Fn(usize) -> Vec<Vec<u8>>,
    ) -> Vec<NodeCall<T>> {
        which
            .map(|i| {
                let inner = Arc::clone(self);
                let keys = [key.to_owned(), fence_key(key), self.mark_key.clone()];
                let args = args(i);
                let call = Box::pin(async move {
                    if let Err(err) = inner.identify(i).await {
                        return (i, Err(err));
                    }
                    let member = &inner.nodes[i];
                    let mut invocation = script.prepare_invoke();
                    for key in &keys {
                        invocation.key(key);
                    }
                    for arg in &args {
                        invocation.arg(&arg[..]);
                    }
                    let answer = member.node.run(op, &invocation).await;
                    if answer.is_ok() {
                        member.silent.store(false, Ordering::Relaxed);
                    }
                    (i, answer)
                });
                NodeCall { node: i, call }
            })
            .collect()
    }

    /// Per node: whether it is silent (see [`Member::silent`]).
    fn silent(&self) -> Vec<bool> {
        self.nodes
            .iter()
            .map(|member| member.silent.load(Ordering::Relaxed))
            .collect()
    }

    /// Marks the nodes a step gave up waiting for as silent.
    fn gave_up_on(&self, nodes: &[usize]) {
        for &i in nodes {
            self.nodes[i].silent.store(true, Ordering::Relaxed);
        }
    }

    fn identity(&self, i: usize) -> Identity {
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)[i]
            .clone()
    }

    /// Makes sure node `i` is a server of its own before it votes: a node
    /// that was down at connect is identified by its `run_id` when first
    /// reached; one that turns out to be a server already in the list
    /// never votes (each call to it fails, naming both addresses).
    async fn identify(&self, i: usize) -> Result<(), LockError> {
        match self.identity(i) {
            Identity::Server(_) | Identity::Unchecked => return Ok(()),
            Identity::Duplicate(message) => return Err(LockError::connection(message)),
            Identity::Unknown => {}
        }
        let target = &self.nodes[i].node.target;
        let identity = match self.nodes[i].node.run_id().await {
            Ok(id) => Identity::Server(id),
            Err(err @ LockError::Connection(_)) => return Err(err),
            Err(err) => {
                tracing::warn!(node = %target, error = %err, "redlock: cannot read the node's run_id; one server listed under two addresses would go unnoticed");
                Identity::Unchecked
            }
        };
        let mut identities = self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if identities[i] == Identity::Unknown {
            identities[i] = match &identity {
                Identity::Server(id) => {
                    match identities.iter().position(|known| *known == identity) {
                        Some(j) => {
                            let message = same_server(target, &self.nodes[j].node.target, id);
                            tracing::error!("{message}: the later one never votes");
                            Identity::Duplicate(message)
                        }
                        None => identity,
                    }
                }
                _ => identity,
            };
        }
        match &identities[i] {
            Identity::Duplicate(message) => Err(LockError::connection(message.clone())),
            _ => Ok(()),
        }
    }
}

/// What a node said to the first step.
enum Vote {
    /// Granted; its counter.
    Granted(u64),
    /// Held by someone else for this long (ms; negative if gone since).
    Held(i64),
}

#[async_trait]
impl LockBackend for Redlock {
    type Key = String;
    type Lease = RedlockLease;

    fn kind(&self) -> &'static str {
        "redlock"
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
        _ctx: &AttemptContext,
    ) -> Result<Attempt<RedlockLease>, LockError> {
        let started = Instant::now();
        let inner = &self.inner;
        let trusted = check_ttl(ttl, inner.options.drift)?;
        let total = inner.nodes.len();
        // Built before any request: if this future is dropped, dropping the
        // lease deletes our key wherever it may have been set.
        let mut lease = RedlockLease {
            inner: inner.clone(),
            key: key.clone(),
            token: new_token(),
            fencing_token: 0,
            valid_until: started,
            state: State::MaybeHeld,
            on: vec![OnNode::Maybe; total],
            marks: Arc::new(Mutex::new(vec![Vec::new(); total])),
        };

        // Step 1: SET NX PX on every node; decided once a majority granted,
        // or once a majority can no longer grant.
        let fresh_mark = new_token();
        let calls = inner.calls::<(i64, i64, Vec<u8>)>(
            0..total,
            "acquire",
            &REDLOCK_ACQUIRE,
            &lease.key,
            |_| {
                vec![
                    lease.token.to_vec(),
                    ttl_millis(ttl).to_string().into_bytes(),
                    fresh_mark.to_vec(),
                ]
            },
        );
        let calls = calls
            .into_iter()
            .map(|NodeCall { node, call }| {
                let marks = Arc::clone(&lease.marks);
                let call = Box::pin(async move {
                    let (i, answer) = call.await;
                    if let Ok((1, _, mark)) = &answer {
                        marks.lock().unwrap_or_else(PoisonError::into_inner)[i] = mark.clone();
                    }
                    (i, answer)
                }) as BoxFuture<'static, _>;
                NodeCall { node, call }
            })
            .collect();
        let mut granted: Vec<(usize, u64)> = Vec::new();
        let mut held: Vec<i64> = Vec::new();
        let mut votes = Tally::new(total, inner.quorum);
        // Once a majority has answered without a decision (a split vote, a
        // node slow or frozen), the rest get ttl/50 more, within the
        // response timeout — or nothing at all when they are nodes an
        // earlier step already gave up on and that have not answered since:
        // an attempt that waits keeps its key on the nodes that granted it,
        // and contenders then split the other nodes between them, attempt
        // after attempt, for as long as a node stays frozen.
        let stragglers = Stragglers {
            answers: inner.quorum,
            wait: (ttl / 50).clamp(Duration::from_millis(5), inner.options.response_timeout),
            silent: inner.silent(),
        };
        let on = &mut lease.on;
        let gave_up = gather(calls, Some(&stragglers), |i, answer| {
            let answer = answer.and_then(|(ok, value, _)| vote(ok, value));
            votes.count(answer.map(|vote| match vote {
                Vote::Granted(counter) => {
                    granted.push((i, counter));
                    true
                }
                Vote::Held(pttl) => {
                    on[i] = OnNode::Absent;
                    held.push(pttl);
                    false
                }
            }))
        })
        .await;
        inner.gave_up_on(&gave_up);

        if !votes.won() {
            lease.give_back().await;
            if votes.no == 0 && !votes.errors.is_empty() {
                let mut err = votes.failure("acquire");
                if !gave_up.is_empty() {
                    err.silent = Some((gave_up.len(), stragglers.wait));
                }
                return Err(LockError::connection(err));
            }
            // Held somewhere (or a split vote): wait no longer than the
            // shortest remaining hold.
            let retry_after = held
                .iter()
                .filter_map(|&pttl| match pttl {
                    // Released since: try again at once.
                    -2 => Some(Duration::ZERO),
                    // A key without a TTL (not ours): no hint.
                    pttl => u64::try_from(pttl).ok().map(Duration::from_millis),
                })
                .min();
            return Ok(Attempt::Held { retry_after });
        }

        // Step 2: the token is one more than the largest counter of the
        // majority; raise their counters to it before reporting the lock
        // held (see "The fencing token" in the type's docs).
        let fencing_token = granted
            .iter()
            .map(|&(_, counter)| counter)
            .max()
            .unwrap_or(0)
            .saturating_add(1);
        let calls = inner.calls::<i64>(
            granted.iter().map(|&(i, _)| i),
            "fence",
            &REDLOCK_FENCE,
            &lease.key,
            |_| vec![lease.token.to_vec(), fencing_token.to_string().into_bytes()],
        );
        let mut confirmations = Tally::new(granted.len(), inner.quorum);
        gather(calls, None, |_, answer| {
            confirmations.count(answer.map(|still_ours| still_ours == 1))
        })
        .await;
        if !confirmations.won() {
            lease.give_back().await;
            if confirmations.no == 0 {
                return Err(confirmations.unreachable("acquire (fencing step)"));
            }
            // Our keys expired between the two steps: too slow for the TTL.
            return Ok(Attempt::Held { retry_after: None });
        }
        if started.elapsed() >= trusted {
            tracing::debug!(
                lock.key = %lease.key,
                elapsed = ?started.elapsed(),
                ?ttl,
                "redlock: the nodes answered too late for the TTL; trying again"
            );
            lease.give_back().await;
            return Ok(Attempt::Held { retry_after: None });
        }
        lease.fencing_token = fencing_token;
        lease.valid_until = started + trusted;
        Ok(Attempt::Acquired {
            lease,
            fencing_token,
        })
    }

    async fn subscribe(&self, key: &String, _ctx: &AttemptContext) -> Option<Wakeup> {
        self.inner
            .options
            .wake_on_release
            .then(|| self.inner.wake.subscribe(key))
    }
}

/// Reads a node's answer to the first step.
fn vote(granted: i64, value: i64) -> Result<Vote, LockError> {
    if granted == 1 {
        let counter = u64::try_from(value).map_err(|_| {
            LockError::backend(format!(
                "a Redlock node's fencing counter holds {value}; it must be a positive integer"
            ))
        })?;
        Ok(Vote::Granted(counter))
    } else {
        Ok(Vote::Held(value))
    }
}

/// Whether the nodes may still hold our token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Granted, or possibly granted somewhere: release it.
    MaybeHeld,
    /// Released by us on a majority.
    Released,
    /// Known not to be ours.
    NotHeld,
}

/// One lock granted by [`Redlock`]: its key, token and fencing token, and
/// which nodes may hold it.
///
/// Guards own it. Dropped while possibly held, it deletes its key on every
/// node in the background (on the current Tokio runtime, if any);
/// otherwise the TTL frees the lock.
pub struct RedlockLease {
    inner: Arc<Inner>,
    key: String,
    token: Token,
    fencing_token: u64,
    /// The end of the validity this lease last established.
    valid_until: Instant,
    state: State,
    /// Per node: whether our key may be there.
    on: Vec<OnNode>,
    /// Per node: its dataset mark when it granted us (empty if it did not):
    /// a different mark later means the node lost its data, and only then
    /// may extend re-create our key there. Shared with the first step's
    /// requests, so that a grant answered after the attempt was decided
    /// is recorded too.
    marks: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// Whether our key may be on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnNode {
    /// Set, or possibly set (no answer seen).
    Maybe,
    /// Deleted by our release.
    Released,
    /// Not there: the node holds another token, or none.
    Absent,
}

impl fmt::Debug for RedlockLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedlockLease")
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl RedlockLease {
    /// Calls that delete our key from nodes `which`, publishing the release
    /// where it was waited for.
    fn release_calls(&self, which: impl Iterator<Item = usize>) -> Vec<NodeCall<i64>> {
        self.inner
            .calls(which, "release", &RELEASE, &self.key, |i| {
                // No release record ("0"): a Redlock node is one server,
                // whose connection never sends a script twice.
                vec![
                    self.token.to_vec(),
                    self.inner.nodes[i].channel.clone().into_bytes(),
                    b"0".to_vec(),
                ]
            })
    }

    /// The nodes where our key may be.
    fn maybe_on(&self) -> Vec<usize> {
        (0..self.on.len())
            .filter(|&i| self.on[i] == OnNode::Maybe)
            .collect()
    }

    /// After a failed attempt: deletes our key from every node where it
    /// may be — those that granted it and those that did not answer (they
    /// may have granted late) — at once. It waits for their answers a
    /// little (the stragglers' wait, not at all for silent nodes), never
    /// for a frozen node: a key left on a live node would block every
    /// contender's next attempt. Deletes still running go on in the
    /// background, and the drop sends them again if needed.
    async fn give_back(&mut self) {
        let inner = Arc::clone(&self.inner);
        let calls = self.release_calls(self.maybe_on().into_iter());
        let stragglers = Stragglers {
            answers: 0,
            wait: (inner.options.response_timeout / 10).max(Duration::from_millis(5)),
            silent: inner.silent(),
        };
        let on = &mut self.on;
        let gave_up = gather(calls, Some(&stragglers), |i, answer| {
            if answer.is_ok() {
                on[i] = OnNode::Absent;
            }
            false
        })
        .await;
        inner.gave_up_on(&gave_up);
        if self.maybe_on().is_empty() {
            self.state = State::NotHeld;
        }
    }
}

#[async_trait]
impl Lease for RedlockLease {
    async fn extend(&mut self, ttl: Duration) -> Result<(), LockError> {
        let trusted = check_ttl(ttl, self.inner.options.drift)?;
        if self.state != State::MaybeHeld {
            return Err(LockError::Lost);
        }
        let started = Instant::now();
        if started >= self.valid_until {
            // Past its validity another client may have held the lock in
            // between: reviving it now would hide that.
            self.state = State::NotHeld;
            self.spawn_release();
            return Err(LockError::Lost);
        }
        let inner = self.inner.clone();
        let total = inner.nodes.len();
        let fresh_mark = new_token();
        let granted_marks = self
            .marks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let calls =
            inner.calls::<(i64, Vec<u8>)>(0..total, "extend", &REDLOCK_EXTEND, &self.key, |i| {
                vec![
                    self.token.to_vec(),
                    ttl_millis(ttl).to_string().into_bytes(),
                    self.fencing_token.to_string().into_bytes(),
                    granted_marks[i].clone(),
                    fresh_mark.to_vec(),
                ]
            });
        let mut answers = Tally::new(total, inner.quorum);
        let on = &mut self.on;
        let marks = &self.marks;
        // Only a key that held our token all along counts: a majority of
        // those proves no one else can have held the lock since our grant,
        // however late the answer comes. A key re-created on a node that
        // lost its data (2) proves nothing about the time before; it only
        // puts the node back in the quorum for the next extend.
        gather(calls, None, |i, answer| {
            answers.count(answer.map(|(kept, mark)| {
                on[i] = if kept == 1 || kept == 2 {
                    OnNode::Maybe
                } else {
                    OnNode::Absent
                };
                if kept == 2 {
                    marks.lock().unwrap_or_else(PoisonError::into_inner)[i] = mark;
                }
                kept == 1
            }))
        })
        .await;
        if answers.won() {
            if started.elapsed() < trusted {
                self.valid_until = started + trusted;
                return Ok(());
            }
            answers.errors.push(format!(
                "the nodes answered after the new TTL of {ttl:?} had run out"
            ));
            return Err(answers.unreachable("extend"));
        }
        if answers.refused() {
            self.state = State::NotHeld;
            self.spawn_release();
            return Err(LockError::Lost);
        }
        Err(answers.unreachable("extend"))
    }

    async fn release(&mut self) -> Result<(), LockError> {
        match self.state {
            State::Released => return Ok(()),
            State::NotHeld => return Err(LockError::Lost),
            State::MaybeHeld => {}
        }
        let inner = self.inner.clone();
        let total = inner.nodes.len();
        // Nodes that deleted our key in an earlier, interrupted call count.
        let mut answers = Tally::new(total, inner.quorum);
        answers.yes = self.on.iter().filter(|&&on| on == OnNode::Released).count();
        answers.no = self.on.iter().filter(|&&on| on == OnNode::Absent).count();
        let calls = self.release_calls(self.maybe_on().into_iter());
        let on = &mut self.on;
        // Settled once a majority released, or a majority said the lock is
        // not ours; the other nodes' deletes go on in the background (a
        // paused node must not hold up the release). A failed node settles
        // nothing: the nodes still to answer may tell released from lost.
        gather(calls, None, |i, answer| {
            answers.count(answer.map(|released| {
                on[i] = if released == 1 {
                    OnNode::Released
                } else {
                    OnNode::Absent
                };
                released == 1
            }));
            answers.settled()
        })
        .await;
        if answers.won() {
            self.state = State::Released;
            return Ok(());
        }
        if !answers.refused() {
            // Some nodes failed and the others do not make a majority
            // either way: whether it was still ours is unknown.
            return Err(answers.unreachable("release"));
        }
        self.state = State::NotHeld;
        Err(LockError::Lost)
    }
}

impl RedlockLease {
    /// Deletes our key, wherever it may be, in the background.
    fn spawn_release(&mut self) {
        let which = self.maybe_on();
        if which.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return; // No runtime: the TTL frees the lock.
        };
        let calls = self.release_calls(which.iter().copied());
        for &i in &which {
            self.on[i] = OnNode::Absent;
        }
        let key = self.key.clone();
        runtime.spawn(async move {
            let mut pending: FuturesUnordered<_> = calls.into_iter().map(|call| call.call).collect();
            while let Some((_, answer)) = pending.next().await {
                if let Err(err) = answer {
                    tracing::debug!(lock.key = %key, error = %err, "background redlock release failed on a node; its TTL will free it");
                }
            }
        });
    }
}

impl Drop for RedlockLease {
    fn drop(&mut self) {
        if self.state == State::MaybeHeld {
            self.spawn_release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_counts_must_be_odd_and_at_least_three() {
        for bad in [0, 1, 2, 4, 6] {
            let err = check_node_count(bad).expect_err("refused");
            assert!(matches!(err, LockError::InvalidConfig(_)), "{bad}: {err:?}");
        }
        for good in [3, 5, 7] {
            check_node_count(good).expect("accepted");
        }
        let err = check_node_count(4).expect_err("even");
        assert!(err.to_string().contains("odd number"), "{err}");
    }

    #[test]
    fn a_quorum_failure_names_every_failed_node() {
        let failure = QuorumFailure {
            op: "acquire",
            total: 3,
            quorum: 2,
            errors: vec![
                "acquire on redis://a:1/: refused".into(),
                "acquire on redis://b:2/: refused".into(),
            ],
            silent: None,
        };
        let text = failure.to_string();
        assert!(
            text.contains("2 of 3 nodes failed, and 2 must agree"),
            "{text}"
        );
        assert!(
            text.contains("redis://a:1/") && text.contains("redis://b:2/"),
            "{text}"
        );
        let failure = QuorumFailure {
            op: "acquire",
            total: 5,
            quorum: 3,
            errors: vec!["acquire on redis://a:1/: refused".into()],
            silent: Some((2, Duration::from_millis(20))),
        };
        let text = failure.to_string();
        assert!(
            text.contains("1 of 5 nodes failed and 2 did not answer within 20ms, and 3 must agree"),
            "{text}"
        );
    }
}
