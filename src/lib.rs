#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod connect;
pub mod fencing;

pub use connect::connect;
pub use lock_api::*;

/// The Redis backend (crate `lock-redis`), with its driver as
/// `distlock::redis::redis`.
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use lock_redis as redis;

/// The PostgreSQL advisory-lock backend (crate `lock-postgres`), with its
/// driver as `distlock::postgres::sqlx`.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use lock_postgres as postgres;
