//! The events stream proxies send: `stream_started` and `stream_ended`.
//!
//! Real proxies are sloppy in known ways (docs/CONTRACT.md): no `container_id`,
//! `localhost` for an engine registered as `127.0.0.1`, `is_live` as `1`, and
//! the same stream ended twice. All of that is absorbed here.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::engines::{valid_host, valid_port};
use super::error::{ApiError, AppJson};
use super::AppState;
use crate::domain::{KeyType, Stream};
use crate::registry::StreamStart;

#[derive(Deserialize)]
pub struct StartedBody {
    container_id: Option<String>,
    engine: Option<EngineAddr>,
    stream: StreamKey,
    #[serde(default)]
    session: Option<Session>,
    #[serde(default)]
    labels: Option<BTreeMap<String, LabelValue>>,
    /// Ours: the reservation `POST /engines/select` handed out.
    reservation_id: Option<String>,
}

#[derive(Deserialize)]
struct EngineAddr {
    host: String,
    port: i64,
}

#[derive(Deserialize)]
struct StreamKey {
    key_type: String,
    key: String,
}

#[derive(Deserialize, Default)]
struct Session {
    playback_session_id: Option<String>,
    stat_url: Option<String>,
    command_url: Option<String>,
    is_live: Option<Flag>,
}

/// `is_live` arrives as `1`/`0` from the engine, or as a boolean.
#[derive(Deserialize)]
#[serde(untagged)]
enum Flag {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl Flag {
    fn value(&self) -> Result<bool, ApiError> {
        match self {
            Flag::Bool(b) => Ok(*b),
            Flag::Int(0) => Ok(false),
            Flag::Int(1) => Ok(true),
            Flag::Text(t) if matches!(t.as_str(), "1" | "true" | "True") => Ok(true),
            Flag::Text(t) if matches!(t.as_str(), "0" | "false" | "False") => Ok(false),
            _ => Err(ApiError::Unprocessable(
                "session.is_live must be true, false, 1 or 0".into(),
            )),
        }
    }
}

/// Label values should be strings; numbers and booleans are written as text.
#[derive(Deserialize)]
#[serde(untagged)]
enum LabelValue {
    Text(String),
    Number(serde_json::Number),
    Bool(bool),
}

impl LabelValue {
    fn into_string(self) -> String {
        match self {
            LabelValue::Text(s) => s,
            LabelValue::Number(n) => n.to_string(),
            LabelValue::Bool(b) => b.to_string(),
        }
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

pub async fn stream_started(
    State(state): State<AppState>,
    AppJson(body): AppJson<StartedBody>,
) -> Result<Json<Stream>, ApiError> {
    let key_type = KeyType::parse(&body.stream.key_type).ok_or_else(|| {
        ApiError::Unprocessable(format!(
            "stream.key_type '{}' is not one of content_id, infohash, url, magnet",
            body.stream.key_type
        ))
    })?;
    let key = body.stream.key.trim().to_owned();
    if key.is_empty() {
        return Err(ApiError::Unprocessable("stream.key is empty".into()));
    }
    let container_id = non_empty(body.container_id);
    let (host, port) = match body.engine {
        Some(engine) => {
            valid_host("engine.host", &engine.host)?;
            (
                engine.host.trim().to_owned(),
                valid_port("engine.port", engine.port)?,
            )
        }
        None => {
            let known = container_id.as_deref().and_then(|id| {
                state
                    .orch
                    .read(|r| r.engine(id).map(|e| (e.host.clone(), e.port)))
            });
            known.ok_or_else(|| {
                ApiError::Unprocessable(
                    "engine {host, port} is required unless container_id names a known engine"
                        .into(),
                )
            })?
        }
    };
    let session = body.session.unwrap_or_default();
    let is_live = match &session.is_live {
        Some(flag) => flag.value()?,
        None => false,
    };
    let labels = body
        .labels
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_string()))
        .collect();
    let event = StreamStart {
        container_id,
        host,
        port,
        key_type,
        key,
        playback_session_id: non_empty(session.playback_session_id),
        stat_url: non_empty(session.stat_url),
        command_url: non_empty(session.command_url),
        is_live,
        labels,
        reservation_id: non_empty(body.reservation_id),
    };
    Ok(Json(state.orch.stream_started(event).await?))
}

#[derive(Deserialize)]
pub struct EndedBody {
    container_id: Option<String>,
    stream_id: Option<String>,
    reason: Option<String>,
}

pub async fn stream_ended(
    State(state): State<AppState>,
    AppJson(body): AppJson<EndedBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let container_id = non_empty(body.container_id);
    let stream_id = non_empty(body.stream_id);
    if container_id.is_none() && stream_id.is_none() {
        return Err(ApiError::Unprocessable(
            "give stream_id, or container_id to end that engine's newest stream".into(),
        ));
    }
    let reason = non_empty(body.reason);
    let (updated, stream) = state
        .orch
        .stream_ended(
            container_id.as_deref(),
            stream_id.as_deref(),
            reason.as_deref(),
        )
        .await?;
    Ok(Json(json!({ "updated": updated, "stream": stream })))
}
