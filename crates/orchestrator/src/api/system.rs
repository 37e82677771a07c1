//! Operational routes: metrics, the OpenAPI document, liveness and readiness.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;

use super::wire::{LiveStatus, Liveness, Readiness, ReadyStatus};
use super::AppState;

#[utoipa::path(
    get, path = "/metrics", tag = "system", operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Metrics in the OpenMetrics text format (`orch_events_started_total`, `orch_streams_active`, health metrics, …).",
    responses((status = 200, description = "The metrics.", body = String, content_type = "application/openmetrics-text")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.orch.refresh_gauges();
    if let Some(counts) = state
        .pool
        .as_ref()
        .and_then(|pool| pool.credential_counts())
    {
        for (status, count) in counts {
            state
                .orch
                .metrics
                .vpn_credentials
                .get_or_create(&crate::metrics::StatusLabel { status })
                .set(count);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.orch.metrics.encode(),
    )
}

#[utoipa::path(
    get, path = "/openapi.json", tag = "system", operation_id = "openapi",
    summary = "This document",
    description = "The OpenAPI description of the API, generated from the code.",
    responses((status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json")),
)]
pub async fn openapi() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        super::openapi::json(),
    )
}

#[utoipa::path(
    get, path = "/health/live", tag = "system", operation_id = "live",
    summary = "Liveness",
    description = "Answers while the process serves HTTP.",
    responses((status = 200, description = "Alive.", body = super::wire::Liveness)),
)]
pub async fn live() -> Json<Liveness> {
    Json(Liveness {
        status: LiveStatus::Ok,
    })
}

/// Ready once the database is open and migrated, which is before the listener
/// accepts anything; the counts tell a probe what the pool looks like.
#[utoipa::path(
    get, path = "/health/ready", tag = "system", operation_id = "ready",
    summary = "Readiness",
    description = "Answers once the database is open and migrated, with the size of the pool.",
    responses((status = 200, description = "Ready.", body = super::wire::Readiness)),
)]
pub async fn ready(State(state): State<AppState>) -> Json<Readiness> {
    let (engines, active_streams) = state
        .orch
        .read(|r| (r.engine_count(), r.active_stream_count()));
    Json(Readiness {
        status: ReadyStatus::Ready,
        engines,
        active_streams,
    })
}
