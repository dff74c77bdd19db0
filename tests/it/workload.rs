//! The lock workload the load, checker and fault tests share: clients that
//! take named locks in a loop, do a read-then-write on a seat the lock
//! protects, and record everything in a [`History`].
#![allow(dead_code)] // each test file uses a different part

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::ticket_booking::seat_log::{SeatAction, SeatWrite};
use distlock_api::{DistributedLock, Instant, LockError};
use distlock_testkit::History;

/// Awaits `future` for at most `limit`, or fails the test naming `what`.
pub(crate) async fn within<T>(limit: Duration, what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}

/// A unique suffix for names and key prefixes, so runs never share state.
pub(crate) fn unique() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Seats the locks protect, stored the way `examples/ticket_booking` stores
/// tickets: a read, a pause, and a write that flips the seat between sold
/// and free, accepted only with a fencing token at least as large as the
/// last one accepted for the seat. Without mutual exclusion two holders
/// read "free" and both sell it; a holder that stalled past its lease has
/// its late write refused.
#[derive(Clone, Default)]
pub(crate) struct SeatStore {
    inner: Arc<Mutex<Seats>>,
}

#[derive(Default)]
struct Seats {
    sold: HashMap<i64, bool>,
    /// The highest fence accepted per seat, for fenced writes.
    fence: HashMap<i64, i64>,
    log: Vec<SeatWrite>,
}

impl SeatStore {
    fn seats(&self) -> std::sync::MutexGuard<'_, Seats> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `seat` is sold.
    pub(crate) fn is_sold(&self, seat: i64) -> bool {
        self.seats().sold.get(&seat).copied().unwrap_or(false)
    }

    /// The protected work: read the seat, yield, then flip it with a fenced
    /// write. Returns whether the write was accepted.
    pub(crate) async fn toggle(&self, seat: i64, fence: u64, holder: &str) -> bool {
        let sold = self.is_sold(seat);
        tokio::task::yield_now().await;
        let action = if sold {
            SeatAction::Cancel
        } else {
            SeatAction::Book
        };
        self.write_fenced(seat, action, fence, holder)
    }

    /// A fenced write: accepted only when `fence` is at least the highest
    /// accepted for the seat (the holder itself may write again); returns
    /// whether it was accepted. Only accepted writes are logged.
    pub(crate) fn write_fenced(
        &self,
        seat: i64,
        action: SeatAction,
        fence: u64,
        holder: &str,
    ) -> bool {
        let fence_i = i64::try_from(fence).expect("test tokens fit i64");
        let mut seats = self.seats();
        if seats.fence.get(&seat).is_some_and(|&top| fence_i < top) {
            return false;
        }
        seats.fence.insert(seat, fence_i);
        seats.sold.insert(seat, action == SeatAction::Book);
        push(&mut seats, seat, action, fence, holder);
        true
    }

    /// The accepted writes, in commit order.
    pub(crate) fn log(&self) -> Vec<SeatWrite> {
        self.seats().log.clone()
    }
}

fn push(seats: &mut Seats, seat: i64, action: SeatAction, fence: u64, holder: &str) {
    let seq = i64::try_from(seats.log.len()).expect("log fits i64") + 1;
    seats.log.push(SeatWrite {
        seq,
        ticket_id: seat,
        action,
        holder: holder.to_owned(),
        fence: i64::try_from(fence).expect("test tokens fit i64"),
    });
}

/// The shape of one run.
#[derive(Debug, Clone)]
pub(crate) struct Workload {
    /// Concurrent clients (tasks).
    pub(crate) clients: usize,
    /// Lock cycles per client.
    pub(crate) cycles: usize,
    /// Distinct lock names; client `c` uses name `(c + cycle) % names`.
    pub(crate) names: usize,
    /// Name prefix (unique per run).
    pub(crate) prefix: String,
    /// TTL of the clients without renewal.
    pub(crate) ttl: Duration,
    /// How long an acquire may wait.
    pub(crate) wait: Duration,
    /// The first `renewing` clients turn renewal on, with `renew_ttl`.
    pub(crate) renewing: usize,
    /// TTL of the renewing clients.
    pub(crate) renew_ttl: Duration,
    /// How long each renewing client holds its first lock (longer than
    /// `renew_ttl`, so only renewal keeps it; zero for no long hold). All
    /// of them start together on different names, so the long holds
    /// overlap instead of queueing behind one another.
    pub(crate) long_hold: Duration,
}

impl Workload {
    /// `clients × cycles` over `names`, TTL 10 s, waits of 30 s, no renewal.
    pub(crate) fn new(clients: usize, cycles: usize, names: usize) -> Self {
        Workload {
            clients,
            cycles,
            names,
            prefix: format!("workload:{}:", unique()),
            ttl: Duration::from_secs(10),
            wait: Duration::from_secs(30),
            renewing: 0,
            renew_ttl: Duration::from_secs(1),
            long_hold: Duration::from_millis(1200),
        }
    }

    /// Turns renewal on for the first `clients` clients.
    pub(crate) fn renewing(mut self, clients: usize) -> Self {
        self.renewing = clients;
        self
    }

    /// The TTL for clients without renewal.
    pub(crate) fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long an acquire may wait.
    pub(crate) fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    fn renews(&self, client: usize) -> bool {
        client < self.renewing
    }

    /// How many long holds with renewal the run makes.
    pub(crate) fn long_holds(&self) -> usize {
        if self.long_hold.is_zero() || self.cycles == 0 {
            0
        } else {
            self.renewing.min(self.clients)
        }
    }
}

/// What a run produced.
#[derive(Debug)]
pub(crate) struct Run {
    /// Every acquire and release.
    pub(crate) history: History,
    /// The seats' writes.
    pub(crate) seats: SeatStore,
    /// Completed cycles (acquire succeeded).
    pub(crate) cycles: usize,
    /// Acquires that failed, with the error.
    pub(crate) acquire_errors: Vec<(usize, String)>,
    /// Releases that failed, with the error.
    pub(crate) release_errors: Vec<(usize, String)>,
    /// Long holds whose validity renewal moved past the first TTL.
    pub(crate) renewed: usize,
    /// Seat writes the fencing token refused (a holder past its lease).
    pub(crate) refused_writes: usize,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
}

impl std::fmt::Debug for SeatStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeatStore")
            .field("writes", &self.seats().log.len())
            .finish()
    }
}

/// Runs `workload` against `locks` and returns what happened. Never
/// panics on lock errors: they are counted, for the caller to judge.
pub(crate) async fn run(locks: Arc<dyn DistributedLock>, workload: &Workload) -> Run {
    run_recorded(locks, workload, History::new()).await
}

/// [`run`], recording into `history` (which the caller can watch while the
/// run goes on, e.g. to inject a fault once it is under way).
pub(crate) async fn run_recorded(
    locks: Arc<dyn DistributedLock>,
    workload: &Workload,
    history: History,
) -> Run {
    let seats = SeatStore::default();
    let cycles = Arc::new(AtomicUsize::new(0));
    let renewed = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let acquire_errors = Arc::new(Mutex::new(Vec::new()));
    let release_errors = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..workload.clients {
        let (locks, history, seats, workload) = (
            Arc::clone(&locks),
            history.clone(),
            seats.clone(),
            workload.clone(),
        );
        let (cycles, renewed, refused) = (
            Arc::clone(&cycles),
            Arc::clone(&renewed),
            Arc::clone(&refused),
        );
        let (acquire_errors, release_errors) =
            (Arc::clone(&acquire_errors), Arc::clone(&release_errors));
        tasks.push(tokio::spawn(async move {
            let holder = format!("client-{client}");
            let renews = workload.renews(client);
            let ttl = if renews {
                workload.renew_ttl
            } else {
                workload.ttl
            };
            for cycle in 0..workload.cycles {
                let seat = (client + cycle) % workload.names;
                let name = format!("{}{seat}", workload.prefix);
                let mut held = match history
                    .acquire(client, &*locks, &name, ttl, workload.wait)
                    .await
                {
                    Ok(held) => held,
                    Err(err) => {
                        record(&acquire_errors, client, &err);
                        continue;
                    }
                };
                cycles.fetch_add(1, Ordering::Relaxed);
                let first_valid_until = held.guard().valid_until();
                if renews {
                    held.guard_mut().auto_renew();
                }
                let seat = i64::try_from(seat).expect("few seats");
                if !seats.toggle(seat, held.fencing_token(), &holder).await {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                let long = renews && cycle == 0 && !workload.long_hold.is_zero();
                if long {
                    tokio::time::sleep(workload.long_hold).await;
                    if held.guard().valid_until() > first_valid_until {
                        renewed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if let Err(err) = held.release().await {
                    record(&release_errors, client, &err);
                }
            }
        }));
    }
    for task in tasks {
        task.await.expect("a workload client panicked");
    }
    let take = |errors: Arc<Mutex<Vec<(usize, String)>>>| {
        std::mem::take(&mut *errors.lock().unwrap_or_else(PoisonError::into_inner))
    };
    Run {
        history,
        seats,
        cycles: cycles.load(Ordering::Relaxed),
        acquire_errors: take(acquire_errors),
        release_errors: take(release_errors),
        renewed: renewed.load(Ordering::Relaxed),
        refused_writes: refused.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
    }
}

fn record(errors: &Mutex<Vec<(usize, String)>>, client: usize, err: &LockError) {
    errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((client, format!("{err:?}")));
}
