//! Engine routes: the registry, health history, manual checks and selection.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::error::{ApiError, AppJson, AppPath};
use super::{json_response, AppState};
use crate::domain::{CheckSource, Stream};
use crate::engine_client::millis;
use crate::health;
use crate::time::Timestamp;

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Serialized under the read lock: no copies of 1,000 engines, and the lock is
    // held for the time of one serialization, never across I/O.
    let body = state
        .orch
        .read(|r| r.engines_json(Timestamp::now()))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(serde::Serialize)]
struct EngineWithStreams<'a> {
    engine: crate::registry::EngineView<'a>,
    streams: Vec<&'a Stream>,
}

pub async fn get(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    state.orch.read(|registry| {
        let engine = registry
            .engine_view(&id, Timestamp::now())
            .ok_or_else(|| ApiError::NotFound(format!("engine '{id}' not found")))?;
        let streams: Vec<&Stream> = engine
            .streams
            .iter()
            .filter_map(|sid| registry.stream(sid))
            .collect();
        json_response(&EngineWithStreams { engine, streams })
    })
}

#[derive(Deserialize)]
pub struct RegisterBody {
    host: String,
    port: i64,
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

pub fn valid_port(field: &str, port: i64) -> Result<u16, ApiError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::Unprocessable(format!("{field} {port} is out of range (1-65535)")))
}

pub fn valid_host(field: &str, host: &str) -> Result<(), ApiError> {
    let host = host.trim();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "{field} '{host}' is not a host name or IP address"
        )))
    }
}

/// `POST /engines`: registers an engine we do not run. Registering the same
/// address again answers the existing engine (200) instead of a duplicate.
pub async fn register(
    State(state): State<AppState>,
    AppJson(body): AppJson<RegisterBody>,
) -> Result<Response, ApiError> {
    valid_host("host", &body.host)?;
    let port = valid_port("port", body.port)?;
    let (id, created) = state
        .orch
        .register_engine(body.host.trim(), port, body.name, body.labels)
        .await?;
    let view = engine_json(&state, &id)?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, [(header::CONTENT_TYPE, "application/json")], view).into_response())
}

/// `DELETE /engines/{id}`: forgets an engine; its streams end.
pub async fn remove(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let engine = state
        .orch
        .forget_engine(&id, "engine removed through the API")
        .await?;
    tracing::info!(engine = %id, "engine removed");
    Ok(Json(
        json!({ "deleted": true, "container_id": engine.container_id }),
    ))
}

pub async fn health_history(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    state.orch.read(|registry| {
        let history = registry
            .health_history(&id)
            .ok_or_else(|| ApiError::NotFound(format!("engine '{id}' not found")))?;
        json_response(&history)
    })
}

/// `POST /engines/{id}/health/check`: probes now and answers with the verdict.
pub async fn check_one(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Response, ApiError> {
    let (_, outcome) = state
        .orch
        .check_engine(&id, CheckSource::Manual)
        .await
        .ok_or_else(|| ApiError::NotFound(format!("engine '{id}' not found")))?;
    state.orch.read(|registry| {
        let engine = registry.engine_view(&id, Timestamp::now()).ok_or_else(|| {
            ApiError::NotFound(format!("engine '{id}' was removed during the check"))
        })?;
        json_response(&Checked {
            engine,
            check: Verdict {
                ok: outcome.ok,
                latency_ms: millis(outcome.latency),
                error: outcome.error.as_deref(),
            },
        })
    })
}

/// `POST /engines/{id}/health/check`'s answer.
#[derive(serde::Serialize)]
struct Checked<'a> {
    engine: crate::registry::EngineView<'a>,
    check: Verdict<'a>,
}

#[derive(serde::Serialize)]
struct Verdict<'a> {
    ok: bool,
    latency_ms: f64,
    error: Option<&'a str>,
}

/// `POST /health/check`: a sweep over every engine, now.
pub async fn check_all(State(state): State<AppState>) -> Json<health::SweepReport> {
    Json(health::sweep(&state.orch, CheckSource::Manual).await)
}

#[derive(Deserialize, Default)]
struct SelectBody {
    max_streams_per_engine: Option<i64>,
}

/// `POST /engines/select`: picks and reserves the best engine. The body is
/// optional (`{}` or nothing uses `MAX_STREAMS_PER_ENGINE`).
pub async fn select(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(ApiError::from)?;
    let body: SelectBody = if body.iter().all(u8::is_ascii_whitespace) {
        SelectBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Unprocessable(format!(
                "the body does not fit {{\"max_streams_per_engine\"?: int}}: {e}"
            ))
        })?
    };
    let max = match body.max_streams_per_engine {
        None => state.orch.settings.max_streams_per_engine,
        Some(n) if (1..=10_000).contains(&n) => n as u32,
        Some(n) => {
            return Err(ApiError::Unprocessable(format!(
                "max_streams_per_engine {n} is out of range (1-10000)"
            )))
        }
    };
    let selection = state
        .orch
        .select_or_provision(max)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let reservation = selection.reservation;
    state.orch.read(|registry| {
        let engine = registry
            .engine_view(&reservation.engine_id, Timestamp::now())
            .ok_or_else(|| ApiError::Internal("selected engine vanished".into()))?;
        json_response(&Selected {
            engine,
            reservation_id: &reservation.reservation_id,
            expires_at: reservation.expires_at,
        })
    })
}

/// `POST /engines/select`'s answer.
#[derive(serde::Serialize)]
struct Selected<'a> {
    engine: crate::registry::EngineView<'a>,
    reservation_id: &'a str,
    expires_at: Timestamp,
}

/// One engine in its wire shape, serialized under the read lock.
fn engine_json(state: &AppState, id: &str) -> Result<Vec<u8>, ApiError> {
    state.orch.read(|registry| {
        let view = registry
            .engine_view(id, Timestamp::now())
            .ok_or_else(|| ApiError::NotFound(format!("engine '{id}' not found")))?;
        serde_json::to_vec(&view).map_err(|e| ApiError::Internal(e.to_string()))
    })
}
