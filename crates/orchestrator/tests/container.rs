//! The orchestrator's own image, run the way `docker-compose.yml` runs it: in
//! a container with the Docker socket mounted, on a user network beside the
//! engines it starts, which it reaches as `<container name>:<container port>`.
//! Also its Docker health check (`--healthcheck`, the image has no curl) and a
//! clean exit on `docker stop`.

mod common;

use std::time::Duration;

use common::{docker, ensure_engine_image, ensure_orchestrator_image, wait_for, LabelCleanup};
use serde_json::Value;

const ENGINE_IMAGE: &str = "acestream-engine-sim:latest";
const ORCHESTRATOR_IMAGE: &str = "acestream-orchestrator:latest";

/// Removes the test's network when dropped (after the containers on it).
struct NetworkCleanup(String);

impl Drop for NetworkCleanup {
    fn drop(&mut self) {
        docker(&["network", "rm", &self.0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_runs_engines_beside_it_and_stops_cleanly() {
    let started = std::time::Instant::now();
    ensure_engine_image();
    ensure_orchestrator_image();
    eprintln!("images ready after {:?}", started.elapsed());
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let network = format!("orch-test-{id}");
    let engine_label = format!("ondemand.app=test-{id}");
    let own_label = format!("ondemand.app=test-{id}-orchestrator");
    let name = format!("orch-test-{id}");

    // Dropped in reverse order: the orchestrator first (it would start new
    // engines), then its engines, then the network.
    let _network = NetworkCleanup(network.clone());
    let engines = LabelCleanup {
        label: engine_label.clone(),
        pid: None,
    };
    let _orchestrator = LabelCleanup {
        label: own_label.clone(),
        pid: None,
    };
    assert!(!docker(&["network", "create", &network]).is_empty());
    let env = [
        format!("TARGET_IMAGE={ENGINE_IMAGE}"),
        format!("DOCKER_NETWORK={network}"),
        format!("CONTAINER_LABEL={engine_label}"),
        "MIN_REPLICAS=1".into(),
        "MAX_REPLICAS=2".into(),
        "PORT_RANGE_HOST=21210-21219".into(),
        "HEALTH_CHECK_INTERVAL_S=1".into(),
        "AUTOSCALE_INTERVAL_S=1".into(),
        "MONITOR_INTERVAL_S=1".into(),
        "API_KEY=container-test-key".into(),
    ];
    let mut args = vec![
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &own_label,
        "--network",
        &network,
        "-v",
        "/var/run/docker.sock:/var/run/docker.sock",
        "-p",
        "127.0.0.1::8000",
        // The image's own check, run often enough for a test.
        "--health-interval",
        "1s",
        "--health-start-period",
        "30s",
    ];
    for value in &env {
        args.extend(["-e", value.as_str()]);
    }
    args.push(ORCHESTRATOR_IMAGE);
    let container = docker(&args);
    assert!(!container.is_empty(), "docker run failed");
    let logs = || docker(&["logs", &name]);

    let published = docker(&["port", &name, "8000/tcp"]);
    let base = format!(
        "http://{}",
        published.lines().next().expect("a published port")
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();

    // MIN_REPLICAS=1: one engine, started through the mounted socket, on the
    // network, reached by its container name and in-container port, healthy.
    let engine = wait_for(
        "a healthy engine reached by name",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let url = format!("{base}/engines");
            async move {
                let engines: Value = client.get(url).send().await.ok()?.json().await.ok()?;
                engines
                    .as_array()?
                    .iter()
                    .find(|e| e["runtime"] == "docker" && e["health_status"] == "healthy")
                    .cloned()
            }
        },
    )
    .await;
    eprintln!("engine healthy after {:?}", started.elapsed());
    let engine_name = engine["container_name"].as_str().unwrap();
    assert_eq!(engine["host"], engine_name, "{engine}\n{}", logs());
    assert_eq!(
        engine["port"].to_string(),
        engine["labels"]["acestream.http_port"].as_str().unwrap(),
        "the in-container port, not the published one: {engine}"
    );
    let networks = docker(&[
        "inspect",
        "-f",
        "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        engine_name,
    ]);
    assert_eq!(networks.trim(), network);

    // Docker's view of the orchestrator, from `--healthcheck` inside it.
    wait_for(
        "Docker to call the orchestrator healthy",
        Duration::from_secs(30),
        || async {
            (docker(&["inspect", "-f", "{{.State.Health.Status}}", &name]) == "healthy")
                .then_some(())
        },
    )
    .await;

    eprintln!("orchestrator healthy after {:?}", started.elapsed());
    // docker stop: SIGTERM to PID 1, a clean exit in time, engines left running
    // for the next start to adopt.
    let stopping = std::time::Instant::now();
    docker(&["stop", "-t", "10", &name]);
    let took = stopping.elapsed();
    let exit = docker(&["inspect", "-f", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit, "0", "{}", logs());
    assert!(took < Duration::from_secs(8), "docker stop took {took:?}");
    let running = docker(&["inspect", "-f", "{{.State.Running}}", engine_name]);
    assert_eq!(running, "true", "the engine outlives the orchestrator");
    assert_eq!(engines.containers().len(), 1);
}
