//! The data the lock protects: tickets that accept a booking only with a
//! fencing token newer than the last one they accepted.
//!
//! In memory here, to keep the example to one command; in a real service
//! this is a table, and `book` is the fenced `UPDATE` that
//! `distlock::fencing` describes (see `examples/ticket_booking` for it on
//! PostgreSQL). Either way the store, not the lock, has the last word: a
//! handler that stalled past its lock's TTL cannot overwrite the booking of
//! the handler that took the lock after it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use serde::Serialize;

/// The tickets of one concert.
pub(crate) struct TicketStore {
    tickets: Mutex<HashMap<u64, Ticket>>,
}

/// One ticket as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Ticket {
    /// The ticket's number.
    pub(crate) id: u64,
    /// Who booked it, if anyone has.
    pub(crate) holder: Option<String>,
    /// The fencing token of the last accepted write (0: never written).
    pub(crate) fence: u64,
}

/// Why a booking was not written.
#[derive(Debug)]
pub(crate) enum BookError {
    /// There is no such ticket.
    NoSuchTicket(u64),
    /// Someone booked it first.
    AlreadyBooked {
        /// The ticket.
        id: u64,
    },
    /// A write with a newer token was accepted already: the lock this write
    /// was made under had run out, and someone else has held it since.
    StaleFence {
        /// The ticket.
        id: u64,
        /// The token this write came with.
        fence: u64,
        /// The token of the last accepted write.
        last: u64,
    },
}

impl fmt::Display for BookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BookError::NoSuchTicket(id) => write!(f, "there is no ticket {id}"),
            BookError::AlreadyBooked { id } => write!(f, "ticket {id} is already booked"),
            BookError::StaleFence { id, fence, last } => write!(
                f,
                "fencing token {fence} is stale: ticket {id} has accepted {last}"
            ),
        }
    }
}

impl TicketStore {
    /// Tickets `1..=count`, all available.
    pub(crate) fn new(count: u64) -> Self {
        let tickets = (1..=count)
            .map(|id| {
                let ticket = Ticket {
                    id,
                    holder: None,
                    fence: 0,
                };
                (id, ticket)
            })
            .collect();
        Self {
            tickets: Mutex::new(tickets),
        }
    }

    /// The ticket `id`, if it exists.
    pub(crate) fn get(&self, id: u64) -> Option<Ticket> {
        self.lock().get(&id).cloned()
    }

    /// Books ticket `id` for `user`, under a lock whose fencing token is
    /// `fence`. The same checks as
    /// `UPDATE tickets SET holder = $3, fence = $2 WHERE id = $1 AND holder IS NULL AND fence < $2`.
    ///
    /// # Errors
    ///
    /// [`BookError::StaleFence`] when a newer holder of the ticket's lock has
    /// written already; [`BookError::AlreadyBooked`] and
    /// [`BookError::NoSuchTicket`] as they say.
    pub(crate) fn book(&self, id: u64, user: &str, fence: u64) -> Result<Ticket, BookError> {
        let mut tickets = self.lock();
        let ticket = tickets.get_mut(&id).ok_or(BookError::NoSuchTicket(id))?;
        if fence <= ticket.fence {
            return Err(BookError::StaleFence {
                id,
                fence,
                last: ticket.fence,
            });
        }
        if ticket.holder.is_some() {
            return Err(BookError::AlreadyBooked { id });
        }
        ticket.holder = Some(user.to_owned());
        ticket.fence = fence;
        Ok(ticket.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Ticket>> {
        // A panic while holding this mutex cannot leave a ticket half
        // written: each write is one assignment of plain values.
        self.tickets.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
