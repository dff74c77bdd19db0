//! distlock-postgres's integration tests against real PostgreSQL servers, in
//! one test binary (one link instead of one per file).

mod conformance;
mod connect;
mod connection_loss;
mod keys;
mod partition;
mod permissions;
mod pool;
mod tls;
mod ttl;
mod waiting;
mod xact;

mod common;
