//! The HTTP API: routes, access control, limits and the JSON error shape.

mod auth;
mod body;
mod containers;
mod engines;
pub mod error;
mod events;
mod hls;
mod openapi;
pub mod panel;
mod play;
mod playlist;
mod streams;
mod system;
mod vpn;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, post, MethodRouter};
use axum::{middleware, Router};
use tower_http::trace::TraceLayer;

pub use body::read_bodies_first;
pub use openapi::json as openapi_json;

use crate::service::Orchestrator;
use error::ApiError;

/// Largest request body accepted; every body this API takes is a few hundred bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub orch: Arc<Orchestrator>,
    pub api_key: Option<Arc<str>>,
    /// The built-in stream proxy.
    pub proxy: Arc<crate::proxy::hub::Proxy>,
    /// The VPN nodes (none configured: `enabled: false`).
    pub vpn: Arc<crate::vpn::Vpn>,
    /// `STREAM_TOKEN`: what `/ace/getstream` needs in `?token=`, when set.
    pub stream_token: Option<Arc<str>>,
    /// The engines we run as containers; `None` without a container runtime.
    pub pool: Option<Arc<crate::pool::Pool>>,
    /// Cancelled at shutdown; endless responses (the dashboard's event stream)
    /// end with it instead of holding the drain up.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What open dashboards are sent: versioned deltas of the pool.
    pub panel: Arc<panel::Feed>,
}

/// One row of the route table: method, path, and whether it needs the API key.
/// Tests walk this table (every protected route answers 401/403) and the
/// OpenAPI document is checked against it.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub protected: bool,
}

macro_rules! routes {
    ($( $method:ident $path:literal $protected:literal => $handler:expr ;)*) => {
        /// Every route the API serves.
        pub fn route_table() -> Vec<Route> {
            vec![$( Route { method: Method::$method, path: $path, protected: $protected } ),*]
        }

        fn add_routes(open: Router<AppState>, protected: Router<AppState>) -> (Router<AppState>, Router<AppState>) {
            let mut open = open;
            let mut protected = protected;
            $(
                let handler: MethodRouter<AppState> = $handler;
                if $protected {
                    protected = protected.route($path, handler);
                } else {
                    open = open.route($path, handler);
                }
            )*
            (open, protected)
        }
    };
}

routes! {
    GET "/engines" false => get(engines::list).layer(compression());
    POST "/engines" true => post(engines::register);
    GET "/engines/{id}" false => get(engines::get);
    DELETE "/engines/{id}" true => delete(engines::remove);
    GET "/engines/{id}/health" false => get(engines::health_history);
    POST "/engines/{id}/health/check" true => post(engines::check_one);
    POST "/engines/select" true => post(engines::select);
    POST "/health/check" true => post(engines::check_all);
    GET "/ace/getstream" false => get(play::getstream);
    GET "/ace/manifest.m3u8" false => get(hls::manifest);
    GET "/ace/hls/{token}/{file}" false => get(hls::file);
    POST "/playlist" false => post(playlist::rewrite_posted)
        .layer(DefaultBodyLimit::max(crate::playlist::MAX_BYTES));
    GET "/playlist" false => get(playlist::rewrite_remote);
    GET "/streams" false => get(streams::list).layer(compression());
    GET "/streams/{id}" false => get(streams::get);
    DELETE "/streams/{id}" true => delete(streams::stop);
    GET "/streams/{id}/stats" false => get(streams::stats);
    POST "/events/stream_started" true => post(events::stream_started);
    POST "/events/stream_ended" true => post(events::stream_ended);
    GET "/vpn/status" false => get(vpn::status);
    GET "/vpn/nodes" false => get(vpn::nodes);
    GET "/vpn/credentials" false => get(vpn::credentials);
    GET "/metrics" false => get(system::metrics);
    GET "/openapi.json" false => get(system::openapi).layer(compression());
    GET "/health/live" false => get(system::live);
    GET "/health/ready" false => get(system::ready);
    POST "/provision/acestream" true => post(containers::provision_acestream);
    POST "/provision" true => post(containers::provision_generic);
    GET "/containers/{id}" false => get(containers::inspect);
    DELETE "/containers/{id}" true => delete(containers::remove);
    GET "/by-label" true => get(containers::by_label);
    POST "/scale/{demand}" true => post(containers::scale);
    POST "/gc" true => post(containers::gc);
    GET "/panel" false => get(panel::index);
    GET "/panel/assets/{file}" false => get(panel::asset);
    GET "/panel/events" false => get(panel::events);
    GET "/panel/snapshot" false => get(panel::snapshot).layer(compression());
}

/// gzip for the large JSON answers, when the request accepts it. A list of
/// 5,000 engines is about 2.5 MB of JSON and under a tenth of that
/// compressed, which is what a dashboard or a client across a WAN link
/// waits for. Only on those routes: the stream proxy's video does not
/// compress and the dashboard's event stream must not be buffered. The
/// fastest level: it keeps most of the gain for a fraction of the CPU,
/// which the orchestrator needs for its probes.
fn compression() -> tower_http::compression::CompressionLayer {
    tower_http::compression::CompressionLayer::new().quality(tower_http::CompressionLevel::Fastest)
}

/// Serializes `value` into a JSON response. Used where the value borrows from
/// the registry, so that the lock is held for the serialization and no longer.
pub fn json_response<T: serde::Serialize>(value: &T) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let body = serde_json::to_vec(value).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

/// CORS for the listed origins; `None` (CORS off: browsers on other origins
/// cannot call the API) when the list is empty.
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    if origins.is_empty() {
        return None;
    }
    let allow =
        if origins.iter().any(|o| o.trim() == "*") {
            AllowOrigin::any()
        } else {
            AllowOrigin::list(origins.iter().filter_map(|o| {
                axum::http::HeaderValue::from_str(o.trim().trim_end_matches('/')).ok()
            }))
        };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers(Any),
    )
}

/// Largest total size of a request's headers; hyper itself stops reading a
/// request head at about 400 KiB.
pub const HEADERS_LIMIT: usize = 32 * 1024;

async fn limit_headers(
    request: axum::extract::Request,
    next: middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    let size: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if size > HEADERS_LIMIT {
        return Err(ApiError::Status(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("request headers are {size} bytes, above the limit of {HEADERS_LIMIT}"),
        ));
    }
    Ok(next.run(request).await)
}

pub fn router(state: AppState) -> Router {
    // Routes that share a path but differ in protection (GET /engines is open,
    // POST /engines is not) are merged by axum per method.
    let (open, protected) = add_routes(Router::new(), Router::new());
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        auth::require_access,
    ));
    open.merge(protected)
        .fallback(|| async { ApiError::NotFound("no such route; see GET /openapi.json".into()) })
        .method_not_allowed_fallback(|| async {
            ApiError::Status(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route; see GET /openapi.json".into(),
            )
        })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(limit_headers))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &axum::http::Request<_>| {
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_else(|| "unmatched".into());
                    tracing::debug_span!("http", method = %request.method(), route)
                })
                // A 5xx is either an expected condition (503: nothing fits, no
                // runtime) or an internal error that ApiError already logged.
                .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .on_response(
                    |response: &axum::http::Response<_>, latency: Duration, _: &tracing::Span| {
                        tracing::debug!(
                            status = response.status().as_u16(),
                            latency_ms = latency.as_secs_f64() * 1000.0,
                            "answered"
                        );
                    },
                ),
        )
        .with_state(state)
}
