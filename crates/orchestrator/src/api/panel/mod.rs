//! The operator dashboard at `/panel`.
//!
//! The page, its scripts and its stylesheet are compiled into the binary, so the
//! dashboard works on a LAN without internet access and always matches the API
//! of the binary that serves it. The page asks nothing of any other host, and
//! its Content-Security-Policy makes the browser enforce that.
//!
//! Live updates come from `GET /panel/events`, a server-sent event stream that
//! sends a snapshot of the pool when it opens and then deltas, only what
//! changed, at most one every [`THROTTLE`] ([`feed`] says how). `GET
//! /panel/snapshot` answers the same snapshot as plain JSON, or with
//! `?since=` the deltas after a version, for the page's polling fallback.

mod feed;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::error::{ApiError, AppPath};
use super::AppState;
use crate::time::Timestamp;
use crate::vpn::NodeSummary;

pub use feed::{snapshot_of, Feed, RECENT_CHECKS};

/// Deltas are sent at most this often: a health sweep over many engines
/// changes the registry once per engine, and the page needs one message per
/// burst, not one per probe.
pub const THROTTLE: Duration = Duration::from_millis(500);

/// A comment line this often keeps proxies and browsers from timing out an idle
/// stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

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
    asset!("store.js", "text/javascript; charset=utf-8"),
    asset!("pool.js", "text/javascript; charset=utf-8"),
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
#[allow(dead_code)] // The shape of the JSON, for the OpenAPI document.
struct RecentCheck {
    ts: Timestamp,
    ok: bool,
    /// Why the check failed; absent when it passed.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    error: Option<String>,
}

/// The pool as the dashboard shows it, at one version of the feed. The feed
/// writes it from its model; this type is its shape, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PanelSnapshot<'a> {
    /// The feed's version of this picture: give it back as `Last-Event-ID`,
    /// `If-None-Match` or `?since=` to get only what changed after it.
    #[schema(example = "19ad7c1f2e3-42")]
    version: String,
    /// When the picture was taken (the server's clock).
    generated_at: Timestamp,
    /// How many recent checks per engine the page keeps (30).
    recent_checks_max: usize,
    /// What `GET /engines` answered when the picture was taken.
    engines: Vec<crate::registry::EngineView<'a>>,
    /// The started streams, newest first.
    streams: Vec<&'a crate::domain::Stream>,
    /// Per `container_id`, the engine's newest health checks (up to 30), newest first.
    recent_checks: BTreeMap<String, Vec<RecentCheck>>,
    /// The VPN nodes, as `GET /vpn/nodes` shows them without their check and
    /// transition histories (only the newest transition); empty without VPN.
    vpn_nodes: Vec<NodeSummary>,
}

/// What changed between two versions of the feed (see docs/DASHBOARD.md).
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PanelDelta {
    /// The version this delta leads to.
    version: String,
    /// The server's clock in milliseconds since 1970; check ages count back from it.
    t: i64,
    generated_at: Timestamp,
    /// Per engine id: the whole engine when new, the changed fields when
    /// known, `null` when removed. A `last_health_check` left out of a patch
    /// is the time of the engine's newest check in `checks`.
    #[schema(value_type = Option<Object>)]
    engines: Option<serde_json::Value>,
    /// Per engine id, its new checks, newest first: `[age_ms, ok (1/0), error?]`.
    #[schema(value_type = Option<Object>)]
    checks: Option<serde_json::Value>,
    /// Per stream id, like `engines`.
    #[schema(value_type = Option<Object>)]
    streams: Option<serde_json::Value>,
    /// Per node name, like `engines`.
    #[schema(value_type = Option<Object>)]
    vpn_nodes: Option<serde_json::Value>,
}

/// The answer to `GET /panel/snapshot?since=`: the deltas after that version.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct PanelDeltas {
    /// The version after the last delta.
    version: String,
    /// Oldest first; empty when nothing changed.
    deltas: Vec<PanelDelta>,
}

/// Publishes what changed, off the async workers (a reading of thousands of
/// engines takes milliseconds of CPU).
async fn advance(feed: &Arc<Feed>, state: &AppState) {
    let (feed, orch, vpn) = (feed.clone(), state.orch.clone(), state.vpn.clone());
    let _ = tokio::task::spawn_blocking(move || feed.advance(&orch, &vpn)).await;
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SnapshotQuery {
    /// A `version` the page holds: answer the deltas after it
    /// (`{"version", "deltas"}`), or the whole snapshot when the server no
    /// longer has them (or the version is not one of this server run).
    since: Option<String>,
}

fn json_response(body: String, etag: &str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

/// `GET /panel/snapshot`: the snapshot the event stream starts with, or the
/// deltas after `?since=`.
#[utoipa::path(
    get, path = "/panel/snapshot", tag = "panel", operation_id = "panelSnapshot",
    summary = "One snapshot, or what changed since a version",
    description = "What `GET /panel/events` sends first: the dashboard polls it while the event stream is unavailable. The `ETag` is the version: with `If-None-Match` naming the current version the answer is 304 without a body. With `?since=VERSION` the answer is `{\"version\", \"deltas\"}`, the deltas after that version, or the whole snapshot when the server no longer has them (a different server run, or too far behind).",
    params(SnapshotQuery),
    responses(
        (status = 200, description = "The pool now, or the deltas after `since`.", body = PanelSnapshot),
        (status = 304, description = "`If-None-Match` names the current version: nothing changed."),
    ),
)]
pub async fn snapshot(
    State(state): State<AppState>,
    Query(query): Query<SnapshotQuery>,
    request_headers: HeaderMap,
) -> Response {
    let feed = state.panel.clone();
    advance(&feed, &state).await;
    let current = feed.current_token();
    let unchanged = request_headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim().trim_start_matches("W/").trim_matches('"') == current)
        });
    if unchanged {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("\"{current}\"")) {
            response.headers_mut().insert(header::ETAG, value);
        }
        return response;
    }
    let (answer, token) = match query.since.as_deref() {
        Some(since) => feed.catch_up(Some(since)),
        None => {
            let (snapshot, token) = feed.snapshot();
            (feed::Catchup::Snapshot(snapshot), token)
        }
    };
    let body = match answer {
        feed::Catchup::Snapshot(snapshot) => snapshot.to_string(),
        feed::Catchup::Deltas(deltas) => {
            let mut body = format!(r#"{{"version":"{token}","deltas":["#);
            for (i, delta) in deltas.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(delta);
            }
            body.push_str("]}");
            body
        }
    };
    json_response(body, &token)
}

/// One SSE event of the feed, with its version as the event id (the browser
/// sends the last one back as `Last-Event-ID` when it reconnects).
fn feed_event(kind: &str, data: &str, version: &str) -> Event {
    Event::default().event(kind).id(version).data(data)
}

/// What one dashboard's event stream remembers.
struct Connection {
    feed: Arc<Feed>,
    state: AppState,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The version the page has (after the events in `queue`).
    known: Option<String>,
    /// Events ready to send.
    queue: VecDeque<Event>,
    last_sent: Option<Instant>,
    first: bool,
}

impl Connection {
    /// Queues what the page needs to reach the feed's current version.
    fn catch_up(&mut self) {
        let (answer, token) = self.feed.catch_up(self.known.as_deref());
        match answer {
            feed::Catchup::Snapshot(snapshot) => {
                self.queue
                    .push_back(feed_event("snapshot", &snapshot, &token));
            }
            feed::Catchup::Deltas(deltas) => {
                let count = deltas.len();
                for (i, delta) in deltas.iter().enumerate() {
                    // Only the last one's version is needed as an id, but
                    // each carries its own in its JSON as well.
                    let id = if i + 1 == count {
                        token.clone()
                    } else {
                        delta_version(delta).unwrap_or_else(|| token.clone())
                    };
                    self.queue.push_back(feed_event("delta", delta, &id));
                }
            }
        }
        self.known = Some(token);
    }
}

/// The `version` a delta names (its first field of that name).
fn delta_version(delta: &str) -> Option<String> {
    let start = delta.find(r#""version":""#)? + r#""version":""#.len();
    let end = delta[start..].find('"')?;
    Some(delta[start..start + end].to_owned())
}

/// The event stream: a snapshot at once (or, for a page that reconnects with
/// a `Last-Event-ID` the feed still has, the deltas it missed), then the
/// deltas after each burst of changes (the registry's, and what the dashboard
/// shows of VPN nodes, see [`crate::service::Orchestrator::notify_changed`]),
/// no closer together than [`THROTTLE`].
fn feed_stream(
    state: AppState,
    last_event_id: Option<String>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let connection = Connection {
        feed: state.panel.clone(),
        changes: state.orch.watch_changes(),
        state,
        known: last_event_id,
        queue: VecDeque::new(),
        last_sent: None,
        first: true,
    };
    futures::stream::unfold(connection, |mut c| async move {
        loop {
            if let Some(event) = c.queue.pop_front() {
                let event = if c.first {
                    // The first event also tells the browser how soon to reconnect.
                    c.first = false;
                    event.retry(RECONNECT)
                } else {
                    event
                };
                c.last_sent = Some(Instant::now());
                return Some((Ok(event), c));
            }
            if let Some(last_sent) = c.last_sent {
                // Ends the stream if the orchestrator itself is gone.
                c.changes.changed().await.ok()?;
                // Changes that arrive while we wait are folded into one delta.
                tokio::time::sleep_until(last_sent + THROTTLE).await;
            }
            c.changes.borrow_and_update();
            advance(&c.feed, &c.state).await;
            c.catch_up();
            if c.queue.is_empty() {
                // Nothing the page shows changed; wait for the next change.
                c.last_sent.get_or_insert_with(Instant::now);
            }
        }
    })
}

/// `GET /panel/events`: server-sent events, a `snapshot` then `delta`s, with
/// a keep-alive comment every [`KEEP_ALIVE`].
#[utoipa::path(
    get, path = "/panel/events", tag = "panel", operation_id = "panelEvents",
    summary = "Live updates (server-sent events)",
    description = "A `text/event-stream`. On connect it sends an event `snapshot` whose data is a `PanelSnapshot` (JSON on one line), then an event `delta` (a `PanelDelta`: only the engines, checks, streams and VPN nodes that changed, with only their changed fields) after each burst of changes, at most one every 500 ms. Each event's `id` is its version: a browser that reconnects sends it back as `Last-Event-ID` and gets the deltas it missed, or a new `snapshot` when the server no longer has them. A comment line `: keep-alive` follows 15 s of silence. The first event carries `retry: 2000` (reconnect after 2 s).",
    params(("Last-Event-ID" = Option<String>, Header, description = "The version the page has: resume after it.")),
    responses((status = 200, description = "The event stream; it stays open.", content(
        (String = "text/event-stream", example = "retry: 2000\nevent: snapshot\nid: 19ad7c1f2e3-0\ndata: {\"version\":\"19ad7c1f2e3-0\",\"generated_at\":\"2026-11-28T03:27:46.123Z\",\"recent_checks_max\":30,\"engines\":[],\"streams\":[],\"recent_checks\":{},\"vpn_nodes\":[]}\n\n"),
    ))),
)]
pub async fn events(
    State(state): State<AppState>,
    request_headers: HeaderMap,
) -> impl IntoResponse {
    let last_event_id = request_headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let shutdown = state.shutdown.clone();
    let stream = futures::StreamExt::take_until(
        feed_stream(state, last_event_id),
        shutdown.cancelled_owned(),
    );
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"));
    // Reverse proxies such as nginx buffer responses unless told not to, which
    // would hold events back until the buffer fills.
    ([("x-accel-buffering", "no")], sse)
}

/// Kept for the unit tests below: the snapshot of a registry without a feed.
#[cfg(test)]
fn snapshot_json(
    registry: &crate::registry::Registry,
    now: Timestamp,
    vpn_nodes: Vec<NodeSummary>,
) -> serde_json::Result<String> {
    snapshot_of(registry, now, vpn_nodes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, Registry};

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
