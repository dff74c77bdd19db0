//! distlock-testkit's integration tests, in one binary (one link instead of
//! one per file): real servers and real processes, checked from outside.

mod common;
mod dying;
mod link;
mod partition;
mod redis_cluster;
mod servers;
