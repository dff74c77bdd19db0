#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
pub mod fencing;

pub use connect::connect;
pub use distlock_api::*;

/// The Redis backend (crate `distlock-redis`), with its driver as
/// `distlock::redis::redis`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use distlock_redis as redis;

/// The PostgreSQL advisory-lock backend (crate `distlock-postgres`), with its
/// driver as `distlock::postgres::sqlx`.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use distlock_postgres as postgres;
