//! Faults to inject: in a server's process (kill, pause, resume), in the
//! network between client and server (a [`LinkProxy`] that delays,
//! blackholes or cuts), and in the kernel (a [`Partition`] that drops
//! packets).

mod link;
mod partition;
mod signals;

pub use link::{LinkProxy, LinkState};
pub(crate) use partition::remove_all;
pub use partition::{AliasPort, Partition};
