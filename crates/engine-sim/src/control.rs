//! The control API that tests use to inspect engines and switch their modes.
//!
//! Served as `/control/...` on the separate control listener (all engines, optional
//! `engine` index) and as `/sim/...` on each engine's API port (that engine only).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use crate::engine::{Engine, Mode};

pub type Engines = Arc<[Arc<Engine>]>;

#[derive(Deserialize)]
struct ModeRequest {
    mode: String,
    engine: Option<usize>,
}

#[derive(Deserialize)]
struct LatencyRequest {
    latency_ms: u64,
    engine: Option<usize>,
}

enum Change {
    Mode(String),
    Latency(u64),
}

/// A control request: what to change, and on which engine (None = all).
trait ControlRequest: DeserializeOwned {
    fn into_change(self) -> (Change, Option<usize>);
}

impl ControlRequest for ModeRequest {
    fn into_change(self) -> (Change, Option<usize>) {
        (Change::Mode(self.mode), self.engine)
    }
}

impl ControlRequest for LatencyRequest {
    fn into_change(self) -> (Change, Option<usize>) {
        (Change::Latency(self.latency_ms), self.engine)
    }
}

/// Routes of the separate control listener.
pub fn router(engines: Engines) -> Router {
    Router::new()
        .route(
            "/control/state",
            get(|State(all): State<Engines>| async move { state(&all) }),
        )
        .route(
            "/control/mode",
            get(by_query::<ModeRequest>).post(by_body::<ModeRequest>),
        )
        .route(
            "/control/latency",
            get(by_query::<LatencyRequest>).post(by_body::<LatencyRequest>),
        )
        .with_state(engines)
}

/// Routes served on an engine's own API port; the `engine` field is ignored there.
pub fn sim_router() -> Router<Arc<Engine>> {
    Router::new()
        .route(
            "/sim/state",
            get(|State(e): State<Arc<Engine>>| async move { state(&[e]) }),
        )
        .route(
            "/sim/mode",
            get(sim_by_query::<ModeRequest>).post(sim_by_body::<ModeRequest>),
        )
        .route(
            "/sim/latency",
            get(sim_by_query::<LatencyRequest>).post(sim_by_body::<LatencyRequest>),
        )
}

fn detail(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "detail": message.into() }))).into_response()
}

fn state(engines: &[Arc<Engine>]) -> Response {
    let states: Vec<_> = engines.iter().map(|e| e.state()).collect();
    Json(json!({ "engines": states })).into_response()
}

/// Parses the body as JSON whatever its content type, so `curl -d '{...}'` just works.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("bad request body: {err}"))
}

fn parse_query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, String> {
    query.map(|Query(q)| q).map_err(|err| err.body_text())
}

/// Answers a parsed request; `by_index` is false on /sim routes, where the request's
/// `engine` field is ignored because the port already names the engine.
fn respond<T: ControlRequest>(
    engines: &[Arc<Engine>],
    parsed: Result<T, String>,
    by_index: bool,
) -> Response {
    match parsed {
        Ok(request) => {
            let (change, index) = request.into_change();
            apply(engines, change, index.filter(|_| by_index))
        }
        Err(message) => detail(StatusCode::BAD_REQUEST, message),
    }
}

async fn by_body<T: ControlRequest>(State(all): State<Engines>, body: Bytes) -> Response {
    respond(&all, parse_body::<T>(&body), true)
}

async fn by_query<T: ControlRequest>(
    State(all): State<Engines>,
    query: Result<Query<T>, QueryRejection>,
) -> Response {
    respond(&all, parse_query(query), true)
}

async fn sim_by_body<T: ControlRequest>(
    State(engine): State<Arc<Engine>>,
    body: Bytes,
) -> Response {
    respond(&[engine], parse_body::<T>(&body), false)
}

async fn sim_by_query<T: ControlRequest>(
    State(engine): State<Arc<Engine>>,
    query: Result<Query<T>, QueryRejection>,
) -> Response {
    respond(&[engine], parse_query(query), false)
}

/// Applies a change to one engine (by index) or to all, and answers with the new state.
fn apply(engines: &[Arc<Engine>], change: Change, index: Option<usize>) -> Response {
    let targets = match index {
        None => engines,
        Some(i) => match engines.get(i) {
            Some(engine) => std::slice::from_ref(engine),
            None => {
                let message = format!("no engine {i}; engines are numbered 0..{}", engines.len());
                return detail(StatusCode::NOT_FOUND, message);
            }
        },
    };
    match change {
        Change::Mode(name) => {
            let Some(mode) = Mode::parse(&name) else {
                let expected: Vec<_> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                let message = format!(
                    "unknown mode '{name}'; expected one of {}",
                    expected.join(", ")
                );
                return detail(StatusCode::UNPROCESSABLE_ENTITY, message);
            };
            targets.iter().for_each(|e| e.set_mode(mode));
        }
        Change::Latency(ms) => targets.iter().for_each(|e| e.set_latency(ms)),
    }
    state(engines)
}
