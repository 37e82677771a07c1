//! Response bodies that are not a domain type: the small JSON objects some
//! handlers answer with. Each is what the handler sends, field for field; the
//! OpenAPI document is generated from them.

use serde::Serialize;
use utoipa::ToSchema;

use crate::api::containers::ContainerView;
use crate::domain::Stream;
use crate::registry::EngineView;
use crate::time::Timestamp;

/// `DELETE /engines/{id}`.
#[derive(Serialize, ToSchema)]
pub struct EngineDeleted {
    #[schema(schema_with = always_true)]
    pub deleted: bool,
    pub container_id: String,
}

/// `POST /engines/{id}/health/check`: the engine after the check, and the check.
#[derive(Serialize, ToSchema)]
pub struct EngineCheck<'a> {
    pub engine: EngineView<'a>,
    pub check: CheckOutcome,
}

/// One probe's verdict.
#[derive(Serialize, ToSchema)]
pub struct CheckOutcome {
    pub ok: bool,
    /// Probe latency in milliseconds.
    pub latency_ms: f64,
    /// Why the probe failed; null when it succeeded.
    #[schema(required = true)]
    pub error: Option<String>,
}

/// `POST /engines/select`: the engine and its reservation.
#[derive(Serialize, ToSchema)]
pub struct Selection<'a> {
    pub engine: EngineView<'a>,
    /// Pass it back in `stream_started` to consume this reservation.
    #[schema(format = "uuid")]
    pub reservation_id: String,
    /// When the reserved slot is released if no `stream_started` arrives for the engine.
    pub expires_at: Timestamp,
}

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
pub struct Liveness {
    pub status: LiveStatus,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LiveStatus {
    Ok,
}

/// `GET /health/ready`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub engines: usize,
    pub active_streams: usize,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadyStatus {
    Ready,
}

/// `DELETE /streams/{id}`: the ended stream and the engine's answer.
#[derive(Serialize, ToSchema)]
pub struct StreamStopped {
    pub stream: Stream,
    /// What the engine said to `command_url?method=stop`: `ok`, `no
    /// command_url` (also for a stream already ended), or `error: …`.
    #[schema(example = "ok")]
    pub engine_stop: String,
}

/// `POST /events/stream_ended`.
#[derive(Serialize, ToSchema)]
pub struct StreamEnded {
    /// True when this event ended a started stream; false when it was already
    /// ended or not found.
    pub updated: bool,
    /// The stream, or null when none was found.
    #[schema(required = true)]
    pub stream: Option<Stream>,
}

/// `POST /provision`.
#[derive(Serialize, ToSchema)]
pub struct GenericProvisioned {
    pub container_id: String,
    pub container_name: String,
    pub container: ContainerView,
}

/// `DELETE /containers/{id}`.
#[derive(Serialize, ToSchema)]
pub struct ContainerDeleted {
    #[schema(schema_with = always_true)]
    pub deleted: bool,
    pub container_id: String,
    pub container_name: String,
}

/// `POST /scale/{demand}`.
#[derive(Serialize, ToSchema)]
pub struct ScaleAnswer {
    pub demand: u32,
    pub min_replicas: u32,
    pub max_replicas: u32,
}

/// `POST /gc`: what the autoscaler did.
#[derive(Serialize, ToSchema)]
pub struct GcAnswer {
    /// Ids of the engines removed.
    pub removed: Vec<String>,
    /// Engines started.
    pub provisioned: u32,
}

/// A boolean that is always `true`.
fn always_true() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Boolean)
        .enum_values(Some([true]))
        .build()
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn wire<T: Serialize>(value: &T) -> Value {
        serde_json::to_value(value).unwrap()
    }

    /// The same JSON the handlers built with `json!` before these types.
    #[test]
    fn same_json_as_before() {
        assert_eq!(
            wire(&EngineDeleted {
                deleted: true,
                container_id: "h:1".into()
            }),
            json!({ "deleted": true, "container_id": "h:1" })
        );
        assert_eq!(
            wire(&CheckOutcome {
                ok: false,
                latency_ms: 1.5,
                error: None
            }),
            json!({ "ok": false, "latency_ms": 1.5, "error": null })
        );
        assert_eq!(
            wire(&Liveness {
                status: LiveStatus::Ok
            }),
            json!({ "status": "ok" })
        );
        assert_eq!(
            wire(&Readiness {
                status: ReadyStatus::Ready,
                engines: 2,
                active_streams: 1
            }),
            json!({ "status": "ready", "engines": 2, "active_streams": 1 })
        );
        assert_eq!(
            wire(&StreamEnded {
                updated: false,
                stream: None
            }),
            json!({ "updated": false, "stream": null })
        );
        assert_eq!(
            wire(&ContainerDeleted {
                deleted: true,
                container_id: "abc".into(),
                container_name: "engine-1".into()
            }),
            json!({ "deleted": true, "container_id": "abc", "container_name": "engine-1" })
        );
        assert_eq!(
            wire(&ScaleAnswer {
                demand: 3,
                min_replicas: 1,
                max_replicas: 5
            }),
            json!({ "demand": 3, "min_replicas": 1, "max_replicas": 5 })
        );
        assert_eq!(
            wire(&GcAnswer {
                removed: vec!["a".into()],
                provisioned: 0
            }),
            json!({ "removed": ["a"], "provisioned": 0 })
        );
    }
}
