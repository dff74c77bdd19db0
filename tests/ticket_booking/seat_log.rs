//! The ticket example's seat log: the writes the booking database accepted
//! (rows of `ticket_log`, `examples/ticket_booking/schema.sql`), and the
//! rules they must follow: each seat sold at most once at a time, and the
//! fencing tokens of the writes accepted for a seat strictly rising.
//!
//! This is the example's domain, not the lock checker's: it lives beside the
//! example's tests. `distlock-testkit` compiles it in (with `#[path]`) and
//! re-exports it, because the root tests that check bookings under faults
//! (`tests/checker.rs`, `redis_faults.rs`, `redlock_faults.rs`,
//! `redis_durability.rs`, `load.rs`, `workload/`) import it from there, and
//! their [`Report`]s merge a history's findings with the seat log's.

use std::collections::BTreeMap;
use std::fmt;

use distlock_testkit::{Report, Violation};

/// What happened to a seat in one accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SeatAction {
    /// The seat was sold (`'book'` in `ticket_log`).
    Book,
    /// A sale was undone (`'cancel'`).
    Cancel,
}

impl SeatAction {
    /// Parses `ticket_log.action`: `"book"` or `"cancel"`.
    pub fn parse(action: &str) -> Option<SeatAction> {
        match action {
            "book" => Some(SeatAction::Book),
            "cancel" => Some(SeatAction::Cancel),
            _ => None,
        }
    }
}

/// One write the protected storage accepted: a row of `ticket_log`
/// (`examples/ticket_booking/schema.sql`), independent of any driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatWrite {
    /// Commit order (`ticket_log.seq`).
    pub seq: i64,
    /// The seat.
    pub ticket_id: i64,
    /// Book or cancel.
    pub action: SeatAction,
    /// Who wrote it.
    pub holder: String,
    /// The fencing token the write carried.
    pub fence: i64,
}

impl fmt::Display for SeatWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{} {:?} by {:?} with token {}",
            self.seq, self.action, self.holder, self.fence
        )
    }
}

/// Checks the database side of a booking run: over the accepted writes in
/// commit order (`seq`), each seat is sold at most once at a time (a
/// `Book` while sold is a [`Violation::DoubleSale`]), and the fencing
/// tokens of the writes accepted for a seat strictly increase
/// ([`Violation::FenceNotIncreasing`]).
///
/// ```
/// use distlock_testkit::{SeatAction, SeatWrite, check_seat_log};
///
/// let write = |seq, fence, action| SeatWrite {
///     seq, ticket_id: 7, action, holder: format!("client-{fence}"), fence,
/// };
/// let good = [write(1, 1, SeatAction::Book), write(2, 2, SeatAction::Cancel), write(3, 3, SeatAction::Book)];
/// check_seat_log(&good).assert_ok();
/// let sold_twice = [write(1, 1, SeatAction::Book), write(2, 2, SeatAction::Book)];
/// assert_eq!(check_seat_log(&sold_twice).violations.len(), 1);
/// ```
pub fn check_seat_log(writes: &[SeatWrite]) -> Report {
    let mut sorted: Vec<&SeatWrite> = writes.iter().collect();
    sorted.sort_by_key(|w| w.seq);
    let mut report = Report::default();
    report.counts.seat_writes = writes.len();
    // Per seat: the last accepted write, and the write that sold it if sold.
    let mut seats: BTreeMap<i64, (&SeatWrite, Option<&SeatWrite>)> = BTreeMap::new();
    for write in sorted {
        let sold_by = match seats.get(&write.ticket_id) {
            Some(&(last, sold_by)) => {
                if write.fence <= last.fence {
                    report.violations.push(Violation::FenceNotIncreasing {
                        ticket_id: write.ticket_id,
                        earlier: last.clone(),
                        later: write.clone(),
                    });
                }
                sold_by
            }
            None => None,
        };
        let sold_by = match (write.action, sold_by) {
            (SeatAction::Book, Some(first)) => {
                report.violations.push(Violation::DoubleSale {
                    ticket_id: write.ticket_id,
                    first: first.clone(),
                    second: write.clone(),
                });
                Some(first)
            }
            (SeatAction::Book, None) => Some(write),
            (SeatAction::Cancel, _) => None,
        };
        seats.insert(write.ticket_id, (write, sold_by));
    }
    report.counts.violations = report.violations.len();
    report
}
