//! Placing engines behind VPN nodes: an engine we start while Gluetun nodes
//! are configured runs in a node's network namespace (`network_mode:
//! container:<node>`), so all its traffic goes through the tunnel. It has no
//! ports of its own: it listens on one of the ports the node publishes, and is
//! reached there (on the host, or by the node's name on `DOCKER_NETWORK`).

use std::collections::BTreeSet;

use super::labels::{HTTP_PORT_LABEL, P2P_PORT_LABEL};
use super::{Pool, ProvisionError};
use crate::domain::RuntimeKind;
use crate::ports::EnginePortSet;

/// Where a new engine goes: the node, its ports, and the node's forwarded
/// port when no other engine of that node has it yet.
#[derive(Debug, Clone)]
pub(super) struct Placement {
    pub node: String,
    pub ports: EnginePortSet,
    pub p2p_port: Option<u16>,
}

/// Limits on engines per node.
#[derive(Debug, Clone)]
pub struct VpnPlacement {
    /// The configured nodes, in order.
    pub nodes: Vec<String>,
    /// Nodes are filled up to this many engines before one goes above it.
    pub preferred_per_node: u32,
    /// Never more engines than this behind one node.
    pub max_per_node: u32,
    /// The control server's port in the node: not an engine port.
    pub control_port: u16,
}

/// A node's HTTPS port for an engine listening on `http` (inside the node's
/// namespace, never published): far from the published range, so that two
/// engines of one node never collide.
fn https_port_for(http: u16) -> u16 {
    http.checked_add(10_000).unwrap_or(http - 10_000)
}

/// The guard of a placement under way: its port stays taken until the
/// engine is registered (or its start failed).
pub(super) struct Placing<'a> {
    pool: &'a Pool,
    key: (String, u16),
}

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        self.pool.placing.lock().retain(|k| *k != self.key);
    }
}

impl Pool {
    /// Chooses the healthy node with room and the fewest engines (those under
    /// the preferred count first) and a port it publishes that no engine of
    /// it uses.
    pub(super) async fn place_behind_node(
        &self,
        vpn: &VpnPlacement,
    ) -> Result<(Placement, Placing<'_>), ProvisionError> {
        // Engines behind each node now, and their ports.
        let (counts, used, p2p_taken) = self.orch.read(|r| {
            let mut counts = std::collections::BTreeMap::<String, u32>::new();
            let mut used = BTreeSet::<(String, u16)>::new();
            let mut p2p = BTreeSet::<String>::new();
            for engine in r.engines_run_by(RuntimeKind::Docker) {
                let Some(node) = engine.vpn_node() else {
                    continue;
                };
                *counts.entry(node.to_owned()).or_default() += 1;
                if let Some(port) = engine
                    .labels
                    .get(HTTP_PORT_LABEL)
                    .and_then(|p| p.parse().ok())
                {
                    used.insert((node.to_owned(), port));
                }
                if engine.labels.contains_key(P2P_PORT_LABEL) {
                    p2p.insert(node.to_owned());
                }
            }
            (counts, used, p2p)
        });
        let placing = self.placing.lock().clone();
        let count = |node: &str| {
            counts.get(node).copied().unwrap_or(0)
                + placing.iter().filter(|(n, _)| n == node).count() as u32
        };
        let known: Vec<String> = vpn
            .nodes
            .iter()
            .cloned()
            .chain(self.ready_nodes())
            .collect();
        let mut candidates: Vec<&String> = known
            .iter()
            .filter(|node| !self.orch.read(|r| r.node_down(node)))
            .filter(|node| count(node) < vpn.max_per_node)
            .collect();
        if candidates.is_empty() {
            return Err(ProvisionError::NoVpnNode(format!(
                "no healthy VPN node has room (MAX_ENGINES_PER_VPN {}; nodes: {})",
                vpn.max_per_node,
                if known.is_empty() {
                    "none yet".to_owned()
                } else {
                    known.join(", ")
                }
            )));
        }
        candidates.sort_by_key(|node| (count(node) >= vpn.preferred_per_node, count(node)));
        let mut last_reason = String::new();
        for node in candidates {
            let info = match self.runtime.inspect(node).await {
                Ok(Some(info)) if info.status.is_alive() => info,
                Ok(Some(info)) => {
                    last_reason = format!("node {node} is {}", info.status);
                    continue;
                }
                Ok(None) => {
                    last_reason = format!("node container {node} not found");
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let mut placing = self.placing.lock();
            let free = info
                .ports
                .iter()
                .filter(|p| p.container_port != vpn.control_port)
                .filter_map(|p| Some((p.container_port, p.host_port?)))
                .find(|(port, _)| {
                    !used.contains(&(node.clone(), *port))
                        && !placing.contains(&(node.clone(), *port))
                });
            let Some((container_http, host_http)) = free else {
                last_reason = format!("node {node} publishes no free engine port");
                continue;
            };
            placing.push((node.clone(), container_http));
            drop(placing);
            let p2p_port = if p2p_taken.contains(node.as_str()) {
                None
            } else {
                self.orch.read(|r| r.node_forwarded_port(node))
            };
            let placement = Placement {
                node: node.clone(),
                ports: EnginePortSet {
                    host_http,
                    container_http,
                    container_https: https_port_for(container_http),
                    host_https: None,
                },
                p2p_port,
            };
            let guard = Placing {
                pool: self,
                key: (node.clone(), container_http),
            };
            return Ok((placement, guard));
        }
        Err(ProvisionError::NoVpnNode(last_reason))
    }
}
