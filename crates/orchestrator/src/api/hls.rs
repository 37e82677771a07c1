//! HLS for players: `GET /ace/manifest.m3u8?id=…` (the `/ace/getstream`
//! parameters) joins or starts the content's shared session, gives the player
//! a viewer token and redirects it to its live playlist,
//! `/ace/hls/{token}/index.m3u8`, whose segments are `/ace/hls/{token}/{seq}.ts`.
//! The token is how the orchestrator knows the player is still there (it
//! fetches) and when it left (it stopped fetching).

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ApiError, AppPath, AppQuery};
use super::play::{check_token, content_key, proxy_error, PlayQuery};
use super::AppState;
use crate::proxy::hls::Lookup;

const PLAYLIST_TYPE: &str = "application/vnd.apple.mpegurl";

/// A player's address and user agent: a player that reloads the first URL
/// (instead of the one it was redirected to) keeps its token.
fn fingerprint(peer: Option<SocketAddr>, headers: &HeaderMap) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    peer.map(|p| p.ip()).hash(&mut hasher);
    headers
        .get(header::USER_AGENT)
        .map(HeaderValue::as_bytes)
        .hash(&mut hasher);
    hasher.finish()
}

#[utoipa::path(
    get, path = "/ace/manifest.m3u8", tag = "proxy", operation_id = "playHls",
    summary = "Play a stream as HLS through the built-in proxy",
    description = "Joins (or starts) the content's shared engine session, the same one MPEG-TS players of `/ace/getstream` read, waits for its first segment (bounded) and redirects to the player's own live playlist `hls/{token}/index.m3u8`. The same parameters and errors as `/ace/getstream`; `HEAD` checks them without starting anything.",
    params(PlayQuery),
    responses(
        (status = 302, description = "To the player's live playlist (`Location: hls/{token}/index.m3u8`)."),
        (status = 400, description = "No content named, a malformed id, or `url=`.", body = super::error::Detail),
        (status = 502, description = "The engine refused the content (its own error).", body = super::error::Detail),
        (status = 503, description = "No engine could take the stream, a limit was reached, or no segment came in time; see Retry-After.", body = super::error::Detail),
    ),
)]
pub async fn manifest(
    State(state): State<AppState>,
    method: Method,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    query: AppQuery<PlayQuery>,
) -> Response {
    let orch = state.orch.clone();
    let response = open_manifest(state, method, extensions, headers, query)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    count(&orch.metrics, "manifest", response.status());
    response
}

/// Counts one HLS answer in `orch_hls_requests_total`.
fn count(metrics: &crate::metrics::Metrics, file: &'static str, status: StatusCode) {
    let result = crate::metrics::hls_result(status.as_u16());
    metrics
        .hls_requests
        .get_or_create(&crate::metrics::HlsLabels { file, result })
        .inc();
}

async fn open_manifest(
    state: AppState,
    method: Method,
    extensions: axum::http::Extensions,
    headers: HeaderMap,
    AppQuery(query): AppQuery<PlayQuery>,
) -> Result<Response, ApiError> {
    check_token(&state, query.token.as_deref())?;
    let key = content_key(&query)?;
    if method == Method::HEAD {
        return Ok(([(header::CONTENT_TYPE, PLAYLIST_TYPE)], Body::empty()).into_response());
    }
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(p)| *p);
    let print = fingerprint(peer, &headers);
    let (token, hls) = match state.proxy.watch_hls(key, print).await {
        Ok(watched) => watched,
        Err(error) => return Ok(proxy_error(error)),
    };
    if !hls.wait_first_segment().await {
        let mut response = ApiError::Unavailable(format!(
            "the stream sent no complete segment within {:.0} s",
            state.proxy.hls_config().first_segment_wait.as_secs_f64()
        ))
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return Ok(response);
    }
    // Relative, so that it works behind a reverse proxy with a path prefix.
    let location = format!("hls/{token}/index.m3u8");
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, location),
            (header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response())
}

#[utoipa::path(
    get, path = "/ace/hls/{token}/{file}", tag = "proxy", operation_id = "hlsFile",
    summary = "A player's live HLS playlist or one of its segments",
    description = "`index.m3u8`: the live media playlist (a sliding window of HLS_WINDOW_SIZE segments, `#EXT-X-DISCONTINUITY` after a failover). `{seq}.ts`: one segment (MPEG-TS starting with PAT, PMT and a keyframe). Every fetch tells the orchestrator the player is still watching.",
    params(
        ("token" = String, Path, description = "The viewer token `/ace/manifest.m3u8` redirected to."),
        ("file" = String, Path, description = "`index.m3u8` or `{seq}.ts`."),
    ),
    responses(
        (status = 200, description = "The playlist (`application/vnd.apple.mpegurl`) or the segment (`video/mp2t`).", content_type = "application/vnd.apple.mpegurl", body = String),
        (status = 404, description = "Unknown token (expired, or its stream ended), unknown file, or a segment not produced yet.", body = super::error::Detail),
        (status = 410, description = "The segment slid out of the live window.", body = super::error::Detail),
        (status = 503, description = "The stream has no segment yet.", body = super::error::Detail),
    ),
)]
pub async fn file(
    State(state): State<AppState>,
    AppPath((token, file)): AppPath<(String, String)>,
) -> Response {
    let orch = state.orch.clone();
    let kind = if file == "index.m3u8" {
        "playlist"
    } else {
        "segment"
    };
    let response = serve_file(state, token, file)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    count(&orch.metrics, kind, response.status());
    response
}

async fn serve_file(state: AppState, token: String, file: String) -> Result<Response, ApiError> {
    let hls = state.proxy.hls_viewer(&token).ok_or_else(|| {
        ApiError::NotFound(format!(
            "unknown HLS viewer token '{token}': it expired or its stream ended; open /ace/manifest.m3u8?id=… again"
        ))
    })?;
    if file == "index.m3u8" {
        if !hls.wait_first_segment().await {
            return Err(ApiError::Unavailable(
                "the stream has no segment yet".into(),
            ));
        }
        return Ok((
            [
                (header::CONTENT_TYPE, PLAYLIST_TYPE),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            hls.playlist(),
        )
            .into_response());
    }
    let seq = file
        .strip_suffix(".ts")
        .filter(|n| !n.is_empty() && n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "no file '{file}' here: index.m3u8 or a segment, {{sequence number}}.ts"
            ))
        })?;
    match hls.segment(seq) {
        Lookup::Found(data) => {
            state
                .orch
                .metrics
                .hls_segment_bytes
                .inc_by(data.len() as u64);
            Ok((
                [
                    (header::CONTENT_TYPE, "video/mp2t"),
                    (header::CACHE_CONTROL, "max-age=60"),
                ],
                data,
            )
                .into_response())
        }
        Lookup::SlidOut { oldest } => Err(ApiError::Status(
            StatusCode::GONE,
            format!("segment {seq} slid out of the live window; the oldest kept is {oldest}"),
        )),
        Lookup::NotYet { newest } => Err(ApiError::NotFound(match newest {
            Some(newest) => format!("segment {seq} does not exist (yet); the newest is {newest}"),
            None => format!("segment {seq} does not exist (yet)"),
        })),
    }
}
