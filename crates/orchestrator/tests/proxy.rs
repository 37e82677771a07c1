//! The built-in stream proxy, end to end: the real orchestrator binary, real
//! emulated engines streaming real H.264/AAC video, players reading over HTTP,
//! and ffprobe decoding what each player received.

mod common;

use std::sync::OnceLock;
use std::time::Duration;

use common::{wait_for, Orch, Sim};
use serde_json::Value;

const CONTENT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A 6-second test video, made once per run by scripts/make-test-video.
fn test_video() -> &'static str {
    static VIDEO: OnceLock<String> = OnceLock::new();
    VIDEO.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/make-test-video");
        let out = format!("{}/proxy-test-6s.ts", env!("CARGO_TARGET_TMPDIR"));
        let made = std::process::Command::new(script)
            .args([&out, "6"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            made.status.success(),
            "{script} failed: {}\nThe proxy tests need ffmpeg: apt-get install ffmpeg (scripts/test installs it)",
            String::from_utf8_lossy(&made.stderr)
        );
        out
    })
}

/// One player: reads the stream in the background, keeps every byte and the
/// longest wait between two reads.
struct Player {
    bytes: std::sync::Arc<parking_lot::Mutex<Vec<u8>>>,
    longest_gap: std::sync::Arc<parking_lot::Mutex<Duration>>,
    task: tokio::task::JoinHandle<Option<String>>,
}

impl Player {
    async fn open(orch: &Orch, client: &reqwest::Client) -> Player {
        let response = client
            .get(orch.url(&format!("/ace/getstream?id={CONTENT}&pid=player")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{:?}", response.text().await);
        assert_eq!(response.headers()["content-type"], "video/mp2t");
        let bytes = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let longest_gap = std::sync::Arc::new(parking_lot::Mutex::new(Duration::ZERO));
        let (b, g) = (bytes.clone(), longest_gap.clone());
        let task = tokio::spawn(async move {
            let mut response = response;
            let mut last = tokio::time::Instant::now();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        let gap = last.elapsed();
                        last = tokio::time::Instant::now();
                        let mut longest = g.lock();
                        if gap > *longest {
                            *longest = gap;
                        }
                        b.lock().extend_from_slice(&chunk);
                    }
                    Ok(None) => return Some("ended".to_owned()),
                    Err(e) => return Some(e.to_string()),
                }
            }
        });
        Player {
            bytes,
            longest_gap,
            task,
        }
    }

    fn len(&self) -> usize {
        self.bytes.lock().len()
    }

    fn still_open(&self) -> bool {
        !self.task.is_finished()
    }
}

async fn open_streams(sim: &Sim) -> u64 {
    let state = sim.state().await;
    state["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["open_streams"].as_u64().unwrap_or(0))
        .sum()
}

async fn started(orch: &Orch) -> Vec<Value> {
    orch.get("/streams?status=started")
        .await
        .1
        .as_array()
        .unwrap()
        .clone()
}

/// Decodes a capture with ffprobe: answers the number of video frames and
/// what ffprobe reported as errors.
fn decode(bytes: &[u8], dir: &std::path::Path, name: &str) -> (u64, String) {
    let path = dir.join(format!("{name}.ts"));
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args(["-show_entries", "stream=nb_read_frames", "-of", "csv=p=0"])
        .arg(&path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    // One line per program and stream; the first number is the count.
    let frames = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .unwrap_or(0);
    (frames, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_share_one_session_and_survive_a_hung_engine() {
    let video = test_video();
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_with(&["--count", "2", "--ts-file", video]).await;
    let orch = Orch::start(
        dir.path(),
        &[
            ("PROXY_STALL_S", "1.5"),
            ("PROXY_LINGER_S", "1"),
            ("HEALTH_CHECK_INTERVAL_S", "60"),
        ],
    )
    .await;
    let a = orch.register(sim.ports[0]).await;
    let b = orch.register(sim.ports[1]).await;
    orch.wait_health(&a, "healthy", Duration::from_secs(5))
        .await;
    orch.wait_health(&b, "healthy", Duration::from_secs(5))
        .await;

    // Twenty players of one content: one engine session.
    let client = reqwest::Client::new();
    let mut players = Vec::new();
    for _ in 0..20 {
        players.push(Player::open(&orch, &client).await);
    }
    wait_for(
        "every player to get video",
        Duration::from_secs(10),
        || async { players.iter().all(|p| p.len() > 100_000).then_some(()) },
    )
    .await;
    assert_eq!(
        open_streams(&sim).await,
        1,
        "one engine stream for 20 players"
    );
    let streams = wait_for(
        "the stream to show its viewers",
        Duration::from_secs(5),
        || async {
            let s = started(&orch).await;
            (s.len() == 1 && s[0]["viewers"] == 20).then_some(s)
        },
    )
    .await;
    let first_engine = streams[0]["container_id"].as_str().unwrap().to_owned();
    let index = if first_engine == a { 0 } else { 1 };

    // The engine hangs mid-stream: every player stays connected and bytes resume.
    sim.set_mode(Some(index), "hang").await;
    let before: Vec<usize> = players.iter().map(Player::len).collect();
    let moved = wait_for(
        "the stream to move to the other engine",
        Duration::from_secs(15),
        || async {
            let s = started(&orch).await;
            (s.len() == 1 && s[0]["container_id"] != first_engine.as_str()).then_some(s)
        },
    )
    .await;
    let failover = &moved[0]["failovers"][0];
    assert_eq!(failover["from"], first_engine.as_str(), "{failover}");
    assert!(failover["gap_ms"].as_u64().unwrap() < 10_000, "{failover}");
    wait_for(
        "bytes to flow again for every player",
        Duration::from_secs(10),
        || async {
            players
                .iter()
                .zip(&before)
                .all(|(p, b)| p.len() > b + 300_000)
                .then_some(())
        },
    )
    .await;
    assert!(
        players.iter().all(Player::still_open),
        "no player was disconnected"
    );
    let history = orch.get(&format!("/engines/{first_engine}/health")).await.1;
    assert!(
        history["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["source"] == "proxy"),
        "the failure is on the engine's record: {history}"
    );

    // Every capture decodes across the splice.
    for (i, player) in players.iter().enumerate().take(3) {
        let bytes = player.bytes.lock().clone();
        let (frames, errors) = decode(&bytes, dir.path(), &format!("player-{i}"));
        assert!(
            frames > 50,
            "player {i}: {frames} frames decoded; ffprobe said: {errors}"
        );
        eprintln!(
            "player {i}: {frames} frames, longest gap {:?}, ffprobe: {}",
            *player.longest_gap.lock(),
            errors.lines().count()
        );
    }

    // The last player leaves: after the linger the stream ends and the engine
    // stream is stopped.
    for player in &players {
        player.task.abort();
    }
    drop(players);
    wait_for(
        "the session to end after the linger",
        Duration::from_secs(10),
        || async { started(&orch).await.is_empty().then_some(()) },
    )
    .await;
    wait_for(
        "the engine's stream to close",
        Duration::from_secs(10),
        || async { (open_streams(&sim).await == 0).then_some(()) },
    )
    .await;
    let metrics = reqwest::get(orch.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("orch_proxy_failovers_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_no_engine_get_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("STREAM_TOKEN", "tv"),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let client = client.clone();
        let url = orch.url(&path);
        async move { client.get(url).send().await.unwrap() }
    };
    let r = get(format!("/ace/getstream?id={CONTENT}")).await;
    assert_eq!(r.status(), 401);
    let r = get(format!("/ace/getstream?id={CONTENT}&token=nope")).await;
    assert_eq!(r.status(), 403);
    for bad in [
        "id=xyz",
        "infohash=12",
        "url=http://169.254.169.254/",
        "pid=1",
        "magnet=http://x",
    ] {
        let r = get(format!("/ace/getstream?{bad}&token=tv")).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].is_string(), "{bad}: {body}");
    }
    let r = get(format!("/ace/getstream?id={CONTENT}&token=tv")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("no engine"),
        "{body}"
    );
    // HEAD checks the parameters without starting anything.
    let head = client
        .head(orch.url(&format!("/ace/getstream?infohash={CONTENT}&token=tv")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-type"], "video/mp2t");
    assert!(started(&orch).await.is_empty());
}
