//! [`ContainerRuntime`] on Docker Swarm: every engine is a replicated service
//! with one replica, so it can run on any node of the swarm.
//!
//! - The engine's id is the **service** id, its name the service name. Both
//!   outlive the service's tasks: when Swarm replaces a failed task (perhaps
//!   on another node) the engine keeps its identity, its history and its
//!   address.
//! - The orchestrator reaches an engine at `<service name>:<container port>`
//!   on the overlay network both are attached to (`SWARM_NETWORK`): Swarm's
//!   DNS answers the service name with the address of its task (endpoint
//!   mode `dnsrr`), wherever it runs, and the new task's after a
//!   rescheduling. Nothing is published on the nodes.
//! - Ownership: the labels of the [`ContainerSpec`] go on the service and on
//!   its task template's containers, so `list_managed` filters services by
//!   label and `docker ps --filter label=...` still finds the containers.
//! - Status: `running` when the service's current task runs; `restarting`
//!   while Swarm brings a task up (after a failure, a node loss, at first
//!   start) — the engine stays known, unhealthy, until its task answers.
//! - Events: the task containers' own events on this node (with the service
//!   id they carry as label), plus service and node events of the whole
//!   swarm (a service removed, a node down): each one makes the reconciler
//!   resync, which compares each engine's [`TaskPlacement`].
//!
//! Needs the Docker socket of a manager node (services and nodes are manager
//! API).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, EventMessage, EventMessageTypeEnum, Limit,
    NetworkAttachmentConfig, Node, Service, ServiceSpec, ServiceSpecMode,
    ServiceSpecModeReplicated, Task, TaskSpec, TaskSpecContainerSpec, TaskSpecPlacement,
    TaskSpecPlacementPreferences, TaskSpecPlacementSpread, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptionsBuilder, ListContainersOptionsBuilder, ListNodesOptions,
    ListServicesOptionsBuilder, ListTasksOptionsBuilder,
};
use futures::future::{self, BoxFuture};
use futures::{FutureExt, StreamExt};

use super::docker::{event_from_message, map_error, since_now, Subject};
use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, DockerRuntime, EventStream,
    Label, PortMapping, RuntimeError, RuntimeEvent, RuntimeEventKind, TaskPlacement,
};
use crate::time::Timestamp;

/// The label Swarm puts on a task's container: the service it belongs to.
const SERVICE_ID_LABEL: &str = "com.docker.swarm.service.id";
const SERVICE_NAME_LABEL: &str = "com.docker.swarm.service.name";

/// How long `create_and_start` watches a new service's first task for a
/// failure it can name (a missing image, no node that qualifies).
const FIRST_TASK_WATCH: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(250);

/// Where Swarm may put engines and what each may use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmPlacement {
    /// Placement constraints (`node.labels.acestream==true`).
    pub constraints: Vec<String>,
    /// What to spread engines over; `node.id` (one node after the other) by
    /// default.
    pub spread: Option<String>,
}

impl SwarmPlacement {
    /// From `ENGINE_PLACEMENT` items: constraints, and `spread=<descriptor>`.
    pub fn parse(items: &[String]) -> Self {
        let mut placement = Self::default();
        for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
            match item.strip_prefix("spread=") {
                Some(descriptor) => placement.spread = Some(descriptor.trim().to_owned()),
                None => placement.constraints.push(item.to_owned()),
            }
        }
        placement
    }
}

/// Docker Swarm as a [`ContainerRuntime`]; shares the connection handling,
/// timeouts and error mapping of [`DockerRuntime`].
#[derive(Debug)]
pub struct SwarmRuntime {
    docker: DockerRuntime,
    placement: SwarmPlacement,
    /// How long Swarm waits before starting a new task after a failure.
    restart_delay: Duration,
}

impl SwarmRuntime {
    pub fn new(docker: DockerRuntime, placement: SwarmPlacement) -> Self {
        Self {
            docker,
            placement,
            restart_delay: Duration::from_secs(1),
        }
    }

    fn host(&self) -> &str {
        self.docker.host()
    }

    async fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, bollard::errors::Error>>,
        subject: &Subject<'_>,
    ) -> Result<T, RuntimeError> {
        self.docker
            .call(what, self.docker.call_timeout(), fut, subject)
            .await
    }

    async fn nodes(&self) -> Result<HashMap<String, (String, String)>, RuntimeError> {
        let docker = self.docker.client().await?;
        let nodes = self
            .call(
                "node list",
                docker.list_nodes(None::<ListNodesOptions>),
                &Subject::Daemon,
            )
            .await?;
        Ok(nodes.into_iter().filter_map(node_entry).collect())
    }

    /// Tasks Swarm wants running, by service id.
    async fn current_tasks(
        &self,
        service: Option<&str>,
    ) -> Result<HashMap<String, Task>, RuntimeError> {
        let docker = self.docker.client().await?;
        let mut filters = HashMap::from([("desired-state", vec!["running".to_owned()])]);
        if let Some(id) = service {
            filters.insert("service", vec![id.to_owned()]);
        }
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        let tasks = self
            .call(
                "task list",
                docker.list_tasks(Some(options)),
                &Subject::Daemon,
            )
            .await?;
        let mut current: HashMap<String, Task> = HashMap::new();
        for task in tasks {
            let Some(service_id) = task.service_id.clone() else {
                continue;
            };
            match current.get(&service_id) {
                Some(known) if !newer(&task, known) => {}
                _ => {
                    current.insert(service_id, task);
                }
            }
        }
        Ok(current)
    }

    /// Every task of one service, whatever its state.
    async fn service_tasks(&self, id: &str) -> Result<Vec<Task>, RuntimeError> {
        let docker = self.docker.client().await?;
        let filters = HashMap::from([("service", vec![id.to_owned()])]);
        let options = ListTasksOptionsBuilder::default().filters(&filters).build();
        self.call(
            "task list",
            docker.list_tasks(Some(options)),
            &Subject::Daemon,
        )
        .await
    }

    async fn inspect_service(&self, id: &str) -> Result<Option<ContainerInfo>, RuntimeError> {
        let docker = self.docker.client().await?;
        let service = match self
            .call(
                "service inspect",
                docker.inspect_service(id, None),
                &Subject::Container(id),
            )
            .await
        {
            Ok(service) => service,
            Err(RuntimeError::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let service_id = service.id.clone().unwrap_or_default();
        let mut tasks = self.current_tasks(Some(&service_id)).await?;
        let nodes = self.nodes().await?;
        Ok(Some(info_from_service(
            service,
            tasks.remove(&service_id).as_ref(),
            &nodes,
        )))
    }

    async fn do_create(&self, spec: ContainerSpec) -> Result<ContainerInfo, RuntimeError> {
        let docker = self.docker.client().await?;
        let subject = Subject::Create {
            name: &spec.name,
            image: &spec.image,
            network: spec.network.as_deref(),
        };
        let created = self
            .call(
                "service create",
                docker.create_service(self.service_spec(&spec), None),
                &subject,
            )
            .await?;
        let id = created.id.unwrap_or_default();
        // Swarm accepts any image and any constraint; the first task tells
        // whether it can run. Watch it a little, to answer with the reason
        // instead of a silent engine that never answers.
        let watch_until = tokio::time::Instant::now() + FIRST_TASK_WATCH;
        loop {
            let info = self.inspect_service(&id).await?.ok_or_else(|| {
                RuntimeError::Other(format!(
                    "service '{}' ({id}) vanished right after it was created",
                    spec.name
                ))
            })?;
            let watched = tokio::time::Instant::now() >= watch_until;
            // Swarm shuts a rejected task down at once and starts another:
            // the reason is on the old one, so look at all of them.
            let failure = self
                .service_tasks(&id)
                .await?
                .iter()
                .map(|t| placement_of(t, &HashMap::new()))
                .chain(info.task.clone())
                .find_map(|t| task_failure(&spec, &t, watched));
            if let Some(error) = failure {
                self.remove_quietly(&id, &spec.name).await;
                return Err(error);
            }
            if info.status == ContainerStatus::Running || watched {
                return Ok(info);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The failed first task said why; what it failed on is not worth
    /// keeping (nor retrying forever).
    async fn remove_quietly(&self, id: &str, name: &str) {
        if let Err(error) = self.do_remove(id).await {
            tracing::warn!(service = %id, %name, %error, "could not remove a service whose first task failed");
        }
    }

    fn service_spec(&self, spec: &ContainerSpec) -> ServiceSpec {
        let labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spread = self
            .placement
            .spread
            .clone()
            .unwrap_or_else(|| "node.id".to_owned());
        let limits =
            (spec.limits.memory_bytes.is_some() || spec.limits.nano_cpus.is_some()).then(|| {
                TaskSpecResources {
                    limits: Some(Limit {
                        memory_bytes: spec.limits.memory_bytes,
                        nano_cpus: spec.limits.nano_cpus,
                        pids: None,
                    }),
                    ..Default::default()
                }
            });
        ServiceSpec {
            name: Some(spec.name.clone()),
            labels: Some(labels.clone()),
            task_template: Some(TaskSpec {
                container_spec: Some(TaskSpecContainerSpec {
                    image: Some(spec.image.clone()),
                    labels: Some(labels),
                    env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
                    stop_grace_period: Some(duration_nanos(self.docker.stop_grace())),
                    ..Default::default()
                }),
                resources: limits,
                restart_policy: Some(TaskSpecRestartPolicy {
                    condition: Some(TaskSpecRestartPolicyConditionEnum::ANY),
                    delay: Some(duration_nanos(self.restart_delay)),
                    max_attempts: None,
                    window: None,
                }),
                placement: Some(TaskSpecPlacement {
                    constraints: (!self.placement.constraints.is_empty())
                        .then(|| self.placement.constraints.clone()),
                    preferences: Some(vec![TaskSpecPlacementPreferences {
                        spread: Some(TaskSpecPlacementSpread {
                            spread_descriptor: Some(spread),
                        }),
                    }]),
                    ..Default::default()
                }),
                networks: spec.network.as_ref().map(|network| {
                    vec![NetworkAttachmentConfig {
                        target: Some(network.clone()),
                        ..Default::default()
                    }]
                }),
                ..Default::default()
            }),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(1) }),
                ..Default::default()
            }),
            // The name resolves to the task's own address: one replica has
            // nothing to balance, and a virtual IP needs IPVS in the node's
            // kernel (without the ip_vs module a VIP accepts nothing).
            endpoint_spec: Some(EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ports: None,
            }),
            ..Default::default()
        }
    }

    async fn do_remove(&self, id: &str) -> Result<(), RuntimeError> {
        let docker = self.docker.client().await?;
        let subject = Subject::Container(id);
        // The service's real id, also when we were given its name.
        let service_id = match self
            .call(
                "service inspect",
                docker.inspect_service(id, None),
                &subject,
            )
            .await
        {
            Ok(service) => service.id.unwrap_or_else(|| id.to_owned()),
            Err(e) => return Err(e),
        };
        match self
            .call(
                "service remove",
                docker.delete_service(&service_id),
                &subject,
            )
            .await
        {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        // Swarm stops the task after answering. Wait (bounded) until its
        // container on this node is gone, so that "removed" means what it
        // means for a plain container; containers on other nodes go on their
        // own.
        let deadline =
            tokio::time::Instant::now() + self.docker.stop_grace() + self.docker.call_timeout();
        let filters = HashMap::from([("label", vec![format!("{SERVICE_ID_LABEL}={service_id}")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        loop {
            let left = self
                .call(
                    "list",
                    docker.list_containers(Some(options.clone())),
                    &Subject::Daemon,
                )
                .await?;
            if left.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(service = %service_id, containers = left.len(), "service removed; its containers are still stopping");
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn do_list(&self, label: &Label) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let docker = self.docker.client().await?;
        let filters = HashMap::from([("label", vec![label.to_string()])]);
        let options = ListServicesOptionsBuilder::default()
            .filters(&filters)
            .build();
        let services = self
            .call(
                "service list",
                docker.list_services(Some(options)),
                &Subject::Daemon,
            )
            .await?;
        if services.is_empty() {
            return Ok(Vec::new());
        }
        // Three calls whatever the pool's size: services, tasks, nodes.
        let mut tasks = self.current_tasks(None).await?;
        let nodes = self.nodes().await?;
        let mut infos: Vec<ContainerInfo> = services
            .into_iter()
            .map(|service| {
                let task = service.id.as_ref().and_then(|id| tasks.remove(id));
                info_from_service(service, task.as_ref(), &nodes)
            })
            .collect();
        infos.sort_by(|a, b| (a.created, &a.name).cmp(&(b.created, &b.name)));
        Ok(infos)
    }

    async fn do_events(&self, label: &Label) -> Result<EventStream, RuntimeError> {
        let docker = self.docker.client().await?;
        self.call("ping", docker.ping(), &Subject::Daemon).await?;
        let since = since_now();
        // Our task containers on this node: they carry our label.
        let containers = HashMap::from([
            ("type", vec!["container".to_owned()]),
            ("label", vec![label.to_string()]),
            (
                "event",
                ["start", "die", "pause", "unpause"]
                    .map(str::to_owned)
                    .to_vec(),
            ),
        ]);
        // Services and nodes of the whole swarm: their events carry no labels,
        // so every one is taken (they are rare) and the resync sorts it out.
        let cluster = HashMap::from([("type", vec!["service".to_owned(), "node".to_owned()])]);
        let options = |filters: &HashMap<&str, Vec<String>>| {
            EventsOptionsBuilder::default()
                .since(&since)
                .filters(filters)
                .build()
        };
        let host = self.host().to_owned();
        let mut failed = false;
        let stream = futures::stream::select(
            docker.events(Some(options(&containers))),
            docker.events(Some(options(&cluster))),
        )
        .filter_map(move |item| {
            future::ready(match item {
                Ok(message) => swarm_event(message).map(Ok),
                Err(e) => Some(Err(map_error(&host, e, &Subject::Daemon))),
            })
        })
        .take_while(move |item| {
            let keep = !failed;
            failed |= item.is_err();
            future::ready(keep)
        });
        Ok(stream.boxed())
    }

    async fn do_ping(&self) -> Result<(), RuntimeError> {
        let docker = self.docker.client().await?;
        let info = self.call("info", docker.info(), &Subject::Daemon).await?;
        let swarm = info.swarm.unwrap_or_default();
        if swarm.control_available != Some(true) {
            return Err(RuntimeError::Other(format!(
                "{} is not a Swarm manager (RUNTIME=swarm needs a manager's Docker socket; swarm state: {})",
                self.host(),
                swarm
                    .local_node_state
                    .map_or_else(|| "unknown".to_owned(), |s| s.to_string())
            )));
        }
        Ok(())
    }
}

impl ContainerRuntime for SwarmRuntime {
    fn create_and_start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'_, Result<ContainerInfo, RuntimeError>> {
        self.do_create(spec).boxed()
    }

    fn stop_and_remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        self.do_remove(id).boxed()
    }

    fn list_managed<'a>(
        &'a self,
        label: &'a Label,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        self.do_list(label).boxed()
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, RuntimeError>> {
        self.inspect_service(id).boxed()
    }

    fn events<'a>(&'a self, label: &'a Label) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
        self.do_events(label).boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        self.do_ping().boxed()
    }
}

fn duration_nanos(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

fn parse_date(date: Option<&String>) -> Option<Timestamp> {
    date.and_then(|d| Timestamp::parse(d).ok())
}

/// The later of two tasks of one service (a rolling update or a replacement
/// can briefly have two that Swarm wants running).
fn newer(candidate: &Task, known: &Task) -> bool {
    let at = |t: &Task| parse_date(t.created_at.as_ref()).map_or(0, Timestamp::millis);
    at(candidate) > at(known)
}

/// Node id → (hostname, state).
fn node_entry(node: Node) -> Option<(String, (String, String))> {
    let id = node.id?;
    let hostname = node
        .description
        .and_then(|d| d.hostname)
        .unwrap_or_else(|| id.clone());
    let state = node
        .status
        .and_then(|s| s.state)
        .map_or_else(|| "unknown".to_owned(), |s| s.to_string());
    Some((id, (hostname, state)))
}

fn placement_of(task: &Task, nodes: &HashMap<String, (String, String)>) -> TaskPlacement {
    let status = task.status.clone().unwrap_or_default();
    let node_id = task.node_id.clone().unwrap_or_default();
    let (node, node_state) = nodes.get(&node_id).cloned().unwrap_or_else(|| {
        if node_id.is_empty() {
            // Not assigned to a node yet.
            (String::new(), String::new())
        } else {
            (node_id.clone(), "unknown".to_owned())
        }
    });
    TaskPlacement {
        task_id: task.id.clone().unwrap_or_default(),
        state: status
            .state
            .map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
        message: status.err.or(status.message).unwrap_or_default(),
        node_id,
        node,
        node_state,
    }
}

fn info_from_service(
    service: Service,
    task: Option<&Task>,
    nodes: &HashMap<String, (String, String)>,
) -> ContainerInfo {
    let spec = service.spec.unwrap_or_default();
    let container = spec
        .task_template
        .and_then(|t| t.container_spec)
        .unwrap_or_default();
    let running =
        task.and_then(|t| t.status.as_ref()).and_then(|s| s.state) == Some(TaskState::RUNNING);
    let ports = service
        .endpoint
        .and_then(|e| e.ports)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(PortMapping {
                container_port: u16::try_from(p.target_port?).ok()?,
                host_port: p.published_port.and_then(|p| u16::try_from(p).ok()),
            })
        })
        .collect();
    ContainerInfo {
        id: service.id.unwrap_or_default(),
        name: spec.name.unwrap_or_default(),
        // The CLI pins the image to a digest (`img:tag@sha256:...`): show what was asked for.
        image: container
            .image
            .map(|i| i.split('@').next().unwrap_or_default().to_owned())
            .unwrap_or_default(),
        created: parse_date(service.created_at.as_ref())
            .unwrap_or_else(|| Timestamp::from_millis(0)),
        // A service without a running task is being (re)started by Swarm:
        // the engine is still ours, just not answering yet.
        status: if running {
            ContainerStatus::Running
        } else {
            ContainerStatus::Restarting
        },
        labels: spec.labels.unwrap_or_default().into_iter().collect(),
        ports,
        networks: BTreeMap::new(),
        health: None,
        task: task.map(|t| placement_of(t, nodes)),
    }
}

/// A first task that cannot run, as the error the pool understands. Once the
/// watch is over (`watched`), a task still not on any node will not be: no
/// node qualifies (ENGINE_PLACEMENT, limits above what nodes have).
fn task_failure(spec: &ContainerSpec, task: &TaskPlacement, watched: bool) -> Option<RuntimeError> {
    let message = task.message.to_ascii_lowercase();
    if message.contains("no such image") {
        return Some(RuntimeError::ImageNotFound(spec.image.clone()));
    }
    match task.state.as_str() {
        "rejected" | "failed" => Some(RuntimeError::Other(format!(
            "Swarm could not start service '{}': {}",
            spec.name, task.message
        ))),
        "new" | "allocated" | "pending" if watched => Some(RuntimeError::Other(format!(
            "Swarm found no node for service '{}' within {}s: {}",
            spec.name,
            FIRST_TASK_WATCH.as_secs(),
            if task.message.is_empty() {
                "still pending"
            } else {
                &task.message
            }
        ))),
        _ => None,
    }
}

/// Container events of our task containers, and service and node events, as
/// events of the engine (its service) or of the swarm.
fn swarm_event(message: EventMessage) -> Option<RuntimeEvent> {
    match message.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let attributes = message
                .actor
                .as_ref()
                .and_then(|a| a.attributes.clone())
                .unwrap_or_default();
            let mut event = event_from_message(message)?;
            // A task container stands for its service: the engine.
            if let Some(service) = attributes.get(SERVICE_ID_LABEL) {
                event.container_id = service.clone();
                event.name = attributes.get(SERVICE_NAME_LABEL).cloned();
            }
            Some(event)
        }
        Some(EventMessageTypeEnum::SERVICE) | Some(EventMessageTypeEnum::NODE) => {
            let is_service = message.typ == Some(EventMessageTypeEnum::SERVICE);
            let actor = message.actor.unwrap_or_default();
            let action = message.action.unwrap_or_default();
            let kind = if is_service && action == "remove" {
                RuntimeEventKind::Destroy
            } else {
                RuntimeEventKind::Placement
            };
            let at = match (message.time_nano, message.time) {
                (Some(nanos), _) => Timestamp::from_millis(nanos / 1_000_000),
                (None, Some(seconds)) => Timestamp::from_millis(seconds.saturating_mul(1000)),
                (None, None) => Timestamp::now(),
            };
            Some(RuntimeEvent {
                kind,
                container_id: actor.id?,
                name: actor.attributes.and_then(|a| a.get("name").cloned()),
                at,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use bollard::models::{EventActor, TaskStatus};

    use super::*;
    use crate::runtime::ResourceLimits;

    fn runtime(placement: &[&str]) -> SwarmRuntime {
        SwarmRuntime::new(
            DockerRuntime::new("unix:///nonexistent"),
            SwarmPlacement::parse(&placement.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        )
    }

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "engine-1".into(),
            image: "acestream/engine:latest".into(),
            env: vec![("CONF".into(), "--http-port=40000".into())],
            labels: BTreeMap::from([("ondemand.app".into(), "svc".into())]),
            ports: vec![PortMapping::published(40000, 19000)],
            network: Some("acestream".into()),
            limits: ResourceLimits {
                memory_bytes: Some(256 << 20),
                nano_cpus: Some(500_000_000),
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_service_spec_carries_labels_placement_limits_and_network() {
        let runtime = runtime(&["node.labels.acestream==true", "node.role!=manager"]);
        let body = serde_json::to_value(runtime.service_spec(&spec())).unwrap();
        assert_eq!(body["Name"], "engine-1");
        assert_eq!(body["Labels"]["ondemand.app"], "svc");
        let task = &body["TaskTemplate"];
        assert_eq!(task["ContainerSpec"]["Labels"]["ondemand.app"], "svc");
        assert_eq!(task["ContainerSpec"]["Env"][0], "CONF=--http-port=40000");
        assert_eq!(
            task["Placement"]["Constraints"],
            serde_json::json!(["node.labels.acestream==true", "node.role!=manager"])
        );
        assert_eq!(
            task["Placement"]["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.id"
        );
        assert_eq!(task["Resources"]["Limits"]["MemoryBytes"], 256 << 20);
        assert_eq!(task["Resources"]["Limits"]["NanoCPUs"], 500_000_000);
        assert_eq!(task["RestartPolicy"]["Condition"], "any");
        assert_eq!(task["Networks"][0]["Target"], "acestream");
        assert_eq!(body["Mode"]["Replicated"]["Replicas"], 1);
        // Nothing is published: engines are reached over the overlay network,
        // by a name that resolves to the task itself.
        assert_eq!(body["EndpointSpec"], serde_json::json!({"Mode": "dnsrr"}));
    }

    #[test]
    fn placement_items_may_name_what_to_spread_over() {
        let runtime = runtime(&["spread=node.labels.zone", ""]);
        assert!(runtime.placement.constraints.is_empty());
        let body = serde_json::to_value(runtime.service_spec(&spec())).unwrap();
        let placement = &body["TaskTemplate"]["Placement"];
        assert!(placement.get("Constraints").is_none());
        assert_eq!(
            placement["Preferences"][0]["Spread"]["SpreadDescriptor"],
            "node.labels.zone"
        );
    }

    fn task(id: &str, state: TaskState, node: &str, created: &str) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some("svc1".into()),
            node_id: Some(node.into()),
            created_at: Some(created.into()),
            status: Some(TaskStatus {
                state: Some(state),
                message: Some("started".into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_service_is_running_when_its_current_task_runs() {
        let service = Service {
            id: Some("svc1".into()),
            created_at: Some("2026-12-01T10:00:00.5Z".into()),
            spec: Some(ServiceSpec {
                name: Some("engine-1".into()),
                labels: Some(HashMap::from([("ondemand.app".into(), "svc".into())])),
                task_template: Some(TaskSpec {
                    container_spec: Some(TaskSpecContainerSpec {
                        image: Some("img:1@sha256:abc".into()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let nodes = HashMap::from([("n1".to_owned(), ("host-a".to_owned(), "ready".to_owned()))]);
        let running = task("t1", TaskState::RUNNING, "n1", "2026-12-01T10:00:01Z");
        let info = info_from_service(service.clone(), Some(&running), &nodes);
        assert_eq!(info.id, "svc1");
        assert_eq!(info.name, "engine-1");
        assert_eq!(info.image, "img:1");
        assert_eq!(info.status, ContainerStatus::Running);
        assert_eq!(info.created.to_string(), "2026-12-01T10:00:00.500Z");
        let placement = info.task.unwrap();
        assert_eq!(
            (
                placement.task_id.as_str(),
                placement.node.as_str(),
                placement.node_state.as_str()
            ),
            ("t1", "host-a", "ready")
        );
        // Being brought up again (or never placed): still ours, restarting.
        let pending = task("t2", TaskState::PENDING, "", "2026-12-01T10:00:02Z");
        let info = info_from_service(service.clone(), Some(&pending), &nodes);
        assert_eq!(info.status, ContainerStatus::Restarting);
        assert!(info.status.is_alive());
        assert_eq!(
            info_from_service(service, None, &nodes).status,
            ContainerStatus::Restarting
        );
        assert!(newer(&pending, &running));
    }

    #[test]
    fn a_first_task_that_cannot_run_says_why() {
        let placement = |state: &str, message: &str| TaskPlacement {
            task_id: "t".into(),
            state: state.into(),
            message: message.into(),
            node_id: String::new(),
            node: String::new(),
            node_state: String::new(),
        };
        assert_eq!(
            task_failure(
                &spec(),
                &placement("rejected", "No such image: acestream/engine:latest"),
                false
            ),
            Some(RuntimeError::ImageNotFound(
                "acestream/engine:latest".into()
            ))
        );
        assert!(matches!(
            task_failure(&spec(), &placement("failed", "task: non-zero exit (1)"), false),
            Some(RuntimeError::Other(m)) if m.contains("non-zero exit (1)")
        ));
        assert_eq!(
            task_failure(&spec(), &placement("pending", "no suitable node"), false),
            None
        );
        assert!(matches!(
            task_failure(
                &spec(),
                &placement("pending", "no suitable node (scheduling constraints not satisfied on 1 node)"),
                true
            ),
            Some(RuntimeError::Other(m)) if m.contains("no node for service 'engine-1'") && m.contains("constraints not satisfied")
        ));
        assert_eq!(
            task_failure(&spec(), &placement("running", "started"), true),
            None
        );
    }

    #[test]
    fn events_name_the_engine_not_the_task_container() {
        let die = EventMessage {
            typ: Some(EventMessageTypeEnum::CONTAINER),
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("container1".into()),
                attributes: Some(HashMap::from([
                    ("exitCode".into(), "137".into()),
                    (SERVICE_ID_LABEL.into(), "svc1".into()),
                    (SERVICE_NAME_LABEL.into(), "engine-1".into()),
                ])),
            }),
            time: Some(1_795_836_466),
            ..Default::default()
        };
        let event = swarm_event(die).unwrap();
        assert_eq!(event.container_id, "svc1");
        assert_eq!(event.name.as_deref(), Some("engine-1"));
        assert_eq!(
            event.kind,
            RuntimeEventKind::Die {
                exit_code: Some(137)
            }
        );

        let cluster = |typ, action: &str| EventMessage {
            typ: Some(typ),
            action: Some(action.into()),
            actor: Some(EventActor {
                id: Some("x1".into()),
                attributes: Some(HashMap::from([("name".into(), "engine-1".into())])),
            }),
            ..Default::default()
        };
        let removed = swarm_event(cluster(EventMessageTypeEnum::SERVICE, "remove")).unwrap();
        assert_eq!(removed.kind, RuntimeEventKind::Destroy);
        assert_eq!(removed.container_id, "x1");
        assert_eq!(
            swarm_event(cluster(EventMessageTypeEnum::SERVICE, "update"))
                .unwrap()
                .kind,
            RuntimeEventKind::Placement
        );
        assert_eq!(
            swarm_event(cluster(EventMessageTypeEnum::NODE, "update"))
                .unwrap()
                .kind,
            RuntimeEventKind::Placement
        );
        assert!(swarm_event(cluster(EventMessageTypeEnum::NETWORK, "create")).is_none());
    }
}
