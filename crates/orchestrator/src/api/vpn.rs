//! The VPN nodes the engines run behind: `GET /vpn/status` (the Python
//! orchestrator's shape, for the first node) and `GET /vpn/nodes` (all).

use axum::extract::State;
use axum::Json;

use super::AppState;
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
    description = "Each Gluetun node with its health, health history, public IP and country, forwarded port and the engines behind it (label `acestream.vpn_node`).",
    responses((status = 200, description = "The nodes, in configuration order.", body = [NodeView])),
)]
pub async fn nodes(State(state): State<AppState>) -> Json<Vec<NodeView>> {
    Json(state.vpn.nodes())
}
