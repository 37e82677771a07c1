//! VPN nodes: real Gluetun-emulator containers (acestream-gluetun-sim, built
//! by scripts/gluetun-sim-image) watched by the real orchestrator, with
//! emulated engines that sit behind them by label.

mod common;

use std::time::Duration;

use common::{docker, test_video, unique, wait_for, GluetunNode, LabelCleanup, Orch, Sim};
use serde_json::{json, Value};

const KEY: &str = "vpn-test-key";
const CONTENT: &str = "89abcdef0123456789abcdef0123456789abcdef";

async fn node_view(orch: &Orch, name: &str) -> Value {
    let (_, nodes) = orch.get("/vpn/nodes").await;
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("node {name} not in {nodes}"))
}

async fn wait_node(orch: &Orch, name: &str, status: &str) -> Value {
    wait_for(
        &format!("node {name} to be {status}"),
        Duration::from_secs(15),
        || async {
            let node = node_view(orch, name).await;
            (node["health_status"] == status).then_some(node)
        },
    )
    .await
}

async fn register_behind(orch: &Orch, port: u16, node: &str) -> String {
    let (status, engine) = orch
        .post(
            "/engines",
            json!({ "host": "127.0.0.1", "port": port, "labels": { "acestream.vpn_node": node } }),
        )
        .await;
    assert!(status == 201, "{engine}");
    engine["container_id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_tunnel_takes_its_engines_out_and_moves_their_streams() {
    let label = unique("label");
    let _cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let (a, b) = (unique("a"), unique("b"));
    let node_a = GluetunNode::start(&a, &label, KEY, &["GLUETUN_SIM_FORWARDED_PORT=41234"], &[]);
    let node_b = GluetunNode::start(&b, &label, KEY, &["GLUETUN_SIM_COUNTRY=Sweden"], &[]);
    let sim = Sim::start_with(&["--count", "2", "--ts-file", &test_video(4)]).await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = format!("{},{}", node_a.name, node_b.name);
    let orch = Orch::start(
        dir.path(),
        &[
            ("GLUETUN_CONTAINERS", nodes.as_str()),
            ("GLUETUN_API_KEY", KEY),
            ("VPN_CHECK_INTERVAL_S", "1"),
            ("HEALTH_CHECK_INTERVAL_S", "60"),
            ("PROXY_STALL_S", "5"),
            ("PROXY_LINGER_S", "1"),
        ],
    )
    .await;
    let behind_a = register_behind(&orch, sim.ports[0], &a).await;
    let behind_b = register_behind(&orch, sim.ports[1], &b).await;

    let node = wait_node(&orch, &a, "healthy").await;
    assert_eq!(node["forwarded_port"], 41234, "{node}");
    assert_eq!(node["public_ip"], "203.0.113.7", "{node}");
    assert_eq!(node["engines"], json!([behind_a]), "{node}");
    assert_eq!(wait_node(&orch, &b, "healthy").await["country"], "Sweden");
    let (_, status) = orch.get("/vpn/status").await;
    assert_eq!(
        (
            &status["enabled"],
            &status["status"],
            &status["container_name"],
            &status["forwarded_port"]
        ),
        (&json!(true), &json!("running"), &json!(a), &json!(41234)),
        "{status}"
    );

    // A player on the engine behind node A (the other one is made busier).
    for engine in [&behind_a, &behind_b] {
        orch.wait_health(engine, "healthy", Duration::from_secs(5))
            .await;
    }
    let (_, reservation) = orch.post("/engines/select", json!({})).await;
    let reserved = reservation["engine"]["container_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = reqwest::Client::new();
    let mut player = client
        .get(orch.url(&format!("/ace/getstream?id={CONTENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(player.status(), 200);
    let (_, streams) = orch.get("/streams?status=started").await;
    let serving = streams[0]["container_id"].as_str().unwrap().to_owned();
    assert_ne!(serving, reserved, "the proxy took the free engine");
    let (serving_node, other_engine) = if serving == behind_a {
        (&node_a, &behind_b)
    } else {
        (&node_b, &behind_a)
    };
    let reader = tokio::spawn(async move {
        let mut bytes = 0usize;
        while let Ok(Some(chunk)) = player.chunk().await {
            bytes += chunk.len();
        }
        bytes
    });

    // The serving node's tunnel drops: within a VPN check its engine leaves
    // the selection and the stream moves, without blaming the engine.
    serving_node.set_tunnel("stopped").await;
    let down = wait_node(&orch, &serving_node.name, "unhealthy").await;
    assert!(
        down["last_health_error"]
            .as_str()
            .unwrap()
            .contains("tunnel is stopped"),
        "{down}"
    );
    let moved = wait_for(
        "the stream to leave the dropped tunnel",
        Duration::from_secs(15),
        || async {
            let (_, s) = orch.get("/streams?status=started").await;
            (s[0]["container_id"] == other_engine.as_str()).then_some(s)
        },
    )
    .await;
    assert!(
        moved[0]["failovers"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("VPN node"),
        "{moved}"
    );
    assert!(!reader.is_finished(), "the player is still connected");
    let history = orch.get(&format!("/engines/{serving}/health")).await.1;
    assert!(
        history["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["source"] != "proxy"),
        "the node is to blame, not the engine: {history}"
    );
    for _ in 0..3 {
        let (status, picked) = orch
            .post("/engines/select", json!({ "max_streams_per_engine": 10 }))
            .await;
        assert_eq!(status, 200, "{picked}");
        assert_eq!(picked["engine"]["container_id"], other_engine.as_str());
    }

    // Back up: the node is healthy again and its engine selectable.
    serving_node.set_tunnel("running").await;
    wait_node(&orch, &serving_node.name, "healthy").await;
    let (status, picked) = orch
        .post("/engines/select", json!({ "max_streams_per_engine": 1 }))
        .await;
    assert_eq!(status, 200, "{picked}");
    assert_eq!(
        picked["engine"]["container_id"],
        serving.as_str(),
        "it rejoined"
    );
    reader.abort();
    let metrics = orch.metrics().await;
    assert!(
        metrics.contains(&format!(
            "orch_vpn_node_healthy{{node=\"{}\"}} 1",
            node_a.name
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_bad_key_garbage_or_no_answer_is_unhealthy_with_a_clear_reason() {
    let label = unique("label");
    let _cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let wrong_key = unique("wrongkey");
    let garbage = unique("garbage");
    let hung = unique("hung");
    let missing = unique("missing");
    let _w = GluetunNode::start(&wrong_key, &label, KEY, &[], &[]);
    let _g = GluetunNode::start(&garbage, &label, KEY, &["GLUETUN_SIM_MODE=garbage"], &[]);
    let _h = GluetunNode::start(&hung, &label, KEY, &["GLUETUN_SIM_MODE=hang"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let nodes = format!("{wrong_key},{garbage},{hung},{missing}");
    // A wrong key is one orchestrator's mistake; the other faults are the
    // nodes', seen by an orchestrator with the right key.
    let wrong = Orch::start(
        dir.path(),
        &[
            ("GLUETUN_CONTAINERS", wrong_key.as_str()),
            ("GLUETUN_API_KEY", "not-the-key"),
            ("VPN_CHECK_INTERVAL_S", "1"),
        ],
    )
    .await;
    let node = wait_node(&wrong, &wrong_key, "unhealthy").await;
    assert!(
        node["last_health_error"]
            .as_str()
            .unwrap()
            .contains("API key"),
        "{node}"
    );

    let dir2 = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir2.path(),
        &[
            ("GLUETUN_CONTAINERS", nodes.as_str()),
            ("GLUETUN_API_KEY", KEY),
            ("VPN_CHECK_INTERVAL_S", "1"),
            ("HEALTH_CHECK_TIMEOUT_S", "1"),
        ],
    )
    .await;
    for (name, reason) in [
        (&garbage, "not JSON"),
        (&hung, "no answer within 1.0s"),
        (&missing, "not found"),
    ] {
        let node = wait_node(&orch, name, "unhealthy").await;
        assert!(
            node["last_health_error"].as_str().unwrap().contains(reason),
            "{name}: {node}"
        );
        assert!(node["transitions"][0]["reason"]
            .as_str()
            .unwrap()
            .contains(reason));
    }
    assert_eq!(
        wait_node(&orch, &wrong_key, "healthy").await["public_ip"],
        "203.0.113.7"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_are_started_inside_a_node_reached_through_its_ports_and_adopted_after_a_restart() {
    common::ensure_engine_image();
    let label = unique("label");
    let _nodes_cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let name = unique("node");
    // The node publishes its control server and two ports for engines, the
    // way a Gluetun compose entry does.
    let _node = GluetunNode::start(
        &name,
        &label,
        KEY,
        &["GLUETUN_SIM_FORWARDED_PORT=41234"],
        &["-p", "127.0.0.1:21400-21401:21400-21401"],
    );

    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(
        dir.path(),
        &[
            ("GLUETUN_CONTAINER_NAME", name.as_str()),
            ("GLUETUN_API_KEY", KEY),
            ("VPN_CHECK_INTERVAL_S", "0.5"),
            ("TARGET_IMAGE", "acestream-engine-sim:latest"),
            ("MIN_REPLICAS", "2"),
            ("MAX_ENGINES_PER_VPN", "2"),
            ("MONITOR_INTERVAL_S", "1"),
            ("AUTOSCALE_INTERVAL_S", "0.5"),
            ("STARTUP_TIMEOUT_S", "20"),
        ],
    )
    .await;
    let mut engines_cleanup = LabelCleanup {
        label: orch.label(),
        pid: orch.pid(),
    };
    let engines = wait_for(
        "two engines behind the node",
        Duration::from_secs(60),
        || async {
            let (_, engines) = orch.get("/engines").await;
            let ours: Vec<Value> = engines
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["labels"]["acestream.vpn_node"] == name.as_str()
                        && e["health_status"] == "healthy"
                })
                .cloned()
                .collect();
            (ours.len() == 2).then_some(ours)
        },
    )
    .await;
    let mut ports: Vec<u64> = engines
        .iter()
        .map(|e| e["port"].as_u64().unwrap())
        .collect();
    ports.sort();
    assert_eq!(
        ports,
        vec![21400, 21401],
        "reached through the node's published ports"
    );
    let node_id = docker(&["inspect", "-f", "{{.Id}}", &name]);
    let mut p2p = 0;
    for engine in &engines {
        let id = engine["container_id"].as_str().unwrap();
        let mode = docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", id]);
        assert_eq!(
            mode,
            format!("container:{node_id}"),
            "inside the node's namespace"
        );
        let env = docker(&["inspect", "-f", "{{json .Config.Env}}", id]);
        if env.contains("P2P_PORT=41234") {
            p2p += 1;
        }
    }
    assert_eq!(p2p, 1, "the forwarded port went to one engine");
    let (_, nodes) = orch.get("/vpn/nodes").await;
    assert_eq!(nodes[0]["engines"].as_array().unwrap().len(), 2, "{nodes}");

    // A restart adopts both, behind their node, and starts nothing new.
    orch.restart().await;
    // The cleanup must stop the new process, or it would start engines again.
    engines_cleanup.pid = orch.pid();
    wait_for(
        "both engines adopted and healthy",
        Duration::from_secs(20),
        || async {
            let (_, engines) = orch.get("/engines").await;
            let healthy = engines
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| {
                    e["labels"]["acestream.vpn_node"] == name.as_str()
                        && e["health_status"] == "healthy"
                })
                .count();
            (healthy == 2).then_some(())
        },
    )
    .await;
    let containers = docker(&["ps", "-q", "--filter", &format!("label={}", orch.label())]);
    assert_eq!(containers.lines().count(), 2, "no engine started twice");

    // The node full: a third engine has nowhere to go, and says why.
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("VPN node"),
        "{body}"
    );
}

/// An orchestrator running engines behind one node that publishes `ports`
/// (e.g. "21410-21411") for engines.
async fn node_with_engines(
    label: &str,
    ports: &str,
    extra_env: &[(&str, &str)],
) -> (GluetunNode, tempfile::TempDir, Orch, LabelCleanup) {
    common::ensure_engine_image();
    let name = unique("node");
    let publish = format!("127.0.0.1:{ports}:{ports}");
    let node = GluetunNode::start(
        &name,
        label,
        KEY,
        &["GLUETUN_SIM_FORWARDED_PORT=41234"],
        &["-p", &publish],
    );
    let dir = tempfile::tempdir().unwrap();
    let mut env = vec![
        ("GLUETUN_CONTAINER_NAME", name.as_str()),
        ("GLUETUN_API_KEY", KEY),
        ("VPN_CHECK_INTERVAL_S", "0.5"),
        ("TARGET_IMAGE", "acestream-engine-sim:latest"),
        ("MIN_REPLICAS", "1"),
        ("MONITOR_INTERVAL_S", "1"),
        ("AUTOSCALE_INTERVAL_S", "0.5"),
        ("STARTUP_TIMEOUT_S", "20"),
    ];
    env.extend_from_slice(extra_env);
    let orch = Orch::start(dir.path(), &env).await;
    let cleanup = LabelCleanup {
        label: orch.label(),
        pid: orch.pid(),
    };
    (node, dir, orch, cleanup)
}

/// The one healthy engine behind `node` and its `P2P_PORT`, once there is
/// exactly one.
async fn the_engine(orch: &Orch, node: &str, what: &str) -> (String, Option<String>) {
    wait_for(what, Duration::from_secs(60), || async {
        let (_, engines) = orch.get("/engines").await;
        let ours: Vec<&Value> = engines
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["labels"]["acestream.vpn_node"] == node && e["health_status"] == "healthy"
            })
            .collect();
        if ours.len() != 1 {
            return None;
        }
        let id = ours[0]["container_id"].as_str().unwrap().to_owned();
        let env = docker(&["inspect", "-f", "{{json .Config.Env}}", &id]);
        let p2p = env
            .split('"')
            .find_map(|v| v.strip_prefix("P2P_PORT="))
            .map(str::to_owned);
        Some((id, p2p))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_forwarded_port_replaces_the_engine_that_had_the_old_one() {
    let label = unique("label");
    let _nodes_cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let (node, _dir, orch, _engines) = node_with_engines(&label, "21410-21411", &[]).await;
    let (first, p2p) = the_engine(&orch, &node.name, "an engine with the forwarded port").await;
    assert_eq!(p2p.as_deref(), Some("41234"));

    // The provider forwards another port now (Gluetun's own route).
    node.put("/v1/portforward", json!({ "ports": [41999] }))
        .await;
    let (second, p2p) = wait_for("the engine replaced", Duration::from_secs(60), || async {
        let (id, p2p) = the_engine(&orch, &node.name, "one engine").await;
        (id != first).then_some((id, p2p))
    })
    .await;
    assert_eq!(p2p.as_deref(), Some("41999"), "{second} has the new port");
    let history = orch.get(&format!("/engines/{second}")).await.1;
    assert!(history["engine"].is_object());
    assert!(
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("id={first}")
        ])
        .is_empty(),
        "the old engine is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_restart_on_reconnect_a_node_coming_back_gets_fresh_engines() {
    let label = unique("label");
    let _nodes_cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let (node, _dir, orch, _engines) = node_with_engines(
        &label,
        "21420-21421",
        &[("VPN_RESTART_ENGINES_ON_RECONNECT", "true")],
    )
    .await;
    let (first, _) = the_engine(&orch, &node.name, "an engine behind the node").await;
    node.set_tunnel("stopped").await;
    wait_node(&orch, &node.name, "unhealthy").await;
    node.set_tunnel("running").await;
    wait_node(&orch, &node.name, "healthy").await;
    let (second, _) = wait_for("a fresh engine", Duration::from_secs(60), || async {
        let (id, p2p) = the_engine(&orch, &node.name, "one engine").await;
        (id != first).then_some((id, p2p))
    })
    .await;
    assert_ne!(second, first);
    let (_, engine) = orch.get(&format!("/engines/{first}")).await;
    assert!(
        engine["detail"].is_string(),
        "the old engine is forgotten: {engine}"
    );
}

// ---- nodes on demand (VPN_CONFIGS_DIR) --------------------------------------

/// A WireGuard credential file `{name}.conf` in `dir` whose server key is
/// made of `seed` (so that each credential's key tells it apart); answers
/// that public key.
fn write_credential(dir: &std::path::Path, name: &str, seed: u8) -> String {
    use base64::Engine as _;
    let key = |byte: u8| base64::engine::general_purpose::STANDARD.encode([byte; 32]);
    let public = key(seed);
    let text = format!(
        "[Interface]\nPrivateKey = {}\nAddress = 10.64.0.{seed}/32\nDNS = 10.64.0.1\n\n[Peer]\nPublicKey = {public}\nAllowedIPs = 0.0.0.0/0\nEndpoint = 198.51.100.{seed}:51820\n",
        key(seed.wrapping_add(100)),
    );
    std::fs::write(dir.join(format!("{name}.conf")), text).unwrap();
    public
}

/// Cleans up after an orchestrator that creates nodes: its engines (and the
/// process) first, then its nodes.
struct OnDemand {
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    configs: std::path::PathBuf,
    orch: Orch,
    engines: LabelCleanup,
    _nodes: LabelCleanup,
}

/// The host-side ports of this orchestrator's nodes: `range`, e.g.
/// "21500-21519", for PORT_RANGE_HOST.
async fn on_demand(
    range: &str,
    credentials: &[(&str, u8)],
    extra_env: &[(&str, &str)],
) -> (OnDemand, Vec<(String, String)>) {
    common::ensure_engine_image();
    common::ensure_gluetun_image();
    let configs = tempfile::tempdir().unwrap();
    let prefix = unique("wg");
    let written: Vec<(String, String)> = credentials
        .iter()
        .map(|(name, seed)| {
            let name = format!("{prefix}-{name}");
            let public = write_credential(configs.path(), &name, *seed);
            (name, public)
        })
        .collect();
    let label = format!("ondemand.app={}", unique("vpnod"));
    let nodes = LabelCleanup {
        label: format!("acestream.gluetun.owner={label}"),
        pid: None,
    };
    let dir = tempfile::tempdir().unwrap();
    let configs_path = configs.path().to_str().unwrap().to_owned();
    let mut env = vec![
        ("CONTAINER_LABEL", label.as_str()),
        ("VPN_CONFIGS_DIR", configs_path.as_str()),
        ("GLUETUN_IMAGE", "acestream-gluetun-sim:latest"),
        ("GLUETUN_API_KEY", KEY),
        ("TARGET_IMAGE", "acestream-engine-sim:latest"),
        ("PORT_RANGE_HOST", range),
        ("MAX_ENGINES_PER_VPN", "1"),
        ("PREFERRED_ENGINES_PER_VPN", "1"),
        ("VPN_CHECK_INTERVAL_S", "0.5"),
        ("MONITOR_INTERVAL_S", "1"),
        ("STARTUP_TIMEOUT_S", "20"),
        ("VPN_STARTUP_TIMEOUT_S", "20"),
    ];
    env.extend_from_slice(extra_env);
    let orch = Orch::start(dir.path(), &env).await;
    let engines = LabelCleanup {
        label: orch.label(),
        pid: orch.pid(),
    };
    (
        OnDemand {
            configs: configs.path().to_owned(),
            _dirs: (configs, dir),
            orch,
            engines,
            _nodes: nodes,
        },
        written,
    )
}

/// The nodes the orchestrator shows.
async fn nodes(orch: &Orch) -> Vec<Value> {
    orch.get("/vpn/nodes").await.1.as_array().unwrap().clone()
}

/// The node containers carrying this orchestrator's owner label.
fn node_containers(orch: &Orch) -> Vec<String> {
    docker(&[
        "ps",
        "-a",
        "--format",
        "{{.Names}}",
        "--filter",
        &format!("label=acestream.gluetun.owner={}", orch.label()),
    ])
    .lines()
    .map(str::to_owned)
    .collect()
}

/// What a node's emulator was given (`GET /sim/state` on its control port).
async fn node_state(node: &Value) -> Value {
    let url = node["control_url"].as_str().unwrap();
    reqwest::get(format!("{url}/sim/state"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The healthy engines behind `node`.
async fn engines_behind(orch: &Orch, node: &str) -> Vec<String> {
    let (_, engines) = orch.get("/engines").await;
    engines
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["labels"]["acestream.vpn_node"] == node && e["health_status"] == "healthy")
        .map(|e| e["container_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_nodes_come_with_the_engines_one_credential_each_and_go_when_idle() {
    let (t, written) = on_demand(
        "21500-21519",
        &[("a", 11), ("b", 12)],
        &[
            ("VPN_IDLE_GRACE_PERIOD_S", "2"),
            ("AUTOSCALE_INTERVAL_S", "60"),
        ],
    )
    .await;
    // A credential without its server: reported, and the others still used.
    let broken = format!("{}-c", written[0].0.trim_end_matches("-a"));
    std::fs::write(
        t.configs.join(format!("{broken}.conf")),
        "[Interface]\nPrivateKey = wOEI9rqqbDwnN8/Bpp22sVz48T71vJ4fYmFWujulwUU=\nAddress = 10.0.0.2/32\n[Peer]\nPublicKey = wAUaJMhAq3NFutLHIdF8AN0B5WG8RndfQKLPTEDHal0=\n",
    )
    .unwrap();
    let orch = &t.orch;
    assert!(
        nodes(orch).await.is_empty(),
        "no node before an engine needs one"
    );
    let (_, status) = orch.get("/vpn/status").await;
    assert_eq!(status["enabled"], true, "{status}");

    // Two engines: two nodes, each with its own credential.
    let mut provisioned = Vec::new();
    for _ in 0..2 {
        let (status, body) = orch.post("/provision/acestream", json!({})).await;
        assert_eq!(status, 200, "{body}\n{}", orch.logs());
        provisioned.push(body["container_id"].as_str().unwrap().to_owned());
    }
    let shown = nodes(orch).await;
    assert_eq!(shown.len(), 2, "{shown:?}");
    let mut leased: Vec<String> = Vec::new();
    for node in &shown {
        let name = node["name"].as_str().unwrap();
        assert_eq!(node["kind"], "on_demand", "{node}");
        assert_eq!(node["health_status"], "healthy", "{node}");
        assert_eq!(
            engines_behind(orch, name).await.len(),
            1,
            "one engine behind {name}"
        );
        let credential = node["credential"].as_str().unwrap().to_owned();
        let public = &written.iter().find(|(n, _)| *n == credential).unwrap().1;
        // The node was given that credential's peer, and a TUN device when
        // the host has one.
        let state = node_state(node).await;
        assert_eq!(state["settings"]["provider"], "custom", "{state}");
        assert_eq!(
            state["settings"]["wireguard"]["public_key"],
            public.as_str()
        );
        assert_eq!(
            state["tun_device"],
            std::path::Path::new("/dev/net/tun").exists(),
            "{state}"
        );
        let inspect: Value = serde_json::from_str(&docker(&["inspect", name])).unwrap();
        let inspect = &inspect[0];
        assert_eq!(inspect["HostConfig"]["CapAdd"], json!(["NET_ADMIN"]));
        assert_eq!(
            inspect["Config"]["Labels"]["acestream.gluetun.credential"],
            credential.as_str()
        );
        assert!(
            inspect["Config"]["Labels"]["ondemand.app"].is_null(),
            "a node never carries the engines' label: {}",
            inspect["Config"]["Labels"]
        );
        leased.push(credential);
    }
    leased.sort();
    let mut expected: Vec<String> = written.iter().map(|(n, _)| n.clone()).collect();
    expected.sort();
    assert_eq!(leased, expected, "one credential per node");
    let (_, shown_text) = orch.get("/vpn/nodes").await;
    assert!(
        !shown_text.to_string().contains("PrivateKey")
            && !shown_text.to_string().contains("private"),
        "no private key in /vpn/nodes"
    );

    assert!(
        orch.logs().contains("VPN node is up; engines go behind it"),
        "the wait for the tunnel is logged"
    );

    // No credential left: the answer says so.
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("no free VPN credential"), "{detail}");
    assert!(detail.contains("1 not usable"), "{detail}");

    // The broken file is named with its field, in the API and the log.
    let (_, credentials) = orch.get("/vpn/credentials").await;
    let broken_view = credentials
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == broken.as_str())
        .unwrap_or_else(|| panic!("{credentials}"));
    assert_eq!(broken_view["status"], "invalid");
    let error = broken_view["error"].as_str().unwrap();
    assert!(
        error.contains(&format!("{broken}.conf")) && error.contains("[Peer] Endpoint is missing"),
        "{error}"
    );
    assert!(orch.logs().contains("[Peer] Endpoint is missing"));
    assert!(
        !credentials.to_string().contains("wOEI9rqq"),
        "no key: {credentials}"
    );
    for (name, _) in &written {
        let view = credentials
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap();
        assert_eq!(view["status"], "leased", "{view}");
    }
    // The same counts on /metrics, for alerting on "no free credential".
    let metrics = orch.metrics().await;
    for (status, count) in [
        ("free", 0.0),
        ("leased", 2.0),
        ("cooling_down", 0.0),
        ("invalid", 1.0),
    ] {
        let series = format!("orch_vpn_credentials{{status=\"{status}\"}}");
        assert_eq!(
            common::metric_value(&metrics, &series),
            Some(count),
            "{series} in\n{metrics}"
        );
    }

    // The engines go: their nodes follow once idle, and the credentials are free.
    for id in &provisioned {
        let (status, body) = orch.delete(&format!("/containers/{id}")).await;
        assert_eq!(status, 200, "{body}");
    }
    wait_for(
        "the idle nodes removed",
        Duration::from_secs(30),
        || async {
            (nodes(orch).await.is_empty() && node_containers(orch).is_empty()).then_some(())
        },
    )
    .await;
    let (_, credentials) = orch.get("/vpn/credentials").await;
    for (name, _) in &written {
        let view = credentials
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name.as_str())
            .unwrap();
        assert_eq!(view["status"], "free", "{view}");
    }
    drop(t.engines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_on_demand_nodes_and_their_engines_with_their_leases() {
    let (mut t, written) = on_demand(
        "21540-21559",
        &[("a", 21), ("b", 22)],
        &[("MIN_REPLICAS", "1"), ("AUTOSCALE_INTERVAL_S", "0.5")],
    )
    .await;
    let (node, engine) = wait_for(
        "an engine behind a node of its own",
        Duration::from_secs(60),
        || async {
            let shown = nodes(&t.orch).await;
            let node = shown.first()?.clone();
            let engines = engines_behind(&t.orch, node["name"].as_str()?).await;
            (engines.len() == 1).then(|| (node, engines[0].clone()))
        },
    )
    .await;
    let name = node["name"].as_str().unwrap().to_owned();
    let credential = node["credential"].as_str().unwrap().to_owned();

    t.orch.restart().await;
    t.engines.pid = t.orch.pid();
    let orch = &t.orch;
    wait_for(
        "the node and its engine adopted",
        Duration::from_secs(30),
        || async {
            let shown = nodes(orch).await;
            let adopted = shown.len() == 1
                && shown[0]["name"] == name.as_str()
                && shown[0]["credential"] == credential.as_str()
                && shown[0]["health_status"] == "healthy";
            (adopted && engines_behind(orch, &name).await == vec![engine.clone()]).then_some(())
        },
    )
    .await;
    assert_eq!(node_containers(orch), vec![name.clone()], "no second node");
    assert!(orch.logs().contains("adopted a VPN node with its lease"));

    // The leased credential is not used twice: the next node takes the other.
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{body}\n{}", orch.logs());
    let shown = nodes(orch).await;
    let mut credentials: Vec<&str> = shown
        .iter()
        .map(|n| n["credential"].as_str().unwrap())
        .collect();
    credentials.sort();
    let mut expected: Vec<&str> = written.iter().map(|(n, _)| n.as_str()).collect();
    expected.sort();
    assert_eq!(credentials, expected, "{shown:?}");
    assert_eq!(node_containers(orch).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_past_the_grace_period_is_replaced_on_another_credential() {
    let (t, _written) = on_demand(
        "21580-21599",
        &[("a", 31), ("b", 32)],
        &[
            ("MIN_REPLICAS", "1"),
            ("AUTOSCALE_INTERVAL_S", "0.5"),
            ("VPN_UNHEALTHY_GRACE_PERIOD_S", "2"),
        ],
    )
    .await;
    let orch = &t.orch;
    let (first, engine) = wait_for(
        "an engine behind a node",
        Duration::from_secs(60),
        || async {
            let shown = nodes(orch).await;
            let node = shown.first()?.clone();
            let engines = engines_behind(orch, node["name"].as_str()?).await;
            (engines.len() == 1).then(|| (node, engines[0].clone()))
        },
    )
    .await;
    let first_name = first["name"].as_str().unwrap().to_owned();
    let bad = first["credential"].as_str().unwrap().to_owned();

    // Its tunnel drops and stays down.
    let response = reqwest::Client::new()
        .put(format!(
            "{}/v1/vpn/status",
            first["control_url"].as_str().unwrap()
        ))
        .header("X-API-Key", KEY)
        .json(&json!({ "status": "stopped" }))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    wait_node(orch, &first_name, "unhealthy").await;

    // Replaced: a node on the other credential, the engine recreated behind
    // it and healthy, the old node gone, its credential cooling down.
    let second = wait_for(
        "a healthy engine behind a node on another credential",
        Duration::from_secs(90),
        || async {
            let shown = nodes(orch).await;
            if shown.iter().any(|n| n["name"] == first_name.as_str()) {
                return None;
            }
            let node = shown
                .iter()
                .find(|n| n["credential"] != bad.as_str())?
                .clone();
            let engines = engines_behind(orch, node["name"].as_str()?).await;
            (!engines.is_empty()).then_some((node, engines))
        },
    )
    .await;
    assert_ne!(second.1[0], engine, "a new engine");
    assert_eq!(
        node_containers(orch),
        vec![second.0["name"].as_str().unwrap().to_owned()]
    );
    let (_, old) = orch.get(&format!("/engines/{engine}")).await;
    assert!(old["detail"].is_string(), "the old engine is gone: {old}");
    let (_, credentials) = orch.get("/vpn/credentials").await;
    let view = credentials
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == bad.as_str())
        .unwrap()
        .clone();
    assert_eq!(view["status"], "cooling_down", "{view}");
    assert!(view["cooling_until"].is_string(), "{view}");
    assert!(
        view["error"].as_str().unwrap().contains("down for"),
        "{view}"
    );
    assert!(orch.logs().contains("is not leased again"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_nodes_fill_first_and_on_demand_nodes_take_the_rest() {
    let label = unique("label");
    let _static_cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    common::ensure_gluetun_image();
    let static_name = unique("static");
    let _static = GluetunNode::start(
        &static_name,
        &label,
        KEY,
        &[],
        &["-p", "127.0.0.1:21600:21600"],
    );
    let (t, written) = on_demand(
        "21620-21639",
        &[("a", 41)],
        &[
            ("GLUETUN_CONTAINER_NAME", static_name.as_str()),
            ("MIN_REPLICAS", "2"),
            ("AUTOSCALE_INTERVAL_S", "0.5"),
        ],
    )
    .await;
    let orch = &t.orch;
    let shown = wait_for(
        "an engine behind the static node and one behind a node on demand",
        Duration::from_secs(90),
        || async {
            let shown = nodes(orch).await;
            if shown.len() != 2 {
                return None;
            }
            for node in &shown {
                if engines_behind(orch, node["name"].as_str()?).await.len() != 1 {
                    return None;
                }
            }
            Some(shown)
        },
    )
    .await;
    let fixed = shown
        .iter()
        .find(|n| n["name"] == static_name.as_str())
        .unwrap();
    assert_eq!(fixed["kind"], "static", "{fixed}");
    assert!(fixed["credential"].is_null(), "{fixed}");
    let created = shown
        .iter()
        .find(|n| n["name"] != static_name.as_str())
        .unwrap();
    assert_eq!(created["kind"], "on_demand", "{created}");
    assert_eq!(created["credential"], written[0].0.as_str());
    let (_, status) = orch.get("/vpn/status").await;
    assert_eq!(
        status["container_name"],
        static_name.as_str(),
        "the first static node"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_runs_its_tunnel_is_removed_and_its_credential_cools_down() {
    // No such image: the answer names the setting.
    let (missing, _) = on_demand(
        "21660-21669",
        &[("a", 51)],
        &[("GLUETUN_IMAGE", "acestream-no-such-gluetun:latest")],
    )
    .await;
    let (status, body) = missing.orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("GLUETUN_IMAGE 'acestream-no-such-gluetun:latest' is not available"),
        "{body}"
    );
    drop(missing);

    // A container whose control server never answers (an engine emulator
    // in place of Gluetun): given up after VPN_STARTUP_TIMEOUT_S.
    let (t, written) = on_demand(
        "21670-21679",
        &[("a", 52)],
        &[
            ("GLUETUN_IMAGE", "acestream-engine-sim:latest"),
            ("VPN_STARTUP_TIMEOUT_S", "3"),
        ],
    )
    .await;
    let orch = &t.orch;
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("did not report its tunnel running") && detail.contains(&written[0].0),
        "{detail}"
    );
    assert!(orch
        .logs()
        .contains("waiting for the new VPN node's tunnel"));
    wait_for(
        "the node removed, its credential cooling down",
        Duration::from_secs(30),
        || async {
            let (_, credentials) = orch.get("/vpn/credentials").await;
            (node_containers(orch).is_empty()
                && nodes(orch).await.is_empty()
                && credentials[0]["status"] == "cooling_down")
                .then_some(())
        },
    )
    .await;
    // The only credential cools down: the next engine is refused at once.
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("1 cooling down after a failure"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_at_an_empty_pool_waits_while_a_node_and_its_engine_start() {
    // A failover may take 0.3 s, far less than starting a node and an
    // engine behind it; a first player is still served, late.
    let (t, written) = on_demand(
        "21700-21709",
        &[("a", 61)],
        &[("PROXY_FAILOVER_TIMEOUT_S", "0.3")],
    )
    .await;
    let orch = &t.orch;
    assert!(nodes(orch).await.is_empty());
    let started = std::time::Instant::now();
    let response = orch
        .client
        .get(orch.url("/ace/getstream?id=00112233445566778899aabbccddeeff00112299"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", orch.logs());
    common::read_ts_stream(response).await;
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(300),
        "the node and the engine started in {waited:?}: the test shows nothing"
    );
    let shown = nodes(orch).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["credential"], written[0].0.as_str());
    let node = shown[0]["name"].as_str().unwrap();
    let (_, streams) = orch.get("/streams?status=started").await;
    assert_eq!(
        vec![streams[0]["container_id"].as_str().unwrap().to_owned()],
        engines_behind(orch, node).await,
        "the stream runs on the engine behind the new node"
    );
}
