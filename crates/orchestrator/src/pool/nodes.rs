//! VPN nodes on demand (`VPN_CONFIGS_DIR`): Gluetun containers the
//! orchestrator creates itself, one WireGuard credential leased to each.
//!
//! - **Grow.** When no node has room for an engine, a node is created with a
//!   free credential (`GLUETUN_IMAGE`, `NET_ADMIN`, the TUN device, its
//!   control port and a block of engine ports published from
//!   `PORT_RANGE_HOST`), and engines are placed behind it once its tunnel
//!   runs (within `VPN_STARTUP_TIMEOUT_S`).
//! - **Leases.** A node carries its credential's name and this orchestrator's
//!   `CONTAINER_LABEL` in labels of its own ([`NODE_OWNER_LABEL`],
//!   [`NODE_CREDENTIAL_LABEL`]), never the engines' ownership label, so the
//!   engine resync never takes a node for an engine. After a restart the
//!   nodes are adopted with their leases from these labels.
//! - **Idle.** A node without engines for `VPN_IDLE_GRACE_PERIOD_S` is
//!   removed and its credential freed.
//! - **Down.** A node whose tunnel stays down past
//!   `VPN_UNHEALTHY_GRACE_PERIOD_S` is retired: its engines (already out of
//!   the selection, their streams moved by the proxy) are recreated behind
//!   healthy nodes, a new node on another credential if need be, and the
//!   node is removed. Its credential is not leased again for
//!   `VPN_CREDENTIAL_COOLDOWN_S`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{Pool, ProvisionError};
use crate::domain::HealthStatus;
use crate::ports::host_port_is_free;
use crate::runtime::{ContainerInfo, ContainerSpec, Label, PortMapping, RuntimeError};
use crate::time::Timestamp;
use crate::vpn::credentials::{self, Credential, CredentialError};

/// On a node we created: this orchestrator's `CONTAINER_LABEL`, as `key=value`.
pub const NODE_OWNER_LABEL: &str = "acestream.gluetun.owner";
/// On a node we created: the credential it holds (its lease).
pub const NODE_CREDENTIAL_LABEL: &str = "acestream.gluetun.credential";

/// How often the wait for a new node's tunnel asks, and logs progress.
const STARTUP_POLL: Duration = Duration::from_millis(500);
const STARTUP_LOG_EVERY: Duration = Duration::from_secs(5);

/// Settings of the nodes created on demand.
#[derive(Debug, Clone)]
pub struct OnDemandSettings {
    pub configs_dir: PathBuf,
    pub image: String,
    /// Host device given at the same path; `None`: none.
    pub tun_device: Option<String>,
    /// The control server's key (`HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE`).
    pub api_key: String,
    pub control_port: u16,
    pub unhealthy_grace: Duration,
    pub cooldown: Duration,
    pub idle_grace: Duration,
    pub startup_timeout: Duration,
}

/// A node we run, with its lease.
#[derive(Debug, Clone)]
struct Lease {
    credential: String,
    /// Its tunnel ran once: engines may go behind it.
    ready: bool,
    /// Being removed: no engine goes behind it.
    retiring: bool,
    /// Its tunnel never ran: to be removed (again, if a removal failed).
    failed: bool,
    /// Since when it has had no engine.
    empty_since: Option<Instant>,
    /// Host ports and in-container ports it publishes (the control port's
    /// host port included), given back when it goes.
    host_ports: Vec<u16>,
    container_ports: Vec<u16>,
}

#[derive(Debug, Default)]
pub(super) struct Fleet {
    /// By node container name.
    leases: BTreeMap<String, Lease>,
    /// Credentials not leased again before then, and why.
    cooling: BTreeMap<String, (Instant, Timestamp, String)>,
    credentials: credentials::Credentials,
    /// Problems already logged, so that a broken file is logged once.
    logged: Vec<CredentialError>,
}

/// A credential as `GET /vpn/credentials` shows it (never its keys but the
/// server's public one).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    /// The file's name without `.conf`.
    pub name: String,
    pub file: String,
    /// `free`, `leased`, `cooling_down` (its node failed) or `invalid`.
    pub status: String,
    /// The node holding it, when leased.
    pub node: Option<String>,
    /// The server's address and public key, when the file parses.
    pub endpoint: Option<String>,
    pub public_key: Option<String>,
    /// Until when it is not leased again, and why.
    pub cooling_until: Option<Timestamp>,
    /// Why the file cannot be used (file, line, field), or why it cools down.
    pub error: Option<String>,
}

/// A Docker name from a credential's name.
fn node_name(credential: &str) -> String {
    let clean: String = credential
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("gluetun-{clean}")
}

impl Pool {
    fn on_demand(&self) -> Option<&OnDemandSettings> {
        self.settings.on_demand.as_ref()
    }

    fn owner_label(&self) -> Label {
        Label {
            key: NODE_OWNER_LABEL.into(),
            value: self.settings.label.to_string(),
        }
    }

    /// The on-demand nodes engines may go behind now.
    pub(super) fn ready_nodes(&self) -> Vec<String> {
        self.fleet
            .lock()
            .leases
            .iter()
            .filter(|(_, l)| l.ready && !l.retiring)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Reads `VPN_CONFIGS_DIR` again; a newly broken file is logged once,
    /// naming the file, line and field.
    fn reload_credentials(&self) {
        let Some(settings) = self.on_demand() else {
            return;
        };
        let found = match credentials::load_dir(&settings.configs_dir) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(dir = %settings.configs_dir.display(), error = %e, "cannot read VPN_CONFIGS_DIR");
                return;
            }
        };
        let mut fleet = self.fleet.lock();
        for problem in &found.broken {
            if !fleet.logged.contains(problem) {
                tracing::warn!(file = %problem.file, line = ?problem.line, "VPN credential not usable: {problem}");
            }
        }
        fleet.logged = found.broken.clone();
        fleet.credentials = found;
    }

    /// Every credential and what it is doing, as the directory was last read
    /// (at start, at each upkeep and before a node is created).
    pub fn credentials(&self) -> Vec<CredentialView> {
        if self.on_demand().is_none() {
            return Vec::new();
        }
        let fleet = self.fleet.lock();
        let now = Instant::now();
        let mut views: Vec<CredentialView> = fleet
            .credentials
            .usable
            .iter()
            .map(|c| {
                let node = fleet
                    .leases
                    .iter()
                    .find(|(_, l)| l.credential == c.name)
                    .map(|(n, _)| n.clone());
                let cooling = fleet
                    .cooling
                    .get(&c.name)
                    .filter(|(until, ..)| *until > now);
                CredentialView {
                    name: c.name.clone(),
                    file: format!("{}.conf", c.name),
                    status: match (&node, cooling) {
                        (Some(_), _) => "leased",
                        (None, Some(_)) => "cooling_down",
                        (None, None) => "free",
                    }
                    .into(),
                    node,
                    endpoint: Some(c.endpoint.to_string()),
                    public_key: Some(c.public_key.clone()),
                    cooling_until: cooling.map(|(_, at, _)| *at),
                    error: cooling.map(|(.., why)| why.clone()),
                }
            })
            .collect();
        views.extend(fleet.credentials.broken.iter().map(|e| CredentialView {
            name: e.file.strip_suffix(".conf").unwrap_or(&e.file).to_owned(),
            file: e.file.clone(),
            status: "invalid".into(),
            node: None,
            endpoint: None,
            public_key: None,
            cooling_until: None,
            error: Some(e.to_string()),
        }));
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// How many credentials are in each status (`free`, `leased`,
    /// `cooling_down`, `invalid`); `None` without `VPN_CONFIGS_DIR`.
    pub fn credential_counts(&self) -> Option<[(&'static str, i64); 4]> {
        self.on_demand()?;
        let mut counts = [
            ("free", 0),
            ("leased", 0),
            ("cooling_down", 0),
            ("invalid", 0),
        ];
        for view in self.credentials() {
            if let Some(count) = counts.iter_mut().find(|c| c.0 == view.status) {
                count.1 += 1;
            }
        }
        Some(counts)
    }

    /// Adopts the nodes this orchestrator created before a restart, with
    /// their leases; called once at start, before the engines are adopted.
    pub async fn adopt_nodes(&self) -> Result<(), RuntimeError> {
        let Some(settings) = self.on_demand() else {
            return Ok(());
        };
        self.reload_credentials();
        let found = self.runtime.list_managed(&self.owner_label()).await?;
        for info in found {
            let Some(credential) = info.labels.get(NODE_CREDENTIAL_LABEL).cloned() else {
                continue;
            };
            let (host_ports, container_ports) = self.reserve_node_ports(&info, settings);
            {
                let mut fleet = self.fleet.lock();
                if fleet.leases.values().any(|l| l.credential == credential) {
                    tracing::warn!(node = %info.name, credential, "two nodes hold one credential; both are kept, remove one by hand");
                }
                if !fleet
                    .credentials
                    .usable
                    .iter()
                    .any(|c| c.name == credential)
                {
                    tracing::warn!(node = %info.name, credential, "the credential of this node is no longer a usable file in VPN_CONFIGS_DIR; the node is kept until it is idle");
                }
                fleet.leases.insert(
                    info.name.clone(),
                    Lease {
                        credential: credential.clone(),
                        ready: true,
                        retiring: false,
                        failed: false,
                        empty_since: None,
                        host_ports,
                        container_ports,
                    },
                );
            }
            if let Some(vpn) = self.vpn.get() {
                vpn.add_node(&info.name, &credential);
            }
            tracing::info!(node = %info.name, credential, status = %info.status, "adopted a VPN node with its lease");
        }
        Ok(())
    }

    fn reserve_node_ports(
        &self,
        info: &ContainerInfo,
        settings: &OnDemandSettings,
    ) -> (Vec<u16>, Vec<u16>) {
        let mut host = Vec::new();
        let mut inside = Vec::new();
        for port in &info.ports {
            if let Some(h) = port.host_port {
                self.ports.host.reserve(h);
                host.push(h);
            }
            if port.container_port != settings.control_port {
                self.ports.http.reserve(port.container_port);
                inside.push(port.container_port);
            }
        }
        (host, inside)
    }

    fn release_node_ports(&self, lease: &Lease) {
        for port in &lease.host_ports {
            self.ports.host.release(*port);
        }
        for port in &lease.container_ports {
            self.ports.http.release(*port);
        }
    }

    /// How many nodes have been added so far: a provision that saw no room
    /// passes what it read, and a second grow for the same need is skipped.
    pub(super) fn node_generation(&self) -> u64 {
        self.node_generation.load(Ordering::SeqCst)
    }

    /// Creates a node with a free credential and waits until its tunnel
    /// runs. Nothing is created when another node was added since `seen`
    /// (the caller places again).
    pub(super) async fn grow_nodes(&self, seen: u64) -> Result<(), ProvisionError> {
        let Some(settings) = self.on_demand() else {
            return Err(ProvisionError::NoVpnNode(
                "no node has room and none is created on demand (VPN_CONFIGS_DIR is unset)".into(),
            ));
        };
        let _one_at_a_time = self.grow_lock.lock().await;
        if self.node_generation() != seen {
            return Ok(());
        }
        self.reload_credentials();
        let mut skipped = Vec::new();
        loop {
            let credential = self.free_credential(&skipped)?;
            match self.create_node(settings, &credential).await {
                Ok(name) => {
                    self.wait_node_ready(settings, &name, &credential).await?;
                    self.node_generation.fetch_add(1, Ordering::SeqCst);
                    return Ok(());
                }
                // Someone else's container holds the name (another
                // orchestrator on the same files): try another credential.
                Err(ProvisionError::Runtime(RuntimeError::NameConflict(name))) => {
                    tracing::warn!(credential = %credential.name, container = %name, "a container not ours holds this credential's node name; trying another credential");
                    skipped.push(credential.name.clone());
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn free_credential(&self, skipped: &[String]) -> Result<Credential, ProvisionError> {
        let fleet = self.fleet.lock();
        let now = Instant::now();
        let cooling = |name: &str| {
            fleet
                .cooling
                .get(name)
                .is_some_and(|(until, ..)| *until > now)
        };
        let free = fleet.credentials.usable.iter().find(|c| {
            !skipped.contains(&c.name)
                && !fleet.leases.values().any(|l| l.credential == c.name)
                && !cooling(&c.name)
        });
        if let Some(credential) = free {
            return Ok(credential.clone());
        }
        let total = fleet.credentials.usable.len();
        let leased = fleet.leases.len();
        let cooling = fleet
            .cooling
            .values()
            .filter(|(until, ..)| *until > now)
            .count();
        Err(ProvisionError::NoVpnNode(format!(
            "no free VPN credential in VPN_CONFIGS_DIR: {total} usable, {leased} leased to nodes, {cooling} cooling down after a failure, {} not usable{}",
            fleet.credentials.broken.len(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(", {} held by containers not ours", skipped.len())
            }
        )))
    }

    /// Creates the node container for `credential` and leases it.
    async fn create_node(
        &self,
        settings: &OnDemandSettings,
        credential: &Credential,
    ) -> Result<String, ProvisionError> {
        let vpn = self.settings.vpn.as_ref();
        let slots = vpn.map_or(1, |v| v.max_per_node.max(1));
        // The control port and one port per engine, from the pool's ranges.
        let mut host_ports = Vec::new();
        let mut container_ports = Vec::new();
        let release = |host: &[u16], inside: &[u16]| {
            host.iter().for_each(|p| {
                self.ports.host.release(*p);
            });
            inside.iter().for_each(|p| {
                self.ports.http.release(*p);
            });
        };
        for _ in 0..=slots {
            match self.ports.host.allocate_where(host_port_is_free) {
                Ok(port) => host_ports.push(port),
                Err(e) => {
                    release(&host_ports, &container_ports);
                    return Err(e.into());
                }
            }
        }
        for _ in 0..slots {
            match self.ports.http.allocate() {
                Ok(port) => container_ports.push(port),
                Err(e) => {
                    release(&host_ports, &container_ports);
                    return Err(e.into());
                }
            }
        }
        let mut published = vec![PortMapping::published(settings.control_port, host_ports[0])];
        published.extend(
            container_ports
                .iter()
                .zip(&host_ports[1..])
                .map(|(inside, host)| PortMapping::published(*inside, *host)),
        );
        let mut env: Vec<(String, String)> = credential.gluetun_env().to_vec();
        env.push((
            "HTTP_CONTROL_SERVER_ADDRESS".into(),
            format!(":{}", settings.control_port),
        ));
        env.push((
            "HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE".into(),
            serde_json::json!({ "name": "orchestrator", "auth": "apikey", "apikey": settings.api_key })
                .to_string(),
        ));
        let name = node_name(&credential.name);
        let spec = ContainerSpec {
            name: name.clone(),
            image: settings.image.clone(),
            env,
            labels: BTreeMap::from([
                (NODE_OWNER_LABEL.into(), self.settings.label.to_string()),
                (NODE_CREDENTIAL_LABEL.into(), credential.name.clone()),
            ]),
            ports: published,
            network: self.settings.network.clone(),
            cap_add: vec!["NET_ADMIN".into()],
            devices: settings.tun_device.iter().cloned().collect(),
            // A Gluetun node is small; the engines' caps are for engines.
            ..Default::default()
        };
        // Leased before it exists, so that no other grow takes the credential.
        self.fleet.lock().leases.insert(
            name.clone(),
            Lease {
                credential: credential.name.clone(),
                ready: false,
                retiring: false,
                failed: false,
                empty_since: None,
                host_ports: host_ports.clone(),
                container_ports: container_ports.clone(),
            },
        );
        tracing::info!(node = %name, credential = %credential.name, endpoint = %credential.endpoint, control_port = host_ports[0], engine_ports = ?&host_ports[1..], "creating a VPN node for engines");
        match self.runtime.create_and_start(spec).await {
            Ok(info) => {
                if let Some(vpn) = self.vpn.get() {
                    vpn.add_node(&info.name, &credential.name);
                }
                Ok(info.name)
            }
            Err(e) => {
                self.fleet.lock().leases.remove(&name);
                release(&host_ports, &container_ports);
                Err(match e {
                    RuntimeError::ImageNotFound(image) => ProvisionError::NoVpnNode(format!(
                        "GLUETUN_IMAGE '{image}' is not available on the Docker host; build or load it first (nothing is pulled)"
                    )),
                    RuntimeError::NameConflict(n) => {
                        ProvisionError::Runtime(RuntimeError::NameConflict(n))
                    }
                    other => ProvisionError::NoVpnNode(format!(
                        "could not create VPN node {name} (credential {}): {other}",
                        credential.name
                    )),
                })
            }
        }
    }

    /// Waits until the new node's tunnel runs; one that does not within
    /// `VPN_STARTUP_TIMEOUT_S` is removed and its credential cools down.
    async fn wait_node_ready(
        &self,
        settings: &OnDemandSettings,
        name: &str,
        credential: &Credential,
    ) -> Result<(), ProvisionError> {
        let Some(vpn) = self.vpn.get().cloned() else {
            return Ok(());
        };
        let started = Instant::now();
        let deadline = started + settings.startup_timeout;
        // After the first check, then every few seconds.
        let mut next_log = started;
        let mut last_error = String::from("not checked yet");
        while Instant::now() < deadline {
            vpn.check(name).await;
            match vpn.node_health(name) {
                Some((HealthStatus::Healthy, ..)) => {
                    if let Some(lease) = self.fleet.lock().leases.get_mut(name) {
                        lease.ready = true;
                    }
                    tracing::info!(node = name, credential = %credential.name, after_s = started.elapsed().as_secs_f64(), "VPN node is up; engines go behind it");
                    return Ok(());
                }
                Some((_, _, error)) => {
                    last_error = error.unwrap_or_else(|| "not running yet".into());
                    // Gluetun exits at once when its settings do not hold
                    // (a key the provider's format refuses, …): no use waiting.
                    if last_error.starts_with("container is exited")
                        || last_error.starts_with("container is dead")
                    {
                        break;
                    }
                }
                None => break,
            }
            if Instant::now() >= next_log {
                next_log += STARTUP_LOG_EVERY;
                tracing::info!(node = name, credential = %credential.name, waited_s = started.elapsed().as_secs_f64().round(), timeout_s = settings.startup_timeout.as_secs_f64(), last = %last_error, "waiting for the new VPN node's tunnel");
            }
            tokio::time::sleep(STARTUP_POLL).await;
        }
        let why = format!(
            "VPN node {name} (credential {}) did not report its tunnel running after {:.0}s (VPN_STARTUP_TIMEOUT_S {:.0}; last: {last_error})",
            credential.name,
            started.elapsed().as_secs_f64(),
            settings.startup_timeout.as_secs_f64()
        );
        tracing::warn!(node = name, credential = %credential.name, "{why}; removing it, the credential is not used for {:.0}s", settings.cooldown.as_secs_f64());
        self.cool_down(&credential.name, &why);
        if let Some(lease) = self.fleet.lock().leases.get_mut(name) {
            lease.failed = true;
            lease.retiring = true;
        }
        // Removed in the background: the answer does not wait for Docker.
        match self.me.get().and_then(std::sync::Weak::upgrade) {
            Some(pool) => {
                let (name, why) = (name.to_owned(), why.clone());
                tokio::spawn(async move { pool.remove_node(&name, &why).await });
            }
            None => self.remove_node(name, &why).await,
        }
        Err(ProvisionError::NoVpnNode(why))
    }

    fn cool_down(&self, credential: &str, why: &str) {
        let Some(settings) = self.on_demand() else {
            return;
        };
        let until = Instant::now() + settings.cooldown;
        let shown = Timestamp::now().plus_seconds(settings.cooldown.as_secs_f64());
        self.fleet
            .lock()
            .cooling
            .insert(credential.to_owned(), (until, shown, why.to_owned()));
    }

    /// Removes a node container and frees its lease and ports.
    async fn remove_node(&self, name: &str, reason: &str) {
        match self.runtime.stop_and_remove(name).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(node = name, error = %e, "could not remove the VPN node; will try again");
                if let Some(lease) = self.fleet.lock().leases.get_mut(name) {
                    lease.retiring = false;
                }
                return;
            }
        }
        let lease = self.fleet.lock().leases.remove(name);
        if let Some(lease) = &lease {
            self.release_node_ports(lease);
        }
        if let Some(vpn) = self.vpn.get() {
            vpn.remove_node(name);
        }
        tracing::info!(node = name, credential = ?lease.map(|l| l.credential), reason, "VPN node removed; its credential is free");
    }

    /// The nodes' upkeep, from the reconciler: idle nodes go, nodes down past
    /// the grace period are retired.
    pub(super) async fn maintain_nodes(self: &Arc<Self>) {
        let Some(settings) = self.on_demand().cloned() else {
            return;
        };
        self.reload_credentials();
        let Some(vpn) = self.vpn.get().cloned() else {
            return;
        };
        let now = Instant::now();
        let placing = self.placing.lock().clone();
        let counts = self.orch.read(|r| {
            let mut counts = BTreeMap::<String, usize>::new();
            for id in r.all_engine_ids() {
                if let Some(node) = r.engine(&id).and_then(|e| e.vpn_node()) {
                    *counts.entry(node.to_owned()).or_default() += 1;
                }
            }
            counts
        });
        let mut idle = Vec::new();
        let mut down = Vec::new();
        {
            let mut fleet = self.fleet.lock();
            fleet.cooling.retain(|_, (until, ..)| *until > now);
            for (name, lease) in fleet.leases.iter_mut() {
                // A node that never ran, whose removal failed: again.
                if lease.failed && !lease.retiring {
                    lease.retiring = true;
                    idle.push((name.clone(), "its tunnel never ran".to_owned()));
                    continue;
                }
                if !lease.ready || lease.retiring {
                    continue;
                }
                let engines = counts.get(name).copied().unwrap_or(0)
                    + placing.iter().filter(|(n, _)| n == name).count();
                if let Some((HealthStatus::Unhealthy, Some(since), error)) = vpn.node_health(name) {
                    let down_for = since.seconds_until(Timestamp::now());
                    if down_for >= settings.unhealthy_grace.as_secs_f64() {
                        lease.retiring = true;
                        down.push((name.clone(), lease.credential.clone(), down_for, error));
                        continue;
                    }
                }
                if engines > 0 {
                    lease.empty_since = None;
                    continue;
                }
                let since = *lease.empty_since.get_or_insert(now);
                if now.duration_since(since) >= settings.idle_grace {
                    lease.retiring = true;
                    idle.push((
                        name.clone(),
                        format!(
                            "no engine behind it for {:.0}s",
                            settings.idle_grace.as_secs_f64()
                        ),
                    ));
                }
            }
        }
        for (name, reason) in idle {
            let pool = self.clone();
            tokio::spawn(async move { pool.remove_node(&name, &reason).await });
        }
        for (name, credential, down_for, error) in down {
            tokio::spawn(self.clone().retire_node(name, credential, down_for, error));
        }
    }

    /// A node down past the grace period: its credential cools down, its
    /// engines are recreated behind healthy nodes (a new node on another
    /// credential when none has room), then it is removed.
    async fn retire_node(
        self: Arc<Self>,
        name: String,
        credential: String,
        down_for: f64,
        error: Option<String>,
    ) {
        let cooldown_s = self.on_demand().map_or(0.0, |s| s.cooldown.as_secs_f64());
        let why = format!(
            "VPN node {name} down for {down_for:.0}s ({})",
            error.as_deref().unwrap_or("unhealthy")
        );
        self.cool_down(&credential, &why);
        let engines = self.orch.read(|r| crate::vpn::engines_behind_in(r, &name));
        tracing::warn!(node = %name, credential, engines = engines.len(), cooldown_s, "{why}: replacing it; its engines are recreated behind healthy nodes and credential {credential} is not leased again for {cooldown_s:.0}s");
        let reason = format!("{why}: engine recreated behind another node");
        let recreations: Vec<_> = engines
            .into_iter()
            .map(|id| tokio::spawn(crate::vpn::recreate(self.clone(), id, reason.clone())))
            .collect();
        for recreation in recreations {
            let _ = recreation.await;
        }
        self.remove_node(&name, &why).await;
    }
}

#[cfg(test)]
mod tests {
    use super::node_name;

    #[test]
    fn node_names_are_docker_names() {
        assert_eq!(node_name("se-1"), "gluetun-se-1");
        assert_eq!(node_name("my vpn#2"), "gluetun-my-vpn-2");
    }
}
