//! Health: where to probe, and what a check's result does to an engine.

use super::*;

impl Registry {
    pub fn probe_targets(&self) -> Vec<ProbeTarget> {
        self.engines
            .values()
            .map(|e| ProbeTarget {
                engine_id: e.engine.container_id.clone(),
                host: e.engine.host.clone(),
                port: e.engine.port,
            })
            .collect()
    }

    pub fn probe_target(&self, id: &str) -> Option<ProbeTarget> {
        self.engines.get(id).map(|e| ProbeTarget {
            engine_id: e.engine.container_id.clone(),
            host: e.engine.host.clone(),
            port: e.engine.port,
        })
    }

    /// Applies one check: a success makes the engine healthy at once; failures
    /// make it unhealthy after `failure_threshold` in a row. Returns `None` when
    /// the engine went away while it was being checked.
    pub fn record_check(
        &mut self,
        id: &str,
        check: HealthCheck,
    ) -> Option<(CheckRecorded, Vec<WriteOp>)> {
        let threshold = self.limits.failure_threshold;
        let history_max = self.limits.health_history_max;
        let entry = self.entry_mut(id)?;
        let health = &mut entry.engine.health;
        let before = health.status;
        if check.ok {
            health.consecutive_failures = 0;
            health.last_error = None;
        } else {
            health.consecutive_failures = health.consecutive_failures.saturating_add(1);
            health.last_error = check.error.clone();
        }
        // A passive signal has no latency of its own; keep the last probe's.
        if check.source != CheckSource::Stat {
            health.last_latency_ms = check.latency_ms;
        }
        health.last_check = Some(check.ts);
        let after = if check.ok {
            HealthStatus::Healthy
        } else if health.consecutive_failures >= threshold {
            HealthStatus::Unhealthy
        } else {
            before
        };
        let mut ops = Vec::with_capacity(3);
        let transition = (after != before).then(|| {
            health.status = after;
            health.status_since = Some(check.ts);
            let reason = if check.ok {
                format!(
                    "{} check answered in {:.0} ms",
                    check.source.as_str(),
                    check.latency_ms.unwrap_or(0.0)
                )
            } else {
                format!(
                    "{} failed check(s) in a row (threshold {threshold}); last {} check: {}",
                    health.consecutive_failures,
                    check.source.as_str(),
                    check.error.as_deref().unwrap_or("failed")
                )
            };
            HealthTransition {
                ts: check.ts,
                from: before,
                to: after,
                reason,
            }
        });
        if let Some(t) = &transition {
            push_bounded(&mut entry.transitions, t.clone(), history_max);
            ops.push(WriteOp::HealthTransition {
                engine_id: id.to_owned(),
                transition: t.clone(),
            });
        }
        ops.push(WriteOp::HealthCheck {
            engine_id: id.to_owned(),
            check: check.clone(),
        });
        push_bounded(&mut entry.checks, check, history_max);
        // Only the health columns changed: a narrow update, not the whole row.
        ops.push(WriteOp::EngineHealth {
            engine_id: id.to_owned(),
            health: entry.engine.health.clone(),
        });
        Some((
            CheckRecorded {
                engine_id: id.to_owned(),
                status: after,
                transition,
            },
            ops,
        ))
    }
}
