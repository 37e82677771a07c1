//! The pool of engines we run as containers: provisioning (with readiness),
//! removal, adoption and resync from the runtime, autoscaling and the
//! replacement of engines that stay unhealthy.
//!
//! Only this module and `runtime` know that engines can be containers; the
//! registry just sees engines whose `runtime` is `docker`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::autoscale::{self, Policy};
use crate::config::{Config, Label};
use crate::domain::{CheckSource, Engine, EngineHealth, EngineUsage, HealthCheck, RuntimeKind};
use crate::health::{self, probe};
use crate::ports::{EnginePortSet, EnginePorts, PortError};
use crate::registry::HOST_HTTP_PORT_LABEL;
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, PortMapping, RuntimeError, RuntimeEventKind,
};
use crate::service::Orchestrator;
use crate::time::Timestamp;

pub const HTTP_PORT_LABEL: &str = "acestream.http_port";
pub const HTTPS_PORT_LABEL: &str = "acestream.https_port";
pub const HOST_HTTPS_PORT_LABEL: &str = "host.https_port";

/// Attempts at a free `engine-N` name before giving up.
const NAME_ATTEMPTS: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("MAX_REPLICAS reached: {0} engines are running or starting")]
    MaxReplicas(u32),
    #[error("no free port: {0}")]
    Ports(#[from] PortError),
    #[error("image '{0}' is not available on the Docker host; build or load it first (nothing is pulled)")]
    ImageNotFound(String),
    #[error("TARGET_IMAGE '{0}' is not available on the Docker host; build or load it first (nothing is pulled)")]
    TargetImageMissing(String),
    #[error("{0}")]
    Runtime(RuntimeError),
    #[error("engine {name} did not answer its API within {timeout_s}s ({last_error}); its container was removed")]
    NotReady {
        name: String,
        timeout_s: f64,
        last_error: String,
    },
    #[error("container '{0}' is not managed by this orchestrator (it lacks the {1} label)")]
    NotManaged(String, String),
    #[error("container '{0}' not found")]
    NotFound(String),
    #[error("no free container name engine-N after {0} attempts")]
    Names(u32),
    #[error("image '{0}' is not in PROVISION_ALLOWED_IMAGES ({1})")]
    ImageNotAllowed(String, String),
}

impl From<RuntimeError> for ProvisionError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::ImageNotFound(image) => ProvisionError::ImageNotFound(image),
            RuntimeError::NotFound(id) => ProvisionError::NotFound(id),
            other => ProvisionError::Runtime(other),
        }
    }
}

/// Settings of the pool, from [`Config`].
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub image: String,
    pub label: Label,
    pub network: Option<String>,
    pub map_https: bool,
    pub startup_timeout: Duration,
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub monitor_interval: Duration,
    pub autoscale_interval: Duration,
    pub grace_s: f64,
    pub auto_delete: bool,
    pub unhealthy_grace_s: f64,
    pub replacement_cooldown_s: f64,
    pub max_unhealthy_percent: u8,
    pub allowed_images: Vec<String>,
}

impl PoolSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            image: config.target_image.clone(),
            label: config.container_label.clone(),
            network: config.docker_network.clone(),
            map_https: config.ace_map_https,
            startup_timeout: Duration::from_secs_f64(config.startup_timeout_s),
            min_replicas: config.min_replicas,
            max_replicas: config.max_replicas,
            monitor_interval: Duration::from_secs_f64(config.monitor_interval_s),
            autoscale_interval: Duration::from_secs_f64(config.autoscale_interval_s),
            grace_s: config.engine_grace_period_s,
            auto_delete: config.auto_delete,
            unhealthy_grace_s: config.health_unhealthy_grace_period_s,
            replacement_cooldown_s: config.health_replacement_cooldown_s,
            max_unhealthy_percent: config.health_max_unhealthy_percent,
            allowed_images: config.allowed_images(),
        }
    }
}

/// What `POST /provision/acestream` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Provisioned {
    pub container_id: String,
    #[schema(example = "engine-3")]
    pub container_name: String,
    /// Where the orchestrator reaches the engine: 127.0.0.1, or the container
    /// name on DOCKER_NETWORK.
    pub host: String,
    pub port: u16,
    pub host_http_port: u16,
    pub container_http_port: u16,
    pub container_https_port: u16,
    #[schema(required = true)]
    pub host_https_port: Option<u16>,
    /// Milliseconds from the request to the engine's first good answer.
    pub ready_ms: f64,
}

/// A request for an engine container.
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

/// A request for any container (`POST /provision`).
#[derive(Debug, Clone)]
pub struct GenericRequest {
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub ports: Vec<PortMapping>,
}

pub struct Pool {
    runtime: Arc<dyn ContainerRuntime>,
    orch: Arc<Orchestrator>,
    ports: EnginePorts,
    pub settings: PoolSettings,
    /// Provisions under way, each by the host port its engine will answer on
    /// (0 until its ports are chosen). They count toward MAX_REPLICAS; the
    /// port tells which engine the reconciler may already have adopted from
    /// the container's start event, so that it is not counted twice.
    starting: Mutex<Vec<u16>>,
    /// Serializes name choice and container creation (not the readiness wait).
    create_lock: tokio::sync::Mutex<()>,
    demand: AtomicU32,
    autoscale_now: Notify,
    last_replacement: Mutex<Option<Instant>>,
    suspended: AtomicBool,
    reachable: AtomicBool,
}

impl Pool {
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        orch: Arc<Orchestrator>,
        config: &Config,
    ) -> Self {
        Self {
            runtime,
            orch,
            ports: EnginePorts::from_config(config),
            settings: PoolSettings::from_config(config),
            starting: Mutex::new(Vec::new()),
            create_lock: tokio::sync::Mutex::new(()),
            demand: AtomicU32::new(0),
            autoscale_now: Notify::new(),
            last_replacement: Mutex::new(None),
            suspended: AtomicBool::new(false),
            reachable: AtomicBool::new(true),
        }
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// Takes a place among the `max` engines, or says why there is none.
    fn claim_slot(&self, max: u32) -> Result<SlotGuard<'_>, ProvisionError> {
        let mut starting = self.starting.lock();
        let running = self
            .orch
            .registry
            .read()
            .engines_run_by(RuntimeKind::Docker)
            .filter(|engine| {
                label_port(&engine.labels, HOST_HTTP_PORT_LABEL)
                    .is_none_or(|port| !starting.contains(&port))
            })
            .count();
        if running + starting.len() >= max as usize {
            return Err(ProvisionError::MaxReplicas(max));
        }
        starting.push(0);
        Ok(SlotGuard {
            starting: &self.starting,
            port: 0,
        })
    }

    /// Starts an engine container and answers once its API answers. A
    /// container that does not get there in `STARTUP_TIMEOUT_S` is removed
    /// and its ports freed.
    pub async fn provision_engine(
        &self,
        request: EngineRequest,
    ) -> Result<Provisioned, ProvisionError> {
        self.provision_engine_within(request, self.settings.max_replicas)
            .await
    }

    async fn provision_engine_within(
        &self,
        request: EngineRequest,
        max: u32,
    ) -> Result<Provisioned, ProvisionError> {
        let started = Instant::now();
        let mut slot = self.claim_slot(max)?;
        let ports = self.ports.allocate(self.settings.map_https)?;
        slot.set_port(ports.host_http);
        let result = self.start_engine(request, &ports, started).await;
        if result.is_err() {
            self.ports.release(&ports);
        }
        result
    }

    async fn start_engine(
        &self,
        request: EngineRequest,
        ports: &EnginePortSet,
        started: Instant,
    ) -> Result<Provisioned, ProvisionError> {
        let mut labels = request.labels;
        labels.insert(
            self.settings.label.key.clone(),
            self.settings.label.value.clone(),
        );
        labels.insert(HTTP_PORT_LABEL.into(), ports.container_http.to_string());
        labels.insert(HTTPS_PORT_LABEL.into(), ports.container_https.to_string());
        labels.insert(HOST_HTTP_PORT_LABEL.into(), ports.host_http.to_string());
        if let Some(port) = ports.host_https {
            labels.insert(HOST_HTTPS_PORT_LABEL.into(), port.to_string());
        }
        let mut env = request.env;
        env.entry("CONF".into()).or_insert_with(|| {
            format!(
                "--http-port={}\n--https-port={}\n--bind-all",
                ports.container_http, ports.container_https
            )
        });
        let mut published = vec![PortMapping::published(
            ports.container_http,
            ports.host_http,
        )];
        if let Some(port) = ports.host_https {
            published.push(PortMapping::published(ports.container_https, port));
        }
        let spec = ContainerSpec {
            name: String::new(),
            image: self.settings.image.clone(),
            env: env.into_iter().collect(),
            labels,
            ports: published,
            network: self.settings.network.clone(),
        };
        let info = self.create_named(spec).await.map_err(|e| match e {
            ProvisionError::ImageNotFound(image) => ProvisionError::TargetImageMissing(image),
            other => other,
        })?;
        let (host, port) = self.address(&info.name, ports);
        tracing::info!(container = %info.id, name = %info.name, %host, port, "engine container started; waiting for its API");

        if let Err(last_error) = self.wait_ready(&host, port).await {
            if let Err(error) = self.runtime.stop_and_remove(&info.id).await {
                tracing::warn!(container = %info.id, %error, "could not remove an engine that never became ready");
            }
            return Err(ProvisionError::NotReady {
                name: info.name,
                timeout_s: self.settings.startup_timeout.as_secs_f64(),
                last_error,
            });
        }
        let ready_ms = health::millis(started.elapsed());
        let engine = engine_from(&info, host.clone(), port);
        let id = info.id.clone();
        self.orch
            .write(|registry, _| Ok::<_, std::convert::Infallible>(((), registry.upsert(engine))))
            .await
            .map_err(|e| ProvisionError::Runtime(RuntimeError::Other(e.to_string())))?;
        health::record(
            &self.orch,
            &id,
            HealthCheck {
                ts: Timestamp::now(),
                ok: true,
                source: CheckSource::Probe,
                latency_ms: None,
                error: None,
            },
        );
        self.orch
            .metrics
            .provision
            .get_or_create(&crate::metrics::KindLabel { kind: "acestream" })
            .inc();
        tracing::info!(container = %id, name = %info.name, ready_ms, "engine provisioned");
        Ok(Provisioned {
            container_id: id,
            container_name: info.name,
            host,
            port,
            host_http_port: ports.host_http,
            container_http_port: ports.container_http,
            container_https_port: ports.container_https,
            host_https_port: ports.host_https,
            ready_ms,
        })
    }

    /// Creates the container under the first free `engine-N` name; a name taken
    /// by any container (ours or not) is skipped.
    async fn create_named(&self, mut spec: ContainerSpec) -> Result<ContainerInfo, ProvisionError> {
        let _lock = self.create_lock.lock().await;
        let taken: BTreeSet<String> = self
            .runtime
            .list_managed(&self.settings.label)
            .await?
            .into_iter()
            .map(|c| c.name)
            .collect();
        let mut n = 1;
        for _ in 0..NAME_ATTEMPTS {
            while taken.contains(&format!("engine-{n}")) {
                n += 1;
            }
            spec.name = format!("engine-{n}");
            match self.runtime.create_and_start(spec.clone()).await {
                Ok(info) => return Ok(info),
                Err(RuntimeError::NameConflict(_)) => n += 1,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ProvisionError::Names(NAME_ATTEMPTS))
    }

    /// Where the orchestrator reaches an engine: by name on `DOCKER_NETWORK`
    /// (the orchestrator runs beside the engines), else on the published host
    /// port of this host.
    fn address(&self, name: &str, ports: &EnginePortSet) -> (String, u16) {
        match &self.settings.network {
            Some(_) => (name.to_owned(), ports.container_http),
            None => ("127.0.0.1".to_owned(), ports.host_http),
        }
    }

    async fn wait_ready(&self, host: &str, port: u16) -> Result<(), String> {
        let deadline = Instant::now() + self.settings.startup_timeout;
        let mut last_error = "never answered".to_owned();
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let outcome = probe(
                &self.orch.http,
                host,
                port,
                left.min(Duration::from_secs(2)),
            )
            .await;
            if outcome.ok {
                return Ok(());
            }
            last_error = outcome.error.unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(100).min(left)).await;
        }
        Err(last_error)
    }

    /// Starts any container, labelled as ours (`POST /provision`). Whoever
    /// reaches this can run containers on the host, so only allowed images run,
    /// and the spec has no way to ask for privileges, host networking or mounts.
    pub async fn provision_generic(
        &self,
        request: GenericRequest,
    ) -> Result<ContainerInfo, ProvisionError> {
        if !self
            .settings
            .allowed_images
            .iter()
            .any(|i| i == &request.image)
        {
            return Err(ProvisionError::ImageNotAllowed(
                request.image,
                self.settings.allowed_images.join(", "),
            ));
        }
        let mut labels = request.labels;
        labels.insert(
            self.settings.label.key.clone(),
            self.settings.label.value.clone(),
        );
        let spec = ContainerSpec {
            name: format!("svc-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            image: request.image,
            env: request.env.into_iter().collect(),
            labels,
            ports: request.ports,
            network: self.settings.network.clone(),
        };
        let info = self.runtime.create_and_start(spec).await?;
        self.orch
            .metrics
            .provision
            .get_or_create(&crate::metrics::KindLabel { kind: "generic" })
            .inc();
        tracing::info!(container = %info.id, name = %info.name, image = %info.image, "container provisioned");
        Ok(info)
    }

    /// A managed container, by id or name; containers without our label are
    /// not shown.
    pub async fn inspect_managed(&self, id: &str) -> Result<ContainerInfo, ProvisionError> {
        match self.runtime.inspect(id).await? {
            Some(info) if info.has_label(&self.settings.label) => Ok(info),
            Some(_) => Err(ProvisionError::NotManaged(
                id.to_owned(),
                self.settings.label.to_string(),
            )),
            None => Err(ProvisionError::NotFound(id.to_owned())),
        }
    }

    pub async fn list_managed(&self) -> Result<Vec<ContainerInfo>, ProvisionError> {
        Ok(self.runtime.list_managed(&self.settings.label).await?)
    }

    /// Stops and removes a container we manage; its engine leaves the registry
    /// and its streams end with `reason`.
    pub async fn remove(&self, id: &str, reason: &str) -> Result<ContainerInfo, ProvisionError> {
        let info = self.inspect_managed(id).await?;
        match self.runtime.stop_and_remove(&info.id).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.forget(&info.id, &info.labels, reason).await;
        tracing::info!(container = %info.id, name = %info.name, reason, "container removed");
        Ok(info)
    }

    /// Drops an engine whose container is gone (or going) and frees its ports.
    async fn forget(&self, id: &str, labels: &BTreeMap<String, String>, reason: &str) {
        if let Some(ports) = ports_from_labels(labels) {
            self.ports.release(&ports);
        }
        let removed = self
            .orch
            .write(|registry, now| registry.remove_engine(id, reason, now))
            .await;
        if let Err(e) = removed {
            tracing::debug!(container = %id, error = %e, "engine was not in the registry");
        }
    }

    // ---- reconciliation --------------------------------------------------

    /// Makes the registry match the runtime: adopts running containers with
    /// our label (reserving their ports), forgets engines whose container is
    /// gone. Never stops anything.
    pub async fn resync(&self) -> Result<(), RuntimeError> {
        let containers = match self.runtime.list_managed(&self.settings.label).await {
            Ok(list) => {
                if !self.reachable.swap(true, Ordering::SeqCst) {
                    tracing::info!("container runtime reachable again; resynced");
                }
                list
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "container runtime unreachable; the API and health checks go on, provisioning waits");
                }
                return Err(e);
            }
        };
        let mut alive = BTreeSet::new();
        for info in containers.iter().filter(|c| c.status.is_alive()) {
            let Some(ports) =
                ports_from_labels(&info.labels).or_else(|| ports_from_published(info))
            else {
                tracing::warn!(container = %info.id, name = %info.name, "managed container has no engine port; not adopted");
                continue;
            };
            alive.insert(info.id.clone());
            self.ports.reserve(&ports);
            let (host, port) = self.address(&info.name, &ports);
            let engine = engine_from(info, host, port);
            let known = self.orch.registry.read().engine(&info.id).is_some();
            if !known {
                tracing::info!(container = %info.id, name = %info.name, "adopted a running engine container");
            }
            let _ = self
                .orch
                .write(|registry, _| {
                    Ok::<_, std::convert::Infallible>(((), registry.upsert(engine)))
                })
                .await;
        }
        let registered = self.orch.registry.read().engine_ids(RuntimeKind::Docker);
        for id in registered.into_iter().filter(|id| !alive.contains(id)) {
            let labels = self
                .orch
                .registry
                .read()
                .engine(&id)
                .map(|e| e.labels.clone())
                .unwrap_or_default();
            tracing::info!(container = %id, "engine container is gone; forgetting it");
            self.forget(&id, &labels, "engine container is gone").await;
        }
        Ok(())
    }

    /// Follows the runtime's events and resyncs every `MONITOR_INTERVAL_S`; a
    /// lost event stream is re-subscribed on the next tick.
    pub async fn run_reconciler(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.monitor_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut events = None;
        loop {
            if events.is_none() && self.reachable.load(Ordering::SeqCst) {
                match self.runtime.events(&self.settings.label).await {
                    Ok(stream) => events = Some(stream),
                    Err(e) => tracing::debug!(error = %e, "cannot follow runtime events yet"),
                }
            }
            let next_event = async {
                match events.as_mut() {
                    Some(stream) => futures::StreamExt::next(stream).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {
                    let _ = self.resync().await;
                    self.replace_unhealthy().await;
                }
                event = next_event => match event {
                    Some(Ok(event)) => {
                        tracing::debug!(container = %event.container_id, kind = ?event.kind, "runtime event");
                        match event.kind {
                            RuntimeEventKind::Pause | RuntimeEventKind::Unpause => {
                                // A paused engine hangs: check it now instead of at the next sweep.
                                let target = self.orch.registry.read().probe_target(&event.container_id);
                                if let Some(target) = target {
                                    let orch = self.orch.clone();
                                    tokio::spawn(async move {
                                        health::check_engine(&orch, &target, CheckSource::Probe).await;
                                    });
                                }
                            }
                            _ => { let _ = self.resync().await; }
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "runtime event stream failed");
                        events = None;
                    }
                    None => events = None,
                }
            }
        }
    }

    // ---- autoscaling -----------------------------------------------------

    pub fn set_demand(&self, demand: u32) {
        self.demand.store(demand, Ordering::SeqCst);
        self.autoscale_now.notify_one();
    }

    pub fn demand(&self) -> u32 {
        self.demand.load(Ordering::SeqCst)
    }

    /// One autoscaler step; `grace_s` overrides the grace period (`POST /gc`
    /// passes 0).
    pub async fn autoscale_once(&self, grace_s: Option<f64>) -> autoscale::Plan {
        let now = Timestamp::now();
        let policy = Policy {
            min_free: self.settings.min_replicas,
            max_total: self.settings.max_replicas,
            demand: self.demand(),
            grace_s: grace_s.unwrap_or(self.settings.grace_s),
            auto_delete: self.settings.auto_delete,
        };
        let pool = self.orch.registry.read().pool(now);
        let plan = autoscale::decide(&pool, &policy, now);
        if plan.is_empty() {
            return plan;
        }
        tracing::info!(
            provision = plan.provision,
            remove = plan.remove.len(),
            "autoscaling"
        );
        for id in &plan.remove {
            if let Err(e) = self
                .remove(id, "idle engine removed by the autoscaler")
                .await
            {
                tracing::warn!(container = %id, error = %e, "autoscaler could not remove an engine");
            }
        }
        for _ in 0..plan.provision {
            if let Err(e) = self.provision_engine(EngineRequest::default()).await {
                tracing::warn!(error = %e, "autoscaler could not provision an engine");
                break;
            }
        }
        plan
    }

    pub async fn run_autoscaler(self: Arc<Self>, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.settings.autoscale_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
                _ = self.autoscale_now.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.autoscale_once(None) => {}
            }
        }
    }

    // ---- replacement -----------------------------------------------------

    pub fn replacement_suspended(&self) -> bool {
        self.suspended.load(Ordering::SeqCst)
    }

    /// Replaces one engine that has stayed unhealthy past the grace period:
    /// the new one is ready before the old one goes. None while more than
    /// `HEALTH_MAX_UNHEALTHY_PERCENT` are unhealthy (a shared cause is likelier
    /// than many broken engines), and one per cooldown.
    pub async fn replace_unhealthy(&self) {
        let now = Timestamp::now();
        let (total, unhealthy, overdue) = {
            let registry = self.orch.registry.read();
            let ids = registry.engine_ids(RuntimeKind::Docker);
            let unhealthy = registry.unhealthy_since(now).len();
            let overdue =
                registry.unhealthy_since(now.plus_seconds(-self.settings.unhealthy_grace_s));
            (ids.len(), unhealthy, overdue)
        };
        let share_exceeded =
            total > 0 && unhealthy * 100 > total * usize::from(self.settings.max_unhealthy_percent);
        if share_exceeded != self.suspended.swap(share_exceeded, Ordering::SeqCst) {
            self.orch
                .registry
                .write()
                .set_replacement_suspended(share_exceeded);
            self.orch
                .metrics
                .replacement_suspended
                .set(i64::from(share_exceeded));
            if share_exceeded {
                tracing::warn!(unhealthy, total, "more than {}% of the engines are unhealthy: suspecting a shared cause (network, VPN, host); replacing none", self.settings.max_unhealthy_percent);
            } else {
                tracing::info!(
                    unhealthy,
                    total,
                    "unhealthy share back under the limit; replacements resume"
                );
            }
        }
        if share_exceeded {
            return;
        }
        let Some((old, since)) = overdue.into_iter().min_by_key(|(_, since)| *since) else {
            return;
        };
        {
            let last = self.last_replacement.lock();
            if last
                .is_some_and(|at| at.elapsed().as_secs_f64() < self.settings.replacement_cooldown_s)
            {
                return;
            }
        }
        *self.last_replacement.lock() = Some(Instant::now());
        let broken_for = since.seconds_until(now);
        tracing::info!(container = %old, broken_for_s = broken_for, "replacing an engine that stayed unhealthy");
        // One engine above MAX_REPLICAS for the moment the two overlap.
        let new = match self
            .provision_engine_within(EngineRequest::default(), self.settings.max_replicas + 1)
            .await
        {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(container = %old, error = %e, "could not start a replacement; will try again after the cooldown");
                return;
            }
        };
        let reason = format!(
            "engine replaced by {} after being unhealthy for {:.0}s",
            new.container_name, broken_for
        );
        let _ = self
            .orch
            .write(|registry, now| {
                let ops = registry.note(
                    &new.container_id,
                    format!("replaces {old}, unhealthy for {broken_for:.0}s"),
                    now,
                );
                Ok::<_, std::convert::Infallible>(((), ops))
            })
            .await;
        if let Err(e) = self.remove(&old, &reason).await {
            tracing::warn!(container = %old, error = %e, "could not remove the replaced engine");
        }
        self.orch.metrics.replacements.inc();
        tracing::info!(old = %old, new = %new.container_id, "{reason}");
    }
}

/// A provision's place in [`Pool::starting`], given back when it ends.
struct SlotGuard<'a> {
    starting: &'a Mutex<Vec<u16>>,
    port: u16,
}

impl SlotGuard<'_> {
    fn set_port(&mut self, port: u16) {
        let mut starting = self.starting.lock();
        if let Some(entry) = starting.iter_mut().find(|p| **p == self.port) {
            *entry = port;
        }
        self.port = port;
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut starting = self.starting.lock();
        if let Some(index) = starting.iter().position(|p| *p == self.port) {
            starting.swap_remove(index);
        }
    }
}

fn label_port(labels: &BTreeMap<String, String>, key: &str) -> Option<u16> {
    labels.get(key).and_then(|v| v.parse().ok())
}

/// The ports of an engine container, from the labels we put on it.
pub fn ports_from_labels(labels: &BTreeMap<String, String>) -> Option<EnginePortSet> {
    Some(EnginePortSet {
        host_http: label_port(labels, HOST_HTTP_PORT_LABEL)?,
        container_http: label_port(labels, HTTP_PORT_LABEL)?,
        container_https: label_port(labels, HTTPS_PORT_LABEL).unwrap_or(0),
        host_https: label_port(labels, HOST_HTTPS_PORT_LABEL),
    })
}

/// For a container started by hand with our label: its first published port.
fn ports_from_published(info: &ContainerInfo) -> Option<EnginePortSet> {
    let mapping = info.ports.iter().find(|p| p.host_port.is_some())?;
    Some(EnginePortSet {
        host_http: mapping.host_port?,
        container_http: mapping.container_port,
        container_https: 0,
        host_https: None,
    })
}

fn engine_from(info: &ContainerInfo, host: String, port: u16) -> Engine {
    let now = Timestamp::now();
    Engine {
        container_id: info.id.clone(),
        container_name: Some(info.name.clone()),
        host,
        port,
        labels: info.labels.clone(),
        runtime: RuntimeKind::Docker,
        first_seen: now,
        last_seen: now,
        health: EngineHealth::default(),
        usage: EngineUsage::default(),
    }
}
