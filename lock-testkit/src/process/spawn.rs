//! Spawns server (and helper) processes that die with the test process, even when it is
//! killed or exits without running destructors.
//!
//! Linux's `PR_SET_PDEATHSIG` sends the child a signal when its parent goes away,
//! but "parent" means the *thread* that forked it: cargo runs every test on its
//! own short-lived thread, and a shared server must outlive that thread. So
//! every spawn happens on one dedicated thread that never exits; callers send
//! it the `Command` and get the `Child` back.
//!
//! The death signal is also cleared by a change of uid or gid. `std` applies
//! `CommandExt::uid`/`gid` before it runs `pre_exec` closures, so setting the
//! signal inside `pre_exec` keeps it for a server started as an unprivileged
//! user (checked: a child started with `uid(65534)` and this closure is killed
//! when the spawning thread exits; one that switches uid after `prctl` is not).

use std::io;
use std::os::unix::process::CommandExt as _;
use std::panic::{self, AssertUnwindSafe};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::sync::mpsc::{self, Sender};
use std::thread;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Starts `command` on the spawner thread; the child receives `death_signal`
/// when the test process dies.
pub(crate) fn spawn_owned(mut command: Command, death_signal: libc::c_int) -> io::Result<Child> {
    let parent = libc::pid_t::try_from(std::process::id()).map_err(io::Error::other)?;
    let signal = libc::c_ulong::try_from(death_signal).map_err(io::Error::other)?;
    let closure = move || {
        // SAFETY: prctl and getppid are async-signal-safe system calls; nothing
        // here allocates or takes a lock, as required between fork and exec.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal, 0, 0, 0) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then no signal
            // will ever come, so refuse to run at all.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
        }
        Ok(())
    };
    // SAFETY: the closure is async-signal-safe (see above).
    unsafe {
        command.pre_exec(closure);
    }

    let (reply_tx, reply_rx) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        // The receiver only goes away if the caller's thread died; nothing to tell then.
        let _ = reply_tx.send(command.spawn());
    });
    spawner()?
        .send(job)
        .map_err(|_| io::Error::other("the distlock-testkit spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| {
        io::Error::other("the distlock-testkit spawner thread dropped a spawn request")
    })?
}

fn spawner() -> io::Result<&'static Sender<Job>> {
    static SPAWNER: OnceLock<Result<Sender<Job>, String>> = OnceLock::new();
    SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            thread::Builder::new()
                .name("lock-testkit-spawner".into())
                .spawn(move || {
                    // The sender lives in a static that is never dropped, so this
                    // loop (and the thread) lasts as long as the process.
                    for job in rx {
                        let _ = panic::catch_unwind(AssertUnwindSafe(job));
                    }
                })
                .map(|_| tx)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            io::Error::other(format!(
                "could not start the distlock-testkit spawner thread: {e}"
            ))
        })
}
