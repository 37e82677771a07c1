//! The stats collector: polls every started stream's `stat_url` and keeps the
//! snapshots. A poll that times out or is refused is also a failed health check
//! of the stream's engine, so an engine carrying streams is caught within
//! `COLLECT_INTERVAL_S` + timeout rather than a full health interval.

use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::domain::{CheckSource, HealthCheck};
use crate::engine_client::millis;
use crate::registry::StatTarget;
use crate::service::Orchestrator;
use crate::time::Timestamp;

/// Polls every started stream once.
pub async fn collect_once(orch: &Orchestrator) -> usize {
    let targets = orch.read(|r| r.stat_targets());
    let timeout = orch.settings.health_timeout;
    let concurrency = orch.settings.collect_concurrency;
    stream::iter(targets)
        .map(|target: StatTarget| async move {
            let started = Instant::now();
            match orch.engines.stat(&target.stat_url, timeout).await {
                Ok(snapshot) => {
                    orch.push_stat(&target.stream_id, snapshot);
                    true
                }
                Err(failure) => {
                    orch.metrics.collector_errors.inc();
                    tracing::debug!(stream = %target.stream_id, engine = %target.engine_id, error = %failure, "stat poll failed");
                    if failure.is_unreachable() {
                        orch.record_check(
                            &target.engine_id,
                            HealthCheck {
                                ts: Timestamp::now(),
                                ok: false,
                                source: CheckSource::Stat,
                                latency_ms: Some(millis(started.elapsed())),
                                error: Some(format!("stat_url of stream {}: {failure}", target.stream_id)),
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
