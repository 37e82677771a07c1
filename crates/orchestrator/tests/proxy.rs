//! The built-in stream proxy, end to end: the real orchestrator binary, real
//! emulated engines streaming real H.264/AAC video, players reading over HTTP,
//! and ffprobe decoding what each player received.

mod common;

use std::time::Duration;

use common::{test_video, wait_for, Orch, Sim};
use serde_json::Value;

const CONTENT: &str = "0123456789abcdef0123456789abcdef01234567";

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

/// Whether `capture` (after the two packets of PAT/PMT a joining player gets
/// first) is found in `reference` and agrees with it wherever both have bytes.
fn same_stream(reference: &[u8], capture: &[u8]) -> bool {
    const PREFIX: usize = 2 * 188;
    const NEEDLE: usize = 10 * 188;
    if capture.len() < PREFIX + NEEDLE {
        return false;
    }
    let needle = &capture[PREFIX..PREFIX + NEEDLE];
    let Some(at) = reference.windows(NEEDLE).position(|w| w == needle) else {
        return false;
    };
    let common = (reference.len() - at).min(capture.len() - PREFIX);
    reference[at..at + common] == capture[PREFIX..PREFIX + common]
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
    let video = test_video(6);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_with(&["--count", "2", "--ts-file", &video]).await;
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

    // Fifty players of one content: one engine session.
    let client = reqwest::Client::new();
    let mut players = Vec::new();
    for _ in 0..50 {
        players.push(Player::open(&orch, &client).await);
    }
    wait_for(
        "every player to get video",
        Duration::from_secs(10),
        || async { players.iter().all(|p| p.len() > 100_000).then_some(()) },
    )
    .await;
    assert_eq!(
        sim.open_streams().await,
        1,
        "one engine stream for 50 players"
    );
    let total: u64 = sim.state().await["engines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["streams_total"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 1, "the engine was asked for the stream once");
    // Every player received the same bytes: after its PAT/PMT prefix, each
    // capture is a slice of the first player's (they joined at different
    // moments of one session).
    let reference = players[0].bytes.lock().clone();
    for (i, player) in players.iter().enumerate().skip(1) {
        let capture = player.bytes.lock().clone();
        assert!(
            same_stream(&reference, &capture),
            "player {i} received other bytes than player 0"
        );
    }
    let (_, all) = orch.get("/streams").await;
    assert_eq!(
        all.as_array().unwrap().len(),
        1,
        "one stream_started: {all}"
    );
    let streams = wait_for(
        "the stream to show its viewers",
        Duration::from_secs(5),
        || async {
            let s = orch.started_streams().await;
            (s.len() == 1 && s[0]["viewers"] == 50).then_some(s)
        },
    )
    .await;
    let first_engine = streams[0]["container_id"].as_str().unwrap().to_owned();
    let index = if first_engine == a { 0 } else { 1 };

    // The engine hangs mid-stream: every player stays connected and bytes resume.
    sim.set_mode(Some(index), "hang").await;
    let before: Vec<usize> = players.iter().map(Player::len).collect();
    // The move is on the Stream as soon as the new engine answers; its
    // failover record follows once the splice is done.
    let failover = &moved_from(&orch, &first_engine).await;
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
        || async { orch.started_streams().await.is_empty().then_some(()) },
    )
    .await;
    wait_for(
        "the engine's stream to close",
        Duration::from_secs(10),
        || async { (sim.open_streams().await == 0).then_some(()) },
    )
    .await;
    let metrics = orch.metrics().await;
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
    assert!(orch.started_streams().await.is_empty());
}

/// An orchestrator and `count` emulated engines streaming the test video,
/// registered and healthy. Answers the engines' ids, in port order.
async fn setup(
    count: usize,
    sim_args: &[&str],
    env: &[(&str, &str)],
) -> (tempfile::TempDir, Sim, Orch, Vec<String>) {
    let video = test_video(6);
    let dir = tempfile::tempdir().unwrap();
    let count_text = count.to_string();
    let mut args = vec!["--count", &count_text, "--ts-file", &video];
    args.extend_from_slice(sim_args);
    let sim = Sim::start_with(&args).await;
    let mut all_env = vec![
        ("PROXY_STALL_S", "1"),
        ("PROXY_LINGER_S", "1"),
        ("HEALTH_CHECK_INTERVAL_S", "60"),
    ];
    all_env.extend_from_slice(env);
    let orch = Orch::start(dir.path(), &all_env).await;
    let mut ids = Vec::new();
    for port in &sim.ports {
        let id = orch.register(*port).await;
        orch.wait_health(&id, "healthy", Duration::from_secs(5))
            .await;
        ids.push(id);
    }
    (dir, sim, orch, ids)
}

/// The engine the only started stream is on, and its index.
async fn serving(orch: &Orch, ids: &[String]) -> (String, usize) {
    let s = orch.started_streams().await;
    assert_eq!(s.len(), 1, "{s:?}");
    let engine = s[0]["container_id"].as_str().unwrap().to_owned();
    let index = ids.iter().position(|id| *id == engine).unwrap();
    (engine, index)
}

/// Waits until the stream has moved off `from`; answers its first failover.
async fn moved_from(orch: &Orch, from: &str) -> Value {
    let s = wait_for(
        "the stream to move to another engine",
        Duration::from_secs(15),
        || async {
            let s = orch.started_streams().await;
            (s.len() == 1
                && s[0]["container_id"] != from
                && !s[0]["failovers"].as_array().unwrap().is_empty())
            .then_some(s)
        },
    )
    .await;
    s[0]["failovers"][0].clone()
}

async fn grows(player: &Player, by: usize) {
    let before = player.len();
    wait_for("bytes to flow again", Duration::from_secs(10), || async {
        (player.len() > before + by).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_failing_at_start_and_one_crashing_mid_stream_cost_no_player() {
    let (dir, sim, orch, ids) = setup(3, &[], &[]).await;
    // Selection takes the never-used engine with the smallest id first: make
    // that one fail the start (HTTP 500 on its API).
    let mut sorted = ids.clone();
    sorted.sort();
    let first_choice = ids.iter().position(|id| *id == sorted[0]).unwrap();
    sim.set_mode(Some(first_choice), "error").await;

    let client = reqwest::Client::new();
    let player = Player::open(&orch, &client).await;
    grows(&player, 100_000).await;
    let (engine, index) = serving(&orch, &ids).await;
    assert_ne!(engine, sorted[0], "the failing engine was passed over");
    let history = orch.get(&format!("/engines/{}/health", sorted[0])).await.1;
    assert_eq!(history["checks"][0]["source"], "proxy", "{history}");

    // The serving engine crashes (connections reset, port closed).
    sim.set_mode(Some(index), "refuse").await;
    let failover = moved_from(&orch, &engine).await;
    assert_eq!(failover["from"], engine.as_str());
    assert!(
        failover["reason"].as_str().unwrap().contains("source"),
        "{failover}"
    );
    assert!(
        failover["gap_ms"].as_u64().unwrap() < 2_000,
        "a crash is seen at once: {failover}"
    );
    grows(&player, 300_000).await;
    assert!(player.still_open());
    let (frames, errors) = decode(&player.bytes.lock().clone(), dir.path(), "crash");
    assert!(frames > 50, "{frames} frames; ffprobe: {errors}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starving_engine_is_left_after_the_stall_timeout() {
    let (_dir, sim, orch, ids) = setup(2, &[], &[]).await;
    let client = reqwest::Client::new();
    let player = Player::open(&orch, &client).await;
    grows(&player, 100_000).await;
    let (engine, index) = serving(&orch, &ids).await;
    // Its API still answers; its stream sends nothing.
    sim.set_mode(Some(index), "starve").await;
    let failover = moved_from(&orch, &engine).await;
    assert_eq!(failover["reason"], "stalled", "{failover}");
    grows(&player, 300_000).await;
    assert!(player.still_open());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_headroom_a_hang_is_not_seen_by_players() {
    let (_dir, sim, orch, ids) = setup(
        2,
        &[],
        &[("PROXY_HEADROOM_S", "5"), ("PROXY_BUFFER_MB", "64")],
    )
    .await;
    let client = reqwest::Client::new();
    // The session starts with the first player; a second one joins once the
    // ring holds more than the headroom, so it is served 5 s behind live.
    let first = Player::open(&orch, &client).await;
    grows(&first, 100_000).await;
    tokio::time::sleep(Duration::from_secs(6)).await; // let 6 s of stream accumulate
    let second = Player::open(&orch, &client).await;
    grows(&second, 200_000).await;
    *second.longest_gap.lock() = Duration::ZERO;

    let (engine, index) = serving(&orch, &ids).await;
    sim.set_mode(Some(index), "hang").await;
    let failover = moved_from(&orch, &engine).await;
    assert!(failover["gap_ms"].as_u64().unwrap() < 5_000, "{failover}");
    grows(&second, 300_000).await;
    let gap = *second.longest_gap.lock();
    assert!(
        gap < Duration::from_millis(500),
        "a player with headroom saw a {gap:?} gap"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_player_slows_nobody_and_memory_stays_bounded() {
    let (_dir, _sim, orch, _ids) = setup(1, &[], &[("PROXY_BUFFER_MB", "4")]).await;
    let client = reqwest::Client::new();
    let fast = Player::open(&orch, &client).await;
    // The slow one reads 15 KB/s, about a tenth of the stream's rate.
    let mut slow = client
        .get(orch.url(&format!("/ace/getstream?id={CONTENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 200);
    let slow_reader = tokio::spawn(async move {
        let mut read = 0usize;
        while let Ok(Some(chunk)) = slow.chunk().await {
            read += chunk.len();
            // Pacing the reader is the point of this test, not a wait.
            tokio::time::sleep(Duration::from_millis((chunk.len() / 15) as u64)).await;
            if read > 2_000_000 {
                break;
            }
        }
        read
    });
    grows(&fast, 50_000).await;
    let start = tokio::time::Instant::now();
    let before = fast.len();
    tokio::time::sleep(Duration::from_secs(8)).await; // measure 8 s of delivery
    let rate = (fast.len() - before) as f64 * 8.0 / start.elapsed().as_secs_f64();
    assert!(
        rate > 0.8e6,
        "the fast player got {rate:.0} bit/s beside a slow one"
    );
    let rss_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", orch.pid().unwrap()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 64 * 1024,
        "orchestrator RSS {rss_kib} KiB with a 4 MiB ring"
    );
    slow_reader.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_leaving_in_every_phase_leave_nothing_behind() {
    let (_dir, sim, orch, ids) = setup(2, &[], &[]).await;
    let client = reqwest::Client::new();
    let nothing_left = || async {
        let engines = orch.get("/engines").await.1;
        let reserved: u64 = engines
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["reservations"].as_u64().unwrap_or(0))
            .sum();
        (orch.started_streams().await.is_empty() && reserved == 0 && sim.open_streams().await == 0)
            .then_some(())
    };

    // Before the engine answers: its API is slow, the player gives up.
    let slow = client
        .post(format!("http://{}/control/latency", sim.control))
        .json(&serde_json::json!({ "latency_ms": 1500 }))
        .send()
        .await
        .unwrap();
    assert!(slow.status().is_success());
    let impatient = tokio::time::timeout(
        Duration::from_millis(300),
        client
            .get(orch.url(&format!("/ace/getstream?id={CONTENT}")))
            .send(),
    )
    .await;
    assert!(
        impatient.is_err(),
        "the player left before the engine answered"
    );
    client
        .post(format!("http://{}/control/latency", sim.control))
        .json(&serde_json::json!({ "latency_ms": 0 }))
        .send()
        .await
        .unwrap();
    // The start completes without the player, then lingers out.
    wait_for(
        "the abandoned start to end",
        Duration::from_secs(15),
        nothing_left,
    )
    .await;

    // Right after the first bytes.
    let player = Player::open(&orch, &client).await;
    grows(&player, 10_000).await;
    player.task.abort();
    drop(player);
    wait_for("the session to end", Duration::from_secs(10), nothing_left).await;

    // During a failover.
    let player = Player::open(&orch, &client).await;
    grows(&player, 50_000).await;
    let (_, index) = serving(&orch, &ids).await;
    sim.set_mode(Some(index), "hang").await;
    tokio::time::sleep(Duration::from_millis(500)).await; // inside the stall window
    player.task.abort();
    drop(player);
    wait_for(
        "the session to end after the failover",
        Duration::from_secs(15),
        nothing_left,
    )
    .await;
    sim.set_mode(Some(index), "healthy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_the_engines_refuse_is_a_502_and_no_engine_is_blamed() {
    const DEAD: &str = "deaddeaddeaddeaddeaddeaddeaddeaddeaddead";
    let (_dir, _sim, orch, ids) = setup(2, &["--unavailable", DEAD], &[]).await;
    let response = reqwest::get(orch.url(&format!("/ace/getstream?id={DEAD}")))
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("not available"),
        "the engine's own message: {body}"
    );
    for id in &ids {
        let engine = orch.engine(id).await;
        assert_eq!(engine["health_status"], "healthy", "{engine}");
        assert_eq!(engine["reservations"], 0, "{engine}");
    }
    assert!(orch.started_streams().await.is_empty());
}
