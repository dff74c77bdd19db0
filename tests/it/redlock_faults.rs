//! Redlock and Redis Cluster under faults, with the history checked
//! afterwards: nodes of a Redlock killed, frozen, restarted empty under
//! renewing holders, a majority lost and brought back; a cluster slot moved
//! back and forth under a running workload. Every scenario runs concurrent
//! clients (each with its own connection) over a few names, records every
//! acquire and release in a [`History`] and writes to seats that check the
//! fencing token. The single-operation cases are in
//! `lock-redis/tests/it/redlock.rs` and `lock-redis/tests/it/cluster.rs`.
//!
//! Faults are injected on events (a number of completed cycles, a kind of
//! failure seen), never after a sleep; every call is bounded. A scenario
//! fails on any violation, on a write the fencing token refused, and on
//! any failed call except those it names, with the reason, where it
//! filters them. The scenarios run one at a time (see [`SERIAL`]).

use crate::workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::ticket_booking::seat_log::check_seat_log;
use distlock::redis::{RedisLock, Redlock, redis};
use distlock_api::{DistributedLock, Instant, LockError};
use distlock_testkit::{History, LinkProxy, RedisCluster, RedisOptions, RedisServer, Report};
use tokio::sync::watch;
use workload::{SeatStore, unique, within};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);
/// The longest one node command may take: a reconnect, then the reply.
const COMMAND_LIMIT: Duration = Duration::from_millis(800);
/// How late a bounded call may come beyond its bound on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// TTL of the workload's locks.
const TTL: Duration = Duration::from_secs(2);
/// How long a workload acquire may wait.
const WAIT: Duration = Duration::from_secs(3);
/// Upper bound for any phase of a scenario to show the progress it waits for.
const PHASE_LIMIT: Duration = Duration::from_secs(15);

/// `n` independent servers.
fn servers(n: usize, options: RedisOptions) -> Vec<RedisServer> {
    RedisServer::start_several_with(n, options).expect("redis-servers")
}

/// A Redlock client over `nodes` that gives up on a dead or frozen node fast.
async fn redlock(nodes: &[RedisServer]) -> Redlock {
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    RedisLock::options()
        .connect_timeout(CONNECT_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_redlock(&urls)
        .await
        .expect("connect the Redlock")
}

/// `clients` Redlock clients, each with its own connections.
async fn redlock_clients(nodes: &[RedisServer], clients: usize) -> Vec<Arc<dyn DistributedLock>> {
    let mut all: Vec<Arc<dyn DistributedLock>> = Vec::new();
    for _ in 0..clients {
        all.push(Arc::new(redlock(nodes).await));
    }
    all
}

/// One failed call of a workload client.
#[derive(Debug)]
struct Failure {
    client: usize,
    /// `"acquire"` or `"release"`.
    op: &'static str,
    /// When the call was made.
    invoked: Instant,
    /// When it returned.
    returned: Instant,
    error: LockError,
}

/// A workload running in the background until [`stop`](Running::stop):
/// each client takes the names in turn (client `c`, cycle `i`: name
/// `(c + i) % names`), toggles the seat the name protects with a fenced
/// write, and releases.
struct Running {
    history: History,
    seats: SeatStore,
    /// Completed cycles (acquire succeeded, release returned).
    cycles: watch::Sender<usize>,
    /// Failed calls so far.
    failed: watch::Sender<usize>,
    failures: Arc<Mutex<Vec<Failure>>>,
    refused: Arc<AtomicUsize>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

/// What a stopped workload did.
#[derive(Debug)]
struct Finished {
    report: Report,
    cycles: usize,
    failures: Vec<Failure>,
    refused_writes: usize,
    started: Instant,
}

/// `n` lock names of their own.
fn names(n: usize) -> Vec<String> {
    let prefix = unique();
    (0..n).map(|i| format!("faults:{prefix}:{i}")).collect()
}

impl Running {
    /// `clients` over `n` names of their own, with the workload's TTL and wait.
    fn start(clients: Vec<Arc<dyn DistributedLock>>, n: usize) -> Running {
        Running::start_on(clients, History::new(), names(n), TTL, WAIT)
    }

    /// `clients` over `names`, recording into `history`.
    fn start_on(
        clients: Vec<Arc<dyn DistributedLock>>,
        history: History,
        names: Vec<String>,
        ttl: Duration,
        wait: Duration,
    ) -> Running {
        let names = Arc::new(names);
        let running = Running {
            history,
            seats: SeatStore::default(),
            cycles: watch::Sender::new(0),
            failed: watch::Sender::new(0),
            failures: Arc::default(),
            refused: Arc::default(),
            stop: watch::Sender::new(false),
            tasks: Vec::new(),
            started: Instant::now(),
        };
        let mut tasks = Vec::new();
        for (client, locks) in clients.into_iter().enumerate() {
            let history = running.history.clone();
            let seats = running.seats.clone();
            let (cycles, failed) = (running.cycles.clone(), running.failed.clone());
            let failures = Arc::clone(&running.failures);
            let refused = Arc::clone(&running.refused);
            let stop = running.stop.subscribe();
            let names = Arc::clone(&names);
            tasks.push(tokio::spawn(async move {
                let holder = format!("client-{client}");
                let fail = |op, invoked, error| {
                    failures
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(Failure {
                            client,
                            op,
                            invoked,
                            returned: Instant::now(),
                            error,
                        });
                    failed.send_modify(|n| *n += 1);
                };
                for cycle in 0.. {
                    if *stop.borrow() {
                        break;
                    }
                    let seat = (client + cycle) % names.len();
                    let name = &names[seat];
                    let invoked = Instant::now();
                    let acquired = within(
                        wait + COMMAND_LIMIT + SLACK,
                        "an acquire",
                        history.acquire(client, &*locks, name, ttl, wait),
                    )
                    .await;
                    let held = match acquired {
                        Ok(held) => held,
                        Err(err) => {
                            fail("acquire", invoked, err);
                            continue;
                        }
                    };
                    let seat = i64::try_from(seat).expect("few seats");
                    if !seats.toggle(seat, held.fencing_token(), &holder).await {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    let invoked = Instant::now();
                    if let Err(err) =
                        within(COMMAND_LIMIT + SLACK, "a release", held.release()).await
                    {
                        fail("release", invoked, err);
                    }
                    cycles.send_modify(|n| *n += 1);
                }
            }));
        }
        Running { tasks, ..running }
    }

    /// Cycles completed so far.
    fn cycles(&self) -> usize {
        *self.cycles.borrow()
    }

    /// Waits (bounded) until `more` cycles beyond `from` have completed.
    ///
    /// When they do not, the panic lists the calls that failed so far.
    async fn cycles_reach(&self, from: usize, more: usize, what: &str) {
        let mut cycles = self.cycles.subscribe();
        let reached = tokio::time::timeout(PHASE_LIMIT, cycles.wait_for(|&n| n >= from + more));
        if reached.await.is_err() {
            let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
            panic!(
                "{what} did not finish within {PHASE_LIMIT:?}: {} of {more} cycles at {:.3}s; \
                 failed calls so far:\n{}",
                self.cycles().saturating_sub(from),
                self.started.elapsed().as_secs_f64(),
                describe(self.started, failures.iter())
            );
        }
    }

    /// Waits (bounded) until `check` holds for the failures so far.
    async fn failures_until(&self, what: &str, check: impl Fn(&[Failure]) -> bool + Send + Sync) {
        let mut failed = self.failed.subscribe();
        let failures = Arc::clone(&self.failures);
        within(
            PHASE_LIMIT,
            what,
            failed.wait_for(|_| check(&failures.lock().unwrap_or_else(PoisonError::into_inner))),
        )
        .await
        .expect("the workload runs");
    }

    /// Stops the clients after their current cycle and checks the history
    /// and the seats' writes.
    async fn stop(self) -> Finished {
        self.stop.send_replace(true);
        for task in self.tasks {
            within(WAIT + 2 * (COMMAND_LIMIT + SLACK), "a client stops", task)
                .await
                .expect("a workload client panicked");
        }
        let report = self
            .history
            .check()
            .merge(check_seat_log(&self.seats.log()));
        let failures =
            std::mem::take(&mut *self.failures.lock().unwrap_or_else(PoisonError::into_inner));
        Finished {
            report,
            cycles: *self.cycles.borrow(),
            failures,
            refused_writes: self.refused.load(Ordering::Relaxed),
            started: self.started,
        }
    }
}

impl Finished {
    /// No violation, no refused write, no failure.
    fn assert_clean(&self, scenario: &str) {
        self.assert_clean_but(scenario, &self.failures.iter().collect::<Vec<_>>());
    }

    /// No violation, no refused write, and none of the `unexpected`
    /// failures (the others are printed).
    fn assert_clean_but(&self, scenario: &str, unexpected: &[&Failure]) {
        eprintln!(
            "{scenario}: {} cycles: {}",
            self.cycles,
            self.report.summary()
        );
        if !self.failures.is_empty() {
            eprint!("{}", self.describe(&self.failures));
        }
        self.report.assert_ok();
        assert_eq!(self.refused_writes, 0, "no holder wrote past its lease");
        assert!(
            unexpected.is_empty(),
            "{scenario}: unexpected failures:\n{}",
            self.describe(unexpected.iter().copied())
        );
    }

    /// Seconds from the start of the run to `at`.
    fn at(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    /// One line per failure, with times relative to the start of the run.
    fn describe<'a>(&self, failures: impl IntoIterator<Item = &'a Failure>) -> String {
        describe(self.started, failures)
    }
}

/// One line per failure, with times relative to `started`.
fn describe<'a>(started: Instant, failures: impl IntoIterator<Item = &'a Failure>) -> String {
    let at = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
    failures
        .into_iter()
        .map(|f| {
            format!(
                "  client {} {} {:.3}s..{:.3}s: {}\n",
                f.client,
                f.op,
                at(f.invoked),
                at(f.returned),
                f.error
            )
        })
        .collect()
}

/// The scenarios run one at a time. Run together on two cores they failed
/// now and then (a cluster move that outlasted its bound, acquires that
/// outlasted their wait) — at the time the test kit could also hand a
/// killed node's port to another scenario's server, which it no longer
/// does; one at a time they have not failed.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Kills `kill` of `n` nodes once the workload is under way; the others
/// carry on without a violation or a failed acquire.
async fn kill_a_minority(n: usize, kill: usize) {
    let _serial = SERIAL.lock().await;
    let mut nodes = servers(n, RedisOptions::new());
    let clients = redlock_clients(&nodes, 4).await;
    let running = Running::start(clients, 2);
    running.cycles_reach(0, 20, "cycles before the kill").await;
    let killed = Instant::now();
    for node in &mut nodes[..kill] {
        node.kill().expect("kill -9");
    }
    let at_kill = running.cycles();
    running
        .cycles_reach(at_kill, 30, "cycles after the kill")
        .await;
    let run = running.stop().await;
    let scenario = format!("{n} nodes, {kill} killed at {:.3}s", run.at(killed));
    // A lock held at the kill on the killed nodes and fewer than a majority
    // of the others (the rest had refused it) cannot be released on a
    // majority any more: its release reports the dead nodes
    // (`Connection`), which the history records as unknown — never `Lost`.
    // At most one such lock per client, released just after the kill (or
    // in flight at the kill: invoked a moment before it, answered after).
    let unexpected: Vec<&Failure> = run
        .failures
        .iter()
        .filter(|f| {
            !(f.op == "release"
                && f.returned >= killed
                && f.invoked < killed + Duration::from_secs(1)
                && matches!(f.error, LockError::Connection(_)))
        })
        .collect();
    run.assert_clean_but(&scenario, &unexpected);
    assert!(run.failures.len() <= 4, "{}", run.describe(&run.failures));
    assert!(run.cycles >= at_kill + 30, "work went on after the kill");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_killed_mid_run() {
    kill_a_minority(3, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_two_killed_mid_run() {
    kill_a_minority(5, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_one_frozen_mid_run() {
    let _serial = SERIAL.lock().await;
    let mut nodes = servers(3, RedisOptions::new());
    let clients = redlock_clients(&nodes, 4).await;
    let running = Running::start(clients, 2);
    running.cycles_reach(0, 20, "cycles before the pause").await;
    let paused = Instant::now();
    nodes[1].pause().expect("SIGSTOP");
    let at_pause = running.cycles();
    // No step waits for the frozen node once the others have decided it.
    running
        .cycles_reach(at_pause, 10, "cycles while a node is frozen")
        .await;
    let during = running.cycles() - at_pause;
    nodes[1].resume().expect("SIGCONT");
    let resumed = Instant::now();
    let at_resume = running.cycles();
    running
        .cycles_reach(at_resume, 20, "cycles after the resume")
        .await;
    let run = running.stop().await;
    // With one node frozen, two clients that contend for a name can split
    // the two live nodes' votes; such an attempt gives the frozen node only
    // ttl/50 the first time, and no wait at all once it has let an attempt
    // down, and deletes its keys at once, so no acquire fails. (When every
    // split attempt waited ttl/50 with its key on one live node, the
    // contenders kept the two live nodes split between them, attempt after
    // attempt, and every acquire timed out now and then.) A
    // lock held on the frozen node and only one other (the third had
    // refused it) cannot be released on a majority: `Connection`, recorded
    // as unknown. That is the only failure, and only while the node is
    // frozen.
    let unexpected: Vec<&Failure> = run
        .failures
        .iter()
        .filter(|f| {
            let expected = f.op != "acquire" && matches!(f.error, LockError::Connection(_));
            !(expected && f.invoked < resumed && f.returned > paused)
        })
        .collect();
    let scenario = format!(
        "3 nodes, one frozen {:.3}s..{:.3}s ({during} cycles meanwhile, {} failures)",
        run.at(paused),
        run.at(resumed),
        run.failures.len()
    );
    run.assert_clean_but(&scenario, &unexpected);
    assert!(during >= 10, "progress during the pause: {during} cycles");
}

/// Reads `key` on one server, raw.
async fn get(conn: &mut distlock::redis::RedisConnection, key: &str) -> Option<Vec<u8>> {
    redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET")
}

async fn connection(server: &RedisServer) -> distlock::redis::RedisConnection {
    RedisLock::options()
        .connect_timeout(CONNECT_TIMEOUT)
        .connect(&server.url())
        .await
        .expect("connect to one node")
        .connection()
        .await
        .expect("a connection of our own")
}

/// A lock value without the "someone waits" mark.
fn token_of(value: &[u8]) -> &[u8] {
    value.strip_suffix(b"+").unwrap_or(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewing_holders_repair_a_node_restarted_empty() {
    let _serial = SERIAL.lock().await;
    const HOLDERS: usize = 3;
    let renew_ttl = Duration::from_secs(1);
    let mut nodes = servers(3, RedisOptions::new());
    let history = History::new();
    let names = names(HOLDERS);

    let mut held = Vec::new();
    for (client, name) in names.iter().enumerate() {
        let locks = redlock(&nodes).await;
        let mut guard = within(
            WAIT + SLACK,
            "a holder acquires",
            history.acquire(client, &locks, name, renew_ttl, WAIT),
        )
        .await
        .expect("free");
        guard.guard_mut().auto_renew();
        let first_valid_until = guard.guard().valid_until();
        held.push((locks, guard, first_valid_until));
    }
    let acquired = Instant::now();
    // Contenders on the same names, each with its own client: while the
    // holders renew, every one of their attempts must fail.
    let contenders = redlock_clients(&nodes, 2).await;
    let contending = Running::start_on(
        contenders,
        history.clone(),
        names.clone(),
        renew_ttl,
        Duration::from_millis(300),
    );

    nodes[0].kill().expect("kill -9");
    tokio::task::block_in_place(|| nodes[0].restart()).expect("restart without data");
    let mut on_restarted = connection(&nodes[0]).await;
    let mut on_survivor = connection(&nodes[1]).await;
    for (name, (_, guard, _)) in names.iter().zip(&held) {
        let key = format!("distlock:{{{name}}}");
        let fence = format!("{key}:fence");
        let token = guard.fencing_token().to_string().into_bytes();
        within(PHASE_LIMIT, "renewal repairs the restarted node", async {
            loop {
                let survivor = get(&mut on_survivor, &key).await.expect("held on node 1");
                let restarted = get(&mut on_restarted, &key).await;
                let counter = get(&mut on_restarted, &fence).await;
                if restarted.is_some_and(|value| token_of(&value) == token_of(&survivor))
                    && counter.as_deref() == Some(&token[..])
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }
    // Hold on for more than twice the TTL in all: only renewal keeps the locks.
    tokio::time::sleep((2 * renew_ttl + renew_ttl / 2).saturating_sub(acquired.elapsed())).await;
    for (name, (_, guard, first_valid_until)) in names.iter().zip(held) {
        assert!(!guard.guard().is_lost(), "{name}: the guard was kept");
        assert!(
            guard.guard().valid_until() > first_valid_until + renew_ttl,
            "{name}: renewal moved the validity on"
        );
        within(COMMAND_LIMIT + SLACK, "a holder releases", guard.release())
            .await
            .expect("still ours after the repair");
    }
    // Freed: the contenders get the names now.
    let at_release = contending.cycles();
    contending
        .cycles_reach(
            at_release,
            HOLDERS,
            "the contenders acquire after the release",
        )
        .await;
    let run = contending.stop().await;
    eprintln!("renewal repair: {}", run.report.summary());
    run.report.assert_ok();
    assert_eq!(run.refused_writes, 0);
    for failure in &run.failures {
        assert!(
            failure.op == "acquire" && failure.error.is_timeout(),
            "only timeouts while the holders renew: {failure:?}"
        );
    }
    let c = run.report.counts;
    assert!(
        c.failed >= 2,
        "the contenders tried while the locks were held"
    );
    assert_eq!(c.released_ok, c.acquired, "every lock released, none lost");
    assert_eq!(c.overruns, 0, "{}", run.report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_majority_killed_then_restarted() {
    let _serial = SERIAL.lock().await;
    // With the append-only file a node comes back with its counters: two of
    // three restarted empty would make a majority that forgot every token.
    let mut nodes = servers(3, RedisOptions::new().append_only());
    let clients = redlock_clients(&nodes, 4).await;
    let running = Running::start(clients, 2);
    running.cycles_reach(0, 20, "cycles before the kill").await;
    nodes[0].kill().expect("kill -9");
    nodes[1].kill().expect("kill -9");
    let killed = Instant::now();
    let at_kill = running.cycles();
    // Locks whose release failed stay on the surviving node until their TTL
    // runs out; after that every acquire fails for want of a majority.
    let clear = killed + TTL;
    running
        .failures_until("every client fails for want of a majority", |failures| {
            (0..4).all(|client| {
                failures.iter().any(|f| {
                    f.client == client
                        && f.op == "acquire"
                        && f.invoked > clear
                        && matches!(f.error, LockError::Connection(_))
                })
            })
        })
        .await;
    let during = running.cycles() - at_kill;
    for node in &mut nodes[..2] {
        tokio::task::block_in_place(|| node.restart()).expect("restart with the AOF");
    }
    let restarted = Instant::now();
    let at_restart = running.cycles();
    running
        .cycles_reach(at_restart, 20, "cycles after the restart")
        .await;
    let run = running.stop().await;
    eprintln!(
        "3 nodes, 2 killed and restarted: {} cycles ({during} while down), {} failures: {}",
        run.cycles,
        run.failures.len(),
        run.report.summary()
    );
    run.report.assert_ok();
    assert_eq!(run.refused_writes, 0);
    for failure in &run.failures {
        let Failure {
            op, invoked, error, ..
        } = failure;
        match (*op, error) {
            (_, LockError::Connection(_)) => {}
            // An acquire that found a lock left on the survivor by a failed
            // release (held there, no majority elsewhere) ends as a timeout.
            ("acquire", LockError::Timeout) => assert!(*invoked < clear, "{failure:?}"),
            _ => panic!("unexpected failure: {failure:?}"),
        }
        assert!(
            *invoked + WAIT + COMMAND_LIMIT + SLACK > killed,
            "nothing failed before the kill: {failure:?}"
        );
        assert!(
            *invoked < restarted + WAIT,
            "nothing failed after the restart settled: {failure:?}"
        );
    }
    assert!(
        during <= 4,
        "at most the cycles in flight finished: {during}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_slot_moved_back_and_forth_mid_run() {
    let _serial = SERIAL.lock().await;
    let cluster = Arc::new(RedisCluster::start().expect("a cluster of our own"));
    let seeds = cluster.seed_urls();
    let mut clients: Vec<Arc<dyn DistributedLock>> = Vec::new();
    for _ in 0..4 {
        let locks = RedisLock::connect_cluster(&seeds).await.expect("connect");
        clients.push(Arc::new(locks));
    }
    let names = names(2);
    let slot = RedisCluster::key_slot(&format!("distlock:{{{}}}", names[0]));
    let running = Running::start_on(clients, History::new(), names, TTL, WAIT);
    let home = cluster.node_for_slot(slot).expect("owner");
    let away = (home + 1) % cluster.masters().len();
    let mut moves = 0;
    let mut migrations = Vec::new();
    for to in [away, home, away, home] {
        let from = running.cycles();
        running.cycles_reach(from, 40, "cycles between moves").await;
        let cluster = Arc::clone(&cluster);
        let began = Instant::now();
        within(
            PHASE_LIMIT,
            "a slot migration",
            tokio::task::spawn_blocking(move || cluster.migrate_slot(slot, to)),
        )
        .await
        .expect("migration task")
        .expect("migrate the slot");
        migrations.push((to, began, Instant::now()));
        moves += 1;
    }
    let from = running.cycles();
    running
        .cycles_reach(from, 15, "cycles after the last move")
        .await;
    let run = running.stop().await;
    for (to, began, ended) in &migrations {
        eprintln!(
            "slot {slot} to master {to}: {:.3}s..{:.3}s",
            run.at(*began),
            run.at(*ended)
        );
    }
    run.assert_clean(&format!("cluster, slot {slot} moved {moves} times"));
    assert_eq!(cluster.node_for_slot(slot).expect("owner"), home);
}

/// A holder whose links to every node are slow (a [`LinkProxy`] per node),
/// and another client on direct links.
struct SlowHolder {
    proxies: Vec<LinkProxy>,
    holder: Redlock,
    other: Redlock,
}

impl SlowHolder {
    async fn connect(nodes: &[RedisServer]) -> SlowHolder {
        let proxies: Vec<LinkProxy> = nodes
            .iter()
            .map(|node| LinkProxy::start(node.addr()).expect("a proxy"))
            .collect();
        let urls: Vec<String> = proxies
            .iter()
            .map(|proxy| format!("redis://127.0.0.1:{}/", proxy.port()))
            .collect();
        // Long enough for the slowest round trip the tests make.
        let holder = RedisLock::options()
            .connect_timeout(Duration::from_secs(5))
            .response_timeout(Duration::from_secs(10))
            .connect_redlock(&urls)
            .await
            .expect("connect the holder through the proxies");
        SlowHolder {
            proxies,
            holder,
            other: redlock(nodes).await,
        }
    }

    fn delay(&self, delay: Duration) {
        for proxy in &self.proxies {
            proxy.set_delay(delay);
        }
    }
}

/// An extend sent within the validity but delayed on the way, so that it
/// reaches the nodes after the keys expired, while another client took the
/// lock (with a higher token) and gave it back: the late answer proves
/// nothing about the time in between, and must not revive the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_extend_does_not_revive_a_lease_another_client_held() {
    let _serial = SERIAL.lock().await;
    const LINK_DELAY: Duration = Duration::from_millis(1500);
    let ttl = Duration::from_millis(600);
    let nodes = servers(3, RedisOptions::new());
    let slow = SlowHolder::connect(&nodes).await;
    let history = History::new();
    let name = format!("late-extend:{}", unique());
    let mut held = within(
        WAIT + SLACK,
        "the holder acquires",
        history.acquire(0, &slow.holder, &name, ttl, WAIT),
    )
    .await
    .expect("free");
    // Once at full speed, so the nodes have the script cached: a cache
    // miss would cost the slow extend a second round trip.
    within(
        COMMAND_LIMIT + SLACK,
        "a first extend",
        held.guard_mut().extend(ttl),
    )
    .await
    .expect("extended");
    let first_valid_until = held.guard().valid_until();
    slow.delay(LINK_DELAY);
    let extend_sent = Instant::now();
    // Reaches the nodes LINK_DELAY later, long after the keys expired.
    let extending = tokio::spawn(async move {
        let result = held.guard_mut().extend(Duration::from_secs(10)).await;
        (held, result, Instant::now())
    });
    // The other client takes the lock once the holder's keys expire, and
    // gives it back before the extend arrives.
    let other = within(
        WAIT + SLACK,
        "the other client acquires",
        history.acquire(1, &slow.other, &name, Duration::from_secs(5), WAIT),
    )
    .await
    .expect("free once the holder's keys expired");
    let other_token = other.fencing_token();
    within(
        COMMAND_LIMIT + SLACK,
        "the other client releases",
        other.release(),
    )
    .await
    .expect("released");
    let other_done = Instant::now();
    let (held, extended, answered) = within(
        2 * LINK_DELAY + COMMAND_LIMIT + SLACK,
        "the late extend",
        extending,
    )
    .await
    .expect("extend task");
    slow.delay(Duration::ZERO);
    eprintln!(
        "extend sent {:?} before the old validity ended; the other client got token {} \
         (holder {}) and was done {:?} after the extend was sent; the answer came {:?} \
         after it was sent: {extended:?}",
        first_valid_until.saturating_duration_since(extend_sent),
        other_token,
        held.fencing_token(),
        other_done.saturating_duration_since(extend_sent),
        answered.saturating_duration_since(extend_sent),
    );
    assert!(other_token > held.fencing_token());
    let released = within(
        2 * LINK_DELAY + COMMAND_LIMIT + SLACK,
        "the holder releases",
        held.release(),
    )
    .await;
    let report = history.check();
    eprintln!("late extend: {}", report.summary());
    report.assert_ok();
    assert!(
        matches!(extended, Err(LockError::Lost)),
        "the late extend must report the lease lost: {extended:?}"
    );
    assert!(matches!(released, Err(LockError::Lost)), "{released:?}");
}

/// The other side of the rule: an extend whose answer comes after the old
/// validity, but which reached the nodes while our keys were still there,
/// proves the hold was continuous on a majority and extends the lease; a
/// contender is refused meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_from_keys_still_ours_extends() {
    let _serial = SERIAL.lock().await;
    const LINK_DELAY: Duration = Duration::from_millis(700);
    let ttl = Duration::from_millis(1000);
    let nodes = servers(3, RedisOptions::new());
    let slow = SlowHolder::connect(&nodes).await;
    let history = History::new();
    let name = format!("late-answer:{}", unique());
    let mut held = within(
        WAIT + SLACK,
        "the holder acquires",
        history.acquire(0, &slow.holder, &name, ttl, WAIT),
    )
    .await
    .expect("free");
    // Once at full speed, so the nodes have the script cached: a cache
    // miss would cost the slow extend a second round trip.
    within(
        COMMAND_LIMIT + SLACK,
        "a first extend",
        held.guard_mut().extend(ttl),
    )
    .await
    .expect("extended");
    let first_valid_until = held.guard().valid_until();
    slow.delay(LINK_DELAY);
    let extending = tokio::spawn(async move {
        let result = held.guard_mut().extend(Duration::from_secs(10)).await;
        (held, result)
    });
    let contender = within(
        WAIT + SLACK,
        "a contender tries",
        history.acquire(1, &slow.other, &name, ttl, Duration::from_millis(1500)),
    )
    .await;
    let (held, extended) = within(
        2 * LINK_DELAY + COMMAND_LIMIT + SLACK,
        "the late extend",
        extending,
    )
    .await
    .expect("extend task");
    slow.delay(Duration::ZERO);
    assert!(
        Instant::now() > first_valid_until,
        "the answer came after the old validity"
    );
    extended.expect("the keys were ours all along: extended");
    assert!(
        matches!(contender, Err(LockError::Timeout)),
        "held meanwhile: {contender:?}"
    );
    within(COMMAND_LIMIT + SLACK, "the holder releases", held.release())
        .await
        .expect("still ours");
    let report = history.check();
    eprintln!("late answer: {}", report.summary());
    report.assert_ok();
}
