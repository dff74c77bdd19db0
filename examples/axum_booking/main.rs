//! An axum service that books concert tickets under a distributed lock.
//!
//! `POST /tickets/{id}/book` with `{"user": "ada"}` takes the lock
//! `ticket:{id}` (waiting briefly), books the ticket in a store that checks
//! the lock's fencing token, and releases. Busy lock: 423 with
//! `Retry-After`; lock lost before the write: 409 `lock_lost`; lock server
//! unreachable: 503. `GET /tickets/{id}` shows a ticket.
//!
//! ```sh
//! cargo run --example axum_booking -- --self-test                           # memory:, checks itself, exits
//! cargo run --example axum_booking -- --self-test --throwaway redis         # or postgres: a throwaway server
//! cargo run --example axum_booking -- --url redis://127.0.0.1:6379          # serve on 127.0.0.1:3000
//! curl -i -X POST localhost:3000/tickets/1/book -H 'content-type: application/json' -d '{"user":"ada"}'
//! ```
//!
//! With `--self-test` it serves on a free port, sends `--clients`
//! concurrent bookings of one ticket, and exits 0 only if exactly one
//! succeeded and every other got a clean "busy" or "already booked".
//! Against a server, every process booking ticket 1 there competes for the
//! same lock (that is the point): run one self-test per server at a time.

mod app;
mod client;
mod store;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use app::AppState;
use store::TicketStore;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Books concert tickets under a distributed lock (axum + distlock).
#[derive(Debug, Parser)]
#[command(name = "axum_booking")]
struct Args {
    /// Where the locks live: memory:, redis://host:port, postgres://user@host/db, …
    #[arg(long, default_value = "memory:", conflicts_with = "throwaway")]
    url: String,
    /// Start a throwaway server for the locks (stopped at exit); REDIS_URL or
    /// DATABASE_URL, when set, name an existing one instead.
    #[arg(long, value_enum)]
    throwaway: Option<Throwaway>,
    /// Address to serve on (not used by --self-test).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// Serve on a free port, book one ticket from many concurrent clients,
    /// check that exactly one got it, and exit.
    #[arg(long)]
    self_test: bool,
    /// Concurrent clients in --self-test.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    clients: u16,
    /// Number of tickets for sale (1..=N).
    #[arg(long, default_value_t = 100)]
    tickets: u64,
    /// Lock TTL in milliseconds: how long a ticket stays locked if its
    /// booking instance dies.
    #[arg(long, default_value_t = 5_000)]
    ttl_ms: u64,
    /// How long a booking waits for a busy ticket before answering 423, in milliseconds.
    #[arg(long, default_value_t = 100)]
    wait_ms: u64,
    /// How long the simulated payment takes under the lock, in milliseconds.
    #[arg(long, default_value_t = 300)]
    payment_ms: u64,
}

/// A server to start for the run.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Throwaway {
    /// A redis-server on a free port.
    Redis,
    /// A PostgreSQL cluster in a temporary directory.
    Postgres,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Error> {
    let url = match args.throwaway {
        None => args.url.clone(),
        // distlock-testkit, this repository's test helper, starts the server.
        Some(Throwaway::Redis) => distlock_testkit::redis_url()?,
        Some(Throwaway::Postgres) => distlock_testkit::database_url()?,
    };
    // Connect once; every request shares the client.
    let locks = distlock::connect(&url).await?;
    let scheme = url.split(':').next().unwrap_or_default();
    println!("Locks: {scheme} backend");
    let state = Arc::new(AppState {
        locks,
        store: TicketStore::new(args.tickets),
        ttl: Duration::from_millis(args.ttl_ms),
        wait: Duration::from_millis(args.wait_ms),
        payment: Duration::from_millis(args.payment_ms),
    });
    let router = app::router(state);
    if args.self_test {
        // Every wait in the self-test is bounded: a hang is a failure.
        return tokio::time::timeout(Duration::from_secs(30), self_test(router, args.clients))
            .await
            .map_err(|_| "self-test: no result within 30 s")?;
    }
    let listener = TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!("Serving on http://{addr} (Ctrl-C stops). Try:");
    println!(
        "  curl -i -X POST http://{addr}/tickets/1/book \
         -H 'content-type: application/json' -d '{{\"user\":\"ada\"}}'"
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Serves on a free port and has `clients` customers book ticket 1 at once.
async fn self_test(router: axum::Router, clients: u16) -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    println!("Self-test: {clients} clients book ticket 1 at once on http://{addr}");

    let mut requests = JoinSet::new();
    for client in 0..clients {
        requests.spawn(async move {
            let body = format!(r#"{{"user":"user-{client}"}}"#);
            let answer = client::request(addr, "POST", "/tickets/1/book", Some(&body)).await;
            (client, answer)
        });
    }
    let mut winners = Vec::new();
    let (mut busy, mut sold) = (0, 0);
    while let Some(joined) = requests.join_next().await {
        let (client, answer) = joined?;
        let answer = answer?;
        match answer.status {
            200 => winners.push(client),
            423 => busy += 1,
            409 if answer.body.contains(r#""error":"already_booked""#) => sold += 1,
            _ => {
                return Err(format!(
                    "client {client}: unexpected answer {} {}",
                    answer.status, answer.body
                )
                .into());
            }
        }
    }
    println!(
        "  booked: {}, 423 ticket busy: {busy}, 409 already booked: {sold}",
        winners.len()
    );
    let [winner] = winners[..] else {
        return Err(format!("expected exactly one booking, got {}", winners.len()).into());
    };

    let ticket = client::request(addr, "GET", "/tickets/1", None).await?;
    let expected = format!(r#""holder":"user-{winner}""#);
    if ticket.status != 200 || !ticket.body.contains(&expected) {
        return Err(format!(
            "ticket 1 should be user-{winner}'s: {} {}",
            ticket.status, ticket.body
        )
        .into());
    }
    println!("  GET /tickets/1: {}", ticket.body);

    let late = r#"{"user":"late"}"#;
    let again = client::request(addr, "POST", "/tickets/1/book", Some(late)).await?;
    if again.status != 409 || !again.body.contains(r#""error":"already_booked""#) {
        return Err(format!(
            "a late booking should be refused: {} {}",
            again.status, again.body
        )
        .into());
    }
    println!("  a late booking: {} {}", again.status, again.body);

    let _ = stop.send(());
    server.await??;
    println!("Self-test passed: exactly one of {clients} clients booked the ticket");
    Ok(())
}
