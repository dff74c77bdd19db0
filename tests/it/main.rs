//! distlock's integration tests against real servers, in one test binary
//! (one link instead of one per file; `cargo test --test it <filter>` or
//! `cargo nextest run --test it` picks tests by module path, e.g.
//! `redis_faults::`). Every module still starts the servers it needs.

mod bad_input;
mod cancellation;
mod checker;
mod connect;
mod load;
mod pgbouncer;
mod postgres_faults;
mod redis_durability;
mod redis_faults;
mod redlock_faults;
mod ticket_booking;
mod with_lock_lost;

mod nemesis;
mod workload;
