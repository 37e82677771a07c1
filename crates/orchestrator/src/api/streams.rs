//! Stream routes: listing, stat history, and stopping a stream.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, AppPath, AppQuery};
use super::AppState;
use crate::domain::{Stream, StreamStatus};
use crate::time::Timestamp;

#[derive(Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    container_id: Option<String>,
}

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

#[derive(Deserialize)]
pub struct StatsQuery {
    since: Option<String>,
}

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
pub async fn stop(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (stream, engine_stop) = state
        .orch
        .stop_stream(&id, "stopped through the API")
        .await?;
    Ok(Json(
        json!({ "stream": stream, "engine_stop": engine_stop }),
    ))
}
