//! Access to protected routes: `Authorization: Bearer $API_KEY` when a key is
//! set (401 without a token, 403 with a wrong one); without a key, only clients
//! on loopback. The key is compared in constant time and never logged.

use std::net::SocketAddr;

use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

pub async fn require_access(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    match &state.api_key {
        Some(key) => {
            let header = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let token = header
                .strip_prefix("Bearer ")
                .or_else(|| header.strip_prefix("bearer "))
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::Unauthorized(
                        "this endpoint needs 'Authorization: Bearer <API_KEY>'".into(),
                    )
                })?;
            if !bool::from(token.as_bytes().ct_eq(key.as_bytes())) {
                return Err(ApiError::Forbidden(
                    "the bearer token is not the API key".into(),
                ));
            }
        }
        None => {
            let extensions = request.extensions();
            // `MockConnectInfo` is how in-process tests say who is calling.
            let peer = extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ConnectInfo(addr)| addr.ip())
                .or_else(|| {
                    extensions
                        .get::<MockConnectInfo<SocketAddr>>()
                        .map(|m| m.0.ip())
                });
            let loopback = peer.is_some_and(|ip| match ip {
                std::net::IpAddr::V4(v4) => v4.is_loopback(),
                std::net::IpAddr::V6(v6) => {
                    v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
            });
            if !loopback {
                return Err(ApiError::Forbidden(
                    "API_KEY is not set, so protected endpoints only answer clients on loopback; set API_KEY to allow others".into(),
                ));
            }
        }
    }
    Ok(next.run(request).await)
}
