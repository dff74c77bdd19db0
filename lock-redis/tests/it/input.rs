//! Odd names, bad URLs, bad options and secrets: typed errors, no injection.

use std::time::Duration;

use distlock_api::{DistributedLock, LockError};
use distlock_redis::{RedisLock, redis};
use distlock_testkit::{RedisOptions, RedisServer};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test]
async fn special_characters_are_just_names() {
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::connect(&url).await.expect("connect");
    let mut raw = locks.connection().await.expect("a connection of our own");
    let sentinel = format!("sentinel:{}", rand_suffix());
    let _: () = redis::cmd("SET")
        .arg(&sentinel)
        .arg("kept")
        .query_async(&mut raw)
        .await
        .expect("set");

    let names = [
        "*",
        "{}",
        "}",
        "{",
        "a}b{c",
        "%7D",
        "\n",
        "\r\n*1\r\n$8\r\nFLUSHALL\r\n",
        "'\"",
        "\"]] redis.call('FLUSHALL') --[[",
        "') redis.call('FLUSHALL') --",
        "x:fence",
        " ",
        "\u{0}",
    ];
    let suffix = rand_suffix();
    let mut guards = Vec::new();
    for name in names {
        let name = format!("{name}{suffix}");
        let guard = locks
            .try_acquire(&name, TTL)
            .await
            .unwrap_or_else(|err| panic!("{name:?}: {err}"))
            .unwrap_or_else(|| panic!("{name:?} was held already: names collide"));
        guards.push(guard);
    }
    // Every name is held, and only by itself.
    for name in names {
        let name = format!("{name}{suffix}");
        assert!(
            locks.try_acquire(&name, TTL).await.expect("try").is_none(),
            "{name:?}"
        );
    }
    let exists: bool = redis::cmd("EXISTS")
        .arg(&sentinel)
        .query_async(&mut raw)
        .await
        .expect("exists");
    assert!(exists, "a name was executed as a command or script");
    for guard in guards {
        guard.release().await.expect("release");
    }
    for name in names {
        let name = format!("{name}{suffix}");
        let again = locks
            .try_acquire(&name, TTL)
            .await
            .expect("try")
            .expect("free after release");
        again.release().await.expect("release");
    }
}

#[tokio::test]
async fn the_lock_and_its_counter_share_a_cluster_slot() {
    // KEYSLOT needs cluster mode; an unconfigured cluster node still
    // answers it (and with one node serving no slots, locks are not taken
    // here: the slot is computed, the keys are read from the plain server).
    let cluster_node =
        RedisServer::start_with(RedisOptions::new().config("cluster-enabled", "yes"))
            .expect("redis-server in cluster mode");
    let url = distlock_testkit::redis_url().expect("redis");
    let locks = RedisLock::connect(&url).await.expect("connect");
    let mut raw = locks.connection().await.expect("a connection of our own");
    let node = redis::Client::open(cluster_node.url()).expect("url");
    let mut node = node
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the cluster node");
    let guard = locks
        .try_acquire("slot}{test", TTL)
        .await
        .expect("try")
        .expect("free");
    let slot = |key: &'static str| redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).clone();
    let lock_slot: i64 = slot("distlock:{slot%7D{test}")
        .query_async(&mut node)
        .await
        .expect("keyslot");
    let fence_slot: i64 = slot("distlock:{slot%7D{test}:fence")
        .query_async(&mut node)
        .await
        .expect("keyslot");
    assert_eq!(lock_slot, fence_slot);
    let held: String = redis::cmd("GET")
        .arg("distlock:{slot%7D{test}")
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(held.len(), 32, "a 128-bit token in hex");
    let fence: u64 = redis::cmd("GET")
        .arg("distlock:{slot%7D{test}:fence")
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(fence, guard.fencing_token());
    guard.release().await.expect("release");
}

#[tokio::test]
async fn prefixes_separate_lock_spaces() {
    let url = distlock_testkit::redis_url().expect("redis");
    let app_a = RedisLock::options()
        .prefix("app-a:")
        .connect(&url)
        .await
        .expect("connect");
    let app_b = RedisLock::options()
        .prefix("app-b:")
        .connect(&url)
        .await
        .expect("connect");
    assert_eq!(app_a.prefix(), "app-a:");
    let a = app_a
        .try_acquire("shared-name", TTL)
        .await
        .expect("try")
        .expect("free");
    let b = app_b
        .try_acquire("shared-name", TTL)
        .await
        .expect("try")
        .expect("another prefix, another lock");
    a.release().await.expect("release");
    b.release().await.expect("release");
}

#[tokio::test]
async fn bad_urls_and_options_are_typed_errors() {
    for url in [
        "",
        "localhost:6379",
        "http://localhost",
        "postgres://localhost/db",
        "redis://[::1",
    ] {
        let err = RedisLock::connect(url).await.expect_err(url);
        assert!(matches!(err, LockError::InvalidUrl(_)), "{url:?}: {err:?}");
    }
    let url = distlock_testkit::redis_url().expect("redis");
    let err = RedisLock::options()
        .prefix("{app}:")
        .connect(&url)
        .await
        .expect_err("brace");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    let err = RedisLock::options()
        .connect_timeout(Duration::ZERO)
        .connect(&url)
        .await
        .expect_err("zero");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
}

#[tokio::test]
async fn passwords_never_show() {
    let secret = "s3cret-pa55";
    let server = RedisServer::start_with(RedisOptions::new().config("requirepass", secret))
        .expect("redis-server");
    let good = format!("redis://:{secret}@127.0.0.1:{}/0", server.port());
    let locks = RedisLock::connect(&good)
        .await
        .expect("the right password connects");
    let shown = format!("{locks:?}");
    assert!(!shown.contains(secret), "{shown}");
    assert!(shown.contains(":***@"), "{shown}");
    let guard = locks
        .acquire("secret", TTL, Duration::ZERO)
        .await
        .expect("acquire");
    guard.release().await.expect("release");

    let wrong = format!("redis://:not-{secret}@127.0.0.1:{}/0", server.port());
    let err = RedisLock::connect(&wrong)
        .await
        .expect_err("wrong password");
    assert!(!err.to_string().contains(secret), "{err}");
    assert!(!format!("{err:?}").contains(secret), "{err:?}");
    assert!(
        !err.is_retryable(),
        "wrong credentials are not worth retrying: {err:?}"
    );

    let garbage = format!("redis://:{secret}@127.0.0.1:notaport/0");
    let err = RedisLock::connect(&garbage).await.expect_err("bad port");
    assert!(matches!(err, LockError::InvalidUrl(_)), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(secret), "{err:?}");
}

#[tokio::test]
async fn db_numbers_separate_lock_spaces() {
    let server = RedisServer::start().expect("redis-server");
    let db1 = RedisLock::connect(&format!("{}1", base(&server)))
        .await
        .expect("db 1");
    let db2 = RedisLock::connect(&format!("{}2", base(&server)))
        .await
        .expect("db 2");
    let a = db1
        .try_acquire("db", TTL)
        .await
        .expect("try")
        .expect("free");
    let b = db2
        .try_acquire("db", TTL)
        .await
        .expect("try")
        .expect("another db, another lock");
    a.release().await.expect("release");
    b.release().await.expect("release");
}

fn base(server: &RedisServer) -> String {
    format!("redis://127.0.0.1:{}/", server.port())
}

fn rand_suffix() -> String {
    format!(
        "-{:x}",
        std::process::id() as u64
            ^ u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            )
    )
}

/// A user's `SELECT` on the connection `RedisLock::connection` gives them
/// must not move the locks to another database: a second client on the
/// lock's own database must still find the lock held (checked by the
/// history checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_on_the_user_connection_leaves_the_locks_where_they_are() {
    let server = RedisServer::start().expect("a server of our own");
    let url = format!("{}/0", server.url().trim_end_matches('/'));
    let locks = RedisLock::options()
        .wake_on_release(false)
        .connect(&url)
        .await
        .expect("connect");
    let other = RedisLock::options()
        .wake_on_release(false)
        .connect(&url)
        .await
        .expect("connect a second client");
    let mut raw = locks.connection().await.expect("a connection of our own");
    let () = redis::cmd("SELECT")
        .arg(5)
        .query_async(&mut raw)
        .await
        .expect("SELECT 5");
    let history = distlock_testkit::History::new();
    let name = "select:moved";
    let first = history
        .try_acquire(0, &locks, name, TTL)
        .await
        .expect("try")
        .expect("free");
    let second = history.try_acquire(1, &other, name, TTL).await;
    if let Ok(Some(second)) = second {
        second.release().await.expect("release the second");
    }
    first.release().await.expect("release the first");
    // The lock key went to database 0, where the URL points, and the
    // user's connection really is on database 5.
    let mut direct = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("direct connection");
    let moved: i64 = redis::cmd("EXISTS")
        .arg("distlock:{select:moved}:fence")
        .query_async(&mut direct)
        .await
        .expect("EXISTS");
    let user_db: i64 = redis::cmd("EXISTS")
        .arg("distlock:{select:moved}:fence")
        .query_async(&mut raw)
        .await
        .expect("EXISTS");
    history.check().assert_ok();
    assert_eq!(
        (moved, user_db),
        (1, 0),
        "the counter is in database 0 only"
    );
}

/// A server whose `maxmemory-policy` can evict keys is refused at connect
/// (`volatile-*` may evict a held lock, `allkeys-*` a fencing counter too),
/// also for a user who may not run `CONFIG`, and so is one whose policy
/// cannot be read at all (`INFO` refused too); `accept_eviction_policy(true)`
/// connects anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicting_memory_policy_is_refused_at_connect() {
    let server = RedisServer::start().expect("a server of our own");
    let mut admin = redis::Client::open(server.url())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("admin connection");
    for (user, rules) in [("nocfg", "-config"), ("locker", "-config -info")] {
        let () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("on")
            .arg(">s3cret")
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .arg(rules.split(' ').collect::<Vec<_>>())
            .query_async(&mut admin)
            .await
            .expect("ACL SETUSER");
    }
    let no_config = format!("redis://nocfg:s3cret@127.0.0.1:{}/", server.port());
    for (policy, url) in [
        ("allkeys-lru", server.url()),
        ("volatile-lru", server.url()),
        ("volatile-ttl", no_config),
    ] {
        let () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg("100mb")
            .arg("maxmemory-policy")
            .arg(policy)
            .query_async(&mut admin)
            .await
            .expect("CONFIG SET");
        let err = RedisLock::connect(&url).await.expect_err(policy);
        assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
        assert!(err.to_string().contains(policy), "{err}");
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let locks = RedisLock::options()
            .accept_eviction_policy(true)
            .connect(&url)
            .await
            .expect("accepted when asked to");
        let guard = locks
            .try_acquire("evictable", TTL)
            .await
            .expect("try")
            .expect("free");
        guard.release().await.expect("released");
    }

    // A user who may run neither INFO nor CONFIG: the policy is unknown.
    let url = format!("redis://locker:s3cret@127.0.0.1:{}/", server.port());
    let err = RedisLock::connect(&url).await.expect_err("unknown policy");
    assert!(matches!(err, LockError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    let locks = RedisLock::options()
        .accept_eviction_policy(true)
        .connect(&url)
        .await
        .expect("accepted when asked to");
    let guard = locks
        .try_acquire("unknown-policy", TTL)
        .await
        .expect("try")
        .expect("free");
    guard.release().await.expect("released");

    // And noeviction is fine.
    let () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query_async(&mut admin)
        .await
        .expect("CONFIG SET");
    RedisLock::connect(&server.url())
        .await
        .expect("noeviction is accepted");
}
