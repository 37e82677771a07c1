//! One error type for every handler, mapped to a status and a JSON
//! `{"detail": "..."}` in one place. Client mistakes are 4xx with a message
//! naming the problem; internal failures are logged and answered generically.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::registry::RegistryError;
use crate::service::ServiceError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Unavailable(String),
    /// A rejection that already knows its status (413, 415, …).
    #[error("{1}")]
    Status(StatusCode, String),
    #[error("internal error: {0}")]
    Internal(String),
}

/// Longest `detail` sent back, in bytes.
const MAX_DETAIL: usize = 512;

/// Every error answer: a message naming what was wrong.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
// No effect on serializing; tells the OpenAPI schema `additionalProperties: false`.
#[serde(deny_unknown_fields)]
pub struct Detail<'a> {
    #[schema(example = "engine '127.0.0.1:19023' not found")]
    detail: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, detail) = match &self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, m.as_str()),
            ApiError::Unprocessable(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.as_str()),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, m.as_str()),
            ApiError::Conflict(m) => (StatusCode::CONFLICT, m.as_str()),
            ApiError::Unauthorized(m) => (StatusCode::UNAUTHORIZED, m.as_str()),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, m.as_str()),
            ApiError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, m.as_str()),
            ApiError::Status(code, m) => (*code, m.as_str()),
            ApiError::Internal(m) => {
                tracing::error!(error = %m, "request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error; see the orchestrator's log",
                )
            }
        };
        // Details quote client input (ids, URLs); keep a 10 KB id from coming back whole.
        let shortened;
        let detail = if detail.len() > MAX_DETAIL {
            let mut end = MAX_DETAIL;
            while !detail.is_char_boundary(end) {
                end -= 1;
            }
            shortened = format!("{}…", &detail[..end]);
            shortened.as_str()
        } else {
            detail
        };
        let mut response = (status, Json(Detail { detail })).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::EngineNotFound(_) | RegistryError::StreamNotFound(_) => {
                ApiError::NotFound(e.to_string())
            }
            RegistryError::ForeignUrl { .. } | RegistryError::BadUrl { .. } => {
                ApiError::Unprocessable(e.to_string())
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Registry(e) => e.into(),
            // The database refused the write: the client did nothing wrong, and
            // the change is not durable, so say so instead of pretending.
            ServiceError::Store(
                e @ (StoreError::Write { .. }
                | StoreError::Sqlite(_)
                | StoreError::Closed
                | StoreError::Backlog { .. }),
            ) => {
                tracing::error!(error = %e, "write not saved");
                ApiError::Unavailable(format!("the change could not be saved: {e}"))
            }
            ServiceError::Store(e) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let message = match &rejection {
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                // axum's text says "Failed to deserialize…: <path>: <serde message>".
                rejection.body_text()
            }
            JsonRejection::MissingJsonContentType(_) => {
                "expected a JSON body with Content-Type: application/json".to_owned()
            }
            JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                format!(
                    "request body is larger than the limit of {} bytes",
                    super::BODY_LIMIT
                )
            }
            _ => rejection.body_text(),
        };
        let status = if status == StatusCode::BAD_REQUEST {
            // Malformed JSON is a body that does not fit, like a wrong type.
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            status
        };
        ApiError::Status(status, message)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::Status(
                status,
                format!(
                    "request body is larger than the limit of {} bytes",
                    super::BODY_LIMIT
                ),
            )
        } else {
            ApiError::Status(status, rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::BadRequest(rejection.body_text())
    }
}

/// `Json` whose rejections are our JSON errors instead of axum's plain text.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct AppJson<T>(pub T);

/// `Query` with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct AppQuery<T>(pub T);

/// `Path` with JSON rejections.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct AppPath<T>(pub T);
