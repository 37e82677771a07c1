//! The VPN nodes the engines run behind: `GET /vpn/status` (the Python
//! orchestrator's shape, for the first node), `GET /vpn/nodes` (all) and
//! `GET /vpn/credentials` (the WireGuard credentials of `VPN_CONFIGS_DIR`).

use axum::extract::State;
use axum::Json;

use super::AppState;
use crate::pool::CredentialView;
use crate::vpn::{NodeView, VpnStatus};

#[utoipa::path(
    get, path = "/vpn/status", tag = "vpn", operation_id = "vpnStatus",
    summary = "The VPN, as the Python orchestrator answered",
    description = "The first Gluetun node (GLUETUN_CONTAINER_NAME, else the first of GLUETUN_CONTAINERS): `enabled: false` when none is configured.",
    responses((status = 200, description = "The first node's state.", body = VpnStatus)),
)]
pub async fn status(State(state): State<AppState>) -> Json<VpnStatus> {
    Json(state.vpn.status())
}

#[utoipa::path(
    get, path = "/vpn/nodes", tag = "vpn", operation_id = "vpnNodes",
    summary = "Every VPN node",
    description = "Each Gluetun node with its health, health history, public IP and country, forwarded port, the engines behind it (label `acestream.vpn_node`), whether it is `static` (configured) or `on_demand` (created by the orchestrator) and, for the latter, the credential it leases.",
    responses((status = 200, description = "The nodes, in configuration order.", body = [NodeView])),
)]
pub async fn nodes(State(state): State<AppState>) -> Json<Vec<NodeView>> {
    Json(state.vpn.nodes())
}

#[utoipa::path(
    get, path = "/vpn/credentials", tag = "vpn", operation_id = "vpnCredentials",
    summary = "The WireGuard credentials nodes are created with",
    description = "Each `.conf` file of VPN_CONFIGS_DIR, as last read (at start, every MONITOR_INTERVAL_S and before a node is created): `free`, `leased` (with the node holding it), `cooling_down` (its node failed; with until when and why) or `invalid` (with the file, line and field at fault). Never a private or preshared key. Empty without VPN_CONFIGS_DIR.",
    responses((status = 200, description = "The credentials, by name.", body = [CredentialView])),
)]
pub async fn credentials(State(state): State<AppState>) -> Json<Vec<CredentialView>> {
    Json(
        state
            .pool
            .as_ref()
            .map(|pool| pool.credentials())
            .unwrap_or_default(),
    )
}
