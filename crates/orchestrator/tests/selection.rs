//! `POST /engines/select`: healthy engines only, fewest streams then longest
//! idle, and race-free under many concurrent callers.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{started_event, Orch, Sim};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_callers_never_share_the_last_slot() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    let sim = Sim::start(10).await;
    let mut ids = Vec::new();
    for port in &sim.ports {
        ids.push(orch.register(*port).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", Duration::from_secs(5))
            .await;
    }

    // 10 engines x 2 slots = 20 reservations; 50 callers at once.
    let mut callers = Vec::new();
    for _ in 0..50 {
        let client = orch.client.clone();
        let url = orch.url("/engines/select");
        callers.push(tokio::spawn(async move {
            let r = client.post(url).json(&json!({})).send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }));
    }
    let mut per_engine: HashMap<String, u32> = HashMap::new();
    let mut refused = 0;
    for caller in callers {
        let (status, body) = caller.await.unwrap();
        match status {
            200 => {
                *per_engine
                    .entry(body["engine"]["container_id"].as_str().unwrap().to_owned())
                    .or_default() += 1;
                assert!(body["reservation_id"].is_string());
                assert!(body["expires_at"].as_str().unwrap().ends_with('Z'));
            }
            503 => {
                refused += 1;
                assert!(body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("no healthy engine"));
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(per_engine.values().sum::<u32>(), 20);
    assert_eq!(refused, 30);
    assert!(per_engine.values().all(|n| *n == 2), "{per_engine:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_the_least_busy_then_longest_idle_healthy_engine() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "0.3")]).await;
    let sim = Sim::start(3).await;
    let mut ids = Vec::new();
    for port in &sim.ports {
        ids.push(orch.register(*port).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", Duration::from_secs(5))
            .await;
    }
    let select = |max: u32| {
        let orch = &orch;
        async move {
            let (status, body) = orch
                .post("/engines/select", json!({ "max_streams_per_engine": max }))
                .await;
            (
                status,
                body["engine"]["container_id"].as_str().map(str::to_owned),
                body,
            )
        }
    };

    // Engine 0 used long ago, engine 1 just now, engine 2 busy with a stream that
    // then ended: 0 and 1 have no stream; 0 has been idle longest.
    for (port, key) in [(sim.ports[0], "a"), (sim.ports[1], "b")] {
        let (status, s) = orch
            .post("/events/stream_started", started_event(port, key, "s"))
            .await;
        assert_eq!(status, 200, "{s}");
        orch.post("/events/stream_ended", json!({ "stream_id": s["id"] }))
            .await;
    }
    let (status, _) = orch
        .post(
            "/events/stream_started",
            started_event(sim.ports[2], "c", "s"),
        )
        .await;
    assert_eq!(status, 200);
    let (_, picked, body) = select(1).await;
    assert_eq!(picked.as_deref(), Some(ids[0].as_str()), "{body}");
    // Its slot is reserved now; the next pick is the other free engine.
    let (_, picked, _) = select(1).await;
    assert_eq!(picked.as_deref(), Some(ids[1].as_str()));
    let (status, _, body) = select(1).await;
    assert_eq!(status, 503, "{body}");

    // A stream_started for the reserved engine consumes its reservation rather
    // than adding to it.
    let engine = orch.engine(&ids[0]).await;
    assert_eq!(engine["reservations"], 1);
    orch.post(
        "/events/stream_started",
        started_event(sim.ports[0], "d", "s"),
    )
    .await;
    let engine = orch.engine(&ids[0]).await;
    assert_eq!(engine["reservations"], 0);
    assert_eq!(engine["streams"].as_array().unwrap().len(), 1);

    // Unhealthy engines are never picked.
    sim.set_mode(None, "error").await;
    for id in &ids {
        orch.wait_health(id, "unhealthy", Duration::from_secs(3))
            .await;
    }
    let (status, _, body) = select(5).await;
    assert_eq!(status, 503, "{body}");
}
