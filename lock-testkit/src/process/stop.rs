//! Ending a server's process, alone or with everything it forked: a clean
//! shutdown signal with a grace period, or SIGKILL at once.

use std::process::Child;
use std::time::Duration;

use super::proc::{
    descendants, is_unreaped, process_is_alive, signal, start_time, wait_child, wait_until,
};
use super::server::Tree;
use crate::error::{TestkitError, io_error};

/// How long the children of a killed process may take to go.
const CHILDREN_GONE: Duration = Duration::from_secs(5);

/// SIGKILLs `child` (and, for a tree, all its descendants), reaps it, and
/// waits until the descendants are gone.
pub(crate) fn kill_child(child: &mut Child, tree: Tree) -> Result<(), TestkitError> {
    let mut kids = Vec::new();
    if is_unreaped(child) {
        let pid = child.id();
        if tree == Tree::WithChildren {
            // Frozen, the parent can neither start a child we would miss nor
            // reap one (so no pid below is reused before our SIGKILL).
            let _ = signal(pid, libc::SIGSTOP);
            kids = descendants(pid);
        }
        let _ = signal(pid, libc::SIGKILL);
        for &kid in &kids {
            let _ = signal(kid, libc::SIGKILL);
        }
    }
    child.wait().map_err(io_error(format!(
        "could not wait for process {} to exit",
        child.id()
    )))?;
    if wait_until(CHILDREN_GONE, || {
        kids.iter().all(|&kid| !process_is_alive(kid))
    }) {
        Ok(())
    } else {
        Err(TestkitError::Other(format!(
            "processes {kids:?} were still alive 5 s after SIGKILL"
        )))
    }
}

/// Asks `child` to shut down with `sig`, waits `grace`, then kills it (and
/// its tree). A paused process is woken first, or it would keep the signal
/// pending.
pub(crate) fn terminate_child(
    child: &mut Child,
    tree: Tree,
    sig: libc::c_int,
    grace: Duration,
) -> Result<(), TestkitError> {
    if !is_unreaped(child) {
        return kill_child(child, Tree::Single);
    }
    let pid = child.id();
    let kids: Vec<(u32, Option<u64>)> = match tree {
        Tree::Single => Vec::new(),
        Tree::WithChildren => descendants(pid)
            .into_iter()
            .map(|kid| (kid, start_time(kid)))
            .collect(),
    };
    for &(kid, _) in &kids {
        let _ = signal(kid, libc::SIGCONT);
    }
    let _ = signal(pid, sig);
    let _ = signal(pid, libc::SIGCONT);
    if wait_child(child, grace)
        .map_err(io_error(format!("could not wait for process {pid}")))?
        .is_none()
    {
        return kill_child(child, tree);
    }
    // A parent such as the postmaster waits for its children before it
    // exits; this is a safety net. Their pids may have been reused by now:
    // only a process with the same start time is still ours.
    if !wait_until(grace, || {
        kids.iter().all(|&(kid, _)| !process_is_alive(kid))
    }) {
        for &(kid, started) in &kids {
            if started.is_some() && start_time(kid) == started {
                let _ = signal(kid, libc::SIGKILL);
            }
        }
    }
    Ok(())
}
