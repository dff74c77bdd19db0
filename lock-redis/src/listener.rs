//! The Redis side of the wake-up listener: how to subscribe to the release
//! channel and read one message. The loop around it (resubscribing with
//! jittered backoff, waking everyone after a gap) is distlock-api's
//! [`Listener`].

use std::time::Duration;

use async_trait::async_trait;
use distlock_api::LockError;
use distlock_api::backend::{Backoff, Listener, Message, Subscription, WakeHub};
use futures::StreamExt;
use redis::aio::PubSubStream;

use crate::error::{classify, timed_out};

/// Subscribes to `channel` and keeps a task listening on it, waking
/// `hub`'s waiters by lock key. `clients` are the servers to subscribe
/// through, tried in turn (a cluster's seed nodes: a message published on
/// any node of a cluster reaches subscribers on every node); one is enough.
///
/// With `must_connect`, returns once a subscription is confirmed (so every
/// release published after `connect` returns is seen), or the error of the
/// last server tried. Without it, a failed first subscription is retried in
/// the background (a Redlock node that is down at start). The task stops
/// when the returned listener is dropped.
pub(crate) async fn start(
    clients: Vec<redis::Client>,
    channel: String,
    hub: WakeHub,
    connect_timeout: Duration,
    target: String,
    must_connect: bool,
) -> Result<Listener, LockError> {
    let mut releases = Releases {
        clients,
        next: 0,
        channel,
        connect_timeout,
        target,
    };
    let first = match releases.subscribe().await {
        Ok(feed) => Some(feed),
        Err(err) if must_connect => return Err(err),
        Err(_) => None,
    };
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };
    let listener = Listener::new(releases, hub, backoff, first);
    listener.start();
    Ok(listener)
}

/// The release channel on one server of a list.
struct Releases {
    clients: Vec<redis::Client>,
    /// The client to subscribe through next (the last one that worked
    /// first; the next one after a failure).
    next: usize,
    channel: String,
    connect_timeout: Duration,
    target: String,
}

#[async_trait]
impl Subscription for Releases {
    type Feed = PubSubStream;

    /// Tries each client once, starting with the last one that worked.
    async fn subscribe(&mut self) -> Result<PubSubStream, LockError> {
        let mut last_error = LockError::InvalidConfig("no server to subscribe through".into());
        for _ in 0..self.clients.len() {
            let client = &self.clients[self.next];
            let subscribing = async {
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(&self.channel).await?;
                Ok(pubsub.into_on_message())
            };
            match tokio::time::timeout(self.connect_timeout, subscribing).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => last_error = classify("subscribe", &self.target, err),
                Err(_) => last_error = timed_out("subscribe", &self.target, self.connect_timeout),
            }
            self.next = (self.next + 1) % self.clients.len();
        }
        Err(last_error)
    }

    async fn next(&mut self, feed: &mut PubSubStream) -> Message {
        loop {
            match feed.next().await {
                // The payload is the released lock's key.
                Some(message) => match std::str::from_utf8(message.get_payload_bytes()) {
                    Ok(key) => return Message::Released(key.to_owned()),
                    Err(_) => continue,
                },
                None => return Message::Closed(None),
            }
        }
    }

    fn target(&self) -> String {
        self.target.clone()
    }
}
