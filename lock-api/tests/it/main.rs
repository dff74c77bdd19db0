//! distlock-api's integration tests, in one test binary (one link instead of
//! one per file). `observability.rs` stays a binary of its own: it installs
//! a global tracing subscriber before any test touches a lock.

mod guard;
mod memory_conformance;
mod suite_catches_broken_backends;
mod wake_queue;

#[path = "../support/mod.rs"]
mod support;
