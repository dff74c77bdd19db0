//! The one way every kind of server runs: spawn, ready check, kill on
//! failure; then stop. A kind ([`ServerKind`]) only says what is its own:
//! its command line and its readiness probe.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};
use std::thread;
use std::time::{Duration, Instant};

use super::log::{Log, log_tail};
use super::proc::is_unreaped;
use super::spawn::spawn_owned;
use super::stop::{kill_child, terminate_child};
use crate::error::{TestkitError, io_error};

/// What one readiness probe found.
#[derive(Debug)]
pub(crate) enum Probe {
    /// The server serves.
    Ready,
    /// Not yet: probe again after a nap.
    NotYet,
    /// It never will: give up now, for this reason (shown above its log).
    Failed(String),
}

/// Whether stops and faults reach only the server's process or its
/// children too (a postmaster and its backends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tree {
    /// One process.
    Single,
    /// A process and everything it forked.
    WithChildren,
}

/// What is specific to one kind of server.
pub(crate) trait ServerKind {
    /// The program, as errors name it ("redis-server").
    const NAME: &'static str;
    /// What stops and faults must reach.
    const TREE: Tree = Tree::Single;
    /// What the kernel sends the server when the test process dies.
    const DEATH_SIGNAL: libc::c_int = libc::SIGKILL;
    /// The longest nap between two readiness probes.
    const MAX_NAP: Duration = Duration::from_millis(20);

    /// The command that runs the server on `port` (the spawner sets its
    /// stdio); prepares whatever that start needs first (configuration,
    /// stale files).
    fn command(&self, port: u16) -> Result<Command, TestkitError>;

    /// One readiness probe of the server on `port`.
    fn probe(&self, port: u16) -> Probe;

    /// Where the server's output goes (appended across restarts).
    fn log_path(&self) -> &Path;

    /// How long a start may take.
    fn ready_timeout(&self) -> Duration;
}

/// Starts `kind` on `port` and waits until it is ready; a server that is
/// not ready in time, or exits, is killed (with its children) and the error
/// shows the end of its log ([`TestkitError::PortInUse`] when the port was
/// taken, for [`with_port`](super::with_port) to try again).
pub(crate) fn launch<K: ServerKind>(kind: &K, port: u16) -> Result<Child, TestkitError> {
    let log_path = kind.log_path();
    let log = Log::open(log_path)?;
    let (stdout, stderr) = log.stdio()?;
    let mut command = kind.command(port)?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    let program = Path::new(command.get_program()).display().to_string();
    let mut child = spawn_owned(command, K::DEATH_SIGNAL)
        .map_err(io_error(format!("could not run {program}")))?;
    match wait_ready(kind, &mut child, port, log.offset) {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = kill_child(&mut child, K::TREE);
            Err(e)
        }
    }
}

fn wait_ready<K: ServerKind>(
    kind: &K,
    child: &mut Child,
    port: u16,
    log_offset: u64,
) -> Result<(), TestkitError> {
    let timeout = kind.ready_timeout();
    let log_path = kind.log_path();
    let not_ready = |reason: Option<String>| {
        let tail = log_tail(log_path, log_offset);
        TestkitError::NotReady {
            server: K::NAME,
            port,
            timeout,
            log_tail: reason.map_or_else(|| tail.clone(), |reason| format!("{reason}\n{tail}")),
        }
    };
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_error(format!("could not check on {}", K::NAME)))?
        {
            let log_tail = log_tail(log_path, log_offset);
            return Err(if log_tail.contains("Address already in use") {
                TestkitError::PortInUse {
                    server: K::NAME,
                    port,
                    log_tail,
                }
            } else {
                TestkitError::Exited {
                    server: K::NAME,
                    port,
                    status: status.to_string(),
                    log_tail,
                }
            });
        }
        match kind.probe(port) {
            Probe::Ready => return Ok(()),
            Probe::Failed(reason) => return Err(not_ready(Some(reason))),
            Probe::NotYet => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(not_ready(None));
        }
        thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(K::MAX_NAP);
    }
}

/// The process behind a running server (if any) and whether it is paused,
/// behind a mutex so that `&self` queries work on a shared server.
#[derive(Debug)]
pub(crate) struct Supervised {
    name: &'static str,
    tree: Tree,
    state: Mutex<ProcessState>,
}

/// A server's process, when it has one.
#[derive(Debug, Default)]
pub(crate) struct ProcessState {
    pub(crate) child: Option<Child>,
    pub(crate) paused: bool,
}

impl Supervised {
    /// The handle of a server of kind `K` that runs as `child`.
    pub(crate) fn new<K: ServerKind>(child: Child) -> Self {
        Self {
            name: K::NAME,
            tree: K::TREE,
            state: Mutex::new(ProcessState {
                child: Some(child),
                paused: false,
            }),
        }
    }

    /// Whether stops and faults reach the children too.
    pub(crate) fn tree(&self) -> Tree {
        self.tree
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state, for the fault handles (which hold `&mut` of the server).
    pub(crate) fn state_mut(&mut self) -> &mut ProcessState {
        self.state.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    /// The running child, or [`TestkitError::InvalidState`] for `action`.
    pub(crate) fn running_mut(
        &mut self,
        action: &'static str,
    ) -> Result<(&mut Child, &mut bool), TestkitError> {
        let name = self.name;
        let state = self.state_mut();
        match state.child.as_mut() {
            Some(child) => Ok((child, &mut state.paused)),
            None => Err(TestkitError::InvalidState {
                server: name,
                action,
                state: "not running",
            }),
        }
    }

    /// The server's pid, while it has a process.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().child.as_ref().map(Child::id)
    }

    /// Whether the process runs (paused counts as running).
    pub(crate) fn is_running(&self) -> bool {
        self.lock().child.as_mut().is_some_and(is_unreaped)
    }

    /// Whether the process is paused by a fault.
    pub(crate) fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Takes `child` as the server's process (after a restart).
    pub(crate) fn set_running(&mut self, child: Child) {
        *self.state_mut() = ProcessState {
            child: Some(child),
            paused: false,
        };
    }

    /// Stops the server: `sig`, then SIGKILL after `grace`; with no signal,
    /// SIGKILL at once. A no-op when it has no process.
    pub(crate) fn stop(
        &mut self,
        signal: Option<(libc::c_int, Duration)>,
    ) -> Result<(), TestkitError> {
        let tree = self.tree;
        let state = self.state_mut();
        let result = match state.child.as_mut() {
            Some(child) => stop_child(child, tree, signal),
            None => Ok(()),
        };
        *state = ProcessState::default();
        result
    }

    /// [`stop`](Self::stop) for a server that lives in a static (never
    /// dropped): skipped, returning false, when another thread holds its
    /// process handle.
    pub(crate) fn stop_shared(&self, signal: Option<(libc::c_int, Duration)>) -> bool {
        let mut state = match self.state.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if let Some(child) = state.child.as_mut() {
            let _ = stop_child(child, self.tree, signal);
        }
        *state = ProcessState::default();
        true
    }
}

fn stop_child(
    child: &mut Child,
    tree: Tree,
    signal: Option<(libc::c_int, Duration)>,
) -> Result<(), TestkitError> {
    match signal {
        Some((sig, grace)) => terminate_child(child, tree, sig, grace),
        None => kill_child(child, tree),
    }
}
