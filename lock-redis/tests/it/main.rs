//! distlock-redis's integration tests against real Redis servers, in one
//! test binary (one link instead of one per file).

mod cluster;
mod conformance;
mod faults;
mod input;
mod redlock;
mod tls;
mod wakeups;
