//! The processes under test: locating (and building) the release binaries,
//! starting the engine emulators and the orchestrator, reading their start-up
//! lines, and stopping them again.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// Log lines kept from a child's stderr (the newest ones), for error messages.
const LOG_KEEP: usize = 200;

/// The workspace root: this crate lives in `<root>/crates/bench`.
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest.to_path_buf())
}

/// `<root>/target/release`, or `$CARGO_TARGET_DIR/release`.
pub fn release_dir() -> PathBuf {
    let root = workspace_root();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir).join("release"),
        None => root.join("target").join("release"),
    }
}

/// The cargo that runs us (`cargo run` sets `CARGO`), else the one that built
/// us, else `cargo` on PATH.
fn cargo_program() -> PathBuf {
    if let Some(cargo) = std::env::var_os("CARGO") {
        return PathBuf::from(cargo);
    }
    let built_with = PathBuf::from(env!("CARGO"));
    if built_with.exists() {
        return built_with;
    }
    PathBuf::from("cargo")
}

pub const BUILD_HINT: &str =
    "cargo build --release -p acestream-orchestrator -p acestream-engine-sim";

/// Variables cargo sets for the program it runs (besides `CARGO_PKG_*`).
const PACKAGE_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Runs `cargo build --release` for the two binaries, showing cargo's output.
pub fn build_release() -> anyhow::Result<()> {
    let cargo = cargo_program();
    eprintln!(
        "bench: building the release binaries ({BUILD_HINT}); cargo may wait for the build lock"
    );
    let started = std::time::Instant::now();
    let mut command = std::process::Command::new(&cargo);
    // `cargo run` hands us the package's variables (CARGO_MANIFEST_DIR=crates/bench,
    // CARGO_PKG_NAME=bench...). Some build scripts (ring's) track them, so passing
    // them on would make this build and every plain `cargo build` rebuild the
    // TLS stack and the orchestrator in turn, a minute each time.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_") || PACKAGE_VARS.contains(&key) {
            command.env_remove(key);
        }
    }
    let status = command
        .args([
            "build",
            "--release",
            "-p",
            "acestream-orchestrator",
            "-p",
            "acestream-engine-sim",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", cargo.display()))?;
    if !status.success() {
        bail!("`{BUILD_HINT}` failed ({status}); fix the build and run the benchmark again");
    }
    eprintln!(
        "bench: release binaries ready ({:.1}s)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Checks that `path` is an executable file, with a message that says how to get it.
pub fn require_binary(path: &Path, what: &str) -> anyhow::Result<()> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "{what} not found at {}; build it with `{BUILD_HINT}` (or pass its path)",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!("{what}: {} is not a file", path.display());
    }
    Ok(())
}

/// Keeps the last lines a child wrote to stderr.
#[derive(Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<Vec<String>>>,
    warnings: Arc<Mutex<Vec<String>>>,
}

impl LogTail {
    fn push(&self, line: String) {
        if line.contains("WARN") || line.contains("ERROR") {
            self.warnings.lock().push(line.clone());
        }
        let mut lines = self.lines.lock();
        if lines.len() >= LOG_KEEP {
            lines.remove(0);
        }
        lines.push(line);
    }

    pub fn text(&self) -> String {
        self.lines.lock().join("\n")
    }

    /// WARN and ERROR lines seen so far.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().clone()
    }
}

/// Reads `stream` line by line into `tail` until it closes; the first line for
/// which `pick` answers `Some` is sent on `found`.
fn drain_lines<R>(
    stream: R,
    tail: LogTail,
    mut found: Option<oneshot::Sender<String>>,
    pick: fn(&str) -> Option<String>,
) where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if found.is_some() {
                if let Some(value) = pick(&line) {
                    if let Some(tx) = found.take() {
                        let _ = tx.send(value);
                    }
                    // The READY line is long and says nothing more; keep it out of the tail.
                    continue;
                }
            }
            tail.push(line);
        }
    });
}

/// One `acestream-engine-sim` process serving `count` engines.
pub struct Sim {
    child: Child,
    pub ports: Vec<u16>,
    /// `host:port` of the control listener (`/control/...`).
    pub control: Option<String>,
}

impl Sim {
    pub async fn start(binary: &Path, count: usize, mode: &str) -> anyhow::Result<Sim> {
        Sim::start_with(binary, count, mode, &[]).await
    }

    /// Like [`Sim::start`], with more command-line arguments (`--ts-file PATH`...).
    pub async fn start_with(
        binary: &Path,
        count: usize,
        mode: &str,
        extra_args: &[String],
    ) -> anyhow::Result<Sim> {
        let mut child = Command::new(binary)
            .args(["--http-port", "0", "--control-port", "0"])
            .args(["--count", &count.to_string(), "--mode", mode])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let tail = LogTail::default();
        let (tx, rx) = oneshot::channel();
        drain_lines(
            child.stdout.take().context("sim stdout")?,
            tail.clone(),
            Some(tx),
            |line| line.starts_with("READY").then(|| line.to_owned()),
        );
        drain_lines(
            child.stderr.take().context("sim stderr")?,
            tail.clone(),
            None,
            |_| None,
        );
        let ready = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(line)) => line,
            _ => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "acestream-engine-sim ({count} engines, mode {mode}) printed no READY line{}:\n{}",
                    status.map(|s| format!(" and exited ({s})")).unwrap_or_default(),
                    tail.text()
                );
            }
        };
        let mut ports = Vec::new();
        let mut control = None;
        for field in ready.split_whitespace() {
            if let Some(addr) = field.strip_prefix("control=") {
                control = (addr != "none").then(|| addr.to_owned());
            }
            if let Some(list) = field.strip_prefix("engines=") {
                for addr in list.split(',') {
                    let port = addr
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .with_context(|| {
                            format!("bad engine address '{addr}' in the READY line")
                        })?;
                    ports.push(port);
                }
            }
        }
        if ports.len() != count {
            bail!(
                "acestream-engine-sim announced {} engines, {count} expected",
                ports.len()
            );
        }
        Ok(Sim {
            child,
            ports,
            control,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

/// Settings the orchestrator is started with.
pub struct OrchSettings {
    pub interval_s: f64,
    pub timeout_s: f64,
    pub collect_interval_s: f64,
    /// More `KEY=VALUE` pairs (`--orch-env`), applied last.
    pub extra_env: Vec<(String, String)>,
}

/// The orchestrator under test.
pub struct Orch {
    child: Child,
    pub base: String,
    pub tail: LogTail,
}

impl Orch {
    pub async fn start(binary: &Path, dir: &Path, settings: &OrchSettings) -> anyhow::Result<Orch> {
        let db = dir.join("orchestrator.db");
        let mut cmd = Command::new(binary);
        // A clean environment, and a working directory without a `.env`.
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("DB_URL", format!("sqlite:///{}", db.display()))
            .env("HEALTH_CHECK_INTERVAL_S", settings.interval_s.to_string())
            .env("HEALTH_CHECK_TIMEOUT_S", settings.timeout_s.to_string())
            .env(
                "COLLECT_INTERVAL_S",
                settings.collect_interval_s.to_string(),
            )
            .env("RUST_LOG", "warn,orchestrator::app=info")
            .current_dir(dir);
        for (key, value) in &settings.extra_env {
            cmd.env(key, value);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let tail = LogTail::default();
        let (tx, rx) = oneshot::channel();
        drain_lines(
            child.stderr.take().context("orchestrator stderr")?,
            tail.clone(),
            Some(tx),
            |line| {
                if !line.contains("listening") {
                    return None;
                }
                let addr = line.split("addr=").nth(1)?;
                Some(addr.split_whitespace().next().unwrap_or(addr).to_owned())
            },
        );
        let addr = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(addr)) => addr,
            _ => {
                let status = child.try_wait().ok().flatten();
                bail!(
                    "the orchestrator did not print its `listening addr=` line{}:\n{}",
                    status
                        .map(|s| format!(" and exited ({s})"))
                        .unwrap_or_default(),
                    tail.text()
                );
            }
        };
        Ok(Orch {
            child,
            base: format!("http://{addr}"),
            tail,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// An error if the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "the orchestrator exited ({status}); its last log lines:\n{}",
                self.tail.text()
            );
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
