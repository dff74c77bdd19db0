//! The HTTP side: the routes, the booking handler that takes a ticket's
//! lock, and how each `LockError` becomes an HTTP status.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use distlock::{DistributedLock, LockError};
use serde::{Deserialize, Serialize};

use crate::store::{BookError, Ticket, TicketStore};

/// What every handler shares: the lock client (connected once, at start)
/// and the store it protects.
pub(crate) struct AppState {
    /// Any backend: `distlock::connect(url)` picked it from the URL.
    pub(crate) locks: Arc<dyn DistributedLock>,
    /// The tickets.
    pub(crate) store: TicketStore,
    /// How long a ticket's lock lives if its holder dies mid-booking: well
    /// beyond a booking's duration, so a short booking needs no renewal.
    pub(crate) ttl: Duration,
    /// How long a request waits for a ticket's lock before answering 423.
    pub(crate) wait: Duration,
    /// How long the (simulated) payment takes while the lock is held.
    pub(crate) payment: Duration,
}

/// `GET /tickets/{id}` and `POST /tickets/{id}/book`.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/tickets/{id}", get(show))
        .route("/tickets/{id}/book", post(book))
        .with_state(state)
}

/// The body of `POST /tickets/{id}/book`.
#[derive(Debug, Deserialize)]
pub(crate) struct BookRequest {
    /// Who books.
    user: String,
}

async fn show(
    State(app): State<Arc<AppState>>,
    Path(id): Path<u64>,
) -> Result<Json<Ticket>, ApiError> {
    app.store
        .get(id)
        .map(Json)
        .ok_or(ApiError::Book(BookError::NoSuchTicket(id)))
}

/// Books a ticket under the lock `ticket:{id}`.
///
/// If the client hangs up, axum drops this future: the guard is dropped
/// with it and the lock released in the background, so a vanished client
/// does not block the ticket for the TTL.
async fn book(
    State(app): State<Arc<AppState>>,
    Path(id): Path<u64>,
    Json(request): Json<BookRequest>,
) -> Result<Json<Ticket>, ApiError> {
    // One lock per ticket: customers of different tickets never wait for
    // each other. A short wait: "someone is booking it, retry" (423) beats
    // a request that hangs while another customer types a card number.
    let guard = app
        .locks
        .acquire(&format!("ticket:{id}"), app.ttl, app.wait)
        .await?;
    let fence = guard.fencing_token();

    let outcome = async {
        // Checked under the lock, so two customers cannot both see "free".
        match app.store.get(id) {
            None => return Err(ApiError::Book(BookError::NoSuchTicket(id))),
            Some(ticket) if ticket.holder.is_some() => {
                return Err(ApiError::Book(BookError::AlreadyBooked { id }));
            }
            Some(_) => {}
        }
        // The slow part the lock covers: charging the card.
        tokio::time::sleep(app.payment).await;
        // Don't write on a lock we know ran out (the store would refuse the
        // write anyway if someone else has written since; it is the store's
        // fence, not this check, that makes a late write harmless).
        if guard.is_lost() {
            return Err(ApiError::Lock(LockError::Lost));
        }
        app.store
            .book(id, &request.user, fence)
            .map_err(ApiError::Book)
    }
    .await;

    // Release whatever happened, so the next customer need not wait for
    // the TTL. Its result does not change the answer: a booking the store
    // accepted under our fence stands (a later holder's write needs a
    // newer token), and a failed release is freed by the TTL.
    let released = guard.release().await;
    if let (Ok(_), Err(err)) = (&outcome, released) {
        eprintln!("ticket {id}: booked, then the release failed: {err}");
    }
    outcome.map(Json)
}

/// Everything a booking can answer besides success.
#[derive(Debug)]
pub(crate) enum ApiError {
    /// Taking or keeping the ticket's lock failed.
    Lock(LockError),
    /// The store refused the booking.
    Book(BookError),
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApiError::Lock(err) => err.fmt(f),
            ApiError::Book(err) => err.fmt(f),
        }
    }
}

impl From<LockError> for ApiError {
    fn from(err: LockError) -> Self {
        ApiError::Lock(err)
    }
}

/// The JSON body of an error answer.
#[derive(Serialize)]
struct ErrorBody {
    /// A stable code for programs.
    error: &'static str,
    /// A sentence for people.
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // (status, code, seconds to wait before a retry makes sense)
        let (status, error, retry_after) = match &self {
            // Someone else holds the ticket's lock right now.
            ApiError::Lock(LockError::Timeout) => (StatusCode::LOCKED, "ticket_busy", Some(1)),
            // Our lock ran out before our write (a stall, a slow payment),
            // or the store saw a newer holder's write: nothing was booked
            // by this request; the client may try again.
            ApiError::Lock(LockError::Lost) | ApiError::Book(BookError::StaleFence { .. }) => {
                (StatusCode::CONFLICT, "lock_lost", Some(0))
            }
            // The lock server is unreachable: this instance cannot book
            // anything safely just now.
            ApiError::Lock(LockError::Connection(_)) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "lock_server_unavailable",
                Some(1),
            ),
            ApiError::Lock(LockError::Backend(_)) => {
                (StatusCode::BAD_GATEWAY, "lock_server_error", None)
            }
            // Invalid names, TTLs, configuration: a bug in this service.
            ApiError::Lock(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
            ApiError::Book(BookError::AlreadyBooked { .. }) => {
                (StatusCode::CONFLICT, "already_booked", None)
            }
            ApiError::Book(BookError::NoSuchTicket(_)) => {
                (StatusCode::NOT_FOUND, "no_such_ticket", None)
            }
        };
        let message = if status.is_server_error() {
            // The details (server addresses, driver errors) go to the log,
            // not to the customer.
            eprintln!("{status}: {self}");
            "the booking service cannot book right now; try again shortly".to_owned()
        } else {
            self.to_string()
        };
        let mut response = (status, Json(ErrorBody { error, message })).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
