//! The PostgreSQL side of the wake-up listener: one `LISTEN` session per
//! client, whose notifications name released keys. The loop around it
//! (started by the first waiter, resubscribing with jittered backoff,
//! waking everyone after a gap) is distlock-api's [`Listener`].

use std::time::Duration;

use async_trait::async_trait;
use distlock_api::LockError;
use distlock_api::backend::{Backoff, Listener, Message, Subscription, WakeHub};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::error::from_sqlx;

/// A listener on `channel`, idle until the first waiter calls
/// [`Listener::ready`].
pub(crate) fn listener(
    options: PgConnectOptions,
    connect_timeout: Duration,
    channel: String,
    hub: WakeHub,
) -> Listener {
    // A pool of one, used only so PgListener can reconnect by itself.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(connect_timeout)
        .idle_timeout(None)
        .max_lifetime(None)
        .connect_lazy_with(options);
    let backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(2),
    };
    Listener::new(
        Notifications {
            pool,
            channel,
            connect_timeout,
        },
        hub,
        backoff,
        None,
    )
}

/// `LISTEN` on the release channel.
struct Notifications {
    pool: PgPool,
    channel: String,
    connect_timeout: Duration,
}

#[async_trait]
impl Subscription for Notifications {
    type Feed = PgListener;

    async fn subscribe(&mut self) -> Result<PgListener, LockError> {
        let connect = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match tokio::time::timeout(self.connect_timeout, connect).await {
            Ok(Ok(listener)) => Ok(listener),
            Ok(Err(err)) => Err(from_sqlx(err)),
            Err(_) => Err(LockError::connection(format!(
                "LISTEN was not in place within {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn next(&mut self, feed: &mut PgListener) -> Message {
        match feed.try_recv().await {
            Ok(Some(notification)) => Message::Released(notification.payload().to_owned()),
            // The connection dropped and PgListener reconnected.
            Ok(None) => Message::Gap,
            Err(err) => Message::Closed(Some(from_sqlx(err))),
        }
    }

    fn target(&self) -> String {
        let options = self.pool.connect_options();
        format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
    }
}
