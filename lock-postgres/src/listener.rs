//! One `LISTEN` connection per client, turning other clients' release
//! notifications into wake-ups for the waiters in this process.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use distlock_api::{Backoff, WakeHub};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No waiter has asked yet.
    Idle,
    /// The first connection is being made.
    Starting,
    /// `LISTEN` is active.
    Listening,
    /// The connection failed; retrying in the background. Waiters do not
    /// wait for it (backoff covers them meanwhile).
    Reconnecting,
}

/// The listener of one client. Started by the first waiter, stopped when
/// the client's last handle is dropped.
pub(crate) struct Listener {
    inner: Arc<Shared>,
    started: AtomicBool,
    state: watch::Receiver<State>,
}

struct Shared {
    pool: PgPool,
    channel: String,
    hub: WakeHub,
    state: watch::Sender<State>,
    stop: CancellationToken,
}

impl Listener {
    pub(crate) fn new(
        options: PgConnectOptions,
        connect_timeout: Duration,
        channel: String,
        hub: WakeHub,
        stop: CancellationToken,
    ) -> Self {
        // A pool of one, used only so PgListener can reconnect by itself.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(connect_timeout)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_lazy_with(options);
        let (state, receiver) = watch::channel(State::Idle);
        Listener {
            inner: Arc::new(Shared {
                pool,
                channel,
                hub,
                state,
                stop,
            }),
            started: AtomicBool::new(false),
            state: receiver,
        }
    }

    /// Starts listening if nobody has yet, and waits (at most `limit`) for
    /// the first `LISTEN` to be in place, so a waiter that subscribed before
    /// its attempt cannot miss the release that follows it.
    pub(crate) async fn ensure_listening(&self, limit: Duration) {
        if !self.started.swap(true, Ordering::AcqRel) {
            self.inner.state.send_replace(State::Starting);
            tokio::spawn(run(Arc::clone(&self.inner)));
        }
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(
            limit,
            state.wait_for(|s| matches!(s, State::Listening | State::Reconnecting)),
        )
        .await;
    }
}

async fn run(shared: Arc<Shared>) {
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };
    let mut failures: u32 = 0;
    loop {
        let connect = async {
            let mut listener = PgListener::connect_with(&shared.pool).await?;
            listener.listen(&shared.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let connected = tokio::select! {
            () = shared.stop.cancelled() => return,
            connected = connect => connected,
        };
        let mut listener = match connected {
            Ok(listener) => listener,
            Err(err) => {
                tracing::debug!(error = %err, "distlock listener could not connect; retrying");
                shared.state.send_replace(State::Reconnecting);
                let delay = backoff.ceiling(failures);
                failures = failures.saturating_add(1);
                tokio::select! {
                    () = shared.stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        failures = 0;
        shared.state.send_replace(State::Listening);
        // Releases may have gone unannounced while we were not listening.
        shared.hub.notify_all();
        loop {
            let received = tokio::select! {
                () = shared.stop.cancelled() => return,
                received = listener.try_recv() => received,
            };
            match received {
                Ok(Some(notification)) => shared.hub.notify(notification.payload()),
                // The connection dropped and PgListener reconnected.
                Ok(None) => shared.hub.notify_all(),
                Err(err) => {
                    tracing::debug!(error = %err, "distlock listener lost its connection");
                    shared.state.send_replace(State::Reconnecting);
                    shared.hub.notify_all();
                    break;
                }
            }
        }
    }
}
