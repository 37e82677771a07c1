//! The load: registration, warm-up, `GET /engines` sweeps and event ingest.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::time::{Instant, MissedTickBehavior};

/// Error messages kept per phase.
const KEEP_ERRORS: usize = 5;

/// A keep-alive HTTP client for the orchestrator on loopback.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")
}

/// What each engine should look like once the orchestrator has checked it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Expect {
    Healthy,
    Hung,
}

pub type Expectations = HashMap<u16, Expect>;

#[derive(Deserialize)]
struct EngineRow {
    port: u16,
    health_status: String,
    last_health_check: Option<String>,
}

/// Latency figures in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LatencyStats {
    pub count: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    pub fn from(mut samples: Vec<Duration>) -> LatencyStats {
        if samples.is_empty() {
            return LatencyStats::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = |q: f64| {
            let n = samples.len();
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(samples[index])
        };
        let total: Duration = samples.iter().sum();
        LatencyStats {
            count: samples.len(),
            mean_ms: ms(total) / samples.len() as f64,
            p50_ms: rank(0.50),
            p90_ms: rank(0.90),
            p99_ms: rank(0.99),
            max_ms: ms(samples[samples.len() - 1]),
        }
    }
}

/// `POST /engines` for every port, `concurrency` at a time.
pub async fn register(
    client: &reqwest::Client,
    base: &str,
    ports: &[u16],
    concurrency: usize,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{base}/engines");
    let mut results = stream::iter(ports.iter().copied())
        .map(|port| {
            let url = url.clone();
            async move {
                let response = client
                    .post(&url)
                    .json(&json!({ "host": "127.0.0.1", "port": port }))
                    .send()
                    .await
                    .with_context(|| format!("POST /engines for port {port}"))?;
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.as_u16() != 201 && status.as_u16() != 200 {
                    bail!("POST /engines for port {port} answered {status}: {body}");
                }
                Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut done = 0usize;
    let mut last_print = Instant::now();
    while let Some(result) = results.next().await {
        result?;
        done += 1;
        if last_print.elapsed() >= Duration::from_secs(1) || done == ports.len() {
            last_print = Instant::now();
            eprintln!(
                "bench: registered {done}/{} engines ({:.1}s)",
                ports.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(started.elapsed())
}

/// One `GET /engines`, timed from sending to the last body byte; the answer is
/// parsed afterwards, outside the timing.
struct Fetched {
    latency: Duration,
    /// When the response head arrived: the time the ages are measured against.
    answered_at: DateTime<Utc>,
    bytes: usize,
    rows: Vec<EngineRow>,
}

async fn fetch_engines(client: &reqwest::Client, url: &str) -> anyhow::Result<Fetched> {
    let started = Instant::now();
    let response = client.get(url).send().await.context("GET /engines")?;
    let answered_at = Utc::now();
    let status = response.status();
    let body = response.bytes().await.context("GET /engines body")?;
    let latency = started.elapsed();
    if !status.is_success() {
        bail!(
            "GET /engines answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    let rows: Vec<EngineRow> =
        serde_json::from_slice(&body).context("GET /engines is not an array of engines")?;
    Ok(Fetched {
        latency,
        answered_at,
        bytes: body.len(),
        rows,
    })
}

/// What one `GET /engines` answer shows.
#[derive(Default)]
struct Census {
    healthy_ok: usize,
    hung_ok: usize,
    unknown: usize,
    /// Engines we registered whose status is not the expected one.
    wrong: usize,
    /// Engines we registered that are missing from the answer.
    missing: usize,
    never_checked: usize,
    max_age_healthy: f64,
    max_age_hung: f64,
    /// Age of the newest check in the answer: near 0 while a sweep is recording checks.
    min_age: f64,
}

fn census(fetched: &Fetched, expect: &Expectations) -> Census {
    let mut c = Census {
        min_age: f64::INFINITY,
        ..Census::default()
    };
    let mut seen = 0usize;
    for row in &fetched.rows {
        let Some(want) = expect.get(&row.port) else {
            continue;
        };
        seen += 1;
        match (want, row.health_status.as_str()) {
            (Expect::Healthy, "healthy") => c.healthy_ok += 1,
            (Expect::Hung, "unhealthy") => c.hung_ok += 1,
            (_, "unknown") => {
                c.unknown += 1;
                c.wrong += 1
            }
            _ => c.wrong += 1,
        }
        let age = row
            .last_health_check
            .as_deref()
            .and_then(|ts| DateTime::parse_from_rfc3339(ts).ok())
            .map(|ts| {
                (fetched.answered_at - ts.with_timezone(&Utc))
                    .num_microseconds()
                    .unwrap_or(0) as f64
                    / 1e6
            });
        match age {
            None => c.never_checked += 1,
            Some(age) => {
                c.min_age = c.min_age.min(age);
                let slot = match want {
                    Expect::Healthy => &mut c.max_age_healthy,
                    Expect::Hung => &mut c.max_age_hung,
                };
                *slot = slot.max(age);
            }
        }
    }
    c.missing = expect.len().saturating_sub(seen);
    c
}

/// Polls `GET /engines` until every healthy engine is `healthy` and every hung
/// one `unhealthy`.
pub async fn warm_up(
    client: &reqwest::Client,
    base: &str,
    expect: &Expectations,
    deadline: Duration,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{base}/engines");
    let healthy = expect.values().filter(|e| **e == Expect::Healthy).count();
    let hung = expect.len() - healthy;
    let mut last_print: Option<Instant> = None;
    loop {
        let fetched = fetch_engines(client, &url).await?;
        let c = census(&fetched, expect);
        let done = c.healthy_ok == healthy && c.hung_ok == hung;
        let print_due = match last_print {
            None => true,
            Some(t) => t.elapsed() >= Duration::from_secs(1),
        };
        if done || print_due {
            last_print = Some(Instant::now());
            eprintln!(
                "bench: warm-up {:>5.1}s: healthy {}/{healthy}, hung seen unhealthy {}/{hung}, unknown {}, other {}",
                started.elapsed().as_secs_f64(),
                c.healthy_ok,
                c.hung_ok,
                c.unknown,
                c.wrong - c.unknown + c.missing,
            );
        }
        if done {
            return Ok(started.elapsed());
        }
        if started.elapsed() > deadline {
            bail!(
                "warm-up: after {:.0}s, {}/{healthy} engines healthy and {}/{hung} hung engines unhealthy",
                deadline.as_secs_f64(),
                c.healthy_ok,
                c.hung_ok
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SweepResult {
    pub seconds: f64,
    pub requests: usize,
    pub errors: usize,
    pub latency: LatencyStats,
    pub mean_body_kb: f64,
    /// Highest `now - last_health_check` over all engines and answers, seconds.
    pub max_age_s: f64,
    pub max_age_healthy_s: f64,
    pub max_age_hung_s: f64,
    /// Answers in which some engine did not have its expected status.
    pub answers_with_wrong_status: usize,
    /// Engine-answers with an unexpected status, summed over all answers.
    pub wrong_statuses: usize,
    pub never_checked: usize,
    /// Answers given while the health monitor was recording checks (the newest
    /// check in the answer under 150 ms old), and their latency.
    pub during_check_bursts: LatencyStats,
    /// The other answers.
    pub between_check_bursts: LatencyStats,
    /// The slowest answers: when (seconds into the phase), how long, and how
    /// old the newest check in the answer was.
    pub slowest: Vec<SlowAnswer>,
    pub first_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SlowAnswer {
    pub at_s: f64,
    pub latency_ms: f64,
    pub newest_check_age_s: f64,
}

/// Newest check younger than this: the health monitor is recording a sweep.
const BURST_AGE_S: f64 = 0.15;

/// `GET /engines` every `every` for `duration`, from one keep-alive client.
pub async fn sweeps(
    client: &reqwest::Client,
    base: &str,
    expect: &Expectations,
    duration: Duration,
    every: Duration,
) -> anyhow::Result<SweepResult> {
    let url = format!("{base}/engines");
    let started = Instant::now();
    let until = started + duration;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut latencies = Vec::new();
    let mut errors = 0usize;
    let mut first_errors = Vec::new();
    let mut bytes = 0usize;
    let mut r = SweepResult {
        seconds: 0.0,
        requests: 0,
        errors: 0,
        latency: LatencyStats::default(),
        mean_body_kb: 0.0,
        max_age_s: 0.0,
        max_age_healthy_s: 0.0,
        max_age_hung_s: 0.0,
        answers_with_wrong_status: 0,
        wrong_statuses: 0,
        never_checked: 0,
        during_check_bursts: LatencyStats::default(),
        between_check_bursts: LatencyStats::default(),
        slowest: Vec::new(),
        first_errors: Vec::new(),
    };
    let mut answers: Vec<(f64, Duration, f64)> = Vec::new();
    let mut last_print = Instant::now();
    loop {
        ticker.tick().await;
        if Instant::now() >= until {
            break;
        }
        r.requests += 1;
        match fetch_engines(client, &url).await {
            Ok(fetched) => {
                latencies.push(fetched.latency);
                bytes += fetched.bytes;
                let c = census(&fetched, expect);
                answers.push((started.elapsed().as_secs_f64(), fetched.latency, c.min_age));
                r.max_age_healthy_s = r.max_age_healthy_s.max(c.max_age_healthy);
                r.max_age_hung_s = r.max_age_hung_s.max(c.max_age_hung);
                r.never_checked += c.never_checked;
                let wrong = c.wrong + c.missing;
                r.wrong_statuses += wrong;
                if wrong > 0 {
                    r.answers_with_wrong_status += 1;
                }
            }
            Err(e) => {
                errors += 1;
                if first_errors.len() < KEEP_ERRORS {
                    first_errors.push(format!("{e:#}"));
                }
                if errors > 20 && errors * 2 > r.requests {
                    bail!("GET /engines keeps failing: {}", first_errors.join("; "));
                }
            }
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            let so_far = LatencyStats::from(latencies.clone());
            eprintln!(
                "bench: sweeps {:>4.1}s/{:.0}s: {} requests, p50 {:.2} ms, p99 {:.2} ms, max age {:.2}s",
                started.elapsed().as_secs_f64(),
                duration.as_secs_f64(),
                r.requests,
                so_far.p50_ms,
                so_far.p99_ms,
                r.max_age_healthy_s.max(r.max_age_hung_s),
            );
        }
    }
    if latencies.is_empty() {
        bail!("no GET /engines answer in {:.0}s", duration.as_secs_f64());
    }
    r.seconds = started.elapsed().as_secs_f64();
    let (during, between): (Vec<&(f64, Duration, f64)>, Vec<_>) =
        answers.iter().partition(|(_, _, age)| *age < BURST_AGE_S);
    r.during_check_bursts = LatencyStats::from(during.iter().map(|a| a.1).collect());
    r.between_check_bursts = LatencyStats::from(between.iter().map(|a| a.1).collect());
    answers.sort_by_key(|a| std::cmp::Reverse(a.1));
    r.slowest = answers
        .iter()
        .take(5)
        .map(|(at, latency, age)| SlowAnswer {
            at_s: *at,
            latency_ms: latency.as_secs_f64() * 1000.0,
            newest_check_age_s: *age,
        })
        .collect();
    r.mean_body_kb = bytes as f64 / latencies.len() as f64 / 1024.0;
    r.latency = LatencyStats::from(latencies);
    r.errors = errors;
    r.first_errors = first_errors;
    r.max_age_s = r.max_age_healthy_s.max(r.max_age_hung_s);
    Ok(r)
}

/// The largest age in one `GET /engines` answer now.
pub async fn max_age_now(
    client: &reqwest::Client,
    base: &str,
    expect: &Expectations,
) -> anyhow::Result<f64> {
    let fetched = fetch_engines(client, &format!("{base}/engines")).await?;
    let c = census(&fetched, expect);
    Ok(c.max_age_healthy.max(c.max_age_hung))
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestResult {
    pub seconds: f64,
    /// Connections sending at once, one request at a time each.
    pub senders: usize,
    pub started_sent: usize,
    pub ended_sent: usize,
    /// Answers with a 2xx status.
    pub ok: usize,
    /// Answers with another status, plus requests that got no answer.
    pub errors: usize,
    /// Of `errors`, requests that got no answer at all.
    pub transport_errors: usize,
    /// 2xx answers per second.
    pub events_per_s: f64,
    pub latency: LatencyStats,
    pub first_errors: Vec<String>,
}

struct Tally {
    ok: usize,
    errors: usize,
    transport_errors: usize,
    consecutive_transport_errors: usize,
    latencies: Vec<Duration>,
    first_errors: Vec<String>,
}

impl Tally {
    async fn send(
        &mut self,
        client: &reqwest::Client,
        url: &str,
        what: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = async {
            let response = client.post(url).json(body).send().await?;
            let status = response.status();
            let text = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, text))
        }
        .await;
        match result {
            Ok((status, text)) => {
                self.consecutive_transport_errors = 0;
                self.latencies.push(started.elapsed());
                if status.is_success() {
                    self.ok += 1;
                } else {
                    self.errors += 1;
                    if self.first_errors.len() < KEEP_ERRORS {
                        self.first_errors.push(format!(
                            "{what}: {status}: {}",
                            String::from_utf8_lossy(&text)
                        ));
                    }
                }
            }
            Err(e) => {
                self.errors += 1;
                self.transport_errors += 1;
                self.consecutive_transport_errors += 1;
                if self.first_errors.len() < KEEP_ERRORS {
                    self.first_errors.push(format!("{what}: {e}"));
                }
                if self.consecutive_transport_errors >= 20 {
                    bail!(
                        "ingest: 20 requests in a row got no answer: {}",
                        self.first_errors.join("; ")
                    );
                }
            }
        }
        Ok(())
    }
}

/// Open streams per healthy engine during the ingest phase: a busy pool,
/// where each engine carries a couple of streams.
pub const OPEN_STREAMS_PER_ENGINE: usize = 2;

/// `stream_started` events (each, once the window is full, followed by the
/// `stream_ended` of the oldest open stream) for `duration`, from `senders`
/// keep-alive connections that each send one request at a time, as that many
/// proxies (or viewers' sessions of one proxy) would. With one sender the rate
/// is the inverse of one event's round trip; with several it is what the
/// orchestrator takes in, their events sharing commits.
pub async fn ingest(
    client: &reqwest::Client,
    base: &str,
    healthy_ports: &[u16],
    duration: Duration,
    senders: usize,
) -> anyhow::Result<IngestResult> {
    if healthy_ports.is_empty() {
        bail!("ingest needs at least one healthy engine");
    }
    let senders = senders.max(1) as u64;
    let started_url = format!("{base}/events/stream_started");
    let ended_url = format!("{base}/events/stream_ended");
    let started = Instant::now();
    let until = started + duration;
    let ok_so_far = std::sync::atomic::AtomicUsize::new(0);
    let errors_so_far = std::sync::atomic::AtomicUsize::new(0);
    // Streams stay open for a window of OPEN_STREAMS_PER_ENGINE per engine,
    // then end: as many open streams on a fast machine as on a slow one, so
    // the memory figure measures the orchestrator, not the machine. A
    // multiple of the senders, so that each sender ends its own streams.
    let window =
        ((OPEN_STREAMS_PER_ENGINE * healthy_ports.len()) as u64).div_ceil(senders) * senders;
    let sender = |first: u64| {
        let (started_url, ended_url) = (&started_url, &ended_url);
        let (ok_so_far, errors_so_far) = (&ok_so_far, &errors_so_far);
        async move {
            let mut tally = Tally {
                ok: 0,
                errors: 0,
                transport_errors: 0,
                consecutive_transport_errors: 0,
                latencies: Vec::new(),
                first_errors: Vec::new(),
            };
            let (mut started_sent, mut ended_sent) = (0usize, 0usize);
            let mut last_print = Instant::now();
            let mut i = first;
            while Instant::now() < until {
                let port = healthy_ports[(i % healthy_ports.len() as u64) as usize];
                let key = format!("{:040x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let session = format!("bench-session-{i}");
                let stream_id = format!("bench-{i}");
                let event = started_event(port, &key, &session, &stream_id);
                let (ok, errors) = (tally.ok, tally.errors);
                tally
                    .send(client, started_url, "stream_started", &event)
                    .await?;
                started_sent += 1;
                if let Some(oldest) = i.checked_sub(window) {
                    let ended =
                        json!({ "stream_id": format!("bench-{oldest}"), "reason": "bench" });
                    tally
                        .send(client, ended_url, "stream_ended", &ended)
                        .await?;
                    ended_sent += 1;
                }
                ok_so_far.fetch_add(tally.ok - ok, Ordering::Relaxed);
                errors_so_far.fetch_add(tally.errors - errors, Ordering::Relaxed);
                i += senders;
                if first == 0 && last_print.elapsed() >= Duration::from_secs(2) {
                    last_print = Instant::now();
                    let elapsed = started.elapsed().as_secs_f64();
                    let ok = ok_so_far.load(Ordering::Relaxed);
                    eprintln!(
                        "bench: ingest {elapsed:>4.1}s/{:.0}s: {ok} ok ({:.0} events/s), {} errors",
                        duration.as_secs_f64(),
                        ok as f64 / elapsed,
                        errors_so_far.load(Ordering::Relaxed)
                    );
                }
            }
            Ok::<_, anyhow::Error>((tally, started_sent, ended_sent))
        }
    };
    let results = futures::future::join_all((0..senders).map(sender)).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut all = IngestResult {
        seconds,
        senders: senders as usize,
        started_sent: 0,
        ended_sent: 0,
        ok: 0,
        errors: 0,
        transport_errors: 0,
        events_per_s: 0.0,
        latency: LatencyStats::default(),
        first_errors: Vec::new(),
    };
    let mut latencies = Vec::new();
    for result in results {
        let (tally, started_sent, ended_sent) = result?;
        all.started_sent += started_sent;
        all.ended_sent += ended_sent;
        all.ok += tally.ok;
        all.errors += tally.errors;
        all.transport_errors += tally.transport_errors;
        latencies.extend(tally.latencies);
        for e in tally.first_errors {
            if all.first_errors.len() < KEEP_ERRORS {
                all.first_errors.push(e);
            }
        }
    }
    all.events_per_s = all.ok as f64 / seconds;
    all.latency = LatencyStats::from(latencies);
    Ok(all)
}

/// A `stream_started` event in the shape docs/CONTRACT.md gives, for an engine on
/// loopback, with its stat and command URLs on that engine.
pub fn started_event(port: u16, key: &str, session: &str, stream_id: &str) -> serde_json::Value {
    json!({
        "engine": { "host": "127.0.0.1", "port": port },
        "stream": { "key_type": "infohash", "key": key },
        "session": {
            "playback_session_id": session,
            "stat_url": format!("http://127.0.0.1:{port}/ace/stat/{key}/{session}"),
            "command_url": format!("http://127.0.0.1:{port}/ace/cmd/{key}/{session}"),
            "is_live": 1
        },
        "labels": { "stream_id": stream_id }
    })
}

/// `GET /engines` as a large pool's clients would ask for it: compressed,
/// and narrowed to the unhealthy engines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ListingsResult {
    /// With `Accept-Encoding: gzip` (the body is not decompressed: the
    /// latency is the orchestrator's, the size what crosses the wire).
    pub gzip: LatencyStats,
    pub gzip_body_kb: f64,
    /// `?health=unhealthy`.
    pub unhealthy: LatencyStats,
    pub unhealthy_body_kb: f64,
    /// Engines in the last `?health=unhealthy` answer.
    pub unhealthy_engines: usize,
    pub errors: usize,
    pub first_errors: Vec<String>,
}

/// `count` of each listing, one every `every`, one at a time.
pub async fn listings(
    client: &reqwest::Client,
    base: &str,
    count: usize,
    every: Duration,
) -> anyhow::Result<ListingsResult> {
    let mut r = ListingsResult::default();
    let mut gzip = Vec::new();
    let mut unhealthy = Vec::new();
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    for _ in 0..count {
        for compressed in [true, false] {
            ticker.tick().await;
            let request = if compressed {
                client
                    .get(format!("{base}/engines"))
                    .header(reqwest::header::ACCEPT_ENCODING, "gzip")
            } else {
                client.get(format!("{base}/engines?health=unhealthy"))
            };
            let started = Instant::now();
            let answer = async {
                let response = request.send().await?;
                let status = response.status();
                let encoding = response
                    .headers()
                    .get(reqwest::header::CONTENT_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, encoding, body))
            }
            .await;
            let latency = started.elapsed();
            let problem = match answer {
                Err(e) => Some(format!("{e}")),
                Ok((status, _, _)) if !status.is_success() => Some(format!("status {status}")),
                Ok((_, encoding, body)) if compressed => {
                    if encoding.as_deref() == Some("gzip") {
                        gzip.push(latency);
                        r.gzip_body_kb = body.len() as f64 / 1024.0;
                        None
                    } else {
                        Some(format!("not compressed (Content-Encoding {encoding:?})"))
                    }
                }
                Ok((_, _, body)) => match serde_json::from_slice::<Vec<EngineRow>>(&body) {
                    Ok(rows) if rows.iter().all(|e| e.health_status == "unhealthy") => {
                        unhealthy.push(latency);
                        r.unhealthy_body_kb = body.len() as f64 / 1024.0;
                        r.unhealthy_engines = rows.len();
                        None
                    }
                    Ok(_) => Some("?health=unhealthy listed a healthy engine".into()),
                    Err(e) => Some(format!("not a list of engines: {e}")),
                },
            };
            if let Some(problem) = problem {
                r.errors += 1;
                if r.first_errors.len() < KEEP_ERRORS {
                    r.first_errors.push(problem);
                }
            }
        }
    }
    r.gzip = LatencyStats::from(gzip);
    r.unhealthy = LatencyStats::from(unhealthy);
    Ok(r)
}

/// `orch_health_sweep_concurrency` from `/metrics`: the probes the last
/// sweep allowed in flight.
pub async fn sweep_concurrency(client: &reqwest::Client, base: &str) -> Option<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with("orch_health_sweep_concurrency "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
