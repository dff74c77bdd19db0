//! PostgreSQL advisory-lock backend for [distlock](https://docs.rs/distlock).
//!
//! The backend itself (`PgAdvisoryLock`: `pg_try_advisory_lock` on a
//! connection the guard owns) is built on the contract in [`lock_api`]. This
//! crate re-exports the driver it is built on, so users never have to match
//! its version by hand.

pub use lock_api;
pub use sqlx;
