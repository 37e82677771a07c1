//! Stream routes: listing, stat history, and stopping a stream.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, AppPath, AppQuery};
use super::AppState;
use crate::domain::{Stream, StreamStatus};
use crate::health::describe_request_error;
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
    let registry = state.orch.registry.read();
    let streams = registry
        .streams(
            status,
            query.container_id.as_deref().filter(|c| !c.is_empty()),
        )
        .into_iter()
        .cloned()
        .collect();
    Ok(Json(streams))
}

pub async fn get(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<Stream>, ApiError> {
    state
        .orch
        .registry
        .read()
        .stream(&id)
        .cloned()
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
) -> Result<Json<serde_json::Value>, ApiError> {
    let since = match query.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(Timestamp::parse(text).map_err(|_| {
            ApiError::BadRequest(format!(
                "since '{text}' is not an RFC 3339 timestamp with an offset, like 2026-11-28T03:27:46.123Z"
            ))
        })?),
    };
    let registry = state.orch.registry.read();
    let stats = registry
        .stats(&id, since)
        .ok_or_else(|| ApiError::NotFound(format!("stream '{id}' not found")))?;
    Ok(Json(json!(stats)))
}

/// `DELETE /streams/{id}`: asks the engine to stop (`command_url?method=stop`),
/// then ends the stream whatever the engine said: a hung engine must not keep a
/// stream alive in the registry.
pub async fn stop(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let command_url = {
        let registry = state.orch.registry.read();
        let stream = registry
            .stream(&id)
            .ok_or_else(|| ApiError::NotFound(format!("stream '{id}' not found")))?;
        (stream.status == StreamStatus::Started)
            .then(|| stream.command_url.clone())
            .flatten()
    };
    let engine_stop = match command_url {
        None => "no command_url".to_owned(),
        Some(url) => {
            let timeout = state.orch.settings.health_timeout;
            let result = async {
                let mut url = reqwest::Url::parse(&url).map_err(|e| e.to_string())?;
                url.query_pairs_mut().append_pair("method", "stop");
                let response = state
                    .orch
                    .http
                    .get(url)
                    .timeout(timeout)
                    .send()
                    .await
                    .map_err(|e| describe_request_error(&e, timeout))?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("answered HTTP {}", response.status()))
                }
            }
            .await;
            match result {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("error: {e}"),
            }
        }
    };
    let stream = state
        .orch
        .write(|registry, now| registry.stop_stream(&id, "stopped through the API", now))
        .await?;
    Ok(Json(
        json!({ "stream": stream, "engine_stop": engine_stop }),
    ))
}
