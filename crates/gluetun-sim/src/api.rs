//! The emulated control server: Gluetun's routes (behind the fault mode and the API
//! key) and the emulator's own `/sim/...` routes (behind neither).
//!
//! Shapes follow Gluetun's `internal/server` package: JSON bodies written by Go's
//! `json.Encoder` (so a trailing newline, and `Content-Type: text/plain; charset=utf-8`
//! sniffed by Go's `net/http`, not `application/json`), errors written by `http.Error`
//! (a text line), and the auth middleware answering 404 / 405 / 401 before any handler.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tracing::info;

/// How Gluetun's routes answer; the `/sim/...` routes ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Normal answers.
    Healthy,
    /// Connections accepted, requests never answered (until the mode changes).
    Hang,
    /// 200 with a body that is not JSON.
    Garbage,
    /// 500 with a text body.
    Error,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Hang => "hang",
            Mode::Garbage => "garbage",
            Mode::Error => "error",
        }
    }
}

/// `GET /v1/publicip/ip` while the tunnel is up: Gluetun's `models.PublicIP`, whose
/// fields other than `public_ip` are `omitempty`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PublicIp {
    pub public_ip: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
}

impl PublicIp {
    pub fn new(ip: IpAddr) -> Self {
        PublicIp {
            public_ip: ip.to_string(),
            ..PublicIp::default()
        }
    }
}

pub struct Config {
    pub running: bool,
    /// None: port forwarding never had a port (Gluetun then answers `"ports": null`).
    pub ports: Option<Vec<u16>>,
    pub mode: Mode,
    pub api_key: Option<String>,
    pub public_ip: PublicIp,
    /// What the tunnel was configured with (Gluetun's variables), if anything.
    pub settings: Option<crate::tunnel::TunnelSettings>,
    /// Whether the container was given `/dev/net/tun`.
    pub tun_device: bool,
}

struct Tunnel {
    running: bool,
    ports: Option<Vec<u16>>,
}

pub struct Sim {
    tunnel: Mutex<Tunnel>,
    mode: watch::Sender<Mode>,
    /// Requests held by `hang` right now (shown by `/sim/state`).
    hanging: AtomicUsize,
    api_key: Option<String>,
    public_ip: PublicIp,
    settings: Option<crate::tunnel::TunnelSettings>,
    tun_device: bool,
}

/// Counts a hung request for as long as it is held, even if the client gives up.
struct Hanging<'a>(&'a AtomicUsize);

impl<'a> Hanging<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Hanging(count)
    }
}

impl Drop for Hanging<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Sim {
    pub fn new(config: Config) -> Arc<Sim> {
        let mut ports = config.ports;
        if let Some(ports) = ports.as_mut() {
            normalize(ports);
        }
        Arc::new(Sim {
            tunnel: Mutex::new(Tunnel {
                running: config.running,
                ports,
            }),
            mode: watch::Sender::new(config.mode),
            hanging: AtomicUsize::new(0),
            api_key: config.api_key.filter(|k| !k.is_empty()),
            public_ip: config.public_ip,
            settings: config.settings,
            tun_device: config.tun_device,
        })
    }

    fn running(&self) -> bool {
        self.tunnel.lock().running
    }

    /// Gluetun's `loopstate.ApplyStatus` outcomes: the new status, or "already <status>".
    fn apply_status(&self, want_running: bool) -> &'static str {
        let mut tunnel = self.tunnel.lock();
        let outcome = match (tunnel.running, want_running) {
            (true, true) => "already running",
            (false, false) => "already stopped",
            (false, true) => "running",
            (true, false) => "stopped",
        };
        tunnel.running = want_running;
        drop(tunnel);
        info!(outcome, "vpn status");
        outcome
    }

    fn authorized(&self, headers: &HeaderMap, query: Option<&str>) -> bool {
        let Some(key) = &self.api_key else {
            return true;
        };
        // Like Gluetun: the X-API-Key header, else an `api_key` query parameter.
        let given = headers
            .get("x-api-key")
            .map(HeaderValue::as_bytes)
            .filter(|v| !v.is_empty())
            .or_else(|| {
                query?
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("api_key="))
                    .map(str::as_bytes)
            })
            .unwrap_or_default();
        given.ct_eq(key.as_bytes()).into()
    }

    fn state(&self) -> serde_json::Value {
        let tunnel = self.tunnel.lock();
        json!({
            "vpn": status_word(tunnel.running),
            "ports": tunnel.ports,
            "mode": self.mode.borrow().as_str(),
            "hanging": self.hanging.load(Ordering::SeqCst),
            "api_key": self.api_key.is_some(),
            "settings": self.settings,
            "tun_device": self.tun_device,
        })
    }
}

/// Gluetun sorts the forwarded ports; 0 is not a port.
fn normalize(ports: &mut Vec<u16>) {
    ports.retain(|&p| p != 0);
    ports.sort_unstable();
    ports.dedup();
}

fn status_word(running: bool) -> &'static str {
    if running {
        "running"
    } else {
        "stopped"
    }
}

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/sim/state", get(sim_state))
        .route("/sim/mode", put(sim_mode))
        .route("/sim/vpn", put(sim_vpn))
        .route("/sim/health", get(sim_health))
        .fallback(gluetun)
        .with_state(sim)
}

// ---- Gluetun's routes ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    Version,
    VpnStatus,
    OpenvpnStatus,
    PortForward,
    OpenvpnPortForwarded,
    LegacyPortForwarded,
    PublicIp,
}

/// The emulated subset of Gluetun's `validRoutes`: path, route, allowed methods.
const ROUTES: &[(&str, Route, &[Method])] = &[
    ("/v1/version", Route::Version, &[Method::GET]),
    (
        "/v1/vpn/status",
        Route::VpnStatus,
        &[Method::GET, Method::PUT],
    ),
    (
        "/v1/openvpn/status",
        Route::OpenvpnStatus,
        &[Method::GET, Method::PUT],
    ),
    (
        "/v1/portforward",
        Route::PortForward,
        &[Method::GET, Method::PUT],
    ),
    (
        "/v1/openvpn/portforwarded",
        Route::OpenvpnPortForwarded,
        &[Method::GET],
    ),
    (
        "/openvpn/portforwarded",
        Route::LegacyPortForwarded,
        &[Method::GET],
    ),
    ("/v1/publicip/ip", Route::PublicIp, &[Method::GET]),
];

async fn gluetun(
    State(sim): State<Arc<Sim>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut modes = sim.mode.subscribe();
    let mode = loop {
        let mode = *modes.borrow_and_update();
        if mode != Mode::Hang {
            break mode;
        }
        // Hung until the mode changes; then answered according to the new mode.
        let _held = Hanging::new(&sim.hanging);
        if modes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let response = match mode {
        Mode::Garbage => (StatusCode::OK, "<html>oops</html>").into_response(),
        Mode::Error => http_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Mode::Healthy | Mode::Hang => serve(&sim, &method, &uri, &headers, &body),
    };
    info!(%method, path = uri.path(), status = response.status().as_u16(), mode = mode.as_str(), "request");
    response
}

fn serve(sim: &Sim, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Response {
    // Gluetun's auth middleware: unknown path 404, wrong method 405, then the key.
    let Some((_, route, methods)) = ROUTES.iter().find(|(path, ..)| *path == uri.path()) else {
        return http_error(StatusCode::NOT_FOUND, "Not Found");
    };
    if !methods.contains(method) {
        return http_error(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
    }
    if !sim.authorized(headers, uri.query()) {
        return http_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    match (route, *method == Method::PUT) {
        (Route::Version, _) => go_json(&BuildInfo {
            version: concat!("gluetun-sim-", env!("CARGO_PKG_VERSION")),
            commit: "unknown",
            created: "unknown",
        }),
        (Route::VpnStatus | Route::OpenvpnStatus, false) => {
            go_json(&json!({ "status": status_word(sim.running()) }))
        }
        (Route::VpnStatus | Route::OpenvpnStatus, true) => put_status(sim, body),
        (Route::PortForward, false) => {
            let tunnel = sim.tunnel.lock();
            let ports = match (&tunnel.ports, tunnel.running) {
                (None, _) => None,
                (Some(ports), true) => Some(ports.clone()),
                // The port is released with the tunnel.
                (Some(_), false) => Some(Vec::new()),
            };
            drop(tunnel);
            let port = ports.as_ref().and_then(|p| p.first()).copied().unwrap_or(0);
            go_json(&json!({ "port": port, "ports": ports }))
        }
        (Route::PortForward, true) => put_ports(sim, body),
        // Gluetun redirects the old routes rather than answering them itself.
        (Route::OpenvpnPortForwarded, _) => {
            redirect(StatusCode::MOVED_PERMANENTLY, "/v1/portforward")
        }
        (Route::LegacyPortForwarded, _) => {
            redirect(StatusCode::PERMANENT_REDIRECT, "/v1/portforward")
        }
        (Route::PublicIp, _) => {
            if sim.running() {
                go_json(&sim.public_ip)
            } else {
                // Cleared when the tunnel goes down: a zero netip.Addr encodes as "".
                go_json(&PublicIp::default())
            }
        }
    }
}

/// Gluetun's `models.BuildInformation`, fields in its order.
#[derive(Serialize)]
struct BuildInfo {
    version: &'static str,
    commit: &'static str,
    created: &'static str,
}

#[derive(Deserialize)]
struct StatusBody {
    #[serde(default)]
    status: String,
}

fn put_status(sim: &Sim, body: &[u8]) -> Response {
    let wanted: StatusBody = match serde_json::from_slice(body) {
        Ok(b) => b,
        Err(err) => return http_error(StatusCode::BAD_REQUEST, &err.to_string()),
    };
    let want_running = match wanted.status.as_str() {
        "running" => true,
        "stopped" => false,
        other => {
            return http_error(
                StatusCode::BAD_REQUEST,
                &format!("invalid status: {other}: possible values are: stopped, running"),
            )
        }
    };
    go_json(&json!({ "outcome": sim.apply_status(want_running) }))
}

/// Gluetun's body is `{"ports": [...]}` (a `port` field alone is ignored there). The
/// emulator also takes `{"port": N}` alone as `{"ports": [N]}` (0 = none).
#[derive(Deserialize)]
struct PortsBody {
    port: Option<u16>,
    ports: Option<Vec<u16>>,
}

fn put_ports(sim: &Sim, body: &[u8]) -> Response {
    let Ok(wanted) = serde_json::from_slice::<PortsBody>(body) else {
        return http_error(StatusCode::BAD_REQUEST, "failed setting forwarded ports");
    };
    let mut ports = match (wanted.ports, wanted.port) {
        (Some(ports), _) => ports,
        (None, Some(port)) => vec![port],
        (None, None) => Vec::new(),
    };
    normalize(&mut ports);
    info!(?ports, "forwarded ports set");
    sim.tunnel.lock().ports = Some(ports);
    // Gluetun answers a bare 200.
    StatusCode::OK.into_response()
}

/// A body as Go's `json.NewEncoder(w).Encode` writes it, with the content type Go's
/// `net/http` sniffs for it.
fn go_json<T: Serialize>(value: &T) -> Response {
    let mut text = serde_json::to_vec(value).unwrap_or_default();
    text.push(b'\n');
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from(text),
    )
        .into_response()
}

/// Go's `http.Error`: the message and a newline, as plain text.
fn http_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        format!("{message}\n"),
    )
        .into_response()
}

/// Go's `http.Redirect` for a GET.
fn redirect(status: StatusCode, to: &'static str) -> Response {
    let text = status.canonical_reason().unwrap_or("Redirect");
    (
        status,
        [
            (header::LOCATION, to),
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        ],
        format!("<a href=\"{to}\">{text}</a>.\n\n"),
    )
        .into_response()
}

// ---- the emulator's own routes -----------------------------------------------------

async fn sim_state(State(sim): State<Arc<Sim>>) -> Json<serde_json::Value> {
    Json(sim.state())
}

#[derive(Deserialize)]
struct ModeBody {
    mode: Mode,
}

async fn sim_mode(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<ModeBody>(&body) {
        Ok(ModeBody { mode }) => {
            sim.mode.send_replace(mode);
            info!(mode = mode.as_str(), "mode set");
            Json(sim.state()).into_response()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            format!("expected {{\"mode\": \"healthy|hang|garbage|error\"}}: {err}\n"),
        )
            .into_response(),
    }
}

/// Drops or restores the tunnel whatever the mode and key (`PUT /v1/vpn/status` obeys both).
async fn sim_vpn(State(sim): State<Arc<Sim>>, body: Bytes) -> Response {
    match serde_json::from_slice::<StatusBody>(&body) {
        Ok(b) if b.status == "running" || b.status == "stopped" => {
            sim.apply_status(b.status == "running");
            Json(sim.state()).into_response()
        }
        _ => (
            StatusCode::BAD_REQUEST,
            "expected {\"status\": \"running|stopped\"}\n",
        )
            .into_response(),
    }
}

/// What `--healthcheck` asks: 200 while the tunnel runs, 503 otherwise.
async fn sim_health(State(sim): State<Arc<Sim>>) -> Response {
    if sim.running() {
        (StatusCode::OK, "running\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "stopped\n").into_response()
    }
}
