//! The ticket-booking scenario from DESIGN.md, end to end.
//!
//! Two scenes against a real PostgreSQL (the tickets) and the lock backend of
//! your choice:
//!
//! 1. Eight customers rush for the last three tickets of a concert at the
//!    same moment. Each ticket has its own lock; every customer gets a
//!    definite answer, and no ticket is sold twice.
//! 2. A booking service stalls (think garbage-collection pause) after its
//!    last look at its lock and before its write. Its lock runs out, another
//!    customer books the ticket and cancels it again; then the stalled
//!    service wakes up and writes. The lock cannot stop that write — the
//!    fencing token in the database does.
//!
//! ```sh
//! cargo run --example ticket_booking -- --backend redis     # or postgres, memory
//! ```
//!
//! Throwaway servers are started for the run (`REDIS_URL` / `DATABASE_URL`
//! point it at your own instead).

mod booking;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use booking::{BoxOffice, Outcome};
use clap::Parser;
use distlock::DistributedLock;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Books concert tickets under a distributed lock, and shows what its fencing
/// token is for.
///
/// Eight customers rush for the last three tickets; then a holder that stalls
/// past its TTL is turned away by the fencing token in the database. The
/// tickets live in PostgreSQL; the locks in the backend you choose.
/// Throwaway servers are started for the run unless REDIS_URL /
/// DATABASE_URL point it at your own.
#[derive(clap::Parser)]
#[command(name = "ticket_booking")]
struct Args {
    /// Where the locks live.
    #[arg(long, value_enum, default_value_t = Backend::Redis)]
    backend: Backend,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Backend {
    /// One throwaway redis-server (or REDIS_URL).
    Redis,
    /// PostgreSQL advisory locks, in the tickets' server (or DATABASE_URL).
    Postgres,
    /// In-process locks (MemoryLock).
    Memory,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Redis => "redis",
            Backend::Postgres => "postgres",
            Backend::Memory => "memory",
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // A usage error exits with status 2, --help with 0.
    let args = Args::parse();
    match run(args.backend.name()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(backend: &str) -> Result<(), Error> {
    println!("Starting the servers (throwaway ones unless REDIS_URL / DATABASE_URL are set)…");
    let lock_url = match backend {
        "redis" => distlock_testkit::redis_url()?,
        "postgres" => distlock_testkit::database_url()?,
        _ => "memory:ticket-booking".to_owned(),
    };
    let locks: Arc<dyn DistributedLock> = distlock::connect(&lock_url).await?;
    let db = PgPoolOptions::new()
        .max_connections(8)
        .connect(&distlock_testkit::database_url()?)
        .await?;
    booking::create_schema(&db).await?;
    println!("Locks: {backend}. Tickets: PostgreSQL.\n");

    rush_for_the_last_tickets(&locks, &db).await?;
    a_stalled_holder_is_fenced_off(&locks, &db).await?;
    Ok(())
}

/// Scene 1: eight customers, three tickets, all at once.
async fn rush_for_the_last_tickets(
    locks: &Arc<dyn DistributedLock>,
    db: &sqlx::PgPool,
) -> Result<(), Error> {
    let tickets = booking::create_event(db, 1, "The Last Concert", 3).await?;
    println!(
        "Scene 1: eight customers want the last {} tickets of \"The Last Concert\".",
        tickets.len()
    );
    let mut office = BoxOffice::new(Arc::clone(locks), db.clone());
    office.payment = Duration::from_millis(150); // the card payment
    office.wait = Duration::from_millis(100); // nobody likes a spinner
    let customers = [
        "ada", "grace", "linus", "barbara", "ken", "margaret", "dennis", "frances",
    ];
    let started = Instant::now();
    let requests = customers.iter().enumerate().map(|(i, customer)| {
        let office = office.clone();
        let ticket = tickets[i % tickets.len()];
        async move { (customer, office.book(ticket, customer).await) }
    });
    for (customer, outcome) in futures::future::join_all(requests).await {
        let answer = match outcome {
            Ok(outcome) => outcome.to_string(),
            Err(err) => format!("no answer: {err}"),
        };
        println!("  {customer:<9} {answer}");
    }
    println!(
        "  (all answered within {} ms)",
        started.elapsed().as_millis()
    );
    let sold: Vec<(i64, Option<String>, i64)> = sqlx::query_as(
        "SELECT id, holder, fence FROM tickets WHERE event_id = 1 AND status = 'sold' ORDER BY id",
    )
    .fetch_all(db)
    .await?;
    println!(
        "  In the database: {} of {} tickets sold, each once:",
        sold.len(),
        tickets.len()
    );
    for (ticket, holder, fence) in sold {
        let holder = holder.unwrap_or_default();
        println!("    ticket {ticket} → {holder} (written with fencing token {fence})");
    }
    println!();
    Ok(())
}

/// Scene 2: a holder stalls past its TTL, then writes.
async fn a_stalled_holder_is_fenced_off(
    locks: &Arc<dyn DistributedLock>,
    db: &sqlx::PgPool,
) -> Result<(), Error> {
    let ticket = booking::create_event(db, 2, "The Encore", 1).await?[0];
    println!("Scene 2: one ticket for \"The Encore\", and a booking service that stalls.");

    let ttl = Duration::from_millis(500);
    let stalled = Arc::new(Notify::new());
    let wake_up = Arc::new(Notify::new());
    let mut frozen = BoxOffice::new(Arc::clone(locks), db.clone());
    frozen.ttl = ttl;
    frozen.renew = false; // a frozen process does not renew anything
    frozen.stall_before_write = Some(booking::freeze(&stalled, &wake_up));
    let mallory = tokio::spawn(async move { frozen.book(ticket, "mallory").await });
    stalled.notified().await;
    println!(
        "  mallory's service holds ticket:{ticket}, checked its lock, and freezes before writing."
    );

    let mut office = BoxOffice::new(Arc::clone(locks), db.clone());
    office.wait = ttl * 4;
    let booked = office.book(ticket, "bob").await?;
    println!(
        "  {} ms later the hold has run out; bob: {booked}",
        ttl.as_millis()
    );
    let cancelled = office.cancel(ticket, "bob").await?;
    println!("  bob changes his mind: {cancelled}. The ticket is available again.");

    wake_up.notify_one();
    let outcome = mallory.await??;
    println!("  mallory's service wakes up and writes: {outcome}");
    let (status, fence): (String, i64) =
        sqlx::query_as("SELECT status, fence FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(db)
            .await?;
    println!(
        "  In the database: ticket {ticket} is {status}, last written with token {fence}. {}",
        match outcome {
            Outcome::HoldExpired { .. } =>
                "Without the fence, mallory would have sold a ticket she no longer held.",
            _ => "(the fence was not needed this time)",
        }
    );
    Ok(())
}
