//! The events stream proxies send: `stream_started` and `stream_ended`.
//!
//! Real proxies are sloppy in known ways (docs/CONTRACT.md): no `container_id`,
//! `localhost` for an engine registered as `127.0.0.1`, `is_live` as `1`, and
//! the same stream ended twice. All of that is absorbed here.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;

use super::engines::{valid_host, valid_port};
use super::error::{ApiError, AppJson};
use super::wire::StreamEnded;
use super::AppState;
use crate::domain::{KeyType, Stream};
use crate::registry::StreamStart;

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = StreamStartedEvent, example = json!({
    "engine": {"host": "127.0.0.1", "port": 19023},
    "stream": {"key_type": "infohash", "key": "0a48f2c1d5e3b7a9c4f1e2d3b4a5c6d7e8f90a1b"},
    "session": {
        "playback_session_id": "4f2a",
        "stat_url": "http://127.0.0.1:19023/ace/stat/0a48/4f2a",
        "command_url": "http://127.0.0.1:19023/ace/cmd/0a48/4f2a",
        "is_live": 1
    },
    "labels": {"stream_id": "ch-42"}
}))]
pub struct StartedBody {
    /// The engine's id, when the sender knows it.
    container_id: Option<String>,
    /// Required unless `container_id` names a known engine.
    engine: Option<EngineAddr>,
    stream: StreamKey,
    #[serde(default)]
    session: Option<Session>,
    /// Values should be strings; numbers and booleans are taken as text.
    /// `stream_id` names the stream.
    #[serde(default)]
    #[schema(schema_with = labels_schema)]
    labels: Option<BTreeMap<String, LabelValue>>,
    /// Ours: the reservation `POST /engines/select` handed out; without it, an
    /// open reservation on the engine is consumed.
    reservation_id: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = EngineAddress)]
struct EngineAddr {
    /// `localhost`, `127.0.0.1` and `::1` name the same host.
    #[schema(example = "127.0.0.1")]
    host: String,
    #[schema(minimum = 1, maximum = 65535, example = 19023)]
    port: i64,
}

#[derive(Deserialize, utoipa::ToSchema)]
struct StreamKey {
    #[schema(value_type = KeyType)]
    key_type: String,
    /// Must not be blank.
    #[schema(min_length = 1, pattern = r"\S")]
    key: String,
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = PlaybackSession)]
struct Session {
    playback_session_id: Option<String>,
    /// Absolute http(s) URL on the engine's own host:port (else 422).
    stat_url: Option<String>,
    /// Absolute http(s) URL on the engine's own host:port (else 422).
    command_url: Option<String>,
    /// Becomes a boolean in the Stream: `true`/`false`, `1`/`0`, or the strings
    /// `"1"`, `"0"`, `"true"`, `"false"`, `"True"`, `"False"`. Absent or null = false.
    #[schema(schema_with = is_live_schema)]
    is_live: Option<Flag>,
}

/// What `session.is_live` accepts.
fn is_live_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Boolean))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .enum_values(Some([0, 1])),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["0", "1", "true", "false", "True", "False"])),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build();
    Schema::OneOf(one_of)
}

/// `labels`: an object (or null) of strings, numbers and booleans.
fn labels_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{
        AdditionalProperties, ObjectBuilder, OneOfBuilder, SchemaType, Type,
    };
    let value = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(ObjectBuilder::new().schema_type(Type::Number))
        .item(ObjectBuilder::new().schema_type(Type::Boolean));
    ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Object, Type::Null]))
        .additional_properties(Some(AdditionalProperties::RefOr(value.into())))
        .description(Some(
            "Values should be strings; numbers and booleans are taken as text. `stream_id` names the stream.",
        ))
        .build()
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

#[utoipa::path(
    post, path = "/events/stream_started", tag = "events", operation_id = "streamStarted",
    summary = "A stream started",
    description = "Records a stream. The engine is found by `container_id`, else by `host:port` (loopback aliases are one host; a container we run also matches its published host port); an unknown engine is registered (id `container_id`, else `host:port`). The engine's `last_stream_usage` becomes now and one of its reservations is consumed. Stream id = `labels.stream_id`, else `{key}|{playback_session_id}`; repeating an event with the same id overwrites that stream.",
    request_body = StartedBody,
    responses(
        (status = 200, description = "The stream.", body = Stream),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 415, description = "The body is not sent with `Content-Type: application/json`.", body = super::error::Detail),
        (status = 422, description = "The body does not fit (malformed JSON, missing field, wrong type); an unknown `key_type`, blank key, invalid host/port or `is_live`; no `engine` and no known `container_id`; or a `stat_url`/`command_url` that is not an http(s) URL on the engine.", body = super::error::Detail),
        (status = 503, description = "The change could not be saved to the database; nothing is promised durable.", body = super::error::Detail),
    ),
)]
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

/// At least one of `stream_id` and `container_id` is required.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = StreamEndedEvent)]
pub struct EndedBody {
    /// Without `stream_id`: end this engine's newest started stream.
    container_id: Option<String>,
    stream_id: Option<String>,
    /// Kept as the stream's `end_reason`.
    reason: Option<String>,
}

#[utoipa::path(
    post, path = "/events/stream_ended", tag = "events", operation_id = "streamEnded",
    summary = "A stream ended",
    description = "Ends the stream named by `stream_id`, else the newest started stream of `container_id`. Ending a stream that is already ended or unknown is not an error: 200 with `updated: false`.",
    request_body = EndedBody,
    responses(
        (status = 200, description = "Whether a stream was ended, and the stream.", body = super::wire::StreamEnded),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 415, description = "The body is not sent with `Content-Type: application/json`.", body = super::error::Detail),
        (status = 422, description = "The body does not fit (malformed JSON, missing field, wrong type), or neither `stream_id` nor `container_id` given.", body = super::error::Detail),
        (status = 503, description = "The change could not be saved to the database; nothing is promised durable.", body = super::error::Detail),
    ),
)]
pub async fn stream_ended(
    State(state): State<AppState>,
    AppJson(body): AppJson<EndedBody>,
) -> Result<Json<StreamEnded>, ApiError> {
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
    Ok(Json(StreamEnded { updated, stream }))
}
