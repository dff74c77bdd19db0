//! In-process fan-out of "this name may be free now" signals, so waiters retry
//! on a release instead of only on a timer.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::broadcast;

/// A registry of waiters by lock name.
///
/// A backend that learns of releases (its own releases, or a server's
/// notification) calls [`WakeHub::notify`]; waiters hold a [`Wakeup`] from
/// [`WakeHub::subscribe`]. A `Wakeup` is registered the moment it is created,
/// so a waiter that subscribes *before* its acquire attempt cannot miss a
/// release that happens between the attempt and the wait.
///
/// Cloning is cheap and clones share the registry. Entries are removed when
/// the last waiter for a name goes away.
#[derive(Clone, Default)]
pub struct WakeHub {
    waiters: Arc<Mutex<HashMap<String, broadcast::Sender<()>>>>,
}

impl fmt::Debug for WakeHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WakeHub")
            .field("names", &self.len())
            .finish()
    }
}

impl WakeHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers interest in `name`; the returned [`Wakeup`] fires on the next
    /// [`notify`](WakeHub::notify) for that name.
    pub fn subscribe(&self, name: &str) -> Wakeup {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let receiver = match waiters.get(name) {
            Some(sender) => sender.subscribe(),
            None => {
                let (sender, receiver) = broadcast::channel(1);
                waiters.insert(name.to_owned(), sender);
                receiver
            }
        };
        Wakeup {
            receiver,
            registration: Some((self.clone(), name.to_owned())),
        }
    }

    /// Wakes every current waiter on `name`. Cheap when nobody waits.
    pub fn notify(&self, name: &str) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = waiters.get(name) {
            // An error only means every receiver is gone, which is fine.
            let _ = sender.send(());
        }
    }

    /// Wakes every waiter on every name, e.g. after a reconnect, when
    /// notifications may have been missed.
    pub fn notify_all(&self) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        for sender in waiters.values() {
            let _ = sender.send(());
        }
    }

    /// The number of names with at least one waiter.
    pub fn len(&self) -> usize {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// True when no one waits on any name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn unsubscribe(&self, name: &str) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        // The departing receiver is still counted: remove the entry when it is the last.
        if waiters
            .get(name)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            waiters.remove(name);
        }
    }
}

/// A registered wish to be told when a lock name may have become free.
///
/// Created by [`WakeHub::subscribe`] (or by [`Wakeup::never`] for backends
/// that cannot signal). Wake-ups are hints: after one, the waiter simply
/// tries again.
pub struct Wakeup {
    receiver: broadcast::Receiver<()>,
    registration: Option<(WakeHub, String)>,
}

impl fmt::Debug for Wakeup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wakeup")
            .field("name", &self.registration.as_ref().map(|(_, name)| name))
            .finish()
    }
}

impl Wakeup {
    /// A wake-up that never fires; waiting then relies on backoff alone.
    pub fn never() -> Self {
        // With its sender gone the channel is closed, which `woken` treats as "never".
        let (_, receiver) = broadcast::channel(1);
        Wakeup {
            receiver,
            registration: None,
        }
    }

    /// Resolves on the next notification for this name (or one that arrived
    /// since the last call). Never resolves if the hub is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a notification that arrives while no call is pending is
    /// kept for the next call.
    pub async fn woken(&mut self) {
        match self.receiver.recv().await {
            Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        if let Some((hub, name)) = self.registration.take() {
            hub.unsubscribe(&name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notification_sent_before_waiting_is_not_lost() {
        let hub = WakeHub::new();
        let mut wakeup = hub.subscribe("a");
        hub.notify("a");
        tokio::time::timeout(Duration::from_secs(5), wakeup.woken())
            .await
            .expect("the earlier notification must be delivered");
    }

    #[tokio::test]
    async fn other_names_do_not_wake() {
        let hub = WakeHub::new();
        let mut wakeup = hub.subscribe("a");
        hub.notify("b");
        let woken = tokio::time::timeout(Duration::from_millis(50), wakeup.woken()).await;
        assert!(woken.is_err(), "a notification for b woke a waiter on a");
    }

    #[tokio::test]
    async fn entries_go_away_with_their_last_waiter() {
        let hub = WakeHub::new();
        let first = hub.subscribe("a");
        let second = hub.subscribe("a");
        assert_eq!(hub.len(), 1);
        drop(first);
        assert_eq!(hub.len(), 1);
        drop(second);
        assert!(hub.is_empty());
    }

    #[tokio::test]
    async fn never_does_not_fire() {
        let mut wakeup = Wakeup::never();
        let woken = tokio::time::timeout(Duration::from_millis(20), wakeup.woken()).await;
        assert!(woken.is_err());
    }
}
