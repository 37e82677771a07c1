//! The dashboard's feed: one versioned model of what the page shows, and the
//! deltas between versions.
//!
//! Every open dashboard used to get the whole pool after each change (1.6 MiB
//! at 1,000 engines, twice a second). Now the feed keeps the last picture it
//! published; after a change it takes a new one, compares the two engine by
//! engine and field by field, and publishes only the difference as a *delta*
//! with the next version number. A dashboard gets one snapshot when it
//! connects and the deltas after it; one that reconnects within the feed's
//! memory gets the deltas it missed, else a new snapshot. The work is done
//! once per change, whatever the number of dashboards.
//!
//! A delta, as JSON (sections without changes are left out):
//!
//! ```json
//! {"version": "18c1f2a3b4-42", "t": 1795836466123, "generated_at": "2026-11-28T03:27:46.123Z",
//!  "engines": {"<id>": {"field": value, …} | null},
//!  "checks": {"<id>": [[age_ms, 1], [age_ms, 0, "error"], …]},
//!  "streams": {"<id>": {"field": value, …} | null},
//!  "vpn_nodes": {"<name>": {"field": value, …} | null}}
//! ```
//!
//! An engine, stream or node the page does not know yet comes whole; one it
//! knows comes with the fields that changed; `null` removes it. `checks` are
//! an engine's new health checks, newest first, each `[age in ms before t,
//! ok as 1 or 0, error?]`; they go in front of the engine's recent checks (at
//! most [`RECENT_CHECKS`] kept). Because a check sets `last_health_check` to
//! its own time, an engine's `last_health_check` is left out of its patch
//! when it is the time of its newest new check: that is half the bytes of a
//! routine check, which is most of what a big pool sends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::domain::StreamStatus;
use crate::registry::Registry;
use crate::service::Orchestrator;
use crate::time::Timestamp;
use crate::vpn::{engines_behind_in, Vpn};

/// How many of an engine's newest checks the page keeps, for the strip that
/// makes a flapping engine visible at a glance.
pub const RECENT_CHECKS: usize = 30;

/// Deltas kept for dashboards that reconnect, at most this many…
const LOG_MAX_DELTAS: usize = 512;
/// …and at most this many bytes: a dashboard further behind gets a snapshot.
const LOG_MAX_BYTES: usize = 8 * 1024 * 1024;

/// One of an engine's recent checks, as the page shows it.
#[derive(Clone, PartialEq, Debug)]
struct Check {
    ts: Timestamp,
    ok: bool,
    error: Option<String>,
}

impl Check {
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        object.insert("ts".into(), Value::String(self.ts.to_string()));
        object.insert("ok".into(), Value::Bool(self.ok));
        if let Some(error) = &self.error {
            object.insert("error".into(), Value::String(error.clone()));
        }
        Value::Object(object)
    }

    /// The compact form of a delta: `[age_ms, ok, error?]`.
    fn to_delta(&self, t: Timestamp) -> Value {
        let mut tuple = vec![
            Value::from(t.millis() - self.ts.millis()),
            Value::from(u8::from(self.ok)),
        ];
        if let Some(error) = &self.error {
            tuple.push(Value::String(error.clone()));
        }
        Value::Array(tuple)
    }
}

/// What the page shows, as the feed last published it.
#[derive(Default)]
struct Model {
    /// By id: the order of `GET /engines`.
    engines: BTreeMap<String, Map<String, Value>>,
    /// Newest first, at most [`RECENT_CHECKS`].
    checks: HashMap<String, Vec<Check>>,
    /// Started streams by id.
    streams: HashMap<String, Map<String, Value>>,
    /// Newest first, as `GET /streams` orders them.
    stream_order: Vec<String>,
    /// In configuration order.
    nodes: Vec<(String, Map<String, Value>)>,
}

/// A fresh reading of the registry and the VPN nodes.
struct Reading {
    /// Exactly what `GET /engines` answers.
    engines: Vec<u8>,
    new_checks: HashMap<String, Vec<Check>>,
    streams: Vec<Value>,
    nodes: Vec<Value>,
}

/// What a dashboard that knows `version` should be sent next.
pub enum Catchup {
    /// The deltas after its version, oldest first (none when it is current).
    Deltas(Vec<Arc<str>>),
    /// Its version is unknown or too old: the whole picture.
    Snapshot(Arc<str>),
}

struct Inner {
    changes: tokio::sync::watch::Receiver<u64>,
    /// False until the first reading.
    read_once: bool,
    version: u64,
    generated_at: Timestamp,
    model: Model,
    /// `(version, delta)`, oldest first; consecutive versions.
    log: VecDeque<(u64, Arc<str>)>,
    log_bytes: usize,
    /// The snapshot of `version`, built at the first request for it.
    snapshot: Option<Arc<str>>,
}

/// The feed. [`Feed::advance`] does the work; every route reads what it left.
pub struct Feed {
    /// Tells versions of one server run from those of another (a page that
    /// reconnects to a restarted server must not resume).
    epoch: u64,
    inner: parking_lot::Mutex<Inner>,
}

impl Feed {
    pub fn new(orch: &Orchestrator) -> Self {
        Self {
            epoch: Timestamp::now().millis().unsigned_abs(),
            inner: parking_lot::Mutex::new(Inner {
                changes: orch.watch_changes(),
                read_once: false,
                version: 0,
                generated_at: Timestamp::now(),
                model: Model::default(),
                log: VecDeque::new(),
                log_bytes: 0,
                snapshot: None,
            }),
        }
    }

    /// The opaque version token of `version`: what the page echoes back as
    /// `Last-Event-ID`, `If-None-Match` or `?since=`.
    fn token(&self, version: u64) -> String {
        format!("{:x}-{version}", self.epoch)
    }

    /// The version a token names, when it was made by this server run.
    pub fn parse_token(&self, token: &str) -> Option<u64> {
        let (epoch, version) = token.trim().trim_matches('"').split_once('-')?;
        (u64::from_str_radix(epoch, 16).ok()? == self.epoch)
            .then(|| version.parse().ok())
            .flatten()
    }

    /// The current version's token.
    pub fn current_token(&self) -> String {
        self.token(self.inner.lock().version)
    }

    /// Publishes a delta when the registry or a VPN node changed since the
    /// last call, and answers the current version. Runs for tens of
    /// milliseconds at thousands of engines: call it off the async workers
    /// ([`tokio::task::spawn_blocking`]). The registry's read lock is held only
    /// while the registry is serialized; comparing happens after.
    pub fn advance(&self, orch: &Orchestrator, vpn: &Vpn) -> u64 {
        let mut inner = self.inner.lock();
        let changed = inner.changes.has_changed().unwrap_or(false);
        if inner.read_once && !changed {
            return inner.version;
        }
        inner.changes.borrow_and_update();
        // Lock order: the feed, then a node (summaries), then the registry;
        // nothing takes the feed's lock under either of the others.
        let nodes = vpn.summaries();
        let now = Timestamp::now();
        let reading = orch.read(|registry| read(registry, &inner.model, nodes, now));
        let Ok(reading) = reading else {
            // Never expected: the registry always serializes.
            return inner.version;
        };
        let first = !inner.read_once;
        inner.read_once = true;
        let delta = inner.model.apply(reading, now);
        if first {
            inner.generated_at = now;
            return inner.version;
        }
        if let Some(mut delta) = delta {
            inner.version += 1;
            inner.generated_at = now;
            inner.snapshot = None;
            let version = self.token(inner.version);
            delta.insert("version".into(), Value::String(version));
            delta.insert("t".into(), Value::from(now.millis()));
            delta.insert("generated_at".into(), Value::String(now.to_string()));
            let text: Arc<str> = Value::Object(delta).to_string().into();
            inner.log_bytes += text.len();
            let version = inner.version;
            inner.log.push_back((version, text));
            while inner.log.len() > LOG_MAX_DELTAS
                || (inner.log_bytes > LOG_MAX_BYTES && inner.log.len() > 1)
            {
                if let Some((_, old)) = inner.log.pop_front() {
                    inner.log_bytes -= old.len();
                }
            }
        }
        inner.version
    }

    /// The whole picture at the current version, as JSON (see
    /// [`super::PanelSnapshot`]). Built once per version.
    pub fn snapshot(&self) -> (Arc<str>, String) {
        let mut inner = self.inner.lock();
        let token = self.token(inner.version);
        if let Some(snapshot) = &inner.snapshot {
            return (snapshot.clone(), token);
        }
        let text: Arc<str> = inner.model.snapshot_json(&token, inner.generated_at).into();
        inner.snapshot = Some(text.clone());
        (text, token)
    }

    /// What a page at version `known` (a token) needs to be current.
    pub fn catch_up(&self, known: Option<&str>) -> (Catchup, String) {
        let known = known.and_then(|t| self.parse_token(t));
        {
            let inner = self.inner.lock();
            if let Some(known) = known {
                let oldest = inner.log.front().map_or(inner.version + 1, |(v, _)| *v);
                // The deltas after `known` are `known + 1 ..= version`.
                if known <= inner.version && known + 1 >= oldest {
                    let deltas = inner
                        .log
                        .iter()
                        .filter(|(v, _)| *v > known)
                        .map(|(_, d)| d.clone())
                        .collect();
                    return (Catchup::Deltas(deltas), self.token(inner.version));
                }
            }
        }
        let (snapshot, token) = self.snapshot();
        (Catchup::Snapshot(snapshot), token)
    }
}

/// Reads what the page shows, under the registry's read lock: the engines as
/// `GET /engines` answers them, the checks each engine got since the model's
/// newest, the started streams and the VPN nodes with the engines behind them.
fn read(
    registry: &Registry,
    model: &Model,
    mut nodes: Vec<crate::vpn::NodeSummary>,
    now: Timestamp,
) -> serde_json::Result<Reading> {
    for node in &mut nodes {
        node.engines = engines_behind_in(registry, &node.name);
    }
    let engines = registry.engines_json(now)?;
    let streams = serde_json::to_value(registry.streams(Some(StreamStatus::Started), None))?;
    let mut new_checks = HashMap::new();
    for target in registry.probe_targets() {
        let Some(history) = registry.health_history(&target.engine_id) else {
            continue;
        };
        let newest_known = model.checks.get(&target.engine_id).and_then(|c| c.first());
        let fresh: Vec<Check> = history
            .checks
            .iter()
            .take(RECENT_CHECKS)
            .take_while(|c| {
                newest_known.is_none_or(|k| !(k.ts == c.ts && k.ok == c.ok && k.error == c.error))
            })
            .map(|c| Check {
                ts: c.ts,
                ok: c.ok,
                error: c.error.clone(),
            })
            .collect();
        if !fresh.is_empty() {
            new_checks.insert(target.engine_id, fresh);
        }
    }
    let nodes = serde_json::to_value(nodes)?;
    Ok(Reading {
        // Parsed after the lock is released.
        engines,
        new_checks,
        streams: into_array(streams),
        nodes: into_array(nodes),
    })
}

fn into_array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

fn into_object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(object) => object,
        _ => Map::new(),
    }
}

/// The fields of `new` that differ from `old` (`null` for a field `old` had
/// and `new` has not).
fn patch(old: &Map<String, Value>, new: &Map<String, Value>) -> Map<String, Value> {
    let mut changed: Map<String, Value> = new
        .iter()
        .filter(|(k, v)| old.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for key in old.keys() {
        if !new.contains_key(key) {
            changed.insert(key.clone(), Value::Null);
        }
    }
    changed
}

/// Adds, patches or removes items keyed by `key`, writing what changed into
/// `out` (`null` for a removed item).
fn merge_keyed(
    model: &mut Vec<(String, Map<String, Value>)>,
    fresh: Vec<Value>,
    key: &str,
    out: &mut Map<String, Value>,
) {
    let mut old: HashMap<String, Map<String, Value>> = model.drain(..).collect();
    for item in fresh {
        let item = into_object(item);
        let id = item
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match old.remove(&id) {
            Some(previous) => {
                let changed = patch(&previous, &item);
                if !changed.is_empty() {
                    out.insert(id.clone(), Value::Object(changed));
                }
            }
            None => {
                out.insert(id.clone(), Value::Object(item.clone()));
            }
        }
        model.push((id, item));
    }
    for id in old.into_keys() {
        out.insert(id, Value::Null);
    }
}

impl Model {
    /// Takes a reading in and answers the delta from the previous model, or
    /// `None` when nothing the page shows changed.
    fn apply(&mut self, reading: Reading, now: Timestamp) -> Option<Map<String, Value>> {
        let mut engines_out = Map::new();
        let mut checks_out = Map::new();
        let mut seen = std::collections::HashSet::new();
        let mut new_checks = reading.new_checks;
        let engines = into_array(serde_json::from_slice(&reading.engines).unwrap_or(Value::Null));
        for engine in engines {
            let engine = into_object(engine);
            let Some(id) = engine
                .get("container_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
            else {
                continue;
            };
            seen.insert(id.clone());
            let fresh = new_checks.remove(&id).unwrap_or_default();
            let implied = fresh.first().map(|c| Value::String(c.ts.to_string()));
            match self.engines.get(&id) {
                Some(previous) => {
                    let mut changed = patch(previous, &engine);
                    // The newest new check says when the engine was last
                    // checked; the page reads it from there.
                    if let Some(implied) = &implied {
                        match engine.get("last_health_check") {
                            Some(value) if value == implied => {
                                changed.remove("last_health_check");
                            }
                            Some(value) => {
                                changed.insert("last_health_check".into(), value.clone());
                            }
                            None => {}
                        }
                    }
                    if !changed.is_empty() {
                        engines_out.insert(id.clone(), Value::Object(changed));
                    }
                }
                None => {
                    engines_out.insert(id.clone(), Value::Object(engine.clone()));
                }
            }
            if !fresh.is_empty() {
                checks_out.insert(
                    id.clone(),
                    Value::Array(fresh.iter().map(|c| c.to_delta(now)).collect()),
                );
                let kept = self.checks.entry(id.clone()).or_default();
                let mut merged = fresh;
                merged.append(kept);
                merged.truncate(RECENT_CHECKS);
                *kept = merged;
            } else {
                self.checks.entry(id.clone()).or_default();
            }
            self.engines.insert(id, engine);
        }
        let gone: Vec<String> = self
            .engines
            .keys()
            .filter(|id| !seen.contains(*id))
            .cloned()
            .collect();
        for id in gone {
            self.engines.remove(&id);
            self.checks.remove(&id);
            engines_out.insert(id, Value::Null);
        }

        let mut streams_out = Map::new();
        let mut streams: Vec<(String, Map<String, Value>)> = self
            .stream_order
            .iter()
            .filter_map(|id| self.streams.remove(id).map(|s| (id.clone(), s)))
            .collect();
        merge_keyed(&mut streams, reading.streams, "id", &mut streams_out);
        self.stream_order = streams.iter().map(|(id, _)| id.clone()).collect();
        self.streams = streams.into_iter().collect();

        let mut nodes_out = Map::new();
        merge_keyed(&mut self.nodes, reading.nodes, "name", &mut nodes_out);

        let mut delta = Map::new();
        for (name, section) in [
            ("engines", engines_out),
            ("checks", checks_out),
            ("streams", streams_out),
            ("vpn_nodes", nodes_out),
        ] {
            if !section.is_empty() {
                delta.insert(name.into(), Value::Object(section));
            }
        }
        (!delta.is_empty()).then_some(delta)
    }

    /// The whole model as one JSON object.
    fn snapshot_json(&self, version: &str, generated_at: Timestamp) -> String {
        #[derive(serde::Serialize)]
        struct Snapshot<'a> {
            version: &'a str,
            generated_at: Timestamp,
            recent_checks_max: usize,
            engines: Vec<&'a Map<String, Value>>,
            streams: Vec<&'a Map<String, Value>>,
            recent_checks: BTreeMap<&'a str, Vec<Value>>,
            vpn_nodes: Vec<&'a Map<String, Value>>,
        }
        let snapshot = Snapshot {
            version,
            generated_at,
            recent_checks_max: RECENT_CHECKS,
            engines: self.engines.values().collect(),
            streams: self
                .stream_order
                .iter()
                .filter_map(|id| self.streams.get(id))
                .collect(),
            recent_checks: self
                .engines
                .keys()
                .map(|id| {
                    let checks = self
                        .checks
                        .get(id)
                        .map(|c| c.iter().map(Check::to_json).collect())
                        .unwrap_or_default();
                    (id.as_str(), checks)
                })
                .collect(),
            vpn_nodes: self.nodes.iter().map(|(_, n)| n).collect(),
        };
        serde_json::to_string(&snapshot).unwrap_or_default()
    }
}

/// The snapshot a new feed would publish for `registry`: for tests and
/// tools that have a registry but no running service.
pub fn snapshot_of(
    registry: &Registry,
    now: Timestamp,
    nodes: Vec<crate::vpn::NodeSummary>,
) -> serde_json::Result<String> {
    let mut model = Model::default();
    let reading = read(registry, &model, nodes, now)?;
    model.apply(reading, now);
    Ok(model.snapshot_json("0-0", now))
}
