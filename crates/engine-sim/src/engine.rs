//! One emulated engine: its failure mode, injected latency and playback sessions.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::info;

use crate::tsloop::TsLoop;

/// The ways an engine can (mis)behave; see README.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Healthy,
    Hang,
    Refuse,
    Error,
    BadJson,
    ErrorField,
    Starve,
}

impl Mode {
    pub const ALL: [Mode; 7] = [
        Mode::Healthy,
        Mode::Hang,
        Mode::Refuse,
        Mode::Error,
        Mode::BadJson,
        Mode::ErrorField,
        Mode::Starve,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Healthy => "healthy",
            Mode::Hang => "hang",
            Mode::Refuse => "refuse",
            Mode::Error => "error",
            Mode::BadJson => "bad-json",
            Mode::ErrorField => "error-field",
            Mode::Starve => "starve",
        }
    }

    pub fn parse(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Whether content is flowing: a paused, crashed or starved engine downloads nothing,
    /// so its streams stall and its byte counters stand still.
    pub fn flows(self) -> bool {
        !matches!(self, Mode::Hang | Mode::Refuse | Mode::Starve)
    }
}

/// What `/control/state` reports for one engine.
#[derive(Serialize)]
pub struct EngineState {
    pub index: usize,
    pub port: u16,
    pub mode: &'static str,
    pub latency_ms: u64,
    pub listening: bool,
    pub active_sessions: usize,
    pub requests: u64,
    /// Stream bodies being sent right now.
    pub open_streams: u64,
    /// Stream bodies ever opened.
    pub streams_total: u64,
}

/// The body of a stat_url answer.
#[derive(Serialize)]
pub struct Stats {
    pub status: &'static str,
    pub peers: u64,
    pub speed_down: u64,
    pub speed_up: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub total_progress: u64,
    pub immediate_progress: u64,
}

struct Session {
    infohash: String,
    /// Flow-clock reading when the session opened; `downloaded` grows with flow time since.
    flow_start: Duration,
    /// Per-session variation of peers and speed.
    seed: u64,
}

/// Time during which content was flowing. It stops while the engine is hung, down or
/// starved, so `downloaded` freezes in those modes instead of jumping afterwards.
struct FlowClock {
    banked: Duration,
    running_since: Option<Instant>,
}

impl FlowClock {
    fn now(&self) -> Duration {
        self.banked + self.running_since.map_or(Duration::ZERO, |t| t.elapsed())
    }
}

pub struct Engine {
    pub index: usize,
    /// Bind address with the engine's (fixed) port; re-bound after `refuse`.
    pub addr: SocketAddr,
    started: Instant,
    mode: watch::Sender<Mode>,
    latency_ms: AtomicU64,
    requests: AtomicU64,
    listening: AtomicBool,
    open_streams: AtomicU64,
    streams_total: AtomicU64,
    /// What streams carry: the `--ts-file` broadcast, or null packets if None.
    pub ts_loop: Option<Arc<TsLoop>>,
    /// Lock order: `flow` before `sessions`.
    flow: Mutex<FlowClock>,
    sessions: Mutex<HashMap<String, Session>>,
}

impl Engine {
    pub fn new(
        index: usize,
        addr: SocketAddr,
        mode: Mode,
        latency_ms: u64,
        ts_loop: Option<Arc<TsLoop>>,
    ) -> Engine {
        let now = Instant::now();
        Engine {
            index,
            addr,
            started: now,
            mode: watch::Sender::new(mode),
            latency_ms: AtomicU64::new(latency_ms),
            requests: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            open_streams: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            ts_loop,
            flow: Mutex::new(FlowClock {
                banked: Duration::ZERO,
                running_since: mode.flows().then_some(now),
            }),
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn subscribe_mode(&self) -> watch::Receiver<Mode> {
        self.mode.subscribe()
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut flow = self.flow.lock();
        let old = self.mode();
        if old == mode {
            return;
        }
        match (flow.running_since, mode.flows()) {
            (Some(since), false) => {
                flow.banked += since.elapsed();
                flow.running_since = None;
            }
            (None, true) => flow.running_since = Some(Instant::now()),
            _ => {}
        }
        // A crashed engine forgets its playback sessions, as a restarted process would.
        if mode == Mode::Refuse {
            self.sessions.lock().clear();
        }
        self.mode.send_replace(mode);
        info!(
            engine = self.index,
            from = old.as_str(),
            to = mode.as_str(),
            "mode changed"
        );
    }

    /// Resolves at once unless the engine is hung (or down). A hung request is released
    /// when the engine is unpaused, like after `docker unpause`; if the engine goes down
    /// instead, the request stays pending until its connection is reset, as in a crash.
    pub async fn wait_until_responsive(&self) {
        let mut modes = self.mode.subscribe();
        // Err only if the sender is dropped, which cannot happen while `self` is borrowed.
        let _ = modes
            .wait_for(|m| !matches!(m, Mode::Hang | Mode::Refuse))
            .await;
    }

    pub fn latency(&self) -> Duration {
        Duration::from_millis(self.latency_ms.load(Ordering::Relaxed))
    }

    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::Relaxed);
        info!(engine = self.index, latency_ms = ms, "latency changed");
    }

    pub fn count_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_opened(&self) {
        self.open_streams.fetch_add(1, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_closed(&self) {
        self.open_streams.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn set_listening(&self, listening: bool) {
        self.listening.store(listening, Ordering::Relaxed);
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where clients reach this engine when their request carried no Host header.
    pub fn public_addr(&self) -> SocketAddr {
        match self.addr.ip() {
            ip if ip.is_unspecified() => {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.addr.port())
            }
            _ => self.addr,
        }
    }

    pub fn state(&self) -> EngineState {
        EngineState {
            index: self.index,
            port: self.addr.port(),
            mode: self.mode().as_str(),
            latency_ms: self.latency_ms.load(Ordering::Relaxed),
            listening: self.listening.load(Ordering::Relaxed),
            active_sessions: self.active_sessions(),
            requests: self.requests.load(Ordering::Relaxed),
            open_streams: self.open_streams.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
        }
    }

    pub fn active_sessions(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Registers a playback session and returns its id.
    pub fn open_session(&self, infohash: &str) -> String {
        let id = random_hex32();
        let session = Session {
            infohash: infohash.to_owned(),
            flow_start: self.flow.lock().now(),
            seed: fnv1a(id.as_bytes(), 0),
        };
        self.sessions.lock().insert(id.clone(), session);
        id
    }

    pub fn has_session(&self, infohash: &str, id: &str) -> bool {
        self.sessions
            .lock()
            .get(id)
            .is_some_and(|s| s.infohash == infohash)
    }

    /// Removes a session; false if there was no such session.
    pub fn close_session(&self, infohash: &str, id: &str) -> bool {
        let mut sessions = self.sessions.lock();
        if sessions.get(id).is_some_and(|s| s.infohash == infohash) {
            sessions.remove(id);
            true
        } else {
            false
        }
    }

    pub fn stats(&self, infohash: &str, id: &str) -> Option<Stats> {
        let flow_now = self.flow.lock().now();
        let (flow_start, seed) = {
            let sessions = self.sessions.lock();
            let s = sessions.get(id).filter(|s| s.infohash == infohash)?;
            (s.flow_start, s.seed)
        };
        let flowed = flow_now.saturating_sub(flow_start);
        // A steady rate of 300..900 KB/s (a typical HD live stream), so `downloaded` is
        // exactly the integral of the advertised base speed over flowing time.
        let base_kbps = 300 + seed % 600;
        let downloaded = base_kbps * 1024 * flowed.as_millis() as u64 / 1000;
        if self.mode() == Mode::Starve {
            return Some(Stats {
                status: "prebuf",
                peers: 0,
                speed_down: 0,
                speed_up: 0,
                downloaded,
                uploaded: downloaded / 5,
                total_progress: 0,
                immediate_progress: 0,
            });
        }
        // A little wobble so successive samples differ, as real ones do.
        let wobble = (seed >> 8).wrapping_add(flowed.as_secs()) % 21;
        Some(Stats {
            status: "dl",
            peers: 5 + seed % 40,
            speed_down: base_kbps + wobble - 10,
            speed_up: base_kbps / 5,
            downloaded,
            uploaded: downloaded / 5,
            total_progress: 0,
            immediate_progress: 100,
        })
    }
}

/// FNV-1a, seeded so one input can yield several independent words.
pub fn fnv1a(data: &[u8], seed: u64) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(PRIME);
    for &b in data {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(PRIME);
    }
    hash
}

/// A stable 40-hex-digit infohash for a content id, so the same id always maps to the
/// same infohash (the orchestrator may rely on that to share streams).
pub fn infohash_for(id: &str) -> String {
    let mut hex: String = (0..3)
        .map(|i| format!("{:016x}", fnv1a(id.as_bytes(), i)))
        .collect();
    hex.truncate(40);
    hex
}

/// Unpredictable 32-hex-digit session ids without a rand crate: std's RandomState is
/// randomly keyed per process, and a counter makes every id distinct.
fn random_hex32() -> String {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let keys = KEYS.get_or_init(RandomState::new);
    format!(
        "{:016x}{:016x}",
        keys.hash_one((n, 0u8)),
        keys.hash_one((n, 1u8))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infohash_is_stable_and_40_hex() {
        let a = infohash_for("abc");
        assert_eq!(a.len(), 40);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(a, infohash_for("abc"));
        assert_ne!(a, infohash_for("abd"));
    }

    #[test]
    fn session_ids_differ() {
        let (a, b) = (random_hex32(), random_hex32());
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn mode_names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.as_str()), Some(m));
        }
        assert_eq!(Mode::parse("sleepy"), None);
    }
}
