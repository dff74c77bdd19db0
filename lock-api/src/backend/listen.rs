//! One task per client that keeps a server subscription alive and turns
//! its messages into wake-ups: written once here, for every backend.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Backoff, LockError, WakeHub};

/// A server's release notifications, as a [`Listener`] consumes them: Redis
/// `SUBSCRIBE`, PostgreSQL `LISTEN`, an etcd watch, ...
///
/// The implementation knows how to subscribe and how to read one message;
/// the listener owns the loop: reconnecting with jittered backoff, waking
/// every waiter after a gap (releases may have gone by unseen), stopping
/// when the client goes away.
#[async_trait]
pub trait Subscription: Send + 'static {
    /// A live subscription.
    type Feed: Send + 'static;

    /// Connects and subscribes, within the implementation's own connect
    /// timeout. Called again after the feed closes or a subscribe failed.
    async fn subscribe(&mut self) -> Result<Self::Feed, LockError>;

    /// The next message from `feed`.
    async fn next(&mut self, feed: &mut Self::Feed) -> Message;

    /// The server, for logs (never with a password).
    fn target(&self) -> String;
}

/// What a [`Subscription`] read.
#[derive(Debug)]
pub enum Message {
    /// The lock with this key (as the backend names it in its
    /// [`WakeHub`]) was released: wake its first waiter.
    Released(String),
    /// The feed reconnected underneath and messages may have been missed:
    /// wake every waiter, then keep reading.
    Gap,
    /// The feed ended (the connection dropped): wake every waiter and
    /// subscribe again.
    Closed(Option<LockError>),
}

/// Where a [`Listener`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenState {
    /// Not started yet (see [`Listener::start`]).
    Idle,
    /// Subscribing for the first time.
    Starting,
    /// Subscribed: releases are heard.
    Listening,
    /// The subscription failed or dropped; retrying in the background.
    /// Waiters meanwhile rely on backoff.
    Reconnecting,
}

type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Keeps one [`Subscription`] alive in a task of its own and feeds a
/// [`WakeHub`] from it. Created idle; [`start`](Listener::start) (or
/// [`ready`](Listener::ready)) spawns the task, so a client that never
/// waits never holds a subscriber connection. The task stops when the
/// listener is dropped.
pub struct Listener {
    state: watch::Receiver<ListenState>,
    task: Mutex<Option<Task>>,
    stop: CancellationToken,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("state", &self.state())
            .finish()
    }
}

impl Listener {
    /// A listener over `subscription` that wakes `hub`'s waiters, pausing
    /// between resubscribe attempts for `backoff`'s jittered delays. `first`
    /// is a feed the caller already subscribed (for a client that must be
    /// listening before its constructor returns); without it the task
    /// subscribes first thing.
    pub fn new<S: Subscription>(
        subscription: S,
        hub: WakeHub,
        backoff: Backoff,
        first: Option<S::Feed>,
    ) -> Self {
        let stop = CancellationToken::new();
        let initial = if first.is_some() {
            ListenState::Listening
        } else {
            ListenState::Idle
        };
        let (state, receiver) = watch::channel(initial);
        let task = run(subscription, first, hub, backoff, state, stop.clone());
        Listener {
            state: receiver,
            task: Mutex::new(Some(Box::pin(task))),
            stop,
        }
    }

    /// Spawns the task on the current Tokio runtime, once; later calls, and
    /// calls outside a runtime, do nothing.
    pub fn start(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            runtime.spawn(task);
        }
    }

    /// Starts the task if needed and waits, at most `limit`, until the
    /// first subscription is in place or has failed (then waiters rely on
    /// backoff until it is back): a waiter that registered before its
    /// attempt cannot miss the release that follows it.
    pub async fn ready(&self, limit: Duration) {
        self.start();
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(
            limit,
            state.wait_for(|s| matches!(s, ListenState::Listening | ListenState::Reconnecting)),
        )
        .await;
    }

    /// Where the listener is now.
    pub fn state(&self) -> ListenState {
        *self.state.borrow()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn run<S: Subscription>(
    mut subscription: S,
    mut feed: Option<S::Feed>,
    hub: WakeHub,
    backoff: Backoff,
    state: watch::Sender<ListenState>,
    stop: CancellationToken,
) {
    if feed.is_none() {
        state.send_replace(ListenState::Starting);
    }
    let mut failures: u32 = 0;
    loop {
        let mut current = match feed.take() {
            Some(current) => current,
            None => {
                let subscribed = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    subscribed = subscription.subscribe() => subscribed,
                };
                match subscribed {
                    Ok(current) => {
                        failures = 0;
                        // Releases may have gone by while nobody listened.
                        hub.notify_all();
                        current
                    }
                    Err(err) => {
                        tracing::debug!(
                            server = %subscription.target(),
                            error = %err,
                            "cannot subscribe for wake-ups yet; retrying"
                        );
                        state.send_replace(ListenState::Reconnecting);
                        if pause(&backoff, &mut failures, &stop).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        state.send_replace(ListenState::Listening);
        loop {
            let message = tokio::select! {
                biased;
                () = stop.cancelled() => return,
                message = subscription.next(&mut current) => message,
            };
            match message {
                Message::Released(key) => hub.notify(&key),
                Message::Gap => hub.notify_all(),
                Message::Closed(err) => {
                    tracing::debug!(
                        server = %subscription.target(),
                        error = err.as_ref().map(tracing::field::display),
                        "wake-up subscription lost; resubscribing"
                    );
                    state.send_replace(ListenState::Reconnecting);
                    hub.notify_all();
                    break;
                }
            }
        }
        // A short jittered pause even after a good run, so a server that
        // drops subscribers at once is not hammered by every client in step.
        if pause(&backoff, &mut failures, &stop).await.is_err() {
            return;
        }
    }
}

/// Sleeps the next jittered backoff delay; `Err` when stopped meanwhile.
async fn pause(backoff: &Backoff, failures: &mut u32, stop: &CancellationToken) -> Result<(), ()> {
    let delay = backoff.delay(*failures);
    *failures = failures.saturating_add(1);
    tokio::select! {
        () = stop.cancelled() => Err(()),
        () = tokio::time::sleep(delay) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::sync::mpsc;

    /// A feed of messages the test sends; subscribing fails `fail` times first.
    struct Scripted {
        fail: u32,
        subscribes: Arc<AtomicU32>,
        feeds: mpsc::UnboundedReceiver<mpsc::UnboundedReceiver<Message>>,
    }

    #[async_trait]
    impl Subscription for Scripted {
        type Feed = mpsc::UnboundedReceiver<Message>;

        async fn subscribe(&mut self) -> Result<Self::Feed, LockError> {
            self.subscribes.fetch_add(1, Ordering::SeqCst);
            if self.fail > 0 {
                self.fail -= 1;
                return Err(LockError::connection("refused"));
            }
            self.feeds
                .recv()
                .await
                .ok_or_else(|| LockError::connection("no more feeds"))
        }

        async fn next(&mut self, feed: &mut Self::Feed) -> Message {
            feed.recv().await.unwrap_or(Message::Closed(None))
        }

        fn target(&self) -> String {
            "scripted".to_owned()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resubscribes_with_backoff_and_wakes_everyone_after_a_gap() {
        let hub = WakeHub::new();
        let (feeds_tx, feeds) = mpsc::unbounded_channel();
        let subscribes = Arc::new(AtomicU32::new(0));
        let listener = Listener::new(
            Scripted {
                fail: 3,
                subscribes: Arc::clone(&subscribes),
                feeds,
            },
            hub.clone(),
            Backoff::default(),
            None,
        );
        assert_eq!(listener.state(), ListenState::Idle);
        let (tx, rx) = mpsc::unbounded_channel();
        feeds_tx.send(rx).expect("feed");
        let mut a = hub.subscribe("a");
        let mut b = hub.subscribe("b");
        listener.ready(Duration::from_secs(5)).await;
        // Three refusals, then the feed: ready returned on the first refusal.
        tokio::time::timeout(Duration::from_secs(5), async {
            while listener.state() != ListenState::Listening {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
        .expect("subscribed within the backoff");
        assert_eq!(subscribes.load(Ordering::SeqCst), 4);
        // The first subscription woke every waiter: releases may have been missed.
        tokio::time::timeout(Duration::from_secs(1), a.woken())
            .await
            .expect("a woken");
        tokio::time::timeout(Duration::from_secs(1), b.woken())
            .await
            .expect("b woken");
        tx.send(Message::Released("a".into())).expect("send");
        tokio::time::timeout(Duration::from_secs(1), a.woken())
            .await
            .expect("a woken by its release");
        // The feed closes: the listener subscribes again.
        let (tx2, rx2) = mpsc::unbounded_channel();
        feeds_tx.send(rx2).expect("feed");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), b.woken())
            .await
            .expect("b woken by the gap");
        tx2.send(Message::Released("b".into())).expect("send");
        tokio::time::timeout(Duration::from_secs(1), b.woken())
            .await
            .expect("b woken on the new feed");
        assert_eq!(subscribes.load(Ordering::SeqCst), 5);
        drop(listener);
        assert!(
            tx2.is_closed()
                || tokio::time::timeout(Duration::from_secs(1), tx2.closed())
                    .await
                    .is_ok()
        );
    }
}
