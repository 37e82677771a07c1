//! What the orchestrator acknowledged survives a restart and a `kill -9`
//! (`faults.rs` kills it at random points of event bursts).

mod common;

use std::time::Duration;

use common::{started_event, Orch, Sim};
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
