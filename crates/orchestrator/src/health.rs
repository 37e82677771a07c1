//! The health monitor: probes every engine's own API on a fixed cadence and
//! turns the answers into `healthy` / `unhealthy`.
//!
//! A hung engine accepts the TCP connection and never answers, so only a timeout
//! reveals it. Probes therefore run concurrently (bounded), each with its own
//! timeout, and never under the registry lock: one hung engine costs its own
//! timeout and nothing else.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::{CheckSource, HealthStatus};
use crate::engine_client::millis;
use crate::service::Orchestrator;

/// One engine's line in a sweep report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub container_id: String,
    pub ok: bool,
    pub health_status: HealthStatus,
    pub latency_ms: f64,
    /// Why the probe failed; null when it succeeded.
    #[schema(required = true)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SweepReport {
    pub checked: usize,
    pub healthy: usize,
    pub unhealthy: usize,
    pub unknown: usize,
    pub duration_ms: f64,
    /// One per engine checked, sorted by `container_id`.
    pub results: Vec<CheckResult>,
}

/// Checks every engine, at most `health_concurrency` at once.
pub async fn sweep(orch: &Orchestrator, source: CheckSource) -> SweepReport {
    let started = Instant::now();
    let targets = orch.read(|r| r.all_engine_ids());
    let concurrency = orch.settings.health_concurrency;
    let mut results: Vec<CheckResult> = stream::iter(targets)
        .map(|id| async move {
            orch.check_engine(&id, source)
                .await
                .map(|(recorded, outcome)| CheckResult {
                    container_id: recorded.engine_id,
                    ok: outcome.ok,
                    health_status: recorded.status,
                    latency_ms: millis(outcome.latency),
                    error: outcome.error,
                })
        })
        .buffer_unordered(concurrency)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    results.sort_by(|a, b| a.container_id.cmp(&b.container_id));
    let count = |s: HealthStatus| results.iter().filter(|r| r.health_status == s).count();
    let duration = started.elapsed();
    orch.metrics
        .health_sweep_duration
        .observe(duration.as_secs_f64());
    orch.refresh_gauges();
    SweepReport {
        checked: results.len(),
        healthy: count(HealthStatus::Healthy),
        unhealthy: count(HealthStatus::Unhealthy),
        unknown: count(HealthStatus::Unknown),
        duration_ms: duration.as_secs_f64() * 1000.0,
        results,
    }
}

/// The background loop: a sweep every `health_interval`, started on a fixed
/// cadence so that no engine's last check is older than interval + timeout.
pub async fn run(orch: Arc<Orchestrator>, shutdown: CancellationToken) {
    let interval = orch.settings.health_interval;
    tracing::info!(
        interval_s = interval.as_secs_f64(),
        "Health monitor started with {}s interval",
        format_seconds(interval)
    );
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        // A sweep is bounded by the probe timeout, but stop mid-sweep on shutdown.
        let sweep_orch = orch.clone();
        let task = tokio::spawn(async move { sweep(&sweep_orch, CheckSource::Probe).await });
        let abort = task.abort_handle();
        tokio::select! {
            _ = shutdown.cancelled() => { abort.abort(); break; }
            result = task => match result {
                Ok(report) => tracing::debug!(
                    checked = report.checked,
                    healthy = report.healthy,
                    unhealthy = report.unhealthy,
                    duration_ms = report.duration_ms,
                    "Updated health status for all engines"
                ),
                Err(error) => {
                    orch.metrics.health_sweep_errors.inc();
                    tracing::error!(%error, "Error during health check: the sweep failed");
                }
            }
        }
    }
    tracing::info!("Health monitor stopped");
}

fn format_seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}
