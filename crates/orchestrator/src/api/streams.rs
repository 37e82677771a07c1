//! Stream routes: listing, stat history, and stopping a stream.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, AppPath, AppQuery};
use super::wire::StreamStopped;
use super::AppState;
use crate::domain::{Stream, StreamStatus};
use crate::time::Timestamp;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only streams with this status; empty = any.
    #[param(value_type = Option<StreamStatus>, inline)]
    status: Option<String>,
    /// Only streams of this engine; empty = any.
    container_id: Option<String>,
}

#[utoipa::path(
    get, path = "/streams", tag = "streams", operation_id = "listStreams",
    summary = "List streams",
    description = "Streams, newest first, optionally filtered. Ended streams are kept in memory up to `ENDED_STREAMS_MAX`.",
    params(ListQuery),
    responses(
        (status = 200, description = "The streams.", body = [Stream]),
        (status = 400, description = "`status` is not one of started, ended.", body = super::error::Detail),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Json<Vec<Stream>>, ApiError> {
    let status = match query.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(StreamStatus::parse(text).ok_or_else(|| {
            ApiError::BadRequest(format!("status '{text}' is not one of started, ended"))
        })?),
    };
    let container_id = query.container_id.as_deref().filter(|c| !c.is_empty());
    let streams = state.orch.read(|r| {
        r.streams(status, container_id)
            .into_iter()
            .cloned()
            .collect()
    });
    Ok(Json(streams))
}

#[utoipa::path(
    get, path = "/streams/{id}", tag = "streams", operation_id = "getStream",
    summary = "Get a stream",
    description = "One stream, started or ended.",
    params(("id" = String, Path, description = "The stream id (`labels.stream_id`, else `{key}|{playback_session_id}`). Percent-encode reserved characters such as `/` (a `url` key contains them).")),
    responses(
        (status = 200, description = "The stream.", body = Stream),
        (status = 404, description = "No such stream.", body = super::error::Detail),
    ),
)]
pub async fn get(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Stream>, ApiError> {
    state
        .orch
        .read(|r| r.stream(&id).cloned())
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("stream '{id}' not found")))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsQuery {
    /// Only snapshots taken strictly after this time (RFC 3339 with an offset,
    /// e.g. `2026-11-28T03:27:46.123Z`).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
}

#[utoipa::path(
    get, path = "/streams/{id}/stats", tag = "streams", operation_id = "getStreamStats",
    summary = "Stat history of a stream",
    description = "The stream's stat snapshots, oldest first, at most `STATS_HISTORY_MAX`.",
    params(("id" = String, Path, description = "The stream id (`labels.stream_id`, else `{key}|{playback_session_id}`). Percent-encode reserved characters such as `/` (a `url` key contains them)."), StatsQuery),
    responses(
        (status = 200, description = "The snapshots (empty when none were taken).", body = [crate::domain::StatSnapshot]),
        (status = 400, description = "`since` is not an RFC 3339 timestamp with an offset.", body = super::error::Detail),
        (status = 404, description = "No such stream.", body = super::error::Detail),
    ),
)]
pub async fn stats(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
    AppQuery(query): AppQuery<StatsQuery>,
) -> Result<axum::response::Response, ApiError> {
    let since = match query.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(Timestamp::parse(text).map_err(|_| {
            ApiError::BadRequest(format!(
                "since '{text}' is not an RFC 3339 timestamp with an offset, like 2026-11-28T03:27:46.123Z"
            ))
        })?),
    };
    state.orch.read(|registry| {
        let stats = registry
            .stats(&id, since)
            .ok_or_else(|| ApiError::NotFound(format!("stream '{id}' not found")))?;
        super::json_response(&stats)
    })
}

/// `DELETE /streams/{id}`: asks the engine to stop (`command_url?method=stop`),
/// then ends the stream whatever the engine said: a hung engine must not keep a
/// stream alive in the registry.
#[utoipa::path(
    delete, path = "/streams/{id}", tag = "streams", operation_id = "stopStream",
    summary = "Stop a stream",
    description = "Asks the engine to stop the stream (`command_url?method=stop`, with the health-check timeout), then ends the stream whatever the engine answered. A stream already ended is answered as it is.",
    params(("id" = String, Path, description = "The stream id (`labels.stream_id`, else `{key}|{playback_session_id}`). Percent-encode reserved characters such as `/` (a `url` key contains them).")),
    responses(
        (status = 200, description = "The ended stream and the engine's answer.", body = super::wire::StreamStopped),
        (status = 404, description = "No such stream.", body = super::error::Detail),
        (status = 503, description = "The change could not be saved to the database; nothing is promised durable.", body = super::error::Detail),
    ),
)]
pub async fn stop(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<StreamStopped>, ApiError> {
    let (stream, engine_stop) = state
        .orch
        .stop_stream(&id, "stopped through the API")
        .await?;
    Ok(Json(StreamStopped {
        stream,
        engine_stop,
    }))
}
