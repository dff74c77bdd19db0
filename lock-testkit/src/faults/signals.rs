//! Faults of a server's process, for every kind of server: a crash
//! (SIGKILL), a freeze (SIGSTOP) and a thaw (SIGCONT), reaching the
//! server's children too when it has them.

use crate::error::{TestkitError, io_error};
use crate::process::{Supervised, Tree, descendants, kill_child, signal_and_wait_stopped};

impl Supervised {
    /// Kills the process (and its tree) with SIGKILL and waits until all are gone.
    pub(crate) fn kill(&mut self) -> Result<(), TestkitError> {
        let tree = self.tree();
        let (child, _) = self.running_mut("kill")?;
        kill_child(child, tree)?;
        *self.state_mut() = Default::default();
        Ok(())
    }

    /// Freezes the process with SIGSTOP (the parent first, so it starts no
    /// new child meanwhile, then every child); a no-op when paused already.
    pub(crate) fn pause(&mut self) -> Result<(), TestkitError> {
        let tree = self.tree();
        let (child, paused) = self.running_mut("pause")?;
        if *paused {
            return Ok(());
        }
        let pid = child.id();
        let stop = |pid| signal_and_wait_stopped(pid, libc::SIGSTOP, true);
        stop(pid).map_err(io_error(format!("could not pause process {pid}")))?;
        if tree == Tree::WithChildren {
            for kid in descendants(pid) {
                stop(kid).map_err(io_error(format!("could not pause child process {kid}")))?;
            }
        }
        *paused = true;
        Ok(())
    }

    /// Lets a paused process run again (SIGCONT, the children first); a
    /// no-op when it is not paused.
    pub(crate) fn resume(&mut self) -> Result<(), TestkitError> {
        let tree = self.tree();
        let (child, paused) = self.running_mut("resume")?;
        if !*paused {
            return Ok(());
        }
        let pid = child.id();
        let thaw = |pid| signal_and_wait_stopped(pid, libc::SIGCONT, false);
        if tree == Tree::WithChildren {
            for kid in descendants(pid) {
                thaw(kid).map_err(io_error(format!("could not resume child process {kid}")))?;
            }
        }
        thaw(pid).map_err(io_error(format!("could not resume process {pid}")))?;
        *paused = false;
        Ok(())
    }
}
