//! `GET /ace/getstream`: the built-in proxy, for players. The parameters are
//! the engine's own (`id=`/`content_id=`, `infohash=`, `magnet=`; `pid=` is
//! accepted and ignored), so a playlist only changes host:port from the
//! engine's 6878 to the orchestrator. Players send no bearer header: the route
//! is open, or needs `?token=` when `STREAM_TOKEN` is set.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use super::error::{ApiError, AppQuery};
use super::AppState;
use crate::proxy::hub::{ContentKey, ProxyError};

/// Seconds a player is told to wait before retrying when no engine is free.
const RETRY_AFTER_S: &str = "5";

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PlayQuery {
    /// Content id: 40 hexadecimal digits.
    id: Option<String>,
    /// Same as `id` (the engine's other spelling).
    content_id: Option<String>,
    /// Torrent infohash: 40 hexadecimal digits.
    infohash: Option<String>,
    /// A `magnet:?xt=urn:btih:…` link, passed to the engine (never fetched by us).
    magnet: Option<String>,
    /// Refused: the engine would fetch any URL a client gives it.
    url: Option<String>,
    /// The player id; accepted and ignored, as the engine does.
    #[allow(dead_code)]
    pid: Option<String>,
    /// `STREAM_TOKEN`, when it is set.
    pub(super) token: Option<String>,
}

fn hex40(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(ApiError::BadRequest(format!(
            "{field} must be 40 hexadecimal digits, got '{value}'"
        )))
    }
}

pub(super) fn content_key(q: &PlayQuery) -> Result<ContentKey, ApiError> {
    let id =
        q.id.as_deref()
            .or(q.content_id.as_deref())
            .filter(|s| !s.is_empty());
    if let Some(id) = id {
        return Ok(ContentKey::ContentId(hex40("id", id)?));
    }
    if let Some(hash) = q.infohash.as_deref().filter(|s| !s.is_empty()) {
        return Ok(ContentKey::Infohash(hex40("infohash", hash)?));
    }
    if let Some(magnet) = q.magnet.as_deref().filter(|s| !s.is_empty()) {
        let hash = magnet
            .strip_prefix("magnet:?xt=urn:btih:")
            .map(|rest| rest.split('&').next().unwrap_or(""))
            .ok_or_else(|| {
                ApiError::BadRequest("magnet must start with magnet:?xt=urn:btih:".into())
            })?;
        if magnet.len() > 2048
            || !(hash.len() == 40 || hash.len() == 32)
            || !hash.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(ApiError::BadRequest(
                "magnet must carry a 40-hex or 32-base32 btih and be under 2 KiB".into(),
            ));
        }
        return Ok(ContentKey::Magnet(magnet.to_owned()));
    }
    if q.url.as_deref().is_some_and(|u| !u.is_empty()) {
        return Err(ApiError::BadRequest(
            "url= is not accepted: the engine would fetch any URL a client names; use id=, infohash= or magnet=".into(),
        ));
    }
    Err(ApiError::BadRequest(
        "give the content: id= (or content_id=), infohash= or magnet=".into(),
    ))
}

#[utoipa::path(
    get, path = "/ace/getstream", tag = "proxy", operation_id = "playStream",
    summary = "Play a stream through the built-in proxy",
    description = "MPEG-TS for players. Every viewer of a content shares one engine session; when the engine hangs or dies the stream moves to another engine without closing the connection. `HEAD` checks the parameters without starting anything. Open (no bearer key: players cannot send one); when STREAM_TOKEN is set, `?token=` is required and a missing or wrong one gets 401 or 403.",
    params(PlayQuery),
    responses(
        (status = 200, description = "The stream (`video/mp2t`), endless while live.", content_type = "video/mp2t", body = Vec<u8>),
        (status = 400, description = "No content named, a malformed id, or `url=`.", body = super::error::Detail),
        (status = 502, description = "The engine refused the content (its own error).", body = super::error::Detail),
        (status = 503, description = "No engine could take the stream, or a limit was reached; see Retry-After.", body = super::error::Detail),
    ),
)]
pub async fn getstream(
    State(state): State<AppState>,
    method: Method,
    AppQuery(query): AppQuery<PlayQuery>,
) -> Result<Response, ApiError> {
    check_token(&state, query.token.as_deref())?;
    let key = content_key(&query)?;
    let ts_headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("video/mp2t")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    if method == Method::HEAD {
        return Ok((ts_headers, Body::empty()).into_response());
    }
    match state.proxy.watch(key).await {
        Ok(viewer) => Ok((ts_headers, Body::from_stream(viewer)).into_response()),
        Err(error) => Ok(proxy_error(error)),
    }
}

/// `STREAM_TOKEN`'s check, for every route players open.
pub(super) fn check_token(state: &AppState, given: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = &state.stream_token else {
        return Ok(());
    };
    match given {
        None | Some("") => Err(ApiError::Unauthorized(
            "this stream needs ?token= (STREAM_TOKEN is set)".into(),
        )),
        Some(given) if !bool::from(given.as_bytes().ct_eq(expected.as_bytes())) => {
            Err(ApiError::Forbidden("wrong stream token".into()))
        }
        Some(_) => Ok(()),
    }
}

/// The answer to a viewer the proxy could not serve: 502 for a content the
/// engine refused, 503 with `Retry-After` when no engine or no room.
pub(super) fn proxy_error(error: ProxyError) -> Response {
    let api_error = match error {
        ProxyError::ContentRefused(_) => {
            ApiError::Status(StatusCode::BAD_GATEWAY, error.to_string())
        }
        ProxyError::NoEngine(_) | ProxyError::Full(_) | ProxyError::TooManySessions(_) => {
            ApiError::Unavailable(error.to_string())
        }
    };
    let mut response = api_error.into_response();
    if response.status() == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_S));
    }
    response
}
