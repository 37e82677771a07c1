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
    let metrics = reqwest::get(orch.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
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
