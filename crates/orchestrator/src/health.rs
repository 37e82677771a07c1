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

use crate::domain::{external_engine_id, CheckSource, HealthCheck, HealthStatus};
use crate::registry::{CheckRecorded, ProbeTarget};
use crate::service::Orchestrator;
use crate::time::Timestamp;

/// The engine method the probe calls (`/server/api?api_version=3&method=get_status`).
pub const STATUS_PATH: &str = "/server/api?api_version=3&method=get_status";

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// Probes one engine. Healthy = HTTP 200 with a JSON body whose `error` is null
/// or absent; a timeout, a refused connection, any other status, a body that is
/// not JSON or an `error` that is set are failures, each with its own message.
pub async fn probe(
    http: &reqwest::Client,
    host: &str,
    port: u16,
    timeout: Duration,
) -> ProbeOutcome {
    let started = Instant::now();
    let url = format!("http://{}{STATUS_PATH}", external_engine_id(host, port));
    let result = async {
        let response = http
            .get(&url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| describe_request_error(&e, timeout))?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            return Err(format!("answered HTTP {status}"));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| describe_request_error(&e, timeout))?;
        let json: serde_json::Value =
            serde_json::from_slice(&body).map_err(|_| "answer is not JSON".to_owned())?;
        match json.get("error") {
            None | Some(serde_json::Value::Null) => Ok(()),
            Some(serde_json::Value::String(message)) => Err(format!("engine error: {message}")),
            Some(other) => Err(format!("engine error: {other}")),
        }
    }
    .await;
    ProbeOutcome {
        ok: result.is_ok(),
        latency: started.elapsed(),
        error: result.err(),
    }
}

/// A short, operator-readable cause for a failed request.
pub fn describe_request_error(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        return format!(
            "no answer within {:.1}s (engine hung?)",
            timeout.as_secs_f64()
        );
    }
    if error.is_connect() {
        let mut source: Option<&dyn std::error::Error> = Some(error);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
                    _ => format!("cannot connect: {io}"),
                };
            }
            source = e.source();
        }
        return "cannot connect".to_owned();
    }
    if error.is_body() || error.is_decode() {
        return "answer was cut off".to_owned();
    }
    format!("request failed: {error}")
}

/// Records a check in the registry (and the database, in the background), logs
/// a transition and updates the metrics.
pub fn record(orch: &Orchestrator, engine_id: &str, check: HealthCheck) -> Option<CheckRecorded> {
    let latency_s = check.latency_ms.map(|ms| ms / 1000.0);
    let (ok, source) = (check.ok, check.source);
    let recorded =
        orch.write_in_background(
            |registry, _| match registry.record_check(engine_id, check) {
                Some((recorded, ops)) => (Some(recorded), ops),
                None => (None, Vec::new()),
            },
        )?;
    orch.metrics
        .record_check(ok, source, if ok { latency_s } else { None });
    if let Some(t) = &recorded.transition {
        orch.metrics
            .health_transitions
            .get_or_create(&crate::metrics::StatusLabel {
                status: t.to.as_str(),
            })
            .inc();
        tracing::info!(
            engine = %engine_id,
            from = %t.from,
            to = %t.to,
            reason = %t.reason,
            "engine {engine_id} is now {}: {}",
            t.to,
            t.reason
        );
    }
    Some(recorded)
}

/// Probes one engine now and records the verdict.
pub async fn check_engine(
    orch: &Orchestrator,
    target: &ProbeTarget,
    source: CheckSource,
) -> Option<(CheckRecorded, ProbeOutcome)> {
    let outcome = probe(
        &orch.http,
        &target.host,
        target.port,
        orch.settings.health_timeout,
    )
    .await;
    let check = HealthCheck {
        ts: Timestamp::now(),
        ok: outcome.ok,
        source,
        latency_ms: Some(millis(outcome.latency)),
        error: outcome.error.clone(),
    };
    record(orch, &target.engine_id, check).map(|recorded| (recorded, outcome))
}

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
    let targets = orch.registry.read().probe_targets();
    let concurrency = orch.settings.health_concurrency;
    let mut results: Vec<CheckResult> = stream::iter(targets)
        .map(|target| async move {
            check_engine(orch, &target, source)
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

/// Milliseconds rounded to the microsecond: enough for latencies, short in JSON.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

fn format_seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}", s as u64)
    } else {
        format!("{s}")
    }
}
