//! The ticket example's seat log: the writes the booking database accepted
//! (rows of `ticket_log`, `examples/ticket_booking/schema.sql`), and the
//! rules they must follow: each seat sold at most once at a time, and the
//! fencing tokens of the writes accepted for a seat strictly rising.
//!
//! This is the example's domain, not the lock checker's: it lives beside the
//! example's tests, and the tests that check bookings under faults
//! (`checker`, `redis_faults`, `redlock_faults`, `redis_durability`, `load`,
//! `workload`) merge its [`Report`] with their lock history's. Its findings
//! are [`Violation::Storage`]s with the rules [`DOUBLE_SALE`] and
//! [`FENCE_NOT_INCREASING`].

use std::collections::BTreeMap;
use std::fmt;

use distlock_testkit::{Report, Violation};

/// The rule "a seat is sold at most once at a time".
pub(crate) const DOUBLE_SALE: &str = "double sale";
/// The rule "the tokens of the writes accepted for a seat strictly rise".
pub(crate) const FENCE_NOT_INCREASING: &str = "fence not increasing";

/// What happened to a seat in one accepted write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SeatAction {
    /// The seat was sold (`'book'` in `ticket_log`).
    Book,
    /// A sale was undone (`'cancel'`).
    Cancel,
}

impl SeatAction {
    /// Parses `ticket_log.action`: `"book"` or `"cancel"`.
    pub(crate) fn parse(action: &str) -> Option<SeatAction> {
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
pub(crate) struct SeatWrite {
    /// Commit order (`ticket_log.seq`).
    pub(crate) seq: i64,
    /// The seat.
    pub(crate) ticket_id: i64,
    /// Book or cancel.
    pub(crate) action: SeatAction,
    /// Who wrote it.
    pub(crate) holder: String,
    /// The fencing token the write carried.
    pub(crate) fence: i64,
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
/// `Book` while sold breaks [`DOUBLE_SALE`]), and the fencing tokens of the
/// writes accepted for a seat strictly increase ([`FENCE_NOT_INCREASING`]).
/// (`checker::seat_log_rules_catch_double_sales_and_stale_fences` shows
/// both on hand-made logs.)
pub(crate) fn check_seat_log(writes: &[SeatWrite]) -> Report {
    let mut sorted: Vec<&SeatWrite> = writes.iter().collect();
    sorted.sort_by_key(|w| w.seq);
    let mut report = Report::default();
    report.counts.storage_writes = writes.len();
    // Per seat: the last accepted write, and the write that sold it if sold.
    let mut seats: BTreeMap<i64, (&SeatWrite, Option<&SeatWrite>)> = BTreeMap::new();
    for write in sorted {
        let sold_by = match seats.get(&write.ticket_id) {
            Some(&(last, sold_by)) => {
                if write.fence <= last.fence {
                    report.violations.push(Violation::Storage {
                        rule: FENCE_NOT_INCREASING,
                        detail: format!("seat {}: {last} then {write}", write.ticket_id),
                    });
                }
                sold_by
            }
            None => None,
        };
        let sold_by = match (write.action, sold_by) {
            (SeatAction::Book, Some(first)) => {
                report.violations.push(Violation::Storage {
                    rule: DOUBLE_SALE,
                    detail: format!("seat {}: {first} and again {write}", write.ticket_id),
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
