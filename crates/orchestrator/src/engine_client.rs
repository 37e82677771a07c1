//! The AceStream engine's HTTP API, as the orchestrator speaks it: the health
//! probe, a stream's `stat_url`, its `command_url?method=stop`, and opening a
//! stream (the built-in proxy). Every call has its own timeout and every
//! failure is classified, so that callers decide by kind, not by text.
//!
//! The engine's API, as used here, is described in the repository's
//! `docs/ENGINE-API.md`.

use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::time::Instant;

use crate::domain::{external_engine_id, StatSnapshot};
use crate::time::Timestamp;

/// The engine method the probe calls.
pub const STATUS_PATH: &str = "/server/api?api_version=3&method=get_status";

/// Why a call to an engine failed. The `Display` text is what operators see in
/// health histories, so it is short and says what happened.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// Connected (or not) but nothing came back in time: the hung engine.
    #[error("no answer within {:.1}s (engine hung?)", .0.as_secs_f64())]
    Timeout(Duration),
    #[error("connection refused")]
    Refused,
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("answer was cut off")]
    Cut,
    #[error("answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("{0}")]
    NotJson(&'static str),
    /// The engine answered, and its `error` field said no.
    #[error("engine error: {0}")]
    Engine(String),
    #[error("{field} '{url}' is not a URL")]
    BadUrl { field: &'static str, url: String },
    #[error("request failed: {0}")]
    Other(String),
}

impl EngineError {
    /// The engine could not be reached or did not answer: a health signal, as
    /// opposed to an answer we did not like.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            EngineError::Timeout(_) | EngineError::Refused | EngineError::Connect(_)
        )
    }

    /// Classifies a reqwest error.
    pub fn from_request(error: &reqwest::Error, timeout: Duration) -> EngineError {
        if error.is_timeout() {
            return EngineError::Timeout(timeout);
        }
        if error.is_connect() {
            let mut source: Option<&dyn std::error::Error> = Some(error);
            while let Some(e) = source {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    return match io.kind() {
                        std::io::ErrorKind::ConnectionRefused => EngineError::Refused,
                        _ => EngineError::Connect(io.to_string()),
                    };
                }
                source = e.source();
            }
            return EngineError::Connect("no route".into());
        }
        if error.is_body() || error.is_decode() {
            return EngineError::Cut;
        }
        EngineError::Other(error.to_string())
    }
}

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeOutcome {
    pub ok: bool,
    pub latency: Duration,
    pub error: Option<String>,
}

/// A stream the engine opened for us (`/ace/getstream?format=json`).
#[derive(Debug, Clone, PartialEq)]
pub struct StartedStream {
    pub playback_url: String,
    pub stat_url: Option<String>,
    pub command_url: Option<String>,
    pub playback_session_id: Option<String>,
    pub infohash: Option<String>,
    pub is_live: bool,
}

#[derive(Deserialize)]
struct StatEnvelope {
    response: Option<StatBody>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StatBody {
    status: Option<String>,
    peers: Option<serde_json::Number>,
    speed_down: Option<serde_json::Number>,
    speed_up: Option<serde_json::Number>,
    downloaded: Option<serde_json::Number>,
    uploaded: Option<serde_json::Number>,
}

#[derive(Deserialize)]
struct StartEnvelope {
    response: Option<StartBody>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct StartBody {
    playback_url: String,
    stat_url: Option<String>,
    command_url: Option<String>,
    playback_session_id: Option<String>,
    infohash: Option<String>,
    is_live: Option<serde_json::Value>,
}

fn int(n: Option<serde_json::Number>) -> Option<i64> {
    n.and_then(|n| n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)))
}

/// The engine's `error` field: `null` or absent is no error.
fn engine_error(error: Option<serde_json::Value>) -> Result<(), EngineError> {
    match error {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(serde_json::Value::String(message)) => Err(EngineError::Engine(message)),
        Some(other) => Err(EngineError::Engine(other.to_string())),
    }
}

/// The health probe, behind a trait so that policy tests can run the health
/// monitor and provisioning against engines that exist only in memory (see
/// `runtime::memory`); in production it is the [`EngineClient`].
pub trait Probe: Send + Sync {
    fn probe<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome>;
}

impl Probe for EngineClient {
    fn probe<'a>(
        &'a self,
        host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome> {
        Box::pin(EngineClient::probe(self, host, port, timeout))
    }
}

/// One client for every engine. Cheap to clone.
#[derive(Clone)]
pub struct EngineClient {
    http: reqwest::Client,
}

impl EngineClient {
    /// `connect_timeout` bounds the TCP connect of every call; each call also
    /// has its own overall timeout.
    pub fn new(connect_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "acestream-orchestrator/",
                env!("CARGO_PKG_VERSION")
            ))
            // Engines are plain HTTP on a LAN; never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            // No idle keep-alive connections: with 1,000 engines they would hold
            // ~20 MB of buffers and a descriptor each, and a fresh connection per
            // probe also proves the engine still accepts connections. Loopback
            // or LAN connects cost microseconds.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        Self { http }
    }

    /// Gets `url` within `timeout` (headers and body). `ok` says which
    /// statuses count as an answer.
    async fn get(
        &self,
        url: reqwest::Url,
        timeout: Duration,
        ok: fn(reqwest::StatusCode) -> bool,
    ) -> Result<bytes::Bytes, EngineError> {
        let response = self
            .http
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| EngineError::from_request(&e, timeout))?;
        if !ok(response.status()) {
            return Err(EngineError::Status(response.status()));
        }
        response
            .bytes()
            .await
            .map_err(|e| EngineError::from_request(&e, timeout))
    }

    /// Gets `url` and parses the engine's JSON envelope.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: reqwest::Url,
        timeout: Duration,
        not_json: &'static str,
    ) -> Result<T, EngineError> {
        let body = self.get(url, timeout, |s| s.is_success()).await?;
        serde_json::from_slice(&body).map_err(|_| EngineError::NotJson(not_json))
    }

    /// Probes one engine. Healthy = HTTP 200 with a JSON body whose `error` is
    /// null or absent; anything else is a failure with its own message.
    pub async fn probe(&self, host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
        let started = Instant::now();
        let result = async {
            let url = engine_url(host, port, STATUS_PATH)?;
            // Only 200 is healthy: a 204 or a redirect is not the engine.
            let body = self
                .get(url, timeout, |s| s == reqwest::StatusCode::OK)
                .await?;
            let json: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|_| EngineError::NotJson("answer is not JSON"))?;
            engine_error(json.get("error").cloned())
        }
        .await;
        ProbeOutcome {
            ok: result.is_ok(),
            latency: started.elapsed(),
            error: result.err().map(|e| e.to_string()),
        }
    }

    /// Reads a stream's statistics from its `stat_url`.
    pub async fn stat(
        &self,
        stat_url: &str,
        timeout: Duration,
    ) -> Result<StatSnapshot, EngineError> {
        let url = parse_url("stat_url", stat_url)?;
        let envelope: StatEnvelope = self
            .get_json(url, timeout, "stat answer is not the engine's JSON")
            .await?;
        engine_error(envelope.error)?;
        let body = envelope
            .response
            .ok_or(EngineError::NotJson("stat answer has no response"))?;
        Ok(StatSnapshot {
            ts: Timestamp::now(),
            peers: int(body.peers),
            speed_down: int(body.speed_down),
            speed_up: int(body.speed_up),
            downloaded: int(body.downloaded),
            uploaded: int(body.uploaded),
            status: body.status,
        })
    }

    /// Asks the engine to stop a stream (`command_url?method=stop`).
    pub async fn stop(&self, command_url: &str, timeout: Duration) -> Result<(), EngineError> {
        let mut url = parse_url("command_url", command_url)?;
        url.query_pairs_mut().append_pair("method", "stop");
        self.get(url, timeout, |s| s.is_success()).await.map(drop)
    }

    /// Starts a stream on an engine (`/ace/getstream?format=json&<key>=<value>`)
    /// and answers where to read it. The engine's own refusal (its `error`
    /// field) is [`EngineError::Engine`]: the content's problem, not the
    /// engine's.
    pub async fn start_stream(
        &self,
        host: &str,
        port: u16,
        key: (&str, &str),
        timeout: Duration,
    ) -> Result<StartedStream, EngineError> {
        let mut url = engine_url(host, port, "/ace/getstream")?;
        url.query_pairs_mut()
            .append_pair("format", "json")
            .append_pair(key.0, key.1);
        let envelope: StartEnvelope = self
            .get_json(url, timeout, "getstream answer is not the engine's JSON")
            .await?;
        engine_error(envelope.error)?;
        let body = envelope
            .response
            .ok_or(EngineError::NotJson("getstream answer has no response"))?;
        let is_live = match body.is_live {
            Some(serde_json::Value::Bool(b)) => b,
            Some(serde_json::Value::Number(n)) => n.as_i64() == Some(1),
            _ => false,
        };
        Ok(StartedStream {
            playback_url: body.playback_url,
            stat_url: body.stat_url,
            command_url: body.command_url,
            playback_session_id: body.playback_session_id,
            infohash: body.infohash,
            is_live,
        })
    }

    /// Opens the stream body at `playback_url`: the response once its headers
    /// arrived (within `timeout`); the body has no overall timeout, since a
    /// live stream never ends; the caller watches for stalls.
    pub async fn open_playback(
        &self,
        playback_url: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, EngineError> {
        let url = parse_url("playback_url", playback_url)?;
        let response = tokio::time::timeout(timeout, self.http.get(url).send())
            .await
            .map_err(|_| EngineError::Timeout(timeout))?
            .map_err(|e| EngineError::from_request(&e, timeout))?;
        if !response.status().is_success() {
            return Err(EngineError::Status(response.status()));
        }
        Ok(response)
    }
}

/// `text` as a URL, or an error naming the field it came from.
fn parse_url(field: &'static str, text: &str) -> Result<reqwest::Url, EngineError> {
    reqwest::Url::parse(text).map_err(|_| EngineError::BadUrl {
        field,
        url: text.to_owned(),
    })
}

/// `path` (with its query) on the engine at `host:port`.
fn engine_url(host: &str, port: u16, path: &str) -> Result<reqwest::Url, EngineError> {
    parse_url(
        "engine address",
        &format!("http://{}{path}", external_engine_id(host, port)),
    )
}

/// Milliseconds rounded to the microsecond: enough for latencies, short in JSON.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}
