//! Faults: `kill -9` at random points of an event burst, a database that
//! cannot be written, SIGTERM under load. What was acknowledged is never lost,
//! and the orchestrator keeps serving what it can.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{started_event, wait_for, Orch};
use parking_lot::Mutex;
use serde_json::json;
use tokio::time::Instant;

type Acked = Arc<Mutex<BTreeSet<String>>>;

/// Workers that send `stream_started` events until the server goes away,
/// recording the ids answered 2xx. Returns their handles.
fn burst(
    orch: &Orch,
    round: usize,
    acked: &Acked,
    failures: &Arc<Mutex<Vec<u16>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..4)
        .map(|worker| {
            let client = reqwest::Client::new();
            let url = orch.url("/events/stream_started");
            let acked = acked.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let id = format!("r{round}-w{worker}-{i}");
                    let mut event = started_event(19_000 + worker, &format!("k{i}"), "s");
                    event["labels"] = json!({ "stream_id": id });
                    match client.post(&url).json(&event).send().await {
                        Ok(r) if r.status().is_success() => {
                            acked.lock().insert(id);
                        }
                        Ok(r) => failures.lock().push(r.status().as_u16()),
                        Err(_) => break,
                    }
                }
            })
        })
        .collect()
}

async fn started_ids(orch: &Orch) -> BTreeSet<String> {
    let (_, streams) = orch.get("/streams?status=started").await;
    streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_twenty_random_points_loses_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    let acked: Acked = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    // Pseudo-random kill points from the clock: 1 to 400 acknowledged events in.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    for round in 0..20 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let target = acked.lock().len() + 1 + (seed >> 33) as usize % 400;
        let workers = burst(&orch, round, &acked, &failures);
        wait_for("the kill point", Duration::from_secs(30), || async {
            (acked.lock().len() >= target).then_some(())
        })
        .await;
        orch.kill9().await;
        for w in workers {
            let _ = w.await;
        }
        orch.restart().await;
        let stored = started_ids(&orch).await;
        let acked_now = acked.lock().clone();
        let lost: Vec<_> = acked_now.difference(&stored).collect();
        assert!(
            lost.is_empty(),
            "round {round}: {} acknowledged events lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(5)]
        );
    }
    assert!(
        failures.lock().is_empty(),
        "non-2xx answers during bursts: {:?}",
        failures.lock()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_answers_503_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    let (status, _) = orch
        .post(
            "/events/stream_started",
            started_event(19_001, "before", "s"),
        )
        .await;
    assert_eq!(status, 200);

    // Another process holds the write lock (as a backup tool or a stuck
    // sqlite3 shell would).
    let locker = rusqlite::Connection::open(&orch.db).unwrap();
    locker.execute_batch("BEGIN EXCLUSIVE").unwrap();

    let writer = {
        let client = orch.client.clone();
        let url = orch.url("/events/stream_started");
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&started_event(19_001, "during", "s"))
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    // Reads answer at once while the write waits for the lock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let (status, engines) = orch.get("/engines").await;
    assert_eq!(status, 200);
    assert_eq!(engines.as_array().unwrap().len(), 1);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "reads are not blocked by the lock"
    );

    let (status, body) = writer.await.unwrap();
    assert_eq!(status, 503, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("could not be saved") && detail.contains("locked"),
        "{detail}"
    );

    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    let (status, body) = orch
        .post(
            "/events/stream_started",
            started_event(19_001, "after", "s"),
        )
        .await;
    assert_eq!(
        status, 200,
        "recovers once the database is writable: {body}"
    );
    assert!(!orch.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_requests_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[]).await;
    let acked: Acked = Arc::default();
    let failures = Arc::new(Mutex::new(Vec::new()));
    let workers = burst(&orch, 0, &acked, &failures);
    wait_for("load", Duration::from_secs(20), || async {
        (acked.lock().len() >= 300).then_some(())
    })
    .await;
    let (code, took) = orch.terminate().await;
    for w in workers {
        let _ = w.await;
    }
    assert_eq!(code, Some(0), "exit code");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        failures.lock().iter().all(|s| *s < 500),
        "5xx during shutdown: {:?}",
        failures.lock()
    );

    orch.restart().await;
    let stored = started_ids(&orch).await;
    let lost: Vec<_> = acked.lock().difference(&stored).cloned().collect();
    assert!(lost.is_empty(), "{} acknowledged events lost", lost.len());
    // The database is consistent: SQLite's own check passes.
    let check: String = rusqlite::Connection::open(&orch.db)
        .unwrap()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

/// Makes files immutable (`chattr +i`: even root cannot write them) until dropped.
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(paths: Vec<std::path::PathBuf>) -> Self {
        for path in &paths {
            let status = std::process::Command::new("chattr")
                .arg("+i")
                .arg(path)
                .status()
                .expect("chattr (e2fsprogs)");
            assert!(
                status.success(),
                "chattr +i {} failed: the test needs a filesystem with file attributes",
                path.display()
            );
        }
        Immutable(paths)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for path in &self.0 {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(path)
                .status();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_database_answers_503_keeps_reads_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    let (status, _) = orch
        .post(
            "/events/stream_started",
            started_event(19_001, "before", "s"),
        )
        .await;
    assert_eq!(status, 200);

    let mut wal = orch.db.clone().into_os_string();
    wal.push("-wal");
    let guard = Immutable::set(vec![orch.db.clone(), wal.into()]);
    let (status, body) = orch
        .post(
            "/events/stream_started",
            started_event(19_001, "during", "s"),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("could not be saved"),
        "{body}"
    );
    let (status, engines) = orch.get("/engines").await;
    assert_eq!(status, 200, "reads keep working");
    assert_eq!(engines.as_array().unwrap().len(), 1);

    drop(guard);
    let (status, body) = orch
        .post(
            "/events/stream_started",
            started_event(19_001, "after", "s"),
        )
        .await;
    assert_eq!(status, 200, "recovers once the file is writable: {body}");
    assert!(!orch.logs().contains("panicked"));
}

/// A stream started and ended while the database is read-only: the events get
/// 503 (their change may stay in memory), the proxy retries `stream_ended`, and
/// the retry is not acknowledged before the change is on disk. Once the file
/// is writable again, the retry's 200 means memory and disk agree: the stream
/// is ended in both, also after a `kill -9` and a restart on the same file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_disk_agree_after_the_database_was_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    let (status, before) = orch
        .post(
            "/events/stream_started",
            started_event(19_002, "before", "s"),
        )
        .await;
    assert_eq!(status, 200, "{before}");
    let engine_id = before["container_id"].as_str().unwrap().to_owned();

    // The write queue's depth is exported.
    let (status, metrics) = orch.get("/metrics").await;
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("orch_store_queue_depth ")),
        "no orch_store_queue_depth sample in /metrics:\n{metrics}"
    );

    let mut wal = orch.db.clone().into_os_string();
    wal.push("-wal");
    let guard = Immutable::set(vec![orch.db.clone(), wal.into()]);

    let mut started = started_event(19_002, "during", "s2");
    started["labels"] = json!({ "stream_id": "ro-stream" });
    let (status, body) = orch.post("/events/stream_started", started).await;
    assert_eq!(status, 503, "{body}");
    let ended = json!({ "stream_id": "ro-stream", "reason": "client left" });
    let (status, body) = orch.post("/events/stream_ended", ended.clone()).await;
    assert_eq!(status, 503, "{body}");
    // The proxy retries. Memory may already say "ended", but nothing is on
    // disk: a 2xx now would acknowledge a change a crash would lose.
    let (status, body) = orch.post("/events/stream_ended", ended.clone()).await;
    assert_eq!(
        status, 503,
        "a retry must not be acknowledged while the database cannot be written: {body}"
    );

    drop(guard);
    // The proxy retries until it gets a 2xx.
    let body = wait_for(
        "stream_ended to be acknowledged",
        Duration::from_secs(10),
        || async {
            let (status, body) = orch.post("/events/stream_ended", ended.clone()).await;
            (status == 200).then_some(body)
        },
    )
    .await;
    assert!(body["stream"].is_object(), "{body}");

    let check = |orch: &Orch, when: &'static str| {
        let orch_base = orch.base.clone();
        let client = orch.client.clone();
        let engine_id = engine_id.clone();
        async move {
            let get = |path: String| {
                let client = client.clone();
                let url = format!("{orch_base}{path}");
                async move {
                    let r = client.get(url).send().await.unwrap();
                    let status = r.status().as_u16();
                    (status, r.json::<serde_json::Value>().await.unwrap())
                }
            };
            let (status, stream) = get("/streams/ro-stream".into()).await;
            assert_eq!(status, 200, "{when}: {stream}");
            assert_eq!(stream["status"], "ended", "{when}: {stream}");
            let (status, engine) = get(format!("/engines/{engine_id}")).await;
            assert_eq!(status, 200, "{when}: {engine}");
            let active: Vec<_> = engine["streams"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["id"] == "ro-stream")
                .collect();
            assert!(
                active.is_empty(),
                "{when}: still active on its engine: {engine}"
            );
        }
    };
    check(&orch, "in memory").await;

    // No chance to flush anything: what is on disk is what the 200 promised.
    orch.kill9().await;
    orch.restart().await;
    check(&orch, "after kill -9 and a restart").await;
    let (_, streams) = orch.get("/streams?status=started").await;
    let ids: Vec<_> = streams
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![before["id"].as_str().unwrap().to_owned()]);
    assert!(!orch.logs().contains("panicked"));
}
