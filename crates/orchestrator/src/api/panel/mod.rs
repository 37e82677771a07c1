//! The operator dashboard at `/panel`.
//!
//! The page, its scripts and its stylesheet are compiled into the binary, so the
//! dashboard works on a LAN without internet access and always matches the API
//! of the binary that serves it. The page asks nothing of any other host, and
//! its Content-Security-Policy makes the browser enforce that.
//!
//! Live updates come from `GET /panel/events`, a server-sent event stream that
//! sends a snapshot of the pool when it opens and again after registry changes
//! (at most one every [`THROTTLE`]). `GET /panel/snapshot` answers the same
//! snapshot as plain JSON, for the page's polling fallback.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::Serialize;
use tokio::time::Instant;

use super::error::{ApiError, AppPath};
use super::AppState;
use crate::domain::StreamStatus;
use crate::registry::Registry;
use crate::service::Orchestrator;
use crate::time::Timestamp;
use crate::vpn::{engines_behind_in, NodeSummary, Vpn};

/// Snapshots are sent at most this often: a health sweep over many engines
/// changes the registry once per engine, and the page needs one picture of the
/// result, not one per probe.
pub const THROTTLE: Duration = Duration::from_millis(300);

/// A comment line this often keeps proxies and browsers from timing out an idle
/// stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// How many of an engine's newest checks a snapshot carries, for the strip that
/// makes a flapping engine visible at a glance.
pub const RECENT_CHECKS: usize = 30;

/// How long the browser waits before reconnecting a dropped event stream.
const RECONNECT: Duration = Duration::from_secs(2);

/// A file the dashboard is made of.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
    /// Hash of the body, computed at compile time, for `ETag` revalidation.
    etag: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &str = include_str!(concat!("assets/", $name));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: fnv1a(BODY.as_bytes()),
        }
    }};
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("api.js", "text/javascript; charset=utf-8"),
    asset!("view.js", "text/javascript; charset=utf-8"),
    asset!("chart.js", "text/javascript; charset=utf-8"),
    asset!("format.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
];

/// The page may load only its own scripts and styles and talk only to this
/// origin: the browser itself refuses anything that would leave the LAN.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// 64-bit FNV-1a; good enough to tell two versions of a file apart.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Answers an asset, or 304 when the browser already has this version.
///
/// `no-cache` makes the browser revalidate every time: a page from an upgraded
/// binary never runs next to scripts cached from the old one, and the
/// revalidation costs one tiny 304 on a LAN.
fn serve(asset: &Asset, request_headers: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|t| t.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /panel`: the dashboard page.
#[utoipa::path(
    get, path = "/panel", tag = "panel", operation_id = "panel",
    summary = "The dashboard",
    description = "The operator dashboard (HTML). Its scripts and stylesheet are compiled into the binary and it requests nothing from any other host; a Content-Security-Policy header makes the browser enforce that. Revalidated with `ETag` (`Cache-Control: no-cache`).",
    responses(
        (status = 200, description = "The page.", body = String, content_type = "text/html"),
        (status = 304, description = "The browser's copy (`If-None-Match`) is current."),
    ),
)]
pub async fn index(request_headers: HeaderMap) -> Response {
    let mut response = serve(&INDEX, &request_headers);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// `GET /panel/assets/{file}`: a script or the stylesheet.
#[utoipa::path(
    get, path = "/panel/assets/{file}", tag = "panel", operation_id = "panelAsset",
    summary = "A dashboard asset",
    description = "One of the dashboard's ES modules or its stylesheet, with its content type, an `ETag` and `Cache-Control: no-cache`.",
    params(("file" = String, Path, description = "The file name, e.g. `app.js` or `style.css`.")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 304, description = "The browser's copy (`If-None-Match`) is current."),
        (status = 404, description = "The dashboard has no such file.", body = crate::api::error::Detail),
    ),
)]
pub async fn asset(
    AppPath(file): AppPath<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|a| a.name == file)
        .map(|a| serve(a, &request_headers))
        .ok_or_else(|| ApiError::NotFound(format!("the dashboard has no asset '{file}'")))
}

/// One check in a snapshot's `recent_checks`: enough to draw the strip and to
/// say in a tooltip why a check failed.
#[derive(Serialize, utoipa::ToSchema)]
struct RecentCheck<'a> {
    ts: Timestamp,
    ok: bool,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<&'a str>,
}

/// The pool as the dashboard shows it, taken under one lock so its parts agree.
/// [`snapshot_json`] writes it without building this value (it splices in the
/// JSON of `GET /engines`); this type is its shape, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PanelSnapshot<'a> {
    /// When the snapshot was taken (the server's clock).
    generated_at: Timestamp,
    /// Exactly what `GET /engines` answers.
    engines: Vec<crate::registry::EngineView<'a>>,
    /// The started streams, newest first.
    streams: Vec<&'a crate::domain::Stream>,
    /// Per `container_id`, the engine's newest health checks (up to 30), newest first.
    recent_checks: BTreeMap<String, Vec<RecentCheck<'a>>>,
    /// The VPN nodes, as `GET /vpn/nodes` shows them without their check and
    /// transition histories (only the newest transition); empty without VPN.
    vpn_nodes: Vec<NodeSummary>,
}

/// The dashboard's picture of the pool, as JSON:
///
/// ```json
/// {"generated_at": TS, "engines": [Engine…], "streams": [Stream…],
///  "recent_checks": {"<container_id>": [{"ts": TS, "ok": true, "error"?: "…"}…]},
///  "vpn_nodes": [NodeSummary…]}
/// ```
///
/// `engines` is byte for byte what `GET /engines` answers, `streams` are the
/// started streams (newest first) and `recent_checks` are each engine's newest
/// checks, newest first. Built under the caller's read lock in one pass, with
/// no await in between, so the three parts agree with each other. `vpn_nodes`
/// are taken by the caller before the lock (a node's check takes the node
/// lock, then the registry's); their `engines` are filled here, from this
/// registry.
pub fn snapshot_json(
    registry: &Registry,
    now: Timestamp,
    mut vpn_nodes: Vec<NodeSummary>,
) -> serde_json::Result<String> {
    for node in &mut vpn_nodes {
        node.engines = engines_behind_in(registry, &node.name);
    }
    let engines = registry.engines_json(now)?;
    let streams = registry.streams(Some(StreamStatus::Started), None);
    let recent: BTreeMap<String, Vec<RecentCheck<'_>>> = registry
        .probe_targets()
        .into_iter()
        .filter_map(|target| {
            let history = registry.health_history(&target.engine_id)?;
            let checks = history
                .checks
                .iter()
                .take(RECENT_CHECKS)
                .map(|c| RecentCheck {
                    ts: c.ts,
                    ok: c.ok,
                    error: c.error.as_deref(),
                })
                .collect();
            Some((target.engine_id, checks))
        })
        .collect();

    // `engines` is already JSON; splice it in rather than parse it back.
    let mut out = Vec::with_capacity(engines.len() + 256 * (streams.len() + recent.len()) + 64);
    out.extend_from_slice(br#"{"generated_at":"#);
    serde_json::to_writer(&mut out, &now)?;
    out.extend_from_slice(br#","engines":"#);
    out.extend_from_slice(&engines);
    out.extend_from_slice(br#","streams":"#);
    serde_json::to_writer(&mut out, &streams)?;
    out.extend_from_slice(br#","recent_checks":"#);
    serde_json::to_writer(&mut out, &recent)?;
    out.extend_from_slice(br#","vpn_nodes":"#);
    serde_json::to_writer(&mut out, &vpn_nodes)?;
    out.push(b'}');
    // serde_json writes UTF-8 only.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// Takes a snapshot under the read lock. A plain function, so that the lock
/// guard cannot live across an await of the event stream.
fn take_snapshot(orch: &Orchestrator, vpn: &Vpn) -> Result<String, ApiError> {
    // Before the registry's lock, never under it: see `snapshot_json`.
    let nodes = vpn.summaries();
    orch.read(|registry| snapshot_json(registry, Timestamp::now(), nodes))
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// `GET /panel/snapshot`: the snapshot the event stream sends, once.
#[utoipa::path(
    get, path = "/panel/snapshot", tag = "panel", operation_id = "panelSnapshot",
    summary = "One snapshot",
    description = "What `GET /panel/events` sends, once: the dashboard polls it while the event stream is unavailable.",
    responses((status = 200, description = "The pool now.", body = PanelSnapshot)),
)]
pub async fn snapshot(State(state): State<AppState>) -> Result<Response, ApiError> {
    let body = take_snapshot(&state.orch, &state.vpn)?;
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

fn snapshot_event(orch: &Orchestrator, vpn: &Vpn) -> Event {
    match take_snapshot(orch, vpn) {
        Ok(json) => Event::default().event("snapshot").data(json),
        // Never expected (the registry always serializes); the page shows it.
        Err(error) => Event::default().event("failure").data(error.to_string()),
    }
}

/// The event stream: a snapshot at once, then one after each burst of
/// changes (the registry's, and what the dashboard shows of VPN nodes, see
/// [`Orchestrator::notify_changed`]), no closer together than [`THROTTLE`].
fn snapshots(
    orch: Arc<Orchestrator>,
    vpn: Arc<Vpn>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let changes = orch.watch_changes();
    futures::stream::unfold(
        (orch, vpn, changes, None::<Instant>),
        |(orch, vpn, mut changes, last_sent)| async move {
            let event = match last_sent {
                // The first event also tells the browser how soon to reconnect.
                None => snapshot_event(&orch, &vpn).retry(RECONNECT),
                Some(last_sent) => {
                    // Ends the stream if the orchestrator itself is gone.
                    changes.changed().await.ok()?;
                    // Changes that arrive while we wait are folded into one event.
                    tokio::time::sleep_until(last_sent + THROTTLE).await;
                    snapshot_event(&orch, &vpn)
                }
            };
            // Everything up to now is in this snapshot.
            changes.borrow_and_update();
            Some((Ok(event), (orch, vpn, changes, Some(Instant::now()))))
        },
    )
}

/// `GET /panel/events`: server-sent events, each a `snapshot` (see
/// [`snapshot_json`]), with a keep-alive comment every [`KEEP_ALIVE`].
#[utoipa::path(
    get, path = "/panel/events", tag = "panel", operation_id = "panelEvents",
    summary = "Live snapshots (server-sent events)",
    description = "A `text/event-stream`. On connect it sends an event `snapshot` whose data is a `PanelSnapshot` (JSON on one line), then another after each change of the registry or of what it shows of a VPN node (health, error, public IP, country, forwarded port), at most one every 300 ms. A comment line `: keep-alive` follows 15 s of silence. The first event carries `retry: 2000` (reconnect after 2 s).",
    responses((status = 200, description = "The event stream; it stays open.", content(
        (String = "text/event-stream", example = "retry: 2000\nevent: snapshot\ndata: {\"generated_at\":\"2026-11-28T03:27:46.123Z\",\"engines\":[],\"streams\":[],\"recent_checks\":{},\"vpn_nodes\":[]}\n\n"),
    ))),
)]
pub async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let stream = futures::StreamExt::take_until(
        snapshots(state.orch.clone(), state.vpn.clone()),
        state.shutdown.clone().cancelled_owned(),
    );
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    // Reverse proxies such as nginx buffer responses unless told not to, which
    // would hold events back until the buffer fills.
    ([("x-accel-buffering", "no")], sse)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Limits;

    #[test]
    fn every_asset_the_page_names_is_served() {
        for asset in ASSETS {
            let url = format!("/panel/assets/{}", asset.name);
            let named = INDEX.body.contains(&url)
                || ASSETS
                    .iter()
                    .any(|other| other.body.contains(&format!("./{}", asset.name)));
            assert!(named, "{} is served but nothing loads it", asset.name);
        }
        let urls = INDEX.body.split("\"/panel/assets/").skip(1);
        for url in urls {
            let name = url.split('"').next().unwrap();
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "index.html loads {name}, which is not served"
            );
        }
    }

    #[test]
    fn the_page_names_no_other_host() {
        // The SVG namespace is an identifier, never fetched.
        const SVG_NAMESPACE: &str = "http://www.w3.org/2000/svg";
        for asset in std::iter::once(&INDEX).chain(ASSETS) {
            let body = asset.body.replace(SVG_NAMESPACE, "");
            for scheme in ["http://", "https://", "ws://", "wss://", "url(//", "\"//"] {
                assert!(
                    !body.contains(scheme),
                    "{} mentions {scheme}: the dashboard must not load anything from another host",
                    asset.name
                );
            }
        }
    }

    #[test]
    fn snapshot_is_json_with_the_engines_of_get_engines() {
        let mut registry = Registry::new(Limits {
            failure_threshold: 1,
            health_history_max: 50,
            stats_history_max: 10,
            ended_streams_max: 10,
        });
        let now = Timestamp::from_millis(1_795_836_466_123);
        registry.register(Registry::new_external_engine(
            "127.0.0.1",
            19023,
            None,
            Some("engine-1".into()),
            BTreeMap::new(),
            now,
        ));
        for i in 0..40 {
            registry.record_check(
                "127.0.0.1:19023",
                crate::domain::HealthCheck {
                    ts: Timestamp::from_millis(now.millis() + i),
                    ok: i % 2 == 0,
                    source: crate::domain::CheckSource::Probe,
                    latency_ms: Some(1.0),
                    error: (i % 2 == 1).then(|| "timed out".to_owned()),
                },
            );
        }
        let text = snapshot_json(&registry, now, Vec::new()).unwrap();
        let snapshot: serde_json::Value = serde_json::from_str(&text).unwrap();
        let engines: serde_json::Value =
            serde_json::from_slice(&registry.engines_json(now).unwrap()).unwrap();
        assert_eq!(snapshot["engines"], engines);
        assert_eq!(snapshot["generated_at"], "2026-11-28T03:27:46.123Z");
        assert_eq!(snapshot["streams"], serde_json::json!([]));
        assert_eq!(snapshot["vpn_nodes"], serde_json::json!([]));
        let checks = snapshot["recent_checks"]["127.0.0.1:19023"]
            .as_array()
            .unwrap();
        assert_eq!(checks.len(), RECENT_CHECKS);
        // Newest first: the 40th check (i = 39) failed.
        assert_eq!(checks[0]["ok"], false);
        assert_eq!(checks[0]["error"], "timed out");
        assert!(
            checks[1].get("error").is_none(),
            "no error key on a success"
        );
        assert!(
            !text.contains('\n'),
            "an SSE data line cannot hold a newline"
        );
    }

    #[test]
    fn snapshot_nodes_list_the_engines_behind_them_from_the_registry() {
        let mut registry = Registry::new(Limits {
            failure_threshold: 1,
            health_history_max: 50,
            stats_history_max: 10,
            ended_streams_max: 10,
        });
        let now = Timestamp::from_millis(1_795_836_466_123);
        for (port, node) in [(19023, Some("vpn-a")), (19024, None)] {
            let labels = node
                .map(|n| {
                    (
                        crate::domain::labels::VPN_NODE_LABEL.to_owned(),
                        n.to_owned(),
                    )
                })
                .into_iter()
                .collect();
            registry.register(Registry::new_external_engine(
                "127.0.0.1",
                port,
                None,
                None,
                labels,
                now,
            ));
        }
        let node = NodeSummary {
            name: "vpn-a".into(),
            kind: crate::vpn::NodeKind::OnDemand,
            credential: Some("se-1".into()),
            health_status: crate::domain::HealthStatus::Unhealthy,
            health_since: Some(now),
            last_health_check: Some(now),
            consecutive_failures: 1,
            last_health_error: Some("VPN is stopped".into()),
            docker_health: None,
            public_ip: Some("203.0.113.7".into()),
            country: None,
            forwarded_port: None,
            engines: Vec::new(),
            last_transition: None,
        };
        let text = snapshot_json(&registry, now, vec![node]).unwrap();
        let snapshot: serde_json::Value = serde_json::from_str(&text).unwrap();
        let nodes = snapshot["vpn_nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["name"], "vpn-a");
        assert_eq!(nodes[0]["kind"], "on_demand");
        assert_eq!(nodes[0]["credential"], "se-1");
        assert_eq!(nodes[0]["health_status"], "unhealthy");
        assert_eq!(nodes[0]["engines"], serde_json::json!(["127.0.0.1:19023"]));
        assert!(nodes[0].get("checks").is_none(), "no check history");
    }
}
