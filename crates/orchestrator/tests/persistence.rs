//! What the orchestrator acknowledged survives a restart and a `kill -9`
//! (`faults.rs` kills it at random points of event bursts), and what it no
//! longer needs leaves the disk: ended streams past `STREAMS_RETENTION_DAYS`,
//! forgotten engines.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{started_event, wait_for, Orch, Sim};
use orchestrator::domain::{KeyType, StatSnapshot, Stream, StreamStatus};
use orchestrator::persist::WriteOp;
use orchestrator::store::{Retention, Store};
use orchestrator::time::Timestamp;
use rusqlite::Connection;
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

const DAY_MS: i64 = 86_400_000;

fn backdated_stream(id: &str, engine: &str, ended_days_ago: Option<i64>) -> Stream {
    let now = Timestamp::now().millis();
    let started = now - ended_days_ago.unwrap_or(60) * DAY_MS - 3_600_000;
    Stream {
        id: id.into(),
        key_type: KeyType::Infohash,
        key: format!("key-{id}"),
        container_id: engine.into(),
        playback_session_id: None,
        stat_url: None,
        command_url: None,
        is_live: true,
        started_at: Timestamp::from_millis(started),
        ended_at: ended_days_ago.map(|days| Timestamp::from_millis(now - days * DAY_MS)),
        status: match ended_days_ago {
            Some(_) => StreamStatus::Ended,
            None => StreamStatus::Started,
        },
        end_reason: ended_days_ago.map(|_| "client left".into()),
        viewers: 0,
        viewers_by_kind: Default::default(),
        failovers: Vec::new(),
        play: None,
    }
}

/// The collector's snapshots of one stream, one every 5 s from its start.
fn backdated_snapshots(stream: &Stream, count: i64) -> Vec<WriteOp> {
    (0..count)
        .map(|i| WriteOp::StatSnapshot {
            stream_id: stream.id.clone(),
            snapshot: StatSnapshot {
                ts: Timestamp::from_millis(stream.started_at.millis() + i * 5_000),
                peers: Some(12),
                speed_down: Some(480),
                speed_up: Some(35),
                downloaded: Some(i * 2_400_000),
                uploaded: Some(i * 175_000),
                status: Some("dl".into()),
            },
        })
        .collect()
}

fn rows(db: &Path, sql: &str, id: &str) -> i64 {
    let conn = Connection::open(db).unwrap();
    let count = if sql.contains("?1") {
        conn.query_row(sql, [id], |r| r.get(0))
    } else {
        conn.query_row(sql, [], |r| r.get(0))
    };
    count.unwrap()
}

fn db_bytes(db: &Path) -> u64 {
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    size(db) + size(&db.with_extension("db-wal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_streams_past_the_retention_leave_the_disk_with_their_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[("STREAMS_RETENTION_DAYS", "30")]).await;
    let sim = Sim::start(1).await;
    let engine = orch.register(sim.ports[0]).await;
    orch.terminate().await;

    // A database written by a version without incremental auto-vacuum,
    // holding two months of traffic, through the store's own API with
    // backdated times: 150 streams that ended 31 to 60 days ago, 5 that ended
    // 1 to 5 days ago, and one started 60 days ago that is still playing.
    let db = orch.db.clone();
    {
        let retention = Retention {
            stats_per_stream: 720,
            health_per_engine: 50,
        };
        let (store, _) = Store::open(&db, retention, 1000).unwrap();
        let mut streams = Vec::new();
        for i in 0..150 {
            streams.push(backdated_stream(
                &format!("old-{i}"),
                &engine,
                Some(31 + i % 30),
            ));
        }
        for i in 0..5 {
            streams.push(backdated_stream(
                &format!("recent-{i}"),
                &engine,
                Some(1 + i),
            ));
        }
        streams.push(backdated_stream("playing", &engine, None));
        for stream in streams {
            // The stream first, as the registry orders it: a snapshot names
            // its stream by the stream row's number.
            let mut ops = vec![WriteOp::UpsertStream(Box::new(stream.clone()))];
            ops.extend(backdated_snapshots(&stream, 200));
            store.submit(ops).committed().await.unwrap();
        }
        store.checkpoint().await;
    }
    {
        let conn = Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA auto_vacuum = NONE; VACUUM;")
            .unwrap();
        let mode: i64 = conn
            .pragma_query_value(None, "auto_vacuum", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, 0, "the old-style database");
    }
    let full = db_bytes(&db);
    assert_eq!(
        rows(&db, "SELECT COUNT(*) FROM stat_snapshots", ""),
        156 * 200
    );

    orch.restart().await;
    let finished = wait_for("the clean-up at start", Duration::from_secs(30), || async {
        orch.metric("orch_db_cleanup_last_timestamp_seconds")
            .await
            .filter(|&t| t > 0.0)
    })
    .await;
    let now = Timestamp::now().millis() as f64 / 1000.0;
    assert!(
        (now - 60.0..=now + 1.0).contains(&finished),
        "{finished} vs {now}"
    );
    let logs = orch.logs();
    assert!(
        logs.contains("database switched to incremental auto-vacuum") && logs.contains("took_ms"),
        "{logs}"
    );
    assert_eq!(
        orch.metric(r#"orch_db_cleanup_last_removed_rows{table="streams"}"#)
            .await,
        Some(150.0)
    );
    assert_eq!(
        orch.metric(r#"orch_db_cleanup_last_removed_rows{table="stat_snapshots"}"#)
            .await,
        Some(30_000.0)
    );
    assert!(
        orch.metric("orch_db_cleanup_last_freed_bytes")
            .await
            .unwrap()
            > 0.0
    );
    // Row counts and sizes are measured right after the clean-up.
    for (table, want) in [
        ("streams", 6.0),
        ("stat_snapshots", 1_200.0),
        ("engines", 1.0),
    ] {
        let series = format!(r#"orch_db_rows{{table="{table}"}}"#);
        wait_for(&series, Duration::from_secs(10), || async {
            (orch.metric(&series).await == Some(want)).then_some(())
        })
        .await;
    }
    let main = orch
        .metric(r#"orch_db_file_bytes{file="main"}"#)
        .await
        .unwrap();
    let wal = orch
        .metric(r#"orch_db_file_bytes{file="wal"}"#)
        .await
        .unwrap();
    assert!(main > 0.0 && wal >= 0.0);
    // The file gave the space back, while the service ran.
    assert!(
        (main + wal) < full as f64 / 3.0,
        "{full} bytes before, {main} + {wal} after"
    );
    assert!(db_bytes(&db) < full / 3, "{full} -> {}", db_bytes(&db));

    // What a user sees: the recent ended streams and the playing one, none of
    // the old ones.
    let (_, ended) = orch.get("/streams?status=ended").await;
    let mut ids: Vec<_> = ended
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        ["recent-0", "recent-1", "recent-2", "recent-3", "recent-4"]
    );
    let (status, _) = orch.get("/streams/old-7").await;
    assert_eq!(status, 404);
    let (_, playing) = orch.get("/streams/playing").await;
    assert_eq!(playing["status"], "started");
    let (_, stats) = orch.get("/streams/recent-2/stats").await;
    assert_eq!(stats.as_array().map(Vec::len), Some(200), "{stats}");

    // And on disk, after a restart.
    orch.terminate().await;
    assert_eq!(
        rows(
            &db,
            "SELECT COUNT(*) FROM streams WHERE id LIKE 'old-%'",
            ""
        ),
        0
    );
    assert_eq!(
        rows(
            &db,
            "SELECT COUNT(*) FROM stat_snapshots WHERE stream NOT IN (SELECT seq FROM streams)",
            ""
        ),
        0
    );
    assert_eq!(rows(&db, "SELECT COUNT(*) FROM stat_snapshots", ""), 1_200);
    assert_eq!(rows(&db, "PRAGMA auto_vacuum", ""), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_engine_leaves_no_rows_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[]).await;
    let sim = Sim::start(2).await;
    let gone = orch.register(sim.ports[0]).await;
    let kept = orch.register(sim.ports[1]).await;
    let db = orch.db.clone();
    let checks = "SELECT COUNT(*) FROM health_checks WHERE engine_id = ?1";
    let transitions = "SELECT COUNT(*) FROM health_transitions WHERE engine_id = ?1";
    wait_for(
        "health history of both engines",
        Duration::from_secs(10),
        || {
            let db = db.clone();
            let (gone, kept) = (gone.clone(), kept.clone());
            async move {
                (rows(&db, checks, &gone) >= 3
                    && rows(&db, checks, &kept) >= 3
                    && rows(&db, transitions, &gone) >= 1)
                    .then_some(())
            }
        },
    )
    .await;

    let (status, _) = orch.delete(&format!("/engines/{gone}")).await;
    assert_eq!(status, 200);
    // Checks in flight when it was forgotten must not bring rows back: wait
    // until the kept engine has been checked a few more times.
    let kept_before = rows(&db, checks, &kept);
    wait_for(
        "more checks of the kept engine",
        Duration::from_secs(10),
        || {
            let db = db.clone();
            let kept = kept.clone();
            async move { (rows(&db, checks, &kept) >= kept_before + 3).then_some(()) }
        },
    )
    .await;
    // Every table keyed by an engine (streams only name the engine they
    // played on: they are the streams' history and leave with the retention).
    for (table, column) in [
        ("engines", "container_id"),
        ("health_checks", "engine_id"),
        ("health_transitions", "engine_id"),
    ] {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {column} = ?1");
        assert_eq!(
            rows(&db, &sql, &gone),
            0,
            "{table} still has rows of {gone}"
        );
    }
    assert_eq!(
        rows(
            &db,
            "SELECT COUNT(*) FROM engines WHERE container_id = ?1",
            &kept
        ),
        1
    );
    assert!(rows(&db, transitions, &kept) >= 1);

    orch.kill9().await;
    orch.restart().await;
    let (status, _) = orch.get(&format!("/engines/{gone}")).await;
    assert_eq!(status, 404);
    let (status, _) = orch.get(&format!("/engines/{kept}")).await;
    assert_eq!(status, 200);
}
