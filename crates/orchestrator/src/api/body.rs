//! Reads every request body whole before a handler answers.
//!
//! A route that takes no body (`POST /gc`), or a request refused before its
//! body is looked at (401, 503), would otherwise be answered while the client
//! is still sending. hyper then closes the connection with unread bytes in the
//! socket, the kernel answers them with a reset, and the reset can discard the
//! response the client had not read yet: the client sees "connection reset"
//! instead of a 4xx with a `detail`. Bodies here are small (the limit is
//! [`super::BODY_LIMIT`]), so reading them first costs nothing worth keeping.
//! A body over the limit is never buffered: it is read and dropped up to
//! [`DRAIN_LIMIT`] so that its 413 arrives, and refused unread beyond that.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use futures::StreamExt;

use super::error::ApiError;
use super::BODY_LIMIT;

/// Bodies above [`BODY_LIMIT`] but below this are read and dropped before
/// the 413 (as nginx's lingering close does), so that a client that sends its
/// whole body before reading, like most HTTP libraries, sees the 413 and its
/// `detail` instead of a connection reset. Larger ones are refused unread: a
/// reset is then the client's answer, and draining stops costing bandwidth.
/// The body timeout bounds the draining too: a body over the limit that is
/// still arriving when it passes gets its 413 then, unread.
const DRAIN_LIMIT: usize = 16 * 1024 * 1024;

/// `router` with every body read whole before it answers. A client gets
/// `timeout` to send a body (at most [`BODY_LIMIT`] bytes); a slower one would
/// hold a connection for nothing (slowloris on the body) and gets 408.
pub fn read_bodies_first(router: Router, timeout: Duration) -> Router {
    router.layer(middleware::from_fn_with_state(timeout, read_whole_body))
}

async fn read_whole_body(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let chunked = request.headers().contains_key(header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        return Ok(next.run(request).await);
    }
    // A client that waits for `100 Continue` has sent nothing yet, and one that
    // declares more than DRAIN_LIMIT is not worth reading to refuse cleanly:
    // both are refused on the declared size alone.
    let waits_for_continue = request.headers().contains_key(header::EXPECT);
    let limit = body_limit(request.uri().path());
    let declared_too_large = |limit: usize| declared.is_some_and(|length| length > limit as u64);
    if declared_too_large(DRAIN_LIMIT) || (waits_for_continue && declared_too_large(limit)) {
        return Err(too_large(limit));
    }
    let (parts, body) = request.into_parts();
    let bytes = collect(body, timeout, limit).await?;
    Ok(next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await)
}

/// The largest body a route takes: [`BODY_LIMIT`], except for the playlists
/// `POST /playlist` rewrites.
fn body_limit(path: &str) -> usize {
    if path == "/playlist" {
        crate::playlist::MAX_BYTES
    } else {
        BODY_LIMIT
    }
}

/// The body's bytes, or 413 when they pass `limit`. A body above the
/// limit is still read (and dropped) up to [`DRAIN_LIMIT`], so that the 413
/// reaches a client that sends its whole body before reading the answer. A
/// body that has not arrived within `timeout` gets 408, or 413 when what came
/// already passes the limit.
async fn collect(body: Body, timeout: Duration, limit: usize) -> Result<Vec<u8>, ApiError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut total = 0;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            if total > limit {
                return Err(too_large(limit));
            }
            return Err(ApiError::Status(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within {:.1} s",
                    timeout.as_secs_f64()
                ),
            ));
        };
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        total += chunk.len();
        if total > DRAIN_LIMIT {
            break;
        }
        if total <= limit {
            bytes.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

fn too_large(limit: usize) -> ApiError {
    ApiError::Status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is larger than the limit of {limit} bytes"),
    )
}
