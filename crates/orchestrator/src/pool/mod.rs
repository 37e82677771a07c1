//! The pool of engines we run as containers.
//!
//! - this file: provisioning an engine (ports, name, readiness) and the pool's
//!   settings and errors;
//! - `containers.rs`: any container (`POST /provision`), inspection, removal;
//! - `reconciler.rs`: the one task that owns the container set: adoption and
//!   resync from the runtime, autoscaling, and the replacement of engines that
//!   stay unhealthy, driven by one step function;
//! - `labels.rs`: the labels we put on containers and read back.
//!
//! Only this module and `runtime` know that engines can be containers; the
//! registry just sees engines whose `runtime` is `docker`.

mod containers;
pub mod labels;
pub mod nodes;
pub mod reconciler;
mod vpn;

pub use nodes::{CredentialView, OnDemandSettings};
pub use vpn::VpnPlacement;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, RuntimeChoice};
use crate::domain::labels::VPN_NODE_LABEL;
use crate::domain::{CheckSource, HealthCheck, RuntimeKind};
use crate::engine_client::millis;
use crate::ports::{EnginePortSet, EnginePorts, PortError};
use crate::runtime::{
    ContainerInfo, ContainerRuntime, ContainerSpec, Label, PortMapping, ResourceLimits,
    RuntimeError, TaskPlacement,
};
use crate::service::{Orchestrator, Provisioner};
use crate::time::Timestamp;
use labels::{
    engine_from, HOST_HTTPS_PORT_LABEL, HOST_HTTP_PORT_LABEL, HTTPS_PORT_LABEL, HTTP_PORT_LABEL,
    P2P_PORT_LABEL,
};
use reconciler::{Command, Reconciler};

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
    #[error("no VPN node can take an engine: {0}")]
    NoVpnNode(String),
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

/// Settings of the pool, from `Config`.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub image: String,
    pub label: Label,
    /// `DOCKER_NETWORK`, or `SWARM_NETWORK` with RUNTIME=swarm: engines on
    /// it are reached by name.
    pub network: Option<String>,
    /// `ENGINE_MEMORY_LIMIT`, `ENGINE_CPU_LIMIT`.
    pub limits: ResourceLimits,
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
    /// Engines go behind these Gluetun nodes; `None` without nodes.
    pub vpn: Option<VpnPlacement>,
    /// Nodes created on demand (`VPN_CONFIGS_DIR`); `None` without.
    pub on_demand: Option<OnDemandSettings>,
}

impl PoolSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            image: config.target_image.clone(),
            label: config.container_label.clone(),
            network: match config.runtime {
                RuntimeChoice::Docker => config.docker_network.clone(),
                RuntimeChoice::Swarm => config.swarm_network.clone(),
            },
            limits: ResourceLimits {
                memory_bytes: config.engine_memory_limit,
                nano_cpus: config
                    .engine_cpu_limit
                    .map(|cores| (cores * 1e9).round() as i64),
            },
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
            vpn: (!config.vpn_nodes().is_empty() || config.vpn_configs_dir.is_some()).then(|| {
                VpnPlacement {
                    nodes: config.vpn_nodes(),
                    preferred_per_node: config.preferred_engines_per_vpn,
                    max_per_node: config.max_engines_per_vpn,
                    control_port: config.gluetun_control_port,
                }
            }),
            on_demand: config.vpn_configs_dir.as_ref().map(|dir| OnDemandSettings {
                configs_dir: dir.clone(),
                image: config.gluetun_image.clone(),
                tun_device: Some(config.gluetun_tun_device.trim().to_owned())
                    .filter(|d| !d.is_empty()),
                api_key: config.gluetun_api_key.clone().unwrap_or_default(),
                control_port: config.gluetun_control_port,
                unhealthy_grace: Duration::from_secs_f64(config.vpn_unhealthy_grace_period_s),
                cooldown: Duration::from_secs_f64(config.vpn_credential_cooldown_s),
                idle_grace: Duration::from_secs_f64(config.vpn_idle_grace_period_s),
                startup_timeout: Duration::from_secs_f64(config.vpn_startup_timeout_s),
            }),
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
    /// The demand last set through `POST /scale`; the reconciler acts on it.
    demand: AtomicU32,
    /// Engine ports of VPN nodes being placed, by node.
    placing: Mutex<Vec<(String, u16)>>,
    /// Whether the last call to the runtime got through.
    reachable: AtomicBool,
    /// The VPN monitor: nodes created on demand join and leave it. Set once,
    /// by the app.
    vpn: OnceLock<Arc<crate::vpn::Vpn>>,
    /// The nodes created on demand and their leases.
    fleet: Mutex<nodes::Fleet>,
    /// One node created at a time.
    grow_lock: tokio::sync::Mutex<()>,
    /// Nodes added so far (see [`Pool::grow_nodes`]).
    node_generation: AtomicU64,
    /// Itself, for work that outlives a call (removing a node that failed).
    me: OnceLock<std::sync::Weak<Pool>>,
    /// To the reconciler task: `/scale` and `/gc` are commands to it.
    commands: mpsc::Sender<Command>,
    /// The current Swarm task of each engine, as last seen by the resync.
    tasks: Mutex<std::collections::HashMap<String, TaskPlacement>>,
}

impl Pool {
    /// The pool and its reconciler; run the reconciler with
    /// [`Reconciler::run`] (or drive [`Reconciler::step`] in tests).
    pub fn new(
        runtime: Arc<dyn ContainerRuntime>,
        orch: Arc<Orchestrator>,
        settings: PoolSettings,
        ports: EnginePorts,
    ) -> (Arc<Pool>, Reconciler) {
        let (commands, inbox) = mpsc::channel(16);
        let pool = Arc::new(Self {
            runtime,
            orch: orch.clone(),
            ports,
            settings,
            starting: Mutex::new(Vec::new()),
            create_lock: tokio::sync::Mutex::new(()),
            demand: AtomicU32::new(0),
            placing: Mutex::new(Vec::new()),
            reachable: AtomicBool::new(true),
            vpn: OnceLock::new(),
            fleet: Mutex::new(nodes::Fleet::default()),
            grow_lock: tokio::sync::Mutex::new(()),
            node_generation: AtomicU64::new(0),
            me: OnceLock::new(),
            commands,
            tasks: Mutex::new(Default::default()),
        });
        let _ = pool.me.set(Arc::downgrade(&pool));
        let as_provisioner: Arc<dyn Provisioner> = pool.clone();
        orch.set_provisioner(Arc::downgrade(&as_provisioner));
        let reconciler = Reconciler::new(pool.clone(), inbox);
        (pool, reconciler)
    }

    /// A pool built from the configuration.
    pub fn from_config(
        runtime: Arc<dyn ContainerRuntime>,
        orch: Arc<Orchestrator>,
        config: &Config,
    ) -> (Arc<Pool>, Reconciler) {
        let ports = EnginePorts::new(
            config.port_range_host,
            config.ace_http_range,
            config.ace_https_range,
        );
        Self::new(runtime, orch, PoolSettings::from_config(config), ports)
    }

    /// Lets the pool add the nodes it creates to the VPN monitor.
    pub fn set_vpn(&self, vpn: &Arc<crate::vpn::Vpn>) {
        let _ = self.vpn.set(vpn.clone());
    }

    pub fn orchestrator(&self) -> &Arc<Orchestrator> {
        &self.orch
    }

    pub fn runtime(&self) -> &Arc<dyn ContainerRuntime> {
        &self.runtime
    }

    /// Takes a place among the `max` engines, or says why there is none.
    fn claim_slot(&self, max: u32) -> Result<SlotGuard<'_>, ProvisionError> {
        let mut starting = self.starting.lock();
        let running = self.orch.read(|r| {
            r.engines_run_by(RuntimeKind::Docker)
                .filter(|engine| {
                    engine
                        .host_http_port()
                        .is_none_or(|port| !starting.contains(&port))
                })
                .count()
        });
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

    pub(super) async fn provision_engine_within(
        &self,
        request: EngineRequest,
        max: u32,
    ) -> Result<Provisioned, ProvisionError> {
        let started = Instant::now();
        let mut slot = self.claim_slot(max)?;
        if let Some(vpn) = &self.settings.vpn {
            // No node with room: one more is created on demand (when there
            // are credentials), then the engine is placed again.
            let seen = self.node_generation();
            let (placement, _placing) = match self.place_behind_node(vpn).await {
                Err(ProvisionError::NoVpnNode(why)) if self.settings.on_demand.is_some() => {
                    tracing::info!(reason = %why, "no VPN node has room for an engine; creating one");
                    self.grow_nodes(seen).await?;
                    self.place_behind_node(vpn).await?
                }
                other => other?,
            };
            slot.set_port(placement.ports.host_http);
            return self
                .start_engine(request, &placement.ports, Some(&placement), started)
                .await;
        }
        let ports = self.ports.allocate(self.settings.map_https)?;
        slot.set_port(ports.host_http);
        let result = self.start_engine(request, &ports, None, started).await;
        if result.is_err() {
            self.ports.release(&ports);
        }
        result
    }

    async fn start_engine(
        &self,
        request: EngineRequest,
        ports: &EnginePortSet,
        behind: Option<&vpn::Placement>,
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
        let mut network = self.settings.network.clone();
        if let Some(placement) = behind {
            // In the node's namespace: no ports of its own (the node
            // publishes them), no network of its own.
            published.clear();
            network = Some(format!("container:{}", placement.node));
            labels.insert(VPN_NODE_LABEL.into(), placement.node.clone());
            if let Some(p2p) = placement.p2p_port {
                // The VPN's forwarded port, for the engine's P2P traffic.
                env.entry("P2P_PORT".into())
                    .or_insert_with(|| p2p.to_string());
                labels.insert(P2P_PORT_LABEL.into(), p2p.to_string());
            }
        }
        let spec = ContainerSpec {
            name: String::new(),
            image: self.settings.image.clone(),
            env: env.into_iter().collect(),
            labels,
            ports: published,
            network,
            limits: self.settings.limits,
            ..Default::default()
        };
        let info = self.create_named(spec).await.map_err(|e| match e {
            ProvisionError::ImageNotFound(image) => ProvisionError::TargetImageMissing(image),
            other => other,
        })?;
        let (host, port) = self.address(behind.map_or(&info.name, |p| &p.node), ports);
        tracing::info!(container = %info.id, name = %info.name, %host, port, node = ?behind.map(|p| &p.node), "engine container started; waiting for its API");

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
        let ready_ms = millis(started.elapsed());
        let engine = engine_from(&info, host.clone(), port);
        let id = info.id.clone();
        self.orch
            .adopt_engine(engine)
            .await
            .map_err(|e| ProvisionError::Runtime(RuntimeError::Other(e.to_string())))?;
        // It just answered: healthy now, not "unknown" until the next sweep.
        self.orch.record_check(
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
    /// port of this host. An engine behind a VPN node is reached through the
    /// node: pass the node's name.
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
            let outcome = self
                .orch
                .probe(host, port, left.min(Duration::from_secs(2)))
                .await;
            if outcome.ok {
                return Ok(());
            }
            last_error = outcome.error.unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(100).min(left)).await;
        }
        Err(last_error)
    }
}

impl Provisioner for Pool {
    fn provision(&self) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            self.provision_engine(EngineRequest::default())
                .await
                .map(|p| p.container_id)
                .map_err(|e| e.to_string())
        })
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
