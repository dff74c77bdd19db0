//! The partition nemesis, shared by the fault suites: clients loop taking,
//! renewing and releasing a few contended locks, each through an
//! [`AliasPort`] of its own, while the nemesis cuts one current holder off
//! from the server in the kernel (iptables drops its packets both ways, so
//! nobody answers its TCP) for longer than the TTL, then heals, again and
//! again. The history checker then proves that nobody was granted a lock
//! while a partitioned holder's guard still said it was valid.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use distlock_api::{DistributedLock, Instant};
use distlock_testkit::{AliasPort, History, Outcome, Partition, Report};
use rand::Rng as _;

/// What the nemesis is told.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Clients, each with its own connection(s) through its own alias port.
    pub clients: usize,
    /// Lock names they contend for.
    pub names: usize,
    /// The TTL every lock is taken with.
    pub ttl: Duration,
    /// How many partitions to inject, one after the other.
    pub partitions: usize,
    /// How long each lasts: more than the TTL, so the server lets go.
    pub partition_for: Duration,
    /// The bound on any one client call (a hang is a failure).
    pub call_limit: Duration,
}

/// What a run did.
#[derive(Debug)]
pub struct Outcomes {
    /// The checker's verdict on the lock history.
    pub report: Report,
    /// Lock cycles the clients went through (acquire attempts).
    pub cycles: usize,
    /// Partitions injected.
    pub partitions: usize,
    /// Partitions during which another client was granted the victim's lock.
    pub takeovers: usize,
    /// Acquires and releases that ended in an error other than a timeout
    /// or `Lost` (connection errors while cut off).
    pub errors: usize,
}

impl Outcomes {
    /// Prints what the run did and fails the test on any violation, on a
    /// partition not injected, or when no partition outlasted a holder's
    /// lease (then the run proved nothing).
    pub fn assert_ok(&self, plan: &Plan, started: std::time::Instant) {
        eprintln!(
            "partition: {} clients, {} lock cycles in all, {} partitions of {:?} (TTL {:?}), {} \
             taken over meanwhile, {} connection errors: {}; took {:?}",
            plan.clients,
            self.cycles,
            self.partitions,
            plan.partition_for,
            plan.ttl,
            self.takeovers,
            self.errors,
            self.report.summary(),
            started.elapsed()
        );
        self.report.assert_ok();
        assert_eq!(self.partitions, plan.partitions);
        assert!(
            self.takeovers >= 1,
            "no partitioned holder's lock went to another client: the partitions did not outlast the TTL"
        );
    }
}

/// A long hold in progress, as the nemesis sees it.
#[derive(Clone)]
struct Holding {
    name: String,
    renew: bool,
    granted: Instant,
}

/// One partition as injected.
struct Cut {
    victim: usize,
    name: String,
    start: Instant,
    end: Instant,
}

/// Runs the plan against the server on `127.0.0.1:server_port`; `connect`
/// makes one client that talks to `127.0.0.1:<port>`.
pub async fn run<L, F, Fut>(plan: Plan, server_port: u16, connect: F) -> Outcomes
where
    L: DistributedLock + 'static,
    F: Fn(u16) -> Fut,
    Fut: Future<Output = L>,
{
    let mut aliases = Vec::new();
    for _ in 0..plan.clients {
        let alias = tokio::task::spawn_blocking(move || AliasPort::new(server_port))
            .await
            .expect("task")
            .expect("an alias port (the partition nemesis needs root and iptables)");
        aliases.push(alias);
    }
    let mut clients = Vec::new();
    for alias in &aliases {
        clients.push(Arc::new(connect(alias.port()).await));
    }
    let history = History::new();
    let holding: Arc<Mutex<Vec<Option<Holding>>>> = Arc::new(Mutex::new(vec![None; plan.clients]));
    let stop = Arc::new(AtomicBool::new(false));
    let cycles = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));

    let workers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(client, locks)| {
            let (locks, history, holding) =
                (Arc::clone(locks), history.clone(), Arc::clone(&holding));
            let (stop, cycles, errors) =
                (Arc::clone(&stop), Arc::clone(&cycles), Arc::clone(&errors));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    cycles.fetch_add(1, Ordering::Relaxed);
                    let name = format!("nemesis:{}", rand::rng().random_range(0..plan.names));
                    let acquire = history.acquire(client, &*locks, &name, plan.ttl, plan.ttl);
                    let mut held = match within(plan.call_limit, "an acquire", acquire).await {
                        Ok(held) => held,
                        Err(err) => {
                            if !matches!(err, distlock_api::LockError::Timeout) {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    // A quarter of the holds renew past the TTL, a quarter
                    // work unrenewed almost to the end of their validity
                    // (the holder that a too-early grant would overlap),
                    // the rest are short.
                    let (long, renew, hold) = match rand::rng().random_range(0..4) {
                        0 => (true, true, plan.ttl * 3 / 2),
                        1 => (
                            true,
                            false,
                            held.guard()
                                .remaining()
                                .saturating_sub(Duration::from_millis(50)),
                        ),
                        _ => (
                            false,
                            false,
                            Duration::from_millis(rand::rng().random_range(1..20)),
                        ),
                    };
                    if renew {
                        held.guard_mut().auto_renew();
                    }
                    holding.lock().expect("holding")[client] = long.then(|| Holding {
                        name,
                        renew,
                        granted: Instant::now(),
                    });
                    let lost = held.guard().lost();
                    tokio::select! {
                        () = tokio::time::sleep(hold) => {}
                        () = lost => {}
                    }
                    holding.lock().expect("holding")[client] = None;
                    let released = within(plan.call_limit, "a release", held.release()).await;
                    if Outcome::of_release(&released) == Outcome::Unknown {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // The nemesis: cut a current long holder off, longer than the TTL, then heal.
    // Victims alternate: one that renews, one that works unrenewed to the
    // end of its validity; each cut off within a quarter TTL of its grant,
    // while it still has most of its validity ahead.
    let mut cuts = Vec::new();
    for round in 0..plan.partitions {
        let renewing = round % 2 == 1;
        let (victim, name) = within(plan.call_limit * 4, "a long holder to partition", async {
            loop {
                let found = holding
                    .lock()
                    .expect("holding")
                    .iter()
                    .enumerate()
                    .find_map(|(client, held)| {
                        held.as_ref()
                            .filter(|held| {
                                held.renew == renewing && held.granted.elapsed() < plan.ttl / 4
                            })
                            .map(|held| (client, held.name.clone()))
                    });
                if let Some(found) = found {
                    return found;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let partition = Partition::isolate(&aliases[victim]).expect("partition a holder");
        let start = Instant::now();
        // The fault itself: the holder stays cut off this long.
        tokio::time::sleep(plan.partition_for).await;
        partition.heal().expect("heal the partition");
        cuts.push(Cut {
            victim,
            name,
            start,
            end: Instant::now(),
        });
        tokio::time::sleep(plan.ttl / 4).await;
    }
    stop.store(true, Ordering::Relaxed);
    within(plan.call_limit * 4, "the clients to stop", async {
        for worker in workers {
            worker.await.expect("worker");
        }
    })
    .await;
    drop(clients);
    drop(aliases);

    let ops = history.ops();
    let takeovers = cuts
        .iter()
        .filter(|cut| {
            ops.iter().any(|op| {
                op.client != cut.victim
                    && op.name == cut.name
                    && op.acquire_outcome == Some(Outcome::Ok)
                    && op
                        .acquire_completed
                        .is_some_and(|at| at > cut.start && at < cut.end)
            })
        })
        .count();
    Outcomes {
        report: history.check(),
        cycles: cycles.load(Ordering::Relaxed),
        partitions: cuts.len(),
        takeovers,
        errors: errors.load(Ordering::Relaxed),
    }
}

async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(limit, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}
