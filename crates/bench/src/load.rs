//! The load and soak modes: many concurrent keep-alive clients looping over a
//! mix of `GET /engines`, `POST /engines/select`, `stream_started` and
//! `stream_ended`, while the orchestrator's memory is sampled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::phases::{self, LatencyStats};
use crate::sampler::{kb_to_mb, read_proc};

/// Error messages kept per route.
const KEEP_ERRORS: usize = 5;

/// `max_streams_per_engine` sent with every `POST /engines/select`.
pub const SELECT_MAX_STREAMS: usize = 1000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Engines,
    Select,
    Started,
    Ended,
}

const ROUTES: [(Op, &str); 4] = [
    (Op::Engines, "GET /engines"),
    (Op::Select, "POST /engines/select"),
    (Op::Started, "POST /events/stream_started"),
    (Op::Ended, "POST /events/stream_ended"),
];

/// One client's cycle: 40 % `GET /engines`, 20 % select, 20 % started, 20 %
/// ended. A select hands its engine and reservation to the next started; an
/// ended closes the oldest stream this client started.
const CYCLE: [Op; 10] = [
    Op::Engines,
    Op::Select,
    Op::Started,
    Op::Engines,
    Op::Ended,
    Op::Engines,
    Op::Select,
    Op::Started,
    Op::Engines,
    Op::Ended,
];

fn index(op: Op) -> usize {
    match op {
        Op::Engines => 0,
        Op::Select => 1,
        Op::Started => 2,
        Op::Ended => 3,
    }
}

pub struct LoadConfig {
    pub clients: usize,
    pub duration: Duration,
    /// RSS "after warm-up" is the sample taken this long into the load.
    pub warmup: Duration,
    /// RSS series sampling period.
    pub sample_every: Duration,
    /// The reference point of the soak check (RSS at this time into the load).
    pub soak_reference: Duration,
    /// Allowed growth of the end RSS over the reference, fraction.
    pub tolerance: f64,
    pub healthy_ports: Vec<u16>,
}

#[derive(Default)]
struct RouteTally {
    latencies: Vec<Duration>,
    ok: usize,
    errors: usize,
    transport_errors: usize,
    /// 503 answers to select (errors unless the healthy engines were full).
    unavailable: usize,
    first_errors: Vec<String>,
}

#[derive(Default)]
struct ClientTally {
    routes: [RouteTally; 4],
}

impl ClientTally {
    fn error(&mut self, op: Op, message: String, transport: bool) {
        let t = &mut self.routes[index(op)];
        t.errors += 1;
        if transport {
            t.transport_errors += 1;
        }
        if t.first_errors.len() < KEEP_ERRORS {
            t.first_errors.push(message);
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteResult {
    pub route: String,
    pub requests: usize,
    pub ok: usize,
    pub errors: usize,
    pub transport_errors: usize,
    pub select_503: usize,
    pub requests_per_s: f64,
    pub latency: LatencyStats,
    pub first_errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RssPoint {
    pub at_s: f64,
    pub rss_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    pub clients: usize,
    pub seconds: f64,
    pub routes: Vec<RouteResult>,
    pub total_requests: usize,
    pub total_errors: usize,
    pub total_requests_per_s: f64,
    /// Streams still open at the end (started, not yet ended).
    pub open_streams_at_end: usize,
    pub rss_series: Vec<RssPoint>,
    pub rss_at_start_mb: f64,
    pub rss_after_warmup_mb: f64,
    pub warmup_s: f64,
    pub rss_at_reference_mb: Option<f64>,
    pub reference_s: f64,
    pub rss_end_mb: f64,
    /// Highest VmRSS sampled (every 200 ms) during the load.
    pub rss_peak_in_load_mb: f64,
    /// `end <= after warm-up * (1 + tolerance)`.
    pub no_growth_after_warmup: bool,
    /// `end <= at reference * (1 + tolerance)` (soak check; None when the load
    /// was shorter than the reference).
    pub end_within_tolerance_of_reference: Option<bool>,
    pub tolerance: f64,
}

struct Shared {
    open_streams: AtomicUsize,
}

/// Runs the load for `cfg.duration` and samples the orchestrator's RSS.
pub async fn run(base: &str, orch_pid: u32, cfg: &LoadConfig) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(
        !cfg.healthy_ports.is_empty(),
        "the load needs a healthy engine"
    );
    let shared = Arc::new(Shared {
        open_streams: AtomicUsize::new(0),
    });
    let healthy_ports: Arc<Vec<u16>> = Arc::new(cfg.healthy_ports.clone());
    let capacity = cfg.healthy_ports.len() * SELECT_MAX_STREAMS;
    let started = Instant::now();
    let until = started + cfg.duration;
    let pid = orch_pid.to_string();
    let rss_now = |pid: &str| read_proc(pid).map(|r| kb_to_mb(r.rss_kb)).unwrap_or(0.0);
    let rss_at_start = rss_now(&pid);

    let mut tasks = Vec::with_capacity(cfg.clients);
    for n in 0..cfg.clients {
        let client = phases::client()?;
        let base = base.to_owned();
        let shared = shared.clone();
        let ports = healthy_ports.clone();
        let clients = cfg.clients;
        tasks.push(tokio::spawn(async move {
            client_loop(n, clients, &client, &base, &ports, &shared, capacity, until).await
        }));
    }

    // RSS series every `sample_every`, and the highest RSS every 200 ms.
    let mut series = vec![RssPoint {
        at_s: 0.0,
        rss_mb: rss_at_start,
    }];
    let mut peak = rss_at_start;
    let mut next_point = started + cfg.sample_every;
    let mut rss_after_warmup = None;
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200).min(until - now)).await;
        let rss = rss_now(&pid);
        peak = peak.max(rss);
        let elapsed = started.elapsed();
        if rss_after_warmup.is_none() && elapsed >= cfg.warmup {
            rss_after_warmup = Some(rss);
        }
        if Instant::now() >= next_point {
            next_point += cfg.sample_every;
            series.push(RssPoint {
                at_s: elapsed.as_secs_f64(),
                rss_mb: rss,
            });
            eprintln!(
                "bench: load {:>5.0}s/{:.0}s: orchestrator RSS {rss:.1} MiB, open streams {}",
                elapsed.as_secs_f64(),
                cfg.duration.as_secs_f64(),
                shared.open_streams.load(Ordering::Relaxed)
            );
        }
    }
    let mut tally = ClientTally::default();
    for task in tasks {
        let one = task.await.context("a load client task failed")?;
        for (all, mine) in tally.routes.iter_mut().zip(one.routes) {
            all.latencies.extend(mine.latencies);
            all.ok += mine.ok;
            all.errors += mine.errors;
            all.transport_errors += mine.transport_errors;
            all.unavailable += mine.unavailable;
            for e in mine.first_errors {
                if all.first_errors.len() < KEEP_ERRORS {
                    all.first_errors.push(e);
                }
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let rss_end = rss_now(&pid);
    peak = peak.max(rss_end);
    if series.last().map(|p| p.at_s) < Some(seconds - 1.0) {
        series.push(RssPoint {
            at_s: seconds,
            rss_mb: rss_end,
        });
    }
    let routes: Vec<RouteResult> = ROUTES
        .iter()
        .zip(tally.routes)
        .map(|((_, name), t)| {
            let requests = t.ok + t.errors;
            RouteResult {
                route: (*name).to_owned(),
                requests,
                ok: t.ok,
                errors: t.errors,
                transport_errors: t.transport_errors,
                select_503: t.unavailable,
                requests_per_s: requests as f64 / seconds,
                latency: LatencyStats::from(t.latencies),
                first_errors: t.first_errors,
            }
        })
        .collect();
    let total_requests: usize = routes.iter().map(|r| r.requests).sum();
    let total_errors = routes.iter().map(|r| r.errors).sum();
    let rss_after_warmup = rss_after_warmup.unwrap_or(rss_end);
    let reference_s = cfg.soak_reference.as_secs_f64();
    // The series point nearest the reference time, when the load reached it.
    let rss_at_reference = if seconds + 0.5 >= reference_s {
        series
            .iter()
            .min_by(|a, b| {
                (a.at_s - reference_s)
                    .abs()
                    .total_cmp(&(b.at_s - reference_s).abs())
            })
            .map(|p| p.rss_mb)
    } else {
        None
    };
    Ok(LoadResult {
        clients: cfg.clients,
        seconds,
        total_requests,
        total_errors,
        total_requests_per_s: total_requests as f64 / seconds,
        routes,
        open_streams_at_end: shared.open_streams.load(Ordering::Relaxed),
        rss_at_start_mb: rss_at_start,
        rss_after_warmup_mb: rss_after_warmup,
        warmup_s: cfg.warmup.as_secs_f64(),
        rss_at_reference_mb: rss_at_reference,
        reference_s,
        rss_end_mb: rss_end,
        rss_peak_in_load_mb: peak,
        no_growth_after_warmup: rss_end <= rss_after_warmup * (1.0 + cfg.tolerance),
        end_within_tolerance_of_reference: rss_at_reference
            .map(|r| rss_end <= r * (1.0 + cfg.tolerance)),
        tolerance: cfg.tolerance,
        rss_series: series,
    })
}

/// A reservation handed out by select, used by the next `stream_started`.
struct Reserved {
    port: u16,
    reservation_id: String,
}

#[allow(clippy::too_many_arguments)]
async fn client_loop(
    n: usize,
    clients: usize,
    client: &reqwest::Client,
    base: &str,
    ports: &[u16],
    shared: &Shared,
    capacity: usize,
    until: Instant,
) -> ClientTally {
    let engines_url = format!("{base}/engines");
    let select_url = format!("{base}/engines/select");
    let started_url = format!("{base}/events/stream_started");
    let ended_url = format!("{base}/events/stream_ended");
    let mut tally = ClientTally::default();
    let mut open: VecDeque<String> = VecDeque::new();
    let mut reserved: Option<Reserved> = None;
    // Clients start at different points of the cycle so the mix interleaves.
    let mut step = n % CYCLE.len();
    let mut seq: u64 = 0;
    while Instant::now() < until {
        let mut op = CYCLE[step % CYCLE.len()];
        step += 1;
        if op == Op::Ended && open.is_empty() {
            op = Op::Started;
        }
        let t0 = Instant::now();
        let request = match op {
            Op::Engines => client.get(&engines_url),
            Op::Select => client
                .post(&select_url)
                .json(&json!({ "max_streams_per_engine": SELECT_MAX_STREAMS })),
            Op::Started => {
                seq += 1;
                let id = format!("load-{n}-{seq}");
                let (port, reservation_id) = match reserved.take() {
                    Some(r) => (r.port, Some(r.reservation_id)),
                    None => (ports[(n + seq as usize * clients) % ports.len()], None),
                };
                let key = format!(
                    "{:040x}",
                    ((n as u64) << 40 | seq).wrapping_mul(0x9E37_79B9_7F4A_7C15)
                );
                let session = format!("load-session-{n}-{seq}");
                let mut event = crate::phases::started_event(port, &key, &session, &id);
                if let Some(rid) = reservation_id {
                    event["reservation_id"] = json!(rid);
                }
                open.push_back(id);
                client.post(&started_url).json(&event)
            }
            Op::Ended => {
                let id = open.front().cloned().unwrap_or_default();
                client
                    .post(&ended_url)
                    .json(&json!({ "stream_id": id, "reason": "bench-load" }))
            }
        };
        let result = async {
            let response = request.send().await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        }
        .await;
        let latency = t0.elapsed();
        let route = &mut tally.routes[index(op)];
        match result {
            Ok((status, body)) => {
                route.latencies.push(latency);
                if status.is_success() {
                    route.ok += 1;
                    match op {
                        Op::Started => {
                            shared.open_streams.fetch_add(1, Ordering::Relaxed);
                        }
                        Op::Ended => {
                            open.pop_front();
                            shared.open_streams.fetch_sub(1, Ordering::Relaxed);
                        }
                        Op::Select => {
                            reserved = parse_selection(&body);
                        }
                        Op::Engines => {}
                    }
                } else {
                    if op == Op::Started {
                        open.pop_back();
                    }
                    if op == Op::Ended {
                        // Do not retry a stream the orchestrator refused to end.
                        open.pop_front();
                    }
                    // A 503 from select is expected only when every healthy
                    // engine is full (open streams + one reservation per client).
                    let full = shared.open_streams.load(Ordering::Relaxed) + clients >= capacity;
                    if op == Op::Select && status.as_u16() == 503 {
                        route.unavailable += 1;
                        if full {
                            route.ok += 1;
                            continue;
                        }
                    }
                    let text = String::from_utf8_lossy(&body);
                    let text: String = text.chars().take(200).collect();
                    tally.error(op, format!("{status}: {text}"), false);
                }
            }
            Err(e) => {
                if op == Op::Started {
                    // Whether it was recorded is unknown: do not end it later.
                    open.pop_back();
                }
                tally.error(op, format!("{e}"), true);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tally
}

fn parse_selection(body: &[u8]) -> Option<Reserved> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let port = v.get("engine")?.get("port")?.as_u64()?;
    let reservation_id = v.get("reservation_id")?.as_str()?.to_owned();
    Some(Reserved {
        port: u16::try_from(port).ok()?,
        reservation_id,
    })
}

pub fn print(r: &LoadResult) {
    println!(
        "load {:.1}s, {} clients: {} requests ({:.0}/s), {} errors; open streams at end {}",
        r.seconds,
        r.clients,
        r.total_requests,
        r.total_requests_per_s,
        r.total_errors,
        r.open_streams_at_end
    );
    println!();
    println!(
        "{:<30} {:>9} {:>9} {:>8} {:>9} {:>9} {:>9} {:>9}",
        "route", "requests", "req/s", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for route in &r.routes {
        println!(
            "{:<30} {:>9} {:>9.1} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            route.route,
            route.requests,
            route.requests_per_s,
            route.errors,
            route.latency.p50_ms,
            route.latency.p90_ms,
            route.latency.p99_ms,
            route.latency.max_ms
        );
    }
    for route in &r.routes {
        if route.select_503 > 0 || route.transport_errors > 0 {
            println!(
                "  {}: {} transport errors, {} select 503",
                route.route, route.transport_errors, route.select_503
            );
        }
        for e in &route.first_errors {
            println!("  {}: {e}", route.route);
        }
    }
    println!();
    let series: Vec<String> = r
        .rss_series
        .iter()
        .map(|p| format!("{:.0}s {:.1}", p.at_s, p.rss_mb))
        .collect();
    println!("orchestrator RSS MiB every 10 s: {}", series.join(", "));
    println!(
        "orchestrator RSS: start {:.1} MiB, after warm-up ({:.0}s) {:.1} MiB, peak in load {:.1} MiB, end {:.1} MiB -> {}",
        r.rss_at_start_mb,
        r.warmup_s,
        r.rss_after_warmup_mb,
        r.rss_peak_in_load_mb,
        r.rss_end_mb,
        if r.no_growth_after_warmup {
            format!("no growth after warm-up (within {:.0} %)", r.tolerance * 100.0)
        } else {
            format!("GREW beyond {:.0} % after warm-up", r.tolerance * 100.0)
        }
    );
    if let (Some(reference), Some(ok)) =
        (r.rss_at_reference_mb, r.end_within_tolerance_of_reference)
    {
        println!(
            "soak check: end RSS {:.1} MiB {} RSS at {:.0}s {:.1} MiB + {:.0} % -> {}",
            r.rss_end_mb,
            if ok { "<=" } else { ">" },
            r.reference_s,
            reference,
            r.tolerance * 100.0,
            if ok { "PASS" } else { "FAIL" }
        );
    }
}
