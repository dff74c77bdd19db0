//! Stops the shared servers when the test process exits normally: statics are
//! never dropped, and `PR_SET_PDEATHSIG` only fires once the process is gone,
//! too late to remove their directories. Also removes the iptables rules of
//! partitions still in place.

use std::panic;
use std::sync::Once;

/// Registers the exit hook (once per process).
pub(crate) fn register() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: `at_exit` is a plain `extern "C" fn()` that never unwinds.
        // If registration fails the servers still die by PR_SET_PDEATHSIG; only
        // their directories stay behind until the next run sweeps them.
        let _ = unsafe { libc::atexit(at_exit) };
    });
}

extern "C" fn at_exit() {
    // Unwinding out of an `extern "C"` function would abort the process.
    let _ = panic::catch_unwind(|| {
        crate::servers::redis::shutdown_shared();
        crate::cluster::shutdown_shared();
        crate::servers::postgres::shutdown_shared();
        crate::faults::remove_all();
    });
}
