//! Bounded disk: the periodic database clean-up and the measurements behind
//! the `orch_db_*` metrics.
//!
//! A clean-up removes ended streams older than `STREAMS_RETENTION_DAYS` with
//! their stat snapshots, then gives the freed pages back to the file system
//! (incremental vacuum) and truncates the WAL. Every part is a small job on
//! the writer's queue, sent only after the previous one finished, so writes
//! queued meanwhile (acknowledged events among them) wait for one small job,
//! never for the whole clean-up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::metrics::TableLabel;
use crate::service::Orchestrator;
use crate::store::{Store, StoreError};
use crate::time::Timestamp;

/// Snapshot rows removed per expiry batch. A batch of this size takes a few
/// milliseconds (see docs/PERFORMANCE.md, `--retention`).
pub const BATCH_ROWS: usize = 500;

/// Pages (4 KiB each by default) given back per vacuum step.
pub const VACUUM_PAGES: u32 = 256;

/// Longest accepted clean-up interval (a year); longer values are clamped.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 86_400);

/// How often the database's file sizes are refreshed for `/metrics`.
const MEASURE_INTERVAL: Duration = Duration::from_secs(60);

/// How often the rows are counted (and after every clean-up): counting a
/// table of millions of rows reads its smallest index, seconds of one core
/// (3.8 s for 6.5 million snapshots, see docs/PERFORMANCE.md).
const COUNT_EVERY: u32 = 10;

#[derive(Debug, Clone, Copy)]
pub struct CleanupSettings {
    /// Ended streams older than this are removed; `None` keeps them forever.
    pub streams_retention: Option<Duration>,
    /// Time between two clean-ups (one also runs at start).
    pub interval: Duration,
}

impl CleanupSettings {
    pub fn from_config(config: &Config) -> Self {
        let days = u64::from(config.streams_retention_days);
        Self {
            streams_retention: (days > 0).then(|| Duration::from_secs(days * 86_400)),
            interval: Duration::try_from_secs_f64(config.db_cleanup_interval_s)
                .unwrap_or(MAX_INTERVAL)
                .min(MAX_INTERVAL),
        }
    }
}

/// What one clean-up did.
#[derive(Debug, Clone, Copy, Default)]
pub struct CleanupReport {
    pub streams: usize,
    pub snapshots: usize,
    pub batches: usize,
    /// Bytes given back to the file system.
    pub freed_bytes: u64,
    pub took: Duration,
    /// Stopped early by shutdown.
    pub interrupted: bool,
}

/// Removes the ended streams that ended before `cutoff` (none when `None`),
/// then gives free pages back and truncates the WAL. Stops between two jobs
/// when `cancel` fires.
pub async fn clean_up(
    store: &Store,
    cutoff: Option<Timestamp>,
    cancel: &CancellationToken,
) -> Result<CleanupReport, StoreError> {
    let started = Instant::now();
    let mut report = CleanupReport::default();
    if let Some(cutoff) = cutoff {
        loop {
            if cancel.is_cancelled() {
                report.interrupted = true;
                break;
            }
            let batch = store.expire_batch(cutoff, BATCH_ROWS).await?;
            report.batches += 1;
            report.streams += batch.streams;
            report.snapshots += batch.snapshots;
            if batch.done {
                break;
            }
        }
    }
    // Bounded by the free pages there are after the first step (trims
    // running meanwhile free more; those wait for the next clean-up).
    let mut steps_left: Option<u64> = None;
    while !report.interrupted {
        if cancel.is_cancelled() {
            report.interrupted = true;
            break;
        }
        let step = store.vacuum_step(VACUUM_PAGES).await?;
        report.freed_bytes += step.freed_bytes;
        let steps = steps_left.get_or_insert(step.pages_left.div_ceil(u64::from(VACUUM_PAGES)));
        if step.pages_left == 0 || *steps == 0 {
            break;
        }
        *steps -= 1;
    }
    store.checkpoint().await;
    report.took = started.elapsed();
    Ok(report)
}

/// Runs the clean-up at start and every `settings.interval`, and refreshes the
/// database metrics every minute, until `shutdown`.
pub async fn run(orch: Arc<Orchestrator>, settings: CleanupSettings, shutdown: CancellationToken) {
    match settings.streams_retention {
        Some(keep) => tracing::info!(
            days = keep.as_secs() / 86_400,
            interval_s = settings.interval.as_secs(),
            "ended streams older than STREAMS_RETENTION_DAYS are removed"
        ),
        None => tracing::info!("STREAMS_RETENTION_DAYS=0: ended streams are kept forever"),
    }
    let mut cleanups = tokio::time::interval(settings.interval);
    cleanups.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measures = tokio::time::interval(MEASURE_INTERVAL);
    measures.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = cleanups.tick() => {
                run_once(&orch, settings, &shutdown).await;
                measure(&orch, true).await;
            }
            _ = measures.tick() => {
                ticks = ticks.wrapping_add(1);
                measure(&orch, ticks.is_multiple_of(COUNT_EVERY)).await;
            }
        }
    }
}

async fn run_once(orch: &Orchestrator, settings: CleanupSettings, shutdown: &CancellationToken) {
    let cutoff = settings
        .streams_retention
        .map(|keep| Timestamp::from_millis(Timestamp::now().millis() - keep.as_millis() as i64));
    if let Some(cutoff) = cutoff {
        // Memory first: a stream forgotten here is never written again, so
        // the database's copy can go.
        orch.forget_ended_streams_before(cutoff);
    }
    match clean_up(orch.store(), cutoff, shutdown).await {
        Ok(report) => {
            if report.interrupted {
                return;
            }
            let metrics = &orch.metrics;
            metrics
                .db_cleanup_last_timestamp
                .set(Timestamp::now().millis() as f64 / 1000.0);
            metrics
                .db_cleanup_last_duration
                .set(report.took.as_secs_f64());
            for (table, rows) in [
                ("streams", report.streams),
                ("stat_snapshots", report.snapshots),
            ] {
                metrics
                    .db_cleanup_last_removed
                    .get_or_create(&TableLabel { table })
                    .set(rows as i64);
            }
            metrics
                .db_cleanup_last_freed_bytes
                .set(report.freed_bytes as i64);
            metrics.db_cleanups.inc();
            tracing::info!(
                streams = report.streams,
                stat_snapshots = report.snapshots,
                batches = report.batches,
                freed_bytes = report.freed_bytes,
                took_ms = report.took.as_millis() as u64,
                "database clean-up done"
            );
        }
        Err(error) => tracing::warn!(%error, "database clean-up failed; retried at the next one"),
    }
}

async fn measure(orch: &Orchestrator, count_rows: bool) {
    match orch.store().measure(count_rows).await {
        Ok(measure) => orch.metrics.set_db_measure(&measure),
        Err(error) => tracing::debug!(%error, "cannot measure the database"),
    }
}
