//! The stats collector: polls every started stream's `stat_url` and keeps the
//! snapshots. A poll that times out or is refused is also a failed health check
//! of the stream's engine, so an engine carrying streams is caught within
//! `COLLECT_INTERVAL_S` + timeout rather than a full health interval.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Deserialize;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::{CheckSource, HealthCheck, StatSnapshot};
use crate::health::{self, describe_request_error};
use crate::registry::StatTarget;
use crate::service::Orchestrator;
use crate::time::Timestamp;

#[derive(Deserialize)]
struct StatEnvelope {
    response: Option<StatBody>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StatBody {
    status: Option<String>,
    peers: Option<serde_json::Number>,
    speed_down: Option<serde_json::Number>,
    speed_up: Option<serde_json::Number>,
    downloaded: Option<serde_json::Number>,
    uploaded: Option<serde_json::Number>,
}

fn int(n: Option<serde_json::Number>) -> Option<i64> {
    n.and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
}

/// Why a poll failed; `engine_unreachable` failures also count against health.
struct PollFailure {
    message: String,
    engine_unreachable: bool,
}

async fn poll(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<StatSnapshot, PollFailure> {
    let unreachable = |e: reqwest::Error| PollFailure {
        engine_unreachable: e.is_timeout() || e.is_connect(),
        message: describe_request_error(&e, timeout),
    };
    let answered = |message: String| PollFailure {
        message,
        engine_unreachable: false,
    };
    let response = http
        .get(url)
        .timeout(timeout)
        .send()
        .await
        .map_err(unreachable)?;
    if !response.status().is_success() {
        return Err(answered(format!("answered HTTP {}", response.status())));
    }
    let body = response.bytes().await.map_err(unreachable)?;
    let envelope: StatEnvelope = serde_json::from_slice(&body)
        .map_err(|_| answered("stat answer is not the engine's JSON".into()))?;
    if let Some(error) = envelope.error.filter(|e| !e.is_null()) {
        return Err(answered(format!("engine error: {error}")));
    }
    let body = envelope
        .response
        .ok_or_else(|| answered("stat answer has no response".into()))?;
    Ok(StatSnapshot {
        ts: Timestamp::now(),
        peers: int(body.peers),
        speed_down: int(body.speed_down),
        speed_up: int(body.speed_up),
        downloaded: int(body.downloaded),
        uploaded: int(body.uploaded),
        status: body.status,
    })
}

/// Polls every started stream once.
pub async fn collect_once(orch: &Orchestrator) -> usize {
    let targets = orch.registry.read().stat_targets();
    let timeout = orch.settings.health_timeout;
    let concurrency = orch.settings.collect_concurrency;
    stream::iter(targets)
        .map(|target: StatTarget| async move {
            let started = Instant::now();
            match poll(&orch.http, &target.stat_url, timeout).await {
                Ok(snapshot) => {
                    orch.write_in_background(|registry, _| ((), registry.push_stat(&target.stream_id, snapshot)));
                    true
                }
                Err(failure) => {
                    orch.metrics.collector_errors.inc();
                    tracing::debug!(stream = %target.stream_id, engine = %target.engine_id, error = %failure.message, "stat poll failed");
                    if failure.engine_unreachable {
                        health::record(
                            orch,
                            &target.engine_id,
                            HealthCheck {
                                ts: Timestamp::now(),
                                ok: false,
                                source: CheckSource::Stat,
                                latency_ms: Some(health::millis(started.elapsed())),
                                error: Some(format!("stat_url of stream {}: {}", target.stream_id, failure.message)),
                            },
                        );
                    }
                    false
                }
            }
        })
        .buffer_unordered(concurrency)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await
}

pub async fn run(orch: Arc<Orchestrator>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(orch.settings.collect_interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::info!(
        interval_s = orch.settings.collect_interval.as_secs_f64(),
        "stats collector started"
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            polled = collect_once(&orch) => tracing::trace!(polled, "stats collected"),
        }
    }
}
