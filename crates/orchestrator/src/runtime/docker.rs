//! [`ContainerRuntime`] on the Docker Engine API, through `bollard`.
//!
//! - Connects lazily: the orchestrator can start while the daemon is down, and
//!   every call made meanwhile fails with [`RuntimeError::Unreachable`]. The
//!   first call that reaches the daemon also negotiates the API version, so a
//!   daemon older than bollard's default API (Docker 20.10 speaks 1.41) works.
//! - Every call runs under `tokio::time::timeout` (`call_timeout`; stopping
//!   gets the stop grace period on top).
//! - Daemon answers become typed errors: 404 on create → `ImageNotFound` or
//!   `NetworkNotFound`, 409 on create → `NameConflict`, "port is already
//!   allocated" / "address already in use" → `PortInUse`, no connection or no
//!   answer → `Unreachable`.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, DeviceMapping,
    EndpointSettings, EventMessage, EventMessageTypeEnum, HostConfig, NetworkingConfig,
    PortBinding, PortMap,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, EventsOptionsBuilder, ListContainersOptionsBuilder,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::{Docker, API_DEFAULT_VERSION};
use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};
use tokio::sync::OnceCell;

use super::Label;
use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, EventStream, PortMapping,
    RuntimeError, RuntimeEvent, RuntimeEventKind,
};
use crate::time::Timestamp;

/// Where Docker listens when `DOCKER_HOST` is unset.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(10);

/// The Docker daemon as a [`ContainerRuntime`]. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct DockerRuntime {
    host: String,
    client: OnceCell<Docker>,
    call_timeout: Duration,
    stop_grace: Duration,
}

impl DockerRuntime {
    /// The daemon named by `DOCKER_HOST`, else the local socket.
    pub fn from_env() -> Self {
        let host = std::env::var("DOCKER_HOST")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned());
        Self::new(host)
    }

    /// The daemon at `host`: `unix:///path/docker.sock`, a bare socket path,
    /// or `tcp://host:port` / `http://host:port` (no TLS). Nothing is contacted
    /// until the first call.
    pub fn new(host: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            client: OnceCell::new(),
            call_timeout: DEFAULT_CALL_TIMEOUT,
            stop_grace: DEFAULT_STOP_GRACE,
        }
    }

    /// Longest wait for any one answer of the daemon (default 30 s).
    pub fn with_call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// How long a stopping container gets between SIGTERM and SIGKILL
    /// (default 10 s; whole seconds, as Docker counts them).
    pub fn with_stop_grace(mut self, grace: Duration) -> Self {
        self.stop_grace = grace;
        self
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub(super) fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    pub(super) fn stop_grace(&self) -> Duration {
        self.stop_grace
    }

    /// The client, connected and with its API version negotiated. A failure is
    /// not remembered: the next call tries again.
    pub(super) async fn client(&self) -> Result<&Docker, RuntimeError> {
        self.client
            .get_or_try_init(|| async {
                let docker = self.connect()?;
                let negotiated =
                    tokio::time::timeout(self.call_timeout, docker.negotiate_version())
                        .await
                        .map_err(|_| self.no_answer("version negotiation"))?;
                negotiated.map_err(|e| self.map_error(e, &Subject::Daemon))
            })
            .await
    }

    fn connect(&self) -> Result<Docker, RuntimeError> {
        // bollard's own timeout is a backstop; ours is the one that fires.
        let seconds = self.call_timeout.as_secs() + self.stop_grace.as_secs() + 5;
        let host = self.host.trim();
        let result = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, seconds, API_DEFAULT_VERSION)
        } else if host.starts_with('/') {
            Docker::connect_with_unix(&format!("unix://{host}"), seconds, API_DEFAULT_VERSION)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, seconds, API_DEFAULT_VERSION)
        } else {
            return Err(RuntimeError::Unreachable(format!(
                "DOCKER_HOST '{host}' is not supported (use unix:///path, tcp://host:port or http://host:port)"
            )));
        };
        result.map_err(|e| self.map_error(e, &Subject::Daemon))
    }

    /// Runs one daemon call under the call timeout.
    pub(super) async fn call<T>(
        &self,
        what: &str,
        limit: Duration,
        fut: impl Future<Output = Result<T, BollardError>>,
        subject: &Subject<'_>,
    ) -> Result<T, RuntimeError> {
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => result.map_err(|e| self.map_error(e, subject)),
            Err(_) => Err(self.no_answer(what)),
        }
    }

    fn no_answer(&self, what: &str) -> RuntimeError {
        RuntimeError::Unreachable(format!(
            "{} did not answer {what} within {:?}",
            self.host, self.call_timeout
        ))
    }

    fn map_error(&self, error: BollardError, subject: &Subject<'_>) -> RuntimeError {
        map_error(&self.host, error, subject)
    }

    async fn inspect_raw(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        let result = self
            .call(
                "inspect",
                self.call_timeout,
                docker.inspect_container(id, None),
                &Subject::Container(id),
            )
            .await;
        match result {
            Ok(response) => Ok(Some(info_from_inspect(response))),
            Err(RuntimeError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn do_create_and_start(
        &self,
        spec: ContainerSpec,
    ) -> Result<ContainerInfo, RuntimeError> {
        let docker = self.client().await?;
        let subject = Subject::Create {
            name: &spec.name,
            image: &spec.image,
            network: spec.network.as_deref(),
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = self
            .call(
                "create",
                self.call_timeout,
                docker.create_container(Some(options), create_body(&spec)),
                &subject,
            )
            .await?;
        let id = created.id;
        let started = self
            .call(
                "start",
                self.call_timeout,
                docker.start_container(&id, None),
                &subject,
            )
            .await;
        if let Err(error) = started {
            // Leave nothing behind, so the name and ports are free for a retry.
            let options = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let removed = tokio::time::timeout(
                self.call_timeout,
                docker.remove_container(&id, Some(options)),
            )
            .await;
            if !matches!(removed, Ok(Ok(()))) {
                tracing::warn!(container_id = %id, name = %spec.name, "could not remove a container that failed to start");
            }
            return Err(error);
        }
        self.inspect_raw(&id).await?.ok_or_else(|| {
            RuntimeError::Other(format!(
                "container '{}' ({id}) vanished right after it started",
                spec.name
            ))
        })
    }

    async fn do_stop_and_remove(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        let subject = Subject::Container(id);
        let grace = i32::try_from(self.stop_grace.as_secs()).unwrap_or(i32::MAX);
        let stop = StopContainerOptionsBuilder::default().t(grace).build();
        let stopped = self
            .call(
                "stop",
                self.call_timeout + self.stop_grace,
                docker.stop_container(id, Some(stop)),
                &subject,
            )
            .await;
        match stopped {
            Ok(()) => {}
            Err(e @ (RuntimeError::NotFound(_) | RuntimeError::Unreachable(_))) => return Err(e),
            // E.g. a paused container on some daemons: the forced removal kills it.
            Err(e) => {
                tracing::debug!(container_id = %id, error = %e, "stop failed; removing by force")
            }
        }
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = self
            .call(
                "remove",
                self.call_timeout,
                docker.remove_container(id, Some(remove)),
                &subject,
            )
            .await;
        match removed {
            // Gone between stop and remove (auto-remove, someone else): fine.
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(RuntimeError::Other(message)) if message.contains("already in progress") => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn do_list_managed(&self, label: &Label) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let docker = self.client().await?;
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .call(
                "list",
                self.call_timeout,
                docker.list_containers(Some(options)),
                &Subject::Daemon,
            )
            .await?;
        let mut infos: Vec<ContainerInfo> = summaries.into_iter().map(info_from_summary).collect();
        infos.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(infos)
    }

    async fn do_events(&self, label: &Label) -> Result<EventStream, RuntimeError> {
        let docker = self.client().await?;
        // Fail now, not at the first poll, when the daemon is gone.
        self.call("ping", self.call_timeout, docker.ping(), &Subject::Daemon)
            .await?;
        // bollard sends the request at the first poll. Asking for events since
        // now makes the daemon replay whatever happened in between, so the
        // subscription counts from here.
        let since = since_now();
        let filters = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![label.to_string()]),
            (
                "event",
                ["start", "die", "destroy", "pause", "unpause"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        let options = EventsOptionsBuilder::default()
            .since(&since)
            .filters(&filters)
            .build();
        let host = self.host.clone();
        let mut failed = false;
        let stream = docker
            .events(Some(options))
            .filter_map(move |item| {
                future::ready(match item {
                    Ok(message) => event_from_message(message).map(Ok),
                    Err(e) => Some(Err(map_error(&host, e, &Subject::Daemon))),
                })
            })
            // One error ends the stream: the subscriber re-lists and subscribes again.
            .take_while(move |item| {
                let keep = !failed;
                failed |= item.is_err();
                future::ready(keep)
            });
        Ok(stream.boxed())
    }

    async fn do_ping(&self) -> Result<(), RuntimeError> {
        let docker = self.client().await?;
        self.call("ping", self.call_timeout, docker.ping(), &Subject::Daemon)
            .await
            .map(|_| ())
    }
}

impl ContainerRuntime for DockerRuntime {
    fn create_and_start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'_, Result<ContainerInfo, RuntimeError>> {
        self.do_create_and_start(spec).boxed()
    }

    fn stop_and_remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.do_stop_and_remove(id).boxed()
    }

    fn list_managed<'a>(
        &'a self,
        label: &'a Label,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        self.do_list_managed(label).boxed()
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, RuntimeError>> {
        self.inspect_raw(id).boxed()
    }

    fn events<'a>(&'a self, label: &'a Label) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
        self.do_events(label).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        self.do_ping().boxed()
    }
}

/// What a failing call was about, to name it in the error.
pub(super) enum Subject<'a> {
    Daemon,
    Container(&'a str),
    Create {
        name: &'a str,
        image: &'a str,
        network: Option<&'a str>,
    },
}

pub(super) fn map_error(host: &str, error: BollardError, subject: &Subject<'_>) -> RuntimeError {
    match error {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => map_status(status_code, message, subject),
        BollardError::SocketNotFoundError(path) => {
            RuntimeError::Unreachable(format!("no Docker socket at {path}"))
        }
        e @ (BollardError::HyperLegacyError { .. }
        | BollardError::HyperResponseError { .. }
        | BollardError::IOError { .. }
        | BollardError::RequestTimeoutError
        | BollardError::UnsupportedURISchemeError { .. }) => {
            RuntimeError::Unreachable(format!("{host}: {}", error_chain(&e)))
        }
        e => RuntimeError::Other(error_chain(&e)),
    }
}

fn map_status(status: u16, message: String, subject: &Subject<'_>) -> RuntimeError {
    let lower = message.to_ascii_lowercase();
    if lower.contains("port is already allocated") || lower.contains("address already in use") {
        return RuntimeError::PortInUse {
            port: port_in_message(&message),
            message,
        };
    }
    // In swarm mode the daemon asks the manager for the network and answers
    // 500 "Could not attach to network X: ... not found".
    if let Subject::Create {
        network: Some(network),
        ..
    } = subject
    {
        if lower.contains("could not attach to network") && lower.contains("not found") {
            return RuntimeError::NetworkNotFound((*network).to_owned());
        }
    }
    match (status, subject) {
        (404, Subject::Create { image, network, .. }) => {
            if lower.contains("network") {
                RuntimeError::NetworkNotFound(network.unwrap_or_default().to_owned())
            } else if lower.contains("image") {
                RuntimeError::ImageNotFound((*image).to_owned())
            } else {
                RuntimeError::Other(format!("{status}: {message}"))
            }
        }
        (404, Subject::Container(id)) => RuntimeError::NotFound((*id).to_owned()),
        (409, Subject::Create { name, .. })
            if lower.contains("already in use")
                || lower.contains("conflicts with an existing object") =>
        {
            RuntimeError::NameConflict((*name).to_owned())
        }
        _ => RuntimeError::Other(format!("{status}: {message}")),
    }
}

/// The port in Docker's "Bind for 0.0.0.0:19000 failed: port is already
/// allocated" or "listen tcp4 0.0.0.0:19000: bind: address already in use".
fn port_in_message(message: &str) -> Option<u16> {
    message.match_indices(':').find_map(|(at, _)| {
        let rest = &message[at + 1..];
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let after = rest[digits..].chars().next();
        if digits == 0 || after.is_some_and(|c| c.is_ascii_alphanumeric()) {
            return None;
        }
        rest[..digits].parse().ok()
    })
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

pub(super) fn since_now() -> String {
    let ms = Timestamp::now().millis();
    // Docker takes `seconds.nanoseconds`.
    format!("{}.{:03}000000", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn port_key(container_port: u16) -> String {
    format!("{container_port}/tcp")
}

fn create_body(spec: &ContainerSpec) -> ContainerCreateBody {
    let bindings: PortMap = spec
        .ports
        .iter()
        .map(|p| {
            (
                port_key(p.container_port),
                Some(vec![PortBinding {
                    host_ip: None,
                    host_port: p.host_port.map(|port| port.to_string()),
                }]),
            )
        })
        .collect();
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        labels: Some(
            spec.labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        exposed_ports: Some(
            spec.ports
                .iter()
                .map(|p| port_key(p.container_port))
                .collect(),
        ),
        host_config: Some(HostConfig {
            port_bindings: Some(bindings),
            network_mode: spec.network.clone(),
            memory: spec.limits.memory_bytes,
            nano_cpus: spec.limits.nano_cpus,
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            devices: (!spec.devices.is_empty()).then(|| {
                spec.devices
                    .iter()
                    .map(|path| DeviceMapping {
                        path_on_host: Some(path.clone()),
                        path_in_container: Some(path.clone()),
                        cgroup_permissions: Some("rwm".into()),
                    })
                    .collect()
            }),
            ..Default::default()
        }),
        // `container:<name>` joins another container's namespace: there is
        // no network of its own to configure.
        networking_config: spec
            .network
            .as_ref()
            .filter(|network| !network.starts_with("container:"))
            .map(|network| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    network.clone(),
                    EndpointSettings::default(),
                )])),
            }),
        ..Default::default()
    }
}

/// `"40000/tcp"` → 40000; other protocols are not ours.
fn tcp_port(key: &str) -> Option<u16> {
    let (port, proto) = key.split_once('/').unwrap_or((key, "tcp"));
    if proto != "tcp" {
        return None;
    }
    port.parse().ok()
}

fn first_host_port(bindings: &Option<Vec<PortBinding>>) -> Option<u16> {
    bindings
        .iter()
        .flatten()
        .find_map(|b| b.host_port.as_deref().and_then(|p| p.parse().ok()))
        .filter(|&p| p != 0)
}

fn ports_from_map(map: &PortMap) -> Vec<PortMapping> {
    let mut ports: Vec<PortMapping> = map
        .iter()
        .filter_map(|(key, bindings)| {
            Some(PortMapping {
                container_port: tcp_port(key)?,
                host_port: first_host_port(bindings),
            })
        })
        .collect();
    ports.sort();
    ports
}

fn strip_name(name: &str) -> String {
    name.strip_prefix('/').unwrap_or(name).to_owned()
}

fn to_btree(map: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    map.unwrap_or_default().into_iter().collect()
}

fn networks_of(networks: Option<HashMap<String, EndpointSettings>>) -> BTreeMap<String, String> {
    networks
        .unwrap_or_default()
        .into_iter()
        .map(|(name, endpoint)| (name, endpoint.ip_address.unwrap_or_default()))
        .collect()
}

fn info_from_inspect(response: ContainerInspectResponse) -> ContainerInfo {
    let config = response.config.unwrap_or_default();
    let settings = response.network_settings.unwrap_or_default();
    let live_ports = settings
        .ports
        .as_ref()
        .map(ports_from_map)
        .unwrap_or_default();
    // A container that is not running has no live bindings: report the configured ones.
    let ports = if live_ports.iter().any(|p| p.host_port.is_some()) {
        live_ports
    } else {
        let configured = response
            .host_config
            .as_ref()
            .and_then(|h| h.port_bindings.as_ref())
            .map(ports_from_map)
            .unwrap_or_default();
        if configured.is_empty() {
            live_ports
        } else {
            configured
        }
    };
    ContainerInfo {
        id: response.id.unwrap_or_default(),
        name: strip_name(response.name.as_deref().unwrap_or_default()),
        image: config.image.or(response.image).unwrap_or_default(),
        created: response
            .created
            .as_deref()
            .and_then(|t| Timestamp::parse(t).ok())
            .unwrap_or_else(|| Timestamp::from_millis(0)),
        health: response
            .state
            .as_ref()
            .and_then(|s| s.health.as_ref())
            .and_then(|h| h.status)
            .map(|s| s.to_string())
            .filter(|s| !s.is_empty() && s != "none"),
        status: response
            .state
            .and_then(|s| s.status)
            .map_or(ContainerStatus::Other(String::new()), |s| {
                ContainerStatus::parse(s.as_ref())
            }),
        labels: to_btree(config.labels),
        ports,
        networks: networks_of(settings.networks),
        task: None,
    }
}

fn info_from_summary(summary: ContainerSummary) -> ContainerInfo {
    let mut ports: BTreeMap<u16, Option<u16>> = BTreeMap::new();
    for port in summary.ports.unwrap_or_default() {
        if port
            .typ
            .as_ref()
            .is_some_and(|t| t.as_ref() != "tcp" && !t.as_ref().is_empty())
        {
            continue;
        }
        // IPv4 and IPv6 bindings of the same port come as two entries.
        let entry = ports.entry(port.private_port).or_insert(None);
        if entry.is_none() {
            *entry = port.public_port.filter(|&p| p != 0);
        }
    }
    ContainerInfo {
        id: summary.id.unwrap_or_default(),
        name: summary
            .names
            .unwrap_or_default()
            .first()
            .map(|n| strip_name(n))
            .unwrap_or_default(),
        image: summary.image.unwrap_or_default(),
        created: Timestamp::from_millis(summary.created.unwrap_or_default().saturating_mul(1000)),
        status: summary
            .state
            .map_or(ContainerStatus::Other(String::new()), |s| {
                ContainerStatus::parse(s.as_ref())
            }),
        labels: to_btree(summary.labels),
        ports: ports
            .into_iter()
            .map(|(container_port, host_port)| PortMapping {
                container_port,
                host_port,
            })
            .collect(),
        networks: networks_of(summary.network_settings.and_then(|n| n.networks)),
        health: None,
        task: None,
    }
}

pub(super) fn event_from_message(message: EventMessage) -> Option<RuntimeEvent> {
    if message
        .typ
        .is_some_and(|t| t != EventMessageTypeEnum::CONTAINER)
    {
        return None;
    }
    let actor = message.actor.unwrap_or_default();
    let attributes = actor.attributes.unwrap_or_default();
    // Actions may carry details after a colon ("exec_start: sh"); ours do not.
    let action = message.action.unwrap_or_default();
    let kind = match action.split(':').next().unwrap_or_default().trim() {
        "start" => RuntimeEventKind::Start,
        "die" => RuntimeEventKind::Die {
            exit_code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        },
        "destroy" => RuntimeEventKind::Destroy,
        "pause" => RuntimeEventKind::Pause,
        "unpause" => RuntimeEventKind::Unpause,
        _ => return None,
    };
    let at = match (message.time_nano, message.time) {
        (Some(nanos), _) => Timestamp::from_millis(nanos / 1_000_000),
        (None, Some(seconds)) => Timestamp::from_millis(seconds.saturating_mul(1000)),
        (None, None) => Timestamp::now(),
    };
    Some(RuntimeEvent {
        kind,
        container_id: actor.id?,
        name: attributes.get("name").cloned(),
        at,
    })
}

#[cfg(test)]
mod tests {
    use bollard::models::{EventActor, PortSummary, PortSummaryTypeEnum};

    use super::*;
    use crate::runtime::ResourceLimits;

    fn create_subject() -> Subject<'static> {
        Subject::Create {
            name: "engine-1",
            image: "acestream/engine:latest",
            network: Some("acestream"),
        }
    }

    #[test]
    fn daemon_answers_become_typed_errors() {
        assert_eq!(
            map_status(
                404,
                "No such image: acestream/engine:latest".into(),
                &create_subject()
            ),
            RuntimeError::ImageNotFound("acestream/engine:latest".into())
        );
        assert_eq!(
            map_status(404, "network acestream not found".into(), &create_subject()),
            RuntimeError::NetworkNotFound("acestream".into())
        );
        // The same on a daemon in swarm mode.
        assert_eq!(
            map_status(
                500,
                "Could not attach to network acestream: rpc error: code = NotFound desc = network acestream not found".into(),
                &create_subject()
            ),
            RuntimeError::NetworkNotFound("acestream".into())
        );
        assert_eq!(
            map_status(
                409,
                "Conflict. The container name \"/engine-1\" is already in use by container \"ab\"."
                    .into(),
                &create_subject()
            ),
            RuntimeError::NameConflict("engine-1".into())
        );
        assert_eq!(
            map_status(
                404,
                "No such container: ab".into(),
                &Subject::Container("ab")
            ),
            RuntimeError::NotFound("ab".into())
        );
        assert_eq!(
            map_status(
                500,
                "driver failed programming external connectivity on endpoint engine-1 (4f2a): Bind for 0.0.0.0:19000 failed: port is already allocated".into(),
                &create_subject()
            ),
            RuntimeError::PortInUse {
                port: Some(19000),
                message: "driver failed programming external connectivity on endpoint engine-1 (4f2a): Bind for 0.0.0.0:19000 failed: port is already allocated".into()
            }
        );
        assert!(matches!(
            map_status(500, "boom".into(), &Subject::Daemon),
            RuntimeError::Other(m) if m == "500: boom"
        ));
    }

    #[test]
    fn finds_the_port_in_bind_errors() {
        assert_eq!(
            port_in_message("Error starting userland proxy: listen tcp4 0.0.0.0:19017: bind: address already in use"),
            Some(19017)
        );
        assert_eq!(
            port_in_message("Bind for [::]:19018 failed: port is already allocated"),
            Some(19018)
        );
        assert_eq!(port_in_message("address already in use"), None);
    }

    #[test]
    fn connection_failures_are_unreachable() {
        let e = map_error(
            "unix:///x",
            BollardError::SocketNotFoundError("/x".into()),
            &Subject::Daemon,
        );
        assert_eq!(
            e,
            RuntimeError::Unreachable("no Docker socket at /x".into())
        );
        let e = map_error(
            "unix:///x",
            BollardError::RequestTimeoutError,
            &Subject::Daemon,
        );
        assert!(e.is_transient());
    }

    #[test]
    fn create_body_joins_another_containers_namespace_without_a_network_of_its_own() {
        let spec = ContainerSpec {
            name: "engine-1".into(),
            image: "img".into(),
            env: vec![],
            labels: BTreeMap::new(),
            ports: vec![],
            network: Some("container:gluetun".into()),
            cap_add: vec!["NET_ADMIN".into()],
            devices: vec!["/dev/net/tun".into()],
            limits: ResourceLimits::default(),
        };
        let body = serde_json::to_value(create_body(&spec)).unwrap();
        assert_eq!(body["HostConfig"]["NetworkMode"], "container:gluetun");
        assert!(body["NetworkingConfig"].is_null(), "{body}");
        assert_eq!(
            body["HostConfig"]["CapAdd"],
            serde_json::json!(["NET_ADMIN"])
        );
        assert_eq!(
            body["HostConfig"]["Devices"][0]["PathOnHost"],
            "/dev/net/tun"
        );
    }

    #[test]
    fn create_body_carries_env_labels_ports_and_network() {
        let spec = ContainerSpec {
            name: "engine-1".into(),
            image: "img".into(),
            env: vec![("CONF".into(), "--http-port=40000\n--bind-all".into())],
            labels: BTreeMap::from([("ondemand.app".into(), "svc".into())]),
            ports: vec![
                PortMapping::published(40000, 19000),
                PortMapping {
                    container_port: 45000,
                    host_port: None,
                },
            ],
            network: Some("acestream".into()),
            limits: ResourceLimits {
                memory_bytes: Some(512 << 20),
                nano_cpus: Some(1_500_000_000),
            },
            ..Default::default()
        };
        let body = serde_json::to_value(create_body(&spec)).unwrap();
        assert_eq!(body["Env"][0], "CONF=--http-port=40000\n--bind-all");
        assert_eq!(body["Labels"]["ondemand.app"], "svc");
        assert_eq!(
            body["HostConfig"]["PortBindings"]["40000/tcp"][0]["HostPort"],
            "19000"
        );
        assert!(body["HostConfig"]["PortBindings"]["45000/tcp"][0]
            .get("HostPort")
            .is_none());
        assert!(body["ExposedPorts"].get("45000/tcp").is_some());
        assert_eq!(body["HostConfig"]["NetworkMode"], "acestream");
        assert!(body["NetworkingConfig"]["EndpointsConfig"]
            .get("acestream")
            .is_some());
        assert_eq!(body["HostConfig"]["Memory"], 512 << 20);
        assert_eq!(body["HostConfig"]["NanoCpus"], 1_500_000_000i64);
    }

    #[test]
    fn summary_merges_ipv4_and_ipv6_bindings() {
        let summary = ContainerSummary {
            id: Some("abc".into()),
            names: Some(vec!["/engine-1".into()]),
            image: Some("img".into()),
            created: Some(1_795_836_466),
            ports: Some(vec![
                PortSummary {
                    ip: Some("0.0.0.0".into()),
                    private_port: 40000,
                    public_port: Some(19000),
                    typ: Some(PortSummaryTypeEnum::TCP),
                },
                PortSummary {
                    ip: Some("::".into()),
                    private_port: 40000,
                    public_port: Some(19000),
                    typ: Some(PortSummaryTypeEnum::TCP),
                },
                PortSummary {
                    ip: None,
                    private_port: 45000,
                    public_port: None,
                    typ: Some(PortSummaryTypeEnum::TCP),
                },
                PortSummary {
                    ip: None,
                    private_port: 53,
                    public_port: None,
                    typ: Some(PortSummaryTypeEnum::UDP),
                },
            ]),
            ..Default::default()
        };
        let info = info_from_summary(summary);
        assert_eq!(info.name, "engine-1");
        assert_eq!(info.created.to_string(), "2026-11-28T03:27:46.000Z");
        assert_eq!(
            info.ports,
            vec![
                PortMapping::published(40000, 19000),
                PortMapping {
                    container_port: 45000,
                    host_port: None
                }
            ]
        );
    }

    #[test]
    fn events_map_to_kinds() {
        let message = |action: &str| EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("abc".into()),
                attributes: Some(HashMap::from([
                    ("name".into(), "engine-1".into()),
                    ("exitCode".into(), "137".into()),
                ])),
            }),
            time_nano: Some(1_795_836_466_123_456_789),
            ..Default::default()
        };
        let die = event_from_message(message("die")).unwrap();
        assert_eq!(
            die.kind,
            RuntimeEventKind::Die {
                exit_code: Some(137)
            }
        );
        assert_eq!(die.container_id, "abc");
        assert_eq!(die.name.as_deref(), Some("engine-1"));
        assert_eq!(die.at.to_string(), "2026-11-28T03:27:46.123Z");
        assert_eq!(
            event_from_message(message("pause")).unwrap().kind,
            RuntimeEventKind::Pause
        );
        assert!(event_from_message(message("exec_start: sh")).is_none());
        assert!(event_from_message(message("create")).is_none());
    }

    #[test]
    fn since_is_seconds_with_nanos() {
        let since = since_now();
        let (secs, frac) = since.split_once('.').unwrap();
        assert!(secs.parse::<i64>().unwrap() > 1_700_000_000);
        assert_eq!(frac.len(), 9);
    }
}
