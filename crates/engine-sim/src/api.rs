//! The engine's HTTP API (see the repository's docs/ENGINE-API.md), with the
//! failure modes applied in front.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{CONTENT_TYPE, HOST};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::control;
use crate::engine::{infohash_for, Engine, Mode};
use crate::ts;

type Params = Query<HashMap<String, String>>;

/// The query parameters that name content, in the order the engine looks at them.
const ID_PARAMS: [&str; 5] = ["content_id", "id", "infohash", "url", "magnet"];

pub fn router(engine: Arc<Engine>) -> Router {
    let api = Router::new()
        .route("/webui/api/service", get(service))
        .route("/server/api", get(server_api))
        .route("/ace/getstream", get(getstream))
        .route("/ace/manifest.m3u8", get(manifest))
        .route("/ace/r/{infohash}/{session}", get(playback))
        .route("/ace/m/{infohash}/{file}", get(playlist))
        .route("/ace/stat/{infohash}/{session}", get(stat))
        .route("/ace/cmd/{infohash}/{session}", get(command))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(engine.clone(), faults));
    // A hung engine answers nothing, /sim included; but error modes spare /sim, or an
    // engine switched to `error` through /sim could never be switched back.
    let sim =
        control::sim_router().layer(middleware::from_fn_with_state(engine.clone(), hang_only));
    api.merge(sim).with_state(engine)
}

/// Applies the engine's mode and latency to every API request.
async fn faults(State(engine): State<Arc<Engine>>, req: Request, next: Next) -> Response {
    engine.count_request();
    engine.wait_until_responsive().await;
    let latency = engine.latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    match engine.mode() {
        Mode::Error => (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response(),
        Mode::BadJson => ([(CONTENT_TYPE, "text/html")], "<html>oops</html>").into_response(),
        Mode::ErrorField => {
            // /ace/ routes answer in "response", the service APIs in "result".
            let key = if req.uri().path().starts_with("/ace/") {
                "response"
            } else {
                "result"
            };
            failure(key, "engine is busy").into_response()
        }
        // Only a request racing a quick down-and-up switch gets here.
        Mode::Refuse => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Mode::Healthy | Mode::Hang | Mode::Starve => next.run(req).await,
    }
}

async fn hang_only(State(engine): State<Arc<Engine>>, req: Request, next: Next) -> Response {
    engine.wait_until_responsive().await;
    next.run(req).await
}

fn result(value: Value) -> Json<Value> {
    Json(json!({ "result": value, "error": null }))
}

fn response(value: Value) -> Json<Value> {
    Json(json!({ "response": value, "error": null }))
}

fn failure(key: &str, message: &str) -> Json<Value> {
    let mut body = serde_json::Map::new();
    body.insert(key.to_owned(), Value::Null);
    body.insert("error".to_owned(), message.into());
    Json(Value::Object(body))
}

async fn service(Query(q): Params) -> Json<Value> {
    match q.get("method").map(String::as_str) {
        Some("get_version") => {
            result(json!({ "code": 3020700, "version": "3.2.7", "platform": "linux" }))
        }
        _ => failure("result", "unknown method"),
    }
}

async fn server_api(State(engine): State<Arc<Engine>>, Query(q): Params) -> Json<Value> {
    match q.get("method").map(String::as_str) {
        Some("get_status") => {
            let sessions = engine.active_sessions();
            result(json!({
                "status": if sessions > 0 { "running" } else { "idle" },
                "version": "3.2.7",
                "active_sessions": sessions,
                "uptime": engine.uptime().as_secs(),
            }))
        }
        _ => failure("result", "unknown method"),
    }
}

/// `http://<host>` as the client addressed us, so URLs work through port mappings.
fn base_url(engine: &Engine, headers: &HeaderMap) -> String {
    match headers.get(HOST).and_then(|h| h.to_str().ok()) {
        Some(host) if !host.is_empty() => format!("http://{host}"),
        _ => format!("http://{}", engine.public_addr()),
    }
}

/// The infohash the request names, or None if it names no content.
/// Contents no engine can play (`--unavailable`), as given and as infohashes.
static UNAVAILABLE: std::sync::OnceLock<std::collections::HashSet<String>> =
    std::sync::OnceLock::new();

/// Sets the contents getstream refuses; called once at start.
pub fn set_unavailable(ids: impl Iterator<Item = String>) {
    let mut set = std::collections::HashSet::new();
    for id in ids.filter(|id| !id.is_empty()) {
        set.insert(infohash_for(&id));
        set.insert(id);
    }
    let _ = UNAVAILABLE.set(set);
}

fn unavailable(infohash: &str) -> bool {
    UNAVAILABLE.get().is_some_and(|set| set.contains(infohash))
}

fn requested_infohash(q: &HashMap<String, String>) -> Option<String> {
    let (param, id) = ID_PARAMS
        .iter()
        .find_map(|p| q.get(*p).filter(|v| !v.is_empty()).map(|v| (*p, v)))?;
    Some(if param == "infohash" {
        id.clone()
    } else {
        infohash_for(id)
    })
}

fn wants_json(q: &HashMap<String, String>) -> bool {
    q.get("format").is_some_and(|f| f == "json")
}

/// Opens a session and describes it the way getstream/manifest do.
fn start(engine: &Engine, headers: &HeaderMap, infohash: &str, hls: bool) -> Json<Value> {
    let session = engine.open_session(infohash);
    let base = base_url(engine, headers);
    let playback_url = if hls {
        format!("{base}/ace/m/{infohash}/{session}.m3u8")
    } else {
        format!("{base}/ace/r/{infohash}/{session}")
    };
    response(json!({
        "playback_url": playback_url,
        "stat_url": format!("{base}/ace/stat/{infohash}/{session}"),
        "command_url": format!("{base}/ace/cmd/{infohash}/{session}"),
        "infohash": infohash,
        "playback_session_id": session,
        "is_live": 1,
        "is_encrypted": 0,
        "client_session_id": -1,
    }))
}

async fn getstream(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    let Some(infohash) = requested_infohash(&q) else {
        return failure("response", "missing content id").into_response();
    };
    if unavailable(&infohash) {
        return failure("response", "the content is not available (no peers)").into_response();
    }
    if wants_json(&q) {
        return start(&engine, &headers, &infohash, false).into_response();
    }
    let session = engine.open_session(&infohash);
    ts::stream(engine, infohash, session, true)
}

async fn manifest(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Query(q): Params,
) -> Response {
    let Some(infohash) = requested_infohash(&q) else {
        return failure("response", "missing content id").into_response();
    };
    if wants_json(&q) {
        return start(&engine, &headers, &infohash, true).into_response();
    }
    let session = engine.open_session(&infohash);
    m3u8(&engine, &headers, &infohash, &session)
}

/// A one-entry live playlist pointing at the TS stream: enough for a player or a test to
/// follow, not a faithful HLS segmenter.
fn m3u8(engine: &Engine, headers: &HeaderMap, infohash: &str, session: &str) -> Response {
    let base = base_url(engine, headers);
    let body = format!(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:10.0,\n{base}/ace/r/{infohash}/{session}\n"
    );
    ([(CONTENT_TYPE, "application/vnd.apple.mpegurl")], body).into_response()
}

async fn playlist(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    Path((infohash, file)): Path<(String, String)>,
) -> Response {
    let session = file.strip_suffix(".m3u8").unwrap_or(&file);
    if !engine.has_session(&infohash, session) {
        return (
            StatusCode::NOT_FOUND,
            failure("response", "unknown playback session id"),
        )
            .into_response();
    }
    m3u8(&engine, &headers, &infohash, session)
}

async fn playback(
    State(engine): State<Arc<Engine>>,
    Path((infohash, session)): Path<(String, String)>,
) -> Response {
    if !engine.has_session(&infohash, &session) {
        return (
            StatusCode::NOT_FOUND,
            failure("response", "unknown playback session id"),
        )
            .into_response();
    }
    ts::stream(engine, infohash, session, false)
}

async fn stat(
    State(engine): State<Arc<Engine>>,
    Path((infohash, session)): Path<(String, String)>,
) -> Json<Value> {
    match engine.stats(&infohash, &session) {
        Some(stats) => Json(json!({ "response": stats, "error": null })),
        None => failure("response", "unknown playback session id"),
    }
}

async fn command(
    State(engine): State<Arc<Engine>>,
    Path((infohash, session)): Path<(String, String)>,
    Query(q): Params,
) -> Json<Value> {
    match q.get("method").map(String::as_str) {
        Some("stop") if engine.close_session(&infohash, &session) => response("ok".into()),
        Some("stop") => failure("response", "unknown playback session id"),
        Some(other) => failure("response", &format!("unknown method '{other}'")),
        None => failure("response", "missing method"),
    }
}
