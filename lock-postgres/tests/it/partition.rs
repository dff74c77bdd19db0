//! A holder cut off by a real network partition (iptables drops its
//! packets in the kernel, so nobody answers the server's keepalive probes):
//! the server must keep its session, and so the lock, at least as long as
//! the holder's guard says it is valid — whatever TCP timers the
//! connection carries (keepalives, `tcp_user_timeout`), which would
//! otherwise end an idle session long before the TTL.
//!
//! Needs root and iptables (distlock-testkit's `Partition`); fails without.

use crate::common;

use std::time::{Duration, Instant};

use common::{app_name, database_url, observer, within};
use distlock_postgres::{PgAdvisoryLock, PgLockOptions, TcpKeepalives};
use distlock_testkit::{AliasPort, History, Outcome, Partition};

/// How late the server may free the lock after the TTL on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// The TTL of the fast cases.
const TTL: Duration = Duration::from_secs(8);

/// Fast TCP timers: keepalives would give up on a silent client after
/// about 1 + 2 × 1 s, a long way inside the TTL.
fn fast_keepalives() -> TcpKeepalives {
    TcpKeepalives {
        idle: Duration::from_secs(1),
        interval: Duration::from_secs(1),
        count: 2,
    }
}

/// The shared test server's port and the database of `url`.
fn port_and_database(url: &str) -> (u16, String) {
    let rest = url.split_once('@').expect("user@host").1;
    let (addr, database) = rest.split_once('/').expect("host/db");
    let port = addr
        .rsplit_once(':')
        .expect("host:port")
        .1
        .parse()
        .expect("a port");
    (port, database.to_owned())
}

/// Bytes the server has sent on its connection to `client_port` that the
/// client has not acknowledged (`tx_queue` in `/proc/net/tcp`).
fn unacknowledged_bytes(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| {
                let tx_queue = fields.get(4)?.split(':').next()?;
                u64::from_str_radix(tx_queue, 16).ok()
            })
            .flatten()
    })
}

/// Takes a lock through `holder_url` (an alias port), partitions the
/// holder, and lets another client wait for the lock; the history must
/// show no overlap between the holder's validity and the next grant.
async fn partitioned_holder_keeps_its_lease(
    test: &str,
    ttl: Duration,
    options: PgLockOptions,
    query: &str,
) {
    partitioned_holder_keeps_its_extended_lease(test, ttl, ttl, options, query).await;
}

/// As [`partitioned_holder_keeps_its_lease`], with the lock taken for
/// `first_ttl` and extended to `ttl` before the partition.
async fn partitioned_holder_keeps_its_extended_lease(
    test: &str,
    first_ttl: Duration,
    ttl: Duration,
    options: PgLockOptions,
    query: &str,
) {
    let url = database_url().await;
    let (port, database) = port_and_database(&url);
    let alias = tokio::task::spawn_blocking(move || AliasPort::new(port))
        .await
        .expect("task")
        .expect("an alias port (needs root and iptables)");
    let holder_url = format!(
        "postgres://postgres@127.0.0.1:{}/{database}{query}",
        alias.port()
    );
    let app = app_name(test);
    let holder = options
        .application_name(&app)
        .connect(&holder_url)
        .await
        .expect("connect through the alias");
    let other = PgAdvisoryLock::connect(&url)
        .await
        .expect("connect directly");
    let mut outside = observer(&url).await;
    let name = common::name(test);
    let history = History::new();

    let mut held = history
        .acquire(0, &holder, &name, first_ttl, Duration::ZERO)
        .await
        .expect("free");
    if first_ttl != ttl {
        held.guard_mut().extend(ttl).await.expect("extend");
    }
    let holder_pid = common::holder_pid(&mut outside, holder.key(&name))
        .await
        .expect("held");
    // Partition an idle session: once the holder's kernel has acknowledged
    // everything the server sent, only the server's keepalives (and the
    // TTL) can end it.
    let client_port: i32 = distlock_postgres::sqlx::query_scalar(
        "SELECT client_port FROM pg_stat_activity WHERE pid = $1",
    )
    .bind(holder_pid)
    .fetch_one(&mut outside)
    .await
    .expect("the holder's port");
    let client_port = u16::try_from(client_port).expect("a TCP client");
    common::eventually(SLACK, "the holder acknowledges the grant", || async {
        unacknowledged_bytes(port, client_port) == Some(0)
    })
    .await;
    let partition = Partition::isolate(&alias).expect("partition the holder");
    let cut = Instant::now();

    // Another client waits for the lock: the server frees it once the
    // holder's session ends.
    let next = within(
        ttl + SLACK * 2,
        "the next acquire",
        history.acquire(1, &other, &name, ttl, ttl + SLACK),
    )
    .await;
    let granted_after = cut.elapsed();
    let holder_still_valid = held
        .guard()
        .valid_until()
        .saturating_duration_since(tokio::time::Instant::now());
    eprintln!(
        "{test}: next client granted {granted_after:?} into the partition; the holder's \
         guard was still valid for {holder_still_valid:?} (holder session {holder_pid})"
    );
    let next = next.expect("the server frees a partitioned holder's lock after its TTL");

    partition.heal().expect("heal");
    // The holder learns of the loss: its session is gone.
    let released = within(SLACK * 3, "the holder's release", held.release()).await;
    assert_eq!(
        Outcome::of_release(&released),
        Outcome::Failed,
        "{released:?}"
    );
    next.release().await.expect("the next holder's lock");

    let report = history.check();
    eprintln!("{test}: {}", report.summary());
    report.assert_ok();
    assert!(
        granted_after >= ttl - Duration::from_millis(500),
        "freed after {granted_after:?}, before the TTL of {ttl:?}"
    );
}

/// The client's own keepalive option (sent at connect) is short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_keepalives_do_not_free_a_partitioned_holders_lock_early() {
    partitioned_holder_keeps_its_lease(
        "keepalives",
        TTL,
        PgLockOptions::new().tcp_keepalives(Some(fast_keepalives())),
        "",
    )
    .await;
}

/// The session's TCP timers come from elsewhere (here the URL; in
/// production `postgresql.conf`): keepalives and a short `tcp_user_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_tcp_timers_do_not_free_a_partitioned_holders_lock_early() {
    partitioned_holder_keeps_its_lease(
        "tcp-timers",
        TTL,
        PgLockOptions::new().tcp_keepalives(None),
        "?options=-c%20tcp_keepalives_idle%3D1%20-c%20tcp_keepalives_interval%3D1\
         %20-c%20tcp_keepalives_count%3D2%20-c%20tcp_user_timeout%3D1500",
    )
    .await;
}

/// The TCP timers follow the TTL of the last extend, not the first grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_lease_outlasts_short_keepalives_too() {
    partitioned_holder_keeps_its_extended_lease(
        "extended",
        Duration::from_millis(1500),
        TTL,
        PgLockOptions::new().tcp_keepalives(Some(fast_keepalives())),
        "",
    )
    .await;
}

/// The defaults (keepalives 10 s + 3 × 5 s from `PgLockOptions`) and a TTL
/// longer than those 25 s: the case as users meet it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_keepalives_do_not_free_a_partitioned_holders_lock_early() {
    partitioned_holder_keeps_its_lease(
        "defaults",
        Duration::from_secs(30),
        PgLockOptions::new(),
        "",
    )
    .await;
}
