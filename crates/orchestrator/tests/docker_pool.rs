//! The pool of engine containers against the real Docker daemon: provisioning
//! with readiness, MIN_REPLICAS and the grace period, adoption after a restart,
//! containers removed by hand, `docker pause` → unhealthy → replaced, the
//! shared-cause guard, and daemon errors as clear API errors.
//!
//! Each test has its own CONTAINER_LABEL value and host port range, and removes
//! its containers by label even when it fails.

mod common;

use std::time::Duration;

use common::{docker, ensure_engine_image, wait_for, LabelCleanup, Orch};
use serde_json::{json, Value};
use tokio::time::Instant;

const IMAGE: &str = "acestream-engine-sim:latest";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Starts an orchestrator that runs engines from the emulator image, with
/// host ports from `ports` (disjoint per test, so parallel tests never race
/// for one).
async fn start(dir: &std::path::Path, ports: &str, extra: &[(&str, &str)]) -> (Orch, LabelCleanup) {
    ensure_engine_image();
    let mut env = vec![
        ("TARGET_IMAGE", IMAGE),
        ("PORT_RANGE_HOST", ports),
        ("MONITOR_INTERVAL_S", "1"),
        ("AUTOSCALE_INTERVAL_S", "0.5"),
        ("STARTUP_TIMEOUT_S", "20"),
    ];
    env.extend_from_slice(extra);
    let orch = Orch::start(dir, &env).await;
    let cleanup = LabelCleanup {
        label: orch.label(),
        pid: orch.pid(),
    };
    (orch, cleanup)
}

async fn docker_engines(orch: &Orch) -> Vec<Value> {
    let (_, engines) = orch.get("/engines").await;
    engines
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["runtime"] == "docker")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_answers_when_the_engine_is_ready_and_delete_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(dir.path(), "21000-21019", &[]).await;

    let started = Instant::now();
    let (status, engine) = orch.post("/provision/acestream", json!({})).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{engine}");
    for field in [
        "container_id",
        "container_name",
        "host_http_port",
        "container_http_port",
        "container_https_port",
    ] {
        assert!(!engine[field].is_null(), "{field} missing: {engine}");
    }
    let id = engine["container_id"].as_str().unwrap().to_owned();
    let host_port = engine["host_http_port"].as_u64().unwrap();
    assert!((21000..=21019).contains(&host_port));
    assert!(engine["container_name"]
        .as_str()
        .unwrap()
        .starts_with("engine-"));
    eprintln!("provisioning latency (request to ready): {took:?}");

    // Ready means its API answers now, and the registry knows it as healthy.
    let status: Value = reqwest::get(format!(
        "http://127.0.0.1:{host_port}/server/api?api_version=3&method=get_status"
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert!(status["error"].is_null());
    let registered = orch.engine(&id).await;
    assert_eq!(registered["runtime"], "docker");
    assert_eq!(registered["health_status"], "healthy");

    // Labels and CONF as docs/CONTRACT.md ("Containers we run") says.
    let label = orch.label();
    let (key, value) = label.split_once('=').unwrap();
    let (_, container) = orch.get(&format!("/containers/{id}")).await;
    assert_eq!(container["labels"][key], value);
    assert_eq!(container["labels"]["host.http_port"], host_port.to_string());
    assert_eq!(
        container["labels"]["acestream.http_port"],
        engine["container_http_port"].to_string()
    );
    let conf = docker(&[
        "inspect",
        "-f",
        "{{range .Config.Env}}{{println .}}{{end}}",
        &id,
    ]);
    assert!(
        conf.contains(&format!("--http-port={}", engine["container_http_port"])),
        "{conf}"
    );
    assert!(conf.contains("--bind-all"));

    // A proxy names it by localhost and its published port: same engine.
    let (status, stream) = orch
        .post(
            "/events/stream_started",
            common::started_event(host_port as u16, "k", "s"),
        )
        .await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(stream["container_id"], id);

    let (status, by_label) = orch
        .get(&format!("/by-label?key={key}&value={value}"))
        .await;
    assert_eq!(status, 200);
    assert_eq!(by_label.as_array().unwrap().len(), 1);

    let (status, deleted) = orch.delete(&format!("/containers/{id}")).await;
    assert_eq!(status, 200, "{deleted}");
    assert!(cleanup.containers().is_empty(), "the container is gone");
    let (status, _) = orch.get(&format!("/engines/{id}")).await;
    assert_eq!(status, 404);
    let (_, streams) = orch.get("/streams?status=started").await;
    assert_eq!(streams, json!([]), "its stream ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_replicas_are_kept_free_and_empty_engines_go_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, _cleanup) = start(
        dir.path(),
        "21020-21039",
        &[
            ("MIN_REPLICAS", "1"),
            ("MAX_REPLICAS", "3"),
            ("ENGINE_GRACE_PERIOD_S", "2"),
        ],
    )
    .await;
    let first = wait_for("one free engine", secs(30.0), || async {
        let engines = docker_engines(&orch).await;
        (engines.len() == 1).then(|| engines[0].clone())
    })
    .await;
    let port = first["labels"]["host.http_port"]
        .as_str()
        .unwrap()
        .parse::<u16>()
        .unwrap();

    // A stream takes the free engine: another one is started to stay at one free.
    let (status, stream) = orch
        .post(
            "/events/stream_started",
            common::started_event(port, "k", "s"),
        )
        .await;
    assert_eq!(status, 200, "{stream}");
    wait_for("a second engine", secs(30.0), || async {
        (docker_engines(&orch).await.len() == 2).then_some(())
    })
    .await;

    // The stream ends: two free engines, one too many, but only after the grace period.
    let ended_at = Instant::now();
    orch.post("/events/stream_ended", json!({ "stream_id": stream["id"] }))
        .await;
    wait_for("back to one engine", secs(30.0), || async {
        (docker_engines(&orch).await.len() == 1).then_some(())
    })
    .await;
    assert!(
        ended_at.elapsed() >= secs(2.0),
        "removed after {:?}, before the grace period",
        ended_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_running_containers_and_kills_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut orch, mut cleanup) = start(dir.path(), "21040-21059", &[]).await;
    let (status, a) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{a}");
    let a = a["container_id"].as_str().unwrap().to_owned();
    let started_at = docker(&["inspect", "-f", "{{.State.StartedAt}}", &a]);

    // A container started by hand with our label, before the restart.
    let label = orch.label();
    let by_hand = docker(&[
        "run",
        "-d",
        "--label",
        &label,
        "-e",
        "CONF=--http-port=6878\n--bind-all",
        "-p",
        "21059:6878",
        IMAGE,
    ]);
    assert!(!by_hand.is_empty());

    orch.terminate().await;
    orch.restart().await;
    cleanup.pid = orch.pid();
    let ids: Vec<String> = wait_for("both containers adopted", secs(15.0), || async {
        let engines = docker_engines(&orch).await;
        (engines.len() == 2).then(|| {
            engines
                .iter()
                .map(|e| e["container_id"].as_str().unwrap().to_owned())
                .collect()
        })
    })
    .await;
    assert!(ids.contains(&a) && ids.contains(&by_hand), "{ids:?}");
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.StartedAt}}", &a]),
        started_at,
        "not restarted"
    );
    assert_eq!(cleanup.containers().len(), 2, "nothing was killed");
    // The adopted engine by hand is checked like any other.
    orch.wait_health(&by_hand, "healthy", secs(5.0)).await;
    // Its host port is reserved: a new engine does not get 21059.
    let (status, c) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{c}");
    assert_ne!(c["host_http_port"], 21059);
    assert_ne!(
        c["host_http_port"].as_u64(),
        orch.engine(&a).await["labels"]["host.http_port"]
            .as_str()
            .and_then(|p| p.parse().ok())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_removed_by_hand_leaves_the_registry() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, _cleanup) = start(dir.path(), "21060-21079", &[("MONITOR_INTERVAL_S", "2")]).await;
    let (status, engine) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{engine}");
    let id = engine["container_id"].as_str().unwrap().to_owned();
    let port = engine["host_http_port"].as_u64().unwrap() as u16;
    orch.post(
        "/events/stream_started",
        common::started_event(port, "k", "s"),
    )
    .await;

    docker(&["rm", "-f", &id]);
    let removed_at = Instant::now();
    wait_for(
        "the engine to leave the registry",
        secs(2.0 + 2.0),
        || async { (orch.get(&format!("/engines/{id}")).await.0 == 404).then_some(()) },
    )
    .await;
    eprintln!("left the registry after {:?}", removed_at.elapsed());
    let (_, streams) = orch.get("/streams?status=ended").await;
    assert_eq!(streams[0]["end_reason"], "engine container is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_engine_turns_unhealthy_and_is_replaced_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(
        dir.path(),
        "21080-21099",
        &[
            ("MIN_REPLICAS", "3"),
            ("HEALTH_CHECK_INTERVAL_S", "0.5"),
            ("HEALTH_CHECK_TIMEOUT_S", "0.5"),
            ("HEALTH_UNHEALTHY_GRACE_PERIOD_S", "2"),
            ("HEALTH_REPLACEMENT_COOLDOWN_S", "0"),
        ],
    )
    .await;
    let engines = wait_for("three healthy engines", secs(40.0), || async {
        let engines = docker_engines(&orch).await;
        (engines.len() == 3 && engines.iter().all(|e| e["health_status"] == "healthy"))
            .then_some(engines)
    })
    .await;
    let victim = engines[0]["container_id"].as_str().unwrap().to_owned();
    let port = engines[0]["labels"]["host.http_port"]
        .as_str()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    orch.post(
        "/events/stream_started",
        common::started_event(port, "k", "s"),
    )
    .await;

    docker(&["pause", &victim]);
    let paused = Instant::now();
    orch.wait_health(&victim, "unhealthy", secs(0.5 + 0.5 + 1.5))
        .await;
    eprintln!("unhealthy {:?} after docker pause", paused.elapsed());

    wait_for("the paused engine to be replaced", secs(30.0), || async {
        (orch.get(&format!("/engines/{victim}")).await.0 == 404).then_some(())
    })
    .await;
    assert!(
        paused.elapsed() >= secs(2.0),
        "replaced before the grace period"
    );
    assert!(
        !cleanup.containers().contains(&victim),
        "the old container is removed"
    );
    let (_, ended) = orch.get("/streams?status=ended").await;
    assert!(
        ended[0]["end_reason"]
            .as_str()
            .unwrap()
            .contains("replaced"),
        "{ended}"
    );
    // The pool is back to three, and the newcomer's history says whom it replaced.
    let engines = wait_for("three engines again", secs(30.0), || async {
        let engines = docker_engines(&orch).await;
        (engines.len() == 3).then_some(engines)
    })
    .await;
    let mut noted = false;
    for e in &engines {
        let (_, history) = orch
            .get(&format!(
                "/engines/{}/health",
                e["container_id"].as_str().unwrap()
            ))
            .await;
        noted |= history["transitions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["reason"].as_str().unwrap().contains(&victim));
    }
    assert!(noted, "a replacement is visible in the engine history");
    assert!(orch
        .logs()
        .contains("replacing an engine that stayed unhealthy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_most_engines_are_unhealthy_none_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(
        dir.path(),
        "21100-21119",
        &[
            ("MIN_REPLICAS", "2"),
            ("HEALTH_CHECK_INTERVAL_S", "0.5"),
            ("HEALTH_CHECK_TIMEOUT_S", "0.5"),
            // Long enough to pause both before the first one is overdue;
            // then the shared-cause guard alone must hold replacements back.
            ("HEALTH_UNHEALTHY_GRACE_PERIOD_S", "2"),
            ("HEALTH_REPLACEMENT_COOLDOWN_S", "0"),
        ],
    )
    .await;
    let engines = wait_for("two healthy engines", secs(40.0), || async {
        let engines = docker_engines(&orch).await;
        (engines.len() == 2 && engines.iter().all(|e| e["health_status"] == "healthy"))
            .then_some(engines)
    })
    .await;
    let ids: Vec<String> = engines
        .iter()
        .map(|e| e["container_id"].as_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        docker(&["pause", id]);
    }
    wait_for("replacements to be suspended", secs(10.0), || async {
        let engines = docker_engines(&orch).await;
        engines
            .iter()
            .all(|e| e["replacement_suspended"] == true)
            .then_some(())
    })
    .await;
    let (_, metrics) = orch.get("/metrics").await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains("orch_replacement_suspended 1"));
    assert!(orch.logs().contains("suspecting a shared cause"));
    // Past the grace period and several monitor ticks later, the same two
    // containers are still there.
    tokio::time::sleep(secs(4.0)).await;
    let mut now = cleanup.containers();
    now.sort();
    let mut before = ids.clone();
    before.sort();
    assert_eq!(now, before, "nothing was replaced");
    for id in &ids {
        docker(&["unpause", id]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_errors_become_clear_api_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A missing image.
    let (orch, _c1) = start(
        dir.path(),
        "21120-21129",
        &[("TARGET_IMAGE", "no-such-image:1")],
    )
    .await;
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no-such-image:1"),
        "{body}"
    );
    drop(orch);

    // MAX_REPLICAS reached, and an engine that never becomes ready.
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(
        dir.path(),
        "21130-21139",
        &[("MAX_REPLICAS", "1"), ("STARTUP_TIMEOUT_S", "2")],
    )
    .await;
    let (status, body) = orch
        .post(
            "/provision/acestream",
            json!({ "env": { "ENGINE_SIM_MODE": "hang" } }),
        )
        .await;
    assert_eq!(status, 504, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("did not answer"),
        "{body}"
    );
    wait_for(
        "the unready container to be removed",
        secs(10.0),
        || async { cleanup.containers().is_empty().then_some(()) },
    )
    .await;
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "the slot and ports were freed: {body}");
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("MAX_REPLICAS"));

    // A container that is not ours cannot be removed or inspected.
    let foreign = docker(&["create", IMAGE]);
    let (status, body) = orch.delete(&format!("/containers/{foreign}")).await;
    docker(&["rm", "-f", &foreign]);
    assert_eq!(status, 403, "{body}");
    drop(orch);

    // The daemon unreachable: provisioning says so, everything else works.
    let dir = tempfile::tempdir().unwrap();
    let (orch, _c3) = start(
        dir.path(),
        "21140-21149",
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    )
    .await;
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    assert_eq!(orch.get("/engines").await.0, 200);
    let sim = common::Sim::start(1).await;
    let id = orch.register(sim.port()).await;
    orch.wait_health(&id, "healthy", secs(5.0)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_starts_an_engine_when_none_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(dir.path(), "21150-21169", &[("MAX_REPLICAS", "2")]).await;
    let (status, body) = orch
        .post("/engines/select", json!({ "max_streams_per_engine": 1 }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["engine"]["runtime"], "docker");
    assert_eq!(cleanup.containers().len(), 1);
    let (status, _) = orch
        .post("/engines/select", json!({ "max_streams_per_engine": 1 }))
        .await;
    assert_eq!(status, 200);
    let (status, body) = orch
        .post("/engines/select", json!({ "max_streams_per_engine": 1 }))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("MAX_REPLICAS"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_proxy_starts_an_engine_when_none_is_running_and_plays() {
    let dir = tempfile::tempdir().unwrap();
    // A failover may take 0.2 s, less than starting a container: the first
    // player's wait is bounded by the start budget (STARTUP_TIMEOUT_S +
    // PROXY_STALL_S), not by the failover's.
    let (orch, cleanup) = start(
        dir.path(),
        "21200-21219",
        &[("MAX_REPLICAS", "2"), ("PROXY_FAILOVER_TIMEOUT_S", "0.2")],
    )
    .await;
    assert!(cleanup.containers().is_empty());
    // A player with no engine anywhere: one is provisioned, then it plays.
    let response = orch
        .client
        .get(orch.url("/ace/getstream?id=00112233445566778899aabbccddeeff00112233"))
        .send()
        .await
        .unwrap();
    common::read_ts_stream(response).await;
    assert_eq!(cleanup.containers().len(), 1, "one engine was started");
    let (_, streams) = orch.get("/streams?status=started").await;
    assert_eq!(
        streams[0]["container_id"],
        docker_engines(&orch).await[0]["container_id"]
    );
    assert_eq!(streams[0]["viewers"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_provisioning_runs_only_allowed_images() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(dir.path(), "21170-21179", &[]).await;
    // Default: only TARGET_IMAGE.
    let (status, body) = orch
        .post(
            "/provision",
            json!({ "image": "alpine:latest", "env": {}, "labels": {} }),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("PROVISION_ALLOWED_IMAGES"),
        "{body}"
    );
    assert!(cleanup.containers().is_empty());

    let (status, body) = orch
        .post(
            "/provision",
            json!({ "image": IMAGE, "env": { "CONF": "--http-port=6878" }, "labels": { "role": "x" }, "ports": { "6878/tcp": null } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["container_id"].as_str().unwrap();
    let label = orch.label();
    let (key, value) = label.split_once('=').unwrap();
    assert_eq!(body["container"]["labels"][key], value, "labelled as ours");
    assert_eq!(body["container"]["labels"]["role"], "x");
    let privileged = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.Privileged}} {{.HostConfig.NetworkMode}} {{len .Mounts}}",
        id,
    ]);
    let fields: Vec<&str> = privileged.split_whitespace().collect();
    assert_eq!(fields[0], "false", "not privileged");
    assert_ne!(fields[1], "host", "not on the host network");
    assert_eq!(fields[2], "0", "no mounts");
    let (_, metrics) = orch.get("/metrics").await;
    assert!(metrics
        .as_str()
        .unwrap()
        .contains(r#"orch_provision_total{kind="generic"} 1"#));
}

/// A Unix socket in front of the Docker daemon's, that the test can cut
/// (connections reset, socket gone) and restore.
struct SocketProxy {
    path: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl SocketProxy {
    fn start(path: std::path::PathBuf) -> Self {
        let mut proxy = SocketProxy { path, task: None };
        proxy.restore();
        proxy
    }

    fn restore(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let listener = tokio::net::UnixListener::bind(&self.path).unwrap();
        self.task = Some(tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                connections.spawn(async move {
                    if let Ok(mut daemon) =
                        tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut daemon).await;
                    }
                });
            }
        }));
    }

    /// Aborting the task drops the listener and every proxied connection.
    fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_going_away_and_coming_back_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = SocketProxy::start(dir.path().join("docker.sock"));
    let docker_host = format!("unix://{}", proxy.path.display());
    let (orch, _cleanup) = start(
        dir.path(),
        "21180-21189",
        &[
            ("DOCKER_HOST", &docker_host),
            ("MONITOR_INTERVAL_S", "1"),
            ("HEALTH_CHECK_INTERVAL_S", "0.5"),
        ],
    )
    .await;
    let (status, a) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{a}");
    let a = a["container_id"].as_str().unwrap().to_owned();

    proxy.cut();
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("unreachable"),
        "{body}"
    );
    // The API and the health monitor go on without the daemon.
    let checked = orch.engine(&a).await["last_health_check"].clone();
    wait_for("a newer health check", secs(5.0), || async {
        let engine = orch.engine(&a).await;
        (engine["last_health_check"] != checked && engine["health_status"] == "healthy")
            .then_some(())
    })
    .await;
    // Meanwhile the container goes away behind the orchestrator's back.
    docker(&["rm", "-f", &a]);
    tokio::time::sleep(secs(1.5)).await;
    assert_eq!(
        orch.get(&format!("/engines/{a}")).await.0,
        200,
        "unseen while the daemon is away"
    );

    proxy.restore();
    wait_for(
        "the resync after the daemon is back",
        secs(10.0),
        || async { (orch.get(&format!("/engines/{a}")).await.0 == 404).then_some(()) },
    )
    .await;
    let (status, body) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "provisioning works again: {body}");
    assert!(orch.logs().contains("container runtime unreachable"));
    assert!(orch.logs().contains("reachable again"));
}

/// An engine still waiting for readiness is adopted by the reconciler from its
/// start event; it must not then count twice toward MAX_REPLICAS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_adopted_while_it_starts_counts_once_toward_max_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, cleanup) = start(dir.path(), "21190-21199", &[("MAX_REPLICAS", "2")]).await;

    // The first engine takes 3 s to answer; meanwhile its container runs.
    let slow = {
        let client = orch.client.clone();
        let url = orch.url("/provision/acestream");
        tokio::spawn(async move {
            let response = client
                .post(url)
                .json(&json!({ "env": { "ENGINE_SIM_STARTUP_DELAY_MS": "3000" } }))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    };
    wait_for("the starting engine to be adopted", secs(10.0), || async {
        (!docker_engines(&orch).await.is_empty()).then_some(())
    })
    .await;
    assert!(!slow.is_finished(), "the first engine was ready too soon");

    // One engine exists, MAX_REPLICAS is 2: there is room for one more.
    let (status, second) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 200, "{second}");
    let (status, first) = slow.await.unwrap();
    assert_eq!(status, 200, "{first}");
    let (status, third) = orch.post("/provision/acestream", json!({})).await;
    assert_eq!(status, 409, "{third}");
    assert!(third["detail"].as_str().unwrap().contains("MAX_REPLICAS"));
    assert_eq!(cleanup.containers().len(), 2);
}
