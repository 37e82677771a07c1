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
    let registry = state.orch.registry.read();
    Json(json!({
        "status": "ready",
        "engines": registry.engine_count(),
        "active_streams": registry.active_stream_count(),
    }))
}
