//! The health monitor: probes every engine's own API on a fixed cadence and
//! turns the answers into `healthy` / `unhealthy`.
//!
//! A hung engine accepts the TCP connection and never answers, so only a timeout
//! reveals it. Probes therefore run concurrently (bounded), each with its own
//! timeout, and never under the registry lock: one hung engine costs its own
//! timeout and nothing else.
//!
//! How many probes run at once follows the pool ([`sweep_concurrency`]): a
//! hung engine holds its lane for the whole timeout, so a fixed number of
//! lanes that covers the hung tenth of 1,000 engines would stretch a sweep of
//! 5,000 over several timeouts and past the interval.

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
    /// Probes that were allowed in flight at once (grows with the pool).
    pub concurrency: usize,
    /// One per engine checked, sorted by `container_id`.
    pub results: Vec<CheckResult>,
}

/// Share of the pool a sweep plans to find hung. Not the engines found
/// unhealthy last time: on a starved machine healthy engines miss the
/// timeout too, and more lanes for them meant more sockets at once, more
/// misses and more lanes again (measured: 128 lanes grew to 2,700 within a
/// minute on a saturated 2-core machine, every sweep slower than the last).
pub const PLANNED_HUNG_SHARE: f64 = 0.10;

/// Lanes kept for engines that answer, beside those planned for hung ones.
pub const ANSWERING_LANES: usize = 32;

/// What the number of probes in flight during a sweep depends on.
#[derive(Debug, Clone, Copy)]
pub struct SweepPlan {
    /// Engines in the pool.
    pub engines: usize,
    pub interval: Duration,
    pub timeout: Duration,
    /// `HEALTH_CHECK_CONCURRENCY`: never fewer lanes than this.
    pub floor: usize,
}

/// Probes in flight at once during a sweep, so that hung engines never
/// stretch it past the interval:
///
/// ```text
/// hung   = ceil(engines × 10 %)                      engines that will hold a lane for `timeout`
/// waves  = max(1, floor(interval / timeout) − 1)     timeouts back to back that fit in a sweep,
///                                                    one timeout left for the engines that answer
/// lanes  = max(floor, ceil(hung / waves) + 32)       32 lanes stay free for the engines that answer
/// ```
///
/// With a 2 s interval and a 1 s timeout (one wave) 5,000 engines get 532
/// lanes, 1,000 get 132 and 100 get the floor (128); with the defaults (30 s,
/// 5 s: five waves) 5,000 engines get 132. Each lane in use holds one socket,
/// so the orchestrator's open-file limit must exceed the lanes plus its
/// clients' connections (it raises its soft limit to the hard one at start).
pub fn sweep_concurrency(plan: SweepPlan) -> usize {
    let hung = (plan.engines as f64 * PLANNED_HUNG_SHARE).ceil() as usize;
    let timeout = plan.timeout.as_secs_f64().max(f64::EPSILON);
    let fits = (plan.interval.as_secs_f64() / timeout).floor() as usize;
    let waves = fits.saturating_sub(1).max(1);
    plan.floor
        .max(hung.div_ceil(waves) + ANSWERING_LANES)
        .max(1)
}

/// Checks every engine, with [`sweep_concurrency`] probes at once.
pub async fn sweep(orch: &Orchestrator, source: CheckSource) -> SweepReport {
    let started = Instant::now();
    let targets = orch.read(|r| r.all_engine_ids());
    let concurrency = sweep_concurrency(SweepPlan {
        engines: targets.len(),
        interval: orch.settings.health_interval,
        timeout: orch.settings.health_timeout,
        floor: orch.settings.health_concurrency,
    });
    orch.metrics
        .health_sweep_concurrency
        .set(concurrency as i64);
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
        concurrency,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(engines: usize, interval_s: u64, timeout_s: u64) -> SweepPlan {
        SweepPlan {
            engines,
            interval: Duration::from_secs(interval_s),
            timeout: Duration::from_secs(timeout_s),
            floor: 128,
        }
    }

    #[test]
    fn concurrency_grows_with_the_pool_and_covers_a_hung_tenth_in_one_wave() {
        assert_eq!(sweep_concurrency(plan(100, 2, 1)), 128);
        assert_eq!(sweep_concurrency(plan(1_000, 2, 1)), 132);
        assert_eq!(sweep_concurrency(plan(2_500, 2, 1)), 282);
        assert_eq!(sweep_concurrency(plan(5_000, 2, 1)), 532);
    }

    #[test]
    fn a_longer_interval_spreads_the_hung_over_waves() {
        // 30 s / 5 s: five timeouts back to back still end a timeout early.
        assert_eq!(sweep_concurrency(plan(5_000, 30, 5)), 132);
        assert_eq!(sweep_concurrency(plan(1_000, 30, 5)), 128);
        assert_eq!(sweep_concurrency(plan(20_000, 30, 5)), 432);
        // A timeout as long as the interval: one wave, whatever.
        assert_eq!(sweep_concurrency(plan(5_000, 1, 1)), 532);
        assert_eq!(sweep_concurrency(plan(5_000, 1, 3)), 532);
    }

    #[test]
    fn the_floor_is_a_floor() {
        let mut p = plan(5_000, 2, 1);
        p.floor = 4_000;
        assert_eq!(sweep_concurrency(p), 4_000);
        assert_eq!(sweep_concurrency(plan(0, 2, 1)), 128);
    }
}
