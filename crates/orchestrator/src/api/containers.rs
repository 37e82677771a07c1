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

use super::error::{ApiError, AppJson, AppPath, AppQuery};
use super::wire::{ContainerDeleted, GcAnswer, GenericProvisioned, ScaleAnswer};
use super::AppState;
use crate::pool::{EngineRequest, GenericRequest, Pool, ProvisionError, Provisioned};
use crate::runtime::{ContainerInfo, PortMapping, RuntimeError};
use crate::time::Timestamp;

impl From<ProvisionError> for ApiError {
    fn from(e: ProvisionError) -> Self {
        let message = e.to_string();
        match e {
            ProvisionError::MaxReplicas(_) => ApiError::Conflict(message),
            ProvisionError::Ports(_) | ProvisionError::Names(_) | ProvisionError::NoVpnNode(_) => {
                ApiError::Unavailable(message)
            }
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

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = ProvisionEngineRequest)]
struct AcestreamBody {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Extra environment; a CONF given here replaces the generated one.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// `POST /provision/acestream`: starts an engine; answers once its API answers.
#[utoipa::path(
    post, path = "/provision/acestream", tag = "containers", operation_id = "provisionAcestream",
    summary = "Start an engine container",
    description = "Starts an engine from TARGET_IMAGE with ports from the configured ranges, the CONTAINER_LABEL and port labels, and CONF (unless given). Answers once the engine's API answers; an engine not ready within STARTUP_TIMEOUT_S is removed and its ports freed.",
    request_body(content = Option<AcestreamBody>, description = "Optional."),
    responses(
        (status = 200, description = "The engine is running and answers.", body = Provisioned),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 409, description = "MAX_REPLICAS engines run already.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 422, description = "The body does not fit.", body = super::error::Detail),
        (status = 503, description = "The container runtime is unreachable, a port range is exhausted, or TARGET_IMAGE is not on the Docker host.", body = super::error::Detail),
        (status = 504, description = "The engine did not answer within STARTUP_TIMEOUT_S; its container was removed.", body = super::error::Detail),
    ),
)]
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
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = ProvisionRequest)]
pub struct GenericBody {
    /// Not blank.
    #[schema(min_length = 1, pattern = r"\S")]
    image: String,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Docker style: `{"6878/tcp": 19001}`; null publishes on any free host port.
    #[serde(default)]
    #[schema(schema_with = port_map_schema)]
    ports: BTreeMap<String, Option<i64>>,
}

/// `{"<port>/tcp": host port or null}`.
fn port_map_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
    let host_port = ObjectBuilder::new()
        .schema_type(SchemaType::Array(vec![Type::Integer, Type::Null]))
        .minimum(Some(1))
        .maximum(Some(65535));
    let port_spec = ObjectBuilder::new().schema_type(Type::String).pattern(Some(
        "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])(/tcp)?$",
    ));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(port_spec))
        .description(Some(
            "Docker style: `{\"6878/tcp\": 19001}`; null publishes on any free host port.",
        ))
        .additional_properties(Some(AdditionalProperties::RefOr(host_port.into())))
        .build()
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Container)]
pub struct ContainerView {
    id: String,
    name: String,
    image: String,
    created: Timestamp,
    /// Docker's state: created, running, paused, restarting, removing, exited, dead.
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
#[utoipa::path(
    post, path = "/provision", tag = "containers", operation_id = "provisionContainer",
    summary = "Start any container",
    description = "Starts a container from `image` with the CONTAINER_LABEL added to its labels.",
    request_body = GenericBody,
    responses(
        (status = 200, description = "Started.", body = super::wire::GenericProvisioned),
        (status = 408, description = "The body did not arrive within `HTTP_HEADER_TIMEOUT_S` seconds.", body = super::error::Detail),
        (status = 409, description = "A container with that name exists.", body = super::error::Detail),
        (status = 413, description = "The body is larger than 64 KiB.", body = super::error::Detail),
        (status = 415, description = "The body is not sent with `Content-Type: application/json`.", body = super::error::Detail),
        (status = 422, description = "The body does not fit, or the image is not on the Docker host.", body = super::error::Detail),
        (status = 502, description = "The Docker daemon refused the request.", body = super::error::Detail),
        (status = 503, description = "The container runtime is unreachable.", body = super::error::Detail),
    ),
)]
pub async fn provision_generic(
    State(state): State<AppState>,
    AppJson(body): AppJson<GenericBody>,
) -> Result<Json<GenericProvisioned>, ApiError> {
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
    Ok(Json(GenericProvisioned {
        container_id: info.id.clone(),
        container_name: info.name.clone(),
        container: ContainerView::from(info),
    }))
}

#[utoipa::path(
    get, path = "/containers/{id}", tag = "containers", operation_id = "inspectContainer",
    summary = "Inspect a managed container",
    params(("id" = String, Path, description = "Container id (full or short) or name.")),
    responses(
        (status = 200, description = "The container.", body = ContainerView),
        (status = 404, description = "No managed container with that id.", body = super::error::Detail),
        (status = 503, description = "The container runtime is unreachable.", body = super::error::Detail),
    ),
)]
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
#[utoipa::path(
    delete, path = "/containers/{id}", tag = "containers", operation_id = "deleteContainer",
    summary = "Stop and remove a managed container",
    description = "Only containers carrying CONTAINER_LABEL; the engine leaves the registry, its streams end and its ports are freed.",
    params(("id" = String, Path, description = "Container id (full or short) or name.")),
    responses(
        (status = 200, description = "Removed.", body = super::wire::ContainerDeleted),
        (status = 403, description = "Bad or missing key (see above), or the container does not carry CONTAINER_LABEL.", body = super::error::Detail),
        (status = 404, description = "No such container.", body = super::error::Detail),
        (status = 503, description = "The container runtime is unreachable.", body = super::error::Detail),
    ),
)]
pub async fn remove(
    State(state): State<AppState>,
    AppPath(id): AppPath<String>,
) -> Result<Json<ContainerDeleted>, ApiError> {
    let info = pool(&state)?
        .remove(&id, "container removed through the API")
        .await?;
    Ok(Json(ContainerDeleted {
        deleted: true,
        container_id: info.id,
        container_name: info.name,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LabelQuery {
    #[param(min_length = 1)]
    key: String,
    value: Option<String>,
}

/// `GET /by-label?key=&value=`: managed containers carrying that label.
#[utoipa::path(
    get, path = "/by-label", tag = "containers", operation_id = "containersByLabel",
    summary = "Managed containers with a label",
    params(LabelQuery),
    responses(
        (status = 200, description = "Matching containers.", body = [ContainerView]),
        (status = 400, description = "key is missing or empty.", body = super::error::Detail),
        (status = 503, description = "The container runtime is unreachable.", body = super::error::Detail),
    ),
)]
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
#[utoipa::path(
    post, path = "/scale/{demand}", tag = "containers", operation_id = "scale",
    summary = "Set the autoscaler's demand",
    description = "The autoscaler keeps at least `demand` engines (and MIN_REPLICAS free), never more than MAX_REPLICAS.",
    params(("demand" = u64, Path, minimum = 0, description = "The number of engines wanted.")),
    responses(
        (status = 200, description = "Demand set; the autoscaler runs now.", body = super::wire::ScaleAnswer),
        (status = 400, description = "demand is not a whole number.", body = super::error::Detail),
        (status = 422, description = "demand is above MAX_REPLICAS.", body = super::error::Detail),
        (status = 503, description = "No container runtime.", body = super::error::Detail),
    ),
)]
pub async fn scale(
    State(state): State<AppState>,
    AppPath(demand): AppPath<String>,
) -> Result<Json<ScaleAnswer>, ApiError> {
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
    pool.set_demand(demand);
    Ok(Json(ScaleAnswer {
        demand,
        min_replicas: pool.settings.min_replicas,
        max_replicas: max,
    }))
}

/// `POST /gc`: removes empty engines above the minimum now, without waiting
/// for their grace period.
#[utoipa::path(
    post, path = "/gc", tag = "containers", operation_id = "gc",
    summary = "Remove idle engines now",
    description = "Runs the autoscaler once without the grace period: empty engines above MIN_REPLICAS (and demand) are removed.",
    responses(
        (status = 200, description = "What was done.", body = super::wire::GcAnswer),
        (status = 503, description = "No container runtime.", body = super::error::Detail),
    ),
)]
pub async fn gc(State(state): State<AppState>) -> Result<Json<GcAnswer>, ApiError> {
    let plan = pool(&state)?
        .collect_garbage()
        .await
        .ok_or_else(|| ApiError::Unavailable("the reconciler is not running".into()))?;
    Ok(Json(GcAnswer {
        removed: plan.remove,
        provisioned: plan.provision,
    }))
}
