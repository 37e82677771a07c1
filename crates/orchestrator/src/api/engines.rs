//! Engine routes: the registry, health history, manual checks and selection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::{ApiError, AppJson, AppPath, AppQuery};
use super::wire::{CheckOutcome, EngineCheck, EngineDeleted, Selection};
use super::{json_response, AppState};
use crate::domain::{canonical_host, CheckSource, HealthStatus, RuntimeKind, Stream};
use crate::engine_client::millis;
use crate::health;
use crate::registry::EngineFilter;
use crate::time::Timestamp;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only engines with this health status; empty = any.
    #[param(value_type = Option<HealthStatus>, inline)]
    health: Option<String>,
    /// Only engines of this runtime; empty = any.
    #[param(value_type = Option<RuntimeKind>, inline)]
    runtime: Option<String>,
    /// Only engines at this host (`localhost`, `127.0.0.1` and `::1` are one host); empty = any.
    #[param(example = "127.0.0.1")]
    host: Option<String>,
    /// Only engines behind this VPN node (its container name, the engine's `acestream.vpn_node` label); empty = any.
    #[param(example = "gluetun-a")]
    vpn_node: Option<String>,
    /// Only engines with this label: `key=value`, or `key` for any value; empty = any.
    #[param(example = "pool=eu")]
    label: Option<String>,
}

impl ListQuery {
    /// The filter, or a 400 naming the parameter that does not fit.
    fn filter(self) -> Result<EngineFilter, ApiError> {
        let given = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
        let health = match given(self.health) {
            None => None,
            Some(text) => Some(HealthStatus::parse(text.trim()).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "health '{text}' is not one of healthy, unhealthy, unknown"
                ))
            })?),
        };
        let runtime = match given(self.runtime) {
            None => None,
            Some(text) => Some(RuntimeKind::parse(text.trim()).ok_or_else(|| {
                ApiError::BadRequest(format!("runtime '{text}' is not one of docker, external"))
            })?),
        };
        let label = match given(self.label) {
            None => None,
            Some(text) => {
                let (key, value) = match text.split_once('=') {
                    Some((key, value)) => (key.trim(), Some(value.to_owned())),
                    None => (text.trim(), None),
                };
                if key.is_empty() {
                    return Err(ApiError::BadRequest(format!(
                        "label '{text}' has no key; use key=value, or key for any value"
                    )));
                }
                Some((key.to_owned(), value))
            }
        };
        Ok(EngineFilter {
            health,
            runtime,
            host: given(self.host).map(|h| canonical_host(&h)),
            vpn_node: given(self.vpn_node).map(|n| n.trim().to_owned()),
            label,
        })
    }
}

/// Engines serialized per hold of the registry's read lock.
const LIST_PIECE: usize = 256;

/// Bytes of the last full listing: the next one's buffer is allocated at
/// this size at once (a listing of 5,000 engines is about 2.5 MB).
static LAST_LIST_BYTES: AtomicUsize = AtomicUsize::new(0);

#[utoipa::path(
    get, path = "/engines", tag = "engines", operation_id = "listEngines",
    summary = "List engines",
    description = "Every known engine with its health and usage, ordered by `container_id`; the query parameters narrow the list (all given must match). Answered gzip-compressed when the request accepts it (`Accept-Encoding: gzip`).",
    params(ListQuery),
    responses(
        (status = 200, description = "The engines.", body = [crate::registry::EngineView]),
        (status = 400, description = "`health` or `runtime` is not one of its values, or `label` has no key.", body = super::error::Detail),
    ),
)]
pub async fn list(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let filter = query.filter()?;
    let unfiltered = filter.is_empty();
    let hint = if unfiltered {
        LAST_LIST_BYTES.load(Ordering::Relaxed)
    } else {
        0
    };
    // Serialized under the read lock, engine by engine into one buffer (no
    // copies of the engines), LIST_PIECE engines at a time: between pieces
    // the lock is free, so the health monitor's writes (2,500 a second at
    // 5,000 engines) wait for a piece, about a millisecond, and not for the
    // whole list (25 ms and more; on a starved machine a preempted reader
    // held every writer, and so both runtime threads, for hundreds). Each
    // engine is as it was at one instant; an engine added or removed while
    // the list is written may be missing from it or still in it.
    let now = Timestamp::now();
    let mut body = Vec::with_capacity(hint + hint / 16);
    body.push(b'[');
    let mut first = true;
    let mut after: Option<String> = None;
    loop {
        let next = state
            .orch
            .read(|r| {
                r.append_engines_json(
                    now,
                    &filter,
                    after.as_deref(),
                    LIST_PIECE,
                    &mut body,
                    &mut first,
                )
            })
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match next {
            // No yield to the runtime in between: with each engine's JSON
            // cached the whole list takes a few milliseconds of CPU, and a
            // yield while a health sweep's probes fill the run queue put the
            // answer behind hundreds of them, twenty times (p99 57 ms at
            // 5,000 engines with yields, docs/PERFORMANCE.md).
            Some(last) => after = Some(last),
            None => break,
        }
    }
    body.push(b']');
    if unfiltered {
        LAST_LIST_BYTES.store(body.len(), Ordering::Relaxed);
    }
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = EngineDetail)]
struct EngineWithStreams<'a> {
    engine: crate::registry::EngineView<'a>,
    /// The engine's active streams.
    streams: Vec<&'a Stream>,
}

#[utoipa::path(
    get, path = "/engines/{id}", tag = "engines", operation_id = "getEngine",
    summary = "Get an engine and its streams",
    description = "One engine and its active streams.",
    params(("id" = String, Path, description = "The engine's `container_id` (Docker id, or `host:port` for an engine not run by us). Percent-encode reserved characters such as `/`.")),
    responses(
        (status = 200, description = "The engine.", body = EngineWithStreams),
        (status = 404, description = "No such engine.", body = super::error::Detail),
    ),
)]
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

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = RegisterEngine)]
pub struct RegisterBody {
    /// Host name or IP address (letters, digits, `.-_:[]`, at most 253 characters).
    #[schema(example = "127.0.0.1")]
    host: String,
    #[schema(minimum = 1, maximum = 65535, example = 6878)]
    port: i64,
    /// Shown as `container_name`.
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
#[utoipa::path(
    post, path = "/engines", tag = "engines", operation_id = "registerEngine",
    summary = "Register an engine",
    description = "Registers an engine the orchestrator does not run (`runtime: external`, id `host:port`); it is then monitored. Registering an address that is already known (loopback aliases are one host) answers the existing engine with 200 instead of a duplicate.",
    request_body = RegisterBody,
    responses(
        (status = 200, description = "Already known: the existing engine.", body = crate::registry::EngineView),
        (status = 201, description = "Registered.", body = crate::registry::EngineView),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 415, description = "The body is not sent with `Content-Type: application/json`.", body = super::error::Detail),
        (status = 422, description = "The body does not fit (malformed JSON, missing field, wrong type), or host/port out of range.", body = super::error::Detail),
        (status = 503, description = "The change could not be saved to the database; nothing is promised durable.", body = super::error::Detail),
    ),
)]
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
#[utoipa::path(
    delete, path = "/engines/{id}", tag = "engines", operation_id = "deleteEngine",
    summary = "Forget an engine",
    description = "Removes the engine from the registry; its active streams end and its reservations are dropped. The engine process or container itself is not touched.",
    params(("id" = String, Path, description = "The engine's `container_id` (Docker id, or `host:port` for an engine not run by us). Percent-encode reserved characters such as `/`.")),
    responses(
        (status = 200, description = "Removed.", body = super::wire::EngineDeleted),
        (status = 404, description = "No such engine.", body = super::error::Detail),
        (status = 503, description = "The change could not be saved to the database; nothing is promised durable.", body = super::error::Detail),
    ),
)]
pub async fn remove(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<EngineDeleted>, ApiError> {
    let engine = state
        .orch
        .forget_engine(&id, "engine removed through the API")
        .await?;
    tracing::info!(engine = %id, "engine removed");
    Ok(Json(EngineDeleted {
        deleted: true,
        container_id: engine.container_id,
    }))
}

#[utoipa::path(
    get, path = "/engines/{id}/health", tag = "health", operation_id = "getEngineHealth",
    summary = "Health history of an engine",
    description = "The engine's health status with its recent checks and transitions, newest first.",
    params(("id" = String, Path, description = "The engine's `container_id` (Docker id, or `host:port` for an engine not run by us). Percent-encode reserved characters such as `/`.")),
    responses(
        (status = 200, description = "The history.", body = crate::registry::HealthHistoryView),
        (status = 404, description = "No such engine.", body = super::error::Detail),
    ),
)]
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
#[utoipa::path(
    post, path = "/engines/{id}/health/check", tag = "health", operation_id = "checkEngine",
    summary = "Check one engine now",
    description = "Probes the engine's API now (`source: manual`), records the verdict and answers with the engine and the check. No body.",
    params(("id" = String, Path, description = "The engine's `container_id` (Docker id, or `host:port` for an engine not run by us). Percent-encode reserved characters such as `/`.")),
    responses(
        (status = 200, description = "The engine after the check.", body = super::wire::EngineCheck),
        (status = 404, description = "No such engine, or it was removed during the check.", body = super::error::Detail),
    ),
)]
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
        json_response(&EngineCheck {
            engine,
            check: CheckOutcome {
                ok: outcome.ok,
                latency_ms: millis(outcome.latency),
                error: outcome.error.clone(),
            },
        })
    })
}

/// `POST /health/check`: a sweep over every engine, now.
#[utoipa::path(
    post, path = "/health/check", tag = "health", operation_id = "checkAllEngines",
    summary = "Check every engine now",
    description = "Runs a health sweep over every engine now (`source: manual`) and answers with the results. No body.",
    responses((status = 200, description = "The sweep.", body = health::SweepReport)),
)]
pub async fn check_all(State(state): State<AppState>) -> Json<health::SweepReport> {
    Json(health::sweep(&state.orch, CheckSource::Manual).await)
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = SelectRequest)]
struct SelectBody {
    /// Limit of active streams plus open reservations per engine; default `MAX_STREAMS_PER_ENGINE`.
    #[schema(minimum = 1, maximum = 10000)]
    max_streams_per_engine: Option<i64>,
}

/// `POST /engines/select`: picks and reserves the best engine. The body is
/// optional (`{}` or nothing uses `MAX_STREAMS_PER_ENGINE`).
#[utoipa::path(
    post, path = "/engines/select", tag = "engines", operation_id = "selectEngine",
    summary = "Pick and reserve the best engine",
    description = "Picks a healthy engine whose active streams plus open reservations are under the limit: fewest of those first, then the oldest `last_stream_usage` (never used first), ties by id. Reserves a slot on it until a `stream_started` arrives for it or the reservation expires (`SELECT_RESERVATION_TTL_S`). The body is optional: empty or `{}` uses `MAX_STREAMS_PER_ENGINE`; no Content-Type is required. When nothing fits and a container runtime is available below MAX_REPLICAS, a new engine is started first.",
    request_body(content = Option<SelectBody>, description = "Optional."),
    responses(
        (status = 200, description = "The engine and its reservation.", body = super::wire::Selection),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 422, description = "The body does not fit `{\"max_streams_per_engine\"?: int}`, or the limit is out of range (1-10000).", body = super::error::Detail),
        (status = 503, description = "No healthy engine has a free slot.", body = super::error::Detail),
    ),
)]
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
        json_response(&Selection {
            engine,
            reservation_id: reservation.reservation_id.clone(),
            expires_at: reservation.expires_at,
        })
    })
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
