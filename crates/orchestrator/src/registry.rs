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
use crate::select::{self, Candidate};
use crate::store::{Loaded, WriteOp};
use crate::time::Timestamp;

/// Label on containers we run that names the published host port of the engine API.
pub const HOST_HTTP_PORT_LABEL: &str = "host.http_port";

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

/// The wire shape of an engine (CONTRACT.md), plus our additions after `streams`.
/// An engine with its health and usage. The fields up to `last_stream_usage`
/// are the contract; the rest are additions.
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
    pub streams: Vec<&'a str>,
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
            registry.engines.insert(
                id.clone(),
                EngineEntry {
                    engine,
                    active: BTreeSet::new(),
                    checks: checks.remove(&id).unwrap_or_default(),
                    transitions: transitions.remove(&id).unwrap_or_default(),
                },
            );
        }
        streams.sort_by_key(|s| (s.ended_at, s.started_at));
        for stream in streams {
            if stream.status == StreamStatus::Started {
                match registry.engines.get_mut(&stream.container_id) {
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

    // ---- engines ---------------------------------------------------------

    /// Finds the engine an event names: by id, else by address. Loopback aliases
    /// are one host, and a container we run also answers to its published port.
    pub fn find_engine(&self, container_id: Option<&str>, host: &str, port: u16) -> Option<&str> {
        if let Some(id) = container_id {
            if let Some((key, _)) = self.engines.get_key_value(id) {
                return Some(key);
            }
        }
        let host = canonical_host(host);
        let loopback = host == "127.0.0.1";
        let port_text = port.to_string();
        self.engines
            .iter()
            .find(|(_, entry)| {
                let e = &entry.engine;
                (e.port == port && canonical_host(&e.host) == host)
                    || (loopback
                        && e.runtime == RuntimeKind::Docker
                        && e.labels.get(HOST_HTTP_PORT_LABEL) == Some(&port_text))
            })
            .map(|(id, _)| id.as_str())
    }

    /// Adds an engine. `container_id` defaults to `"host:port"`.
    pub fn register(&mut self, engine: Engine) -> (String, Vec<WriteOp>) {
        let id = engine.container_id.clone();
        let ops = vec![WriteOp::UpsertEngine(Box::new(engine.clone()))];
        self.engines.insert(
            id.clone(),
            EngineEntry {
                engine,
                active: BTreeSet::new(),
                checks: VecDeque::new(),
                transitions: VecDeque::new(),
            },
        );
        (id, ops)
    }

    pub fn new_external_engine(
        host: &str,
        port: u16,
        container_id: Option<String>,
        name: Option<String>,
        labels: BTreeMap<String, String>,
        now: Timestamp,
    ) -> Engine {
        Engine {
            container_id: container_id.unwrap_or_else(|| external_engine_id(host, port)),
            container_name: name,
            host: host.trim().to_owned(),
            port,
            labels,
            runtime: RuntimeKind::External,
            first_seen: now,
            last_seen: now,
            health: EngineHealth::default(),
            usage: EngineUsage::default(),
        }
    }

    /// Forgets an engine; its active streams end with `reason`.
    pub fn remove_engine(
        &mut self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Engine, Vec<WriteOp>), RegistryError> {
        let active: Vec<String> = match self.engines.get(id) {
            Some(entry) => entry.active.iter().cloned().collect(),
            None => return Err(RegistryError::EngineNotFound(id.to_owned())),
        };
        let mut ops = Vec::new();
        for stream_id in active {
            if let Some((_, more)) = self.end_stream(&stream_id, Some(reason), now) {
                ops.extend(more);
            }
        }
        self.reservations.retain(|r| r.engine_id != id);
        let entry = self
            .engines
            .remove(id)
            .ok_or_else(|| RegistryError::EngineNotFound(id.to_owned()))?;
        ops.push(WriteOp::DeleteEngine(id.to_owned()));
        Ok((entry.engine, ops))
    }

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

    fn view<'a>(
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

    /// Adds an engine, or refreshes the address, name and labels of a known one
    /// (adoption after a restart finds engines the database already knew).
    pub fn upsert(&mut self, engine: Engine) -> Vec<WriteOp> {
        match self.engines.get_mut(&engine.container_id) {
            Some(entry) => {
                let known = &mut entry.engine;
                if known.host == engine.host
                    && known.port == engine.port
                    && known.container_name == engine.container_name
                    && known.labels == engine.labels
                    && known.runtime == engine.runtime
                {
                    return Vec::new();
                }
                known.host = engine.host;
                known.port = engine.port;
                known.container_name = engine.container_name;
                known.labels = engine.labels;
                known.runtime = engine.runtime;
                vec![WriteOp::UpsertEngine(Box::new(known.clone()))]
            }
            None => self.register(engine).1,
        }
    }

    pub fn set_replacement_suspended(&mut self, suspended: bool) {
        self.replacement_suspended = suspended;
    }

    /// Ids of the engines that `runtime` runs.
    pub fn engine_ids(&self, runtime: RuntimeKind) -> Vec<String> {
        self.engines_run_by(runtime)
            .map(|e| e.container_id.clone())
            .collect()
    }

    /// The engines that `runtime` runs.
    pub fn engines_run_by(&self, runtime: RuntimeKind) -> impl Iterator<Item = &Engine> {
        self.engines
            .values()
            .map(|e| &e.engine)
            .filter(move |e| e.runtime == runtime)
    }

    /// The engines we run, as the autoscaler sees them.
    pub fn pool(&self, now: Timestamp) -> Vec<crate::autoscale::PoolEngine> {
        let reserved = self.reservation_counts(now);
        self.engines
            .values()
            .filter(|e| e.engine.runtime == RuntimeKind::Docker)
            .map(|e| crate::autoscale::PoolEngine {
                id: e.engine.container_id.clone(),
                load: e.active.len() as u32
                    + reserved
                        .get(e.engine.container_id.as_str())
                        .copied()
                        .unwrap_or(0),
                idle_since: e.engine.last_seen.max(e.engine.first_seen),
                used: e.engine.usage.streams_total > 0,
            })
            .collect()
    }

    /// Engines we run that have been unhealthy since before `since`.
    pub fn unhealthy_since(&self, since: Timestamp) -> Vec<(String, Timestamp)> {
        self.engines
            .values()
            .filter(|e| e.engine.runtime == RuntimeKind::Docker)
            .filter(|e| e.engine.health.status == HealthStatus::Unhealthy)
            .filter_map(|e| {
                let at = e.engine.health.status_since?;
                (at <= since).then(|| (e.engine.container_id.clone(), at))
            })
            .collect()
    }

    /// Records a note in an engine's health history (a replacement, say) without
    /// changing its status.
    pub fn note(&mut self, id: &str, reason: String, now: Timestamp) -> Vec<WriteOp> {
        let max = self.limits.health_history_max;
        let Some(entry) = self.engines.get_mut(id) else {
            return Vec::new();
        };
        let status = entry.engine.health.status;
        let transition = HealthTransition {
            ts: now,
            from: status,
            to: status,
            reason,
        };
        push_bounded(&mut entry.transitions, transition.clone(), max);
        vec![WriteOp::HealthTransition {
            engine_id: id.to_owned(),
            transition,
        }]
    }

    // ---- health ----------------------------------------------------------

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
        let entry = self.engines.get_mut(id)?;
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

    // ---- streams ---------------------------------------------------------

    /// Records a started stream, registering its engine when nobody knew it.
    pub fn stream_started(
        &mut self,
        event: StreamStart,
        now: Timestamp,
    ) -> Result<(Stream, Vec<WriteOp>), RegistryError> {
        let mut ops = Vec::new();
        let engine_id =
            match self.find_engine(event.container_id.as_deref(), &event.host, event.port) {
                Some(id) => id.to_owned(),
                None => {
                    let engine = Self::new_external_engine(
                        &event.host,
                        event.port,
                        event.container_id.clone(),
                        None,
                        BTreeMap::new(),
                        now,
                    );
                    let (id, more) = self.register(engine);
                    ops.extend(more);
                    id
                }
            };
        let (engine_host, engine_port) = {
            let e = &self.engines[&engine_id].engine;
            (e.host.clone(), e.port)
        };
        // The collector and "stop stream" fetch these URLs: they must stay on the
        // engine, or an event could aim the orchestrator at any host.
        for (field, url) in [
            ("stat_url", &event.stat_url),
            ("command_url", &event.command_url),
        ] {
            if let Some(url) = url {
                check_engine_url(
                    field,
                    url,
                    &[(&engine_host, engine_port), (&event.host, event.port)],
                )?;
            }
        }
        let stream_id = event
            .labels
            .get("stream_id")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| {
                format!(
                    "{}|{}",
                    event.key,
                    event.playback_session_id.as_deref().unwrap_or("")
                )
            });

        // Repeating an event overwrites the stream; detach it from a previous engine.
        let mut was_active_here = false;
        if let Some(old) = self.streams.get(&stream_id) {
            if old.status == StreamStatus::Started {
                if old.container_id == engine_id {
                    was_active_here = true;
                } else {
                    let old_engine = old.container_id.clone();
                    ops.extend(self.detach(&old_engine, &stream_id, now));
                }
            } else {
                self.ended_order.retain(|id| id != &stream_id);
            }
        }

        self.consume_reservation(&engine_id, event.reservation_id.as_deref(), now);
        let entry = self
            .engines
            .get_mut(&engine_id)
            .ok_or_else(|| RegistryError::EngineNotFound(engine_id.clone()))?;
        if entry.active.is_empty() {
            entry.engine.usage.busy_since = Some(now);
        }
        entry.active.insert(stream_id.clone());
        if !was_active_here {
            entry.engine.usage.streams_total += 1;
        }
        entry.engine.usage.last_stream_usage = Some(now);
        entry.engine.last_seen = now;
        ops.push(WriteOp::UpsertEngine(Box::new(entry.engine.clone())));

        let stream = Stream {
            id: stream_id.clone(),
            key_type: event.key_type,
            key: event.key,
            container_id: engine_id,
            playback_session_id: event.playback_session_id,
            stat_url: event.stat_url,
            command_url: event.command_url,
            is_live: event.is_live,
            started_at: now,
            ended_at: None,
            status: StreamStatus::Started,
            end_reason: None,
        };
        ops.push(WriteOp::UpsertStream(Box::new(stream.clone())));
        self.streams.insert(stream_id, stream.clone());
        Ok((stream, ops))
    }

    /// Removes a stream from its engine's active set, closing a busy period.
    fn detach(&mut self, engine_id: &str, stream_id: &str, now: Timestamp) -> Vec<WriteOp> {
        let Some(entry) = self.engines.get_mut(engine_id) else {
            return Vec::new();
        };
        if !entry.active.remove(stream_id) {
            return Vec::new();
        }
        if entry.active.is_empty() {
            let usage = &mut entry.engine.usage;
            if let Some(since) = usage.busy_since.take() {
                usage.busy_ms_closed += (now.millis() - since.millis()).max(0);
            }
            // The autoscaler's grace period counts from here.
            entry.engine.last_seen = now;
        }
        vec![WriteOp::UpsertEngine(Box::new(entry.engine.clone()))]
    }

    /// Ends a started stream. `None` when it is unknown or already ended.
    fn end_stream(
        &mut self,
        stream_id: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Option<(Stream, Vec<WriteOp>)> {
        let stream = self.streams.get_mut(stream_id)?;
        if stream.status != StreamStatus::Started {
            return None;
        }
        stream.status = StreamStatus::Ended;
        stream.ended_at = Some(now);
        stream.end_reason = reason.map(str::to_owned);
        let stream = stream.clone();
        let mut ops = self.detach(&stream.container_id, stream_id, now);
        ops.push(WriteOp::UpsertStream(Box::new(stream.clone())));
        self.ended_order.push_back(stream_id.to_owned());
        self.prune_ended();
        Some((stream, ops))
    }

    fn prune_ended(&mut self) {
        while self.ended_order.len() > self.limits.ended_streams_max {
            let Some(old) = self.ended_order.pop_front() else {
                break;
            };
            if self
                .streams
                .get(&old)
                .is_some_and(|s| s.status == StreamStatus::Ended)
            {
                self.streams.remove(&old);
                self.stats.remove(&old);
            }
        }
    }

    /// The `stream_ended` event: by stream id, else the newest started stream of
    /// the container. Returns whether anything changed and the stream, if known.
    pub fn stream_ended(
        &mut self,
        container_id: Option<&str>,
        stream_id: Option<&str>,
        reason: Option<&str>,
        now: Timestamp,
    ) -> (bool, Option<Stream>, Vec<WriteOp>) {
        // By id when it is known, else the container's newest started stream.
        let known_id = stream_id.filter(|id| self.streams.contains_key(*id));
        let target = match known_id {
            Some(id) => Some(id.to_owned()),
            None => container_id.and_then(|cid| {
                self.engines.get(cid).and_then(|entry| {
                    entry
                        .active
                        .iter()
                        .filter_map(|id| self.streams.get(id))
                        .max_by_key(|s| (s.started_at, s.id.clone()))
                        .map(|s| s.id.clone())
                })
            }),
        };
        let Some(target) = target else {
            return (false, None, Vec::new());
        };
        match self.end_stream(&target, reason, now) {
            Some((stream, ops)) => (true, Some(stream), ops),
            None => (false, self.streams.get(&target).cloned(), Vec::new()),
        }
    }

    /// Ends a stream by id for `DELETE /streams/{id}`.
    pub fn stop_stream(
        &mut self,
        stream_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Stream, Vec<WriteOp>), RegistryError> {
        match self.end_stream(stream_id, Some(reason), now) {
            Some(done) => Ok(done),
            None => self
                .streams
                .get(stream_id)
                .cloned()
                .map(|s| (s, Vec::new()))
                .ok_or_else(|| RegistryError::StreamNotFound(stream_id.to_owned())),
        }
    }

    pub fn stream(&self, id: &str) -> Option<&Stream> {
        self.streams.get(id)
    }

    /// Streams, newest first, optionally filtered.
    pub fn streams(
        &self,
        status: Option<StreamStatus>,
        container_id: Option<&str>,
    ) -> Vec<&Stream> {
        let mut list: Vec<&Stream> = self
            .streams
            .values()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .filter(|s| container_id.is_none_or(|c| s.container_id == c))
            .collect();
        list.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        list
    }

    /// The started streams to poll, interleaved across engines (first stream of
    /// each engine, then the second…) so that bounded concurrency spreads over
    /// engines instead of piling onto one.
    pub fn stat_targets(&self) -> Vec<StatTarget> {
        let mut per_engine: Vec<Vec<StatTarget>> = self
            .engines
            .values()
            .map(|entry| {
                entry
                    .active
                    .iter()
                    .filter_map(|id| self.streams.get(id))
                    .filter_map(|s| {
                        s.stat_url.as_ref().map(|url| StatTarget {
                            stream_id: s.id.clone(),
                            engine_id: s.container_id.clone(),
                            stat_url: url.clone(),
                        })
                    })
                    .rev()
                    .collect()
            })
            .collect();
        let mut targets = Vec::with_capacity(per_engine.iter().map(Vec::len).sum());
        while !per_engine.is_empty() {
            per_engine.retain_mut(|list| match list.pop() {
                Some(target) => {
                    targets.push(target);
                    true
                }
                None => false,
            });
        }
        targets
    }

    /// Adds a snapshot to a stream that is still started.
    pub fn push_stat(&mut self, stream_id: &str, snapshot: StatSnapshot) -> Vec<WriteOp> {
        let active = self
            .streams
            .get(stream_id)
            .is_some_and(|s| s.status == StreamStatus::Started);
        if !active {
            return Vec::new();
        }
        let history = self.stats.entry(stream_id.to_owned()).or_default();
        push_bounded(history, snapshot.clone(), self.limits.stats_history_max);
        vec![WriteOp::StatSnapshot {
            stream_id: stream_id.to_owned(),
            snapshot,
        }]
    }

    pub fn stats(&self, stream_id: &str, since: Option<Timestamp>) -> Option<Vec<&StatSnapshot>> {
        self.streams.get(stream_id)?;
        Some(
            self.stats
                .get(stream_id)
                .map(|h| {
                    h.iter()
                        .filter(|s| since.is_none_or(|t| s.ts > t))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    // ---- selection -------------------------------------------------------

    fn reservation_counts(&self, now: Timestamp) -> HashMap<&str, u32> {
        let mut counts = HashMap::new();
        for r in self.reservations.iter().filter(|r| r.expires_at > now) {
            *counts.entry(r.engine_id.as_str()).or_insert(0) += 1;
        }
        counts
    }

    pub fn purge_expired_reservations(&mut self, now: Timestamp) {
        self.reservations.retain(|r| r.expires_at > now);
    }

    fn consume_reservation(
        &mut self,
        engine_id: &str,
        reservation_id: Option<&str>,
        now: Timestamp,
    ) {
        self.purge_expired_reservations(now);
        let position = reservation_id
            .and_then(|rid| {
                self.reservations
                    .iter()
                    .position(|r| r.reservation_id == rid)
            })
            .or_else(|| {
                self.reservations
                    .iter()
                    .position(|r| r.engine_id == engine_id)
            });
        if let Some(i) = position {
            self.reservations.remove(i);
        }
    }

    /// Picks the best engine and reserves a slot on it until a `stream_started`
    /// arrives for it or `ttl_s` passes. Runs under the write lock, so two
    /// callers can never both get the last free slot.
    pub fn select_and_reserve(
        &mut self,
        max_streams: u32,
        ttl_s: f64,
        now: Timestamp,
    ) -> Option<Reservation> {
        self.purge_expired_reservations(now);
        let reserved = self.reservation_counts(now);
        let chosen = select::pick(
            self.engines.values().map(|entry| Candidate {
                id: &entry.engine.container_id,
                healthy: entry.engine.health.status == HealthStatus::Healthy,
                load: entry.active.len() as u32
                    + reserved
                        .get(entry.engine.container_id.as_str())
                        .copied()
                        .unwrap_or(0),
                last_stream_usage: entry.engine.usage.last_stream_usage,
            }),
            max_streams,
        )?
        .to_owned();
        let reservation = Reservation {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            engine_id: chosen,
            created_at: now,
            expires_at: now.plus_seconds(ttl_s),
        };
        self.reservations.push(reservation.clone());
        Some(reservation)
    }
}

/// Appends `item`, dropping the oldest beyond `max`. The queue grows by
/// doubling as a `VecDeque` does, but never past `max`: left to itself it
/// would make room for 64 checks to keep 50, or 1,024 snapshots to keep 720,
/// in every history.
fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, max: usize) {
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

/// Accepts `url` only when it is http(s) and points at one of the given
/// addresses (loopback aliases count as the same host).
fn check_engine_url(
    field: &'static str,
    url: &str,
    allowed: &[(&str, u16)],
) -> Result<(), RegistryError> {
    let parsed = Url::parse(url).map_err(|_| RegistryError::BadUrl {
        field,
        url: url.to_owned(),
    })?;
    let (host, port) = match (
        parsed.scheme(),
        parsed.host_str(),
        parsed.port_or_known_default(),
    ) {
        ("http" | "https", Some(host), Some(port)) => (host.to_owned(), port),
        _ => {
            return Err(RegistryError::BadUrl {
                field,
                url: url.to_owned(),
            })
        }
    };
    if allowed
        .iter()
        .any(|(h, p)| *p == port && same_host(h, &host))
    {
        Ok(())
    } else {
        Err(RegistryError::ForeignUrl {
            field,
            url: url.to_owned(),
            engine: external_engine_id(allowed[0].0, allowed[0].1),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn bounded_histories_hold_no_more_room_than_they_keep() {
        for max in [1, 3, 50, 720] {
            let mut queue = std::collections::VecDeque::new();
            for i in 0..max * 3 {
                super::push_bounded(&mut queue, i, max);
            }
            assert_eq!(queue.len(), max);
            assert_eq!(queue.front(), Some(&(max * 2)), "the oldest go first");
            assert!(
                queue.capacity() <= max,
                "capacity {} for {max}",
                queue.capacity()
            );
        }
        let mut none = std::collections::VecDeque::new();
        super::push_bounded(&mut none, 1, 0);
        assert!(none.is_empty());
    }

    use super::*;

    const LIMITS: Limits = Limits {
        failure_threshold: 2,
        health_history_max: 3,
        stats_history_max: 2,
        ended_streams_max: 2,
    };

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn start(host: &str, port: u16, key: &str) -> StreamStart {
        StreamStart {
            container_id: None,
            host: host.into(),
            port,
            key_type: KeyType::Infohash,
            key: key.into(),
            playback_session_id: Some("sess".into()),
            stat_url: Some(format!("http://{host}:{port}/ace/stat/x/sess")),
            command_url: None,
            is_live: true,
            labels: BTreeMap::new(),
            reservation_id: None,
        }
    }

    fn check(ok: bool, ms: i64) -> HealthCheck {
        HealthCheck {
            ts: t(ms),
            ok,
            source: CheckSource::Probe,
            latency_ms: Some(1.0),
            error: (!ok).then(|| "timed out".to_owned()),
        }
    }

    #[test]
    fn localhost_and_loopback_find_one_engine() {
        let mut reg = Registry::new(LIMITS);
        let (s1, _) = reg
            .stream_started(start("127.0.0.1", 19023, "a"), t(1))
            .unwrap();
        let (s2, _) = reg
            .stream_started(start("localhost", 19023, "b"), t(2))
            .unwrap();
        assert_eq!(s1.container_id, "127.0.0.1:19023");
        assert_eq!(s2.container_id, s1.container_id);
        assert_eq!(reg.engine_count(), 1);
        assert_eq!(
            reg.engine("127.0.0.1:19023").unwrap().usage.streams_total,
            2
        );
    }

    #[test]
    fn docker_engines_answer_to_their_published_port() {
        let mut reg = Registry::new(LIMITS);
        let mut engine = Registry::new_external_engine(
            "engine-3",
            40001,
            Some("abc123".into()),
            Some("engine-3".into()),
            BTreeMap::from([(HOST_HTTP_PORT_LABEL.into(), "19005".into())]),
            t(0),
        );
        engine.runtime = RuntimeKind::Docker;
        reg.register(engine);
        assert_eq!(reg.find_engine(None, "localhost", 19005), Some("abc123"));
        assert_eq!(reg.find_engine(None, "10.1.1.1", 19005), None);
    }

    #[test]
    fn threshold_then_one_success_recovers() {
        let mut reg = Registry::new(LIMITS);
        reg.register(Registry::new_external_engine(
            "h",
            1,
            None,
            None,
            BTreeMap::new(),
            t(0),
        ));
        let (r, _) = reg.record_check("h:1", check(false, 1)).unwrap();
        assert_eq!(
            r.status,
            HealthStatus::Unknown,
            "one failure is under the threshold"
        );
        let (r, _) = reg.record_check("h:1", check(false, 2)).unwrap();
        assert_eq!(r.status, HealthStatus::Unhealthy);
        let tr = r.transition.unwrap();
        assert_eq!(
            (tr.from, tr.to),
            (HealthStatus::Unknown, HealthStatus::Unhealthy)
        );
        assert!(tr.reason.contains("timed out"), "{}", tr.reason);
        let (r, _) = reg.record_check("h:1", check(true, 3)).unwrap();
        assert_eq!(r.status, HealthStatus::Healthy);
        let history = reg.health_history("h:1").unwrap();
        assert_eq!(history.checks.len(), 3, "bounded to health_history_max");
        assert_eq!(history.transitions.len(), 2);
        assert!(reg.record_check("gone:1", check(true, 4)).is_none());
    }

    #[test]
    fn ending_twice_and_ending_the_unknown_change_nothing() {
        let mut reg = Registry::new(LIMITS);
        let (s, _) = reg
            .stream_started(start("127.0.0.1", 5, "k"), t(1_000))
            .unwrap();
        let (updated, stream, _) = reg.stream_ended(None, Some(&s.id), None, t(3_000));
        assert!(updated);
        assert_eq!(stream.unwrap().status, StreamStatus::Ended);
        let (updated, stream, ops) = reg.stream_ended(None, Some(&s.id), None, t(4_000));
        assert!(!updated && stream.is_some() && ops.is_empty());
        let (updated, stream, _) = reg.stream_ended(None, Some("nope"), None, t(4_000));
        assert!(!updated && stream.is_none());
        let usage = &reg.engine(&s.container_id).unwrap().usage;
        assert_eq!(usage.busy_seconds(t(10_000)), 2.0);
    }

    #[test]
    fn foreign_stat_urls_are_refused() {
        let mut reg = Registry::new(LIMITS);
        let mut ev = start("127.0.0.1", 19023, "k");
        ev.stat_url = Some("http://169.254.169.254/latest/meta-data".into());
        assert!(matches!(
            reg.stream_started(ev, t(1)),
            Err(RegistryError::ForeignUrl {
                field: "stat_url",
                ..
            })
        ));
        let mut ev = start("127.0.0.1", 19023, "k");
        ev.command_url = Some("http://localhost:19023/ace/cmd/x/y".into());
        assert!(
            reg.stream_started(ev, t(1)).is_ok(),
            "loopback alias is the same engine"
        );
    }

    #[test]
    fn selection_reserves_so_the_last_slot_goes_once() {
        let mut reg = Registry::new(LIMITS);
        reg.register(Registry::new_external_engine(
            "h",
            1,
            None,
            None,
            BTreeMap::new(),
            t(0),
        ));
        reg.record_check("h:1", check(true, 1));
        let first = reg.select_and_reserve(1, 30.0, t(2));
        assert_eq!(first.unwrap().engine_id, "h:1");
        assert!(
            reg.select_and_reserve(1, 30.0, t(3)).is_none(),
            "slot is reserved"
        );
        assert!(
            reg.select_and_reserve(1, 30.0, t(40_000)).is_some(),
            "reservation expired"
        );
    }

    #[test]
    fn ended_streams_are_bounded_in_memory() {
        let mut reg = Registry::new(LIMITS);
        for i in 0..4 {
            let (s, _) = reg
                .stream_started(start("127.0.0.1", 5, &format!("k{i}")), t(i))
                .unwrap();
            reg.stream_ended(None, Some(&s.id), None, t(i + 10));
        }
        assert_eq!(reg.streams(Some(StreamStatus::Ended), None).len(), 2);
    }
}
