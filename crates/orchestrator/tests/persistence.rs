//! What the orchestrator acknowledged survives a restart and a `kill -9`.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{started_event, Orch, Sim};
use parking_lot::Mutex;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_streams_and_health_history_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[]).await;
    let sim = Sim::start(2).await;
    let busy = orch.register(sim.ports[0]).await;
    let idle = orch.register(sim.ports[1]).await;
    orch.wait_health(&busy, "healthy", Duration::from_secs(5))
        .await;

    let mut event = started_event(sim.ports[0], "aa11", "s1");
    event["labels"] = json!({ "stream_id": "ch-42" });
    let (status, stream) = orch.post("/events/stream_started", event).await;
    assert_eq!(status, 200, "{stream}");
    let before = orch.engine(&busy).await;
    assert!(before["last_stream_usage"].is_string());
    // kill -9 right after the 2xx: nothing may be lost.
    orch.kill9().await;

    orch.restart().await;
    let after = orch.engine(&busy).await;
    assert_eq!(after["last_stream_usage"], before["last_stream_usage"]);
    assert_eq!(after["streams"], json!(["ch-42"]));
    assert_eq!(after["streams_total"], 1);
    assert_eq!(orch.engine(&idle).await["last_stream_usage"], Value::Null);
    let (_, streams) = orch.get("/streams?status=started").await;
    assert_eq!(streams[0]["id"], "ch-42");
    assert_eq!(streams[0]["is_live"], true);
    let (_, history) = orch.get(&format!("/engines/{busy}/health")).await;
    assert_eq!(history["transitions"][0]["to"], "healthy", "{history}");

    // A graceful stop keeps everything too, including the ended stream.
    let (status, ended) = orch
        .post(
            "/events/stream_ended",
            json!({ "stream_id": "ch-42", "reason": "client left" }),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(ended["updated"], true);
    let (code, took) = orch.terminate().await;
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(5));
    orch.restart().await;
    let (_, stream) = orch.get("/streams/ch-42").await;
    assert_eq!(stream["status"], "ended");
    assert_eq!(stream["end_reason"], "client left");
    let engine = orch.engine(&busy).await;
    assert_eq!(engine["streams"], json!([]));
    assert!(engine["busy_seconds"].as_f64().unwrap() > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_kill_9_in_a_burst() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let mut senders = Vec::new();
    for worker in 0..4 {
        let client = orch.client.clone();
        let url = orch.url("/events/stream_started");
        let acknowledged = acknowledged.clone();
        senders.push(tokio::spawn(async move {
            for i in 0.. {
                let id = format!("w{worker}-{i}");
                let mut event = started_event(19_000 + worker, &format!("k{i}"), "s");
                event["labels"] = json!({ "stream_id": id });
                match client.post(&url).json(&event).send().await {
                    Ok(r) if r.status().is_success() => {
                        acknowledged.lock().insert(id);
                    }
                    _ => break,
                }
            }
        }));
    }
    // Kill in the middle of the burst, once a good number of events is in.
    common::wait_for(
        "200 acknowledged events",
        Duration::from_secs(20),
        || async { (acknowledged.lock().len() >= 200).then_some(()) },
    )
    .await;
    orch.kill9().await;
    for sender in senders {
        let _ = sender.await;
    }
    let acknowledged = acknowledged.lock().clone();

    orch.restart().await;
    let (_, streams) = orch.get("/streams?status=started").await;
    let stored: BTreeSet<String> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost: {lost:?}",
        lost.len()
    );
}
