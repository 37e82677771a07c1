//! The in-memory registry of engines, streams, stats and reservations.
//!
//! Every mutation is synchronous and returns the [`WriteOp`]s that persist it, so
//! callers can queue them while still holding the lock (keeping the database in
//! the registry's order) and wait for the commit after releasing it. Nothing
//! here does I/O or awaits.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use reqwest::Url;
use serde::Serialize;

use crate::domain::{
    canonical_host, external_engine_id, same_host, CheckSource, Engine, EngineHealth, EngineUsage,
    HealthCheck, HealthStatus, HealthTransition, KeyType, RuntimeKind, StatSnapshot, Stream,
    StreamStatus,
};
use crate::persist::{Loaded, WriteOp};
use crate::select::{self, Candidate};
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("engine '{0}' not found")]
    EngineNotFound(String),
    #[error("stream '{0}' not found")]
    StreamNotFound(String),
    #[error("{field} '{url}' does not point at the stream's engine {engine}; only the engine's own host:port is accepted")]
    ForeignUrl {
        field: &'static str,
        url: String,
        engine: String,
    },
    #[error("{field} '{url}' is not an absolute http(s) URL")]
    BadUrl { field: &'static str, url: String },
}

/// Sizes of the bounded histories.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub failure_threshold: u32,
    pub health_history_max: usize,
    pub stats_history_max: usize,
    pub ended_streams_max: usize,
}

struct EngineEntry {
    engine: Engine,
    /// Ids of the engine's started streams.
    active: BTreeSet<String>,
    checks: VecDeque<HealthCheck>,
    transitions: VecDeque<HealthTransition>,
    /// The entry's `GET /engines` JSON up to its time-dependent fields,
    /// written by the first listing after a change and copied by the next
    /// ones (see `views.rs`). Every change goes through
    /// [`Registry::entry_mut`], which clears it.
    listed: std::sync::OnceLock<Box<[u8]>>,
}

impl EngineEntry {
    fn new(engine: Engine) -> Self {
        Self {
            engine,
            active: BTreeSet::new(),
            checks: VecDeque::new(),
            transitions: VecDeque::new(),
            listed: std::sync::OnceLock::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Reservation {
    pub reservation_id: String,
    pub engine_id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A validated `stream_started` event.
#[derive(Debug, Clone)]
pub struct StreamStart {
    pub container_id: Option<String>,
    pub host: String,
    pub port: u16,
    pub key_type: KeyType,
    pub key: String,
    pub playback_session_id: Option<String>,
    pub stat_url: Option<String>,
    pub command_url: Option<String>,
    pub is_live: bool,
    pub labels: BTreeMap<String, String>,
    pub reservation_id: Option<String>,
}

/// The wire shape of an engine (docs/CONTRACT.md, "Engine"): the fields up to
/// `last_stream_usage` are the contract; the rest are additions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Engine)]
pub struct EngineView<'a> {
    /// Docker id; for an engine not run by us, `host:port`.
    #[schema(example = "127.0.0.1:19023")]
    pub container_id: &'a str,
    /// Container name, e.g. `engine-3`, or the name given at registration.
    #[schema(required = true)]
    pub container_name: Option<&'a str>,
    /// Where the engine's HTTP API answers.
    #[schema(example = "127.0.0.1")]
    pub host: &'a str,
    #[schema(minimum = 1, maximum = 65535, example = 19023)]
    pub port: u16,
    /// Container labels, or the labels given at registration.
    pub labels: &'a BTreeMap<String, String>,
    /// When the orchestrator first saw the engine.
    pub first_seen: Timestamp,
    /// When the engine was last seen (registration, Docker resync, stream start).
    pub last_seen: Timestamp,
    /// Ids of the engine's active (started) streams.
    #[schema(value_type = Vec<String>)]
    pub streams: &'a BTreeSet<String>,
    pub health_status: HealthStatus,
    /// When the last health check finished; null before the first.
    #[schema(required = true)]
    pub last_health_check: Option<Timestamp>,
    /// When a stream last started on the engine; null = never.
    #[schema(required = true)]
    pub last_stream_usage: Option<Timestamp>,
    pub runtime: RuntimeKind,
    /// When `health_status` last changed.
    #[schema(required = true)]
    pub health_since: Option<Timestamp>,
    /// Failed checks in a row.
    pub consecutive_failures: u32,
    /// Why the last failed check failed; null after a success.
    #[schema(required = true)]
    pub last_health_error: Option<&'a str>,
    /// Latency of the last probe, in milliseconds.
    #[schema(required = true)]
    pub last_probe_latency_ms: Option<f64>,
    /// Streams ever started on the engine.
    pub streams_total: u64,
    /// Total time with at least one active stream, in seconds.
    #[schema(minimum = 0)]
    pub busy_seconds: f64,
    /// Open reservations from `POST /engines/select`.
    pub reservations: u32,
    /// True while unhealthy engines are not replaced because too many are
    /// unhealthy at once (a shared cause is suspected).
    pub replacement_suspended: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = HealthHistory)]
pub struct HealthHistoryView<'a> {
    pub container_id: &'a str,
    pub health_status: HealthStatus,
    /// When `health_status` last changed.
    #[schema(required = true)]
    pub health_since: Option<Timestamp>,
    /// When the last check finished.
    #[schema(required = true)]
    pub last_health_check: Option<Timestamp>,
    pub consecutive_failures: u32,
    /// Why the last failed check failed; null after a success.
    #[schema(required = true)]
    pub last_health_error: Option<&'a str>,
    /// Newest first, at most `HEALTH_HISTORY_MAX`.
    pub transitions: Vec<&'a HealthTransition>,
    /// Newest first, at most `HEALTH_HISTORY_MAX`.
    pub checks: Vec<&'a HealthCheck>,
}

/// The result of recording one health check.
#[derive(Debug, Clone)]
pub struct CheckRecorded {
    pub engine_id: String,
    pub status: HealthStatus,
    pub transition: Option<HealthTransition>,
}

/// Where the health monitor should send a probe.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    pub engine_id: String,
    pub host: String,
    pub port: u16,
}

/// A started stream the collector should poll.
#[derive(Debug, Clone)]
pub struct StatTarget {
    pub stream_id: String,
    pub engine_id: String,
    pub stat_url: String,
}

pub struct Registry {
    limits: Limits,
    engines: BTreeMap<String, EngineEntry>,
    streams: HashMap<String, Stream>,
    /// Ended stream ids, oldest first, so the in-memory history stays bounded.
    ended_order: VecDeque<String>,
    stats: HashMap<String, VecDeque<StatSnapshot>>,
    reservations: Vec<Reservation>,
    /// Set while replacements are suspended because too many engines are
    /// unhealthy at once; shown on every engine.
    replacement_suspended: bool,
    /// VPN nodes whose tunnel is down, with why: their engines are out of
    /// the selection and not replaced (the cause is the node's).
    nodes_down: BTreeMap<String, String>,
    /// The port each VPN node's provider forwards, when it does.
    nodes_forwarded: BTreeMap<String, u16>,
    /// Engines being drained before they are recreated, with why: out of the
    /// selection, and the proxy moves their streams.
    draining: BTreeMap<String, String>,
    /// Answers of [`Registry::find_engine`]'s scan by address, so that an
    /// event naming its engine by address costs a hash lookup, not a scan of
    /// the pool (it was the largest item of an event's cost at 5,000
    /// engines). Cleared whenever an engine is added or removed or its
    /// address, labels or runtime change, so it always answers what the
    /// scan would.
    found_by_address: parking_lot::Mutex<HashMap<(String, u16), String>>,
}

impl Registry {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            engines: BTreeMap::new(),
            streams: HashMap::new(),
            ended_order: VecDeque::new(),
            stats: HashMap::new(),
            reservations: Vec::new(),
            replacement_suspended: false,
            nodes_down: BTreeMap::new(),
            nodes_forwarded: BTreeMap::new(),
            draining: BTreeMap::new(),
            found_by_address: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Rebuilds the registry from what the database kept.
    pub fn restore(limits: Limits, loaded: Loaded) -> Self {
        let mut registry = Self::new(limits);
        let Loaded {
            engines,
            mut streams,
            mut stats,
            mut checks,
            mut transitions,
        } = loaded;
        for engine in engines {
            let id = engine.container_id.clone();
            let mut entry = EngineEntry::new(engine);
            entry.checks = checks.remove(&id).unwrap_or_default();
            entry.transitions = transitions.remove(&id).unwrap_or_default();
            registry.engines.insert(id, entry);
        }
        streams.sort_by_key(|s| (s.ended_at, s.started_at));
        for stream in streams {
            if stream.status == StreamStatus::Started {
                match registry.entry_mut(&stream.container_id) {
                    Some(entry) => {
                        entry.active.insert(stream.id.clone());
                    }
                    None => continue,
                }
            } else {
                registry.ended_order.push_back(stream.id.clone());
            }
            if let Some(history) = stats.remove(&stream.id) {
                registry.stats.insert(stream.id.clone(), history);
            }
            registry.streams.insert(stream.id.clone(), stream);
        }
        registry
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn engine_count(&self) -> usize {
        self.engines.len()
    }

    pub fn engine(&self, id: &str) -> Option<&Engine> {
        self.engines.get(id).map(|e| &e.engine)
    }

    pub fn active_stream_count(&self) -> usize {
        self.engines.values().map(|e| e.active.len()).sum()
    }

    pub fn health_counts(&self) -> [(HealthStatus, usize); 3] {
        let mut counts = HealthStatus::ALL.map(|s| (s, 0));
        for entry in self.engines.values() {
            for (status, count) in &mut counts {
                if *status == entry.engine.health.status {
                    *count += 1;
                }
            }
        }
        counts
    }
}

/// Appends `item`, dropping the oldest beyond `max`. The queue grows by
/// doubling as a `VecDeque` does, but never past `max`: left to itself it
/// would make room for 64 checks to keep 50, or 1,024 snapshots to keep 720,
/// in every history.
pub(crate) fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
    if max == 0 {
        return;
    }
    while queue.len() >= max {
        queue.pop_front();
    }
    if queue.len() == queue.capacity() {
        let target = (queue.capacity() * 2).max(4).min(max);
        queue.reserve_exact(target - queue.len());
    }
    queue.push_back(item);
}

mod engines;
mod health;
mod reservations;
mod streams;
#[cfg(test)]
mod tests;
mod views;

pub use views::EngineFilter;
