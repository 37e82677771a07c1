//! `--proxy`: the built-in stream proxy (`GET /ace/getstream`) against the
//! release orchestrator and engine emulators serving real MPEG-TS video.
//!
//! Parts (`--proxy-parts`, all by default):
//! - `ttfb`: time to the first body byte for a viewer joining a running session;
//! - `fanout`: one ~8 Mbit/s stream to 1, 100, 500, 1,000 viewers: orchestrator
//!   CPU and RSS, bytes each viewer received against the stream's rate;
//! - `crash`, `hang`: forced failovers (engine put in `refuse` or `hang`), the
//!   longest time between two chunks at a viewer around each one;
//! - `headroom`: hang failovers with `PROXY_HEADROOM_S=5`;
//! - `sessions`: 150 contents on 75 engines, one viewer each.
//!
//! Viewers are cheap: a task each on the one runtime, a raw HTTP/1.0 request
//! (so the body is the bytes, no chunk framing), reads into a reused buffer,
//! bytes counted, nothing parsed.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::phases::{self, LatencyStats};
use crate::procs::{self, Orch, OrchSettings, Sim};
use crate::report::Machine;
use crate::sampler::{kb_to_mb, PhaseUsage, Sampler, Watched};

/// Targets.
const FANOUT_TARGET_VIEWERS: usize = 500;
const FANOUT_CPU_PERCENT: f64 = 100.0;
const FANOUT_RSS_MB: f64 = 96.0;
/// "Full rate": every viewer got at least this share of the stream's bytes
/// over the window (the window's edges cost up to one 40 ms engine tick).
const FULL_RATE_PERCENT: f64 = 98.0;
const TTFB_MS: f64 = 50.0;
const CRASH_GAP_MS: f64 = 1000.0;
/// Added to PROXY_STALL_S for the hang target.
const HANG_SLACK_MS: f64 = 1000.0;
/// A longest inter-chunk gap at or under this is not a visible gap: the
/// emulator sends every 40 ms and a paced viewer's chunks are that far apart.
const NO_VISIBLE_GAP_MS: f64 = 250.0;

const STALL_S: f64 = 2.0;
const HEADROOM_S: f64 = 5.0;
const READ_BUF: usize = 32 * 1024;

pub const ALL_PARTS: &[&str] = &["ttfb", "fanout", "crash", "hang", "headroom", "sessions"];

pub struct ProxyConfig {
    pub orch_bin: PathBuf,
    pub sim_bin: PathBuf,
    pub viewer_steps: Vec<usize>,
    pub step: Duration,
    pub bitrate: String,
    pub size: String,
    /// `None`: one more than the failovers a session goes through, plus one.
    pub engines: Option<usize>,
    pub joins: usize,
    pub failovers: usize,
    pub headroom_failovers: usize,
    pub sessions: usize,
    pub session_engines: usize,
    pub parts: HashSet<String>,
    pub extra_env: Vec<(String, String)>,
    pub json: bool,
}

// ---------------------------------------------------------------- video

pub(crate) fn make_video(
    out: &Path,
    seconds: u32,
    size: Option<&str>,
    bitrate: Option<&str>,
) -> anyhow::Result<()> {
    let script = procs::workspace_root().join("scripts/make-test-video");
    let mut cmd = std::process::Command::new(&script);
    if let Some(size) = size {
        cmd.args(["--size", size]);
    }
    if let Some(bitrate) = bitrate {
        cmd.args(["--bitrate", bitrate]);
    }
    let status = cmd
        .arg(out)
        .arg(seconds.to_string())
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

/// Bytes per second of a TS file, from the first and last PCR of its first
/// PCR PID (as the emulator measures it).
pub(crate) fn ts_byte_rate(path: &Path) -> anyhow::Result<f64> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pcr_pid = None;
    let mut first: Option<(usize, u64)> = None;
    let mut last: Option<(usize, u64)> = None;
    for (i, p) in data.chunks_exact(188).enumerate() {
        let has_adaptation = (p[3] >> 4) & 2 != 0;
        if p[0] != 0x47 || !has_adaptation || p[4] < 7 || p[5] & 0x10 == 0 {
            continue;
        }
        let pid = (u16::from(p[1] & 0x1f) << 8) | u16::from(p[2]);
        if *pcr_pid.get_or_insert(pid) != pid {
            continue;
        }
        let b = &p[6..12];
        let base = (u64::from(b[0]) << 25)
            | (u64::from(b[1]) << 17)
            | (u64::from(b[2]) << 9)
            | (u64::from(b[3]) << 1)
            | (u64::from(b[4]) >> 7);
        let pcr = base * 300 + ((u64::from(b[4] & 1) << 8) | u64::from(b[5]));
        if first.is_none() {
            first = Some((i * 188, pcr));
        } else {
            last = Some((i * 188, pcr));
        }
    }
    match (first, last) {
        (Some((o1, p1)), Some((o2, p2))) if p2 > p1 => {
            Ok((o2 - o1) as f64 / ((p2 - p1) as f64 / 27_000_000.0))
        }
        _ => bail!(
            "{} has no two PCRs to measure its rate from",
            path.display()
        ),
    }
}

// ---------------------------------------------------------------- viewers

struct Gaps {
    last: Option<Instant>,
    max: Duration,
}

/// What one viewer saw.
struct ViewerStats {
    bytes: AtomicU64,
    connected: AtomicBool,
    done: AtomicBool,
    error: Mutex<Option<String>>,
    gaps: Option<Mutex<Gaps>>,
}

impl ViewerStats {
    fn new(track_gaps: bool) -> Arc<Self> {
        Arc::new(ViewerStats {
            bytes: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            done: AtomicBool::new(false),
            error: Mutex::new(None),
            gaps: track_gaps.then(|| {
                Mutex::new(Gaps {
                    last: None,
                    max: Duration::ZERO,
                })
            }),
        })
    }

    fn got(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(gaps) = &self.gaps {
            let now = Instant::now();
            let mut g = gaps.lock();
            if let Some(last) = g.last {
                g.max = g.max.max(now - last);
            }
            g.last = Some(now);
        }
    }

    fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn reset_gap(&self) {
        if let Some(gaps) = &self.gaps {
            gaps.lock().max = Duration::ZERO;
        }
    }

    /// The longest gap since the reset, the one still open included.
    fn max_gap(&self) -> Duration {
        let Some(gaps) = &self.gaps else {
            return Duration::ZERO;
        };
        let g = gaps.lock();
        let open = g.last.map(|l| l.elapsed()).unwrap_or_default();
        g.max.max(open)
    }

    fn error(&self) -> Option<String> {
        self.error.lock().clone()
    }
}

/// Sends a raw HTTP/1.0 GET and reads the headers; answers the stream and how
/// many body bytes came with the headers.
async fn open(addr: SocketAddr, path: &str) -> anyhow::Result<(TcpStream, usize)> {
    let mut stream = TcpStream::connect(addr).await.context("connect")?;
    stream.set_nodelay(true).ok();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .context("send the request")?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.context("read the headers")?;
        if n == 0 {
            bail!(
                "closed before the headers ended: {}",
                String::from_utf8_lossy(&head)
            );
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
            let status = text.split_whitespace().nth(1).unwrap_or("");
            if status != "200" {
                // The error body is short JSON; give it a moment to arrive.
                let _ = tokio::time::timeout(Duration::from_millis(500), async {
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                })
                .await;
                bail!(
                    "answered {}",
                    String::from_utf8_lossy(&head).replace("\r\n", " | ")
                );
            }
            if text.contains("transfer-encoding: chunked") {
                bail!("a chunked answer to HTTP/1.0: byte counts would include the framing");
            }
            return Ok((stream, head.len() - end - 4));
        }
        if head.len() > 16 * 1024 {
            bail!("headers over 16 KiB");
        }
    }
}

fn spawn_viewer(addr: SocketAddr, path: String, stats: Arc<ViewerStats>) -> JoinHandle<()> {
    tokio::spawn(async move {
        match open(addr, &path).await {
            Ok((mut stream, first)) => {
                stats.connected.store(true, Ordering::Release);
                if first > 0 {
                    stats.got(first);
                }
                let mut buf = vec![0u8; READ_BUF];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) => {
                            *stats.error.lock() = Some("the stream ended".into());
                            break;
                        }
                        Ok(n) => stats.got(n),
                        Err(e) => {
                            *stats.error.lock() = Some(format!("read: {e}"));
                            break;
                        }
                    }
                }
            }
            Err(e) => *stats.error.lock() = Some(format!("{e:#}")),
        }
        stats.done.store(true, Ordering::Release);
    })
}

/// Viewers, stopped when dropped.
#[derive(Default)]
struct Crowd {
    stats: Vec<Arc<ViewerStats>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Crowd {
    fn add(&mut self, addr: SocketAddr, path: String, track_gaps: bool) -> Arc<ViewerStats> {
        let stats = ViewerStats::new(track_gaps);
        self.tasks.push(spawn_viewer(addr, path, stats.clone()));
        self.stats.push(stats.clone());
        stats
    }

    /// Waits until every viewer got bytes or gave up (or `deadline`).
    async fn wait_flowing(&self, deadline: Duration) {
        let started = Instant::now();
        while started.elapsed() < deadline {
            if self
                .stats
                .iter()
                .all(|s| s.bytes() > 0 || s.done.load(Ordering::Acquire))
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn bytes(&self) -> Vec<u64> {
        self.stats.iter().map(|s| s.bytes()).collect()
    }

    fn first_error(&self) -> Option<String> {
        self.stats.iter().find_map(|s| s.error())
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

pub(crate) fn content_path(n: usize) -> String {
    format!("/ace/getstream?id={n:040x}")
}

/// Delivery of each viewer over a window, % of `byte_rate`.
fn delivery(before: &[u64], after: &[u64], seconds: f64, byte_rate: f64) -> Vec<f64> {
    let mut out: Vec<f64> = before
        .iter()
        .zip(after)
        .map(|(b, a)| (a - b) as f64 / (byte_rate * seconds) * 100.0)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn median(sorted: &[f64]) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[sorted.len() / 2]
}

// ---------------------------------------------------------------- setup

/// Emulated engines serving `ts_file` and an orchestrator that knows them,
/// all healthy.
pub(crate) struct Setup {
    sim: Sim,
    control: String,
    orch: Orch,
    dir: tempfile::TempDir,
    sampler: Sampler,
    http: reqwest::Client,
    addr: SocketAddr,
}

impl Setup {
    pub(crate) async fn start(
        cfg: &ProxyConfig,
        engines: usize,
        ts_file: &Path,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<Setup> {
        let sim = Sim::start_with(
            &cfg.sim_bin,
            engines,
            "healthy",
            &["--ts-file".into(), ts_file.display().to_string()],
        )
        .await?;
        let control = sim
            .control
            .clone()
            .context("the emulator announced no control port")?;
        let dir = tempfile::Builder::new()
            .prefix("orchestrator-bench-proxy-")
            .tempdir_in("/tmp")
            .context("cannot create a temporary directory in /tmp")?;
        let mut extra_env = env;
        extra_env.extend(cfg.extra_env.iter().cloned());
        let settings = OrchSettings {
            interval_s: 1.0,
            timeout_s: 1.0,
            collect_interval_s: 5.0,
            extra_env,
        };
        let mut orch = Orch::start(&cfg.orch_bin, dir.path(), &settings).await?;
        let pid = orch.pid().context("the orchestrator has no pid")?;
        let addr: SocketAddr = orch
            .base
            .trim_start_matches("http://")
            .parse()
            .with_context(|| format!("orchestrator address {}", orch.base))?;
        let http = phases::client()?;
        phases::register(&http, &orch.base, &sim.ports, 32).await?;
        let expect = sim
            .ports
            .iter()
            .map(|&p| (p, phases::Expect::Healthy))
            .collect();
        phases::warm_up(&http, &orch.base, &expect, Duration::from_secs(60)).await?;
        orch.check_alive()?;
        let sampler = Sampler::start(Watched {
            orchestrator: pid,
            sims: sim.pid().into_iter().collect(),
        });
        Ok(Setup {
            sim,
            control,
            orch,
            dir,
            sampler,
            http,
            addr,
        })
    }

    /// Stops everything; answers the phases, the orchestrator's VmHWM and its
    /// warnings.
    pub(crate) async fn stop(self) -> (Vec<PhaseUsage>, f64, Vec<String>) {
        let hwm = self
            .sampler
            .orchestrator_now()
            .map(|p| kb_to_mb(p.hwm_kb))
            .unwrap_or(0.0);
        let phases = self.sampler.finish();
        let warnings = self.orch.tail.warnings();
        self.orch.stop().await;
        self.sim.stop().await;
        let _ = self.dir.close();
        (phases, hwm, warnings)
    }

    /// The orchestrator's base URL.
    pub(crate) fn base(&self) -> String {
        self.orch.base.clone()
    }

    /// Starts a measured phase.
    pub(crate) fn sampler_phase(&mut self, name: &str) {
        self.sampler.phase(name);
    }

    /// Ends it; answers its usage.
    pub(crate) fn sampler_end_phase(&mut self) -> Option<PhaseUsage> {
        self.sampler.end_phase();
        self.sampler.last_phase().cloned()
    }

    /// HLS viewers the (only) started stream shows, and the engine streams open.
    pub(crate) async fn hls_viewers_and_engine_streams(&self) -> anyhow::Result<(u64, u64)> {
        let rows: Vec<serde_json::Value> = self
            .http
            .get(format!("{}/streams?status=started", self.orch.base))
            .send()
            .await
            .context("GET /streams")?
            .json()
            .await
            .context("GET /streams: body")?;
        let hls = rows
            .iter()
            .map(|r| r["viewers_by_kind"]["hls"].as_u64().unwrap_or(0))
            .sum();
        let open = self.open_streams().await?.iter().sum();
        Ok((hls, open))
    }

    async fn set_mode(&self, port: u16, mode: &str) -> anyhow::Result<()> {
        let index = self
            .sim
            .ports
            .iter()
            .position(|&p| p == port)
            .with_context(|| format!("no emulated engine on port {port}"))?;
        let response = self
            .http
            .post(format!("http://{}/control/mode", self.control))
            .json(&json!({ "mode": mode, "engine": index }))
            .send()
            .await
            .context("POST /control/mode")?;
        if !response.status().is_success() {
            bail!("POST /control/mode answered {}", response.status());
        }
        Ok(())
    }

    async fn stream_of(&self, key: &str) -> anyhow::Result<StreamRow> {
        let rows: Vec<StreamRow> = self
            .http
            .get(format!("{}/streams?status=started", self.orch.base))
            .send()
            .await
            .context("GET /streams")?
            .error_for_status()?
            .json()
            .await
            .context("GET /streams: body")?;
        if let Some(row) = rows.into_iter().find(|r| r.key == key) {
            return Ok(row);
        }
        let all: Vec<serde_json::Value> = self
            .http
            .get(format!("{}/streams", self.orch.base))
            .send()
            .await?
            .json()
            .await?;
        let seen: Vec<String> = all
            .iter()
            .filter(|r| r["key"] == key)
            .map(|r| {
                format!(
                    "{} {} on {} ({} failovers, end reason {})",
                    r["id"],
                    r["status"],
                    r["container_id"],
                    r["failovers"].as_array().map(|a| a.len()).unwrap_or(0),
                    r["end_reason"]
                )
            })
            .collect();
        bail!("no started stream for {key}; its streams: {seen:?}")
    }

    async fn wait_all_healthy(&self, deadline: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let rows: Vec<serde_json::Value> = self
                .http
                .get(format!("{}/engines", self.orch.base))
                .send()
                .await
                .context("GET /engines")?
                .json()
                .await
                .context("GET /engines: body")?;
            if rows.iter().all(|r| r["health_status"] == "healthy") {
                return Ok(());
            }
            if started.elapsed() > deadline {
                bail!("engines not all healthy after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn open_streams(&self) -> anyhow::Result<Vec<u64>> {
        let state: serde_json::Value = self
            .http
            .get(format!("http://{}/control/state", self.control))
            .send()
            .await
            .context("GET /control/state")?
            .json()
            .await?;
        Ok(state["engines"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| e["open_streams"].as_u64().unwrap_or(0))
                    .collect()
            })
            .unwrap_or_default())
    }
}

#[derive(Deserialize)]
struct StreamRow {
    key: String,
    container_id: String,
    #[serde(default)]
    failovers: Vec<FailoverRow>,
}

#[derive(Deserialize, Clone)]
struct FailoverRow {
    at: String,
    from: String,
    to: String,
    reason: String,
    gap_ms: u64,
}

fn port_of(container_id: &str) -> anyhow::Result<u16> {
    container_id
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("container_id '{container_id}' is not host:port"))
}

// ---------------------------------------------------------------- results

#[derive(Debug, Clone, Serialize)]
pub struct FanoutStep {
    pub viewers: usize,
    pub receiving: usize,
    pub seconds: f64,
    pub orchestrator_cpu_percent: f64,
    pub orchestrator_max_rss_mb: f64,
    pub sims_cpu_percent: f64,
    pub bench_cpu_percent: f64,
    pub other_cpu_percent: f64,
    pub delivered_min_percent: f64,
    pub delivered_median_percent: f64,
    pub viewers_under_full_rate: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TtfbResult {
    pub first_byte: LatencyStats,
    pub headers: LatencyStats,
    pub errors: usize,
    pub first_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverSample {
    pub from: String,
    pub to: String,
    pub reason: String,
    /// The proxy's own figure (`failovers[].gap_ms`).
    pub proxy_gap_ms: u64,
    /// Longest time between two chunks at the viewer(s), ms.
    pub viewer_gap_ms: Vec<f64>,
    /// From the mode change to the failover record, ms.
    pub recorded_after_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverResult {
    pub kind: String,
    /// Longest inter-chunk gap at the first viewer.
    pub gap: LatencyStats,
    /// The proxy's own `gap_ms`.
    pub proxy_gap: LatencyStats,
    pub samples: Vec<FailoverSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HeadroomResult {
    /// A viewer that joined (5 s behind live) two seconds before each hang.
    pub fresh_viewer_gap: LatencyStats,
    /// The session's first viewer, over all the hangs (its reserve shrinks).
    pub first_viewer_longest_gap_ms: f64,
    pub proxy_gap: LatencyStats,
    pub samples: Vec<FailoverSample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionsResult {
    pub contents: usize,
    pub engines: usize,
    pub receiving: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub delivered_min_percent: f64,
    pub delivered_median_percent: f64,
    pub orchestrator_cpu_percent: f64,
    pub orchestrator_max_rss_mb: f64,
    pub orchestrator_vmhwm_mb: f64,
    pub open_streams_total: u64,
    pub open_streams_max_per_engine: u64,
    pub start_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub target: String,
    pub measured: String,
    pub pass: Option<bool>,
}

fn row(metric: &str, target: &str, measured: String, pass: Option<bool>) -> Row {
    Row {
        metric: metric.into(),
        target: target.into(),
        measured,
        pass,
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProxySummary {
    pub machine: Machine,
    pub commit: Option<String>,
    pub load_average_at_start: Option<String>,
    pub load_average_at_end: Option<String>,
    pub stream_mbit_per_s: f64,
    pub sessions_stream_mbit_per_s: Option<f64>,
    pub proxy_stall_s: f64,
    pub fanout: Vec<FanoutStep>,
    pub ttfb: Option<TtfbResult>,
    pub crash: Option<FailoverResult>,
    pub hang: Option<FailoverResult>,
    pub headroom: Option<HeadroomResult>,
    pub sessions: Option<SessionsResult>,
    pub phases: Vec<PhaseUsage>,
    pub orchestrator_vmhwm_mb: f64,
    pub orchestrator_warnings: usize,
    pub orchestrator_warning_samples: Vec<String>,
    pub rows: Vec<Row>,
    pub total_seconds: f64,
}

pub(crate) fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

fn git_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(procs::workspace_root())
        .output()
        .ok()?;
    let dirty = std::process::Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(procs::workspace_root())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    out.status.success().then(|| {
        let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if dirty {
            format!("{hash}+dirty")
        } else {
            hash
        }
    })
}

// ---------------------------------------------------------------- parts

async fn ttfb(setup: &Setup, path: &str, joins: usize) -> TtfbResult {
    let mut first_byte = Vec::new();
    let mut headers = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for _ in 0..joins {
        let started = Instant::now();
        let attempt = async {
            let (mut stream, first) = open(setup.addr, path).await?;
            let head = started.elapsed();
            if first == 0 {
                let mut buf = [0u8; 4096];
                if stream.read(&mut buf).await? == 0 {
                    bail!("the stream ended before its first byte");
                }
            }
            Ok::<_, anyhow::Error>((head, started.elapsed()))
        };
        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
            Ok(Ok((head, first))) => {
                headers.push(head);
                first_byte.push(first);
            }
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
            Err(_) => {
                errors += 1;
                first_error.get_or_insert("no first byte within 10 s".into());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    TtfbResult {
        first_byte: LatencyStats::from(first_byte),
        headers: LatencyStats::from(headers),
        errors,
        first_error,
    }
}

/// `probe` is the session's first viewer, already running: it counts as one
/// of each step's viewers.
async fn fanout(
    setup: &mut Setup,
    probe: &Arc<ViewerStats>,
    path: &str,
    steps: &[usize],
    window: Duration,
    byte_rate: f64,
) -> anyhow::Result<Vec<FanoutStep>> {
    let mut crowd = Crowd::default();
    let mut out = Vec::new();
    for &target in steps {
        eprintln!("bench: proxy fan-out: {target} viewers");
        while crowd.stats.len() + 1 < target {
            crowd.add(setup.addr, path.to_owned(), false);
            if crowd.stats.len() % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        crowd.wait_flowing(Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        setup.orch.check_alive()?;
        let all_bytes = || {
            let mut v = crowd.bytes();
            v.push(probe.bytes());
            v
        };
        let before = all_bytes();
        let started = Instant::now();
        setup.sampler.phase(&format!("fan-out {target}"));
        tokio::time::sleep(window).await;
        setup.sampler.end_phase();
        let seconds = started.elapsed().as_secs_f64();
        let after = all_bytes();
        let usage = setup.sampler_last();
        let delivered = delivery(&before, &after, seconds, byte_rate);
        out.push(FanoutStep {
            viewers: target,
            receiving: before.iter().zip(&after).filter(|(b, a)| a > b).count(),
            seconds,
            orchestrator_cpu_percent: usage.orchestrator_cpu_percent,
            orchestrator_max_rss_mb: usage.orchestrator_max_rss_mb,
            sims_cpu_percent: usage.sims_cpu_percent,
            bench_cpu_percent: usage.bench_cpu_percent,
            other_cpu_percent: usage.other_cpu_percent,
            delivered_min_percent: delivered.first().copied().unwrap_or(0.0),
            delivered_median_percent: median(&delivered),
            viewers_under_full_rate: delivered.iter().filter(|&&d| d < FULL_RATE_PERCENT).count(),
            first_error: crowd.first_error(),
        });
        let s = out.last().expect("pushed");
        eprintln!(
            "bench: proxy fan-out {target}: CPU {:.0} %, RSS {:.1} MiB, delivered min {:.1} % median {:.1} %, receiving {}",
            s.orchestrator_cpu_percent, s.orchestrator_max_rss_mb, s.delivered_min_percent, s.delivered_median_percent, s.receiving
        );
    }
    Ok(out)
}

impl Setup {
    /// Usage of the phase that just ended.
    fn sampler_last(&self) -> PhaseUsage {
        self.sampler.last_phase().cloned().unwrap_or(PhaseUsage {
            phase: String::new(),
            seconds: 0.0,
            orchestrator_cpu_percent: 0.0,
            orchestrator_max_rss_mb: 0.0,
            sims_cpu_percent: 0.0,
            bench_cpu_percent: 0.0,
            other_cpu_percent: 0.0,
        })
    }
}

/// Puts the engine serving `key` in `mode`, waits for the failover and then
/// `watch_after`, puts it back to healthy; the probes' longest gaps.
async fn failover_once(
    setup: &Setup,
    key: &str,
    mode: &str,
    probes: &[&Arc<ViewerStats>],
    watch_after: Duration,
) -> anyhow::Result<FailoverSample> {
    setup.wait_all_healthy(Duration::from_secs(20)).await?;
    let before = setup.stream_of(key).await?;
    let port = port_of(&before.container_id)?;
    let last_before = before.failovers.last().map(|f| f.at.clone());
    let count_before = before.failovers.len();
    // The probe must be flowing before the engine fails.
    let flowing = probes[0].bytes();
    let started = Instant::now();
    while probes[0].bytes() == flowing {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the probe viewer gets no bytes before the failover");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in probes {
        p.reset_gap();
    }
    let t0 = Instant::now();
    setup.set_mode(port, mode).await?;
    let record = loop {
        let now = setup.stream_of(key).await?;
        let last = now.failovers.last().cloned();
        if now.failovers.len() != count_before
            || last.as_ref().map(|f| &f.at) != last_before.as_ref()
        {
            break last.context("failovers emptied")?;
        }
        if t0.elapsed() > Duration::from_secs(40) {
            let _ = setup.set_mode(port, "healthy").await;
            bail!("no failover recorded within 40 s of putting {port} in {mode}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let recorded_after = t0.elapsed();
    let got = probes[0].bytes();
    let resumed = Instant::now();
    while probes[0].bytes() == got && resumed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(watch_after).await;
    let gaps = probes
        .iter()
        .map(|p| p.max_gap().as_secs_f64() * 1000.0)
        .collect();
    setup.set_mode(port, "healthy").await?;
    Ok(FailoverSample {
        from: record.from,
        to: record.to,
        reason: record.reason,
        proxy_gap_ms: record.gap_ms,
        viewer_gap_ms: gaps,
        recorded_after_ms: recorded_after.as_secs_f64() * 1000.0,
    })
}

fn ms_stats(values: impl Iterator<Item = f64>) -> LatencyStats {
    LatencyStats::from(
        values
            .map(|v| Duration::from_secs_f64(v / 1000.0))
            .collect(),
    )
}

async fn failovers(
    setup: &Setup,
    key: &str,
    mode: &str,
    count: usize,
    probe: &Arc<ViewerStats>,
) -> anyhow::Result<FailoverResult> {
    let mut samples = Vec::new();
    for i in 0..count {
        let s = failover_once(setup, key, mode, &[probe], Duration::from_secs(1)).await?;
        eprintln!(
            "bench: proxy {mode} failover {}/{count}: {} -> {} ({}), viewer gap {:.0} ms, proxy gap {} ms",
            i + 1,
            s.from,
            s.to,
            s.reason,
            s.viewer_gap_ms[0],
            s.proxy_gap_ms
        );
        samples.push(s);
    }
    Ok(FailoverResult {
        kind: mode.into(),
        gap: ms_stats(samples.iter().map(|s| s.viewer_gap_ms[0])),
        proxy_gap: ms_stats(samples.iter().map(|s| s.proxy_gap_ms as f64)),
        samples,
    })
}

async fn headroom(
    setup: &Setup,
    key: &str,
    path: &str,
    count: usize,
    first: &Arc<ViewerStats>,
) -> anyhow::Result<HeadroomResult> {
    let mut samples = Vec::new();
    first.reset_gap();
    for i in 0..count {
        let mut crowd = Crowd::default();
        let fresh = crowd.add(setup.addr, path.to_owned(), true);
        crowd.wait_flowing(Duration::from_secs(10)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let first_so_far = first.max_gap();
        let s = failover_once(
            setup,
            key,
            "hang",
            &[&fresh, first],
            Duration::from_secs_f64(HEADROOM_S + 2.0),
        )
        .await?;
        // failover_once reset the first viewer's gap: keep the longest.
        if first_so_far > first.max_gap() {
            if let Some(g) = &first.gaps {
                g.lock().max = first_so_far;
            }
        }
        eprintln!(
            "bench: proxy headroom hang {}/{count}: {} -> {}, fresh viewer longest gap {:.0} ms, first viewer {:.0} ms, proxy gap {} ms",
            i + 1,
            s.from,
            s.to,
            s.viewer_gap_ms[0],
            s.viewer_gap_ms[1],
            s.proxy_gap_ms
        );
        samples.push(s);
    }
    Ok(HeadroomResult {
        fresh_viewer_gap: ms_stats(samples.iter().map(|s| s.viewer_gap_ms[0])),
        first_viewer_longest_gap_ms: samples
            .iter()
            .map(|s| s.viewer_gap_ms[1])
            .fold(0.0, f64::max),
        proxy_gap: ms_stats(samples.iter().map(|s| s.proxy_gap_ms as f64)),
        samples,
    })
}

async fn sessions(
    setup: &mut Setup,
    contents: usize,
    window: Duration,
    byte_rate: f64,
) -> anyhow::Result<SessionsResult> {
    let mut crowd = Crowd::default();
    let started = Instant::now();
    for n in 0..contents {
        crowd.add(setup.addr, content_path(1000 + n), false);
    }
    crowd.wait_flowing(Duration::from_secs(60)).await;
    let start_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    setup.orch.check_alive()?;
    let before = crowd.bytes();
    let t = Instant::now();
    setup.sampler.phase("sessions");
    tokio::time::sleep(window).await;
    setup.sampler.end_phase();
    let seconds = t.elapsed().as_secs_f64();
    let after = crowd.bytes();
    let usage = setup.sampler_last();
    let open = setup.open_streams().await.unwrap_or_default();
    let delivered = delivery(&before, &after, seconds, byte_rate);
    let failed = crowd
        .stats
        .iter()
        .filter(|s| !s.connected.load(Ordering::Acquire))
        .count();
    Ok(SessionsResult {
        contents,
        engines: setup.sim.ports.len(),
        receiving: before.iter().zip(&after).filter(|(b, a)| a > b).count(),
        failed,
        first_error: crowd.first_error(),
        seconds,
        delivered_min_percent: delivered.first().copied().unwrap_or(0.0),
        delivered_median_percent: median(&delivered),
        orchestrator_cpu_percent: usage.orchestrator_cpu_percent,
        orchestrator_max_rss_mb: usage.orchestrator_max_rss_mb,
        orchestrator_vmhwm_mb: setup
            .sampler
            .orchestrator_now()
            .map(|p| kb_to_mb(p.hwm_kb))
            .unwrap_or(0.0),
        open_streams_total: open.iter().sum(),
        open_streams_max_per_engine: open.iter().copied().max().unwrap_or(0),
        start_seconds,
    })
}

// ---------------------------------------------------------------- run

fn env(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

pub async fn run(cfg: ProxyConfig) -> anyhow::Result<()> {
    let run_started = Instant::now();
    let load_average_at_start = load_average();
    let commit = git_commit();
    let work = tempfile::Builder::new()
        .prefix("bench-proxy-video-")
        .tempdir_in("/tmp")
        .context("cannot create a temporary directory in /tmp")?;
    let video = work.path().join("stream.ts");
    eprintln!(
        "bench: proxy: making a 10 s {} video at {} (scripts/make-test-video)",
        cfg.size, cfg.bitrate
    );
    {
        let (video, size, bitrate) = (video.clone(), cfg.size.clone(), cfg.bitrate.clone());
        tokio::task::spawn_blocking(move || make_video(&video, 10, Some(&size), Some(&bitrate)))
            .await
            .context("the video task failed")??;
    }
    let byte_rate = ts_byte_rate(&video)?;
    eprintln!(
        "bench: proxy: the stream carries {:.2} Mbit/s",
        byte_rate * 8.0 / 1e6
    );
    let want = |part: &str| cfg.parts.contains(part);

    let mut phases_all = Vec::new();
    let mut warnings = Vec::new();
    let mut vmhwm = 0.0f64;
    let mut fanout_steps = Vec::new();
    let (mut ttfb_result, mut crash, mut hang, mut headroom_result, mut sessions_result) =
        (None, None, None, None, None);
    let mut sessions_rate = None;

    // One session: TTFB, fan-out, crash and hang failovers.
    if want("ttfb") || want("fanout") || want("crash") || want("hang") {
        let max_viewers = cfg.viewer_steps.iter().copied().max().unwrap_or(1) + 64;
        // Each failover needs an engine the session has not failed on yet.
        let engines = cfg.engines.unwrap_or(cfg.failovers + 2).max(2);
        let mut setup = Setup::start(
            &cfg,
            engines,
            &video,
            env(&[
                ("PROXY_STALL_S", STALL_S.to_string()),
                ("MAX_VIEWERS_PER_STREAM", max_viewers.to_string()),
            ]),
        )
        .await?;
        let path = content_path(1);
        let key = format!("{:040x}", 1);
        let result = async {
            let mut keeper = Crowd::default();
            let probe = keeper.add(setup.addr, path.clone(), true);
            keeper.wait_flowing(Duration::from_secs(30)).await;
            if probe.bytes() == 0 {
                bail!(
                    "the first viewer got no bytes: {}",
                    probe.error().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            if want("ttfb") {
                eprintln!("bench: proxy: {} joins of the running session", cfg.joins);
                ttfb_result = Some(ttfb(&setup, &path, cfg.joins).await);
            }
            if want("fanout") {
                fanout_steps = fanout(
                    &mut setup,
                    &probe,
                    &path,
                    &cfg.viewer_steps,
                    cfg.step,
                    byte_rate,
                )
                .await?;
                // Let the departures settle before the failovers.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            if want("crash") {
                crash = Some(failovers(&setup, &key, "refuse", cfg.failovers, &probe).await?);
            }
            if want("hang") {
                // A session never goes back to an engine it failed over from
                // (see docs/PERFORMANCE.md), so the hangs get a session of
                // their own, with every engine available to it.
                let path = content_path(3);
                let key = format!("{:040x}", 3);
                let mut hang_crowd = Crowd::default();
                let hang_probe = hang_crowd.add(setup.addr, path.clone(), true);
                hang_crowd.wait_flowing(Duration::from_secs(30)).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                hang = Some(failovers(&setup, &key, "hang", cfg.failovers, &hang_probe).await?);
            }
            setup.orch.check_alive()?;
            drop(keeper);
            Ok(())
        }
        .await;
        let (p, hwm, w) = setup.stop().await;
        phases_all.extend(p);
        vmhwm = vmhwm.max(hwm);
        warnings.extend(w);
        result?;
    }

    if want("headroom") && cfg.headroom_failovers > 0 {
        let engines = cfg.engines.unwrap_or(cfg.headroom_failovers + 2).max(2);
        let mut setup = Setup::start(
            &cfg,
            engines,
            &video,
            env(&[
                ("PROXY_STALL_S", STALL_S.to_string()),
                ("PROXY_HEADROOM_S", HEADROOM_S.to_string()),
                ("PROXY_BUFFER_MB", "32".into()),
            ]),
        )
        .await?;
        let path = content_path(2);
        let key = format!("{:040x}", 2);
        let result = async {
            let mut keeper = Crowd::default();
            let first = keeper.add(setup.addr, path.clone(), true);
            keeper.wait_flowing(Duration::from_secs(30)).await;
            eprintln!(
                "bench: proxy headroom: the session runs {} s before the first hang",
                HEADROOM_S + 3.0
            );
            tokio::time::sleep(Duration::from_secs_f64(HEADROOM_S + 3.0)).await;
            headroom_result =
                Some(headroom(&setup, &key, &path, cfg.headroom_failovers, &first).await?);
            setup.orch.check_alive()?;
            drop(keeper);
            Ok::<_, anyhow::Error>(())
        }
        .await;
        let (p, hwm, w) = setup.stop().await;
        phases_all.extend(p);
        vmhwm = vmhwm.max(hwm);
        warnings.extend(w);
        result?;
    }

    if want("sessions") && cfg.sessions > 0 {
        let low = work.path().join("sessions.ts");
        {
            let low = low.clone();
            tokio::task::spawn_blocking(move || make_video(&low, 6, None, None))
                .await
                .context("the video task failed")??;
        }
        let rate = ts_byte_rate(&low)?;
        sessions_rate = Some(rate * 8.0 / 1e6);
        eprintln!(
            "bench: proxy sessions: {} contents on {} engines, {:.2} Mbit/s each",
            cfg.sessions,
            cfg.session_engines,
            rate * 8.0 / 1e6
        );
        let mut setup = Setup::start(
            &cfg,
            cfg.session_engines,
            &low,
            env(&[
                ("PROXY_STALL_S", STALL_S.to_string()),
                ("MAX_STREAMS_PER_ENGINE", "2".into()),
                ("PROXY_MAX_SESSIONS", cfg.sessions.max(200).to_string()),
            ]),
        )
        .await?;
        let result = sessions(&mut setup, cfg.sessions, cfg.step, rate).await;
        let (p, hwm, w) = setup.stop().await;
        phases_all.extend(p);
        vmhwm = vmhwm.max(hwm);
        warnings.extend(w);
        sessions_result = Some(result?);
    }
    let _ = work.close();

    // Targets.
    let mut rows = Vec::new();
    let pass_at_most = |v: f64, limit: f64| Some(v <= limit);
    for s in &fanout_steps {
        let gated = s.viewers == FANOUT_TARGET_VIEWERS;
        rows.push(row(
            &format!("fan-out {}: orchestrator CPU", s.viewers),
            if gated { "<= 100 % of a core" } else { "-" },
            format!("{:.0} %", s.orchestrator_cpu_percent),
            gated.then_some(s.orchestrator_cpu_percent <= FANOUT_CPU_PERCENT),
        ));
        rows.push(row(
            &format!("fan-out {}: orchestrator RSS (max)", s.viewers),
            if gated { "<= 96 MiB" } else { "-" },
            format!("{:.1} MiB", s.orchestrator_max_rss_mb),
            gated.then_some(s.orchestrator_max_rss_mb <= FANOUT_RSS_MB),
        ));
        rows.push(row(
            &format!("fan-out {}: delivered min / median", s.viewers),
            if gated {
                ">= 98 % of the rate (min)"
            } else {
                "-"
            },
            format!(
                "{:.1} % / {:.1} %",
                s.delivered_min_percent, s.delivered_median_percent
            ),
            gated.then_some(s.delivered_min_percent >= FULL_RATE_PERCENT),
        ));
    }
    if let Some(t) = &ttfb_result {
        rows.push(row(
            "join: time to first byte p50",
            "<= 50 ms",
            format!("{:.1} ms", t.first_byte.p50_ms),
            pass_at_most(t.first_byte.p50_ms, TTFB_MS),
        ));
        rows.push(row(
            "join: time to first byte p99",
            "<= 50 ms",
            format!("{:.1} ms ({} errors)", t.first_byte.p99_ms, t.errors),
            Some(t.first_byte.p99_ms <= TTFB_MS && t.errors == 0),
        ));
    }
    for (result, limit, label) in [
        (&crash, CRASH_GAP_MS, "<= 1000 ms p99".to_owned()),
        (
            &hang,
            STALL_S * 1000.0 + HANG_SLACK_MS,
            format!("<= {:.0} ms p99", STALL_S * 1000.0 + HANG_SLACK_MS),
        ),
    ] {
        if let Some(r) = result {
            let name = if r.kind == "refuse" { "crash" } else { "hang" };
            rows.push(row(
                &format!("{name} failover: viewer gap p50 / p99 / max"),
                &label,
                format!(
                    "{:.0} / {:.0} / {:.0} ms",
                    r.gap.p50_ms, r.gap.p99_ms, r.gap.max_ms
                ),
                Some(r.gap.p99_ms <= limit),
            ));
        }
    }
    if let Some(h) = &headroom_result {
        rows.push(row(
            "headroom 5 s, hang: longest chunk gap (viewer 5 s behind)",
            "no visible gap (<= 250 ms)",
            format!(
                "max {:.0} ms (p50 {:.0})",
                h.fresh_viewer_gap.max_ms, h.fresh_viewer_gap.p50_ms
            ),
            Some(h.fresh_viewer_gap.max_ms <= NO_VISIBLE_GAP_MS),
        ));
        rows.push(row(
            "headroom 5 s, hang: longest gap, session's first viewer",
            "-",
            format!(
                "{:.0} ms over {} hangs",
                h.first_viewer_longest_gap_ms,
                h.samples.len()
            ),
            None,
        ));
    }
    if let Some(s) = &sessions_result {
        rows.push(row(
            &format!("sessions: contents receiving bytes ({} engines)", s.engines),
            &format!(">= {}", s.contents),
            format!("{}", s.receiving),
            Some(s.receiving >= s.contents),
        ));
        rows.push(row(
            "sessions: orchestrator CPU / RSS (max)",
            "-",
            format!(
                "{:.0} % / {:.1} MiB",
                s.orchestrator_cpu_percent, s.orchestrator_max_rss_mb
            ),
            None,
        ));
    }

    let summary = ProxySummary {
        machine: Machine::detect(),
        commit,
        load_average_at_start,
        load_average_at_end: load_average(),
        stream_mbit_per_s: byte_rate * 8.0 / 1e6,
        sessions_stream_mbit_per_s: sessions_rate,
        proxy_stall_s: STALL_S,
        fanout: fanout_steps,
        ttfb: ttfb_result,
        crash,
        hang,
        headroom: headroom_result,
        sessions: sessions_result,
        phases: phases_all,
        orchestrator_vmhwm_mb: vmhwm,
        orchestrator_warnings: warnings.len(),
        orchestrator_warning_samples: warnings.into_iter().take(5).collect(),
        rows,
        total_seconds: run_started.elapsed().as_secs_f64(),
    };
    if cfg.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).context("cannot write the summary")?
        );
    } else {
        print(&summary);
    }
    Ok(())
}

fn print(s: &ProxySummary) {
    println!();
    println!(
        "=== built-in proxy benchmark: {:.2} Mbit/s stream, PROXY_STALL_S={}, {} CPUs ({}), commit {} ===",
        s.stream_mbit_per_s,
        s.proxy_stall_s,
        s.machine.cpus,
        s.machine.cpu_model,
        s.commit.as_deref().unwrap_or("?")
    );
    println!(
        "load average at start {}, at end {}; {:.0} s in all",
        s.load_average_at_start.as_deref().unwrap_or("?"),
        s.load_average_at_end.as_deref().unwrap_or("?"),
        s.total_seconds
    );
    if !s.fanout.is_empty() {
        println!();
        println!(
            "{:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8}",
            "viewers",
            "receiving",
            "orch CPU",
            "orch RSS",
            "min %",
            "median %",
            "bench",
            "sims",
            "other"
        );
        for f in &s.fanout {
            println!(
                "{:>8} {:>9} {:>8.0}% {:>5.1} MiB {:>8.1}% {:>7.1}% {:>7.0}% {:>7.0}% {:>7.0}%",
                f.viewers,
                f.receiving,
                f.orchestrator_cpu_percent,
                f.orchestrator_max_rss_mb,
                f.delivered_min_percent,
                f.delivered_median_percent,
                f.bench_cpu_percent,
                f.sims_cpu_percent,
                f.other_cpu_percent
            );
        }
    }
    if let Some(t) = &s.ttfb {
        println!(
            "\njoins: {} (errors {}): first byte p50 {:.1} / p90 {:.1} / p99 {:.1} / max {:.1} ms; headers p50 {:.1} ms{}",
            t.first_byte.count,
            t.errors,
            t.first_byte.p50_ms,
            t.first_byte.p90_ms,
            t.first_byte.p99_ms,
            t.first_byte.max_ms,
            t.headers.p50_ms,
            t.first_error.as_deref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
        );
    }
    for r in [&s.crash, &s.hang].into_iter().flatten() {
        println!(
            "{} failovers: {}: viewer gap p50 {:.0} / p99 {:.0} / max {:.0} ms; proxy's gap_ms p50 {:.0} / max {:.0}",
            r.kind,
            r.samples.len(),
            r.gap.p50_ms,
            r.gap.p99_ms,
            r.gap.max_ms,
            r.proxy_gap.p50_ms,
            r.proxy_gap.max_ms
        );
    }
    if let Some(h) = &s.headroom {
        println!(
            "headroom hangs: {}: fresh viewer longest gap p50 {:.0} / max {:.0} ms; first viewer {:.0} ms; proxy's gap_ms p50 {:.0}",
            h.samples.len(),
            h.fresh_viewer_gap.p50_ms,
            h.fresh_viewer_gap.max_ms,
            h.first_viewer_longest_gap_ms,
            h.proxy_gap.p50_ms
        );
    }
    if let Some(x) = &s.sessions {
        println!(
            "sessions: {} contents on {} engines ({:.2} Mbit/s each): receiving {}, failed {}, started in {:.1} s; delivered min {:.1} % median {:.1} %; \
             orchestrator CPU {:.0} %, RSS max {:.1} MiB (VmHWM {:.1}); engines' open streams {} (max {} per engine){}",
            x.contents,
            x.engines,
            s.sessions_stream_mbit_per_s.unwrap_or(0.0),
            x.receiving,
            x.failed,
            x.start_seconds,
            x.delivered_min_percent,
            x.delivered_median_percent,
            x.orchestrator_cpu_percent,
            x.orchestrator_max_rss_mb,
            x.orchestrator_vmhwm_mb,
            x.open_streams_total,
            x.open_streams_max_per_engine,
            x.first_error.as_deref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
        );
    }
    println!(
        "orchestrator warnings: {}{}",
        s.orchestrator_warnings,
        s.orchestrator_warning_samples
            .first()
            .map(|w| format!(" (first: {w})"))
            .unwrap_or_default()
    );
    println!();
    let width = s.rows.iter().map(|r| r.metric.len()).max().unwrap_or(10);
    let twidth = s.rows.iter().map(|r| r.target.len()).max().unwrap_or(6);
    let mwidth = s.rows.iter().map(|r| r.measured.len()).max().unwrap_or(8);
    println!(
        "{:<width$}  {:<twidth$}  {:<mwidth$}  result",
        "metric", "target", "measured"
    );
    for r in &s.rows {
        println!(
            "{:<width$}  {:<twidth$}  {:<mwidth$}  {}",
            r.metric,
            r.target,
            r.measured,
            match r.pass {
                Some(true) => "PASS",
                Some(false) => "FAIL",
                None => "-",
            }
        );
    }
}
