//! The box office: books and cancels tickets stored in PostgreSQL, one
//! distributed lock per ticket, with every write fenced by the lock's token.
//!
//! Shared by `examples/ticket_booking` and `tests/it/ticket_booking.rs`; each
//! uses part of it.
#![allow(dead_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use distlock::fencing::Fence;
use distlock::{DistributedLock, LockError, LockGuard, fence_condition};
use sqlx::PgPool;
use tokio::sync::Notify;

/// Tables `events`, `tickets` (status, holder, fence) and `ticket_log`.
pub(crate) const SCHEMA: &str = include_str!("schema.sql");

/// Creates the tables (idempotent).
pub(crate) async fn create_schema(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(SCHEMA).execute(db).await?;
    Ok(())
}

/// Creates an event with `seats` available tickets, numbered
/// `event * 1000 + 1 ..= event * 1000 + seats`; returns their ids.
pub(crate) async fn create_event(
    db: &PgPool,
    event: i64,
    title: &str,
    seats: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO events (id, title) VALUES ($1, $2)")
        .bind(event)
        .bind(title)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<i64> = (1..=seats).map(|seat| event * 1000 + seat).collect();
    for (seat, id) in (1..=seats).zip(&ids) {
        sqlx::query("INSERT INTO tickets (id, event_id, seat) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(event)
            .bind(format!("row A, seat {seat}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(ids)
}

/// What a customer is told. Every request ends in one of these, within the
/// desk's wait (plus the time the booking itself takes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The ticket is now theirs.
    Booked {
        /// The ticket.
        ticket: i64,
        /// The fencing token the write carried.
        fence: i64,
    },
    /// Their booking was cancelled; the ticket is available again.
    Cancelled {
        /// The ticket.
        ticket: i64,
    },
    /// Someone else is booking this ticket right now: try again shortly.
    BeingBooked {
        /// The ticket.
        ticket: i64,
    },
    /// The ticket is sold (to someone else, or for a cancel: not to them).
    SoldOut {
        /// The ticket.
        ticket: i64,
    },
    /// Their hold on the ticket ran out before the write (they were too
    /// slow, or stalled); nothing was written: try again.
    HoldExpired {
        /// The ticket.
        ticket: i64,
        /// The stale token the refused write carried, if it got that far.
        fence: i64,
    },
    /// There is no such ticket.
    NoSuchTicket {
        /// The ticket asked for.
        ticket: i64,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Booked { ticket, fence } => {
                write!(f, "booked ticket {ticket} (fencing token {fence})")
            }
            Outcome::Cancelled { ticket } => write!(f, "cancelled ticket {ticket}"),
            Outcome::BeingBooked { ticket } => {
                write!(
                    f,
                    "ticket {ticket} is being booked by someone else: try again in a moment"
                )
            }
            Outcome::SoldOut { ticket } => write!(f, "ticket {ticket} is sold"),
            Outcome::HoldExpired { ticket, fence } => write!(
                f,
                "the hold on ticket {ticket} ran out before the write; \
                 the database refused the write with stale token {fence}: nothing booked, try again"
            ),
            Outcome::NoSuchTicket { ticket } => write!(f, "there is no ticket {ticket}"),
        }
    }
}

/// A request that got no answer: the lock server or the database failed.
#[derive(Debug)]
pub(crate) enum BookingError {
    /// The lock server could not be used.
    Lock(LockError),
    /// The database could not be used.
    Database(sqlx::Error),
}

impl fmt::Display for BookingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BookingError::Lock(err) => write!(f, "lock service: {err}"),
            BookingError::Database(err) => write!(f, "database: {err}"),
        }
    }
}

impl std::error::Error for BookingError {}

impl From<LockError> for BookingError {
    fn from(err: LockError) -> Self {
        BookingError::Lock(err)
    }
}

impl From<sqlx::Error> for BookingError {
    fn from(err: sqlx::Error) -> Self {
        BookingError::Database(err)
    }
}

/// Sells an available ticket, fenced, and logs the accepted write.
/// `$1` ticket, `$2` fencing token, `$3` customer.
const BOOK: &str = concat!(
    "WITH booked AS (
         UPDATE tickets SET status = 'sold', holder = $3, booked_at = now(), fence = $2
          WHERE id = $1 AND status = 'available' AND ",
    fence_condition!("fence", "$2"),
    " RETURNING id)
     INSERT INTO ticket_log (ticket_id, action, holder, fence)
     SELECT id, 'book', $3, $2 FROM booked"
);

/// Undoes a customer's sale, fenced, and logs it. Parameters as [`BOOK`].
const CANCEL: &str = concat!(
    "WITH cancelled AS (
         UPDATE tickets SET status = 'available', holder = NULL, booked_at = NULL, fence = $2
          WHERE id = $1 AND status = 'sold' AND holder = $3 AND ",
    fence_condition!("fence", "$2"),
    " RETURNING id)
     INSERT INTO ticket_log (ticket_id, action, holder, fence)
     SELECT id, 'cancel', $3, $2 FROM cancelled"
);

/// A pause injected between the last validity check and the write.
pub(crate) type Stall = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A stall that signals `stalled` and then waits for `wake_up`: a holder
/// frozen right before its write until it is told to go on.
pub(crate) fn freeze(stalled: &Arc<Notify>, wake_up: &Arc<Notify>) -> Stall {
    let (stalled, wake_up) = (Arc::clone(stalled), Arc::clone(wake_up));
    Arc::new(move || {
        let (stalled, wake_up) = (Arc::clone(&stalled), Arc::clone(&wake_up));
        Box::pin(async move {
            stalled.notify_one();
            wake_up.notified().await;
        })
    })
}

/// A booking service instance: many of these, in many processes, share one
/// lock server and one database.
#[derive(Clone)]
pub(crate) struct BoxOffice {
    locks: Arc<dyn DistributedLock>,
    db: PgPool,
    /// How long a hold on a ticket lasts if this instance vanishes.
    pub(crate) ttl: Duration,
    /// How long a customer waits for a ticket someone else is booking.
    pub(crate) wait: Duration,
    /// Renew the hold in the background while the payment runs.
    pub(crate) renew: bool,
    /// How long the payment provider takes.
    pub(crate) payment: Duration,
    /// What a garbage-collection pause or a frozen VM does to a holder:
    /// a stall after it last checked its lock and before it writes. No
    /// check in the process can close that window; the fence in the
    /// database does. `None` in normal operation.
    pub(crate) stall_before_write: Option<Stall>,
}

impl BoxOffice {
    /// A box office with a 10 s hold, 2 s wait, renewal on, instant payment.
    pub(crate) fn new(locks: Arc<dyn DistributedLock>, db: PgPool) -> Self {
        Self {
            locks,
            db,
            ttl: Duration::from_secs(10),
            wait: Duration::from_secs(2),
            renew: true,
            payment: Duration::ZERO,
            stall_before_write: None,
        }
    }

    /// `user` tries to book `ticket`.
    ///
    /// Takes the lock `ticket:<id>`, reads the row, takes the payment, and
    /// writes the sale only if the ticket is still available and no newer
    /// lock holder has written it (`fence < token`), then releases.
    pub(crate) async fn book(&self, ticket: i64, user: &str) -> Result<Outcome, BookingError> {
        let Some(guard) = self.hold(ticket).await? else {
            return Ok(Outcome::BeingBooked { ticket });
        };
        let outcome = self.book_held(&guard, ticket, user).await;
        self.give_back(guard).await;
        outcome
    }

    /// `user` cancels their booking of `ticket`, under the same lock and fence.
    pub(crate) async fn cancel(&self, ticket: i64, user: &str) -> Result<Outcome, BookingError> {
        let Some(guard) = self.hold(ticket).await? else {
            return Ok(Outcome::BeingBooked { ticket });
        };
        let fence = Fence::of(&guard)?;
        let cancelled = sqlx::query(CANCEL)
            .bind(ticket)
            .bind(fence.get())
            .bind(user)
            .execute(&self.db)
            .await;
        self.give_back(guard).await;
        Ok(if cancelled?.rows_affected() == 1 {
            Outcome::Cancelled { ticket }
        } else {
            Outcome::SoldOut { ticket }
        })
    }

    /// Takes the ticket's lock; `None` when someone else kept it for the whole wait.
    async fn hold(&self, ticket: i64) -> Result<Option<LockGuard>, BookingError> {
        let name = format!("ticket:{ticket}");
        match self.locks.acquire(&name, self.ttl, self.wait).await {
            Ok(mut guard) => {
                if self.renew {
                    guard.auto_renew();
                }
                Ok(Some(guard))
            }
            Err(LockError::Timeout) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    async fn book_held(
        &self,
        guard: &LockGuard,
        ticket: i64,
        user: &str,
    ) -> Result<Outcome, BookingError> {
        let fence = Fence::of(guard)?;
        let status: Option<String> = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_optional(&self.db)
            .await?;
        match status.as_deref() {
            None => return Ok(Outcome::NoSuchTicket { ticket }),
            Some("sold") => return Ok(Outcome::SoldOut { ticket }),
            Some(_) => {}
        }
        if !self.payment.is_zero() {
            tokio::time::sleep(self.payment).await;
        }
        // The last check the process can make. It catches a slow payment,
        // but a stall after it (see `stall_before_write`) is only caught by
        // the fence below.
        if guard.is_lost() || guard.remaining() < Duration::from_millis(5) {
            return Ok(Outcome::HoldExpired {
                ticket,
                fence: fence.get(),
            });
        }
        if let Some(stall) = &self.stall_before_write {
            stall().await;
        }
        let booked = sqlx::query(BOOK)
            .bind(ticket)
            .bind(fence.get())
            .bind(user)
            .execute(&self.db)
            .await?;
        if booked.rows_affected() == 1 {
            return Ok(Outcome::Booked {
                ticket,
                fence: fence.get(),
            });
        }
        // Refused: tell the customer why.
        let status: String = sqlx::query_scalar("SELECT status FROM tickets WHERE id = $1")
            .bind(ticket)
            .fetch_one(&self.db)
            .await?;
        Ok(if status == "sold" {
            Outcome::SoldOut { ticket }
        } else {
            Outcome::HoldExpired {
                ticket,
                fence: fence.get(),
            }
        })
    }

    /// Releases the lock. A lock that ran out is no problem here: every
    /// write it guarded was fenced.
    async fn give_back(&self, guard: LockGuard) {
        if let Err(err) = guard.release().await
            && !err.is_lost()
        {
            eprintln!("release failed (the lock expires on its own): {err}");
        }
    }
}

/// One accepted write, from `ticket_log`, in commit order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LogEntry {
    /// Commit order.
    pub(crate) seq: i64,
    /// The ticket.
    pub(crate) ticket_id: i64,
    /// `book` or `cancel`.
    pub(crate) action: String,
    /// Who.
    pub(crate) holder: String,
    /// The fencing token the write carried.
    pub(crate) fence: i64,
}

/// Every accepted write, in commit order.
pub(crate) async fn log(db: &PgPool) -> Result<Vec<LogEntry>, sqlx::Error> {
    let rows: Vec<(i64, i64, String, String, i64)> =
        sqlx::query_as("SELECT seq, ticket_id, action, holder, fence FROM ticket_log ORDER BY seq")
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, ticket_id, action, holder, fence)| LogEntry {
            seq,
            ticket_id,
            action,
            holder,
            fence,
        })
        .collect())
}
