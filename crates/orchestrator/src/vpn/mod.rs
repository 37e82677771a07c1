//! Engines behind a VPN: the Gluetun nodes the engines' traffic goes through.
//!
//! Each node named by `GLUETUN_CONTAINER_NAME` / `GLUETUN_CONTAINERS` is
//! checked every `VPN_CHECK_INTERVAL_S`, all at once: its container (found
//! through the container runtime; its Docker health counts), then its control
//! server (`client.rs`). A node is healthy when its tunnel is `running`, with
//! the same failure threshold, history and reasons as engines. While a node is
//! unhealthy, the engines behind it (label `acestream.vpn_node`) leave the
//! selection, the built-in proxy moves their streams away, and they are not
//! replaced one by one: the cause is the node's. When the node recovers its
//! engines are checked at once and rejoin.

pub mod client;
pub mod credentials;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};
use parking_lot::RwLock;
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::{labels::VPN_NODE_LABEL, CheckSource, HealthStatus, HealthTransition};
use crate::engine_client::millis;
use crate::pool::labels::P2P_PORT_LABEL;
use crate::pool::Pool;
use crate::registry::{push_bounded, Registry};
use crate::runtime::ContainerRuntime;
use crate::service::Orchestrator;
use crate::time::Timestamp;
use client::{ControlClient, ControlError, NodeReport};

/// The VPN settings, from the configuration.
#[derive(Debug, Clone)]
pub struct VpnSettings {
    /// Container names of the static Gluetun nodes (`GLUETUN_CONTAINER_NAME`,
    /// `GLUETUN_CONTAINERS`).
    pub nodes: Vec<String>,
    /// Nodes are also created on demand (`VPN_CONFIGS_DIR`): they join and
    /// leave the checked set at run time.
    pub on_demand: bool,
    pub api_key: Option<String>,
    /// The control server's port inside the node (Gluetun's default 8000).
    pub control_port: u16,
    pub interval: Duration,
    pub timeout: Duration,
    /// When set, nodes are reached by their address on this network.
    pub network: Option<String>,
    pub failure_threshold: u32,
    pub history_max: usize,
    /// When a node recovers, restart (recreate) the engines we run behind it
    /// instead of re-checking them (`VPN_RESTART_ENGINES_ON_RECONNECT`).
    pub restart_engines_on_reconnect: bool,
}

/// One check of a node.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeCheck {
    pub ts: Timestamp,
    pub ok: bool,
    pub latency_ms: f64,
    pub error: Option<String>,
}

/// Where a node comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// Named in the configuration; the orchestrator never creates or removes it.
    Static,
    /// Created by the orchestrator with a credential of `VPN_CONFIGS_DIR`.
    OnDemand,
}

#[derive(Debug, Clone)]
struct Node {
    kind: NodeKind,
    /// The credential leased to an on-demand node (its file name without
    /// `.conf`; never the key).
    credential: Option<String>,
    container_id: Option<String>,
    control_url: Option<String>,
    docker_health: Option<String>,
    status: HealthStatus,
    since: Option<Timestamp>,
    last_check: Option<Timestamp>,
    consecutive_failures: u32,
    last_error: Option<String>,
    report: NodeReport,
    checks: VecDeque<NodeCheck>,
    transitions: VecDeque<HealthTransition>,
}

impl Default for Node {
    fn default() -> Self {
        Self {
            kind: NodeKind::Static,
            credential: None,
            container_id: None,
            control_url: None,
            docker_health: None,
            status: HealthStatus::Unknown,
            since: None,
            last_check: None,
            consecutive_failures: 0,
            last_error: None,
            report: NodeReport::default(),
            checks: VecDeque::new(),
            transitions: VecDeque::new(),
        }
    }
}

/// What the dashboard shows of a node: when it changes, live views are woken.
#[derive(PartialEq)]
struct Shown {
    status: HealthStatus,
    error: Option<String>,
    docker_health: Option<String>,
    public_ip: Option<String>,
    country: Option<String>,
    forwarded_port: Option<u16>,
}

impl Shown {
    fn of(node: &Node) -> Self {
        Self {
            status: node.status,
            error: node.last_error.clone(),
            docker_health: node.docker_health.clone(),
            public_ip: node.report.public_ip.clone(),
            country: node.report.country.clone(),
            forwarded_port: node.report.forwarded_port,
        }
    }
}

/// A node as `GET /vpn/nodes` shows it: its summary, where it was reached,
/// and its histories.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeView {
    #[serde(flatten)]
    pub summary: NodeSummary,
    pub container_id: Option<String>,
    /// Where its control server was reached.
    pub control_url: Option<String>,
    /// Newest first.
    pub transitions: Vec<HealthTransition>,
    /// Newest first.
    pub checks: Vec<NodeCheck>,
}

/// A node at a glance, as the dashboard's snapshot carries it (and the first
/// part of a [`NodeView`]): no histories, only the newest transition.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeSummary {
    /// The node's container name.
    pub name: String,
    /// `static` (configured) or `on_demand` (created with a credential).
    pub kind: NodeKind,
    /// The credential an on-demand node holds (the name of its file in
    /// `VPN_CONFIGS_DIR`, without `.conf`): its lease.
    pub credential: Option<String>,
    pub health_status: HealthStatus,
    pub health_since: Option<Timestamp>,
    pub last_health_check: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub last_health_error: Option<String>,
    /// The container's own `HEALTHCHECK` result, when it has one.
    pub docker_health: Option<String>,
    pub public_ip: Option<String>,
    pub country: Option<String>,
    pub forwarded_port: Option<u16>,
    /// Engines behind this node (label `acestream.vpn_node`), by id.
    pub engines: Vec<String>,
    /// The newest health transition, with its reason.
    pub last_transition: Option<HealthTransition>,
}

/// The ids of the engines behind `node` (label `acestream.vpn_node`).
pub fn engines_behind_in(registry: &Registry, node: &str) -> Vec<String> {
    registry
        .all_engine_ids()
        .into_iter()
        .filter(|id| {
            registry
                .engine(id)
                .and_then(|e| e.labels.get(VPN_NODE_LABEL))
                .is_some_and(|n| n == node)
        })
        .collect()
}

/// `GET /vpn/status`: the first node, in the Python orchestrator's shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VpnStatus {
    /// Whether any node is configured.
    pub enabled: bool,
    /// `running` while the tunnel is up, `down` when it is not, `unknown`
    /// before the first check, `disabled` without a node.
    pub status: String,
    pub container_name: Option<String>,
    pub health: Option<HealthStatus>,
    pub forwarded_port: Option<u16>,
    pub last_check: Option<Timestamp>,
    pub public_ip: Option<String>,
}

pub struct Vpn {
    settings: VpnSettings,
    runtime: Arc<dyn ContainerRuntime>,
    orch: Arc<Orchestrator>,
    client: ControlClient,
    nodes: RwLock<BTreeMap<String, Node>>,
    /// The engines we run, to recreate them (restart on reconnect, a new
    /// forwarded port). Set once, by the app.
    pool: OnceLock<Weak<Pool>>,
}

impl Vpn {
    pub fn new(
        settings: VpnSettings,
        runtime: Arc<dyn ContainerRuntime>,
        orch: Arc<Orchestrator>,
    ) -> Arc<Self> {
        let nodes = settings
            .nodes
            .iter()
            .map(|name| (name.clone(), Node::default()))
            .collect();
        Arc::new(Self {
            client: ControlClient::new(settings.api_key.clone(), settings.timeout),
            settings,
            runtime,
            orch,
            nodes: RwLock::new(nodes),
            pool: OnceLock::new(),
        })
    }

    /// Lets the monitor recreate the engines we run.
    pub fn set_pool(&self, pool: &Arc<Pool>) {
        let _ = self.pool.set(Arc::downgrade(pool));
    }

    fn pool(&self) -> Option<Arc<Pool>> {
        self.pool.get().and_then(Weak::upgrade)
    }

    pub fn enabled(&self) -> bool {
        !self.settings.nodes.is_empty() || self.settings.on_demand
    }

    /// The static nodes, in configuration order.
    pub fn static_nodes(&self) -> &[String] {
        &self.settings.nodes
    }

    /// Starts checking a node the orchestrator created (or adopted) with
    /// `credential`.
    pub fn add_node(&self, name: &str, credential: &str) {
        self.nodes
            .write()
            .entry(name.to_owned())
            .or_insert_with(|| Node {
                kind: NodeKind::OnDemand,
                credential: Some(credential.to_owned()),
                ..Node::default()
            });
        self.orch.notify_changed();
    }

    /// Stops checking a node the orchestrator removed; it is forgotten.
    pub fn remove_node(&self, name: &str) {
        let removed = self.nodes.write().remove(name).is_some();
        if removed {
            self.orch.set_node_down(name, None);
            self.orch.set_node_forwarded_port(name, None);
            self.orch
                .metrics
                .vpn_node_healthy
                .remove(&crate::metrics::NodeLabel {
                    node: name.to_owned(),
                });
            self.orch.notify_changed();
        }
    }

    /// A node's health and since when, with its last error.
    pub fn node_health(
        &self,
        name: &str,
    ) -> Option<(HealthStatus, Option<Timestamp>, Option<String>)> {
        self.nodes
            .read()
            .get(name)
            .map(|n| (n.status, n.since, n.last_error.clone()))
    }

    /// Finds the node's container and asks its control server.
    async fn probe(
        &self,
        name: &str,
    ) -> (
        Option<String>,
        Option<String>,
        Option<String>,
        Result<NodeReport, String>,
    ) {
        let info = match self.runtime.inspect(name).await {
            Ok(Some(info)) => info,
            Ok(None) => {
                return (
                    None,
                    None,
                    None,
                    Err(format!("container '{name}' not found")),
                )
            }
            Err(e) => return (None, None, None, Err(e.to_string())),
        };
        let id = Some(info.id.clone());
        let docker_health = info.health.clone();
        if !info.status.is_alive() {
            return (
                id,
                None,
                docker_health,
                Err(format!("container is {}", info.status)),
            );
        }
        let port = self.settings.control_port;
        let address = match self
            .settings
            .network
            .as_ref()
            .and_then(|n| info.networks.get(n))
        {
            Some(ip) if !ip.is_empty() => Some(format!("{ip}:{port}")),
            _ => info.host_port(port).map(|p| format!("127.0.0.1:{p}")),
        };
        let Some(address) = address else {
            return (
                id,
                None,
                docker_health,
                Err(format!(
                    "its control server port {port} is neither published nor reachable on DOCKER_NETWORK"
                )),
            );
        };
        let url = format!("http://{address}");
        let result = self
            .client
            .check(&url, self.settings.timeout)
            .await
            .map_err(|e: ControlError| e.to_string());
        // The container's own health check speaks for the tunnel too.
        let result = match (&result, docker_health.as_deref()) {
            (Ok(_), Some("unhealthy")) => {
                Err("the container's health check says unhealthy".to_owned())
            }
            _ => result,
        };
        (id, Some(url), docker_health, result)
    }

    /// Checks one node now and records the verdict.
    pub async fn check(&self, name: &str) {
        let started = Instant::now();
        let (container_id, control_url, docker_health, result) = self.probe(name).await;
        let check = NodeCheck {
            ts: Timestamp::now(),
            ok: result.is_ok(),
            latency_ms: millis(started.elapsed()),
            error: result.as_ref().err().cloned(),
        };
        let mut port_changed = None;
        let (transition, shown_changed) = {
            let mut nodes = self.nodes.write();
            let Some(node) = nodes.get_mut(name) else {
                return;
            };
            let shown_before = Shown::of(node);
            node.container_id = container_id;
            node.control_url = control_url;
            node.docker_health = docker_health;
            node.last_check = Some(check.ts);
            let before = node.status;
            let after = match &result {
                Ok(report) => {
                    if let Some(old) = node.report.forwarded_port {
                        if report.forwarded_port != Some(old) {
                            port_changed = Some(old);
                        }
                    }
                    node.report = report.clone();
                    node.consecutive_failures = 0;
                    node.last_error = None;
                    HealthStatus::Healthy
                }
                Err(error) => {
                    node.consecutive_failures = node.consecutive_failures.saturating_add(1);
                    node.last_error = Some(error.clone());
                    if node.consecutive_failures >= self.settings.failure_threshold {
                        HealthStatus::Unhealthy
                    } else {
                        before
                    }
                }
            };
            push_bounded(&mut node.checks, check, self.settings.history_max);
            let transition = (after != before).then(|| {
                node.status = after;
                node.since = Some(Timestamp::now());
                let reason = match &node.last_error {
                    None => "tunnel running".to_owned(),
                    Some(error) => format!(
                        "{} failed check(s) in a row (threshold {}); last: {error}",
                        node.consecutive_failures, self.settings.failure_threshold
                    ),
                };
                let transition = HealthTransition {
                    ts: Timestamp::now(),
                    from: before,
                    to: after,
                    reason,
                };
                push_bounded(
                    &mut node.transitions,
                    transition.clone(),
                    self.settings.history_max,
                );
                transition
            });
            (transition, Shown::of(node) != shown_before)
        };
        // Outside the node lock: the registry's lock is never taken under it.
        if let Ok(report) = &result {
            self.orch
                .set_node_forwarded_port(name, report.forwarded_port);
        }
        // The dashboard shows nodes; their checks happen outside the
        // registry, so its event stream must be told. Not on every check:
        // only when something it shows changed.
        if shown_changed {
            self.orch.notify_changed();
        }
        self.orch
            .metrics
            .vpn_node_healthy
            .get_or_create(&crate::metrics::NodeLabel {
                node: name.to_owned(),
            })
            .set(i64::from(result.is_ok()));
        if let Some(old) = port_changed {
            self.forwarded_port_changed(name, old);
        }
        if let Some(t) = transition {
            tracing::info!(node = %name, from = %t.from, to = %t.to, reason = %t.reason, "VPN node {name} is now {}: {}", t.to, t.reason);
            match t.to {
                HealthStatus::Unhealthy => {
                    self.orch
                        .set_node_down(name, Some(format!("VPN node {name}: {}", t.reason)));
                }
                HealthStatus::Healthy => {
                    self.orch.set_node_down(name, None);
                    let engines = self.engines_behind(name);
                    match self
                        .pool()
                        .filter(|_| self.settings.restart_engines_on_reconnect)
                    {
                        // The Python orchestrator's behaviour: engines that
                        // lived through a reconnect are started afresh.
                        Some(pool) => {
                            let reason = format!("VPN node {name} reconnected: engine restarted (VPN_RESTART_ENGINES_ON_RECONNECT)");
                            for id in engines {
                                tokio::spawn(recreate(pool.clone(), id, reason.clone()));
                            }
                        }
                        // Left alone while the node was down: check them now
                        // so that they rejoin at once.
                        None => {
                            for id in engines {
                                let orch = self.orch.clone();
                                tokio::spawn(async move {
                                    orch.check_engine(&id, CheckSource::Probe).await;
                                });
                            }
                        }
                    }
                }
                HealthStatus::Unknown => {}
            }
        }
    }

    /// The node's provider forwards another port now: the engine that had
    /// the old one as its P2P port is drained (its streams move, it leaves
    /// the selection) and recreated, so that the new engine gets the new port.
    fn forwarded_port_changed(&self, node: &str, old: u16) {
        let Some(pool) = self.pool() else {
            return;
        };
        let old_text = old.to_string();
        let holders: Vec<String> = self
            .engines_behind(node)
            .into_iter()
            .filter(|id| {
                self.orch.read(|r| {
                    r.engine(id)
                        .and_then(|e| e.labels.get(P2P_PORT_LABEL))
                        .is_some_and(|p| *p == old_text)
                })
            })
            .collect();
        for id in holders {
            let reason =
                format!("VPN node {node} forwards another port than {old}: engine replaced");
            tracing::info!(engine = %id, node, old_port = old, "the forwarded port changed; replacing the engine that had it");
            self.orch.set_engine_draining(&id, Some(reason.clone()));
            tokio::spawn(recreate(pool.clone(), id, reason));
        }
    }

    fn engines_behind(&self, node: &str) -> Vec<String> {
        self.orch.read(|r| engines_behind_in(r, node))
    }

    /// Checks every node, all at once.
    pub async fn check_all(&self) {
        let names: Vec<String> = self.nodes.read().keys().cloned().collect();
        stream::iter(names)
            .for_each_concurrent(None, |name| async move { self.check(&name).await })
            .await;
    }

    /// The checking loop, every `VPN_CHECK_INTERVAL_S`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.enabled() {
            return;
        }
        tracing::info!(nodes = ?self.settings.nodes, on_demand = self.settings.on_demand, interval_s = self.settings.interval.as_secs_f64(), "VPN monitor started");
        let mut ticker = tokio::time::interval(self.settings.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.check_all() => {}
            }
        }
    }

    /// Every node without its histories, for the dashboard's snapshot. Its
    /// `engines` are left empty: the caller fills them from the registry it
    /// holds (see [`engines_behind_in`]), so that they agree with the rest of
    /// its snapshot. Empty when no node is configured.
    pub fn summaries(&self) -> Vec<NodeSummary> {
        self.nodes
            .read()
            .iter()
            .map(|(name, node)| summary(name, node))
            .collect()
    }

    /// Every node, for `GET /vpn/nodes`.
    pub fn nodes(&self) -> Vec<NodeView> {
        let views: Vec<NodeView> = self
            .nodes
            .read()
            .iter()
            .map(|(name, node)| NodeView {
                summary: summary(name, node),
                container_id: node.container_id.clone(),
                control_url: node.control_url.clone(),
                transitions: node.transitions.iter().rev().cloned().collect(),
                checks: node.checks.iter().rev().cloned().collect(),
            })
            .collect();
        // The engines come from the registry, read after the node lock is gone.
        views
            .into_iter()
            .map(|mut view| {
                view.summary.engines = self.engines_behind(&view.summary.name);
                view
            })
            .collect()
    }

    /// The first node, in the Python orchestrator's shape.
    pub fn status(&self) -> VpnStatus {
        // The first static node, else the first node created on demand.
        let first = self
            .settings
            .nodes
            .first()
            .cloned()
            .or_else(|| self.nodes.read().keys().next().cloned());
        let Some(name) = first.as_ref() else {
            // On demand without a node yet: enabled, nothing running.
            return VpnStatus {
                enabled: self.enabled(),
                status: if self.enabled() {
                    "unknown"
                } else {
                    "disabled"
                }
                .into(),
                container_name: None,
                health: None,
                forwarded_port: None,
                last_check: None,
                public_ip: None,
            };
        };
        let nodes = self.nodes.read();
        let node = nodes.get(name).cloned().unwrap_or_default();
        VpnStatus {
            enabled: self.enabled(),
            status: match node.status {
                HealthStatus::Healthy => "running",
                HealthStatus::Unhealthy => "down",
                HealthStatus::Unknown => "unknown",
            }
            .into(),
            container_name: Some(name.clone()),
            health: Some(node.status),
            forwarded_port: node.report.forwarded_port,
            last_check: node.last_check,
            public_ip: node.report.public_ip,
        }
    }
}

/// A node's summary; its `engines` are filled in by the caller, from the
/// registry (never read under the node lock).
fn summary(name: &str, node: &Node) -> NodeSummary {
    NodeSummary {
        name: name.to_owned(),
        kind: node.kind,
        credential: node.credential.clone(),
        health_status: node.status,
        health_since: node.since,
        last_health_check: node.last_check,
        consecutive_failures: node.consecutive_failures,
        last_health_error: node.last_error.clone(),
        docker_health: node.docker_health.clone(),
        public_ip: node.report.public_ip.clone(),
        country: node.report.country.clone(),
        forwarded_port: node.report.forwarded_port,
        engines: Vec::new(),
        last_transition: node.transitions.back().cloned(),
    }
}

/// How long a drained engine's streams get to move before it is removed.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// Waits until the engine carries no stream (the proxy moves its streams once
/// it is drained or its node is down; others end), bounded by [`DRAIN_LIMIT`],
/// then removes it and starts a new engine in its place.
/// Boxed: a recreation may create a VPN node, whose wait checks the node,
/// whose check may start recreations (the compiler cannot see through that
/// cycle otherwise).
pub(crate) fn recreate(pool: Arc<Pool>, id: String, reason: String) -> BoxFuture<'static, ()> {
    Box::pin(async move {
        let orch = pool.orchestrator().clone();
        orch.set_engine_draining(&id, Some(reason.clone()));
        let until = Instant::now() + DRAIN_LIMIT;
        while Instant::now() < until {
            let busy = orch.read(|r| r.engine(&id).is_some() && r.active_streams_of(&id) > 0);
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if let Err(e) = pool.remove(&id, &reason).await {
            tracing::warn!(engine = %id, error = %e, "could not remove the engine to recreate");
            return;
        }
        if let Err(e) = pool.provision_engine(Default::default()).await {
            tracing::warn!(engine = %id, error = %e, "could not start the engine's replacement");
        }
    })
}
