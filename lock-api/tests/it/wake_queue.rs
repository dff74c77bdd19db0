//! Waiters depend on wake-ups alone here (the backoff is an hour), so a
//! wake-up lost in the queue — a waiter that leaves with one, a grant that
//! does not wake the next in line — stalls the test instead of hiding
//! behind a retry timer.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use distlock_api::backend::{Attempt, AttemptContext, Backoff, LockBackend, Wakeup};
use distlock_api::{DistributedLock, LockError, MemoryLease, MemoryLock};

/// `MemoryLock` whose waiters never retry on a timer.
#[derive(Clone, Default)]
struct WakeOnly(MemoryLock);

#[async_trait]
impl LockBackend for WakeOnly {
    type Key = String;
    type Lease = MemoryLease;

    fn kind(&self) -> &'static str {
        "wake-only"
    }

    fn max_ttl(&self) -> Duration {
        self.0.max_ttl()
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            initial: Duration::from_secs(3600),
            max: Duration::from_secs(3600),
        }
    }

    fn key(&self, name: &str) -> Result<String, LockError> {
        Ok(name.to_owned())
    }

    async fn try_lock(
        &self,
        name: &String,
        ttl: Duration,
        ctx: &AttemptContext,
    ) -> Result<Attempt<Self::Lease>, LockError> {
        self.0.try_lock(name, ttl, ctx).await
    }

    async fn subscribe(&self, name: &String, ctx: &AttemptContext) -> Option<Wakeup> {
        self.0.subscribe(name, ctx).await
    }
}

const TTL: Duration = Duration::from_secs(3600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_waiter_gets_its_turn_while_others_give_up() {
    let locks = WakeOnly::default();
    let turns = Arc::new(AtomicUsize::new(0));
    // Workers take the lock 20 times each and must all finish.
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (locks, turns) = (locks.clone(), turns.clone());
            tokio::spawn(async move {
                for _ in 0..20 {
                    let guard = locks
                        .acquire("queue", TTL, Duration::from_secs(60))
                        .await
                        .expect("a turn within the wait");
                    turns.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    guard.release().await.expect("release");
                }
            })
        })
        .collect();
    // Meanwhile others join the queue and leave it: by a short wait, or by
    // being cancelled, at every position in line.
    let leavers: Vec<_> = (0..8)
        .map(|i| {
            let locks = locks.clone();
            tokio::spawn(async move {
                for round in 0..30u64 {
                    let wait = Duration::from_micros(200 * ((round + i) % 7));
                    match tokio::time::timeout(
                        wait,
                        locks.acquire("queue", TTL, Duration::from_secs(60)),
                    )
                    .await
                    {
                        Ok(Ok(guard)) => guard.release().await.expect("release"),
                        Ok(Err(err)) => panic!("{err}"),
                        Err(_) => {} // cancelled while waiting
                    }
                    let _ = locks
                        .acquire("queue", TTL, Duration::from_micros(300))
                        .await;
                }
            })
        })
        .collect();
    let all = async {
        for task in workers.into_iter().chain(leavers) {
            task.await.expect("task");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("a wake-up was lost: some waiter was never woken");
    assert!(turns.load(Ordering::Relaxed) >= 8 * 20);
    // Guards dropped by cancelled acquires are released in the background.
    tokio::time::timeout(Duration::from_secs(10), async {
        while locks.0.held() > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every lock is released");
}
