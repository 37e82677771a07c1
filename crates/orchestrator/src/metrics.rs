//! Prometheus metrics. The names the Python orchestrator exported are kept
//! (`orch_events_started_total` …); health metrics sit beside them. Labels are
//! bounded: no engine or content id ever becomes a label value.

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

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

/// A database file: `main` or `wal`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    pub file: &'static str,
}

/// A database table (bounded: the schema's tables).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub table: &'static str,
}

/// An HLS request: which file (`manifest`, `playlist`, `segment`) and how
/// it was answered ([`hls_result`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HlsLabels {
    pub file: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// The `result` label of an HLS answer with `status`.
pub fn hls_result(status: u16) -> &'static str {
    match status {
        200..=399 => "ok",
        404 => "not_found",
        410 => "gone",
        502 => "refused",
        503 => "unavailable",
        400..=499 => "rejected",
        _ => "error",
    }
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
    pub proxy_viewers_by_kind: Family<KindLabel, Gauge>,
    pub hls_requests: Family<HlsLabels, Counter>,
    pub hls_segment_bytes: Counter,
    pub vpn_node_healthy: Family<NodeLabel, Gauge>,
    pub vpn_credentials: Family<StatusLabel, Gauge>,
    pub store_dropped_writes: Gauge,
    pub db_file_bytes: Family<FileLabel, Gauge>,
    pub db_free_bytes: Gauge,
    pub db_rows: Family<TableLabel, Gauge>,
    pub db_cleanup_last_timestamp: Gauge<f64, AtomicU64>,
    pub db_cleanup_last_duration: Gauge<f64, AtomicU64>,
    pub db_cleanup_last_removed: Family<TableLabel, Gauge>,
    pub db_cleanup_last_freed_bytes: Gauge,
    pub db_cleanups: Counter,
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
            proxy_viewers_by_kind: Family::default(),
            hls_requests: Family::default(),
            hls_segment_bytes: Counter::default(),
            vpn_node_healthy: Family::default(),
            vpn_credentials: Family::default(),
            store_dropped_writes: Gauge::default(),
            db_file_bytes: Family::default(),
            db_free_bytes: Gauge::default(),
            db_rows: Family::default(),
            db_cleanup_last_timestamp: Gauge::default(),
            db_cleanup_last_duration: Gauge::default(),
            db_cleanup_last_removed: Family::default(),
            db_cleanup_last_freed_bytes: Gauge::default(),
            db_cleanups: Counter::default(),
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
            "orch_proxy_viewers_by_kind",
            "Players of the built-in proxy now, by kind: ts (/ace/getstream connections) or hls (viewer tokens still fetching)",
            m.proxy_viewers_by_kind.clone(),
        );
        registry.register(
            "orch_hls_requests",
            "HLS requests by file (manifest, playlist, segment) and result (ok, gone = slid out of the window, not_found, unavailable, refused = the engine refused the content, rejected = bad request or token)",
            m.hls_requests.clone(),
        );
        registry.register(
            "orch_hls_segment_bytes",
            "Bytes of HLS segments sent to players (segments are shared in memory, not copied per player)",
            m.hls_segment_bytes.clone(),
        );
        for kind in ["ts", "hls"] {
            let _ = m.proxy_viewers_by_kind.get_or_create(&KindLabel { kind });
        }
        for (file, result) in [
            ("manifest", "ok"),
            ("playlist", "ok"),
            ("segment", "ok"),
            ("segment", "gone"),
        ] {
            let _ = m.hls_requests.get_or_create(&HlsLabels { file, result });
        }
        registry.register(
            "orch_vpn_credentials",
            "WireGuard credentials in VPN_CONFIGS_DIR by status: free, leased (to a node), cooling_down (its node failed), invalid (the file is not usable); only with VPN_CONFIGS_DIR",
            m.vpn_credentials.clone(),
        );
        registry.register(
            "orch_vpn_node_healthy",
            "1 while a VPN node's tunnel is running (its last check passed), by node",
            m.vpn_node_healthy.clone(),
        );
        registry.register(
            "orch_db_file_bytes",
            "Size of the SQLite database files: file=main, file=wal (the write-ahead log)",
            m.db_file_bytes.clone(),
        );
        registry.register(
            "orch_db_free_bytes",
            "Free space inside the database file, given back to the file system by the next clean-up's incremental vacuum",
            m.db_free_bytes.clone(),
        );
        registry.register(
            "orch_db_rows",
            "Rows per database table (counted every minute on a read-only connection)",
            m.db_rows.clone(),
        );
        registry.register(
            "orch_db_cleanup_last_timestamp_seconds",
            "Unix time the last database clean-up finished (0: none yet)",
            m.db_cleanup_last_timestamp.clone(),
        );
        registry.register(
            "orch_db_cleanup_last_duration_seconds",
            "How long the last database clean-up took (expiry batches and vacuum steps)",
            m.db_cleanup_last_duration.clone(),
        );
        registry.register(
            "orch_db_cleanup_last_removed_rows",
            "Rows the last database clean-up removed, by table (streams past STREAMS_RETENTION_DAYS and their stat_snapshots)",
            m.db_cleanup_last_removed.clone(),
        );
        registry.register(
            "orch_db_cleanup_last_freed_bytes",
            "Bytes the last database clean-up gave back to the file system",
            m.db_cleanup_last_freed_bytes.clone(),
        );
        registry.register(
            "orch_db_cleanups",
            "Database clean-ups finished",
            m.db_cleanups.clone(),
        );
        for file in ["main", "wal"] {
            let _ = m.db_file_bytes.get_or_create(&FileLabel { file });
        }
        for table in crate::store::TABLES {
            let _ = m.db_rows.get_or_create(&TableLabel { table });
        }
        for table in ["streams", "stat_snapshots"] {
            let _ = m
                .db_cleanup_last_removed
                .get_or_create(&TableLabel { table });
        }
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

    /// The database's size and row counts.
    pub fn set_db_measure(&self, measure: &crate::store::Measure) {
        for (file, bytes) in [("main", measure.main_bytes), ("wal", measure.wal_bytes)] {
            self.db_file_bytes
                .get_or_create(&FileLabel { file })
                .set(bytes as i64);
        }
        self.db_free_bytes.set(measure.free_bytes as i64);
        for &(table, rows) in &measure.rows {
            self.db_rows
                .get_or_create(&TableLabel { table })
                .set(rows as i64);
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
