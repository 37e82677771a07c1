//! Where engine containers run. Everything above this layer sees a
//! [`ContainerRuntime`] behind an `Arc<dyn ContainerRuntime>`; only
//! [`docker`] (containers on one host) and [`swarm`] (one Docker Swarm
//! service per engine, on any node) know about the Docker Engine API (through
//! `bollard`). `RUNTIME` picks one.
//!
//! The trait uses boxed futures and streams instead of `async fn`, so that it
//! can be used as a trait object without extra crates.
//!
//! Every call of an implementation is bounded in time: a daemon that does not
//! answer gives [`RuntimeError::Unreachable`], never a hang.

use std::collections::BTreeMap;
use std::fmt;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::time::Timestamp;

pub mod docker;
pub mod memory;
pub mod swarm;

pub use docker::DockerRuntime;
pub use swarm::SwarmRuntime;

/// A Docker label written `key=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub key: String,
    pub value: String,
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// A container to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (`engine-3`); the runtime refuses a name already in use
    /// with [`RuntimeError::NameConflict`].
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    pub labels: BTreeMap<String, String>,
    /// TCP ports to publish on the host (all host addresses).
    pub ports: Vec<PortMapping>,
    /// Network to attach the container to instead of the default bridge.
    pub network: Option<String>,
    /// Linux capabilities to add (`NET_ADMIN` for a VPN client).
    pub cap_add: Vec<String>,
    /// Host devices given to the container at the same path (`/dev/net/tun`).
    pub devices: Vec<String>,
    /// Memory and CPU caps (`ENGINE_MEMORY_LIMIT`, `ENGINE_CPU_LIMIT`).
    pub limits: ResourceLimits,
}

/// Caps on what one container may use; `None` is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    pub memory_bytes: Option<i64>,
    /// Billionths of a CPU core, as Docker counts them (1.5 cores = 1_500_000_000).
    pub nano_cpus: Option<i64>,
}

/// A container TCP port and the host port it is published on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
pub struct PortMapping {
    #[schema(minimum = 1, maximum = 65535)]
    pub container_port: u16,
    /// In a [`ContainerSpec`]: `None` lets the runtime pick a free host port.
    /// In a [`ContainerInfo`]: the host port it is published on, `None` when
    /// it is not published (or not yet, for a container that is not running).
    #[schema(required = true, minimum = 1, maximum = 65535)]
    pub host_port: Option<u16>,
}

impl PortMapping {
    pub fn published(container_port: u16, host_port: u16) -> Self {
        Self {
            container_port,
            host_port: Some(host_port),
        }
    }
}

/// What a container is doing, as Docker names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    /// Anything else the runtime reports.
    #[serde(untagged)]
    Other(String),
}

impl ContainerStatus {
    pub fn parse(text: &str) -> Self {
        match text {
            "created" => Self::Created,
            "running" => Self::Running,
            "paused" => Self::Paused,
            "restarting" => Self::Restarting,
            "removing" => Self::Removing,
            "exited" => Self::Exited,
            "dead" => Self::Dead,
            other => Self::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Restarting => "restarting",
            Self::Removing => "removing",
            Self::Exited => "exited",
            Self::Dead => "dead",
            Self::Other(other) => other,
        }
    }

    /// Running or paused: its process exists (a paused one just does not answer).
    pub fn is_alive(&self) -> bool {
        matches!(self, Self::Running | Self::Paused | Self::Restarting)
    }
}

impl fmt::Display for ContainerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerInfo {
    /// Full container id (64 hex digits for Docker).
    pub id: String,
    /// Name without Docker's leading `/`.
    pub name: String,
    /// The image as it was asked for (`acestream/engine:latest`).
    pub image: String,
    pub created: Timestamp,
    pub status: ContainerStatus,
    pub labels: BTreeMap<String, String>,
    /// Exposed and published TCP ports, sorted by container port.
    pub ports: Vec<PortMapping>,
    /// IP address of the container on each network it is attached to (empty
    /// while it is not running).
    pub networks: BTreeMap<String, String>,
    /// The result of the image's `HEALTHCHECK` (`healthy`, `unhealthy`,
    /// `starting`), when it has one and the runtime says (inspect only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// Where a Swarm service's current task runs; `None` for a plain
    /// container. It changes when Swarm reschedules the engine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub task: Option<TaskPlacement>,
}

/// A Swarm service's current task (the one Swarm wants running) and its node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskPlacement {
    pub task_id: String,
    /// Task state as Swarm names it (`pending`, `starting`, `running`, ...).
    pub state: String,
    /// Swarm's word on the task (`started`, `no suitable node ...`).
    pub message: String,
    pub node_id: String,
    /// The node's hostname (its id when unknown).
    pub node: String,
    /// `ready`, `down`, `disconnected` or `unknown`.
    pub node_state: String,
}

impl ContainerInfo {
    /// The host port that `container_port` is published on.
    pub fn host_port(&self, container_port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.container_port == container_port)
            .and_then(|p| p.host_port)
    }

    pub fn has_label(&self, label: &Label) -> bool {
        self.labels.get(&label.key) == Some(&label.value)
    }
}

/// What happened to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeEventKind {
    Start,
    /// The process ended (stopped, killed, crashed). `exit_code` when known.
    Die {
        exit_code: Option<i64>,
    },
    /// The container is gone.
    Destroy,
    Pause,
    Unpause,
    /// Where containers run changed: a Swarm service was created or updated,
    /// a node joined, left or changed state. `container_id` names the
    /// service or node.
    Placement,
}

/// A lifecycle event of a managed container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuntimeEvent {
    pub kind: RuntimeEventKind,
    pub container_id: String,
    /// Container name, when the runtime says.
    pub name: Option<String>,
    pub at: Timestamp,
}

/// Lifecycle events; the stream ends (after an `Err`) when the connection to
/// the runtime is lost. A consumer then re-lists with
/// [`ContainerRuntime::list_managed`] and subscribes again.
pub type EventStream = BoxStream<'static, Result<RuntimeEvent, RuntimeError>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The daemon cannot be reached: socket missing, connection refused, or no
    /// answer in time.
    #[error("container runtime unreachable: {0}")]
    Unreachable(String),
    #[error("image '{0}' not found (nothing is pulled: build or load it first)")]
    ImageNotFound(String),
    #[error("network '{0}' not found")]
    NetworkNotFound(String),
    #[error("a container named '{0}' already exists")]
    NameConflict(String),
    /// The host port is taken by something else; pick another one.
    #[error("host port {} is already in use: {message}", port.map_or_else(|| "?".to_owned(), |p| p.to_string()))]
    PortInUse { port: Option<u16>, message: String },
    #[error("container '{0}' not found")]
    NotFound(String),
    #[error("container runtime error: {0}")]
    Other(String),
}

impl RuntimeError {
    /// Worth trying again later, unchanged (the daemon may come back).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable(_))
    }
}

/// Runs containers. Implementations are cheap to share (`Arc<dyn ContainerRuntime>`)
/// and safe to call concurrently.
pub trait ContainerRuntime: Send + Sync + 'static {
    /// Creates and starts a container. When the start fails, the created
    /// container is removed again, so the name is free for a retry.
    fn create_and_start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'_, Result<ContainerInfo, RuntimeError>>;

    /// Stops the container (SIGTERM, then SIGKILL after the runtime's grace
    /// period; a paused container is killed at once) and removes it.
    /// [`RuntimeError::NotFound`] when there is no such container.
    fn stop_and_remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Every container carrying `label`, running or not.
    fn list_managed<'a>(
        &'a self,
        label: &'a Label,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>>;

    /// The container with this id (or name); `None` when there is none.
    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, RuntimeError>>;

    /// Subscribes to lifecycle events of containers carrying `label`. The
    /// subscription is in place when the future resolves: events of anything
    /// done afterwards are delivered.
    fn events<'a>(&'a self, label: &'a Label) -> BoxFuture<'a, Result<EventStream, RuntimeError>>;

    /// Checks that the runtime answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_and_serializes_lowercase() {
        for text in [
            "created",
            "running",
            "paused",
            "restarting",
            "removing",
            "exited",
            "dead",
            "stopping",
        ] {
            let status = ContainerStatus::parse(text);
            assert_eq!(status.as_str(), text);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{text}\"")
            );
        }
        assert!(ContainerStatus::Paused.is_alive());
        assert!(!ContainerStatus::Exited.is_alive());
    }

    #[test]
    fn errors_say_what_went_wrong() {
        assert_eq!(
            RuntimeError::PortInUse {
                port: Some(19001),
                message: "port is already allocated".into()
            }
            .to_string(),
            "host port 19001 is already in use: port is already allocated"
        );
        assert_eq!(
            RuntimeError::ImageNotFound("x:1".into()).to_string(),
            "image 'x:1' not found (nothing is pulled: build or load it first)"
        );
        assert!(RuntimeError::Unreachable("down".into()).is_transient());
        assert!(!RuntimeError::NameConflict("e".into()).is_transient());
    }

    #[test]
    fn info_finds_host_ports_and_labels() {
        let info = ContainerInfo {
            id: "abc".into(),
            name: "engine-1".into(),
            image: "img".into(),
            created: Timestamp::from_millis(0),
            status: ContainerStatus::Running,
            labels: BTreeMap::from([("ondemand.app".into(), "svc".into())]),
            ports: vec![
                PortMapping::published(40000, 19000),
                PortMapping {
                    container_port: 45000,
                    host_port: None,
                },
            ],
            networks: BTreeMap::new(),
            health: None,
            task: None,
        };
        assert_eq!(info.host_port(40000), Some(19000));
        assert_eq!(info.host_port(45000), None);
        assert_eq!(info.host_port(1), None);
        assert!(info.has_label(&Label {
            key: "ondemand.app".into(),
            value: "svc".into()
        }));
        assert!(!info.has_label(&Label {
            key: "ondemand.app".into(),
            value: "other".into()
        }));
    }
}
