//! What a large pool needs from the API and the health monitor: `GET
//! /engines` narrowed by query parameters and compressed for clients that
//! accept it (the real binary against emulated engines), and a health sweep
//! whose concurrency grows with the pool so that a hung tenth never
//! stretches it past the interval (a policy test on a paused clock).

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Orch, Sim};
use futures::future::BoxFuture;
use orchestrator::domain::CheckSource;
use orchestrator::engine_client::{Probe, ProbeOutcome};
use orchestrator::health;
use orchestrator::registry::{Limits, Registry};
use orchestrator::service::{Orchestrator, Settings};
use orchestrator::store::{Retention, Store};
use orchestrator::time::Timestamp;
use serde_json::{json, Value};

/// Ids of the engines a listing answered, in its order.
fn ids(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("not a list: {list}"))
        .iter()
        .map(|e| e["container_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engines_can_be_listed_by_health_runtime_host_vpn_node_and_label() {
    let sim = Sim::start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    let labels = [
        json!({ "pool": "eu", "acestream.vpn_node": "gluetun-a" }),
        json!({ "pool": "eu" }),
        json!({ "pool": "us", "acestream.vpn_node": "gluetun-b" }),
        json!({}),
    ];
    let mut engines = Vec::new();
    for (port, labels) in sim.ports.iter().zip(labels) {
        // One engine by a loopback alias: a host filter treats them as one host.
        let host = if engines.is_empty() {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let (status, body) = orch
            .post(
                "/engines",
                json!({ "host": host, "port": port, "labels": labels }),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        engines.push(body["container_id"].as_str().unwrap().to_owned());
    }
    // The third engine hangs: the health monitor finds it unhealthy.
    sim.set_mode(Some(2), "hang").await;
    orch.wait_health(&engines[2], "unhealthy", Duration::from_secs(10))
        .await;
    for id in [&engines[0], &engines[1], &engines[3]] {
        orch.wait_health(id, "healthy", Duration::from_secs(10))
            .await;
    }

    // No filter: every engine, ordered by id, in the contract's shape.
    let (status, all) = orch.get("/engines").await;
    assert_eq!(status, 200);
    let mut sorted = engines.clone();
    sorted.sort();
    assert_eq!(ids(&all), sorted);
    for key in [
        "container_id",
        "health_status",
        "last_health_check",
        "streams",
    ] {
        assert!(all[0].get(key).is_some(), "{key} missing from {}", all[0]);
    }

    let cases: &[(&str, Vec<&String>)] = &[
        ("?health=unhealthy", vec![&engines[2]]),
        (
            "?health=healthy",
            vec![&engines[0], &engines[1], &engines[3]],
        ),
        ("?health=unknown", vec![]),
        ("?runtime=external", engines.iter().collect()),
        ("?runtime=docker", vec![]),
        ("?host=127.0.0.1", engines.iter().collect()),
        ("?host=LOCALHOST", engines.iter().collect()),
        ("?host=10.1.2.3", vec![]),
        ("?vpn_node=gluetun-a", vec![&engines[0]]),
        ("?vpn_node=gluetun-c", vec![]),
        ("?label=pool=eu", vec![&engines[0], &engines[1]]),
        ("?label=pool", vec![&engines[0], &engines[1], &engines[2]]),
        (
            "?label=pool=eu&health=healthy&vpn_node=gluetun-a",
            vec![&engines[0]],
        ),
        ("?label=pool%3Dus&health=healthy", vec![]),
        // Empty values filter nothing, as on GET /streams.
        ("?health=&label=", engines.iter().collect()),
    ];
    for (query, want) in cases {
        let (status, list) = orch.get(&format!("/engines{query}")).await;
        assert_eq!(status, 200, "{query}: {list}");
        let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(ids(&list), want, "{query}");
    }

    for (query, names) in [
        ("?health=sick", "health 'sick'"),
        ("?runtime=kubernetes", "runtime 'kubernetes'"),
        ("?label==eu", "label '=eu' has no key"),
    ] {
        let (status, body) = orch.get(&format!("/engines{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(names), "{query}: {detail}");
    }
    // The orchestrator still serves after the bad queries.
    assert_eq!(orch.get("/engines?health=healthy").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_are_gzip_compressed_for_clients_that_accept_it() {
    let sim = Sim::start(40).await;
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    for &port in &sim.ports {
        orch.register(port).await;
    }
    wait_for("every engine checked", Duration::from_secs(10), || async {
        let (_, list) = orch.get("/engines?health=healthy").await;
        (list.as_array().map(Vec::len) == Some(sim.ports.len())).then_some(())
    })
    .await;

    // A client that says nothing about encodings gets plain JSON.
    let plain = orch.client.get(orch.url("/engines")).send().await.unwrap();
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    let plain: Value = serde_json::from_slice(&plain.bytes().await.unwrap()).unwrap();

    let gzipped = orch
        .client
        .get(orch.url("/engines"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), 200);
    assert_eq!(
        gzipped.headers().get("content-encoding").unwrap(),
        "gzip",
        "GET /engines with Accept-Encoding: gzip"
    );
    assert_eq!(
        gzipped.headers().get("content-type").unwrap(),
        "application/json"
    );
    let compressed = gzipped.bytes().await.unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut json)
        .expect("a gzip body");
    let unzipped: Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(ids(&unzipped), ids(&plain));
    assert!(
        compressed.len() * 4 < json.len(),
        "40 engines: {} bytes compressed from {}",
        compressed.len(),
        json.len()
    );

    // A client that accepts only what we do not offer gets plain JSON.
    let other = orch
        .client
        .get(orch.url("/engines"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("content-encoding").is_none());

    // The other large lists too; small answers are not compressed.
    for path in ["/streams", "/openapi.json", "/panel/snapshot"] {
        let response = orch
            .client
            .get(orch.url(path))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        if path != "/streams" {
            assert_eq!(
                response.headers().get("content-encoding").unwrap(),
                "gzip",
                "{path}"
            );
        }
    }
    let health = orch
        .client
        .get(orch.url("/health/live"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(health.headers().get("content-encoding").is_none());
}

/// Engines on ports below `hung_below` never answer: their probe takes the
/// whole timeout. The others answer in 5 ms. Counts probes in flight.
struct FakePool {
    hung_below: u16,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

impl Probe for FakePool {
    fn probe<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome> {
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_in_flight.fetch_max(now, Ordering::SeqCst);
            let hung = port < self.hung_below;
            let latency = if hung {
                timeout
            } else {
                Duration::from_millis(5)
            };
            tokio::time::sleep(latency).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            ProbeOutcome {
                ok: !hung,
                latency,
                error: hung.then(|| format!("no answer within {:.1}s", timeout.as_secs_f64())),
            }
        })
    }
}

/// `sweeps` sweeps in a row over `engines` engines of which `hung` hang,
/// with a 2 s interval and a 1 s timeout: for each, its duration, the most
/// probes in flight and its report.
async fn sweeps_of(
    engines: u16,
    hung: u16,
    floor: usize,
    sweeps: usize,
) -> Vec<(Duration, usize, health::SweepReport)> {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        stats_per_stream: 10,
        health_per_engine: 10,
    };
    let (store, _) = Store::open(&dir.path().join("sweep.db"), retention, 10).unwrap();
    let limits = Limits {
        failure_threshold: 1,
        health_history_max: 10,
        stats_history_max: 10,
        ended_streams_max: 10,
    };
    let mut registry = Registry::new(limits);
    for port in 1..=engines {
        let engine = Registry::new_external_engine(
            "10.0.0.1",
            port,
            None,
            None,
            BTreeMap::new(),
            Timestamp::now(),
        );
        let (_, ops) = registry.register(engine);
        store.enqueue(ops);
    }
    let settings = Settings {
        health_interval: Duration::from_secs(2),
        health_timeout: Duration::from_secs(1),
        health_concurrency: floor,
        collect_concurrency: 4,
        collect_interval: Duration::from_secs(5),
        max_streams_per_engine: 2,
        reservation_ttl_s: 30.0,
        retention,
    };
    let pool = Arc::new(FakePool {
        hung_below: 1 + hung,
        in_flight: AtomicUsize::new(0),
        most_in_flight: AtomicUsize::new(0),
    });
    let orch = Orchestrator::new(registry, store, settings).with_probe(pool.clone());
    let mut results = Vec::new();
    for _ in 0..sweeps {
        pool.most_in_flight.store(0, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let report = health::sweep(&orch, CheckSource::Probe).await;
        let took = started.elapsed();
        results.push((took, pool.most_in_flight.load(Ordering::SeqCst), report));
    }
    orch.flush().await;
    results
}

#[tokio::test(start_paused = true)]
async fn the_sweep_concurrency_grows_with_the_pool_so_a_hung_tenth_fits_in_the_interval() {
    let interval = Duration::from_secs(2);
    let mut lanes = Vec::new();
    for engines in [100u16, 1_000, 2_500, 5_000] {
        let (took, most, report) = sweeps_of(engines, engines / 10, 128, 1).await.remove(0);
        assert_eq!(report.checked, usize::from(engines));
        assert_eq!(report.unhealthy, usize::from(engines / 10), "{engines}");
        // Every lane is used once the pool has more engines than lanes.
        assert_eq!(
            most,
            report.concurrency.min(usize::from(engines)),
            "{engines}: lanes used"
        );
        assert!(
            took < interval,
            "{engines} engines, a tenth hung: the sweep took {took:?} with {most} probes at once"
        );
        lanes.push(report.concurrency);
    }
    // The floor (HEALTH_CHECK_CONCURRENCY=128) covers 100 and 1,000 engines
    // (100 hung + 32); above, the lanes follow the pool.
    assert_eq!(lanes, [128, 132, 282, 532]);
    // The floor is only a floor.
    let (took, most, _) = sweeps_of(5_000, 500, 16, 1).await.remove(0);
    assert_eq!(most, 532);
    assert!(took < interval);
}

#[tokio::test(start_paused = true)]
async fn more_hung_engines_than_planned_stretch_the_sweep_by_whole_timeouts() {
    // 30 % of 5,000 hang, three times the tenth the lanes are planned for:
    // 1,500 hung engines in 532 lanes take three timeouts, every sweep; the
    // lanes do not chase the unhealthy count (on a starved machine that
    // count includes healthy engines that missed the timeout, and more
    // lanes would make it worse). The engines that answer are still checked
    // in every sweep.
    let sweeps = sweeps_of(5_000, 1_500, 128, 2).await;
    for (took, lanes, report) in &sweeps {
        assert_eq!(*lanes, 532);
        assert_eq!(report.unhealthy, 1_500);
        assert_eq!(report.healthy, 3_500);
        assert!(
            *took >= Duration::from_secs(3) && *took < Duration::from_secs(4),
            "{took:?}"
        );
    }
}
