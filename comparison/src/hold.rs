//! Section 3: what holding K locks costs each server, and how many each
//! holds at once before it fails.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use distlock::{DistributedLock, LockGuard};
use distlock_postgres::PgLockOptions;
use distlock_redis::RedisLock;
use distlock_testkit::{PgServer, RedisServer};
use futures::{StreamExt, TryStreamExt, stream};
use sqlx::postgres::{PgConnection, PgDatabaseError};
use sqlx::{Connection, Executor};

use crate::booking;
use crate::cyclers::{POSTGRES, REDIS};
use crate::report;
use crate::results::{CapacityResult, HoldResult, Probe, Results};
use crate::system::{memory_of, pin_server, redis_info};

/// Long enough to outlast any measurement.
const HOLD_TTL: Duration = Duration::from_secs(3600);

async fn info_conn(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Takes `count` locks named `prefix:<n>` through one client, `parallel`
/// attempts at a time.
async fn take_many(
    locks: &dyn DistributedLock,
    prefix: &str,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<LockGuard>> {
    stream::iter(0..count)
        .map(|n| async move {
            locks
                .try_acquire(&format!("{prefix}:{n}"), HOLD_TTL)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{prefix}:{n} was held"))
        })
        .buffer_unordered(parallel)
        .try_collect()
        .await
}

async fn release_many(guards: Vec<LockGuard>, parallel: usize) -> anyhow::Result<()> {
    stream::iter(guards)
        .map(|guard| guard.release())
        .buffer_unordered(parallel)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Acquires in flight while K Redis locks are taken (as in the capacity run).
const REDIS_IN_FLIGHT: usize = 256;

/// K locks held through one [`RedisLock`] (up to 256 acquires in flight):
/// `used_memory` growth and the server's connections.
pub async fn redis_hold(server: &RedisServer, k: usize) -> anyhow::Result<HoldResult> {
    let url = server.url();
    let locks = RedisLock::connect(&url).await?;
    let mut info = info_conn(&url).await?;
    let before = redis_info(&mut info, "used_memory").await?;
    let started = Instant::now();
    let guards = take_many(&locks, &format!("hold:{k}"), k, REDIS_IN_FLIGHT).await?;
    let acquire_secs = started.elapsed().as_secs_f64();
    let after = redis_info(&mut info, "used_memory").await?;
    // Our INFO connection is not the lock's.
    let clients = redis_info(&mut info, "connected_clients").await? - 1;
    let held = guards.len();
    release_many(guards, REDIS_IN_FLIGHT).await?;
    Ok(HoldResult {
        backend: REDIS.to_owned(),
        requested: k,
        held,
        acquire_secs,
        server_connections: clients.max(0) as u64,
        memory_bytes: after - before,
        private_bytes: None,
        bytes_per_lock: (after - before) as f64 / held.max(1) as f64,
        error: None,
    })
}

/// K locks held through one [`distlock_postgres::PgAdvisoryLock`] (a pool of
/// K + 10 connections): the client backends it adds (one per held lock; its
/// LISTEN connection opens only for a waiter) and their memory growth.
pub async fn pg_hold(server: &PgServer, url: &str, k: usize) -> anyhow::Result<HoldResult> {
    // The baseline is taken before the client exists.
    let mut probe = PgConnection::connect(url).await?;
    let before = memory_of(&server.child_pids());
    let backends_before = client_backends(&mut probe).await?;
    let locks = PgLockOptions::new()
        .max_connections(k as u32 + 10)
        .pool_timeout(Duration::from_secs(3))
        .connect(url)
        .await?;
    let started = Instant::now();
    let mut guards = Vec::with_capacity(k);
    let mut error = None;
    for n in 0..k {
        match locks.try_acquire(&format!("hold:{k}:{n}"), HOLD_TTL).await {
            Ok(Some(guard)) => guards.push(guard),
            Ok(None) => anyhow::bail!("hold:{k}:{n} was held"),
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let acquire_secs = started.elapsed().as_secs_f64();
    let after = memory_of(&server.child_pids());
    let backends = client_backends(&mut probe).await?;
    let held = guards.len();
    release_many(guards, 16).await?;
    drop(locks);
    Ok(HoldResult {
        backend: POSTGRES.to_owned(),
        requested: k,
        held,
        acquire_secs,
        server_connections: (backends - backends_before).max(0) as u64,
        memory_bytes: after.rss - before.rss,
        private_bytes: Some(after.private - before.private),
        bytes_per_lock: (after.rss - before.rss) as f64 / held.max(1) as f64,
        error,
    })
}

async fn client_backends(conn: &mut PgConnection) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'",
    )
    .fetch_one(conn)
    .await?)
}

/// The exact text of an error, with PostgreSQL's SQLSTATE and hint.
fn describe(error: &anyhow::Error) -> String {
    if let Some(sqlx::Error::Database(db)) = error.downcast_ref::<sqlx::Error>()
        && let Some(pg) = db.try_downcast_ref::<PgDatabaseError>()
    {
        let mut text = format!("ERROR {}: {}", pg.code(), pg.message());
        if let Some(hint) = pg.hint() {
            text.push_str(&format!(" (HINT: {hint})"));
        }
        return text;
    }
    format!("{error:#}")
}

fn outcome<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => "ok".to_owned(),
        Err(e) => describe(&e),
    }
}

/// distlock's PostgreSQL backend holds one lock per connection: take locks
/// until the server refuses, then see what a new client and an ordinary
/// transaction on an open connection get.
pub async fn pg_capacity_distlock(server: &PgServer, url: &str) -> anyhow::Result<CapacityResult> {
    let mut other = PgConnection::connect(url).await?;
    booking::prepare(&mut other, 1000).await?;
    let before = memory_of(&server.child_pids());
    let locks = PgLockOptions::new()
        .max_connections(10_000)
        .pool_timeout(Duration::from_secs(3))
        .connect_timeout(Duration::from_secs(3))
        .connect(url)
        .await?;
    let started = Instant::now();
    let mut guards = Vec::new();
    let error = loop {
        match locks
            .try_acquire(&format!("cap:{}", guards.len()), HOLD_TTL)
            .await
        {
            Ok(Some(guard)) => guards.push(guard),
            Ok(None) => anyhow::bail!("cap:{} was held", guards.len()),
            Err(e) => break e.to_string(),
        }
        if guards.len() > 100_000 {
            anyhow::bail!("no limit after 100,000 locks");
        }
    };
    let acquire_secs = started.elapsed().as_secs_f64();
    let after = memory_of(&server.child_pids());
    let probes = vec![
        Probe {
            what: "a new connection from another client".to_owned(),
            outcome: outcome(PgConnection::connect(url).await.map_err(Into::into)),
        },
        Probe {
            what: "the booking transaction on a connection opened before".to_owned(),
            outcome: outcome(booking::book(&mut other, 1, i64::MAX / 2, "probe").await),
        },
    ];
    let held = guards.len();
    let started = Instant::now();
    release_many(guards, 16).await?;
    let release_secs = started.elapsed().as_secs_f64();
    Ok(CapacityResult {
        backend: POSTGRES.to_owned(),
        how: "distlock PgAdvisoryLock (one connection per held lock), server max_connections = 100 (one of them is the other client's open connection)"
            .to_owned(),
        held,
        acquire_secs,
        release_secs: Some(release_secs),
        bytes_per_lock: Some((after.rss - before.rss) as f64 / held.max(1) as f64),
        error: Some(error),
        probes,
    })
}

/// The shared lock table: one raw session takes advisory locks one by one
/// (`pg_try_advisory_lock`) until PostgreSQL runs out of lock table space,
/// then other clients try ordinary work.
pub async fn pg_capacity_lock_table(url: &str) -> anyhow::Result<CapacityResult> {
    let mut other = PgConnection::connect(url).await?;
    booking::prepare(&mut other, 1000).await?;
    let mut session = PgConnection::connect(url).await?;
    let started = Instant::now();
    // Batches of 256 keys; a batch that fails keeps the locks it got
    // (session-level advisory locks ignore the rollback), so the count at
    // the end comes from pg_locks.
    let mut next = 1_i64;
    let error = loop {
        let result: Result<i64, sqlx::Error> = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_try_advisory_lock(k)) FROM generate_series($1::bigint, $2::bigint) k",
        )
        .bind(next)
        .bind(next + 255)
        .fetch_one(&mut session)
        .await;
        match result {
            Ok(256) => next += 256,
            Ok(n) => anyhow::bail!("{} of keys {next}..{} were held", 256 - n, next + 255),
            Err(e) => break describe(&e.into()),
        }
        if next > 10_000_000 {
            anyhow::bail!("no limit after 10,000,000 locks");
        }
    };
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    .fetch_one(&mut session)
    .await
    .context("count the advisory locks held")?;
    let held = held as usize;
    let acquire_secs = started.elapsed().as_secs_f64();
    let mut probes = vec![
        Probe {
            what: "the booking transaction (UPDATE tickets + INSERT ticket_log) on another client's open connection"
                .to_owned(),
            outcome: outcome(booking::book(&mut other, 1, i64::MAX / 2, "probe").await),
        },
        Probe {
            what: "SELECT count(*) FROM tickets on another client's open connection".to_owned(),
            outcome: outcome(
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tickets")
                    .fetch_one(&mut other)
                    .await
                    .map_err(Into::into),
            ),
        },
        Probe {
            what: "CREATE TEMP TABLE on another client's open connection".to_owned(),
            outcome: outcome(
                other
                    .execute("CREATE TEMP TABLE probe (x int)")
                    .await
                    .map_err(Into::into),
            ),
        },
    ];
    let fresh = async {
        let mut conn = PgConnection::connect(url).await?;
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM tickets")
            .fetch_one(&mut conn)
            .await?;
        anyhow::Ok(())
    }
    .await;
    probes.push(Probe {
        what: "a new connection from another client, then SELECT count(*) FROM tickets".to_owned(),
        outcome: outcome(fresh),
    });
    // Ending the session frees its locks; the backend does that after the
    // client has gone, so retry the booking until it goes through.
    let started = Instant::now();
    session.close().await?;
    let mut fence = i64::MAX / 2;
    let after = loop {
        fence += 1;
        match booking::book(&mut other, 2, fence, "probe").await {
            Ok(_) => {
                break format!(
                    "ok, {} ms after the session was closed",
                    started.elapsed().as_millis()
                );
            }
            Err(e) if started.elapsed() > Duration::from_secs(10) => break describe(&e),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let release_secs = started.elapsed().as_secs_f64();
    probes.push(Probe {
        what: "the booking transaction again, after the session holding the locks was closed"
            .to_owned(),
        outcome: after,
    });
    Ok(CapacityResult {
        backend: POSTGRES.to_owned(),
        how: "one raw sqlx session, pg_try_advisory_lock over generate_series in batches of 256; server defaults (max_connections 100, max_locks_per_transaction 64)"
            .to_owned(),
        held,
        acquire_secs,
        release_secs: Some(release_secs),
        bytes_per_lock: None,
        error: Some(error),
        probes,
    })
}

/// `count` locks through one [`RedisLock`] (one connection for commands),
/// 256 attempts in flight: time, `used_memory` per lock, then the release.
pub async fn redis_capacity(server: &RedisServer, count: usize) -> anyhow::Result<CapacityResult> {
    let url = server.url();
    let locks = RedisLock::connect(&url).await?;
    let mut info = info_conn(&url).await?;
    let before = redis_info(&mut info, "used_memory").await?;
    let started = Instant::now();
    let guards = take_many(&locks, "cap", count, REDIS_IN_FLIGHT).await?;
    let acquire_secs = started.elapsed().as_secs_f64();
    let after = redis_info(&mut info, "used_memory").await?;
    let clients = redis_info(&mut info, "connected_clients").await? - 1;
    let held = guards.len();
    let probe_ok = {
        let other = RedisLock::connect(&url).await?;
        let guard = other.try_acquire("cap:probe", HOLD_TTL).await?;
        match guard {
            Some(guard) => {
                guard.release().await?;
                "ok".to_owned()
            }
            None => "held".to_owned(),
        }
    };
    let started = Instant::now();
    release_many(guards, REDIS_IN_FLIGHT).await?;
    let release_secs = started.elapsed().as_secs_f64();
    Ok(CapacityResult {
        backend: REDIS.to_owned(),
        how: format!(
            "distlock RedisLock, one client ({clients} server connections: commands + wake-up subscriber), 256 acquires in flight"
        ),
        held,
        acquire_secs,
        release_secs: Some(release_secs),
        bytes_per_lock: Some((after - before) as f64 / held.max(1) as f64),
        error: None,
        probes: vec![Probe {
            what: "another client's acquire + release at that moment".to_owned(),
            outcome: probe_ok,
        }],
    })
}

/// Section 3 on fresh servers (pinned to CPU 0 when the run pins): K held
/// Redis locks for each of `redis_ks`, K held PostgreSQL locks for each of
/// `pg_ks`, then the capacity runs (PostgreSQL's connections, its lock
/// table, and `capacity` Redis locks through one client).
pub async fn section(
    redis_ks: &[usize],
    pg_ks: &[usize],
    capacity: usize,
    quick: bool,
    results: &mut Results,
) -> anyhow::Result<()> {
    println!("\n== 3. the cost of holding K locks (fresh servers, PostgreSQL with its defaults)");
    let redis = RedisServer::start()?;
    let pg = PgServer::start()?;
    pin_server(redis.pid(), results.pinned)?;
    pin_server(pg.pid(), results.pinned)?;
    let pg_url = pg.fresh_database()?;
    // Warm-up, not recorded: the first locks on a fresh server also pay for
    // script loading and client buffers.
    redis_hold(&redis, 100).await?;
    println!(
        "{:<11} {:>9} {:>12} {:>14} {:>12} {:>14}",
        "backend", "K held", "connections", "memory growth", "per lock", "private/lock"
    );
    let mut measured = Vec::new();
    for &k in redis_ks {
        measured.push(redis_hold(&redis, k).await?);
    }
    for &k in pg_ks {
        measured.push(pg_hold(&pg, &pg_url, k).await?);
    }
    for r in measured {
        println!(
            "{:<11} {:>9} {:>12} {:>14} {:>12} {:>14}",
            r.backend,
            r.held,
            r.server_connections,
            report::bytes(r.memory_bytes as f64),
            report::bytes(r.bytes_per_lock),
            r.private_bytes.map_or("–".to_owned(), |p| report::bytes(
                p as f64 / r.held.max(1) as f64
            )),
        );
        results.holds.push(r);
    }

    println!("\n-- capacity");
    let pg_cap = pg_capacity_distlock(&pg, &pg_url).await?;
    print_capacity(&pg_cap);
    results.capacity.push(pg_cap);
    drop(pg);

    let table = PgServer::start()?;
    pin_server(table.pid(), results.pinned)?;
    let table_url = table.fresh_database()?;
    let lock_table = pg_capacity_lock_table(&table_url).await?;
    print_capacity(&lock_table);
    results.capacity.push(lock_table);
    drop(table);

    let label = if quick {
        " (quick mode: not the full 1,000,000)"
    } else {
        ""
    };
    println!(
        "Redis: {} locks through one client{label} ...",
        report::count(capacity as f64)
    );
    let redis_cap = redis_capacity(&redis, capacity).await?;
    print_capacity(&redis_cap);
    results.capacity.push(redis_cap);
    Ok(())
}

fn print_capacity(c: &CapacityResult) {
    println!(
        "{}: {} locks in {:.2} s{} — {}",
        c.backend,
        report::count(c.held as f64),
        c.acquire_secs,
        c.bytes_per_lock.map_or(String::new(), |b| format!(
            ", {} per lock",
            report::bytes(b)
        )),
        c.how
    );
    if let Some(e) = &c.error {
        println!("    stopped by: {e}");
    }
    for p in &c.probes {
        println!("    {}: {}", p.what, p.outcome);
    }
}
