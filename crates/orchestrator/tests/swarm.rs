//! RUNTIME=swarm against the real Docker daemon in swarm mode (a single-node
//! swarm: the setup runs `docker swarm init` when the daemon is not in one).
//!
//! The orchestrator runs the way `deploy/swarm/stack.yml` runs it: its own
//! image, in a container attached to the test's overlay network with the
//! Docker socket mounted, reaching every engine by its service name. Its API
//! is published on a loopback port of this test's own.
//!
//! Each test has its own overlay network and CONTAINER_LABEL value, and
//! removes its orchestrator, services and network even when it fails.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use common::{docker, ensure_engine_image, wait_for};
use serde_json::Value;

const ENGINE_IMAGE: &str = "acestream-engine-sim:latest";
/// A tag of its own: a build of `:latest` from another checkout on the same
/// daemon never swaps the binary under these tests.
const ORCHESTRATOR_IMAGE: &str = "acestream-orchestrator:swarm-test";

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Puts the daemon in swarm mode once per test process, if it is not.
fn ensure_swarm() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let state = docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]);
        if state != "active" {
            eprintln!("the Docker daemon is not in a swarm ({state}): running `docker swarm init --advertise-addr 127.0.0.1`");
            let out = std::process::Command::new("docker")
                .args(["swarm", "init", "--advertise-addr", "127.0.0.1"])
                .output()
                .expect("docker CLI");
            assert!(
                out.status.success(),
                "docker swarm init failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let manager = docker(&["info", "--format", "{{.Swarm.ControlAvailable}}"]);
        assert_eq!(manager, "true", "this daemon must be a swarm manager");
    });
}

fn ensure_orchestrator_image() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/orchestrator-image");
        let status = std::process::Command::new(&script)
            .env("IMAGE", ORCHESTRATOR_IMAGE)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/orchestrator-image");
        assert!(status.success(), "building {ORCHESTRATOR_IMAGE} failed");
    });
}

/// One test's swarm: its overlay network, its engines' label, its
/// orchestrator container. Everything goes when it is dropped.
struct SwarmTest {
    id: String,
    network: String,
    label: String,
    orchestrator: String,
    port: u16,
    env: Vec<String>,
    client: reqwest::Client,
}

impl SwarmTest {
    fn new(port: u16, env: &[&str]) -> SwarmTest {
        ensure_swarm();
        ensure_engine_image();
        ensure_orchestrator_image();
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let test = SwarmTest {
            network: format!("swarm-test-{id}"),
            label: format!("ondemand.app=swarm-test-{id}"),
            orchestrator: format!("swarm-test-orch-{id}"),
            id,
            port,
            env: env.iter().map(|e| e.to_string()).collect(),
            client: reqwest::Client::builder()
                .timeout(secs(10))
                .build()
                .unwrap(),
        };
        let created = docker(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &test.network,
        ]);
        assert!(!created.is_empty(), "cannot create the overlay network");
        test
    }

    /// Starts the orchestrator container (a fresh database each time) and
    /// waits for its API.
    async fn start_orchestrator(&self) {
        let mut env = vec![
            "RUNTIME=swarm".to_owned(),
            format!("SWARM_NETWORK={}", self.network),
            format!("TARGET_IMAGE={ENGINE_IMAGE}"),
            format!("CONTAINER_LABEL={}", self.label),
            "HEALTH_CHECK_INTERVAL_S=1".into(),
            "HEALTH_CHECK_TIMEOUT_S=0.8".into(),
            "MONITOR_INTERVAL_S=1".into(),
            "AUTOSCALE_INTERVAL_S=1".into(),
            "STARTUP_TIMEOUT_S=30".into(),
            "RUST_LOG=info".into(),
        ];
        env.extend(self.env.iter().cloned());
        let publish = format!("127.0.0.1:{}:8000", self.port);
        let own_label = format!("{}-orchestrator", self.label);
        let mut args = vec![
            "run",
            "-d",
            "--name",
            &self.orchestrator,
            "--label",
            &own_label,
            "--network",
            &self.network,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-p",
            &publish,
        ];
        for value in &env {
            args.extend(["-e", value.as_str()]);
        }
        args.push(ORCHESTRATOR_IMAGE);
        assert!(
            !docker(&args).is_empty(),
            "docker run of the orchestrator failed"
        );
        wait_for("the orchestrator's API", secs(30), || async {
            self.client
                .get(self.url("/health/live"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        })
        .await;
    }

    /// Removes the orchestrator and its database (the services stay).
    fn remove_orchestrator(&self) {
        docker(&["rm", "-f", "-v", &self.orchestrator]);
    }

    fn logs(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["logs", &self.orchestrator])
            .output()
            .expect("docker CLI");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = self.client.get(self.url(path)).send().await.ok()?;
        response.json().await.ok()
    }

    async fn engines(&self) -> Vec<Value> {
        self.get("/engines")
            .await
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }

    /// Waits until exactly `count` engines are healthy, and answers them.
    async fn healthy_engines(&self, count: usize, deadline: Duration) -> Vec<Value> {
        wait_for(&format!("{count} healthy engines"), deadline, || async {
            let engines = self.engines().await;
            (engines.len() == count && engines.iter().all(|e| e["health_status"] == "healthy"))
                .then_some(engines)
        })
        .await
    }

    async fn transitions(&self, id: &str) -> Vec<String> {
        self.get(&format!("/engines/{id}/health"))
            .await
            .and_then(|h| h["transitions"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|t| format!("{} -> {}: {}", t["from"], t["to"], t["reason"]))
            .collect()
    }

    /// Our services: id → name.
    fn services(&self) -> Vec<(String, String)> {
        docker(&[
            "service",
            "ls",
            "--filter",
            &format!("label={}", self.label),
            "--format",
            "{{.ID}} {{.Name}}",
        ])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(id, name)| (id.to_owned(), name.to_owned()))
        .collect()
    }

    /// The running container of a service's task on this node.
    fn task_container(&self, service_id: &str) -> String {
        docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=com.docker.swarm.service.id={service_id}"),
            "--filter",
            "status=running",
        ])
    }
}

impl Drop for SwarmTest {
    fn drop(&mut self) {
        // The orchestrator first: it would start new services.
        self.remove_orchestrator();
        let ids: Vec<String> = self.services().into_iter().map(|(id, _)| id).collect();
        if !ids.is_empty() {
            let mut args = vec!["service", "rm"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
        // The network goes once no task container is attached any more.
        let until = std::time::Instant::now() + secs(30);
        loop {
            let left = docker(&["ps", "-aq", "--filter", &format!("label={}", self.label)]);
            let removed = left.is_empty()
                && std::process::Command::new("docker")
                    .args(["network", "rm", &self.network])
                    .output()
                    .is_ok_and(|o| o.status.success());
            if removed {
                break;
            }
            if std::time::Instant::now() > until {
                eprintln!(
                    "swarm test {}: could not remove network {} (containers left: {left})",
                    self.id, self.network
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

async fn play(test: &SwarmTest) -> usize {
    let response = test
        .client
        .get(test.url("/ace/getstream?id=00112233445566778899aabbccddeeff00112233"))
        .send()
        .await
        .unwrap();
    common::read_ts_stream(response).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_run_as_services_are_adopted_after_a_restart_and_serve_streams() {
    let test = SwarmTest::new(
        22001,
        &[
            "MIN_REPLICAS=2",
            "MAX_REPLICAS=4",
            "ENGINE_PLACEMENT=node.role==manager",
            "ENGINE_MEMORY_LIMIT=64m",
            "ENGINE_CPU_LIMIT=0.5",
        ],
    );
    let started = std::time::Instant::now();
    test.start_orchestrator().await;

    // MIN_REPLICAS=2: two services, each a healthy engine reached by its
    // service name on the overlay network.
    let engines = test.healthy_engines(2, secs(60)).await;
    eprintln!("two healthy engines after {:?}", started.elapsed());
    let services = test.services();
    assert_eq!(services.len(), 2, "{services:?}");
    for engine in &engines {
        let id = engine["container_id"].as_str().unwrap();
        let name = engine["container_name"].as_str().unwrap();
        assert!(
            services
                .iter()
                .any(|(sid, sname)| id.starts_with(sid.as_str()) && sname == name),
            "engine {id} ({name}) is one of our services {services:?}"
        );
        assert_eq!(engine["host"], name, "reached by service name: {engine}");
        assert_eq!(engine["runtime"], "docker");
        // Labelled as ours on the service and on its task's container.
        let (key, value) = test.label.split_once('=').unwrap();
        let service_label = docker(&[
            "service",
            "inspect",
            "-f",
            &format!("{{{{index .Spec.Labels \"{key}\"}}}}"),
            id,
        ]);
        assert_eq!(service_label, value);
        let container = test.task_container(id);
        assert!(!container.is_empty(), "a running task container for {name}");
        let container_label = docker(&[
            "inspect",
            "-f",
            &format!("{{{{index .Config.Labels \"{key}\"}}}}"),
            &container,
        ]);
        assert_eq!(container_label, value);
        // Placement and limits as configured.
        let placement = docker(&[
            "service",
            "inspect",
            "-f",
            "{{json .Spec.TaskTemplate.Placement}} {{.Spec.TaskTemplate.Resources.Limits.MemoryBytes}} {{.Spec.TaskTemplate.Resources.Limits.NanoCPUs}}",
            id,
        ]);
        assert!(placement.contains("node.role==manager"), "{placement}");
        assert!(
            placement.contains("\"SpreadDescriptor\":\"node.id\""),
            "{placement}"
        );
        assert!(placement.ends_with(" 67108864 500000000"), "{placement}");
    }

    // A new orchestrator with a fresh database adopts both services from
    // their labels and starts none of its own.
    let before: Vec<String> = engines
        .iter()
        .map(|e| e["container_id"].as_str().unwrap().to_owned())
        .collect();
    test.remove_orchestrator();
    test.start_orchestrator().await;
    let adopted = test.healthy_engines(2, secs(30)).await;
    let mut after: Vec<String> = adopted
        .iter()
        .map(|e| e["container_id"].as_str().unwrap().to_owned())
        .collect();
    after.sort();
    let mut expected = before.clone();
    expected.sort();
    assert_eq!(after, expected, "the same engines, adopted");
    // Its autoscaler runs every second: three rounds without a new service.
    for _ in 0..3 {
        tokio::time::sleep(secs(1)).await;
        assert_eq!(
            test.services().len(),
            2,
            "no duplicates after adoption\n{}",
            test.logs()
        );
    }
    let logs = test.logs();
    assert_eq!(
        logs.matches("adopted a running engine container").count(),
        2,
        "{logs}"
    );
    assert!(!logs.contains("engine provisioned"), "{logs}");

    // The built-in proxy plays from a service.
    let bytes = play(&test).await;
    eprintln!(
        "played {bytes} bytes through the proxy after {:?}",
        started.elapsed()
    );
    let streams = test.get("/streams?status=started").await.unwrap();
    let on = streams[0]["container_id"].as_str().unwrap();
    assert!(
        before.iter().any(|id| id == on)
            || test
                .services()
                .iter()
                .any(|(sid, _)| on.starts_with(sid.as_str())),
        "{streams}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_is_rescheduled_and_its_engine_recovers() {
    let test = SwarmTest::new(22002, &["MIN_REPLICAS=1", "MAX_REPLICAS=2"]);
    test.start_orchestrator().await;
    let engine = test.healthy_engines(1, secs(60)).await.remove(0);
    let id = engine["container_id"].as_str().unwrap().to_owned();
    let container = test.task_container(&id);
    assert!(!container.is_empty());

    let killed = std::time::Instant::now();
    docker(&["kill", &container]);
    // Swarm starts a new task for the same service: the same engine, healthy
    // again, with what happened in its history.
    let history = wait_for(
        "the engine healthy again on a new task",
        secs(60),
        || async {
            let replaced = test.task_container(&id);
            if replaced.is_empty() || replaced == container {
                return None;
            }
            let engines = test.engines().await;
            let healthy = engines.len() == 1
                && engines[0]["container_id"] == id.as_str()
                && engines[0]["health_status"] == "healthy";
            let history = test.transitions(&id).await;
            let recovered = history
                .iter()
                .any(|t| t.starts_with("\"unhealthy\" -> \"healthy\""));
            (healthy && recovered && history.iter().any(|t| t.contains("Swarm replaced task")))
                .then_some(history)
        },
    )
    .await;
    eprintln!(
        "recovered {:?} after the kill; history (newest first):\n{}",
        killed.elapsed(),
        history.join("\n")
    );
    assert!(
        history
            .iter()
            .any(|t| t.contains("its container died (exit code 137)")),
        "{history:?}"
    );
    assert!(
        history
            .iter()
            .any(|t| t.contains("\"healthy\" -> \"unhealthy\"")),
        "the engine was unhealthy while its task was down: {history:?}"
    );
    assert_eq!(
        test.services().len(),
        1,
        "Swarm rescheduled it; nothing was added"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_removed_by_hand_is_replaced() {
    let test = SwarmTest::new(
        22003,
        &[
            "MIN_REPLICAS=1",
            "MAX_REPLICAS=2",
            "API_KEY=swarm-test-key",
            "PROVISION_ALLOWED_IMAGES=acestream-engine-sim:latest,acestream-no-such-image:1",
        ],
    );
    test.start_orchestrator().await;
    let engine = test.healthy_engines(1, secs(60)).await.remove(0);
    let id = engine["container_id"].as_str().unwrap().to_owned();

    docker(&["service", "rm", &id]);
    let replacement = wait_for(
        "a new engine in place of the removed service",
        secs(60),
        || async {
            let engines = test.engines().await;
            (engines.len() == 1
                && engines[0]["container_id"] != id.as_str()
                && engines[0]["health_status"] == "healthy")
                .then(|| engines[0].clone())
        },
    )
    .await;
    let services = test.services();
    assert_eq!(services.len(), 1, "{services:?}");
    assert!(replacement["container_id"]
        .as_str()
        .unwrap()
        .starts_with(services[0].0.as_str()));
    let logs = test.logs();
    assert!(logs.contains("engine container is gone"), "{logs}");

    // An image no node has: Swarm rejects the first task, the caller hears
    // which image, and no service is left behind.
    let response = test
        .client
        .post(test.url("/provision"))
        .bearer_auth("swarm-test-key")
        .json(&serde_json::json!({ "image": "acestream-no-such-image:1" }))
        .timeout(secs(30))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("acestream-no-such-image:1"),
        "{body}"
    );
    assert_eq!(test.services().len(), 1, "the rejected service was removed");
}

/// `deploy/swarm/stack.yml` is a valid stack file (as the Docker CLI reads
/// it), says what docs/SCALING.md says it does, and its environment is one
/// the orchestrator accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_file_is_valid_and_its_settings_are_accepted() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/swarm/stack.yml");
    let out = std::process::Command::new("docker")
        .args(["stack", "config", "-c", path])
        .output()
        .expect("docker CLI");
    let config = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "docker stack config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        // The orchestrator on a manager, on the node that holds its volume.
        "- node.role == manager",
        "- node.labels.acestream.orchestrator == true",
        "target: /data",
        "target: /var/run/docker.sock",
        "replicas: 1",
        // The overlay network the engines join, under the name SWARM_NETWORK gives.
        "RUNTIME: swarm",
        "SWARM_NETWORK: acestream",
        "name: acestream\n    driver: overlay\n    attachable: true",
        "ENGINE_PLACEMENT: node.labels.acestream==true",
    ] {
        assert!(config.contains(expected), "'{expected}' not in:\n{config}");
    }
    // Its environment, as the orchestrator gets it, passes the configuration
    // checks: the binary starts (on a daemon that is not there, so that
    // nothing is created here).
    let mut env: Vec<(String, String)> = config
        .lines()
        .skip_while(|l| l.trim() != "environment:")
        .skip(1)
        .take_while(|l| l.starts_with("      "))
        .filter_map(|l| l.trim().split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect();
    assert!(env.len() >= 8, "{env:?}");
    env.push((
        "DOCKER_HOST".into(),
        "unix:///nonexistent/docker.sock".into(),
    ));
    env.push((
        "CONTAINER_LABEL".into(),
        format!("ondemand.app={}", common::unique("stack")),
    ));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut orch = common::Orch::start(dir.path(), &env).await;
    assert!(
        orch.logs().contains("engines run as Docker Swarm services"),
        "{}",
        orch.logs()
    );
    orch.terminate().await;
}
