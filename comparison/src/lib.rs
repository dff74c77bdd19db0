//! The side-by-side comparison run of distlock's Redis and PostgreSQL
//! backends (`scripts/compare.sh`): the pieces the `distlock-compare` binary
//! and the Criterion bench `cycle` share.
//!
//! Everything here measures against throwaway servers started by
//! distlock-testkit; nothing is meant for use outside the comparison run.

pub mod booking;
pub mod charts;
pub mod cpu;
pub mod cyclers;
pub mod hold;
pub mod markdown;
pub mod measure;
pub mod plot;
pub mod report;
pub mod results;
pub mod system;
