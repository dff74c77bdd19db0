//! A history checker for mutual exclusion: clients record what they did with
//! a lock, and [`History::check`] proves afterwards that no name was
//! definitely held twice at once and that fencing tokens rose.
//!
//! The rules and an example are on [`History`]. The checker knows locks,
//! not what they protect: the ticket example's seat log, which checks the
//! protected data, lives beside the example's tests
//! (`tests/it/ticket_booking/seat_log.rs`).

mod check;
mod model;
mod record;
mod report;

pub use model::{Op, OpId, Outcome};
pub use record::{Held, History};
pub use report::{Counts, Interval, Note, Report, Violation};
