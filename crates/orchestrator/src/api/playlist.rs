//! `POST /playlist` and `GET /playlist?url=…`: an M3U playlist answered with
//! its AceStream entries pointed at this orchestrator (see `crate::playlist`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::{ApiError, AppQuery};
use super::play::check_token;
use super::AppState;
use crate::playlist::{rewrite, FetchError, Format, PlaylistError};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RewriteQuery {
    /// `ts` (default: `/ace/getstream` URLs) or `hls` (`/ace/manifest.m3u8` URLs).
    format: Option<String>,
    /// `STREAM_TOKEN`, when it is set; also put in every rewritten URL.
    token: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FetchQuery {
    /// The remote playlist: http(s), on a host in PLAYLIST_ALLOWED_HOSTS.
    url: Option<String>,
    /// `ts` (default) or `hls`.
    format: Option<String>,
    /// `STREAM_TOKEN`, when it is set; also put in every rewritten URL.
    token: Option<String>,
}

fn format(value: Option<&str>) -> Result<Format, ApiError> {
    match value.unwrap_or("ts") {
        "" | "ts" => Ok(Format::Ts),
        "hls" => Ok(Format::Hls),
        other => Err(ApiError::BadRequest(format!(
            "format must be ts or hls, got '{other}'"
        ))),
    }
}

/// Where rewritten entries point: `PUBLIC_URL`, else `http://` and the
/// request's `Host`.
fn base_url(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    if let Some(public) = &state.proxy.settings().public_url {
        return Ok(public.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
        .ok_or_else(|| {
            ApiError::BadRequest(
                "the request has no usable Host header to build URLs from; set PUBLIC_URL".into(),
            )
        })?;
    Ok(format!("http://{host}"))
}

fn answer(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
    format: Format,
    token: Option<&str>,
) -> Result<Response, ApiError> {
    let base = base_url(state, headers)?;
    let token = state.stream_token.as_ref().and(token);
    let rewritten = rewrite(body, &base, format, token).map_err(|e| match e {
        PlaylistError::TooLarge => ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, e.to_string()),
        PlaylistError::NotText(_) => {
            ApiError::Status(StatusCode::UNSUPPORTED_MEDIA_TYPE, e.to_string())
        }
        PlaylistError::LineTooLong { .. } => ApiError::BadRequest(e.to_string()),
    })?;
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "audio/x-mpegurl; charset=utf-8".to_owned(),
            ),
            (
                header::HeaderName::from_static("x-rewritten-entries"),
                rewritten.entries.to_string(),
            ),
        ],
        rewritten.text,
    )
        .into_response())
}

#[utoipa::path(
    post, path = "/playlist", tag = "proxy", operation_id = "rewritePlaylist",
    summary = "Point a playlist's AceStream entries at this orchestrator",
    description = "The M3U body comes back with every `acestream://ID`, `ace://ID` and `http(s)://host:port/ace/getstream?id=ID` (also `content_id=`, `infohash=`) entry replaced by this orchestrator's `/ace/getstream` URL (`?format=hls`: `/ace/manifest.m3u8`), based on PUBLIC_URL or else the request's Host; every other byte is kept. `X-Rewritten-Entries` says how many entries were rewritten. The body may be up to 5 MiB, of UTF-8 text without NUL bytes, with lines up to 16 KiB.",
    params(RewriteQuery),
    request_body(content = String, content_type = "audio/x-mpegurl", description = "An M3U playlist."),
    responses(
        (status = 200, description = "The rewritten playlist.", content_type = "audio/x-mpegurl", body = String),
        (status = 400, description = "A line over 16 KiB, a bad `format`, or no Host to build URLs from.", body = super::error::Detail),
        (status = 413, description = "Larger than 5 MiB.", body = super::error::Detail),
        (status = 415, description = "Not text (NUL bytes, not UTF-8).", body = super::error::Detail),
    ),
)]
pub async fn rewrite_posted(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<RewriteQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_token(&state, query.token.as_deref())?;
    let format = format(query.format.as_deref())?;
    answer(&state, &headers, &body, format, query.token.as_deref())
}

#[utoipa::path(
    get, path = "/playlist", tag = "proxy", operation_id = "rewriteRemotePlaylist",
    summary = "Fetch a remote playlist and point its AceStream entries here",
    description = "Fetches `url` only from a host in PLAYLIST_ALLOWED_HOSTS (never a private, loopback or link-local address unless the host is listed by name or address; redirects are checked the same way), at most 5 MiB within PLAYLIST_FETCH_TIMEOUT_S, and answers it rewritten as `POST /playlist` does.",
    params(FetchQuery),
    responses(
        (status = 200, description = "The rewritten playlist.", content_type = "audio/x-mpegurl", body = String),
        (status = 400, description = "No or a malformed `url`, a scheme other than http(s), a host not in PLAYLIST_ALLOWED_HOSTS or one that resolves to a private address, a line over 16 KiB, a bad `format`.", body = super::error::Detail),
        (status = 413, description = "The remote playlist is larger than 5 MiB.", body = super::error::Detail),
        (status = 415, description = "The remote playlist is not text.", body = super::error::Detail),
        (status = 502, description = "The remote host failed or answered an error.", body = super::error::Detail),
        (status = 504, description = "The remote playlist did not arrive in time.", body = super::error::Detail),
    ),
)]
pub async fn rewrite_remote(
    State(state): State<AppState>,
    headers: HeaderMap,
    AppQuery(query): AppQuery<FetchQuery>,
) -> Result<Response, ApiError> {
    check_token(&state, query.token.as_deref())?;
    let format = format(query.format.as_deref())?;
    let url = query
        .url
        .as_deref()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| ApiError::BadRequest("give the playlist's address: ?url=".into()))?;
    let body = state
        .proxy
        .settings()
        .playlists
        .fetch(url)
        .await
        .map_err(|e| match e {
            FetchError::BadUrl(_) => ApiError::BadRequest(e.to_string()),
            // 400, not 403: 401/403 are the answers about credentials.
            FetchError::NotAllowed(_) => ApiError::BadRequest(e.to_string()),
            FetchError::TooLarge(_) => {
                ApiError::Status(StatusCode::PAYLOAD_TOO_LARGE, e.to_string())
            }
            FetchError::Timeout { .. } => {
                ApiError::Status(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            FetchError::Upstream(_) => ApiError::Status(StatusCode::BAD_GATEWAY, e.to_string()),
        })?;
    answer(&state, &headers, &body, format, query.token.as_deref())
}
