//! The process-wide shared servers, and their end: they are started on
//! first use and stopped when the test process exits normally (statics are
//! never dropped, and `PR_SET_PDEATHSIG` only fires once the process is
//! gone, too late to remove their directories). The exit hook also removes
//! the iptables rules of partitions still in place.

use std::panic;
use std::sync::{Once, OnceLock};

use crate::error::TestkitError;

/// The shared `server` in `cell`, started by `start` on first use (with the
/// exit hook registered); the first start's error is every caller's.
pub(crate) fn shared<T>(
    cell: &'static OnceLock<Result<T, String>>,
    server: &'static str,
    start: impl FnOnce() -> Result<T, TestkitError>,
) -> Result<&'static T, TestkitError> {
    cell.get_or_init(|| {
        register();
        start().map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|message| TestkitError::SharedUnavailable {
        server,
        message: message.clone(),
    })
}

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
