//! `DockerRuntime` against the real Docker daemon, with engines from the
//! `acestream-engine-sim:latest` image (built by `scripts/engine-sim-image`,
//! which the first test here runs; it is quick when the image is up to date).
//!
//! Each test marks its containers with its own label value and removes them
//! (by label) when it ends, even when it fails. Engines are reached only
//! through ports published on 127.0.0.1.
//!
//! `ENGINE_SIM_IMAGE=name:tag` uses that (prebuilt) image instead, without
//! running the build script.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use orchestrator::ports::PortRange;
use orchestrator::ports::{host_port_is_free, PortAllocator};
use orchestrator::runtime::Label;
use orchestrator::runtime::{
    ContainerRuntime, ContainerSpec, ContainerStatus, DockerRuntime, EventStream, PortMapping,
    RuntimeError, RuntimeEventKind,
};
use tokio::time::Instant;

const HTTP_PORT: u16 = 40000;
const HTTPS_PORT: u16 = 45000;
const STARTUP_DEADLINE: Duration = Duration::from_secs(25);
const EVENT_DEADLINE: Duration = Duration::from_secs(20);

fn image() -> String {
    std::env::var("ENGINE_SIM_IMAGE").unwrap_or_else(|_| "acestream-engine-sim:latest".into())
}

/// Builds (or confirms) the engine image once per test process; the script
/// itself holds a file lock against other processes.
fn ensure_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        if std::env::var_os("ENGINE_SIM_IMAGE").is_some() {
            return Ok(());
        }
        let script =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/engine-sim-image");
        let status = Command::new(&script)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{} failed ({status})", script.display()))
        }
    });
    if let Err(e) = result {
        panic!("the engine image is needed for these tests: {e}");
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn docker_async(args: &[&str]) {
    let status = tokio::process::Command::new("docker")
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("docker CLI");
    assert!(status.success(), "docker {args:?} failed");
}

/// A test's own label value; removes every container carrying it (and the
/// networks it created) when dropped, whatever happened.
struct Scope {
    label: Label,
    networks: Vec<String>,
}

impl Scope {
    fn new(test: &str) -> Self {
        ensure_image();
        Self {
            label: Label {
                key: "ondemand.app".into(),
                value: format!("test-{test}-{}", uuid::Uuid::new_v4().simple()),
            },
            networks: Vec::new(),
        }
    }

    fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.label.value)
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.label.key.clone(), self.label.value.clone())])
    }

    fn engine(&self, suffix: &str, host_port: Option<u16>) -> ContainerSpec {
        let mut labels = self.labels();
        labels.insert("acestream.http_port".into(), HTTP_PORT.to_string());
        labels.insert("acestream.https_port".into(), HTTPS_PORT.to_string());
        if let Some(port) = host_port {
            labels.insert("host.http_port".into(), port.to_string());
        }
        ContainerSpec {
            name: self.name(suffix),
            image: image(),
            env: vec![(
                "CONF".into(),
                format!("--http-port={HTTP_PORT}\n--https-port={HTTPS_PORT}\n--bind-all"),
            )],
            labels,
            ports: vec![PortMapping {
                container_port: HTTP_PORT,
                host_port,
            }],
            network: None,
            ..Default::default()
        }
    }

    fn network(&mut self) -> String {
        let name = self.name("net");
        docker(&[
            "network",
            "create",
            "--label",
            &self.label.to_string(),
            &name,
        ]);
        self.networks.push(name.clone());
        name
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let filter = format!("label={}", self.label);
        let ids = docker(&["ps", "-aq", "--filter", &filter]);
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids);
            docker(&args);
        }
        for network in &self.networks {
            docker(&["network", "rm", network]);
        }
    }
}

/// Host ports for the tests of this process, never the same one twice.
fn host_port() -> u16 {
    static PORTS: OnceLock<PortAllocator> = OnceLock::new();
    PORTS
        .get_or_init(|| {
            PortAllocator::new(PortRange {
                start: 29100,
                end: 29899,
            })
        })
        .allocate_where(host_port_is_free)
        .expect("a free host port for the test")
}

fn runtime() -> Arc<dyn ContainerRuntime> {
    Arc::new(DockerRuntime::from_env())
}

/// Polls the engine's status method on 127.0.0.1:port until it answers JSON.
async fn wait_for_engine(port: u16, deadline: Duration) -> Result<serde_json::Value, String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/server/api?api_version=3&method=get_status");
    let until = Instant::now() + deadline;
    let mut last = String::new();
    while Instant::now() < until {
        match client.get(&url).send().await {
            Ok(response) if response.status().is_success() => match response.json().await {
                Ok(body) => return Ok(body),
                Err(e) => last = e.to_string(),
            },
            Ok(response) => last = format!("HTTP {}", response.status()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("{url} did not answer within {deadline:?}: {last}"))
}

async fn next_event(events: &mut EventStream) -> orchestrator::runtime::RuntimeEvent {
    tokio::time::timeout(EVENT_DEADLINE, events.next())
        .await
        .expect("an event in time")
        .expect("the event stream is still open")
        .expect("an event, not an error")
}

#[tokio::test]
async fn engine_starts_answers_is_listed_inspected_and_removed() {
    let scope = Scope::new("lifecycle");
    let rt = runtime();
    rt.ping().await.expect("docker answers");
    let port = host_port();

    let started = Instant::now();
    let info = rt
        .create_and_start(scope.engine("e1", Some(port)))
        .await
        .expect("the engine starts");
    let created_in = started.elapsed();
    let status = wait_for_engine(port, STARTUP_DEADLINE).await.unwrap();
    let answering_in = started.elapsed();
    eprintln!(
        "provisioning latency: create_and_start {created_in:?}, API answering after {answering_in:?}"
    );
    assert_eq!(status["result"]["status"], "idle");

    assert_eq!(info.name, scope.name("e1"));
    assert_eq!(info.image, image());
    assert_eq!(info.status, ContainerStatus::Running);
    assert_eq!(info.id.len(), 64, "full id: {}", info.id);
    assert_eq!(info.host_port(HTTP_PORT), Some(port));
    assert_eq!(info.labels.get("host.http_port"), Some(&port.to_string()));
    assert!(info.has_label(&scope.label));
    assert!(
        info.networks.get("bridge").is_some_and(|ip| !ip.is_empty()),
        "an address on the default network: {:?}",
        info.networks
    );
    let age = info
        .created
        .seconds_until(orchestrator::time::Timestamp::now());
    assert!((-5.0..60.0).contains(&age), "created {age}s ago");

    let listed = rt.list_managed(&scope.label).await.unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let item = &listed[0];
    assert_eq!(item.id, info.id);
    assert_eq!(item.name, info.name);
    assert_eq!(item.image, info.image);
    assert_eq!(item.status, ContainerStatus::Running);
    assert_eq!(item.labels, info.labels);
    assert_eq!(item.host_port(HTTP_PORT), Some(port));
    assert_eq!(item.created.millis() / 1000, info.created.millis() / 1000);

    let inspected = rt
        .inspect(&info.id)
        .await
        .unwrap()
        .expect("inspect finds it");
    assert_eq!(inspected, info);
    let by_name = rt.inspect(&info.name).await.unwrap().expect("by name too");
    assert_eq!(by_name.id, info.id);

    rt.stop_and_remove(&info.id).await.expect("removed");
    assert_eq!(rt.inspect(&info.id).await.unwrap(), None);
    assert!(rt.list_managed(&scope.label).await.unwrap().is_empty());
    assert_eq!(
        rt.stop_and_remove(&info.id).await,
        Err(RuntimeError::NotFound(info.id.clone()))
    );
}

#[tokio::test]
async fn docker_picks_the_host_port_when_none_is_given() {
    let scope = Scope::new("anyport");
    let rt = runtime();
    let info = rt
        .create_and_start(scope.engine("e1", None))
        .await
        .expect("the engine starts");
    let port = info
        .host_port(HTTP_PORT)
        .expect("the daemon published the port somewhere");
    wait_for_engine(port, STARTUP_DEADLINE).await.unwrap();
    // An image's EXPOSEd port that we did not publish shows without a host port.
    assert!(info
        .ports
        .iter()
        .any(|p| p.container_port == 6878 && p.host_port.is_none()));
}

#[tokio::test]
async fn events_follow_start_pause_unpause_die_destroy() {
    let scope = Scope::new("events");
    let rt = runtime();
    let mut events = rt.events(&scope.label).await.expect("subscribed");

    let info = rt
        .create_and_start(scope.engine("e1", Some(host_port())))
        .await
        .unwrap();
    let start = next_event(&mut events).await;
    assert_eq!(start.kind, RuntimeEventKind::Start);
    assert_eq!(start.container_id, info.id);
    assert_eq!(start.name.as_deref(), Some(info.name.as_str()));

    docker_async(&["pause", &info.id]).await;
    assert_eq!(next_event(&mut events).await.kind, RuntimeEventKind::Pause);
    assert_eq!(
        rt.inspect(&info.id).await.unwrap().unwrap().status,
        ContainerStatus::Paused
    );
    docker_async(&["unpause", &info.id]).await;
    assert_eq!(
        next_event(&mut events).await.kind,
        RuntimeEventKind::Unpause
    );

    rt.stop_and_remove(&info.id).await.unwrap();
    let die = next_event(&mut events).await;
    assert!(
        matches!(die.kind, RuntimeEventKind::Die { exit_code: Some(_) }),
        "{die:?}"
    );
    eprintln!("events: {die:?}");
    let destroy = next_event(&mut events).await;
    assert_eq!(destroy.kind, RuntimeEventKind::Destroy);
    for event in [&die, &destroy] {
        assert_eq!(event.container_id, info.id, "only our container: {event:?}");
    }
}

#[tokio::test]
async fn a_paused_engine_is_removed_promptly() {
    let scope = Scope::new("paused");
    let rt = runtime();
    let info = rt
        .create_and_start(scope.engine("e1", Some(host_port())))
        .await
        .unwrap();
    docker_async(&["pause", &info.id]).await;
    let started = Instant::now();
    rt.stop_and_remove(&info.id).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(rt.inspect(&info.id).await.unwrap(), None);
}

#[tokio::test]
async fn a_missing_image_is_image_not_found() {
    let scope = Scope::new("noimage");
    let rt = runtime();
    let mut spec = scope.engine("e1", None);
    spec.image = format!("acestream-no-such-image:{}", uuid::Uuid::new_v4().simple());
    assert_eq!(
        rt.create_and_start(spec.clone()).await,
        Err(RuntimeError::ImageNotFound(spec.image))
    );
}

#[tokio::test]
async fn a_duplicate_name_is_name_conflict_and_keeps_the_first() {
    let scope = Scope::new("dupname");
    let rt = runtime();
    let first = rt.create_and_start(scope.engine("e1", None)).await.unwrap();
    let again = rt.create_and_start(scope.engine("e1", None)).await;
    assert_eq!(again, Err(RuntimeError::NameConflict(scope.name("e1"))));
    let listed = rt.list_managed(&scope.label).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, first.id);
    assert_eq!(listed[0].status, ContainerStatus::Running);
}

#[tokio::test]
async fn a_taken_host_port_is_port_in_use_and_leaves_nothing_behind() {
    let scope = Scope::new("portinuse");
    let rt = runtime();
    let port = host_port();
    let _squatter = std::net::TcpListener::bind(("0.0.0.0", port)).expect("bind the port first");
    let result = rt.create_and_start(scope.engine("e1", Some(port))).await;
    match result {
        Err(RuntimeError::PortInUse { port: Some(p), .. }) => assert_eq!(p, port),
        other => panic!("expected PortInUse for {port}, got {other:?}"),
    }
    // The container that could not start was removed: the name is free again.
    assert!(rt.list_managed(&scope.label).await.unwrap().is_empty());
    let retry = rt
        .create_and_start(scope.engine("e1", Some(host_port())))
        .await
        .expect("the same name on another port");
    assert_eq!(retry.name, scope.name("e1"));
}

#[tokio::test]
async fn engines_join_the_configured_network() {
    let mut scope = Scope::new("network");
    let rt = runtime();
    let network = scope.network();
    let port = host_port();
    let mut spec = scope.engine("e1", Some(port));
    spec.network = Some(network.clone());
    let info = rt.create_and_start(spec).await.unwrap();
    assert_eq!(info.networks.keys().collect::<Vec<_>>(), vec![&network]);
    assert!(!info.networks[&network].is_empty(), "{:?}", info.networks);
    wait_for_engine(port, STARTUP_DEADLINE).await.unwrap();

    let mut missing = scope.engine("e2", None);
    missing.network = Some(scope.name("no-such-net"));
    assert_eq!(
        rt.create_and_start(missing).await,
        Err(RuntimeError::NetworkNotFound(scope.name("no-such-net")))
    );
}

#[tokio::test]
async fn an_absent_daemon_is_unreachable() {
    let label = Label {
        key: "ondemand.app".into(),
        value: "test-unreachable".into(),
    };
    let rt = DockerRuntime::new("unix:///nonexistent/docker.sock");
    for result in [
        rt.ping().await,
        rt.list_managed(&label).await.map(|_| ()),
        rt.inspect("x").await.map(|_| ()),
        rt.stop_and_remove("x").await,
        rt.events(&label).await.map(|_| ()),
    ] {
        match result {
            Err(RuntimeError::Unreachable(message)) => {
                assert!(message.contains("/nonexistent/docker.sock"), "{message}")
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
    }
    let spec = ContainerSpec {
        name: "x".into(),
        image: image(),
        env: vec![],
        labels: BTreeMap::new(),
        ports: vec![],
        network: None,
        ..Default::default()
    };
    assert!(matches!(
        rt.create_and_start(spec).await,
        Err(RuntimeError::Unreachable(_))
    ));

    // A socket nobody listens on any more: connection refused.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("docker.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let rt = DockerRuntime::new(format!("unix://{}", path.display()));
    assert!(matches!(rt.ping().await, Err(RuntimeError::Unreachable(_))));

    // A daemon that accepts and never answers: the call timeout fires.
    let path = dir.path().join("mute.sock");
    let _mute = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let rt = DockerRuntime::new(path.display().to_string())
        .with_call_timeout(Duration::from_millis(300));
    let started = Instant::now();
    match rt.ping().await {
        Err(RuntimeError::Unreachable(message)) => {
            assert!(message.contains("did not answer"), "{message}")
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
