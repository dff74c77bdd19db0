//! CPU pinning for benchmarks: on a small machine, client and server on
//! different cores give stable latencies instead of a bimodal mix.

use std::fs;

use crate::error::{TestkitError, io_error};

/// The number of CPUs this process may run on.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Pins every thread of process `pid` to `cpu` (threads it starts later
/// inherit the affinity of the thread that starts them).
///
/// # Errors
///
/// [`TestkitError::Io`] when the kernel refuses (no such CPU, no permission).
pub fn pin_process(pid: u32, cpu: usize) -> Result<(), TestkitError> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task"))
        .map_err(io_error(format!("list the threads of process {pid}")))?;
    for task in tasks.flatten() {
        if let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|tid| tid.parse::<i32>().ok())
        {
            set_affinity(tid, cpu)?;
        }
    }
    Ok(())
}

/// Pins the calling thread to `cpu`; threads it starts afterwards (a Tokio
/// runtime built next, for example) inherit it.
///
/// # Errors
///
/// [`TestkitError::Io`] when the kernel refuses.
pub fn pin_current_thread(cpu: usize) -> Result<(), TestkitError> {
    set_affinity(0, cpu)
}

fn set_affinity(tid: i32, cpu: usize) -> Result<(), TestkitError> {
    // SAFETY: `cpu_set_t` is plain data; CPU_ZERO/CPU_SET write within it
    // (CPU_SET ignores indexes past its size), and sched_setaffinity only
    // reads the set we pass with its exact size.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, size_of::<libc::cpu_set_t>(), &set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io_error(format!("pin thread {tid} to CPU {cpu}"))(
            std::io::Error::last_os_error(),
        ))
    }
}

/// For a latency benchmark on a small machine: pins the server process
/// `server_pid` to CPU 0 and the calling thread (and the threads it starts
/// later) to CPU 1, so client and server never share a core. Does nothing
/// on a single-CPU machine; returns whether it pinned.
///
/// # Errors
///
/// [`TestkitError::Io`] when the kernel refuses.
pub fn pin_apart(server_pid: u32) -> Result<bool, TestkitError> {
    if available_cpus() < 2 {
        return Ok(false);
    }
    pin_process(server_pid, 0)?;
    pin_current_thread(1)?;
    Ok(true)
}
