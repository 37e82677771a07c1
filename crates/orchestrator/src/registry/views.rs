//! Read-only views in the wire shape, serialized while the lock is held.

use super::*;

/// Which engines a listing shows (`GET /engines?health=…`); the default
/// shows every engine.
#[derive(Debug, Default, Clone)]
pub struct EngineFilter {
    pub health: Option<HealthStatus>,
    pub runtime: Option<RuntimeKind>,
    /// Compared by [`canonical_host`], so loopback aliases are one host.
    pub host: Option<String>,
    /// The VPN node (container name) the engine runs behind.
    pub vpn_node: Option<String>,
    /// A label key, and the value it must have (`None`: any value).
    pub label: Option<(String, Option<String>)>,
}

impl EngineFilter {
    /// True when it lets every engine through.
    pub fn is_empty(&self) -> bool {
        self.health.is_none()
            && self.runtime.is_none()
            && self.host.is_none()
            && self.vpn_node.is_none()
            && self.label.is_none()
    }

    pub fn matches(&self, engine: &Engine) -> bool {
        self.health.is_none_or(|h| engine.health.status == h)
            && self.runtime.is_none_or(|r| engine.runtime == r)
            && self
                .vpn_node
                .as_deref()
                .is_none_or(|node| engine.vpn_node() == Some(node))
            && self.label.as_ref().is_none_or(|(key, value)| {
                engine
                    .labels
                    .get(key)
                    .is_some_and(|v| value.as_deref().is_none_or(|want| v == want))
            })
            && self
                .host
                .as_deref()
                .is_none_or(|host| canonical_host(&engine.host) == host)
    }
}

/// The engines of a listing, serialized one by one as a JSON array (no
/// vector of views in between).
struct EngineList<'a> {
    registry: &'a Registry,
    filter: &'a EngineFilter,
    now: Timestamp,
    reserved: HashMap<&'a str, u32>,
}

impl Serialize for EngineList<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.registry
                .engines
                .values()
                .filter(|e| self.filter.matches(&e.engine))
                .map(|e| self.registry.view(e, self.now, &self.reserved)),
        )
    }
}

impl Registry {
    /// Appends to `out` the engines after `after` (by id) that `filter`
    /// lets through, at most `max` engines looked at, each preceded by a
    /// comma unless it is the list's first (`first`). Answers the id to go
    /// on after, or `None` when the list is complete. A caller can thus
    /// write a large list in pieces, letting the lock go in between.
    pub fn append_engines_json(
        &self,
        now: Timestamp,
        filter: &EngineFilter,
        after: Option<&str>,
        max: usize,
        out: &mut Vec<u8>,
        first: &mut bool,
    ) -> serde_json::Result<Option<String>> {
        use std::ops::Bound;
        let reserved = self.reservation_counts(now);
        let start = match after {
            Some(id) => Bound::Excluded(id),
            None => Bound::Unbounded,
        };
        let mut looked = 0;
        let mut last = None;
        for (id, entry) in self
            .engines
            .range::<str, _>((start, Bound::Unbounded))
            .take(max)
        {
            looked += 1;
            last = Some(id);
            if !filter.matches(&entry.engine) {
                continue;
            }
            if !std::mem::take(first) {
                out.push(b',');
            }
            self.append_engine_json(entry, now, &reserved, out)?;
        }
        Ok(if looked == max { last.cloned() } else { None })
    }

    /// One engine of a listing: its cached JSON up to `streams_total`, then
    /// the fields that move with the clock or outside the entry. A listing
    /// of 5,000 engines every 100 ms, with each engine checked every 2 s,
    /// serializes about one engine in twenty and copies the rest: the
    /// serializer was most of the listing's time (docs/PERFORMANCE.md).
    /// The bytes are the same as serializing [`EngineView`] whole; debug
    /// builds check that on every engine, so a change that bypassed
    /// [`Registry::entry_mut`] fails the test suite.
    fn append_engine_json(
        &self,
        entry: &EngineEntry,
        now: Timestamp,
        reserved: &HashMap<&str, u32>,
        out: &mut Vec<u8>,
    ) -> serde_json::Result<()> {
        let start = out.len();
        let stable = match entry.listed.get() {
            Some(stable) => stable,
            None => {
                let fresh = self.stable_json(entry)?;
                entry.listed.get_or_init(|| fresh)
            }
        };
        out.extend_from_slice(stable);
        let e = &entry.engine;
        out.extend_from_slice(b",\"busy_seconds\":");
        serde_json::to_writer(&mut *out, &e.usage.busy_seconds(now))?;
        out.extend_from_slice(b",\"reservations\":");
        let reservations = reserved.get(e.container_id.as_str()).copied().unwrap_or(0);
        serde_json::to_writer(&mut *out, &reservations)?;
        out.extend_from_slice(if self.replacement_suspended {
            b",\"replacement_suspended\":true}"
        } else {
            b",\"replacement_suspended\":false}"
        });
        debug_assert_eq!(
            std::str::from_utf8(&out[start..]).ok(),
            serde_json::to_string(&self.view(entry, now, reserved))
                .ok()
                .as_deref(),
            "the cached listing of engine {} is stale: a change bypassed Registry::entry_mut",
            e.container_id
        );
        Ok(())
    }

    /// An engine's listing JSON without its last three fields and the
    /// closing brace: [`EngineView`] serialized with those fields at fixed
    /// values, which are then cut off.
    fn stable_json(&self, entry: &EngineEntry) -> serde_json::Result<Box<[u8]>> {
        const FIXED_TAIL: &[u8] =
            b",\"busy_seconds\":0.0,\"reservations\":0,\"replacement_suspended\":false}";
        let mut view = self.view(entry, Timestamp::from_millis(0), &HashMap::new());
        view.busy_seconds = 0.0;
        view.replacement_suspended = false;
        let mut json = serde_json::to_vec(&view)?;
        // EngineView must end with these three fields.
        if !json.ends_with(FIXED_TAIL) {
            return Err(serde::ser::Error::custom(
                "EngineView no longer ends with busy_seconds, reservations, replacement_suspended",
            ));
        }
        json.truncate(json.len() - FIXED_TAIL.len());
        Ok(json.into_boxed_slice())
    }

    /// The entry of engine `id`, for a change: its cached listing is
    /// dropped. Every change to an engine's entry goes through here.
    pub(super) fn entry_mut(&mut self, id: &str) -> Option<&mut EngineEntry> {
        let entry = self.engines.get_mut(id)?;
        entry.listed.take();
        Some(entry)
    }

    /// Every engine, ordered by id, as one JSON array written in one hold
    /// of the lock (the dashboard's snapshot).
    pub fn engines_json(&self, now: Timestamp) -> serde_json::Result<Vec<u8>> {
        let list = EngineList {
            registry: self,
            filter: &EngineFilter::default(),
            now,
            reserved: self.reservation_counts(now),
        };
        serde_json::to_vec(&list)
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
            streams: &entry.active,
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
