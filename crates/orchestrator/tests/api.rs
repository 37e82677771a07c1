//! The API's edges: access control on every protected route, and every kind
//! of bad input answered with a 4xx and a JSON `{"detail"}` while the server
//! keeps serving.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode};
use common::{started_event, Orch, Sim};
use orchestrator::api::{route_table, router, AppState};
use orchestrator::registry::{Limits, Registry};
use orchestrator::service::{Orchestrator, Settings};
use orchestrator::store::{Retention, Store};
use serde_json::{json, Value};
use tower::ServiceExt;

fn concrete(path: &str) -> String {
    path.replace("{id}", "some-id").replace("{file}", "app.js")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_route_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("API_KEY", "correct horse")]).await;
    let protected: Vec<_> = route_table().into_iter().filter(|r| r.protected).collect();
    assert!(
        protected.len() >= 8,
        "the route table lists the protected routes"
    );
    for route in &protected {
        let url = orch.url(&concrete(route.path));
        let send = |token: Option<&str>| {
            let mut request = orch
                .client
                .request(route.method.clone(), &url)
                .json(&json!({}));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        let none = send(None).await.unwrap();
        assert_eq!(
            none.status(),
            401,
            "{} {} without a token",
            route.method,
            route.path
        );
        assert_eq!(none.headers()["www-authenticate"], "Bearer");
        let body: Value = none.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains("Bearer"));
        let wrong = send(Some("wrong")).await.unwrap();
        assert_eq!(
            wrong.status(),
            403,
            "{} {} with a wrong token",
            route.method,
            route.path
        );
        let right = send(Some("correct horse")).await.unwrap();
        assert!(
            right.status() != 401 && right.status() != 403,
            "{} {} with the key: {}",
            route.method,
            route.path,
            right.status()
        );
    }
    // Open routes need nothing.
    for route in route_table()
        .into_iter()
        .filter(|r| !r.protected && r.method == Method::GET)
    {
        let status = orch
            .client
            .get(orch.url(&concrete(route.path)))
            .send()
            .await
            .unwrap()
            .status();
        assert!(status != 401 && status != 403, "{} is open", route.path);
    }
    assert!(
        !orch.logs().contains("correct horse"),
        "the key never reaches the log"
    );
}

async fn in_process(peer: SocketAddr) -> axum::Router {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        stats_per_stream: 10,
        health_per_engine: 10,
    };
    let (store, _) = Store::open(&dir.path().join("o.db"), retention, 10).unwrap();
    std::mem::forget(dir);
    let limits = Limits {
        failure_threshold: 1,
        health_history_max: 10,
        stats_history_max: 10,
        ended_streams_max: 10,
    };
    let settings = Settings {
        health_interval: std::time::Duration::from_secs(30),
        health_timeout: std::time::Duration::from_secs(1),
        health_concurrency: 4,
        collect_concurrency: 4,
        collect_interval: std::time::Duration::from_secs(5),
        max_streams_per_engine: 2,
        reservation_ttl_s: 30.0,
        retention,
    };
    let orch = Arc::new(Orchestrator::new(Registry::new(limits), store, settings));
    let proxy = orchestrator::proxy::hub::Proxy::new(
        orch.clone(),
        orchestrator::app::proxy_settings(&orchestrator::config::Config::from_args(["x"]).unwrap()),
    );
    let vpn = orchestrator::vpn::Vpn::new(
        orchestrator::app::vpn_settings(&orchestrator::config::Config::from_args(["x"]).unwrap()),
        std::sync::Arc::new(orchestrator::runtime::memory::MemoryRuntime::new()),
        orch.clone(),
    );
    let panel = Arc::new(orchestrator::api::panel::Feed::new(&orch));
    router(AppState {
        proxy,
        vpn,
        stream_token: None,
        panel,
        orch,
        api_key: None,
        pool: None,
        shutdown: Default::default(),
    })
    .layer(MockConnectInfo(peer))
}

#[tokio::test]
async fn without_a_key_only_loopback_clients_may_write() {
    let request = || {
        Request::post("/events/stream_ended")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"stream_id":"x"}"#))
            .unwrap()
    };
    let remote = in_process("192.168.1.20:5000".parse().unwrap()).await;
    let response = remote.oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = axum::body::to_bytes(response.into_body(), 1 << 16)
        .await
        .unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["detail"].as_str().unwrap().contains("API_KEY"));

    for peer in ["127.0.0.1:5000", "[::1]:5000"] {
        let local = in_process(peer.parse().unwrap()).await;
        let response = local.oneshot(request()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{peer}");
    }
    // Reads stay open to everyone.
    let remote = in_process("192.168.1.20:5000".parse().unwrap()).await;
    let response = remote
        .oneshot(Request::get("/engines").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_with_a_detail_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    let sim = Sim::start(1).await;
    let port = sim.port();
    let good = started_event(port, "abc", "s1");
    let with = |pointer: &str, value: Value| {
        let mut event = good.clone();
        *event.pointer_mut(pointer).unwrap() = value;
        event.to_string()
    };
    let big = format!(
        r#"{{"host":"127.0.0.1","port":1,"name":"{}"}}"#,
        "x".repeat(100_000)
    );
    let cases: Vec<(Method, String, Option<String>, u16, &str)> = vec![
        (
            Method::POST,
            "/events/stream_started".into(),
            Some("{not json".into()),
            422,
            "JSON",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some("[]".into()),
            422,
            "deserialize",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/stream/key_type", json!("torrent"))),
            422,
            "key_type",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/stream/key", json!(""))),
            422,
            "stream.key",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/engine/port", json!(70000))),
            422,
            "engine.port",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/engine/port", json!("80"))),
            422,
            "port",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/engine/host", json!("a b/c"))),
            422,
            "engine.host",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/session/is_live", json!(7))),
            422,
            "is_live",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/session/stat_url", json!("http://10.0.0.9/steal"))),
            422,
            "stat_url",
        ),
        (
            Method::POST,
            "/events/stream_started".into(),
            Some(with("/session/command_url", json!("file:///etc/passwd"))),
            422,
            "command_url",
        ),
        (
            Method::POST,
            "/events/stream_ended".into(),
            Some("{}".into()),
            422,
            "stream_id",
        ),
        (
            Method::POST,
            "/engines".into(),
            Some(r#"{"host":"127.0.0.1","port":0}"#.into()),
            422,
            "port",
        ),
        (
            Method::POST,
            "/engines".into(),
            Some(r#"{"host":"127.0.0.1"}"#.into()),
            422,
            "port",
        ),
        (Method::POST, "/engines".into(), Some(big), 413, "limit"),
        (
            Method::POST,
            "/engines/select".into(),
            Some(r#"{"max_streams_per_engine":0}"#.into()),
            422,
            "max_streams_per_engine",
        ),
        (
            Method::POST,
            "/engines/select".into(),
            Some(r#"{"max_streams_per_engine":"two"}"#.into()),
            422,
            "max_streams_per_engine",
        ),
        (
            Method::GET,
            "/streams?status=paused".into(),
            None,
            400,
            "status",
        ),
        (
            Method::GET,
            "/streams/nope/stats?since=yesterday".into(),
            None,
            400,
            "since",
        ),
        (Method::GET, "/streams/nope/stats".into(), None, 404, "nope"),
        (Method::GET, "/engines/nope".into(), None, 404, "nope"),
        (Method::DELETE, "/engines/nope".into(), None, 404, "nope"),
        (Method::DELETE, "/streams/nope".into(), None, 404, "nope"),
        (Method::GET, "/no/such/route".into(), None, 404, "route"),
        (Method::PUT, "/engines".into(), None, 405, "method"),
    ];
    for (method, path, body, want, mentions) in cases {
        let mut request = orch.client.request(method.clone(), orch.url(&path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        assert_eq!(status, want, "{method} {path}: {text}");
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        let detail = body["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail: {text}"));
        assert!(
            detail.to_lowercase().contains(&mentions.to_lowercase()),
            "{method} {path}: '{detail}' does not mention {mentions}"
        );
    }
    // A body without a JSON content type is named as such.
    let response = orch
        .client
        .post(orch.url("/events/stream_ended"))
        .body(r#"{"stream_id":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // Still serving, and the good event is accepted.
    let (status, stream) = orch.post("/events/stream_started", good).await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(stream["is_live"], true);
    assert!(stream["started_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(stream["ended_at"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_quirks_are_absorbed() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("COLLECT_INTERVAL_S", "0.2")]).await;
    let sim = Sim::start(1).await;
    let port = sim.port();
    let id = orch.register(port).await;

    // A real session on the emulator, reported with `localhost` and is_live 1.
    let session: Value = orch
        .client
        .get(format!(
            "http://127.0.0.1:{port}/ace/getstream?format=json&infohash=feed"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let response = &session["response"];
    let event = json!({
        "engine": { "host": "localhost", "port": port },
        "stream": { "key_type": "infohash", "key": "feed" },
        "session": {
            "playback_session_id": response["playback_session_id"],
            "stat_url": response["stat_url"],
            "command_url": response["command_url"],
            "is_live": response["is_live"],
        }
    });
    let (status, stream) = orch.post("/events/stream_started", event).await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(
        stream["container_id"], id,
        "localhost is the engine registered as 127.0.0.1"
    );
    assert_eq!(stream["is_live"], true);
    let (_, engines) = orch.get("/engines").await;
    assert_eq!(engines.as_array().unwrap().len(), 1, "no duplicate engine");

    // The collector polls stat_url; the history filters by `since`.
    let stream_id = stream["id"].as_str().unwrap().to_owned();
    let stats = common::wait_for(
        "two stat snapshots",
        std::time::Duration::from_secs(5),
        || async {
            let (_, stats) = orch.get(&format!("/streams/{stream_id}/stats")).await;
            (stats.as_array().map_or(0, Vec::len) >= 2).then_some(stats)
        },
    )
    .await;
    assert!(
        stats[0]["peers"].is_i64() && stats[0]["status"].is_string(),
        "{stats}"
    );
    let first_ts = stats[0]["ts"].as_str().unwrap();
    let (_, later) = orch
        .get(&format!("/streams/{stream_id}/stats?since={first_ts}"))
        .await;
    assert_eq!(
        later.as_array().unwrap().len(),
        stats.as_array().unwrap().len() - 1
    );

    // Stopping through the API tells the engine and ends the stream.
    let (status, stopped) = orch.delete(&format!("/streams/{stream_id}")).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["engine_stop"], "ok");
    assert_eq!(stopped["stream"]["status"], "ended");
    let stat: Value = orch
        .client
        .get(response["stat_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        stat["error"].is_string(),
        "the engine's session is gone: {stat}"
    );

    // Ended twice, and ended without ever having started: 200, updated false.
    let (status, again) = orch
        .post("/events/stream_ended", json!({ "stream_id": stream_id }))
        .await;
    assert_eq!((status, &again["updated"]), (200, &json!(false)));
    assert_eq!(again["stream"]["status"], "ended");
    let (status, never) = orch
        .post("/events/stream_ended", json!({ "stream_id": "never" }))
        .await;
    assert_eq!(
        (status, &never["updated"], &never["stream"]),
        (200, &json!(false), &Value::Null)
    );

    // Ending by container ends its newest started stream.
    orch.post("/events/stream_started", started_event(port, "one", "s1"))
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    orch.post("/events/stream_started", started_event(port, "two", "s2"))
        .await;
    let (_, ended) = orch
        .post("/events/stream_ended", json!({ "container_id": id }))
        .await;
    assert_eq!(ended["stream"]["key"], "two");

    // A proxy whose start failed ends a stream id nobody knows, naming the
    // engine: the engine's other, live stream must not be ended for it.
    let (status, unknown) = orch
        .post(
            "/events/stream_ended",
            json!({ "container_id": id, "stream_id": "failed-start" }),
        )
        .await;
    assert_eq!(
        (status, &unknown["updated"], &unknown["stream"]),
        (200, &json!(false), &Value::Null)
    );
    let (_, still) = orch.get("/streams?status=started").await;
    assert_eq!(still.as_array().unwrap().len(), 1, "{still}");
    assert_eq!(still[0]["key"], "one");

    // Deleting the engine ends what it still carried.
    let (status, _) = orch.delete(&format!("/engines/{id}")).await;
    assert_eq!(status, 200);
    let (_, streams) = orch.get("/streams?status=started").await;
    assert_eq!(streams, json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_unless_origins_are_named() {
    let preflight = |orch: &Orch, origin: &str| {
        orch.client
            .request(Method::OPTIONS, orch.url("/engines"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let dir = tempfile::tempdir().unwrap();
    let off = Orch::start(dir.path(), &[]).await;
    let response = preflight(&off, "https://evil.example").await.unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let dir = tempfile::tempdir().unwrap();
    let on = Orch::start(
        dir.path(),
        &[("CORS_ALLOW_ORIGINS", "https://panel.example")],
    )
    .await;
    let response = preflight(&on, "https://panel.example").await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://panel.example"
    );
    let response = preflight(&on, "https://evil.example").await.unwrap();
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dashboard_stream_does_not_hold_up_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut orch = Orch::start(dir.path(), &[]).await;
    let mut events = orch
        .client
        .get(orch.url("/panel/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let first = events.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("data:"));
    let (code, took) = orch.terminate().await;
    assert_eq!(code, Some(0));
    assert!(
        took < std::time::Duration::from_secs(2),
        "shutdown took {took:?}"
    );
    assert!(!orch.logs().contains("requests still open"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_huge_request_heads_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("HTTP_HEADER_TIMEOUT_S", "1")]).await;
    let addr = orch.base.trim_start_matches("http://").to_owned();

    // Slowloris: half a request head, then nothing. The server hangs up.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /engines HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut buf),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a slow client still holds its connection after 5 s"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "cut off too early"
    );

    // Headers over 32 KiB: 431 with a detail; far over hyper's own limit the
    // connection is refused. Neither crashes anything.
    let response = orch
        .client
        .get(orch.url("/engines"))
        .header("x-filler", "a".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 431);
    let body: Value = response.json().await.unwrap();
    assert!(body["detail"].as_str().unwrap().contains("headers"));
    let huge = orch
        .client
        .get(orch.url("/engines"))
        .header("x-filler", "a".repeat(2 * 1024 * 1024))
        .send()
        .await;
    if let Ok(response) = huge {
        assert!(response.status().is_client_error(), "{}", response.status());
    }
    assert_eq!(orch.get("/engines").await.0, 200);
}

/// A route that takes no body, or a request refused before its body is read,
/// must still deliver its answer: answered mid-upload, the connection would be
/// reset and the client would see an error instead of the 4xx/5xx and detail.
#[tokio::test]
async fn an_unread_body_does_not_cost_the_client_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[("API_KEY", "secret"), ("HTTP_HEADER_TIMEOUT_S", "1")],
    )
    .await;
    let addr = orch.base.trim_start_matches("http://").to_owned();
    let key = "Authorization: Bearer secret\r\n";
    for (path, key, size, want) in [
        ("/gc", key, 30 * 1024, None),
        ("/events/stream_started", "", 30 * 1024, Some("401")),
        // Over the 64 KiB limit: refused, but only once the body is in.
        ("/engines", key, 200 * 1024, Some("413")),
    ] {
        let body = format!("{{\"filler\":\"{}\"}}", "a".repeat(size));
        // The head first, the body a moment later, as a client on a slow
        // uplink sends them: the server must wait for it before answering.
        let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{key}Content-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        client.write_all(head.as_bytes()).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // A server that answered without the body has closed by now: the
        // first write draws a reset and the second fails, and a client like
        // reqwest reports that failure instead of the answer.
        let (first, second) = body.as_bytes().split_at(body.len() / 2);
        for half in [first, second] {
            client
                .write_all(half)
                .await
                .unwrap_or_else(|e| panic!("POST {path}: the body could not be sent: {e}"));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut answer),
        )
        .await
        .expect("no answer within 5 s");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            read.is_ok(),
            "POST {path}: {read:?} after reading '{answer}'"
        );
        let status = answer.get(9..12).unwrap_or_default();
        if let Some(want) = want {
            assert_eq!(status, want, "POST {path}: {answer}");
        }
        assert!(
            status.starts_with('2') || answer.contains("\"detail\""),
            "POST {path}: no detail in {answer}"
        );
    }

    // Declared far over the limit: refused on the header alone, unread.
    let mut client = tokio::net::TcpStream::connect(&addr).await.unwrap();
    client
        .write_all(
            b"POST /engines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\
              Content-Type: application/json\r\nContent-Length: 100000000\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = vec![0; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), client.read(&mut answer))
        .await
        .expect("a 100 MB body is refused at once")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // A body that never finishes arriving: 408 once the timeout passes.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(
        b"POST /engines HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer secret\r\n\
          Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"host\":",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        slow.read_to_end(&mut answer),
    )
    .await
    .expect("a half-sent body still holds its connection after 5 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
}

/// `--healthcheck` (the image's HEALTHCHECK): exit 0 while the orchestrator on
/// APP_PORT answers, 1 with the reason when nothing does.
#[tokio::test]
async fn the_healthcheck_flag_says_whether_the_orchestrator_is_live() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[]).await;
    let port = orch.base.rsplit(':').next().unwrap().to_owned();
    let cwd = dir.path().to_owned();
    let check = |port: String| {
        let cwd = cwd.clone();
        async move {
            tokio::process::Command::new(env!("CARGO_BIN_EXE_acestream-orchestrator"))
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RUST_LOG", "warn")
                .args(["--healthcheck", "--app-port", &port])
                .current_dir(cwd)
                .output()
                .await
                .unwrap()
        }
    };
    let live = check(port).await;
    assert_eq!(live.status.code(), Some(0), "{live:?}");
    assert!(String::from_utf8_lossy(&live.stdout).contains("live"));

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = check(closed.to_string()).await;
    assert_eq!(dead.status.code(), Some(1), "{dead:?}");
    let stderr = String::from_utf8_lossy(&dead.stderr);
    assert!(
        stderr.contains("not live") && stderr.contains("refused"),
        "{stderr}"
    );
}

/// An upload a few MiB over the limit, from a client that sends its whole body
/// before it reads (reqwest), gets the JSON 413 rather than a connection
/// reset: the body is read and dropped up to 16 MiB, as nginx's lingering
/// close does. A much larger one is refused unread (a reset or a 413, either
/// way), and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_a_few_mib_over_the_limit_gets_its_413() {
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("API_KEY", "secret")]).await;
    let client = reqwest::Client::new();
    let upload = |size: usize| {
        client
            .post(orch.url("/events/stream_started"))
            .bearer_auth("secret")
            .header("content-type", "application/json")
            .body(vec![b'a'; size])
            .send()
    };

    // Refused unread, the answer races the reset the unread bytes draw, and
    // the client loses now and then: twenty tries make the loss certain.
    for attempt in 0..20 {
        let response = upload(4 * 1024 * 1024)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: a 4 MiB body drew {e:?}"));
        assert_eq!(response.status(), 413);
        let body: Value = response.json().await.unwrap();
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains("larger than the limit"), "{body}");
    }

    // Refused unread: whatever the client sees, never a 2xx.
    if let Ok(response) = upload(32 * 1024 * 1024).await {
        assert_eq!(response.status(), 413);
    }
    let (status, _) = orch.get("/engines").await;
    assert_eq!(
        status, 200,
        "the server keeps serving after a 32 MiB upload"
    );
    // And the same client, on a fresh or kept-alive connection, still works.
    let response = upload(4 * 1024 * 1024).await.unwrap();
    assert_eq!(response.status(), 413);
}
