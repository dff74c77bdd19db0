//! The ticket-booking scenario on every backend: many buyers, few tickets,
//! no ticket sold twice; and a holder that stalls past its TTL is stopped by
//! the fencing token in the database.

#[path = "../../examples/ticket_booking/booking.rs"]
mod booking;
pub(crate) mod seat_log;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use booking::{BoxOffice, Outcome};
use distlock::postgres::PgAdvisoryLock;
use distlock::redis::RedisLock;
use distlock::{DistributedLock, MemoryLock};
use seat_log::{SeatAction, SeatWrite, check_seat_log};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio::sync::Notify;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Redis,
    Postgres,
    Memory,
}

async fn locks(backend: Backend) -> Arc<dyn DistributedLock> {
    match backend {
        Backend::Redis => Arc::new(
            RedisLock::connect(&distlock_testkit::redis_url().expect("a Redis server"))
                .await
                .expect("connects"),
        ),
        // Up to ten holders at once, plus room for the waiters' attempts.
        Backend::Postgres => Arc::new(
            PgAdvisoryLock::options()
                .max_connections(24)
                .connect(&distlock_testkit::database_url().expect("a PostgreSQL database"))
                .await
                .expect("connects"),
        ),
        Backend::Memory => Arc::new(MemoryLock::new()),
    }
}

/// A fresh database with the booking schema.
async fn tickets_db() -> PgPool {
    let url = distlock_testkit::database_url().expect("a PostgreSQL database");
    let db = PgPoolOptions::new()
        .max_connections(16)
        .connect(&url)
        .await
        .expect("connects");
    booking::create_schema(&db).await.expect("schema");
    db
}

/// The database side of the history: every seat sold at most once at a
/// time, accepted tokens strictly increasing per seat.
async fn check_database(db: &PgPool) -> Vec<booking::LogEntry> {
    let log = booking::log(db).await.expect("the log");
    let writes: Vec<SeatWrite> = log
        .iter()
        .map(|entry| SeatWrite {
            seq: entry.seq,
            ticket_id: entry.ticket_id,
            action: SeatAction::parse(&entry.action).expect("book or cancel"),
            holder: entry.holder.clone(),
            fence: entry.fence,
        })
        .collect();
    check_seat_log(&writes).assert_ok();
    log
}

async fn rush(backend: Backend) {
    const BUYERS: usize = 200;
    const TICKETS: i64 = 10;
    let db = tickets_db().await;
    let tickets = booking::create_event(&db, 1, "The Last Concert", TICKETS)
        .await
        .expect("an event");
    let mut office = BoxOffice::new(locks(backend).await, db.clone());
    office.wait = Duration::from_secs(5);
    office.payment = Duration::from_millis(2);
    // A buyer's answer may take its wait plus the booking itself; this
    // bound only keeps a broken run from hanging.
    let bound = office.wait + Duration::from_secs(10);

    let buyers = (0..BUYERS).map(|i| {
        let office = office.clone();
        let ticket = tickets[i % tickets.len()];
        tokio::spawn(async move {
            let started = Instant::now();
            let answer = tokio::time::timeout(bound, office.book(ticket, &format!("buyer-{i}")))
                .await
                .expect("every buyer gets an answer in bounded time");
            (i, answer, started.elapsed())
        })
    });
    let mut booked = Vec::new();
    for buyer in buyers {
        let (i, answer, elapsed) = buyer.await.expect("the buyer task ran");
        let outcome = answer.unwrap_or_else(|err| panic!("buyer-{i} got no answer: {err}"));
        match outcome {
            Outcome::Booked { ticket, .. } => booked.push((ticket, format!("buyer-{i}"))),
            Outcome::SoldOut { .. } | Outcome::BeingBooked { .. } => {}
            other => panic!("buyer-{i}: unexpected answer {other:?}"),
        }
        assert!(elapsed < bound, "buyer-{i} answered after {elapsed:?}");
    }

    assert_eq!(
        booked.len(),
        tickets.len(),
        "{backend:?}: every ticket sold, once: {booked:?}"
    );
    let distinct: BTreeSet<i64> = booked.iter().map(|(ticket, _)| *ticket).collect();
    assert_eq!(
        distinct.len(),
        tickets.len(),
        "{backend:?}: no ticket twice: {booked:?}"
    );

    let mut sold: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, holder FROM tickets WHERE status = 'sold' ORDER BY id")
            .fetch_all(&db)
            .await
            .expect("the tickets");
    booked.sort();
    sold.sort();
    assert_eq!(
        sold, booked,
        "{backend:?}: the database agrees with the answers"
    );
    let log = check_database(&db).await;
    assert_eq!(
        log.len(),
        tickets.len(),
        "{backend:?}: one accepted write per ticket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_ten_tickets_redis() {
    rush(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_ten_tickets_postgres() {
    rush(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_buyers_ten_tickets_memory() {
    rush(Backend::Memory).await;
}

/// What happens between the stalled holder's last check and its write.
#[derive(Clone, Copy, Debug)]
enum Meanwhile {
    /// Another buyer books the ticket.
    Booked,
    /// Another buyer books it and cancels again: the ticket is available,
    /// so only the fence can tell that the stalled holder is stale.
    BookedAndCancelled,
}

async fn stalled_holder(backend: Backend, meanwhile: Meanwhile) {
    let db = tickets_db().await;
    let ticket = booking::create_event(&db, 2, "The Encore", 1)
        .await
        .expect("an event")[0];
    let locks = locks(backend).await;

    let stalled = Arc::new(Notify::new());
    let wake_up = Arc::new(Notify::new());
    let mut frozen = BoxOffice::new(Arc::clone(&locks), db.clone());
    frozen.ttl = Duration::from_millis(300);
    frozen.renew = false; // a frozen process renews nothing
    frozen.stall_before_write = Some(booking::freeze(&stalled, &wake_up));
    let mallory = tokio::spawn(async move { frozen.book(ticket, "mallory").await });
    tokio::time::timeout(Duration::from_secs(10), stalled.notified())
        .await
        .expect("mallory takes the lock and reaches her write");

    // Bob waits until mallory's lock runs out, then books.
    let mut office = BoxOffice::new(Arc::clone(&locks), db.clone());
    office.wait = Duration::from_secs(10);
    let bob = office.book(ticket, "bob").await.expect("an answer");
    let Outcome::Booked {
        fence: bob_fence, ..
    } = bob
    else {
        panic!("{backend:?}: bob should get the ticket once mallory's lock ran out: {bob:?}");
    };
    if let Meanwhile::BookedAndCancelled = meanwhile {
        let cancelled = office.cancel(ticket, "bob").await.expect("an answer");
        assert_eq!(cancelled, Outcome::Cancelled { ticket });
    }

    wake_up.notify_one();
    let outcome = tokio::time::timeout(Duration::from_secs(10), mallory)
        .await
        .expect("mallory's write finishes")
        .expect("the task ran")
        .expect("an answer");
    let (status, holder): (String, Option<String>) =
        sqlx::query_as("SELECT status, holder FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(&db)
            .await
            .expect("the ticket");
    match meanwhile {
        Meanwhile::Booked => {
            assert_eq!(outcome, Outcome::SoldOut { ticket }, "{backend:?}");
            assert_eq!((status.as_str(), holder.as_deref()), ("sold", Some("bob")));
        }
        Meanwhile::BookedAndCancelled => {
            let Outcome::HoldExpired { fence, .. } = outcome else {
                panic!("{backend:?}: the fence must refuse mallory's write: {outcome:?}");
            };
            assert!(
                fence < bob_fence,
                "{backend:?}: mallory's token {fence} is older than bob's {bob_fence}"
            );
            assert_eq!((status.as_str(), holder), ("available", None));
        }
    }
    let log = check_database(&db).await;
    assert!(
        log.iter().all(|entry| entry.holder == "bob"),
        "{backend:?}: no write of mallory's was accepted: {log:?}"
    );
}

#[tokio::test]
async fn a_stalled_holder_is_fenced_off_redis() {
    stalled_holder(Backend::Redis, Meanwhile::Booked).await;
    stalled_holder(Backend::Redis, Meanwhile::BookedAndCancelled).await;
}

#[tokio::test]
async fn a_stalled_holder_is_fenced_off_postgres() {
    stalled_holder(Backend::Postgres, Meanwhile::Booked).await;
    stalled_holder(Backend::Postgres, Meanwhile::BookedAndCancelled).await;
}

#[tokio::test]
async fn a_stalled_holder_is_fenced_off_memory() {
    stalled_holder(Backend::Memory, Meanwhile::Booked).await;
    stalled_holder(Backend::Memory, Meanwhile::BookedAndCancelled).await;
}
