//! Operational routes: metrics, the OpenAPI document, liveness and readiness.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use super::AppState;

/// The OpenAPI 3 description of every route (kept in sync by a test).
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.orch.refresh_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.orch.metrics.encode(),
    )
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready once the database is open and migrated, which is before the listener
/// accepts anything; the counts tell a probe what the pool looks like.
pub async fn ready(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (engines, active_streams) = state
        .orch
        .read(|r| (r.engine_count(), r.active_stream_count()));
    Json(json!({
        "status": "ready",
        "engines": engines,
        "active_streams": active_streams,
    }))
}
