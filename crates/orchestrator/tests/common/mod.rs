//! Test harness: the real `acestream-orchestrator` binary and real
//! `acestream-engine-sim` processes on ephemeral loopback ports.

#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Polls `condition` until it returns `Some`, or fails the test after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        if Instant::now() > until {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn target_dir() -> PathBuf {
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target profile directory")
        .to_path_buf()
}

/// The engine emulator binary, built once if this test run did not build it.
pub fn sim_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let path = target_dir().join("acestream-engine-sim");
            if !path.exists() {
                let status = std::process::Command::new(env!("CARGO"))
                    .args(["build", "-p", "acestream-engine-sim"])
                    .status()
                    .expect("cargo build -p acestream-engine-sim");
                assert!(status.success(), "building acestream-engine-sim failed");
            }
            path
        })
        .clone()
}

/// One emulator process serving one or more engines.
pub struct Sim {
    child: Child,
    pub control: String,
    pub ports: Vec<u16>,
    client: reqwest::Client,
}

impl Sim {
    pub async fn start(count: usize) -> Sim {
        Self::start_with(&["--count", &count.to_string()]).await
    }

    pub async fn start_with(args: &[&str]) -> Sim {
        let mut child = Command::new(sim_binary())
            .args(["--http-port", "0", "--control-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn acestream-engine-sim");
        let stdout = child.stdout.take().expect("sim stdout");
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("READY") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("acestream-engine-sim printed no READY line");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut control = String::new();
        let mut ports = Vec::new();
        for field in ready.split_whitespace() {
            if let Some(addr) = field.strip_prefix("control=") {
                control = addr.to_owned();
            } else if let Some(list) = field.strip_prefix("engines=") {
                ports = list
                    .split(',')
                    .map(|a| a.rsplit(':').next().unwrap().parse().unwrap())
                    .collect();
            }
        }
        assert!(
            !control.is_empty() && !ports.is_empty(),
            "bad READY line: {ready}"
        );
        Sim {
            child,
            control,
            ports,
            client: reqwest::Client::new(),
        }
    }

    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Switches engine `index` (or all, with `None`) to `mode`.
    pub async fn set_mode(&self, index: Option<usize>, mode: &str) {
        let mut body = json!({ "mode": mode });
        if let Some(i) = index {
            body["engine"] = json!(i);
        }
        let response = self
            .client
            .post(format!("http://{}/control/mode", self.control))
            .json(&body)
            .send()
            .await
            .expect("sim control");
        assert!(response.status().is_success(), "sim refused mode {mode}");
    }

    pub async fn state(&self) -> Value {
        self.client
            .get(format!("http://{}/control/state", self.control))
            .send()
            .await
            .expect("sim control")
            .json()
            .await
            .expect("sim state json")
    }

    /// Sum of one number of every engine of this emulator's state.
    async fn engines_total(&self, field: &str) -> u64 {
        self.state().await["engines"]
            .as_array()
            .expect("sim state has engines")
            .iter()
            .map(|e| e[field].as_u64().unwrap_or(0))
            .sum()
    }

    /// Playback streams open on this emulator's engines right now.
    pub async fn open_streams(&self) -> u64 {
        self.engines_total("open_streams").await
    }

    /// Playback streams ever asked of this emulator's engines.
    pub async fn streams_asked(&self) -> u64 {
        self.engines_total("streams_total").await
    }

    /// A real crash: the process dies, connections are refused.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// The orchestrator under test.
pub struct Orch {
    child: Option<Child>,
    pub base: String,
    pub db: PathBuf,
    pub client: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
    env: Vec<(String, String)>,
}

impl Orch {
    /// `GET /streams?status=started`.
    pub async fn started_streams(&self) -> Vec<Value> {
        self.get("/streams?status=started")
            .await
            .1
            .as_array()
            .expect("a list of streams")
            .clone()
    }

    /// Starts with a fresh database in `dir` and fast health settings.
    pub async fn start(dir: &Path, env: &[(&str, &str)]) -> Orch {
        let db = dir.join("orchestrator.db");
        let mut env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Its own label, kept across restarts: never adopts another test's (or a
        // user's) containers.
        if !env.iter().any(|(k, _)| k == "CONTAINER_LABEL") {
            env.insert(
                0,
                (
                    "CONTAINER_LABEL".into(),
                    format!("ondemand.app=test-{}", uuid::Uuid::new_v4().simple()),
                ),
            );
        }
        let mut orch = Orch {
            child: None,
            base: String::new(),
            db,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            logs: Arc::new(Mutex::new(Vec::new())),
            env,
        };
        orch.spawn().await;
        orch
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_acestream-orchestrator"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("DB_URL", format!("sqlite:///{}", self.db.display()))
            .env("HEALTH_CHECK_INTERVAL_S", "0.5")
            .env("HEALTH_CHECK_TIMEOUT_S", "0.4")
            .env("COLLECT_INTERVAL_S", "0.5")
            .env("RUST_LOG", "info")
            .current_dir(self.db.parent().unwrap());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn acestream-orchestrator");
        let stderr = child.stderr.take().unwrap();
        let logs = self.logs.clone();
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("TEST_LOG").is_some() {
                    eprintln!("[orch] {line}");
                }
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .filter(|_| line.contains("listening"))
                {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.trim().to_owned());
                    }
                }
                logs.lock().push(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_else(|| {
                panic!(
                    "orchestrator did not start:\n{}",
                    self.logs.lock().join("\n")
                )
            });
        self.base = format!("http://{addr}");
        self.child = Some(child);
    }

    /// The process id of the running orchestrator.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The `CONTAINER_LABEL` this orchestrator manages.
    pub fn label(&self) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == "CONTAINER_LABEL")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().join("\n")
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("POST");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn register(&self, port: u16) -> String {
        let (status, body) = self
            .post("/engines", json!({ "host": "127.0.0.1", "port": port }))
            .await;
        assert!(
            status == 201 || status == 200,
            "register {port}: {status} {body}"
        );
        body["container_id"].as_str().unwrap().to_owned()
    }

    pub async fn engine(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/engines/{id}")).await;
        assert_eq!(status, 200, "GET /engines/{id}: {body}");
        body["engine"].clone()
    }

    /// The `/metrics` text (empty if it cannot be read).
    pub async fn metrics(&self) -> String {
        match self.client.get(self.url("/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// One value of `/metrics` now, by its name with labels as printed.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics().await, series)
    }

    pub async fn wait_health(&self, id: &str, want: &str, deadline: Duration) -> Value {
        wait_for(&format!("{id} to be {want}"), deadline, || async {
            let engine = self.engine(id).await;
            (engine["health_status"] == want).then_some(engine)
        })
        .await
    }

    /// `kill -9`: no chance to flush anything.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9");
        }
    }

    /// SIGTERM, then waits for the exit; returns the exit code and how long it took.
    pub async fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.child.take().expect("running orchestrator");
        let pid = child.id().expect("pid");
        let started = Instant::now();
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill -TERM");
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("orchestrator did not exit within 10s of SIGTERM")
            .expect("wait");
        (status.code(), started.elapsed())
    }

    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.terminate().await;
        }
        self.spawn().await;
    }
}

/// One value in a `/metrics` text, by its name with labels exactly as
/// printed (`orch_hls_requests_total{file="segment",result="ok"}`).
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

pub fn started_event(port: u16, key: &str, session: &str) -> Value {
    json!({
        "engine": { "host": "127.0.0.1", "port": port },
        "stream": { "key_type": "infohash", "key": key },
        "session": {
            "playback_session_id": session,
            "stat_url": format!("http://127.0.0.1:{port}/ace/stat/{key}/{session}"),
            "command_url": format!("http://127.0.0.1:{port}/ace/cmd/{key}/{session}"),
            "is_live": 1
        }
    })
}

/// Builds the engine emulator image once per test process (quick when it is
/// up to date; the script locks against other processes).
pub fn ensure_engine_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    ensure_image(&BUILT, "engine-sim-image");
}

/// Builds the orchestrator's own image (`Dockerfile`) once per test process.
pub fn ensure_orchestrator_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    ensure_image(&BUILT, "orchestrator-image");
}

fn ensure_image(built: &OnceLock<Result<(), String>>, script: &str) {
    let result = built.get_or_init(|| {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../scripts")
            .join(script);
        let status = std::process::Command::new(&script)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("{} failed ({status})", script.display()))
    });
    if let Err(e) = result {
        panic!("the image is needed for this test: {e}");
    }
}

/// Runs the docker CLI and returns its stdout (trimmed).
pub fn docker(args: &[&str]) -> String {
    let out = std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Removes every container carrying `label` when dropped, whatever happened.
/// It first kills the orchestrator that manages them (`pid`), which would
/// otherwise start new ones (MIN_REPLICAS, replacements) after the cleanup.
pub struct LabelCleanup {
    pub label: String,
    pub pid: Option<u32>,
}

impl LabelCleanup {
    pub fn containers(&self) -> Vec<String> {
        docker(&[
            "ps",
            "-aq",
            "--no-trunc",
            "--filter",
            &format!("label={}", self.label),
        ])
        .lines()
        .map(str::to_owned)
        .collect()
    }

    fn remove_all(&self) {
        let ids = self.containers();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            docker(&args);
        }
    }
}

impl Drop for LabelCleanup {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            self.remove_all();
            // A create the orchestrator sent just before it died may still land.
            std::thread::sleep(Duration::from_millis(500));
        }
        self.remove_all();
    }
}

/// A short H.264/AAC test video (`seconds` long) for emulated engines, made
/// once per test run by scripts/make-test-video (which needs ffmpeg; the
/// test command installs it).
pub fn test_video(seconds: u32) -> String {
    static VIDEOS: OnceLock<Mutex<std::collections::BTreeMap<u32, String>>> = OnceLock::new();
    let mut videos = VIDEOS.get_or_init(Default::default).lock();
    videos
        .entry(seconds)
        .or_insert_with(|| {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/make-test-video");
            let out = format!("{}/test-video-{seconds}s.ts", env!("CARGO_TARGET_TMPDIR"));
            let made = std::process::Command::new(script)
                .args([&out, &seconds.to_string()])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
            assert!(
                made.status.success(),
                "{script} failed: {}\nThe video tests need ffmpeg: apt-get install ffmpeg (scripts/test installs it)",
                String::from_utf8_lossy(&made.stderr)
            );
            out
        })
        .clone()
}

/// A name no other test (or run) uses.
pub fn unique(what: &str) -> String {
    format!("test-{what}-{}", uuid::Uuid::new_v4().simple())
}

/// The Gluetun emulator's image, built once per test process.
pub fn ensure_gluetun_image() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    ensure_image(&BUILT, "gluetun-sim-image");
}

/// A Gluetun node: the Gluetun emulator (acestream-gluetun-sim) in a
/// container of its own, its control server published on a loopback port
/// and protected by `key`. Removed with the containers of its label.
pub struct GluetunNode {
    pub name: String,
    /// The control server's port on the host.
    pub port: u16,
    key: String,
}

impl GluetunNode {
    /// `env`: `KEY=value` for the emulator; `extra`: more `docker run`
    /// arguments (engine ports to publish).
    pub fn start(name: &str, label: &str, key: &str, env: &[&str], extra: &[&str]) -> GluetunNode {
        ensure_gluetun_image();
        let auth = format!(
            r#"HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE={{"auth":"apikey","apikey":"{key}"}}"#
        );
        let mut args = vec![
            "run",
            "-d",
            "--name",
            name,
            "--label",
            label,
            "-p",
            "127.0.0.1::8000",
            "-e",
            &auth,
        ];
        for e in env {
            args.extend(["-e", e]);
        }
        args.extend_from_slice(extra);
        args.push("acestream-gluetun-sim:latest");
        assert!(!docker(&args).is_empty(), "docker run {name} failed");
        let mapped = docker(&["port", name, "8000/tcp"]);
        let port = mapped
            .lines()
            .next()
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no published port for {name}: {mapped}"));
        GluetunNode {
            name: name.to_owned(),
            port,
            key: key.to_owned(),
        }
    }

    /// Drops or restores the tunnel, as one does with the real Gluetun.
    pub async fn set_tunnel(&self, status: &str) {
        self.put("/v1/vpn/status", json!({ "status": status }))
            .await;
    }

    /// A PUT to the control server, with the key.
    pub async fn put(&self, path: &str, body: Value) {
        let response = reqwest::Client::new()
            .put(format!("http://127.0.0.1:{}{path}", self.port))
            .header("X-API-Key", &self.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
    }
}

/// Reads the first 200 KB of a `/ace/getstream` answer: a 200 of
/// `video/mp2t`, bytes within 10 s each, whole TS packets from the first
/// byte. Answers what was read.
pub async fn read_ts_stream(mut response: reqwest::Response) -> Vec<u8> {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "video/mp2t");
    let mut received = Vec::new();
    while received.len() < 200_000 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("bytes within 10 s")
            .unwrap()
            .expect("the stream goes on");
        received.extend_from_slice(&chunk);
    }
    assert!(
        received.chunks(188).all(|packet| packet[0] == 0x47),
        "whole MPEG-TS packets from the first byte"
    );
    received
}
