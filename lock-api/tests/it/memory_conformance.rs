//! The conformance suite on `MemoryLock`, the reference backend: two clones
//! are two clients of one server.
#![cfg(feature = "conformance")]

use std::sync::Arc;

use distlock_api::MemoryLock;
use distlock_api::conformance::{self, Config, Fixture};

async fn memory() -> Fixture {
    let locks = MemoryLock::new();
    Fixture::new(Arc::new(locks.clone()), Arc::new(locks))
}

distlock_api::conformance_tests!(memory);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_all_passes_on_memory() {
    let locks = MemoryLock::new();
    let other = locks.clone();
    conformance::run_all(&locks, &other, &Config::default()).await;
    assert_eq!(locks.held(), 0, "the suite must leave no lock held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_lock_reports_lost_lock_on_memory() {
    let locks = MemoryLock::new();
    let other = locks.clone();
    let server = locks.clone();
    conformance::with_lock_reports_lost_lock(
        &locks,
        &other,
        &Config::default(),
        |name| async move {
            assert!(
                server.expire_now(&name),
                "the lock is held while with_lock's closure runs"
            );
        },
    )
    .await;
    assert_eq!(locks.held(), 0, "the check must leave no lock held");
}
