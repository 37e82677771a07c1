//! Panel mode (`--panel`): what one open dashboard costs on the wire while the
//! pool is checked (and 10 % of it hangs): the bytes per second of the event
//! stream `GET /panel/events`, its messages, the size of the snapshot it
//! starts with, and the same for a dashboard that polls
//! `GET /panel/snapshot?since=` every 2 s instead.

use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;
use tokio::time::Instant;

/// Polling interval of the measured polling dashboard (the page's default
/// choices are 2, 5, 10 or 30 s; 2 s is the most expensive).
const POLL_EVERY: Duration = Duration::from_secs(2);

#[derive(Serialize, Debug)]
pub struct PanelResult {
    pub seconds: f64,
    /// The first event: the whole pool.
    pub snapshot_bytes: usize,
    pub snapshot_ms: f64,
    /// After the snapshot, over `seconds`.
    pub stream_bytes: u64,
    pub stream_kib_per_s: f64,
    pub deltas: u64,
    pub deltas_per_s: f64,
    pub largest_delta_bytes: usize,
    /// Engines named in the deltas per second (one engine in two deltas counts twice).
    pub engine_updates_per_s: f64,
    /// A dashboard polling `?since=` with `If-None-Match` every 2 s over the same window.
    pub poll_bytes: u64,
    pub poll_kib_per_s: f64,
    pub polls: u64,
    pub polls_not_modified: u64,
}

/// Opens the event stream, takes its snapshot, then counts for `seconds`.
pub async fn measure(base: &str, seconds: f64) -> anyhow::Result<PanelResult> {
    let client = reqwest::Client::builder()
        .build()
        .context("cannot build the HTTP client")?;
    let window = Duration::from_secs_f64(seconds);
    let opened = Instant::now();
    let mut response = client
        .get(format!("{base}/panel/events"))
        .send()
        .await
        .context("GET /panel/events")?;
    if !response.status().is_success() {
        bail!("GET /panel/events answered {}", response.status());
    }
    let mut buffer = Vec::<u8>::new();
    let mut snapshot: Option<(usize, f64, String)> = None;
    // The snapshot.
    while snapshot.is_none() {
        let chunk = tokio::time::timeout(Duration::from_secs(60), response.chunk())
            .await
            .context("no snapshot within 60 s")??
            .context("the event stream ended")?;
        buffer.extend_from_slice(&chunk);
        if let Some(end) = find(&buffer, b"\n\n") {
            let block = String::from_utf8_lossy(&buffer[..end + 2]).into_owned();
            let version = block
                .lines()
                .find_map(|l| l.strip_prefix("id: "))
                .unwrap_or_default()
                .to_owned();
            snapshot = Some((end + 2, opened.elapsed().as_secs_f64() * 1000.0, version));
            buffer.drain(..end + 2);
        }
    }
    let (snapshot_bytes, snapshot_ms, version) = snapshot.unwrap_or_default();
    eprintln!(
        "bench: panel: snapshot of {:.1} KiB in {snapshot_ms:.0} ms; counting the event stream and a 2 s poller for {seconds}s",
        snapshot_bytes as f64 / 1024.0
    );

    let poller = tokio::spawn(poll(client.clone(), base.to_owned(), version, window));
    let started = Instant::now();
    let until = started + window;
    let mut stream_bytes = buffer.len() as u64;
    let mut deltas = 0u64;
    let mut largest = 0usize;
    let mut engine_updates = 0u64;
    loop {
        while let Some(end) = find(&buffer, b"\n\n") {
            let block = &buffer[..end + 2];
            if block.starts_with(b"event: delta") || find(block, b"\nevent: delta").is_some() {
                deltas += 1;
                largest = largest.max(block.len());
                engine_updates += count_engines(block);
            }
            buffer.drain(..end + 2);
        }
        match tokio::time::timeout_at(until, response.chunk()).await {
            Err(_) => break,
            Ok(chunk) => {
                let chunk = chunk?.context("the event stream ended")?;
                stream_bytes += chunk.len() as u64;
                buffer.extend_from_slice(&chunk);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (poll_bytes, polls, not_modified) = poller.await.context("the poller failed")??;
    Ok(PanelResult {
        seconds: elapsed,
        snapshot_bytes,
        snapshot_ms,
        stream_bytes,
        stream_kib_per_s: stream_bytes as f64 / 1024.0 / elapsed,
        deltas,
        deltas_per_s: deltas as f64 / elapsed,
        largest_delta_bytes: largest,
        engine_updates_per_s: engine_updates as f64 / elapsed,
        poll_bytes,
        poll_kib_per_s: poll_bytes as f64 / 1024.0 / elapsed,
        polls,
        polls_not_modified: not_modified,
    })
}

/// A polling dashboard: `?since=` its version, `If-None-Match` the same.
/// Answers (body bytes, polls, 304s).
async fn poll(
    client: reqwest::Client,
    base: String,
    mut version: String,
    window: Duration,
) -> anyhow::Result<(u64, u64, u64)> {
    let until = Instant::now() + window;
    let (mut bytes, mut polls, mut not_modified) = (0u64, 0u64, 0u64);
    while Instant::now() + POLL_EVERY <= until {
        tokio::time::sleep(POLL_EVERY).await;
        let response = client
            .get(format!("{base}/panel/snapshot?since={version}"))
            .header("if-none-match", format!("\"{version}\""))
            .send()
            .await
            .context("GET /panel/snapshot")?;
        polls += 1;
        if response.status() == reqwest::StatusCode::NOT_MODIFIED {
            not_modified += 1;
            continue;
        }
        let body = response.bytes().await?;
        bytes += body.len() as u64;
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        if let Some(v) = answer["version"].as_str() {
            version = v.to_owned();
        }
    }
    Ok((bytes, polls, not_modified))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Engines a delta names in its `engines` and `checks` sections.
fn count_engines(block: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(block);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let Ok(delta) = serde_json::from_str::<serde_json::Value>(&data) else {
        return 0;
    };
    let mut named = std::collections::HashSet::new();
    for section in ["engines", "checks"] {
        if let Some(object) = delta[section].as_object() {
            named.extend(object.keys().cloned());
        }
    }
    named.len() as u64
}

pub fn print(engines: usize, hung: usize, interval: f64, r: &PanelResult) {
    println!(
        "panel: {engines} engines ({hung} hung), HEALTH_CHECK_INTERVAL_S={interval}, {:.0} s measured",
        r.seconds
    );
    println!(
        "  snapshot on connect      {:>9.1} KiB in {:.0} ms",
        r.snapshot_bytes as f64 / 1024.0,
        r.snapshot_ms
    );
    println!(
        "  event stream             {:>9.1} KiB/s ({} deltas, {:.1}/s, largest {:.1} KiB, {:.0} engine updates/s)",
        r.stream_kib_per_s,
        r.deltas,
        r.deltas_per_s,
        r.largest_delta_bytes as f64 / 1024.0,
        r.engine_updates_per_s
    );
    println!(
        "  polling ?since= every 2 s {:>8.1} KiB/s ({} polls, {} answered 304)",
        r.poll_kib_per_s, r.polls, r.polls_not_modified
    );
}
