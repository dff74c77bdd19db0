//! Redis backend for [distlock](https://docs.rs/distlock).
//!
//! The backend itself (`RedisLock`: `SET key token NX PX ttl` with a fencing
//! counter, compare-token release and extend, wake-ups on release) is built
//! on the contract in [`lock_api`]. This crate re-exports the driver it is
//! built on, so users never have to match its version by hand.

pub use lock_api;
pub use redis;
