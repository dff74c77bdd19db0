//! Process plumbing under every server: spawning children that die with the
//! test process, the one start → ready → kill-on-failure → stop sequence,
//! ports, logs, /proc inspection and helper commands.

mod command;
mod log;
mod port;
mod proc;
mod server;
mod spawn;
mod stop;

pub(crate) use command::{find_on_path, is_executable, run_checked};
pub(crate) use log::log_tail;
pub(crate) use port::{PortChoice, free_port, with_port};
pub use proc::process_is_alive;
pub(crate) use proc::{descendants, signal_and_wait_stopped, start_time, wait_until};
pub(crate) use server::{Probe, ServerKind, Supervised, Tree, launch};
pub(crate) use stop::kill_child;
