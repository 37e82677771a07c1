//! Runs the real binary and talks to it over HTTP, as the orchestrator's tests will.

use std::future::Future;
use std::process::Stdio;
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
