//! The vocabulary of the orchestrator: engines, streams, health and usage.
//! Plain data, no I/O; the JSON shapes here are the wire contract.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// `unknown` = not checked yet, or cannot be determined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Healthy,
    Unhealthy,
    Unknown,
}

impl HealthStatus {
    pub const ALL: [HealthStatus; 3] = [Self::Healthy, Self::Unhealthy, Self::Unknown];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Unhealthy => "unhealthy",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who runs the engine. `external` engines are registered by address and only
/// monitored; `docker` engines are containers this orchestrator started or adopted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    External,
    Docker,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::External => "external",
            Self::Docker => "docker",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "external" => Some(Self::External),
            "docker" => Some(Self::Docker),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KeyType {
    ContentId,
    Infohash,
    Url,
    Magnet,
}

impl KeyType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentId => "content_id",
            Self::Infohash => "infohash",
            Self::Url => "url",
            Self::Magnet => "magnet",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "content_id" => Some(Self::ContentId),
            "infohash" => Some(Self::Infohash),
            "url" => Some(Self::Url),
            "magnet" => Some(Self::Magnet),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Started,
    Ended,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Ended => "ended",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "started" => Some(Self::Started),
            "ended" => Some(Self::Ended),
            _ => None,
        }
    }
}

/// Health as the monitor last judged it.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineHealth {
    pub status: HealthStatus,
    pub last_check: Option<Timestamp>,
    /// When `status` last changed; with `status == Unhealthy` this is how long it has been broken.
    pub status_since: Option<Timestamp>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<f64>,
}

impl Default for EngineHealth {
    fn default() -> Self {
        Self {
            status: HealthStatus::Unknown,
            last_check: None,
            status_since: None,
            consecutive_failures: 0,
            last_error: None,
            last_latency_ms: None,
        }
    }
}

/// What capacity planning needs to know about an engine's use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineUsage {
    pub last_stream_usage: Option<Timestamp>,
    pub streams_total: u64,
    /// Busy time of the periods that have ended; the current one is in `busy_since`.
    pub busy_ms_closed: i64,
    /// Set while at least one stream is active.
    pub busy_since: Option<Timestamp>,
}

impl EngineUsage {
    pub fn busy_seconds(&self, now: Timestamp) -> f64 {
        let open = self
            .busy_since
            .map_or(0, |since| (now.millis() - since.millis()).max(0));
        (self.busy_ms_closed + open) as f64 / 1000.0
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Engine {
    pub container_id: String,
    pub container_name: Option<String>,
    pub host: String,
    pub port: u16,
    pub labels: BTreeMap<String, String>,
    pub runtime: RuntimeKind,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    pub health: EngineHealth,
    pub usage: EngineUsage,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stream {
    /// `labels.stream_id` of the start event, else `{key}|{playback_session_id}`.
    #[schema(example = "ch-42")]
    pub id: String,
    pub key_type: KeyType,
    pub key: String,
    /// The engine the stream runs on.
    pub container_id: String,
    /// The engine's playback session.
    #[schema(required = true)]
    pub playback_session_id: Option<String>,
    /// The engine URL the collector polls for stat snapshots.
    #[schema(required = true)]
    pub stat_url: Option<String>,
    /// The engine URL that controls the stream (`?method=stop`).
    #[schema(required = true)]
    pub command_url: Option<String>,
    pub is_live: bool,
    /// When the (last) `stream_started` event for this id arrived.
    pub started_at: Timestamp,
    /// When the stream ended; null while it runs.
    #[schema(required = true)]
    pub ended_at: Option<Timestamp>,
    pub status: StreamStatus,
    /// Why the stream ended, when someone said so.
    #[schema(required = true)]
    pub end_reason: Option<String>,
    /// Players reading it through the built-in proxy now (0 for streams of
    /// other proxies, and for ended streams). Not persisted.
    pub viewers: u32,
    /// `viewers` by kind: MPEG-TS connections and HLS viewers (tokens that
    /// fetched within the last few segment durations). Not persisted.
    pub viewers_by_kind: ViewersByKind,
    /// Moves of the stream to another engine by the built-in proxy, oldest first.
    pub failovers: Vec<FailoverRecord>,
    /// Where players open this content through the built-in proxy (paths on
    /// this orchestrator, without `STREAM_TOKEN`); null for a `url` key.
    #[schema(required = true)]
    pub play: Option<PlayPaths>,
}

/// Players of a proxied stream by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ViewersByKind {
    /// `/ace/getstream` connections.
    pub ts: u32,
    /// `/ace/manifest.m3u8` viewers.
    pub hls: u32,
}

/// The built-in proxy's paths for one content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PlayPaths {
    /// MPEG-TS: `/ace/getstream?id=…`.
    #[schema(example = "/ace/getstream?id=0123456789abcdef0123456789abcdef01234567")]
    pub ts: String,
    /// HLS: `/ace/manifest.m3u8?id=…`.
    #[schema(example = "/ace/manifest.m3u8?id=0123456789abcdef0123456789abcdef01234567")]
    pub hls: String,
}

impl PlayPaths {
    /// The paths for a content, `None` for a `url` key (the proxy refuses those).
    pub fn for_key(key_type: KeyType, key: &str) -> Option<PlayPaths> {
        let query = match key_type {
            KeyType::ContentId => format!("id={}", percent_encode(key)),
            KeyType::Infohash => format!("infohash={}", percent_encode(key)),
            KeyType::Magnet => format!("magnet={}", percent_encode(key)),
            KeyType::Url => return None,
        };
        Some(PlayPaths {
            ts: format!("/ace/getstream?{query}"),
            hls: format!("/ace/manifest.m3u8?{query}"),
        })
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One failover of a proxied stream: from which engine to which, why, and
/// how long viewers got no bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailoverRecord {
    pub at: Timestamp,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub gap_ms: u64,
}

/// One poll of a stream's `stat_url`, as the engine reported it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatSnapshot {
    /// When the snapshot was taken.
    pub ts: Timestamp,
    #[schema(required = true)]
    pub peers: Option<i64>,
    /// As reported by the engine (KB/s).
    #[schema(required = true)]
    pub speed_down: Option<i64>,
    /// As reported by the engine (KB/s).
    #[schema(required = true)]
    pub speed_up: Option<i64>,
    /// Bytes, as reported by the engine.
    #[schema(required = true)]
    pub downloaded: Option<i64>,
    /// Bytes, as reported by the engine.
    #[schema(required = true)]
    pub uploaded: Option<i64>,
    /// The engine's stream status, e.g. `dl`, `prebuf`.
    #[schema(required = true)]
    pub status: Option<String>,
}

/// Where a health verdict came from: `probe` = periodic sweep, `manual` =
/// asked for through the API, `stat` = a stat_url poll of one of the engine's
/// streams timed out or was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckSource {
    /// The periodic sweep.
    Probe,
    /// Someone asked for a check through the API.
    Manual,
    /// A `stat_url` poll of one of the engine's streams timed out or was refused.
    Stat,
    /// The built-in proxy: the engine's stream stalled, broke, or could not start.
    Proxy,
}

impl CheckSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Probe => "probe",
            Self::Manual => "manual",
            Self::Stat => "stat",
            Self::Proxy => "proxy",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "probe" => Some(Self::Probe),
            "manual" => Some(Self::Manual),
            "stat" => Some(Self::Stat),
            "proxy" => Some(Self::Proxy),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HealthCheck {
    /// When the check finished.
    pub ts: Timestamp,
    pub ok: bool,
    pub source: CheckSource,
    #[schema(required = true)]
    pub latency_ms: Option<f64>,
    /// Why the check failed; null when it succeeded.
    #[schema(required = true)]
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct HealthTransition {
    /// When the status changed.
    pub ts: Timestamp,
    pub from: HealthStatus,
    pub to: HealthStatus,
    #[schema(
        example = "3 failed check(s) in a row (threshold 3); last probe check: no answer within 5.0s (engine hung?)"
    )]
    pub reason: String,
}

/// Hosts that name this machine's loopback interface. Proxies register an engine
/// as `127.0.0.1` and later report it as `localhost`; both must find one engine.
pub fn canonical_host(host: &str) -> String {
    let trimmed = host.trim().trim_start_matches('[').trim_end_matches(']');
    let lower = trimmed.to_ascii_lowercase();
    if lower == "localhost" || lower.ends_with(".localhost") {
        return Ipv4Addr::LOCALHOST.to_string();
    }
    match lower.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ipv4Addr::LOCALHOST.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) if v4.is_loopback() => Ipv4Addr::LOCALHOST.to_string(),
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        Ok(ip) => ip.to_string(),
        Err(_) => lower,
    }
}

pub fn same_host(a: &str, b: &str) -> bool {
    canonical_host(a) == canonical_host(b)
}

/// The id of an engine we do not run: `"host:port"` as the contract says.
pub fn external_engine_id(host: &str, port: u16) -> String {
    let host = host.trim();
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_aliases_are_one_host() {
        for alias in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "::1",
            "[::1]",
            "127.0.0.2",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(canonical_host(alias), "127.0.0.1", "{alias}");
        }
        assert!(same_host("localhost", "::1"));
        assert!(!same_host("10.0.0.1", "127.0.0.1"));
        assert_eq!(canonical_host("Engine-3"), "engine-3");
    }

    #[test]
    fn busy_time_counts_the_open_period() {
        let start = Timestamp::from_millis(10_000);
        let usage = EngineUsage {
            busy_ms_closed: 1_500,
            busy_since: Some(start),
            ..Default::default()
        };
        assert_eq!(usage.busy_seconds(Timestamp::from_millis(12_000)), 3.5);
    }

    #[test]
    fn external_ids_bracket_ipv6() {
        assert_eq!(external_engine_id("127.0.0.1", 19023), "127.0.0.1:19023");
        assert_eq!(external_engine_id("::1", 6878), "[::1]:6878");
    }
}

/// Labels that carry meaning on an engine's record.
pub mod labels {
    /// On a container we run: the published host port of the engine's API,
    /// so that an event naming `127.0.0.1:<that port>` finds the engine.
    pub const HOST_HTTP_PORT_LABEL: &str = "host.http_port";
    /// The Gluetun node (container name) an engine's traffic goes through.
    pub const VPN_NODE_LABEL: &str = "acestream.vpn_node";
}

impl Engine {
    /// The VPN node the engine sits behind, when it does.
    pub fn vpn_node(&self) -> Option<&str> {
        self.labels.get(labels::VPN_NODE_LABEL).map(String::as_str)
    }

    /// The host port the engine's API is published on, for a container we run.
    pub fn host_http_port(&self) -> Option<u16> {
        self.labels
            .get(labels::HOST_HTTP_PORT_LABEL)
            .and_then(|p| p.parse().ok())
    }
}
