//! Waiters are woken by a release (published by the server), not by polling.

use std::time::Duration;

use distlock_api::{Backoff, DistributedLock, LockError};
use distlock_redis::RedisLock;
use distlock_testkit::RedisServer;

const TTL: Duration = Duration::from_secs(30);

/// A backoff so slow that a waiter which gets the lock within the test's
/// wait can only have been woken.
fn no_polling() -> Backoff {
    Backoff {
        initial: Duration::from_secs(3600),
        max: Duration::from_secs(3600),
    }
}

/// A holder's client and a waiter's client that never polls.
async fn holder_and_waiter(url: &str) -> (RedisLock, RedisLock) {
    let holder = RedisLock::connect(url).await.expect("connect");
    let waiter = RedisLock::options()
        .backoff(no_polling())
        .connect(url)
        .await
        .expect("connect");
    (holder, waiter)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_on_another_client_wakes_the_waiter() {
    let url = distlock_testkit::redis_url().expect("redis");
    let (holder, waiter) = holder_and_waiter(&url).await;
    let guard = holder
        .acquire("wake", TTL, Duration::ZERO)
        .await
        .expect("free");
    let token = guard.fencing_token();
    let waiting =
        tokio::spawn(async move { waiter.acquire("wake", TTL, Duration::from_secs(10)).await });
    // Let the waiter make its first (failing) attempt; the wake-up is
    // registered before it, so releasing early would be fine too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await.expect("release");
    let next = waiting
        .await
        .expect("join")
        .expect("woken by the release, long before any backoff");
    assert!(next.fencing_token() > token);
    next.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_is_noticed_without_a_wakeup() {
    let url = distlock_testkit::redis_url().expect("redis");
    let (holder, waiter) = holder_and_waiter(&url).await;
    let guard = holder
        .acquire("expire", Duration::from_millis(300), Duration::ZERO)
        .await
        .expect("free");
    // The waiter sleeps at most the holder's remaining TTL.
    let next = waiter
        .acquire("expire", TTL, Duration::from_secs(10))
        .await
        .expect("taken after the holder's TTL ran out");
    assert!(
        guard.is_lost()
            || guard.remaining() == Duration::ZERO
            || next.fencing_token() > guard.fencing_token()
    );
    next.release().await.expect("release");
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_after_the_subscriber_reconnects() {
    let mut server = RedisServer::start().expect("redis-server");
    let (holder, waiter) = holder_and_waiter(&server.url()).await;
    server.restart().expect("restart");
    // After the restart the subscriber resubscribes and wakes every waiter;
    // from then on releases wake waiters again.
    let guard = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match holder.acquire("resubscribe", TTL, Duration::ZERO).await {
                Ok(guard) => break guard,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the holder reconnects");
    // The waiter's command connection reconnects too (its first command
    // after the restart meets the dead socket, and with this backoff a
    // failed attempt would not be retried within the test).
    tokio::time::timeout(Duration::from_secs(10), async {
        while waiter.try_acquire("probe", TTL).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the waiter reconnects");
    let waiting = tokio::spawn(async move {
        waiter
            .acquire("resubscribe", TTL, Duration::from_secs(20))
            .await
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    guard.release().await.expect("release");
    let next = waiting
        .await
        .expect("join")
        .expect("woken after the subscriber came back");
    next.release().await.expect("release");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wakeups_waiting_falls_back_to_backoff() {
    let url = distlock_testkit::redis_url().expect("redis");
    let holder = RedisLock::options()
        .wake_on_release(false)
        .connect(&url)
        .await
        .expect("connect");
    let waiter = RedisLock::options()
        .wake_on_release(false)
        .connect(&url)
        .await
        .expect("connect");
    let guard = holder
        .acquire("no-wake", TTL, Duration::ZERO)
        .await
        .expect("free");
    let waiting = tokio::spawn(async move {
        waiter
            .acquire("no-wake", TTL, Duration::from_secs(10))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await.expect("release");
    let next = waiting.await.expect("join").expect("found free by polling");
    next.release().await.expect("release");
}

/// A release publishes only when someone waited for the lock: not when
/// nobody asked for it, and not when someone only tried (`try_acquire`
/// does not wait, so its failure leaves no mark); a waiting `acquire` that
/// found it held does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_release_someone_waited_for_is_published() {
    use futures::StreamExt;
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::connect(&url).await.expect("connect");
    let client = distlock_redis::redis::Client::open(url.as_str()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub
        .subscribe("distlock:released")
        .await
        .expect("subscribe");
    let mut messages = pubsub.into_on_message();
    let suffix = format!("{:x}", rand::random::<u64>());
    let (quiet, tried, waited) = (
        format!("quiet-{suffix}"),
        format!("tried-{suffix}"),
        format!("waited-{suffix}"),
    );

    let guard = locks
        .acquire(&quiet, TTL, Duration::ZERO)
        .await
        .expect("free");
    guard.release().await.expect("release");

    let guard = locks
        .acquire(&tried, TTL, Duration::ZERO)
        .await
        .expect("free");
    assert!(locks.try_acquire(&tried, TTL).await.expect("try").is_none());
    guard.release().await.expect("release");

    let guard = locks
        .acquire(&waited, TTL, Duration::ZERO)
        .await
        .expect("free");
    assert!(matches!(
        locks.acquire(&waited, TTL, Duration::from_millis(50)).await,
        Err(LockError::Timeout)
    ));
    guard.release().await.expect("release");

    // Messages carry the lock key, and arrive in publish order: a publish
    // for the earlier releases would come before the waited-for one's.
    let key = |name: &str| format!("distlock:{{{name}}}");
    let (quiet, tried, waited) = (key(&quiet), key(&tried), key(&waited));
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(message) = messages.next().await {
            let name = String::from_utf8_lossy(message.get_payload_bytes()).into_owned();
            assert_ne!(name, quiet, "an uncontended release was published");
            assert_ne!(name, tried, "a release only tried for was published");
            if name == waited {
                return;
            }
        }
        panic!("the subscription ended");
    })
    .await
    .expect("the waited-for release is published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wakeups_work_in_any_database() {
    let server = RedisServer::start().expect("redis-server");
    let url = format!("redis://127.0.0.1:{}/3", server.port());
    let (holder, waiter) = holder_and_waiter(&url).await;
    let guard = holder
        .acquire("db-wake", TTL, Duration::ZERO)
        .await
        .expect("free");
    let waiting = tokio::spawn(async move {
        waiter
            .acquire("db-wake", TTL, Duration::from_secs(10))
            .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    guard.release().await.expect("release");
    let next = waiting
        .await
        .expect("join")
        .expect("woken by the release in database 3");
    next.release().await.expect("release");
}
