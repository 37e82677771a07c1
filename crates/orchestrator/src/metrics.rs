//! Prometheus metrics. The names the Python orchestrator exported are kept
//! (`orch_events_started_total` …); health metrics sit beside them. Labels are
//! bounded: no engine or content id ever becomes a label value.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::{CheckSource, HealthStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub result: &'static str,
    pub source: &'static str,
}

/// A VPN node, by container name (bounded: the configured nodes).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabel {
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub events_started: Counter,
    pub events_ended: Counter,
    pub collector_errors: Counter,
    pub streams_active: Gauge,
    pub provision: Family<KindLabel, Counter>,
    pub engines: Family<StatusLabel, Gauge>,
    pub health_checks: Family<CheckLabels, Counter>,
    pub health_transitions: Family<StatusLabel, Counter>,
    pub probe_duration: Histogram,
    pub health_sweep_duration: Histogram,
    pub health_sweep_errors: Counter,
    pub health_sweep_concurrency: Gauge,
    pub selections: Family<ResultLabel, Counter>,
    pub replacements: Counter,
    pub replacement_suspended: Gauge,
    pub store_queue_depth: Gauge,
    pub proxy_sessions_started: Counter,
    pub proxy_failovers: Counter,
    pub proxy_viewers: Gauge,
    pub vpn_node_healthy: Family<NodeLabel, Gauge>,
    pub store_dropped_writes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            events_started: Counter::default(),
            events_ended: Counter::default(),
            collector_errors: Counter::default(),
            streams_active: Gauge::default(),
            provision: Family::default(),
            engines: Family::default(),
            health_checks: Family::default(),
            health_transitions: Family::default(),
            probe_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            health_sweep_duration: Histogram::new(exponential_buckets(0.01, 2.0, 12)),
            health_sweep_errors: Counter::default(),
            health_sweep_concurrency: Gauge::default(),
            selections: Family::default(),
            replacements: Counter::default(),
            replacement_suspended: Gauge::default(),
            store_queue_depth: Gauge::default(),
            proxy_sessions_started: Counter::default(),
            proxy_failovers: Counter::default(),
            proxy_viewers: Gauge::default(),
            vpn_node_healthy: Family::default(),
            store_dropped_writes: Gauge::default(),
            registry: Registry::default(),
        };
        // prometheus-client appends `_total` to counters.
        registry.register(
            "orch_events_started",
            "stream_started events accepted",
            m.events_started.clone(),
        );
        registry.register(
            "orch_events_ended",
            "stream_ended events accepted",
            m.events_ended.clone(),
        );
        registry.register(
            "orch_collector_errors",
            "stat_url polls that failed",
            m.collector_errors.clone(),
        );
        registry.register(
            "orch_streams_active",
            "Streams currently started",
            m.streams_active.clone(),
        );
        registry.register(
            "orch_provision",
            "Containers provisioned, by kind",
            m.provision.clone(),
        );
        for kind in ["generic", "acestream"] {
            let _ = m.provision.get_or_create(&KindLabel { kind });
        }
        registry.register(
            "orch_engines",
            "Engines by health status",
            m.engines.clone(),
        );
        registry.register(
            "orch_health_checks",
            "Health checks by result and source",
            m.health_checks.clone(),
        );
        registry.register(
            "orch_health_transitions",
            "Health status changes, by the new status",
            m.health_transitions.clone(),
        );
        registry.register(
            "orch_health_probe_duration_seconds",
            "Latency of health probes that got an answer",
            m.probe_duration.clone(),
        );
        registry.register(
            "orch_health_sweep_duration_seconds",
            "Duration of a full health sweep over all engines",
            m.health_sweep_duration.clone(),
        );
        registry.register(
            "orch_health_sweep_concurrency",
            "Probes allowed in flight at once in the last health sweep (follows the pool's size)",
            m.health_sweep_concurrency.clone(),
        );
        registry.register(
            "orch_health_sweep_errors",
            "Health sweeps that failed as a whole",
            m.health_sweep_errors.clone(),
        );
        registry.register(
            "orch_engine_selections",
            "POST /engines/select answers: ok or none (nothing fit)",
            m.selections.clone(),
        );
        registry.register(
            "orch_engine_replacements",
            "Unhealthy engines replaced by a new container",
            m.replacements.clone(),
        );
        registry.register(
            "orch_replacement_suspended",
            "1 while too many engines are unhealthy at once to replace any (shared cause suspected)",
            m.replacement_suspended.clone(),
        );
        registry.register(
            "orch_store_queue_depth",
            "Writes waiting for the database writer (bounded; above the limit acknowledged writes get 503)",
            m.store_queue_depth.clone(),
        );
        registry.register(
            "orch_store_dropped_writes",
            "Background writes (checks, stats) dropped because the database queue was full",
            m.store_dropped_writes.clone(),
        );
        registry.register(
            "orch_proxy_sessions_started",
            "Engine sessions the built-in proxy started (one per content, shared by its viewers)",
            m.proxy_sessions_started.clone(),
        );
        registry.register(
            "orch_proxy_failovers",
            "Proxied streams moved to another engine mid-stream",
            m.proxy_failovers.clone(),
        );
        registry.register(
            "orch_proxy_viewers",
            "Players reading streams through the built-in proxy now",
            m.proxy_viewers.clone(),
        );
        registry.register(
            "orch_vpn_node_healthy",
            "1 while a VPN node's tunnel is running (its last check passed), by node",
            m.vpn_node_healthy.clone(),
        );
        for status in HealthStatus::ALL {
            let _ = m.engines.get_or_create(&StatusLabel {
                status: status.as_str(),
            });
        }
        Metrics { registry, ..m }
    }

    pub fn record_check(&self, ok: bool, source: CheckSource, latency_s: Option<f64>) {
        self.health_checks
            .get_or_create(&CheckLabels {
                result: if ok { "ok" } else { "fail" },
                source: source.as_str(),
            })
            .inc();
        if let Some(latency) = latency_s {
            self.probe_duration.observe(latency);
        }
    }

    pub fn set_engine_counts(&self, counts: [(HealthStatus, usize); 3], active_streams: usize) {
        for (status, count) in counts {
            self.engines
                .get_or_create(&StatusLabel {
                    status: status.as_str(),
                })
                .set(count as i64);
        }
        self.streams_active.set(active_streams as i64);
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
