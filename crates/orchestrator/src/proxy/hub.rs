//! The built-in proxy's control plane: one shared session per content, the
//! engines it reads from (selection, reservation, the engine's own API), and
//! the session's lifecycle recorded like any proxy's (`stream_started`, the
//! stop command, `stream_ended`), with its viewers and failovers.
//!
//! A session is started by its first viewer, lives while it has viewers, and
//! ends `PROXY_LINGER_S` after the last one left. A watcher task per session
//! keeps the registry's view of it current and moves it to another engine when
//! the health monitor or the collector finds its engine unhealthy.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::hls::{HlsConfig, HlsStream};
use super::session::{
    EndReason, EngineKey, OpenError, SessionConfig, SessionEvent, SessionHandle, Source,
    SourceProvider, SubscribeError, Viewer,
};
use crate::domain::{
    CheckSource, FailoverRecord, HealthCheck, HealthStatus, KeyType, ViewersByKind,
};
use crate::engine_client::{millis, EngineError};
use crate::registry::StreamStart;
use crate::service::Orchestrator;
use crate::time::Timestamp;

/// How often a session's watcher looks at its viewers and its engine's health.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Failovers kept on a stream's record.
const FAILOVERS_KEPT: usize = 50;

/// What a player asked for: the engine's own id parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentKey {
    ContentId(String),
    Infohash(String),
    Magnet(String),
}

impl ContentKey {
    /// The engine's query parameter and value for this content.
    pub fn param(&self) -> (&'static str, &str) {
        match self {
            ContentKey::ContentId(id) => ("id", id),
            ContentKey::Infohash(h) => ("infohash", h),
            ContentKey::Magnet(m) => ("magnet", m),
        }
    }

    fn key_type(&self) -> KeyType {
        match self {
            ContentKey::ContentId(_) => KeyType::ContentId,
            ContentKey::Infohash(_) => KeyType::Infohash,
            ContentKey::Magnet(_) => KeyType::Magnet,
        }
    }

    fn value(&self) -> &str {
        self.param().1
    }
}

/// The proxy's settings, from the configuration.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub session: SessionConfig,
    pub linger: Duration,
    pub max_sessions: usize,
    pub max_streams_per_engine: u32,
    /// How long an engine has to answer `getstream?format=json` and the
    /// stream's headers.
    pub engine_timeout: Duration,
    /// HLS output.
    pub hls: HlsConfig,
    /// `PUBLIC_URL`: the base of the URLs rewritten playlists point at.
    pub public_url: Option<String>,
    /// Where `GET /playlist?url=` may fetch from.
    pub playlists: crate::playlist::FetchPolicy,
}

/// Why a viewer could not be served.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    /// No engine could take the stream (none free, none healthy, provisioning
    /// failed): try again later.
    #[error("no engine could start the stream: {0}")]
    NoEngine(String),
    /// The engine refused the content itself (its `error` field): not an
    /// engine fault, and retrying elsewhere would not help.
    #[error("the engine refused the content: {0}")]
    ContentRefused(String),
    #[error("the stream has {0} viewers, the most MAX_VIEWERS_PER_STREAM allows")]
    Full(usize),
    #[error("{0} streams are being served, the most PROXY_MAX_SESSIONS allows")]
    TooManySessions(usize),
}

/// A session and what the control plane knows about it.
#[derive(Clone)]
struct Entry {
    handle: SessionHandle,
    stream_id: String,
    /// The session's HLS output, started by its first HLS viewer.
    hls: Arc<OnceLock<Arc<HlsStream>>>,
}

/// A content's session: being started (every viewer who arrives meanwhile
/// awaits the same start, so concurrent first viewers open one engine
/// stream), or running.
#[derive(Clone)]
enum Slot {
    Starting(Shared<BoxFuture<'static, Result<Entry, ProxyError>>>),
    Running(Entry),
}

pub struct Proxy {
    orch: Arc<Orchestrator>,
    settings: ProxySettings,
    /// Never held across an await: a start in progress is a shared future.
    sessions: Mutex<HashMap<ContentKey, Slot>>,
    /// HLS viewer tokens (in segment URLs) and the HLS output they watch.
    hls_tokens: Mutex<HashMap<String, Arc<HlsStream>>>,
}

impl Proxy {
    pub fn new(orch: Arc<Orchestrator>, settings: ProxySettings) -> Arc<Self> {
        Arc::new(Self {
            orch,
            settings,
            sessions: Mutex::new(HashMap::new()),
            hls_tokens: Mutex::new(HashMap::new()),
        })
    }

    /// The HLS settings.
    pub fn hls_config(&self) -> &HlsConfig {
        &self.settings.hls
    }

    /// The proxy's settings.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// An HLS viewer of `key`: joins (or starts) the content's session and
    /// its HLS output, and answers the viewer's token. A client that asks
    /// again with the same `fingerprint` (address and user agent) while its
    /// token is alive gets the same token: players reload the first URL.
    pub async fn watch_hls(
        self: &Arc<Self>,
        key: ContentKey,
        fingerprint: u64,
    ) -> Result<(String, Arc<HlsStream>), ProxyError> {
        let entry = self.entry(key).await?;
        let hls = entry
            .hls
            .get_or_init(|| HlsStream::start(entry.handle.tap(), self.settings.hls.clone()))
            .clone();
        let viewers = entry.handle.viewer_count() + hls.active_viewers();
        let token = hls.add_viewer(fingerprint);
        let mut tokens = self.hls_tokens.lock();
        if !tokens.contains_key(&token) {
            if viewers >= self.settings.session.max_viewers {
                return Err(ProxyError::Full(self.settings.session.max_viewers));
            }
            tokens.insert(token.clone(), hls.clone());
        }
        Ok((token, hls))
    }

    /// The HLS output a viewer token watches, its fetch recorded; `None` for
    /// a token that is unknown, forgotten or whose stream ended.
    pub fn hls_viewer(&self, token: &str) -> Option<Arc<HlsStream>> {
        let mut tokens = self.hls_tokens.lock();
        let hls = tokens.get(token).cloned()?;
        if hls.is_ended() {
            // Its session ended (the cleanup may have run before this token
            // was added): the viewer has to start again.
            tokens.remove(token);
            return None;
        }
        drop(tokens);
        hls.touch(token).then_some(hls)
    }

    /// The running (or starting) session of `key`, started if there is none;
    /// no viewer is subscribed.
    async fn entry(self: &Arc<Self>, key: ContentKey) -> Result<Entry, ProxyError> {
        let starting = {
            let mut sessions = self.sessions.lock();
            match sessions.get(&key) {
                Some(Slot::Running(entry)) if !entry.handle.is_ended() => return Ok(entry.clone()),
                Some(Slot::Running(_)) => {
                    sessions.remove(&key);
                }
                _ => {}
            }
            match sessions.get(&key) {
                Some(Slot::Starting(start)) => start.clone(),
                _ => self.begin_start(&mut sessions, &key)?,
            }
        };
        starting.await
    }

    /// Starts `key`'s session in a task of its own: the start completes (and
    /// its session is recorded, lingers and ends) even if every viewer
    /// waiting for it leaves.
    fn begin_start(
        self: &Arc<Self>,
        sessions: &mut HashMap<ContentKey, Slot>,
        key: &ContentKey,
    ) -> Result<Shared<BoxFuture<'static, Result<Entry, ProxyError>>>, ProxyError> {
        if sessions.len() >= self.settings.max_sessions {
            return Err(ProxyError::TooManySessions(sessions.len()));
        }
        let task = tokio::spawn(self.clone().start(key.clone()));
        let start = async move {
            task.await
                .unwrap_or_else(|e| Err(ProxyError::NoEngine(format!("the start failed: {e}"))))
        }
        .boxed()
        .shared();
        sessions.insert(key.clone(), Slot::Starting(start.clone()));
        Ok(start)
    }

    /// Sessions starting or running now.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    fn subscribe(&self, entry: &Entry) -> Result<Viewer, SubscribeError> {
        entry.handle.subscribe()
    }

    /// A viewer of `key`: joins the running session, or starts one.
    pub async fn watch(self: &Arc<Self>, key: ContentKey) -> Result<Viewer, ProxyError> {
        let starting = {
            let mut sessions = self.sessions.lock();
            if let Some(Slot::Running(entry)) = sessions.get(&key) {
                match self.subscribe(entry) {
                    Ok(viewer) => return Ok(viewer),
                    Err(SubscribeError::Full) => {
                        return Err(ProxyError::Full(self.settings.session.max_viewers))
                    }
                    // Ended, its watcher not yet done: start anew.
                    Err(SubscribeError::Ended) => {
                        sessions.remove(&key);
                    }
                }
            }
            match sessions.get(&key) {
                Some(Slot::Starting(start)) => start.clone(),
                Some(Slot::Running(_)) => unreachable!("handled above"),
                None => self.begin_start(&mut sessions, &key)?,
            }
        };
        let entry = starting.await?;
        self.subscribe(&entry).map_err(|e| match e {
            SubscribeError::Full => ProxyError::Full(self.settings.session.max_viewers),
            SubscribeError::Ended => ProxyError::NoEngine("the stream ended as it started".into()),
        })
    }

    async fn start(self: Arc<Self>, key: ContentKey) -> Result<Entry, ProxyError> {
        let stream_id = format!("proxy-{}", uuid::Uuid::new_v4().simple());
        let engines = Arc::new(EngineSource {
            orch: self.orch.clone(),
            key: key.clone(),
            stream_id: stream_id.clone(),
            settings: self.settings.clone(),
            state: Mutex::new(SourceState::default()),
        });
        let started = SessionHandle::start(engines.clone(), self.settings.session.clone()).await;
        let (handle, events) = match started {
            Ok(started) => started,
            Err(e) => {
                self.sessions.lock().remove(&key);
                return Err(match engines.state.lock().refused.take() {
                    Some(message) => ProxyError::ContentRefused(message),
                    None => ProxyError::NoEngine(e.0),
                });
            }
        };
        self.orch.metrics.proxy_sessions_started.inc();
        tracing::info!(stream = %stream_id, content = %key.value(), engine = %handle.engine(), "proxy session started");
        let entry = Entry {
            handle,
            stream_id,
            hls: Arc::new(OnceLock::new()),
        };
        self.sessions
            .lock()
            .insert(key.clone(), Slot::Running(entry.clone()));
        let watched = entry.clone();
        tokio::spawn(self.watch_session(key, watched, engines, events));
        Ok(entry)
    }

    /// Follows one session until it ends: records failovers, keeps the viewer
    /// count current, fails over when the engine turns unhealthy, and ends
    /// the session after the linger.
    async fn watch_session(
        self: Arc<Self>,
        key: ContentKey,
        entry: Entry,
        engines: Arc<EngineSource>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<SessionEvent>,
    ) {
        let mut ticker = tokio::time::interval(WATCH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; the viewers who started the session
        // subscribe right after the start, so look one period later.
        ticker.tick().await;
        let mut idle_since: Option<Instant> = None;
        let mut last_viewers = None;
        let mut asked_failover_for: Option<EngineKey> = None;
        let end_reason: String = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(SessionEvent::Started { .. }) => {}
                    Some(SessionEvent::FailedOver(f)) => {
                        asked_failover_for = None;
                        self.orch.metrics.proxy_failovers.inc();
                        tracing::warn!(stream = %entry.stream_id, from = %f.from, to = %f.to, reason = %f.reason, gap_ms = f.gap_ms, "stream moved to another engine");
                        // Behind a VPN node that is down, the node is to blame,
                        // not the engine.
                        let node_down = self.orch.read(|r| r.engine_blocked(&f.from).is_some());
                        if !node_down {
                            self.orch.record_check(&f.from, HealthCheck {
                                ts: Timestamp::now(),
                                ok: false,
                                source: CheckSource::Proxy,
                                latency_ms: None,
                                error: Some(format!("stream {}: {}", entry.stream_id, f.reason)),
                            });
                        }
                        let record = FailoverRecord {
                            at: f.at,
                            from: f.from,
                            to: f.to,
                            reason: f.reason.to_string(),
                            gap_ms: f.gap_ms,
                        };
                        let _ = self.orch.record_failover(&entry.stream_id, record, FAILOVERS_KEPT).await;
                    }
                    Some(SessionEvent::Ended { reason }) => break match reason {
                        EndReason::Closed => "the last viewer left".to_owned(),
                        EndReason::NoSource { failure, error } => {
                            format!("no engine could take over after '{failure}': {error}")
                        }
                    },
                    None => break "the session stopped".to_owned(),
                },
                _ = ticker.tick() => {
                    let hls = entry.hls.get();
                    let by_kind = ViewersByKind {
                        ts: entry.handle.viewer_count() as u32,
                        hls: hls.map_or(0, |h| h.active_viewers() as u32),
                    };
                    if let Some(hls) = hls {
                        let gone = hls.forget_idle();
                        if !gone.is_empty() {
                            let mut tokens = self.hls_tokens.lock();
                            for token in gone {
                                tokens.remove(&token);
                            }
                        }
                    }
                    let viewers = by_kind.ts + by_kind.hls;
                    if last_viewers != Some(by_kind) {
                        last_viewers = Some(by_kind);
                        self.orch.set_viewers(&entry.stream_id, by_kind);
                    }
                    if viewers == 0 {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.settings.linger {
                            entry.handle.close();
                        }
                    } else {
                        idle_since = None;
                    }
                    // The health monitor or the collector found the engine
                    // unhealthy: move before the stall timeout says so.
                    let engine = entry.handle.engine();
                    if asked_failover_for.as_ref() != Some(&engine) {
                        let unusable = self.orch.read(|r| {
                            if let Some(why) = r.engine_blocked(&engine) {
                                return Some(why.to_owned());
                            }
                            r.engine(&engine).and_then(|e| {
                                (e.health.status == HealthStatus::Unhealthy).then(|| {
                                    format!("engine unhealthy: {}", e.health.last_error.clone().unwrap_or_default())
                                })
                            })
                        });
                        if let Some(why) = unusable {
                            asked_failover_for = Some(engine);
                            entry.handle.fail_over(why);
                        }
                    }
                }
            }
        };
        // Remove it from the map first, so that a new viewer starts afresh.
        {
            let mut sessions = self.sessions.lock();
            let ours = matches!(sessions.get(&key), Some(Slot::Running(e)) if e.stream_id == entry.stream_id);
            if ours {
                sessions.remove(&key);
            }
        }
        entry.handle.close();
        if let Some(hls) = entry.hls.get() {
            let mut tokens = self.hls_tokens.lock();
            for token in hls.tokens() {
                tokens.remove(&token);
            }
        }
        engines.stop_current().await;
        let _ = self
            .orch
            .stream_ended(None, Some(&entry.stream_id), Some(&end_reason))
            .await;
        tracing::info!(stream = %entry.stream_id, reason = %end_reason, "proxy session ended");
    }
}

#[derive(Default)]
struct SourceState {
    /// The engine and the stop command of the stream being read.
    current: Option<(String, Option<String>)>,
    /// The engine refused the content: not worth another engine.
    refused: Option<String>,
}

/// Opens the content on engines, for one session.
struct EngineSource {
    orch: Arc<Orchestrator>,
    key: ContentKey,
    stream_id: String,
    settings: ProxySettings,
    state: Mutex<SourceState>,
}

impl EngineSource {
    /// Asks the current engine to stop the stream (best effort, bounded).
    async fn stop_current(&self) {
        let current = self.state.lock().current.take();
        if let Some((engine, Some(command_url))) = current {
            if let Err(e) = self
                .orch
                .engines
                .stop(&command_url, self.settings.engine_timeout)
                .await
            {
                tracing::debug!(%engine, error = %e, "engine did not take the stop command");
            }
        }
    }

    async fn open_on_some_engine(&self, exclude: &[EngineKey]) -> Result<Source, OpenError> {
        // A content refused once is refused by every engine: do not make the
        // session's retries ask the others.
        if let Some(message) = self.state.lock().refused.clone() {
            return Err(OpenError(format!(
                "the engine refused the content: {message}"
            )));
        }
        let mut excluded: Vec<String> = exclude.to_vec();
        let mut last_error = String::from("no engine tried");
        // The engines that fail here are excluded too; a few tries, then the
        // session's own retry (bounded by PROXY_FAILOVER_TIMEOUT_S) takes over.
        for _ in 0..3 {
            let selection = self
                .orch
                .select_excluding(self.settings.max_streams_per_engine, &excluded)
                .await
                .map_err(|e| OpenError(e.to_string()))?;
            let reservation = selection.reservation;
            let engine_id = reservation.engine_id.clone();
            let Some((host, port)) = self
                .orch
                .read(|r| r.engine(&engine_id).map(|e| (e.host.clone(), e.port)))
            else {
                continue;
            };
            let started = Instant::now();
            match self
                .open_on(&host, port, &engine_id, &reservation.reservation_id)
                .await
            {
                Ok(source) => return Ok(source),
                Err(EngineError::Engine(message)) => {
                    // The content's problem, not the engine's.
                    self.orch.release_reservation(&reservation.reservation_id);
                    self.state.lock().refused = Some(message.clone());
                    return Err(OpenError(format!(
                        "the engine refused the content: {message}"
                    )));
                }
                Err(e) => {
                    self.orch.release_reservation(&reservation.reservation_id);
                    tracing::warn!(engine = %engine_id, error = %e, "engine could not start the stream");
                    if e.is_unreachable()
                        || matches!(
                            e,
                            EngineError::Status(_) | EngineError::NotJson(_) | EngineError::Cut
                        )
                    {
                        self.orch.record_check(
                            &engine_id,
                            HealthCheck {
                                ts: Timestamp::now(),
                                ok: false,
                                source: CheckSource::Proxy,
                                latency_ms: Some(millis(started.elapsed())),
                                error: Some(format!("starting stream {}: {e}", self.stream_id)),
                            },
                        );
                    }
                    last_error = format!("{engine_id}: {e}");
                    excluded.push(engine_id);
                }
            }
        }
        Err(OpenError(last_error))
    }

    async fn open_on(
        &self,
        host: &str,
        port: u16,
        engine_id: &str,
        reservation_id: &str,
    ) -> Result<Source, EngineError> {
        let timeout = self.settings.engine_timeout;
        let started = self
            .orch
            .engines
            .start_stream(host, port, self.key.param(), timeout)
            .await?;
        let response = self
            .orch
            .engines
            .open_playback(&started.playback_url, timeout)
            .await?;
        // Recorded as any proxy records a stream: the collector polls its
        // stat_url, usage and the dashboard see it. On a failover the same
        // stream id moves to the new engine.
        let event = StreamStart {
            container_id: Some(engine_id.to_owned()),
            host: host.to_owned(),
            port,
            key_type: self.key.key_type(),
            key: self.key.value().to_owned(),
            playback_session_id: started.playback_session_id.clone(),
            stat_url: started.stat_url.clone(),
            command_url: started.command_url.clone(),
            is_live: started.is_live,
            labels: [("stream_id".to_owned(), self.stream_id.clone())].into(),
            reservation_id: Some(reservation_id.to_owned()),
        };
        if let Err(e) = self.orch.stream_started(event).await {
            tracing::warn!(stream = %self.stream_id, error = %e, "could not record the stream's start");
        }
        let previous = self
            .state
            .lock()
            .current
            .replace((engine_id.to_owned(), started.command_url.clone()));
        // The engine we leave may be hung: stop it without waiting for it.
        if let Some((old, Some(command_url))) = previous {
            let orch = self.orch.clone();
            tokio::spawn(async move {
                if let Err(e) = orch.engines.stop(&command_url, timeout).await {
                    tracing::debug!(engine = %old, error = %e, "old engine did not take the stop command");
                }
            });
        }
        let stream = response
            .bytes_stream()
            // Said the way health histories say it ("answer was cut off",
            // "connection refused"), not in reqwest's words.
            .map(move |chunk| {
                chunk.map_err(|e| {
                    std::io::Error::other(format!(
                        "the engine's stream broke: {}",
                        EngineError::from_request(&e, timeout)
                    ))
                })
            });
        Ok(Source {
            engine: engine_id.to_owned(),
            stream: Box::pin(stream),
        })
    }
}

impl SourceProvider for EngineSource {
    fn open<'a>(&'a self, exclude: &'a [EngineKey]) -> BoxFuture<'a, Result<Source, OpenError>> {
        Box::pin(self.open_on_some_engine(exclude))
    }
}
