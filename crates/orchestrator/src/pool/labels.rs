//! The labels we put on the containers we run, and what we read back from
//! them after a restart (adoption).

use std::collections::BTreeMap;

use crate::domain::{Engine, EngineHealth, EngineUsage, RuntimeKind};
use crate::ports::EnginePortSet;
use crate::runtime::ContainerInfo;
use crate::time::Timestamp;

pub use crate::domain::labels::HOST_HTTP_PORT_LABEL;
pub const HTTP_PORT_LABEL: &str = "acestream.http_port";
pub const HTTPS_PORT_LABEL: &str = "acestream.https_port";
pub const HOST_HTTPS_PORT_LABEL: &str = "host.https_port";
/// On the one engine of a VPN node that got the node's forwarded port as its
/// P2P port (`P2P_PORT`).
pub const P2P_PORT_LABEL: &str = "acestream.p2p_port";

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
pub fn ports_from_published(info: &ContainerInfo) -> Option<EnginePortSet> {
    let mapping = info.ports.iter().find(|p| p.host_port.is_some())?;
    Some(EnginePortSet {
        host_http: mapping.host_port?,
        container_http: mapping.container_port,
        container_https: 0,
        host_https: None,
    })
}

pub fn engine_from(info: &ContainerInfo, host: String, port: u16) -> Engine {
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
