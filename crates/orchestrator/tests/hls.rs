//! HLS output of the built-in proxy, end to end: the real orchestrator binary,
//! emulated engines streaming real H.264/AAC video, ffmpeg playing the live
//! playlist and ffprobe measuring its segments.

mod common;

use std::time::Duration;

use common::{metric_value, test_video, wait_for, Orch, Sim};
use serde_json::Value;

const CONTENT: &str = "0123456789abcdef0123456789abcdef01234567";

/// `(seq, duration, discontinuity before it)` of every segment of a playlist.
fn segments(playlist: &str) -> Vec<(u64, f64, bool)> {
    let mut out = Vec::new();
    let mut duration = None;
    let mut discontinuity = false;
    for line in playlist.lines() {
        if let Some(d) = line.strip_prefix("#EXTINF:") {
            duration = d.trim_end_matches(',').parse::<f64>().ok();
        } else if line == "#EXT-X-DISCONTINUITY" {
            discontinuity = true;
        } else if let Some(seq) = line.strip_suffix(".ts") {
            out.push((
                seq.parse().unwrap(),
                duration.take().unwrap(),
                std::mem::take(&mut discontinuity),
            ));
        }
    }
    out
}

/// Video frames ffprobe decodes in `bytes` and its frame rate, plus what it
/// reported as errors.
fn probe(bytes: &[u8], dir: &std::path::Path, name: &str) -> (u64, f64, String) {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames"])
        .args([
            "-show_entries",
            "stream=r_frame_rate,nb_read_frames",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .expect("ffprobe (apt-get install ffmpeg)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = text.lines().next().unwrap_or_default();
    let mut fields = line.split(',');
    let rate = fields
        .next()
        .and_then(|r| r.split_once('/'))
        .map(|(n, d)| n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap())
        .unwrap_or(0.0);
    let frames = fields.next().and_then(|f| f.parse().ok()).unwrap_or(0);
    (
        frames,
        rate,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HLS viewer of our own: follows the redirect, answers its playlist URL.
async fn hls_viewer(orch: &Orch, client: &reqwest::Client) -> String {
    let response = client
        .get(orch.url(&format!("/ace/manifest.m3u8?id={CONTENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    assert_eq!(
        response.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
    let url = response.url().to_string();
    assert!(
        url.contains("/ace/hls/") && url.ends_with("/index.m3u8"),
        "{url}"
    );
    url
}

async fn text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_plays_hls_across_a_failover_beside_a_ts_player_of_one_session() {
    let video = test_video(6);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_with(&["--count", "2", "--ts-file", &video]).await;
    let orch = Orch::start(
        dir.path(),
        &[
            ("PROXY_STALL_S", "1"),
            ("PROXY_LINGER_S", "1"),
            ("HEALTH_CHECK_INTERVAL_S", "60"),
        ],
    )
    .await;
    let mut ids = Vec::new();
    for port in &sim.ports {
        let id = orch.register(*port).await;
        orch.wait_health(&id, "healthy", Duration::from_secs(5))
            .await;
        ids.push(id);
    }

    // ffmpeg plays 20 s of the live playlist.
    let ffmpeg = tokio::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-i"])
        .arg(orch.url(&format!("/ace/manifest.m3u8?id={CONTENT}")))
        .args(["-t", "20", "-f", "null", "-"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("ffmpeg (apt-get install ffmpeg)");
    let ffmpeg = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(90), ffmpeg.wait_with_output()).await
    });

    // An MPEG-TS player of the same content joins the same session.
    let client = reqwest::Client::new();
    let ts = client
        .get(orch.url(&format!("/ace/getstream?id={CONTENT}")))
        .send()
        .await
        .unwrap();
    assert_eq!(ts.status(), 200);
    let ts_reader = tokio::spawn(async move {
        let mut ts = ts;
        let mut read = 0usize;
        while let Ok(Some(chunk)) = ts.chunk().await {
            read += chunk.len();
        }
        read
    });
    let stream = wait_for(
        "one HLS and one TS viewer on the stream",
        Duration::from_secs(30),
        || async {
            let s = orch.started_streams().await;
            (s.len() == 1
                && s[0]["viewers_by_kind"]["hls"] == 1
                && s[0]["viewers_by_kind"]["ts"] == 1)
                .then(|| s[0].clone())
        },
    )
    .await;
    assert_eq!(stream["viewers"], 2, "{stream}");
    let metrics = orch.metrics().await;
    assert_eq!(
        metric_value(&metrics, r#"orch_proxy_viewers_by_kind{kind="hls"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&metrics, r#"orch_proxy_viewers_by_kind{kind="ts"}"#),
        Some(1.0)
    );
    assert_eq!(
        stream["play"]["hls"],
        format!("/ace/manifest.m3u8?id={CONTENT}"),
        "{stream}"
    );
    assert_eq!(sim.open_streams().await, 1, "one engine stream for both");
    assert_eq!(sim.streams_asked().await, 1, "the engine was asked once");

    // Our own viewer: every segment's duration matches its #EXTINF, and
    // each decodes alone.
    let playlist_url = hls_viewer(&orch, &client).await;
    let playlist = text(&client, &playlist_url).await;
    assert!(playlist.starts_with("#EXTM3U\n"), "{playlist}");
    assert!(playlist.contains("#EXT-X-TARGETDURATION:2\n"), "{playlist}");
    let listed = segments(&playlist);
    assert!(!listed.is_empty(), "{playlist}");
    for (seq, extinf, _) in &listed {
        let bytes = client
            .get(playlist_url.replace("index.m3u8", &format!("{seq}.ts")))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes[0], 0x47);
        let (frames, rate, errors) = probe(&bytes, dir.path(), &format!("segment-{seq}.ts"));
        let measured = frames as f64 / rate;
        assert!(
            (measured - extinf).abs() <= 0.1,
            "segment {seq}: #EXTINF {extinf} but {frames} frames at {rate} fps; ffprobe: {errors}"
        );
        assert!(errors.is_empty(), "segment {seq} alone: {errors}");
    }

    // The engine hangs: the playlist goes on, with a discontinuity.
    let engine = stream["container_id"].as_str().unwrap().to_owned();
    let index = ids.iter().position(|id| *id == engine).unwrap();
    sim.set_mode(Some(index), "hang").await;
    let playlist = wait_for(
        "a discontinuity in the playlist",
        Duration::from_secs(20),
        || async {
            let p = text(&client, &playlist_url).await;
            p.contains("#EXT-X-DISCONTINUITY\n").then_some(p)
        },
    )
    .await;
    let after = segments(&playlist);
    assert!(
        after.last().unwrap().0 > listed.last().unwrap().0 && after.iter().any(|s| s.2),
        "the media sequence goes on across the discontinuity: {playlist}"
    );
    let moved = orch.started_streams().await;
    assert_ne!(moved[0]["container_id"], engine.as_str(), "{moved:?}");

    // The TS player leaves: HLS viewers alone keep the session (the linger is
    // 1 s, and ffmpeg plays on for several seconds).
    ts_reader.abort();
    wait_for(
        "the stream to count HLS viewers only",
        Duration::from_secs(5),
        || async {
            let s = orch.started_streams().await;
            (s.len() == 1
                && s[0]["viewers_by_kind"]["ts"] == 0
                && s[0]["viewers_by_kind"]["hls"].as_u64() >= Some(1))
            .then_some(())
        },
    )
    .await;

    let output = ffmpeg
        .await
        .unwrap()
        .expect("ffmpeg ran for 20 s")
        .expect("ffmpeg ran");
    let errors = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "ffmpeg failed: {errors}");
    // At the failover the new engine's stream starts at its last PAT before
    // a keyframe, which may repeat a frame the old one sent; the playlist
    // announces it with #EXT-X-DISCONTINUITY, where players reset their
    // timeline, but ffmpeg's null muxer reports a step back (seen: once in
    // two runs, "56 >= 56"). Nothing else may be reported: no decoding error,
    // and no step back at the emulator's loops (its 6 s file has a little
    // more audio than video; it lengthens each loop to cover it, where this
    // test used to see one step back per loop).
    let (steps, other): (Vec<&str>, Vec<&str>) = errors
        .lines()
        .partition(|l| l.contains("non monotonically increasing dts"));
    assert!(other.is_empty(), "ffmpeg reported: {errors}");
    assert!(steps.len() <= 2, "more than the failover's: {errors}");

    // Segments that slid out are gone, unknown tokens and files too, each
    // with its reason.
    let first = segments(&text(&client, &playlist_url).await)[0].0;
    assert!(first > 0, "the window has slid over a 20 s run");
    let gone = client
        .get(playlist_url.replace("index.m3u8", &format!("{}.ts", first - 1)))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 410);
    let detail: Value = gone.json().await.unwrap();
    assert!(
        detail["detail"].as_str().unwrap().contains("slid out"),
        "{detail}"
    );
    let future = client
        .get(playlist_url.replace("index.m3u8", "99999.ts"))
        .send()
        .await
        .unwrap();
    assert_eq!(future.status(), 404);
    let (status, body) = orch.get("/ace/hls/nosuchtoken/index.m3u8").await;
    assert_eq!(status, 404);
    // What the player fetched, and the two refusals, are counted.
    let metrics = orch.metrics().await;
    let requests = |file: &str, result: &str| {
        metric_value(
            &metrics,
            &format!(r#"orch_hls_requests_total{{file="{file}",result="{result}"}}"#),
        )
        .unwrap_or(0.0)
    };
    // ffmpeg reloads the first URL (it keeps its token), so at least once.
    assert!(requests("manifest", "ok") >= 1.0, "{metrics}");
    assert!(requests("playlist", "ok") >= 5.0, "{metrics}");
    assert!(requests("segment", "ok") >= 5.0, "{metrics}");
    assert!(requests("segment", "gone") >= 1.0, "{metrics}");
    assert!(requests("segment", "not_found") >= 1.0, "{metrics}");
    assert!(requests("playlist", "not_found") >= 1.0, "{metrics}");
    assert!(
        metric_value(&metrics, "orch_hls_segment_bytes_total").unwrap_or(0.0) > 1_000_000.0,
        "20 s of the test video (about 1.2 Mbit/s): {metrics}"
    );
    assert!(body["detail"].as_str().unwrap().contains("token"), "{body}");
    let (status, _) = orch
        .get(&playlist_url[playlist_url.find("/ace/").unwrap()..].replace("index.m3u8", "x.mp4"))
        .await;
    assert_eq!(status, 404);

    // Everyone leaves: HLS viewers by no longer fetching (4 segment
    // durations), then the linger; the session ends and the engine's stream
    // closes.
    wait_for(
        "the session to end once nobody fetches",
        Duration::from_secs(30),
        || async { orch.started_streams().await.is_empty().then_some(()) },
    )
    .await;
    wait_for(
        "the engine's stream to close",
        Duration::from_secs(10),
        || async { (sim.open_streams().await == 0).then_some(()) },
    )
    .await;
    let (status, _) = orch
        .get(&playlist_url[playlist_url.find("/ace/").unwrap()..])
        .await;
    assert_eq!(status, 404, "the token ended with its session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_getstream_answers() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("STREAM_TOKEN", "tv"),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("PROXY_FAILOVER_TIMEOUT_S", "2"),
        ],
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |path: String| {
        let client = client.clone();
        let url = orch.url(&path);
        async move { client.get(url).send().await.unwrap() }
    };
    assert_eq!(
        get(format!("/ace/manifest.m3u8?id={CONTENT}"))
            .await
            .status(),
        401
    );
    assert_eq!(
        get(format!("/ace/manifest.m3u8?id={CONTENT}&token=no"))
            .await
            .status(),
        403
    );
    for bad in ["id=xyz", "url=http://169.254.169.254/", "pid=1"] {
        let r = get(format!("/ace/manifest.m3u8?{bad}&token=tv")).await;
        assert_eq!(r.status(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].is_string(), "{bad}: {body}");
    }
    let r = get(format!("/ace/manifest.m3u8?id={CONTENT}&token=tv")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let head = client
        .head(orch.url(&format!("/ace/manifest.m3u8?id={CONTENT}&token=tv")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-type"],
        "application/vnd.apple.mpegurl"
    );
}
