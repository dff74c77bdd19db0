//! The ticket-booking workload of section 4, on the schema of
//! `examples/ticket_booking/schema.sql`: how much ordinary database work
//! PostgreSQL still does while K long-held locks are out.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Acquire, Connection};

use crate::measure::latency;
use crate::results::Latency;

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
