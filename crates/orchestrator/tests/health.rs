//! The health monitor against real emulated engines: every failure mode is
//! found within interval + timeout, healthy engines stay healthy, the API stays
//! fast while engines hang, and engines recover.

mod common;

use std::time::Duration;

use common::{started_event, wait_for, Orch, Sim};
use serde_json::Value;
use tokio::time::Instant;

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failure_mode_is_found_and_the_rest_stay_healthy() {
    let dir = tempfile::tempdir().unwrap();
    // A long timeout: if a hung probe blocked the API, /engines would take seconds.
    let (interval, timeout) = (0.5, 2.0);
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "0.5"),
            ("HEALTH_CHECK_TIMEOUT_S", "2"),
        ],
    )
    .await;
    let sim = Sim::start(5).await;
    let mut crashing = Sim::start(1).await;
    let mut ids = Vec::new();
    for port in sim.ports.iter().chain(&crashing.ports) {
        ids.push(orch.register(*port).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", secs(interval + timeout + 2.0))
            .await;
    }

    // Engine 0 stays healthy; 1..4 fail in their own way; the last one crashes.
    let modes = [
        (1, "hang"),
        (2, "error"),
        (3, "bad-json"),
        (4, "error-field"),
    ];
    for (index, mode) in modes {
        sim.set_mode(Some(index), mode).await;
    }
    crashing.kill().await;
    let switched = Instant::now();

    // While engines hang, the API answers without waiting for any probe.
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        let (status, _) = orch.get("/engines").await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_millis(500),
        "GET /engines took {slowest:?} while engines hang"
    );

    let expected_reason = [
        (1, "no answer within 2.0s"),
        (2, "HTTP 500"),
        (3, "not JSON"),
        (4, "engine error"),
        (5, "connection refused"),
    ];
    for (index, reason) in expected_reason {
        let id = &ids[index];
        orch.wait_health(id, "unhealthy", secs(interval + timeout + 1.5))
            .await;
        let (_, history) = orch.get(&format!("/engines/{id}/health")).await;
        let last = &history["transitions"][0];
        assert_eq!(last["to"], "unhealthy", "{history}");
        assert!(
            last["reason"].as_str().unwrap().contains(reason),
            "engine {index}: reason {} does not mention {reason}",
            last["reason"]
        );
    }
    let detected_all = switched.elapsed();
    assert!(
        detected_all <= secs(interval + timeout + 1.5),
        "took {detected_all:?}"
    );

    // The healthy engine was never marked otherwise, and is still being checked.
    let healthy = orch.engine(&ids[0]).await;
    assert_eq!(healthy["health_status"], "healthy");
    let (_, history) = orch.get(&format!("/engines/{}/health", ids[0])).await;
    assert_eq!(
        history["transitions"].as_array().unwrap().len(),
        1,
        "{history}"
    );

    // Recovery: one good answer makes an engine healthy again.
    sim.set_mode(None, "healthy").await;
    for id in &ids[..5] {
        orch.wait_health(id, "healthy", secs(interval + timeout + 1.5))
            .await;
    }
    assert!(
        orch.logs().contains("is now unhealthy"),
        "transitions are logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failure_threshold_needs_consecutive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "0.3"),
            ("HEALTH_CHECK_TIMEOUT_S", "0.3"),
            ("HEALTH_FAILURE_THRESHOLD", "3"),
        ],
    )
    .await;
    let sim = Sim::start(1).await;
    let id = orch.register(sim.port()).await;
    orch.wait_health(&id, "healthy", secs(3.0)).await;

    sim.set_mode(None, "error").await;
    // Until the third failure in a row, the engine keeps its status.
    let engine = wait_for("3 consecutive failures", secs(5.0), || async {
        let engine = orch.engine(&id).await;
        let failures = engine["consecutive_failures"].as_u64().unwrap();
        if (1..3).contains(&failures) {
            assert_eq!(
                engine["health_status"], "healthy",
                "below threshold: {engine}"
            );
        }
        (failures >= 3).then_some(engine)
    })
    .await;
    let engine = if engine["health_status"] == "unhealthy" {
        engine
    } else {
        orch.wait_health(&id, "unhealthy", secs(1.0)).await
    };
    assert!(engine["last_health_error"]
        .as_str()
        .unwrap()
        .contains("HTTP 500"));
    let (_, history) = orch.get(&format!("/engines/{id}/health")).await;
    assert!(history["transitions"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("threshold 3"));

    sim.set_mode(None, "healthy").await;
    let engine = orch.wait_health(&id, "healthy", secs(2.0)).await;
    assert_eq!(engine["consecutive_failures"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stat_poll_marks_a_busy_engine_unhealthy_before_the_next_sweep() {
    let dir = tempfile::tempdir().unwrap();
    // The sweep runs once at start-up, then only after 60 s: only the passive
    // signal can catch the hang within this test.
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "60"),
            ("HEALTH_CHECK_TIMEOUT_S", "0.5"),
            ("COLLECT_INTERVAL_S", "0.3"),
        ],
    )
    .await;
    let sim = Sim::start(1).await;
    let id = orch.register(sim.port()).await;
    let (status, check) = orch
        .post(&format!("/engines/{id}/health/check"), Value::Null)
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["check"]["ok"], true);
    assert_eq!(check["engine"]["health_status"], "healthy");

    let (status, _) = orch
        .post(
            "/events/stream_started",
            started_event(sim.port(), "abcd", "s1"),
        )
        .await;
    assert_eq!(status, 200);
    sim.set_mode(None, "hang").await;
    let switched = Instant::now();
    orch.wait_health(&id, "unhealthy", secs(0.3 + 0.5 + 1.5))
        .await;
    assert!(switched.elapsed() < secs(5.0));
    let (_, history) = orch.get(&format!("/engines/{id}/health")).await;
    assert_eq!(history["checks"][0]["source"], "stat", "{history}");
    assert!(history["transitions"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("stat_url"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_checks_answer_with_the_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "60"),
            ("HEALTH_CHECK_TIMEOUT_S", "0.5"),
        ],
    )
    .await;
    let sim = Sim::start(2).await;
    let a = orch.register(sim.ports[0]).await;
    // A new engine is checked at once, not a 60 s interval later.
    orch.wait_health(&a, "healthy", secs(2.0)).await;
    assert!(orch.engine(&a).await["last_health_check"].is_string());

    sim.set_mode(Some(1), "hang").await;
    let b = orch.register(sim.ports[1]).await;
    let (status, report) = orch.post("/health/check", Value::Null).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["checked"], 2);
    assert_eq!(report["healthy"], 1);
    assert_eq!(report["unhealthy"], 1);
    assert_eq!(orch.engine(&a).await["health_status"], "healthy");
    let engine_b = orch.engine(&b).await;
    assert_eq!(engine_b["health_status"], "unhealthy");
    assert!(engine_b["last_health_check"].is_string());

    let (status, body) = orch.post("/engines/nope:1/health/check", Value::Null).await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_log_and_sigterm_exit() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "30"),
            ("HEALTH_CHECK_TIMEOUT_S", "4"),
        ],
    )
    .await;
    wait_for("the start-up log line", secs(5.0), || async {
        orch.logs()
            .contains("Health monitor started with 30s interval")
            .then_some(())
    })
    .await;
    // A hung engine is being probed (4 s timeout) when SIGTERM arrives.
    let sim = Sim::start_with(&["--mode", "hang"]).await;
    let id = orch.register(sim.port()).await;
    let pending = {
        let client = orch.client.clone();
        let url = orch.url(&format!("/engines/{id}/health/check"));
        tokio::spawn(async move { client.post(url).send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (code, took) = orch.terminate().await;
    assert_eq!(code, Some(0), "exit code after SIGTERM");
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    let _ = pending.await;
}
