//! The one subscriber connection per [`RedisLock`](crate::RedisLock) that
//! turns published releases into in-process wake-ups.

use std::time::Duration;

use futures::StreamExt;
use distlock_api::{Backoff, LockError, WakeHub};
use redis::aio::PubSubStream;
use tokio_util::sync::{CancellationToken, DropGuard};

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
/// when the returned guard is dropped.
pub(crate) async fn start(
    clients: Vec<redis::Client>,
    channel: String,
    hub: WakeHub,
    connect_timeout: Duration,
    target: String,
    must_connect: bool,
) -> Result<DropGuard, LockError> {
    let mut first = None;
    let mut next = 0;
    let mut last_error = None;
    for (i, client) in clients.iter().enumerate() {
        match subscribe(client, &channel, connect_timeout, &target).await {
            Ok(stream) => {
                first = Some(stream);
                next = i;
                break;
            }
            Err(err) => last_error = Some(err),
        }
    }
    if first.is_none()
        && must_connect
        && let Some(err) = last_error
    {
        return Err(err);
    }
    let stop = CancellationToken::new();
    let listener = Listener {
        clients,
        next,
        channel,
        hub,
        connect_timeout,
        target,
        stop: stop.clone(),
    };
    tokio::spawn(listener.run(first));
    Ok(stop.drop_guard())
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
    connect_timeout: Duration,
    target: &str,
) -> Result<PubSubStream, LockError> {
    let subscribing = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub.into_on_message())
    };
    match tokio::time::timeout(connect_timeout, subscribing).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(err)) => Err(classify("subscribe", target, err)),
        Err(_) => Err(timed_out("subscribe", target, connect_timeout)),
    }
}

struct Listener {
    clients: Vec<redis::Client>,
    /// The client subscribed through last (tried first on a resubscribe).
    next: usize,
    channel: String,
    hub: WakeHub,
    connect_timeout: Duration,
    target: String,
    stop: CancellationToken,
}

impl Listener {
    async fn run(mut self, first: Option<PubSubStream>) {
        if self.clients.is_empty() {
            return;
        }
        let mut stream = first;
        let backoff = Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let mut failures = 0u32;
        loop {
            if let Some(mut messages) = stream.take() {
                loop {
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return,
                        message = messages.next() => match message {
                            Some(message) => {
                                // The payload is the released lock's key.
                                if let Ok(key) = std::str::from_utf8(message.get_payload_bytes()) {
                                    self.hub.notify(key);
                                }
                            }
                            None => break,
                        },
                    }
                }
                tracing::debug!(server = %self.target, "wake-up subscription lost; resubscribing");
            }
            let delay = backoff.delay(failures);
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            let resubscribed = tokio::select! {
                () = self.stop.cancelled() => return,
                result = subscribe(&self.clients[self.next], &self.channel, self.connect_timeout, &self.target) => result,
            };
            match resubscribed {
                Ok(messages) => {
                    failures = 0;
                    stream = Some(messages);
                    // Releases may have gone by unseen: every waiter looks again.
                    self.hub.notify_all();
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    self.next = (self.next + 1) % self.clients.len();
                    tracing::debug!(server = %self.target, error = %err, "cannot resubscribe for wake-ups yet");
                }
            }
        }
    }
}
