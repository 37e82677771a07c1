//! Runs the real binary and talks to it over HTTP, as the orchestrator's tests will.

use std::future::Future;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

struct Sim {
    child: Child,
    /// Kept open so the simulator never writes into a closed pipe.
    _stdout: ChildStdout,
    control: Option<String>,
    engines: Vec<String>,
}

/// Starts the simulator and waits for its READY line.
async fn start(args: &[&str], conf: Option<&str>) -> Sim {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_acestream-engine-sim"));
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env_remove("CONF")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for var in [
        "BIND",
        "CONTROL_PORT",
        "MODE",
        "STARTUP_DELAY_MS",
        "LATENCY_MS",
        "COUNT",
        "TS_FILE",
        "TS_BITRATE",
    ] {
        cmd.env_remove(format!("ENGINE_SIM_{var}"));
    }
    if let Some(conf) = conf {
        cmd.env("CONF", conf);
    }
    let mut child = cmd.spawn().expect("spawn the simulator");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("READY line within 10 s")
        .expect("read stdout")
        .expect("a line before EOF");
    let (control, engines) = parse_ready(&line);
    Sim {
        child,
        _stdout: lines.into_inner().into_inner(),
        control,
        engines,
    }
}

/// `READY control=<addr|none> engines=<addr>,<addr>,...`
fn parse_ready(line: &str) -> (Option<String>, Vec<String>) {
    let rest = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("not a READY line: {line:?}"));
    let (mut control, mut engines) = (None, Vec::new());
    for field in rest.split(' ') {
        match field.split_once('=') {
            Some(("control", "none")) => {}
            Some(("control", addr)) => control = Some(addr.to_owned()),
            Some(("engines", addrs)) => engines = addrs.split(',').map(str::to_owned).collect(),
            _ => panic!("unexpected field {field:?} in {line:?}"),
        }
    }
    (control, engines)
}

impl Sim {
    fn api(&self, engine: usize, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.engines[engine])
    }

    fn control(&self, path: &str) -> String {
        format!(
            "http://{}/control/{path}",
            self.control.as_deref().expect("a control port")
        )
    }

    async fn set_mode(&self, mode: &str, engine: Option<usize>) -> Value {
        let body = json!({ "mode": mode, "engine": engine });
        let resp = client()
            .post(self.control("mode"))
            .json(&body)
            .send()
            .await
            .expect("control answers");
        assert_eq!(resp.status(), 200, "setting mode {mode}");
        resp.json().await.expect("state JSON")
    }

    async fn state(&self) -> Value {
        get_json(&client(), &self.control("state")).await
    }
}

fn client() -> reqwest::Client {
    client_with_timeout(Duration::from_secs(5))
}

fn client_with_timeout(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .expect("client")
}

/// A client without keep-alive, so each request shows what a new connection gets.
fn fresh_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client")
}

async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let resp = client
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(resp.status(), 200, "GET {url}");
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Polls `check` until it holds, failing after a deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20)).await;
    }
}

const STATUS: &str = "/server/api?api_version=3&method=get_status";

#[tokio::test]
async fn healthy_engine_serves_version_status_and_sessions() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let c = client();

    let version = get_json(&c, &sim.api(0, "/webui/api/service?method=get_version")).await;
    assert_eq!(version["result"]["version"], "3.2.7");
    assert_eq!(version["error"], Value::Null);
    let status = get_json(&c, &sim.api(0, STATUS)).await;
    assert_eq!(status["result"]["status"], "idle");
    assert_eq!(status["error"], Value::Null);

    let missing = get_json(&c, &sim.api(0, "/ace/getstream?format=json")).await;
    assert_eq!(missing["response"], Value::Null);
    assert_eq!(missing["error"], "missing content id");

    let started = get_json(&c, &sim.api(0, "/ace/getstream?format=json&id=abc&pid=p1")).await;
    assert_eq!(started["error"], Value::Null);
    let r = &started["response"];
    let infohash = r["infohash"].as_str().expect("infohash");
    assert_eq!(infohash.len(), 40);
    assert!(infohash.bytes().all(|b| b.is_ascii_hexdigit()));
    let session = r["playback_session_id"].as_str().expect("session id");
    assert_eq!(session.len(), 32);
    assert_eq!(
        (r["is_live"].clone(), r["client_session_id"].clone()),
        (json!(1), json!(-1))
    );
    let stat_url = r["stat_url"].as_str().expect("stat_url");
    assert_eq!(
        stat_url,
        sim.api(0, &format!("/ace/stat/{infohash}/{session}"))
    );
    let playback_url = r["playback_url"].as_str().expect("playback_url");
    assert!(playback_url.ends_with(&format!("/ace/r/{infohash}/{session}")));

    let status = get_json(&c, &sim.api(0, STATUS)).await;
    assert_eq!(status["result"]["status"], "running");

    let first = get_json(&c, stat_url).await;
    assert_eq!(first["response"]["status"], "dl");
    assert!(first["response"]["peers"].as_u64() > Some(0));
    assert!(first["response"]["speed_down"].as_u64() > Some(0));
    let downloaded = first["response"]["downloaded"]
        .as_u64()
        .expect("downloaded");
    eventually("downloaded to grow", || {
        let (c, url) = (&c, stat_url);
        async move { get_json(c, url).await["response"]["downloaded"].as_u64() > Some(downloaded) }
    })
    .await;

    // The playback URL streams MPEG-TS packets.
    let mut resp = c.get(playback_url).send().await.expect("playback");
    assert_eq!(resp.status(), 200);
    let mut bytes = Vec::new();
    while bytes.len() < 2 * 188 {
        bytes.extend_from_slice(
            &resp
                .chunk()
                .await
                .expect("chunk")
                .expect("stream continues"),
        );
    }
    assert_eq!((bytes[0], bytes[188]), (0x47, 0x47));
    drop(resp);

    // The same content id always maps to the same infohash; infohash= is taken as is.
    let again = get_json(&c, &sim.api(0, "/ace/getstream?format=json&content_id=abc")).await;
    assert_eq!(again["response"]["infohash"], infohash);
    let given = get_json(&c, &sim.api(0, "/ace/getstream?format=json&infohash=00ff")).await;
    assert_eq!(given["response"]["infohash"], "00ff");
    let hls = get_json(&c, &sim.api(0, "/ace/manifest.m3u8?format=json&id=abc")).await;
    assert!(hls["response"]["playback_url"]
        .as_str()
        .is_some_and(|u| u.ends_with(".m3u8")));

    let command_url = r["command_url"].as_str().expect("command_url");
    let bad = get_json(&c, &format!("{command_url}?method=dance")).await;
    assert!(bad["error"].is_string());
    let stopped = get_json(&c, &format!("{command_url}?method=stop")).await;
    assert_eq!(stopped, json!({ "response": "ok", "error": null }));
    let gone = get_json(&c, stat_url).await;
    assert_eq!(
        gone,
        json!({ "response": null, "error": "unknown playback session id" })
    );
    assert_eq!(sim.state().await["engines"][0]["active_sessions"], 3);
}

#[tokio::test]
async fn plain_getstream_streams_ts_and_drops_the_session_on_disconnect() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let mut resp = client()
        .get(sim.api(0, "/ace/getstream?id=xyz"))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.headers()["content-type"], "video/mp2t");
    let chunk = resp.chunk().await.expect("chunk").expect("data");
    assert_eq!(chunk[0], 0x47);
    assert_eq!(sim.state().await["engines"][0]["active_sessions"], 1);
    drop(resp);
    eventually("the session to close", || async {
        sim.state().await["engines"][0]["active_sessions"] == 0
    })
    .await;
}

#[tokio::test]
async fn hang_times_out_while_control_answers_and_healthy_recovers() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let state = sim.set_mode("hang", None).await;
    assert_eq!(state["engines"][0]["mode"], "hang");

    let err = client_with_timeout(Duration::from_millis(300))
        .get(sim.api(0, STATUS))
        .send()
        .await
        .expect_err("a hung engine must not answer");
    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.state().await["engines"][0]["mode"], "hang");

    // A request left hanging is answered once the engine is unpaused.
    let pending = tokio::spawn(client().get(sim.api(0, STATUS)).send());
    eventually("the request to arrive", || async {
        sim.state().await["engines"][0]["requests"].as_u64() >= Some(2)
    })
    .await;
    sim.set_mode("healthy", None).await;
    let released = timeout(Duration::from_secs(2), pending)
        .await
        .expect("released")
        .expect("task");
    assert_eq!(released.expect("answered").status(), 200);
    let status = get_json(&client(), &sim.api(0, STATUS)).await;
    assert_eq!(status["result"]["status"], "idle");
}

#[tokio::test]
async fn refuse_closes_the_port_and_resets_connections_then_reopens_it() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let pooled = client();
    get_json(&pooled, &sim.api(0, STATUS)).await;

    // A hung request is cut off when the engine "crashes", rather than timing out.
    sim.set_mode("hang", None).await;
    let pending = tokio::spawn(client().get(sim.api(0, STATUS)).send());
    eventually("the request to arrive", || async {
        sim.state().await["engines"][0]["requests"].as_u64() >= Some(2)
    })
    .await;
    let state = sim.set_mode("refuse", None).await;
    assert_eq!(state["engines"][0]["mode"], "refuse");
    let cut = timeout(Duration::from_secs(2), pending)
        .await
        .expect("cut off promptly")
        .expect("task");
    assert!(cut.is_err_and(|e| !e.is_timeout()));

    eventually("the listener to close", || async {
        sim.state().await["engines"][0]["listening"] == false
    })
    .await;
    let err = fresh_client()
        .get(sim.api(0, STATUS))
        .send()
        .await
        .expect_err("refused");
    assert!(err.is_connect(), "{err}");
    let pooled_result = pooled.get(sim.api(0, STATUS)).send().await;
    assert!(
        pooled_result.is_err(),
        "keep-alive connections are gone too"
    );

    sim.set_mode("healthy", None).await;
    eventually("the same port to answer again", || async {
        fresh_client()
            .get(sim.api(0, STATUS))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

#[tokio::test]
async fn error_modes_fail_the_way_engines_do() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let c = client();

    sim.set_mode("error", None).await;
    let resp = c.get(sim.api(0, STATUS)).send().await.expect("answer");
    assert_eq!(resp.status(), 500);
    assert!(!resp.text().await.expect("body").is_empty());

    sim.set_mode("bad-json", None).await;
    let resp = c.get(sim.api(0, STATUS)).send().await.expect("answer");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");

    sim.set_mode("error-field", None).await;
    let status = get_json(&c, &sim.api(0, STATUS)).await;
    assert_eq!(status, json!({ "result": null, "error": "engine is busy" }));
    let stream = get_json(&c, &sim.api(0, "/ace/getstream?format=json&id=abc")).await;
    assert_eq!(stream["response"], Value::Null);
    assert!(stream["error"].is_string());

    sim.set_mode("healthy", None).await;
    let started = get_json(&c, &sim.api(0, "/ace/getstream?format=json&id=abc")).await;
    let stat_url = started["response"]["stat_url"].as_str().expect("stat_url");
    sim.set_mode("starve", None).await;
    let status = get_json(&c, &sim.api(0, STATUS)).await;
    assert_eq!(status["error"], Value::Null);
    let stat = get_json(&c, stat_url).await;
    let s = &stat["response"];
    assert_eq!(
        (s["status"].clone(), s["peers"].clone()),
        (json!("prebuf"), json!(0))
    );
    assert_eq!(
        (s["speed_down"].clone(), s["speed_up"].clone()),
        (json!(0), json!(0))
    );
}

#[tokio::test]
async fn unknown_mode_and_engine_are_rejected() {
    let sim = start(&["--http-port", "0", "--control-port", "0"], None).await;
    let resp = client()
        .post(sim.control("mode"))
        .body(r#"{"mode": "sleepy"}"#)
        .send()
        .await
        .expect("control answers");
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(
        body["detail"],
        "unknown mode 'sleepy'; expected one of healthy, hang, refuse, error, bad-json, error-field, starve"
    );
    let resp = client()
        .get(sim.control("mode?mode=hang&engine=7"))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 404);
    assert_eq!(sim.state().await["engines"][0]["mode"], "healthy");
}

#[tokio::test]
async fn conf_variable_sets_port_and_bind_all() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let conf = format!("--http-port={port}\n--https-port=6879\n--bind-all\n");
    let sim = start(&["--control-port", "0"], Some(&conf)).await;
    assert_eq!(sim.engines, vec![format!("0.0.0.0:{port}")]);
    let url = format!("http://127.0.0.1:{port}{STATUS}");
    assert_eq!(get_json(&client(), &url).await["error"], Value::Null);
}

#[tokio::test]
async fn count_gives_independent_engines() {
    let sim = start(
        &["--http-port", "0", "--control-port", "0", "--count", "3"],
        None,
    )
    .await;
    assert_eq!(sim.engines.len(), 3);
    let state = sim.set_mode("error", Some(1)).await;
    let modes: Vec<_> = state["engines"]
        .as_array()
        .expect("engines")
        .iter()
        .map(|e| e["mode"].clone())
        .collect();
    assert_eq!(modes, [json!("healthy"), json!("error"), json!("healthy")]);

    let c = client();
    for (engine, expected) in [(0, 200), (1, 500), (2, 200)] {
        let resp = c.get(sim.api(engine, STATUS)).send().await.expect("answer");
        assert_eq!(resp.status(), expected, "engine {engine}");
    }
    // Sessions are per engine too.
    get_json(&c, &sim.api(2, "/ace/getstream?format=json&id=abc")).await;
    let state = sim.state().await;
    assert_eq!(state["engines"][2]["active_sessions"], 1);
    assert_eq!(state["engines"][0]["active_sessions"], 0);
}

#[tokio::test]
async fn sim_routes_on_the_api_port_control_that_engine() {
    let sim = start(&["--http-port", "0"], None).await;
    assert_eq!(sim.control, None);
    let c = client();
    let sim_url = |path: &str| sim.api(0, &format!("/sim/{path}"));

    let state = c
        .post(sim_url("mode"))
        .body(r#"{"mode":"error"}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(state.status(), 200);
    assert_eq!(
        c.get(sim.api(0, STATUS))
            .send()
            .await
            .expect("answer")
            .status(),
        500
    );
    // Error modes spare /sim, so the engine can be switched back.
    let state = get_json(&c, &sim_url("state")).await;
    assert_eq!(state["engines"][0]["mode"], "error");
    get_json(&c, &sim_url("mode?mode=healthy")).await;
    assert_eq!(
        c.get(sim.api(0, STATUS))
            .send()
            .await
            .expect("answer")
            .status(),
        200
    );

    let state = c
        .post(sim_url("latency"))
        .body(r#"{"latency_ms":300}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(state.status(), 200);
    let before = Instant::now();
    get_json(&c, &sim.api(0, STATUS)).await;
    assert!(before.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn startup_delay_refuses_connections_until_booted() {
    let sim = start(
        &[
            "--http-port",
            "0",
            "--control-port",
            "0",
            "--startup-delay-ms",
            "800",
        ],
        None,
    )
    .await;
    let err = fresh_client()
        .get(sim.api(0, STATUS))
        .send()
        .await
        .expect_err("still booting");
    assert!(err.is_connect(), "{err}");
    assert_eq!(sim.state().await["engines"][0]["listening"], false);
    eventually("the engine to boot", || async {
        fresh_client()
            .get(sim.api(0, STATUS))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
}

async fn exits_promptly_on(signal: &str) {
    let mut sim = start(
        &["--http-port", "0", "--control-port", "0", "--mode", "hang"],
        None,
    )
    .await;
    // A hung request is open; it must not hold up the exit.
    let _pending = tokio::spawn(client().get(sim.api(0, STATUS)).send());
    eventually("the request to arrive", || async {
        sim.state().await["engines"][0]["requests"].as_u64() >= Some(1)
    })
    .await;
    let pid = sim.child.id().expect("running").to_string();
    let sent = std::process::Command::new("kill")
        .args(["-s", signal, &pid])
        .status()
        .expect("run kill");
    assert!(sent.success());
    let status = timeout(Duration::from_secs(1), sim.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 1 s of SIG{signal}"))
        .expect("wait");
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn sigterm_exits_zero_promptly() {
    exits_promptly_on("TERM").await;
}

#[tokio::test]
async fn sigint_exits_zero_promptly() {
    exits_promptly_on("INT").await;
}

// --- Streams of real video (--ts-file) --------------------------------------------

const TS_PACKET: usize = 188;
/// 90 kHz ticks per second (PCR base, PTS, DTS).
const HZ: f64 = 90_000.0;
/// Timestamps wrap at 2^33 ticks.
const TS_WRAP: u64 = 1 << 33;

/// A 3-second H.264 + AAC test file made once per test run by scripts/make-test-video.
fn test_video() -> &'static str {
    static VIDEO: OnceLock<String> = OnceLock::new();
    VIDEO.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/make-test-video");
        // A fixed name, so runs do not pile up files; the script replaces it atomically.
        let out = format!("{}/engine-sim-test-3s.ts", env!("CARGO_TARGET_TMPDIR"));
        let made = std::process::Command::new(script)
            .args([&out, "3"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
        assert!(
            made.status.success(),
            "{script} failed ({}): {}\nThe video tests need ffmpeg and ffprobe: \
             apt-get install ffmpeg (scripts/test installs them)",
            made.status,
            String::from_utf8_lossy(&made.stderr)
        );
        out
    })
}

async fn start_with_video() -> Sim {
    start(
        &[
            "--http-port",
            "0",
            "--control-port",
            "0",
            "--ts-file",
            test_video(),
        ],
        None,
    )
    .await
}

/// For endless bodies: only a generous overall timeout.
fn stream_client() -> reqwest::Client {
    client_with_timeout(Duration::from_secs(60))
}

/// The fields of TS packets that the tests look at.
struct Packet<'a> {
    pid: u16,
    unit_start: bool,
    has_payload: bool,
    cc: u8,
    /// PCR base (90 kHz), if any.
    pcr: Option<u64>,
    payload: &'a [u8],
}

fn packets(data: &[u8]) -> impl Iterator<Item = Packet<'_>> {
    data.chunks_exact(TS_PACKET).map(|p| {
        assert_eq!(p[0], 0x47, "TS sync byte");
        let control = (p[3] >> 4) & 3;
        let af_len = if control & 2 != 0 {
            1 + usize::from(p[4])
        } else {
            0
        };
        let pcr = (control & 2 != 0 && p[4] >= 7 && p[5] & 0x10 != 0).then(|| {
            (u64::from(p[6]) << 25)
                | (u64::from(p[7]) << 17)
                | (u64::from(p[8]) << 9)
                | (u64::from(p[9]) << 1)
                | (u64::from(p[10]) >> 7)
        });
        Packet {
            pid: (u16::from(p[1] & 0x1F) << 8) | u16::from(p[2]),
            unit_start: p[1] & 0x40 != 0,
            has_payload: control & 1 != 0,
            cc: p[3] & 0x0F,
            pcr,
            payload: p.get(4 + af_len..).unwrap_or_default(),
        }
    })
}

fn pcrs(data: &[u8]) -> Vec<u64> {
    packets(data).filter_map(|p| p.pcr).collect()
}

/// `later - earlier` in seconds, across the 2^33 wrap.
fn seconds_between(earlier: u64, later: u64) -> f64 {
    ((later + TS_WRAP - earlier) % TS_WRAP) as f64 / HZ
}

/// Continuity counter errors, counted the way a demuxer checks them.
fn continuity_errors(data: &[u8]) -> usize {
    let mut last = std::collections::HashMap::new();
    let mut errors = 0;
    for p in packets(data).filter(|p| p.pid != 0x1FFF) {
        if let Some(prev) = last.insert(p.pid, p.cc) {
            let expected = if p.has_payload { (prev + 1) % 16 } else { prev };
            errors += usize::from(p.cc != expected);
        }
    }
    errors
}

/// The capture up to (not including) the start of its last video PES, whose picture the
/// capture cut off: a truncated frame is the capture's fault, not the stream's.
fn without_last_frame(data: &[u8]) -> &[u8] {
    let last_start = packets(data)
        .enumerate()
        .filter(|(_, p)| p.unit_start && p.payload.starts_with(&[0, 0, 1, 0xE0]))
        .map(|(i, _)| i)
        .last()
        .expect("a video PES in the capture");
    &data[..last_start * TS_PACKET]
}

/// Reads `resp` until `until`; returns the bytes and when each chunk arrived.
async fn read_until(
    resp: &mut reqwest::Response,
    until: Instant,
) -> (Vec<u8>, Vec<(Instant, usize)>) {
    let (mut data, mut arrivals) = (Vec::new(), Vec::new());
    while let Ok(chunk) = tokio::time::timeout_at(until, resp.chunk()).await {
        let chunk = chunk.expect("stream readable").expect("stream continues");
        data.extend_from_slice(&chunk);
        arrivals.push((Instant::now(), data.len()));
    }
    (data, arrivals)
}

fn run(program: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (apt-get install ffmpeg): {e}"))
}

#[tokio::test]
async fn ts_file_streams_decodable_video_across_loops_in_real_time() {
    let sim = start_with_video().await;
    let requested = Instant::now();
    let capture = Duration::from_secs(7); // the file is 3 s: two loop boundaries at least
    let mut resp = stream_client()
        .get(sim.api(0, "/ace/getstream?id=film"))
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.headers()["content-type"], "video/mp2t");
    let (data, arrivals) = read_until(&mut resp, requested + capture).await;
    drop(resp);
    let elapsed = requested.elapsed().as_secs_f64();
    assert_eq!(data.len() % TS_PACKET, 0, "whole packets");
    let first = packets(&data).next().expect("data");
    assert_eq!(first.pid, 0, "a new stream starts with a PAT");

    // A new client first gets the backlog from the keyframe before the live position,
    // all at once; its span adds to the content the capture holds.
    let (first_at, _) = arrivals[0];
    let burst = arrivals
        .iter()
        .take_while(|(at, _)| *at - first_at < Duration::from_millis(20))
        .last()
        .map(|&(_, len)| len - len % TS_PACKET)
        .expect("arrivals");
    let all_pcrs = pcrs(&data);
    let burst_pcrs = pcrs(&data[..burst]);
    let backlog = seconds_between(all_pcrs[0], *burst_pcrs.last().unwrap_or(&all_pcrs[0]));
    assert!(backlog < 1.2, "backlog {backlog} s: more than a GOP");

    // One continuous programme: no timestamp jumps at the loop seams, no CC errors.
    for pair in all_pcrs.windows(2) {
        let step = seconds_between(pair[0], pair[1]);
        assert!(step < 0.2, "PCR jumped by {step} s");
    }
    assert_eq!(continuity_errors(&data), 0, "continuity counter errors");
    let span = seconds_between(all_pcrs[0], *all_pcrs.last().expect("PCRs"));
    assert!(span > 6.0, "PCRs span only {span} s");

    let path = format!(
        "{}/capture-{}.ts",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::write(&path, without_last_frame(&data)).expect("write the capture");
    let decoded = run("ffmpeg", &["-v", "error", "-i", &path, "-f", "null", "-"]);
    let errors = String::from_utf8_lossy(&decoded.stderr);
    assert!(
        decoded.status.success() && errors.trim().is_empty(),
        "ffmpeg decode errors: {errors}"
    );
    let probed = run(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            &path,
        ],
    );
    let stderr = String::from_utf8_lossy(&probed.stderr);
    assert!(stderr.trim().is_empty(), "ffprobe errors: {stderr}");
    let duration: f64 = String::from_utf8_lossy(&probed.stdout)
        .trim()
        .parse()
        .expect("ffprobe prints the duration");
    let expected = elapsed + backlog;
    assert!(
        (duration - expected).abs() < 1.0,
        "duration {duration} s, captured {elapsed} s plus a {backlog} s backlog"
    );
    let _ = std::fs::remove_file(&path);
}

/// The last PCR of a stream read from `url` until `until`.
async fn last_pcr_until(url: String, until: Instant) -> u64 {
    let mut resp = stream_client().get(url).send().await.expect("stream");
    let (data, _) = read_until(&mut resp, until).await;
    *pcrs(&data).last().expect("PCRs in the stream")
}

#[tokio::test]
async fn separate_processes_broadcast_the_same_live_position() {
    let first = start_with_video().await;
    // A second process started later, as another engine container would be.
    sleep(Duration::from_millis(1300)).await;
    let second = start_with_video().await;

    let until = Instant::now() + Duration::from_millis(1500);
    let (a, b) = tokio::join!(
        last_pcr_until(first.api(0, "/ace/getstream?id=news"), until),
        last_pcr_until(second.api(0, "/ace/getstream?id=news"), until),
    );
    let apart = seconds_between(a.min(b), a.max(b)).min(seconds_between(a.max(b), a.min(b)));
    assert!(apart < 0.5, "the two engines are {apart} s apart");
}

#[tokio::test]
async fn hang_stalls_a_stream_and_healthy_resumes_it_at_the_live_position() {
    let sim = start_with_video().await;
    let mut resp = stream_client()
        .get(sim.api(0, "/ace/getstream?id=sport"))
        .send()
        .await
        .expect("stream");
    let (data, arrivals) = read_until(&mut resp, Instant::now() + Duration::from_secs(1)).await;
    let (before_at, _) = *arrivals.last().expect("data before the hang");
    let before = *pcrs(&data).last().expect("PCRs");

    sim.set_mode("hang", None).await;
    // What was already on its way may still arrive; then nothing.
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        let (more, _) = read_until(&mut resp, Instant::now() + Duration::from_millis(300)).await;
        if !more.is_empty() {
            quiet_since = Instant::now();
        }
        assert!(
            before_at.elapsed() < Duration::from_secs(5),
            "the stream does not stall"
        );
    }
    let stalled = timeout(Duration::from_millis(700), resp.chunk()).await;
    assert!(stalled.is_err(), "bytes arrived while the engine hung");

    sim.set_mode("healthy", None).await;
    let chunk = timeout(Duration::from_secs(2), resp.chunk())
        .await
        .expect("the stream resumes")
        .expect("readable")
        .expect("not ended");
    let resumed_at = Instant::now();
    let mut data = chunk.to_vec();
    while pcrs(&data).is_empty() {
        let more = timeout(Duration::from_secs(1), resp.chunk())
            .await
            .expect("more data")
            .expect("readable")
            .expect("not ended");
        data.extend_from_slice(&more);
    }
    let after = pcrs(&data)[0];
    // The engine skipped what it missed: the PCR moved on with the wall clock.
    let jumped = seconds_between(before, after);
    let wall = (resumed_at - before_at).as_secs_f64();
    assert!(wall > 1.0, "the hang lasted {wall} s");
    assert!(
        (jumped - wall).abs() < 0.5,
        "PCR moved {jumped} s over {wall} s of wall clock"
    );
}

#[tokio::test]
async fn open_streams_and_streams_total_count_stream_bodies() {
    let sim = start_with_video().await;
    let counts = |state: Value| {
        let e = &state["engines"][0];
        (e["open_streams"].clone(), e["streams_total"].clone())
    };
    assert_eq!(counts(sim.state().await), (json!(0), json!(0)));

    let c = stream_client();
    let mut plain = c
        .get(sim.api(0, "/ace/getstream?id=one"))
        .send()
        .await
        .expect("stream");
    let started = get_json(&c, &sim.api(0, "/ace/getstream?format=json&id=two")).await;
    let playback_url = started["response"]["playback_url"]
        .as_str()
        .expect("playback_url");
    let mut playback = c.get(playback_url).send().await.expect("stream");
    plain.chunk().await.expect("chunk").expect("data");
    playback.chunk().await.expect("chunk").expect("data");
    assert_eq!(counts(sim.state().await), (json!(2), json!(2)));
    // /sim/state on the API port says the same.
    let on_port = get_json(&client(), &sim.api(0, "/sim/state")).await;
    assert_eq!(counts(on_port), (json!(2), json!(2)));

    drop(plain);
    eventually("one stream to close", || async {
        counts(sim.state().await) == (json!(1), json!(2))
    })
    .await;
    drop(playback);
    eventually("both streams to close", || async {
        counts(sim.state().await) == (json!(0), json!(2))
    })
    .await;
    // The json session outlives its stream; the plain getstream's own session does not.
    assert_eq!(sim.state().await["engines"][0]["active_sessions"], 1);
}

#[tokio::test]
async fn a_bad_ts_file_exits_64_with_a_clear_message() {
    let path = format!(
        "{}/not-ts-{}.ts",
        env!("CARGO_TARGET_TMPDIR"),
        std::process::id()
    );
    std::fs::write(&path, b"this is not a transport stream").expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_acestream-engine-sim"))
        .args(["--http-port", "0", "--ts-file", &path])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run the simulator");
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--ts-file") && stderr.contains("188-byte TS packets"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no READY line");
}
