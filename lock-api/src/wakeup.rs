//! In-process hand-off of "this name may be free now" signals, so waiters
//! retry on a release instead of only on a timer.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// A registry of waiters by lock name, served first come, first served.
///
/// A backend that learns of releases (its own releases, or a server's
/// notification) calls [`WakeHub::notify`]; waiters hold a [`Wakeup`] from
/// [`WakeHub::subscribe`]. A `Wakeup` is registered the moment it is created,
/// so a waiter that subscribes *before* its acquire attempt cannot miss a
/// release that happens between the attempt and the wait.
///
/// A release frees a lock for one holder, so [`notify`](WakeHub::notify)
/// wakes one waiter: the longest-registered one that has not been woken
/// yet. The others sleep on, instead of all racing for a lock only one can
/// win; and a waiter keeps its place in the queue across its attempts, so
/// waiters of one process are served in arrival order. A waiter that leaves
/// after being woken without taking the lock (timed out, cancelled, failed)
/// passes its wake-up on to the next one; and when the first in line leaves
/// (with the lock or without), the next one is woken to take its place.
///
/// Cloning is cheap and clones share the registry. Entries are removed when
/// the last waiter for a name goes away.
#[derive(Clone, Default)]
pub struct WakeHub {
    waiters: Arc<Mutex<HashMap<String, VecDeque<Arc<Slot>>>>>,
}

/// One waiter's mailbox.
#[derive(Default)]
struct Slot {
    /// A wake-up was delivered and not yet taken.
    pending: AtomicBool,
    notify: Notify,
}

impl Slot {
    fn wake(&self) {
        self.pending.store(true, Ordering::Release);
        self.notify.notify_one();
    }
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

    /// Registers interest in `name`, behind the waiters already registered;
    /// the returned [`Wakeup`] fires when a [`notify`](WakeHub::notify) for
    /// that name reaches it.
    pub fn subscribe(&self, name: &str) -> Wakeup {
        let slot = Arc::new(Slot::default());
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        match waiters.get_mut(name) {
            Some(queue) => queue.push_back(slot.clone()),
            None => {
                waiters.insert(name.to_owned(), VecDeque::from([slot.clone()]));
            }
        }
        Wakeup {
            slot,
            registration: Some((self.clone(), name.to_owned())),
        }
    }

    /// Wakes the first waiter on `name` that has no wake-up pending. Cheap
    /// when nobody waits.
    pub fn notify(&self, name: &str) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = waiters.get(name) {
            wake_first_idle(queue);
        }
    }

    /// Wakes every waiter on every name, e.g. after a reconnect, when
    /// notifications may have been missed.
    pub fn notify_all(&self) {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        for slot in waiters.values().flatten() {
            slot.wake();
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

    /// True when at least one waiter is registered for `name`.
    ///
    /// ```
    /// use distlock_api::backend::WakeHub;
    ///
    /// let hub = WakeHub::new();
    /// let wakeup = hub.subscribe("ticket:42");
    /// assert!(hub.is_waiting("ticket:42"));
    /// drop(wakeup);
    /// assert!(!hub.is_waiting("ticket:42"));
    /// ```
    pub fn is_waiting(&self, name: &str) -> bool {
        self.waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(name)
    }

    /// Whether `slot` is at the head of `name`'s queue.
    fn is_first(&self, name: &str, slot: &Arc<Slot>) -> bool {
        let waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters
            .get(name)
            .and_then(VecDeque::front)
            .is_none_or(|first| Arc::ptr_eq(first, slot))
    }

    /// Removes `slot`. If it was first in line, or leaves with a wake-up it
    /// did not use, the waiter now first in line is woken: to take the lock
    /// if it is free, or else to tell the server someone still waits.
    fn unsubscribe(&self, name: &str, slot: &Arc<Slot>) {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(queue) = waiters.get_mut(name) else {
            return;
        };
        let was_first = queue.front().is_some_and(|first| Arc::ptr_eq(first, slot));
        queue.retain(|other| !Arc::ptr_eq(other, slot));
        if queue.is_empty() {
            waiters.remove(name);
        } else if was_first || slot.pending.load(Ordering::Acquire) {
            wake_first_idle(queue);
        }
    }
}

fn wake_first_idle(queue: &VecDeque<Arc<Slot>>) {
    if let Some(slot) = queue
        .iter()
        .find(|slot| !slot.pending.load(Ordering::Acquire))
    {
        slot.wake();
    }
}

/// A registered wish to be told when a lock name may have become free.
///
/// Created by [`WakeHub::subscribe`] (or by [`Wakeup::never`] for backends
/// that cannot signal). Wake-ups are hints: after one, the waiter simply
/// tries again. Dropping it leaves the queue.
pub struct Wakeup {
    slot: Arc<Slot>,
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
        Wakeup {
            slot: Arc::new(Slot::default()),
            registration: None,
        }
    }

    /// Resolves on the next notification that reaches this waiter (or one
    /// that arrived since the last call). Never resolves for
    /// [`Wakeup::never`].
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a notification that arrives while no call is pending is
    /// kept for the next call.
    pub async fn woken(&mut self) {
        if self.registration.is_none() {
            return std::future::pending().await;
        }
        self.slot.notify.notified().await;
        self.slot.pending.store(false, Ordering::Release);
    }

    /// True when no waiter registered earlier on this name is still
    /// waiting: this one is next in line. Always true for [`Wakeup::never`].
    pub fn is_first(&self) -> bool {
        match &self.registration {
            Some((hub, name)) => hub.is_first(name, &self.slot),
            None => true,
        }
    }
}

impl Drop for Wakeup {
    fn drop(&mut self) {
        if let Some((hub, name)) = self.registration.take() {
            hub.unsubscribe(&name, &self.slot);
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
    async fn one_release_wakes_one_waiter_in_arrival_order() {
        let hub = WakeHub::new();
        let mut first = hub.subscribe("a");
        let mut second = hub.subscribe("a");
        hub.notify("a");
        let quiet = tokio::time::timeout(Duration::from_millis(20), second.woken()).await;
        assert!(
            quiet.is_err(),
            "the second waiter was woken before the first"
        );
        tokio::time::timeout(Duration::from_secs(5), first.woken())
            .await
            .expect("the first waiter is woken");
        assert!(first.is_first() && !second.is_first());
        // The first keeps its place: the next release is its again.
        hub.notify("a");
        tokio::time::timeout(Duration::from_secs(5), first.woken())
            .await
            .expect("the first waiter is woken again");
    }

    #[tokio::test]
    async fn the_next_in_line_is_woken_when_the_first_leaves() {
        let hub = WakeHub::new();
        let first = hub.subscribe("a");
        let mut second = hub.subscribe("a");
        let mut third = hub.subscribe("a");
        drop(first); // took the lock, timed out or was cancelled
        assert!(second.is_first());
        tokio::time::timeout(Duration::from_secs(5), second.woken())
            .await
            .expect("the new first in line is woken");
        let quiet = tokio::time::timeout(Duration::from_millis(20), third.woken()).await;
        assert!(quiet.is_err(), "only the new first in line is woken");

        // A waiter further back leaving changes nothing for the others.
        let fourth = hub.subscribe("a");
        drop(fourth);
        let quiet = tokio::time::timeout(Duration::from_millis(20), third.woken()).await;
        assert!(quiet.is_err());
    }

    #[tokio::test]
    async fn an_unused_wakeup_is_passed_on() {
        let hub = WakeHub::new();
        let mut first = hub.subscribe("a");
        let second = hub.subscribe("a");
        let mut third = hub.subscribe("a");
        hub.notify("a");
        hub.notify("a"); // the first has one pending: the second gets this one
        drop(second); // leaves without using it
        tokio::time::timeout(Duration::from_secs(5), first.woken())
            .await
            .expect("first woken");
        tokio::time::timeout(Duration::from_secs(5), third.woken())
            .await
            .expect("the unused wake-up reached the third");
    }

    #[tokio::test]
    async fn notify_all_wakes_everyone() {
        let hub = WakeHub::new();
        let mut waiters: Vec<_> = ["a", "a", "b"]
            .iter()
            .map(|name| hub.subscribe(name))
            .collect();
        hub.notify_all();
        for waiter in &mut waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter.woken())
                .await
                .expect("every waiter is woken");
        }
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
