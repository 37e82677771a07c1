//! Container routes (docs/CONTRACT.md, "Containers we run"): provisioning,
//! inspection, removal, scaling and garbage collection of the containers we
//! manage.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::error::{ApiError, AppJson, AppPath, AppQuery};
use super::AppState;
use crate::pool::{EngineRequest, GenericRequest, Pool, ProvisionError, Provisioned};
use crate::runtime::{ContainerInfo, PortMapping, RuntimeError};
use crate::time::Timestamp;

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        let message = e.to_string();
        match e {
            ProvisionError::MaxReplicas(_) => ApiError::Conflict(message),
            ProvisionError::Ports(_) | ProvisionError::Names(_) => ApiError::Unavailable(message),
            // An image the caller chose is their mistake; TARGET_IMAGE is ours.
            ProvisionError::ImageNotFound(_) => ApiError::Unprocessable(message),
            ProvisionError::TargetImageMissing(_) => ApiError::Unavailable(message),
            ProvisionError::NotReady { .. } => {
                ApiError::Status(StatusCode::GATEWAY_TIMEOUT, message)
            }
            ProvisionError::NotManaged(..) | ProvisionError::ImageNotAllowed(..) => {
                ApiError::Forbidden(message)
            }
            ProvisionError::NotFound(_) => ApiError::NotFound(message),
            ProvisionError::Runtime(RuntimeError::NameConflict(_)) => ApiError::Conflict(message),
            ProvisionError::Runtime(RuntimeError::NotFound(_)) => ApiError::NotFound(message),
            ProvisionError::Runtime(RuntimeError::Other(_)) => {
                ApiError::Status(StatusCode::BAD_GATEWAY, message)
            }
            ProvisionError::Runtime(_) => ApiError::Unavailable(message),
        }
    }
}

pub fn pool(state: &AppState) -> Result<&Arc<Pool>, ApiError> {
    state
        .pool
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no container runtime is configured".into()))
}

/// Parses an optional JSON body: empty means the default.
fn optional_body<T: DeserializeOwned + Default>(
    body: Result<Bytes, BytesRejection>,
    shape: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(ApiError::from)?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::Unprocessable(format!("the body does not fit {shape}: {e}")))
}

#[derive(Deserialize, Default)]
struct AcestreamBody {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `POST /provision/acestream`: starts an engine; answers once its API answers.
pub async fn provision_acestream(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Provisioned>, ApiError> {
    let body: AcestreamBody = optional_body(body, r#"{"labels"?: {..}, "env"?: {..}}"#)?;
    let pool = pool(&state)?;
    Ok(Json(
        pool.provision_engine(EngineRequest {
            labels: body.labels,
            env: body.env,
        })
        .await?,
    ))
}

/// Ports as Docker names them: `{"6878/tcp": 19001}` (host port, or null for
/// any free one).
#[derive(Deserialize)]
pub struct GenericBody {
    image: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ports: BTreeMap<String, Option<i64>>,
}

#[derive(Serialize)]
pub struct ContainerView {
    id: String,
    name: String,
    image: String,
    created: Timestamp,
    status: String,
    labels: BTreeMap<String, String>,
    ports: Vec<PortMapping>,
}

impl From<ContainerInfo> for ContainerView {
    fn from(c: ContainerInfo) -> Self {
        Self {
            id: c.id,
            name: c.name,
            image: c.image,
            created: c.created,
            status: c.status.to_string(),
            labels: c.labels,
            ports: c.ports,
        }
    }
}

/// `POST /provision`: starts any container, labelled as ours.
pub async fn provision_generic(
    State(state): State<AppState>,
    AppJson(body): AppJson<GenericBody>,
) -> Result<Json<serde_json::Value>, ApiError> {
    if body.image.trim().is_empty() {
        return Err(ApiError::Unprocessable("image is empty".into()));
    }
    let mut ports = Vec::new();
    for (spec, host) in body.ports {
        let number = spec.strip_suffix("/tcp").unwrap_or(&spec);
        let container_port = number
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "ports: '{spec}' is not a TCP port like \"6878/tcp\""
                ))
            })?;
        let host_port = host
            .map(|h| super::engines::valid_port(&format!("ports.{spec}"), h))
            .transpose()?;
        ports.push(PortMapping {
            container_port,
            host_port,
        });
    }
    let pool = pool(&state)?;
    let info = pool
        .provision_generic(GenericRequest {
            image: body.image,
            env: body.env,
            labels: body.labels,
            ports,
        })
        .await?;
    Ok(Json(json!({
        "container_id": info.id,
        "container_name": info.name,
        "container": ContainerView::from(info),
    })))
}

pub async fn inspect(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ContainerView>, ApiError> {
    let info = pool(&state)?
        .inspect_managed(&id)
        .await
        .map_err(|e| match e {
            // Containers that are not ours are not shown at all.
            ProvisionError::NotManaged(id, _) => ApiError::NotFound(format!(
                "container '{id}' not found among managed containers"
            )),
            other => other.into(),
        })?;
    Ok(Json(info.into()))
}

/// `DELETE /containers/{id}`: only containers carrying our label.
pub async fn remove(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let info = pool(&state)?
        .remove(&id, "container removed through the API")
        .await?;
    Ok(Json(
        json!({ "deleted": true, "container_id": info.id, "container_name": info.name }),
    ))
}

#[derive(Deserialize)]
pub struct LabelQuery {
    key: String,
    value: Option<String>,
}

/// `GET /by-label?key=&value=`: managed containers carrying that label.
pub async fn by_label(
    State(state): State<AppState>,
    AppQuery(query): AppQuery<LabelQuery>,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    if query.key.is_empty() {
        return Err(ApiError::BadRequest("key is empty".into()));
    }
    let containers = pool(&state)?.list_managed().await?;
    Ok(Json(
        containers
            .into_iter()
            .filter(|c| match (&query.value, c.labels.get(&query.key)) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(have)) => want == have,
            })
            .map(ContainerView::from)
            .collect(),
    ))
}

/// `POST /scale/{demand}`: the number of engines the autoscaler should keep.
pub async fn scale(
    State(state): State<AppState>,
    AppPath(demand): AppPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let text = demand;
    let demand: u32 = match text.parse() {
        Ok(n) => n,
        // A whole number too large for u32 is still above MAX_REPLICAS (422), not "not a number".
        Err(e) if *e.kind() == std::num::IntErrorKind::PosOverflow => u32::MAX,
        Err(_) => {
            return Err(ApiError::BadRequest(format!(
                "demand '{text}' is not a whole number of engines"
            )));
        }
    };
    let pool = pool(&state)?;
    let max = pool.settings.max_replicas;
    if demand > max {
        return Err(ApiError::Unprocessable(format!(
            "demand {text} is above MAX_REPLICAS ({max})"
        )));
    }
    pool.set_demand(demand).await;
    Ok(Json(json!({
        "demand": demand,
        "min_replicas": pool.settings.min_replicas,
        "max_replicas": max,
    })))
}

/// `POST /gc`: removes empty engines above the minimum now, without waiting
/// for their grace period.
pub async fn gc(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let plan = pool(&state)?
        .collect_garbage()
        .await
        .ok_or_else(|| ApiError::Unavailable("the reconciler is not running".into()))?;
    Ok(Json(
        json!({ "removed": plan.remove, "provisioned": plan.provision }),
    ))
}
