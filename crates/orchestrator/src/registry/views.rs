//! Read-only views in the wire shape, serialized while the lock is held.

use super::*;

impl Registry {
    pub fn engines_json(&self, now: Timestamp) -> serde_json::Result<Vec<u8>> {
        let reserved = self.reservation_counts(now);
        let views: Vec<_> = self
            .engines
            .values()
            .map(|e| self.view(e, now, &reserved))
            .collect();
        serde_json::to_vec(&views)
    }

    pub fn engine_view(&self, id: &str, now: Timestamp) -> Option<EngineView<'_>> {
        let reserved = self.reservation_counts(now);
        self.engines.get(id).map(|e| self.view(e, now, &reserved))
    }

    pub(super) fn view<'a>(
        &'a self,
        entry: &'a EngineEntry,
        now: Timestamp,
        reserved: &HashMap<&str, u32>,
    ) -> EngineView<'a> {
        let e = &entry.engine;
        EngineView {
            container_id: &e.container_id,
            container_name: e.container_name.as_deref(),
            host: &e.host,
            port: e.port,
            labels: &e.labels,
            first_seen: e.first_seen,
            last_seen: e.last_seen,
            streams: entry.active.iter().map(String::as_str).collect(),
            health_status: e.health.status,
            last_health_check: e.health.last_check,
            last_stream_usage: e.usage.last_stream_usage,
            runtime: e.runtime,
            health_since: e.health.status_since,
            consecutive_failures: e.health.consecutive_failures,
            last_health_error: e.health.last_error.as_deref(),
            last_probe_latency_ms: e.health.last_latency_ms,
            streams_total: e.usage.streams_total,
            busy_seconds: e.usage.busy_seconds(now),
            reservations: reserved.get(e.container_id.as_str()).copied().unwrap_or(0),
            replacement_suspended: self.replacement_suspended,
        }
    }

    pub fn health_history(&self, id: &str) -> Option<HealthHistoryView<'_>> {
        self.engines.get(id).map(|entry| {
            let h = &entry.engine.health;
            HealthHistoryView {
                container_id: &entry.engine.container_id,
                health_status: h.status,
                health_since: h.status_since,
                last_health_check: h.last_check,
                consecutive_failures: h.consecutive_failures,
                last_health_error: h.last_error.as_deref(),
                transitions: entry.transitions.iter().rev().collect(),
                checks: entry.checks.iter().rev().collect(),
            }
        })
    }
}
