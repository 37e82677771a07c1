//! `--hls`: HLS viewers of one stream (`GET /ace/manifest.m3u8`) against the
//! release orchestrator and engine emulators serving real MPEG-TS video.
//!
//! Each viewer behaves like a player: it opens the manifest (and follows the
//! redirect to its own playlist), then reloads the playlist every target
//! duration and fetches every segment it has not fetched yet. Measured over
//! the window: orchestrator CPU and RSS, segments each viewer got against the
//! segments the stream produced, playlist and segment answer times, and that
//! one engine stream serves everyone (the stream shows every HLS viewer).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::time::Instant;

use crate::phases::LatencyStats;
use crate::proxy::{self, ProxyConfig, Setup};
use crate::report::Machine;
use crate::sampler::PhaseUsage;

/// Targets: 200 viewers cost less than a core and little memory beyond the
/// segment window.
const CPU_TARGET_PERCENT: f64 = 100.0;
const RSS_TARGET_MB: f64 = 128.0;

pub struct HlsBenchConfig {
    pub proxy: ProxyConfig,
    pub viewers: usize,
    pub seconds: Duration,
    pub segment_s: f64,
}

#[derive(Default)]
struct ViewerStats {
    segments: AtomicU64,
    bytes: AtomicU64,
    window_bytes: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// Sequence numbers fetched during the measured window.
    in_window: Mutex<BTreeSet<u64>>,
    /// Every sequence number fetched.
    all: Mutex<BTreeSet<u64>>,
}

impl ViewerStats {
    /// Segments skipped between the first and the last one fetched.
    fn skipped(&self) -> u64 {
        let all = self.all.lock();
        match (all.first(), all.last()) {
            (Some(first), Some(last)) => last - first + 1 - all.len() as u64,
            _ => 0,
        }
    }
}

#[derive(Default)]
struct Timings {
    playlist: Mutex<Vec<Duration>>,
    segment: Mutex<Vec<Duration>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HlsSummary {
    pub machine: Machine,
    pub load_average_at_start: Option<String>,
    pub load_average_at_end: Option<String>,
    pub stream_mbit_per_s: f64,
    pub viewers: usize,
    pub seconds: f64,
    pub usage: Option<PhaseUsage>,
    pub orchestrator_vmhwm_mb: f64,
    /// Segments produced in the window (fetched by anyone).
    pub segments_produced: u64,
    /// Segments fetched by each viewer in the window: min and median.
    pub segments_per_viewer_min: usize,
    pub segments_per_viewer_median: usize,
    /// Segments a viewer skipped (between its first and last), all viewers.
    pub segments_skipped: u64,
    /// Bytes each viewer received over the window, % of the stream's rate: min.
    pub delivered_min_percent: f64,
    pub viewers_with_errors: usize,
    pub first_error: Option<String>,
    pub playlist_answer: LatencyStats,
    pub segment_answer: LatencyStats,
    pub hls_viewers_on_the_stream: u64,
    pub engine_streams_open: u64,
    pub orchestrator_warnings: usize,
}

/// Sequence numbers in a playlist.
fn sequences(playlist: &str) -> Vec<u64> {
    playlist
        .lines()
        .filter_map(|l| l.strip_suffix(".ts")?.parse().ok())
        .collect()
}

/// An error and its sources, for the report.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// One viewer: a player's loop, until it is aborted.
async fn viewer(
    client: reqwest::Client,
    base: String,
    n: usize,
    window: Arc<Mutex<Option<(Instant, Instant)>>>,
    stats: Arc<ViewerStats>,
    timings: Arc<Timings>,
    reload: Duration,
) {
    let fail = |e: String| {
        stats.errors.fetch_add(1, Ordering::Relaxed);
        stats.first_error.lock().get_or_insert(e);
    };
    // A user agent of its own: players behind one address are told apart by it.
    let ua = format!("bench-hls-viewer-{n}");
    let url = format!(
        "{base}{}",
        proxy::content_path(1).replace("/ace/getstream", "/ace/manifest.m3u8")
    );
    let playlist_url = match client.get(&url).header("user-agent", &ua).send().await {
        Ok(r) if r.status().is_success() => r.url().to_string(),
        Ok(r) => return fail(format!("manifest answered {}", r.status())),
        Err(e) => return fail(format!("manifest: {e}")),
    };
    let mut fetched: BTreeSet<u64> = BTreeSet::new();
    loop {
        let started = Instant::now();
        let text = match client
            .get(&playlist_url)
            .header("user-agent", &ua)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => {
                fail(format!("playlist answered {}", r.status()));
                String::new()
            }
            Err(e) => {
                fail(format!("playlist: {}", chain(&e)));
                String::new()
            }
        };
        timings.playlist.lock().push(started.elapsed());
        // A player starts three segments from the live edge.
        let seqs = sequences(&text);
        let from = if fetched.is_empty() {
            seqs.len().saturating_sub(3)
        } else {
            0
        };
        for seq in seqs.into_iter().skip(from) {
            if fetched.contains(&seq) {
                continue;
            }
            let started = Instant::now();
            let segment = playlist_url.replace("index.m3u8", &format!("{seq}.ts"));
            match client.get(&segment).header("user-agent", &ua).send().await {
                Ok(r) if r.status().is_success() => match r.bytes().await {
                    Ok(b) => {
                        timings.segment.lock().push(started.elapsed());
                        stats.segments.fetch_add(1, Ordering::Relaxed);
                        stats.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        fetched.insert(seq);
                        stats.all.lock().insert(seq);
                        if let Some((from, to)) = *window.lock() {
                            let now = Instant::now();
                            if now >= from && now <= to {
                                stats.in_window.lock().insert(seq);
                                stats
                                    .window_bytes
                                    .fetch_add(b.len() as u64, Ordering::Relaxed);
                            }
                        }
                    }
                    Err(e) => fail(format!("segment {seq}: {e}")),
                },
                Ok(r) => fail(format!("segment {seq} answered {}", r.status())),
                Err(e) => fail(format!("segment {seq}: {}", chain(&e))),
            }
        }
        tokio::time::sleep(reload.saturating_sub(started.elapsed())).await;
    }
}

pub async fn run(cfg: HlsBenchConfig) -> anyhow::Result<()> {
    let load_average_at_start = proxy::load_average();
    let work = tempfile::Builder::new()
        .prefix("bench-hls-video-")
        .tempdir_in("/tmp")
        .context("cannot create a temporary directory in /tmp")?;
    let video = work.path().join("stream.ts");
    eprintln!(
        "bench: hls: making a 10 s {} video at {} (scripts/make-test-video)",
        cfg.proxy.size, cfg.proxy.bitrate
    );
    {
        let (video, size, bitrate) = (
            video.clone(),
            cfg.proxy.size.clone(),
            cfg.proxy.bitrate.clone(),
        );
        tokio::task::spawn_blocking(move || {
            proxy::make_video(&video, 10, Some(&size), Some(&bitrate))
        })
        .await
        .context("the video task failed")??;
    }
    let byte_rate = proxy::ts_byte_rate(&video)?;
    let mut setup = Setup::start(
        &cfg.proxy,
        2,
        &video,
        vec![
            ("HLS_SEGMENT_S".into(), cfg.segment_s.to_string()),
            (
                "MAX_VIEWERS_PER_STREAM".into(),
                (cfg.viewers + 10).to_string(),
            ),
        ],
    )
    .await?;
    let base = setup.base();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(cfg.viewers * 2)
        .timeout(Duration::from_secs(20))
        .build()?;
    let timings = Arc::new(Timings::default());
    let window = Arc::new(Mutex::new(None));
    let reload = Duration::from_secs_f64(cfg.segment_s);
    let mut stats = Vec::new();
    let mut tasks = Vec::new();
    eprintln!("bench: hls: {} viewers join", cfg.viewers);
    for n in 0..cfg.viewers {
        let s = Arc::new(ViewerStats::default());
        stats.push(s.clone());
        tasks.push(tokio::spawn(viewer(
            client.clone(),
            base.clone(),
            n,
            window.clone(),
            s,
            timings.clone(),
            reload,
        )));
        // Players do not all arrive in the same millisecond.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Settle: every viewer has its playlist and a few segments.
    tokio::time::sleep(Duration::from_secs_f64(cfg.segment_s * 3.0)).await;
    timings.playlist.lock().clear();
    timings.segment.lock().clear();
    let from = Instant::now();
    let to = from + cfg.seconds;
    *window.lock() = Some((from, to));
    setup.sampler_phase(&format!("{} HLS viewers", cfg.viewers));
    eprintln!("bench: hls: measuring {:?}", cfg.seconds);
    tokio::time::sleep(cfg.seconds).await;
    let usage = setup.sampler_end_phase();
    let (hls_on_stream, open) = setup.hls_viewers_and_engine_streams().await?;
    for task in &tasks {
        task.abort();
    }
    // Segments produced in the window: the union of what every viewer saw.
    let all: BTreeSet<u64> = stats
        .iter()
        .flat_map(|s| s.in_window.lock().clone())
        .collect();
    let produced = all.len() as u64;
    let mut per_viewer: Vec<usize> = stats.iter().map(|s| s.in_window.lock().len()).collect();
    per_viewer.sort_unstable();
    let skipped = stats.iter().map(|s| s.skipped()).sum();
    let delivered_min_percent = stats
        .iter()
        .map(|s| {
            s.window_bytes.load(Ordering::Relaxed) as f64 / (byte_rate * cfg.seconds.as_secs_f64())
                * 100.0
        })
        .fold(f64::INFINITY, f64::min);
    let with_errors = stats
        .iter()
        .filter(|s| s.errors.load(Ordering::Relaxed) > 0)
        .count();
    let first_error = stats.iter().find_map(|s| s.first_error.lock().clone());
    let (_, vmhwm, warnings) = setup.stop().await;
    let summary = HlsSummary {
        machine: Machine::detect(),
        load_average_at_start,
        load_average_at_end: proxy::load_average(),
        stream_mbit_per_s: byte_rate * 8.0 / 1e6,
        viewers: cfg.viewers,
        seconds: cfg.seconds.as_secs_f64(),
        usage,
        orchestrator_vmhwm_mb: vmhwm,
        segments_produced: produced,
        segments_per_viewer_min: per_viewer.first().copied().unwrap_or(0),
        segments_per_viewer_median: per_viewer.get(per_viewer.len() / 2).copied().unwrap_or(0),
        segments_skipped: skipped,
        delivered_min_percent,
        viewers_with_errors: with_errors,
        first_error,
        playlist_answer: LatencyStats::from(std::mem::take(&mut *timings.playlist.lock())),
        segment_answer: LatencyStats::from(std::mem::take(&mut *timings.segment.lock())),
        hls_viewers_on_the_stream: hls_on_stream,
        engine_streams_open: open,
        orchestrator_warnings: warnings.len(),
    };
    if cfg.proxy.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    if produced == 0 {
        bail!("no segment was fetched in the window");
    }
    Ok(())
}

fn print_summary(s: &HlsSummary) {
    let pass = |ok: bool| if ok { "pass" } else { "FAIL" };
    println!(
        "HLS: {} viewers of one {:.2} Mbit/s stream for {:.0} s (load average {} → {})",
        s.viewers,
        s.stream_mbit_per_s,
        s.seconds,
        s.load_average_at_start.as_deref().unwrap_or("?"),
        s.load_average_at_end.as_deref().unwrap_or("?"),
    );
    if let Some(u) = &s.usage {
        println!(
            "  orchestrator CPU {:.1} % of a core (target < {CPU_TARGET_PERCENT:.0}): {}",
            u.orchestrator_cpu_percent,
            pass(u.orchestrator_cpu_percent < CPU_TARGET_PERCENT)
        );
        println!(
            "  orchestrator RSS max {:.1} MiB (target < {RSS_TARGET_MB:.0}), VmHWM {:.1} MiB: {}",
            u.orchestrator_max_rss_mb,
            s.orchestrator_vmhwm_mb,
            pass(u.orchestrator_max_rss_mb < RSS_TARGET_MB)
        );
        println!(
            "  emulators {:.1} %, bench {:.1} %, everything else on the machine {:.1} % of a core",
            u.sims_cpu_percent, u.bench_cpu_percent, u.other_cpu_percent
        );
    }
    println!(
        "  segments: {} produced in the window, each viewer fetched min {} (median {}) in it; bytes per viewer min {:.0} % of the stream's rate",
        s.segments_produced,
        s.segments_per_viewer_min,
        s.segments_per_viewer_median,
        s.delivered_min_percent,
    );
    println!(
        "  segments skipped by a viewer: {} (target 0): {}",
        s.segments_skipped,
        pass(s.segments_skipped == 0)
    );
    println!(
        "  playlist answers p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; segment answers p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.playlist_answer.p50_ms,
        s.playlist_answer.p99_ms,
        s.playlist_answer.max_ms,
        s.segment_answer.p50_ms,
        s.segment_answer.p99_ms,
        s.segment_answer.max_ms
    );
    println!(
        "  the stream shows {} HLS viewers; engine streams open: {} (target 1): {}",
        s.hls_viewers_on_the_stream,
        s.engine_streams_open,
        pass(s.engine_streams_open == 1)
    );
    println!(
        "  viewers with errors: {}{}; orchestrator warnings: {}",
        s.viewers_with_errors,
        s.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default(),
        s.orchestrator_warnings
    );
}
