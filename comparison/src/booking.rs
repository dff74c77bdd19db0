//! Section 4, the ticket-booking workload on the schema of
//! `examples/ticket_booking/schema.sql`: how much ordinary database work
//! PostgreSQL still does while K long-held locks are out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use distlock::DistributedLock;
use distlock_postgres::PgLockOptions;
use distlock_redis::RedisLock;
use distlock_testkit::{PgServer, RedisServer};
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Acquire, Connection};

use crate::cyclers::REDIS;
use crate::measure::latency;
use crate::report;
use crate::results::{BookingResult, Latency, Results};
use crate::system::pin_server;

/// The schema shared with the ticket-booking example.
pub const SCHEMA: &str = include_str!("../../examples/ticket_booking/schema.sql");

/// Creates the tables (if missing) and `tickets` seats, all available.
pub async fn prepare(conn: &mut PgConnection, tickets: i64) -> anyhow::Result<()> {
    sqlx::raw_sql(SCHEMA).execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO events (id, title) VALUES (1, 'The comparison run') ON CONFLICT DO NOTHING",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO tickets (id, event_id, seat) \
         SELECT n, 1, 'seat ' || n FROM generate_series(1, $1) n ON CONFLICT DO NOTHING",
    )
    .bind(tickets)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// One booking transaction: sell seat `id` to `holder` with fencing token
/// `fence` (the statement the example uses) and log it; a seat that is
/// already sold is given back instead (logged as `cancel`), so the workload
/// keeps running. Returns whether a row changed.
pub async fn book(
    conn: &mut PgConnection,
    id: i64,
    fence: i64,
    holder: &str,
) -> anyhow::Result<bool> {
    let mut tx = Connection::begin(conn).await?;
    let mut action = "book";
    let mut changed = sqlx::query(
        "UPDATE tickets SET status = 'sold', holder = $3, fence = $2, booked_at = now() \
         WHERE id = $1 AND status = 'available' AND fence < $2",
    )
    .bind(id)
    .bind(fence)
    .bind(holder)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed == 0 {
        action = "cancel";
        changed = sqlx::query(
            "UPDATE tickets SET status = 'available', holder = NULL, fence = $2, booked_at = NULL \
             WHERE id = $1 AND status = 'sold' AND fence < $2",
        )
        .bind(id)
        .bind(fence)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    if changed > 0 {
        sqlx::query(
            "INSERT INTO ticket_log (ticket_id, action, holder, fence) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(action)
        .bind(holder)
        .bind(fence)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(changed > 0)
}

/// What a workload run measured.
#[derive(Debug, Default)]
pub struct Workload {
    /// Committed transactions per second.
    pub tps: f64,
    /// Per-transaction latency (pool wait included).
    pub latency: Latency,
    /// Failed transactions.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// `clients` tasks book random seats among `tickets` on `pool` for
/// `duration`.
pub async fn run(pool: &PgPool, clients: usize, tickets: i64, duration: Duration) -> Workload {
    static FENCE: AtomicU64 = AtomicU64::new(1);
    let end = Instant::now() + duration;
    let errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|client| {
            let (pool, errors) = (pool.clone(), Arc::clone(&errors));
            tokio::spawn(async move {
                let holder = format!("client-{client}");
                let mut seed = 0x9E37_79B9_7F4A_7C15_u64 ^ (client as u64 + 1);
                let mut samples = Vec::new();
                let mut first_error = None;
                while Instant::now() < end {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let id = (seed % tickets as u64) as i64 + 1;
                    let fence = FENCE.fetch_add(1, Ordering::Relaxed) as i64;
                    let t0 = Instant::now();
                    let outcome = async {
                        let mut conn = pool.acquire().await?;
                        let conn = conn.acquire().await?;
                        book(conn, id, fence, &holder).await
                    }
                    .await;
                    match outcome {
                        Ok(_) => samples.push(t0.elapsed()),
                        Err(e) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                }
                (samples, first_error)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut first_error = None;
    for worker in workers {
        if let Ok((samples, error)) = worker.await {
            all.extend(samples);
            if first_error.is_none() {
                first_error = error;
            }
        }
    }
    Workload {
        tps: all.len() as f64 / duration.as_secs_f64(),
        latency: latency(&mut all),
        errors: errors.load(Ordering::Relaxed),
        first_error,
    }
}

/// Where section 4's K long-held locks live.
pub const BOOK_IN_REDIS: &str = REDIS;
/// See [`BOOK_IN_REDIS`]: distlock's PostgreSQL locks on the application's pool.
pub const BOOK_IN_PG_SHARED: &str = "PostgreSQL, app's pool";
/// See [`BOOK_IN_REDIS`]: distlock's PostgreSQL locks on a pool of their own.
pub const BOOK_IN_PG_OWN: &str = "PostgreSQL, own pool";

/// The booking setup of section 4.
pub const BOOKING_POOL: u32 = 20;
/// The booking tasks of section 4.
pub const BOOKING_CLIENTS: usize = 16;
/// The seats of section 4.
pub const TICKETS: i64 = 1000;

/// Section 4: for each K of `ks`, K long-held locks in Redis, on the
/// application's pool and on a pool of their own, then `time` of booking
/// transactions on fresh servers (pinned to CPU 0 when the run pins).
pub async fn section(ks: &[usize], time: Duration, results: &mut Results) -> anyhow::Result<()> {
    results.booking_setup = format!(
        "PostgreSQL with its default max_connections (100). The application has one sqlx pool of {BOOKING_POOL} connections \
         (acquire timeout 1 s) that {BOOKING_CLIENTS} tasks use for booking transactions (UPDATE tickets … fence < $2 + INSERT INTO ticket_log, \
         one transaction, on {TICKETS} seats; a sold seat is given back instead so the workload keeps going), {} s per row. \
         K long-held locks are taken before each row and held throughout: *in PostgreSQL* through distlock's PgAdvisoryLock \
         sharing the application's pool (`PgLockOptions::from_pool`, pool timeout 1 s) — each held lock pins one of the {BOOKING_POOL} connections \
         (rows `{BOOK_IN_PG_SHARED}`); *in PostgreSQL* through distlock's PgAdvisoryLock on a pool of its own (`PgLockOptions::connect`, \
         its default deployment: every option at its default except `max_connections`, raised from 10 to max(10, K) so that all K locks can be held — \
         each held lock then takes a server connection of its own, outside the application's pool; rows `{BOOK_IN_PG_OWN}`); \
         *in Redis* through distlock's RedisLock on a Redis server. K runs past the pool size.",
        time.as_secs()
    );
    println!(
        "\n== 4. booking transactions on PostgreSQL while K locks are held ({BOOKING_CLIENTS} clients, pool of {BOOKING_POOL})"
    );
    let pg = PgServer::start()?;
    let redis = RedisServer::start()?;
    pin_server(pg.pid(), results.pinned)?;
    pin_server(redis.pid(), results.pinned)?;
    let url = pg.fresh_database()?;
    {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&url).await?;
        prepare(&mut conn, TICKETS).await?;
    }
    let redis_locks = RedisLock::connect(&redis.url()).await?;
    println!(
        "{:>4} {:<22} {:>5} {:>11} {:>10} {:>10} {:>7}  first error",
        "K", "locks in", "held", "bookings/s", "p50", "p99", "failed"
    );
    for &k in ks {
        for (locks_in, tag) in [
            (BOOK_IN_REDIS, "redis"),
            (BOOK_IN_PG_SHARED, "pg-shared"),
            (BOOK_IN_PG_OWN, "pg-own"),
        ] {
            let pool = PgPoolOptions::new()
                .max_connections(BOOKING_POOL)
                .acquire_timeout(Duration::from_secs(1))
                .connect(&url)
                .await?;
            let pg_locks;
            let locks: &dyn DistributedLock = match locks_in {
                BOOK_IN_REDIS => &redis_locks,
                BOOK_IN_PG_SHARED => {
                    pg_locks = PgLockOptions::new()
                        .pool_timeout(Duration::from_secs(1))
                        .from_pool(pool.clone())
                        .await?;
                    &pg_locks
                }
                _ => {
                    pg_locks = PgLockOptions::new()
                        .max_connections((k as u32).max(10))
                        .connect(&url)
                        .await?;
                    &pg_locks
                }
            };
            let attempts =
                (0..k).map(|n| locks.try_acquire_owned_name(format!("long:{tag}:{k}:{n}")));
            let outcomes = futures::future::join_all(attempts).await;
            let mut guards = Vec::new();
            let mut lock_error = None;
            for outcome in outcomes {
                match outcome {
                    Ok(Some(guard)) => guards.push(guard),
                    Ok(None) => anyhow::bail!("a long-held lock was already held"),
                    Err(e) => {
                        lock_error.get_or_insert(e.to_string());
                    }
                }
            }
            let w = run(&pool, BOOKING_CLIENTS, TICKETS, time).await;
            let r = BookingResult {
                locks_in: locks_in.to_owned(),
                requested: k,
                held: guards.len(),
                tps: w.tps,
                latency: w.latency,
                errors: w.errors,
                first_error: w.first_error,
                lock_error,
            };
            println!(
                "{:>4} {:<22} {:>5} {:>11.0} {:>10} {:>10} {:>7}  {}",
                k,
                locks_in,
                r.held,
                r.tps,
                report::micros(r.latency.p50_us),
                report::micros(r.latency.p99_us),
                r.errors,
                r.first_error
                    .as_deref()
                    .or(r.lock_error.as_deref())
                    .unwrap_or("")
            );
            for guard in guards {
                guard.release().await?;
            }
            pool.close().await;
            results.booking.push(r);
        }
    }
    Ok(())
}

/// `try_acquire` with an owned name, for `join_all`.
trait TryOwned {
    fn try_acquire_owned_name(
        &self,
        name: String,
    ) -> impl Future<Output = Result<Option<distlock::LockGuard>, distlock::LockError>>;
}

impl TryOwned for dyn DistributedLock + '_ {
    async fn try_acquire_owned_name(
        &self,
        name: String,
    ) -> Result<Option<distlock::LockGuard>, distlock::LockError> {
        self.try_acquire(&name, Duration::from_secs(3600)).await
    }
}
