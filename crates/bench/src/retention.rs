//! The retention mode: a simulated period of a community's traffic written
//! through the orchestrator's own store with backdated times, the clean-up
//! run every simulated hour as the service runs it, then the real binary
//! started on the resulting file while clients measure the API (reads and
//! acknowledged writes) during its start-up clean-up and after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use orchestrator::domain::{
    CheckSource, Engine, EngineHealth, EngineUsage, HealthCheck, KeyType, RuntimeKind,
    StatSnapshot, Stream, StreamStatus,
};
use orchestrator::persist::WriteOp;
use orchestrator::retention::clean_up;
use orchestrator::store::{Measure, Retention, Store};
use orchestrator::time::Timestamp;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::phases::LatencyStats;
use crate::procs::{Orch, OrchSettings, Sim};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

pub struct RetentionConfig {
    pub orch_bin: PathBuf,
    pub sim_bin: PathBuf,
    /// Days of traffic simulated.
    pub days: u32,
    pub streams_per_day: f64,
    /// Snapshots per stream (the collector's cadence times the stream's
    /// length, capped by STATS_HISTORY_MAX).
    pub snapshots_per_stream: u32,
    /// Seconds between two snapshots of a stream (COLLECT_INTERVAL_S).
    pub collect_interval_s: f64,
    /// STREAMS_RETENTION_DAYS.
    pub keep_days: u32,
    /// The last days of the period ran without a clean-up: the real binary's
    /// start-up clean-up has them to remove.
    pub backlog_days: u32,
    /// Engines in the pool (their health history is bounded per engine).
    pub engines: usize,
    /// Concurrent API clients during the measurement.
    pub clients: usize,
    /// Seconds measured after the start-up clean-up finished.
    pub after_seconds: f64,
    pub extra_env: Vec<(String, String)>,
}

#[derive(Serialize, Default, Clone)]
pub struct SizePoint {
    pub day: u32,
    pub bytes: u64,
    pub snapshot_rows: u64,
}

#[derive(Serialize, Default)]
pub struct RouteWindow {
    pub route: &'static str,
    pub during_cleanup: LatencyStats,
    pub after_cleanup: LatencyStats,
    pub errors: usize,
}

#[derive(Serialize, Default)]
pub struct RetentionSummary {
    pub days: u32,
    pub streams_per_day: f64,
    pub snapshots_per_stream: u32,
    pub keep_days: u32,
    pub backlog_days: u32,
    pub streams_written: u64,
    pub snapshots_written: u64,
    pub write_seconds: f64,
    pub snapshot_rows_per_s: f64,
    pub hourly_cleanups: usize,
    pub hourly_cleanup: LatencyStats,
    /// Largest database (main + WAL) seen at the end of a simulated day while
    /// the hourly clean-up ran.
    pub max_bytes_with_cleanup: u64,
    pub sizes: Vec<SizePoint>,
    pub before_start: MeasureOut,
    /// How long counting the rows for `/metrics` took on that file (on the
    /// read-only connection, every minute).
    pub measure_ms: f64,
    pub startup_cleanup_seconds: f64,
    pub startup_removed_streams: f64,
    pub startup_removed_snapshots: f64,
    pub startup_freed_bytes: f64,
    pub after_start: MeasureOut,
    pub routes: Vec<RouteWindow>,
    pub orchestrator_warnings: Vec<String>,
    /// The orchestrator's log lines about database jobs that held the writer
    /// for 250 ms or more.
    pub slow_jobs: Vec<String>,
}

#[derive(Serialize, Default, Clone)]
pub struct MeasureOut {
    pub main_bytes: u64,
    pub wal_bytes: u64,
    pub free_bytes: u64,
    pub rows: Vec<(String, u64)>,
}

impl From<Measure> for MeasureOut {
    fn from(m: Measure) -> Self {
        MeasureOut {
            main_bytes: m.main_bytes,
            wal_bytes: m.wal_bytes,
            free_bytes: m.free_bytes,
            rows: m.rows.into_iter().map(|(t, n)| (t.to_owned(), n)).collect(),
        }
    }
}

fn engine(i: usize, at: Timestamp) -> Engine {
    Engine {
        container_id: format!("engine-{i:03}"),
        container_name: Some(format!("acestream-{i}")),
        host: "10.0.0.1".into(),
        port: 19_000 + i as u16,
        labels: Default::default(),
        runtime: RuntimeKind::External,
        first_seen: at,
        last_seen: at,
        health: EngineHealth::default(),
        usage: EngineUsage::default(),
    }
}

/// One stream's writes as the service makes them: the start, the collector's
/// snapshots, the end.
fn stream_ops(
    id: String,
    engine: &str,
    started: i64,
    snapshots: u32,
    every_ms: i64,
) -> Vec<WriteOp> {
    let mut stream = Stream {
        id: id.clone(),
        key_type: KeyType::Infohash,
        key: id.split('|').next().unwrap_or(&id).to_owned(),
        container_id: engine.to_owned(),
        playback_session_id: id.split('|').nth(1).map(str::to_owned),
        stat_url: Some(format!("http://10.0.0.1:19000/ace/stat/{id}")),
        command_url: Some(format!("http://10.0.0.1:19000/ace/cmd/{id}")),
        is_live: true,
        started_at: Timestamp::from_millis(started),
        ended_at: None,
        status: StreamStatus::Started,
        end_reason: None,
        viewers: 0,
        viewers_by_kind: Default::default(),
        failovers: Vec::new(),
        play: None,
    };
    let mut ops = Vec::with_capacity(snapshots as usize + 2);
    ops.push(WriteOp::UpsertStream(Box::new(stream.clone())));
    for i in 0..i64::from(snapshots) {
        ops.push(WriteOp::StatSnapshot {
            stream_id: id.clone(),
            snapshot: StatSnapshot {
                ts: Timestamp::from_millis(started + (i + 1) * every_ms),
                peers: Some(8 + i % 20),
                speed_down: Some(450 + i % 100),
                speed_up: Some(30 + i % 10),
                downloaded: Some(i * 2_300_000),
                uploaded: Some(i * 160_000),
                status: Some("dl".into()),
            },
        });
    }
    stream.ended_at = Some(Timestamp::from_millis(
        started + (i64::from(snapshots) + 1) * every_ms,
    ));
    stream.status = StreamStatus::Ended;
    stream.end_reason = Some("client left".into());
    ops.push(WriteOp::UpsertStream(Box::new(stream)));
    ops
}

fn file_bytes(db: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(db) + size(&db.with_extension("db-wal"))
}

pub async fn run(cfg: RetentionConfig) -> anyhow::Result<RetentionSummary> {
    if cfg.backlog_days >= cfg.days || cfg.keep_days == 0 {
        bail!("--retention-backlog-days must be below --retention-sim-days, and --retention-keep-days above 0");
    }
    let dir = tempfile::Builder::new()
        .prefix("orchestrator-retention-")
        .tempdir_in("/tmp")
        .context("cannot create a temporary directory in /tmp")?;
    let db = dir.path().join("orchestrator.db");
    let mut summary = RetentionSummary {
        days: cfg.days,
        streams_per_day: cfg.streams_per_day,
        snapshots_per_stream: cfg.snapshots_per_stream,
        keep_days: cfg.keep_days,
        backlog_days: cfg.backlog_days,
        ..Default::default()
    };

    // 1. The simulated period, through the store's API.
    let retention = Retention {
        stats_per_stream: cfg.snapshots_per_stream as usize,
        health_per_engine: 50,
    };
    let (store, _) = Store::open(&db, retention, 1000).context("cannot open the database")?;
    let now = Timestamp::now().millis();
    let period_start = now - i64::from(cfg.days) * DAY_MS - 2 * HOUR_MS;
    let cleanups_until = now - i64::from(cfg.backlog_days) * DAY_MS;
    let every_ms = (cfg.collect_interval_s * 1000.0) as i64;
    let mut setup = Vec::new();
    for i in 0..cfg.engines {
        let at = Timestamp::from_millis(period_start);
        setup.push(WriteOp::UpsertEngine(Box::new(engine(i, at))));
    }
    store.submit(setup).committed().await?;
    let engine_ids: Vec<String> = (0..cfg.engines)
        .map(|i| engine(i, Timestamp::from_millis(0)).container_id)
        .collect();
    let never = CancellationToken::new();
    let mut cleanup_times = Vec::new();
    let mut due = 0.0f64;
    let per_hour = cfg.streams_per_day / 24.0;
    let started = Instant::now();
    let hours = i64::from(cfg.days) * 24;
    for hour in 0..hours {
        let hour_start = period_start + hour * HOUR_MS;
        due += per_hour;
        let count = due.floor() as i64;
        due -= count as f64;
        let mut pending = Vec::new();
        for k in 0..count {
            let n = summary.streams_written;
            let engine = &engine_ids[n as usize % engine_ids.len().max(1)];
            let at = hour_start + k * HOUR_MS / count.max(1);
            // The id the service gives a stream without a `stream_id` label:
            // `{infohash}|{playback_session_id}`, 73 characters, stored in
            // every snapshot row and its index entry.
            let ops = stream_ops(
                format!("{:040x}|{:032x}", n * 7_919 + 1, n * 104_729 + 3),
                engine,
                at,
                cfg.snapshots_per_stream,
                every_ms,
            );
            pending.push(store.submit(ops));
            summary.streams_written += 1;
            summary.snapshots_written += u64::from(cfg.snapshots_per_stream);
        }
        // Health history: every engine is checked all the time; on disk it
        // stays HEALTH_HISTORY_MAX per engine (trimmed every minute).
        let checks: Vec<WriteOp> = engine_ids
            .iter()
            .flat_map(|id| {
                (0..10).map(move |i| WriteOp::HealthCheck {
                    engine_id: id.clone(),
                    check: HealthCheck {
                        ts: Timestamp::from_millis(hour_start + i * 360_000),
                        ok: true,
                        source: CheckSource::Probe,
                        latency_ms: Some(3.0),
                        error: None,
                    },
                })
            })
            .collect();
        pending.push(store.submit(checks));
        for write in pending {
            write.committed().await?;
        }
        store.trim(retention);
        let hour_end = hour_start + HOUR_MS;
        if hour_end <= cleanups_until {
            let cutoff = Timestamp::from_millis(hour_end - i64::from(cfg.keep_days) * DAY_MS);
            let report = clean_up(&store, Some(cutoff), &never).await?;
            cleanup_times.push(report.took);
        }
        if (hour + 1) % 24 == 0 {
            let day = ((hour + 1) / 24) as u32;
            let bytes = file_bytes(&db);
            if hour_end <= cleanups_until {
                summary.max_bytes_with_cleanup = summary.max_bytes_with_cleanup.max(bytes);
            }
            if day.is_multiple_of(15) || day == cfg.days {
                let measure = store.measure(true).await?;
                let rows = measure
                    .rows
                    .iter()
                    .find(|(t, _)| *t == "stat_snapshots")
                    .map_or(0, |&(_, n)| n);
                summary.sizes.push(SizePoint {
                    day,
                    bytes,
                    snapshot_rows: rows,
                });
                eprintln!(
                    "bench: day {day}/{}: {:.1} MiB, {rows} snapshot rows, {:.0} s elapsed",
                    cfg.days,
                    bytes as f64 / 1048576.0,
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    store.flush().await;
    store.checkpoint().await;
    summary.write_seconds = started.elapsed().as_secs_f64();
    summary.snapshot_rows_per_s = summary.snapshots_written as f64 / summary.write_seconds;
    summary.hourly_cleanups = cleanup_times.len();
    summary.hourly_cleanup = LatencyStats::from(cleanup_times);
    let measuring = Instant::now();
    summary.before_start = store.measure(true).await?.into();
    summary.measure_ms = measuring.elapsed().as_secs_f64() * 1000.0;
    drop(store);

    // 2. The real binary on that file; clients measure while its start-up
    // clean-up runs, then for `after_seconds`.
    let sim = Sim::start(&cfg.sim_bin, 1, "healthy").await?;
    let sim_port = sim.ports[0];
    let mut env = vec![
        (
            "STREAMS_RETENTION_DAYS".to_owned(),
            cfg.keep_days.to_string(),
        ),
        (
            "STATS_HISTORY_MAX".to_owned(),
            cfg.snapshots_per_stream.to_string(),
        ),
        (
            "RUST_LOG".to_owned(),
            "warn,orchestrator::app=info,orchestrator::retention=info,orchestrator::store=info"
                .to_owned(),
        ),
    ];
    env.extend(cfg.extra_env.iter().cloned());
    let settings = OrchSettings {
        interval_s: 2.0,
        timeout_s: 1.0,
        collect_interval_s: cfg.collect_interval_s,
        extra_env: env,
    };
    let orch = Orch::start(&cfg.orch_bin, dir.path(), &settings).await?;
    let listening = Instant::now();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = CancellationToken::new();
    let mut tasks = Vec::new();
    for c in 0..cfg.clients {
        let (client, base, samples, stop) = (
            client.clone(),
            orch.base.clone(),
            samples.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                n += 1;
                let id = format!("bench-{c}-{n}");
                for route in 0..ROUTES.len() {
                    let begin = Instant::now();
                    let request = match route {
                        0 => client.get(format!("{base}/engines")),
                        1 => client.get(format!("{base}/streams?status=started")),
                        2 => client
                            .post(format!("{base}/events/stream_started"))
                            .json(&started_event(sim_port, &id)),
                        _ => client
                            .post(format!("{base}/events/stream_ended"))
                            .json(&json!({ "stream_id": id, "reason": "bench" })),
                    };
                    let ok = match request.send().await {
                        Ok(response) => {
                            let ok = response.status().is_success();
                            let _ = response.bytes().await;
                            ok
                        }
                        Err(_) => false,
                    };
                    samples.lock().push((route, begin, begin.elapsed(), ok));
                }
            }
        }));
    }
    let metric = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    };
    let deadline = listening + Duration::from_secs(3600);
    let (finished_at, text) = loop {
        if Instant::now() > deadline {
            bail!("the start-up clean-up did not finish within an hour");
        }
        let text = client
            .get(format!("{}/metrics", orch.base))
            .send()
            .await?
            .text()
            .await?;
        if metric(&text, "orch_db_cleanup_last_timestamp_seconds").is_some_and(|t| t > 0.0) {
            break (Instant::now(), text);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    summary.startup_cleanup_seconds =
        metric(&text, "orch_db_cleanup_last_duration_seconds").unwrap_or(0.0);
    summary.startup_removed_streams = metric(
        &text,
        r#"orch_db_cleanup_last_removed_rows{table="streams"}"#,
    )
    .unwrap_or(0.0);
    summary.startup_removed_snapshots = metric(
        &text,
        r#"orch_db_cleanup_last_removed_rows{table="stat_snapshots"}"#,
    )
    .unwrap_or(0.0);
    summary.startup_freed_bytes = metric(&text, "orch_db_cleanup_last_freed_bytes").unwrap_or(0.0);
    // The clean-up began when the service started serving (it runs right
    // after); samples that began before it was seen finished count as during.
    let cleanup_end = finished_at
        .checked_sub(Duration::from_millis(50))
        .unwrap_or(finished_at);
    tokio::time::sleep(Duration::from_secs_f64(cfg.after_seconds)).await;
    stop.cancel();
    for task in tasks {
        let _ = task.await;
    }
    let samples = std::mem::take(&mut *samples.lock());
    for (index, route) in ROUTES.iter().enumerate() {
        let mut during = Vec::new();
        let mut after = Vec::new();
        let mut errors = 0;
        for &(r, begin, took, ok) in &samples {
            if r != index {
                continue;
            }
            if !ok {
                errors += 1;
            }
            if begin + took <= cleanup_end {
                during.push(took);
            } else if begin >= finished_at {
                after.push(took);
            }
        }
        summary.routes.push(RouteWindow {
            route,
            during_cleanup: LatencyStats::from(during),
            after_cleanup: LatencyStats::from(after),
            errors,
        });
    }
    summary.orchestrator_warnings = orch.tail.warnings().into_iter().take(5).collect();
    summary.slow_jobs = orch
        .tail
        .text()
        .lines()
        .filter(|l| l.contains("held the writer"))
        .map(str::to_owned)
        .collect();
    orch.stop().await;
    sim.stop().await;
    // The binary is gone: measure the file as it left it.
    let (store, _) = Store::open(&db, retention, 0)?;
    summary.after_start = store.measure(true).await?.into();
    drop(store);
    Ok(summary)
}

/// One request: route index, when it began, how long it took, whether it
/// got a 2xx.
type Sample = (usize, Instant, Duration, bool);

const ROUTES: [&str; 4] = [
    "GET /engines",
    "GET /streams?status=started",
    "POST /events/stream_started",
    "POST /events/stream_ended",
];

fn started_event(port: u16, id: &str) -> serde_json::Value {
    json!({
        "engine": { "host": "127.0.0.1", "port": port },
        "stream": { "key_type": "infohash", "key": format!("{:0>40}", id.len()) },
        "session": {
            "playback_session_id": id,
            "stat_url": format!("http://127.0.0.1:{port}/ace/stat/k/{id}"),
            "command_url": format!("http://127.0.0.1:{port}/ace/cmd/k/{id}"),
            "is_live": 1
        },
        "labels": { "stream_id": id }
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1048576.0
}

pub fn print(s: &RetentionSummary) {
    println!(
        "retention: {} days x {} streams/day x {} snapshots/stream, STREAMS_RETENTION_DAYS={}, last {} day(s) without clean-up",
        s.days, s.streams_per_day, s.snapshots_per_stream, s.keep_days, s.backlog_days
    );
    println!(
        "written: {} streams, {} snapshot rows in {:.0} s ({:.0} rows/s, hourly clean-up included)",
        s.streams_written, s.snapshots_written, s.write_seconds, s.snapshot_rows_per_s
    );
    println!(
        "hourly clean-ups: {} runs, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        s.hourly_cleanups,
        s.hourly_cleanup.p50_ms,
        s.hourly_cleanup.p99_ms,
        s.hourly_cleanup.max_ms
    );
    println!(
        "largest database while the hourly clean-up ran: {:.1} MiB",
        mib(s.max_bytes_with_cleanup)
    );
    for point in &s.sizes {
        println!(
            "  day {:>3}: {:>8.1} MiB, {:>9} snapshot rows",
            point.day,
            mib(point.bytes),
            point.snapshot_rows
        );
    }
    let show = |what: &str, m: &MeasureOut| {
        println!(
            "{what}: main {:.1} MiB + wal {:.1} MiB, free {:.1} MiB, rows {:?}",
            mib(m.main_bytes),
            mib(m.wal_bytes),
            mib(m.free_bytes),
            m.rows
        );
    };
    show("before the binary started", &s.before_start);
    println!("counting the rows for /metrics: {:.0} ms", s.measure_ms);
    println!(
        "start-up clean-up: {:.2} s, removed {} streams and {} snapshots, gave back {:.1} MiB",
        s.startup_cleanup_seconds,
        s.startup_removed_streams,
        s.startup_removed_snapshots,
        s.startup_freed_bytes / 1048576.0
    );
    show("after", &s.after_start);
    println!(
        "{:<30} {:>22} {:>22} {:>7}",
        "route", "during: n p50 p99 max", "after: n p50 p99 max", "errors"
    );
    for r in &s.routes {
        let cell = |l: &LatencyStats| {
            format!(
                "{} {:.1} {:.1} {:.1}",
                l.count, l.p50_ms, l.p99_ms, l.max_ms
            )
        };
        println!(
            "{:<30} {:>22} {:>22} {:>7}",
            r.route,
            cell(&r.during_cleanup),
            cell(&r.after_cleanup),
            r.errors
        );
    }
    for line in &s.slow_jobs {
        println!("slow: {line}");
    }
    for w in &s.orchestrator_warnings {
        println!("orchestrator warning: {w}");
    }
}
