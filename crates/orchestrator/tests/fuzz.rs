//! Hostile input against every documented route: no 5xx, no crash, and every
//! rejection a JSON `{"detail": "..."}` naming the problem.
//!
//! Two tests against the real binary, with an emulated engine registered and a
//! stream started so that some routes have data:
//!
//! - `schemathesis_finds_nothing`: [schemathesis] generates the attack surface
//!   from `GET /openapi.json` (examples, coverage of edge values, random and
//!   schema-violating inputs, and stateful sequences driven by the document's
//!   links) and checks every answer: not a server error, a status, content type,
//!   headers and body the document promises, and our own check that an error is
//!   JSON with a non-empty `detail`. It needs `st` on PATH: `scripts/fuzz-deps`
//!   installs the pinned version (`ST=/path/to/st` names another binary;
//!   `SKIP_FUZZ_TESTS=1` makes the test pass without running). `FUZZ_EXAMPLES`
//!   sets the examples per operation, `FUZZ_SEED` replays a run's seed.
//! - `hostile_inputs_on_every_route`: our own short list of nasty path ids,
//!   query strings, bodies and headers, sent to every route of the document.
//!
//! The fuzzer must not start containers or reach anything off this machine:
//! `DOCKER_HOST` names a socket that does not exist (the container routes answer
//! 503, which is allowed for them alone, as for `POST /engines/select` when
//! nothing fits), and every engine request the orchestrator makes to a host
//! outside 127.0.0.0/8 (fuzzed registrations, stat and command URLs) goes
//! through `HTTP_PROXY` to a local trap that hangs up.
//!
//! [schemathesis]: https://schemathesis.readthedocs.io/

mod common;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{started_event, Orch, Sim};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::Method;
use serde_json::{json, Value};

const API_KEY: &str = "fuzz-key";

/// The schemathesis version `scripts/fuzz-deps` installs; flags and config keys
/// below are this version's.
const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// Examples per operation in the fuzzing phase (the coverage phase adds its own
/// edge cases, the stateful phase its sequences): a few hundred requests per
/// route in all, a couple of minutes on two cores.
const DEFAULT_EXAMPLES: u32 = 300;

/// How long schemathesis may run before the test gives up on it.
const SCHEMATHESIS_DEADLINE: Duration = Duration::from_secs(480);

/// The routes that may answer 503 here: the container routes (no container
/// runtime: `DOCKER_HOST` points nowhere) and selection (nothing fits and no
/// engine can be started). Everywhere else a 503 would mean a failed database
/// write, which must not happen.
fn may_answer_503(path: &str) -> bool {
    path == "/engines/select"
        || ["/provision", "/containers/", "/by-label", "/scale/", "/gc"]
            .iter()
            .any(|prefix| path.starts_with(prefix))
}

/// A loopback listener standing in for an HTTP proxy: it counts connections and
/// hangs up on each, so a request for a host off this machine fails at once.
async fn trap_proxy() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let caught = Arc::new(AtomicUsize::new(0));
    let count = caught.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            drop(socket);
        }
    });
    (port, caught)
}

/// The orchestrator under attack, one emulated engine registered on it and one
/// stream started on that engine.
struct Target {
    orch: Orch,
    _sim: Sim,
    engine_id: String,
    stream_id: String,
    trapped: Arc<AtomicUsize>,
}

async fn start_target(dir: &Path) -> Target {
    let (trap, trapped) = trap_proxy().await;
    let proxy = format!("http://127.0.0.1:{trap}");
    let orch = Orch::start(
        dir,
        &[
            ("API_KEY", API_KEY),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("HTTP_PROXY", &proxy),
            ("HTTPS_PROXY", &proxy),
            ("ALL_PROXY", &proxy),
            ("NO_PROXY", "127.0.0.0/8"),
        ],
    )
    .await;
    let sim = Sim::start(1).await;
    let client = reqwest::Client::new();
    let response = client
        .post(orch.url("/engines"))
        .bearer_auth(API_KEY)
        .json(&json!({ "host": "127.0.0.1", "port": sim.port() }))
        .send()
        .await
        .expect("POST /engines");
    assert_eq!(response.status(), 201, "registering the emulated engine");
    let engine: Value = response.json().await.unwrap();
    let engine_id = engine["container_id"]
        .as_str()
        .expect("container_id")
        .to_owned();
    let response = client
        .post(orch.url("/events/stream_started"))
        .bearer_auth(API_KEY)
        .json(&started_event(sim.port(), "fuzzinfohash", "fuzz-session"))
        .send()
        .await
        .expect("POST /events/stream_started");
    assert_eq!(response.status(), 200, "starting the fixture stream");
    let stream: Value = response.json().await.unwrap();
    let stream_id = stream["id"].as_str().expect("stream id").to_owned();
    Target {
        orch,
        _sim: sim,
        engine_id,
        stream_id,
        trapped,
    }
}

// ---------------------------------------------------------------------------
// schemathesis
// ---------------------------------------------------------------------------

/// Our own check, loaded as a schemathesis hook: every 4xx and 5xx answer is
/// JSON `{"detail": "<non-empty text>"}`.
const HOOKS: &str = r#"
import json

import schemathesis


@schemathesis.serializer("audio/x-mpegurl")
def m3u_playlist(ctx, value):
    """POST /playlist takes an M3U playlist: the generated text as bytes
    (lone surrogates kept, so invalid UTF-8 reaches the server too)."""
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8", "surrogatepass")


@schemathesis.check
def error_is_json_detail(ctx, response, case):
    """Every 4xx/5xx answer is JSON {"detail": "<non-empty text>"}."""
    if response.status_code < 400:
        return None
    content_type = ",".join(response.headers.get("content-type", []))
    if not content_type.startswith("application/json"):
        raise AssertionError(
            f"{response.status_code} answer has Content-Type {content_type!r}, not application/json"
        )
    try:
        body = json.loads(response.content)
    except ValueError:
        raise AssertionError(f"{response.status_code} answer is not JSON: {response.content[:300]!r}")
    detail = body.get("detail") if isinstance(body, dict) else None
    if not isinstance(detail, str) or not detail.strip():
        raise AssertionError(
            f"{response.status_code} answer has no non-empty string `detail`: {response.content[:300]!r}"
        )
    return None
"#;

/// The schemathesis configuration: our hook, known ids offered half of the
/// time for the routes that look things up (else they would only ever see
/// 404s), and 503 allowed where `may_answer_503` allows it.
fn schemathesis_config(hooks: &Path, target: &Target) -> String {
    format!(
        r#"hooks = "{hooks}"

[dictionaries.engine_ids]
values = ["{engine}"]

[dictionaries.stream_ids]
values = ["{stream}"]

[dictionaries.asset_files]
values = ["app.js", "style.css"]

# Not for DELETE: a fuzzer that forgets the fixture half of the time leaves the
# other routes nothing to find.
[[operations]]
include-path-regex = '^/engines/\{{id\}}'
exclude-method = "DELETE"
parameters = {{ "path.id" = {{ dictionary = "engine_ids", probability = 0.5 }} }}

[[operations]]
include-path-regex = '^/streams/\{{id\}}'
exclude-method = "DELETE"
parameters = {{ "path.id" = {{ dictionary = "stream_ids", probability = 0.5 }} }}

[[operations]]
include-path = "/panel/assets/{{file}}"
parameters = {{ "path.file" = {{ dictionary = "asset_files", probability = 0.5 }} }}

# No container runtime here (DOCKER_HOST points nowhere): these answer 503
# "container runtime unreachable", as documented.
[[operations]]
include-path-regex = '^/(provision|containers/|by-label|scale/|gc)'
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

# 503 = no healthy engine has a free slot (and none can be started), as documented.
[[operations]]
include-operation-id = "selectEngine"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

# The stateful phase chains calls along the document's links; a few sequences
# per link are enough to find a state that breaks an answer.
[phases.stateful.generation]
max-examples = 25
"#,
        hooks = hooks.display(),
        engine = target.engine_id,
        stream = target.stream_id,
    )
}

/// `st`, or `None` (after saying why) when the test is skipped on purpose.
fn schemathesis_binary() -> Option<String> {
    if std::env::var_os("SKIP_FUZZ_TESTS").is_some_and(|v| !v.is_empty() && v != "0") {
        eprintln!("SKIP_FUZZ_TESTS is set: not running schemathesis");
        return None;
    }
    let st = std::env::var("ST").unwrap_or_else(|_| "st".to_owned());
    let version = std::process::Command::new(&st).arg("--version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => panic!(
            "schemathesis (`{st}`) is not installed: run scripts/fuzz-deps \
             (pip install 'schemathesis=={SCHEMATHESIS_VERSION}'), name the binary with ST=…, \
             or set SKIP_FUZZ_TESTS=1"
        ),
    };
    if version != format!("st, version {SCHEMATHESIS_VERSION}") {
        eprintln!(
            "warning: `{st} --version` says '{version}'; this test is written for \
             {SCHEMATHESIS_VERSION} (scripts/fuzz-deps installs it)"
        );
    }
    Some(st)
}

/// The number after `label` in schemathesis' summary (`Tested: 27`,
/// `6001 generated`).
fn summary_number(output: &str, label: &str) -> Option<u64> {
    output.lines().find_map(|line| {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix(label) {
            return rest.trim().split(['/', ' ']).next()?.parse().ok();
        }
        let at = line.find(label)?;
        line[..at].split_whitespace().last()?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing() {
    let Some(st) = schemathesis_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let target = start_target(dir.path()).await;
    let work = dir.path().join("schemathesis");
    std::fs::create_dir_all(&work).unwrap();
    let hooks = work.join("fuzz_hooks.py");
    std::fs::write(&hooks, HOOKS).unwrap();
    let config = work.join("schemathesis.toml");
    std::fs::write(&config, schemathesis_config(&hooks, &target)).unwrap();

    let examples = std::env::var("FUZZ_EXAMPLES")
        .ok()
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(DEFAULT_EXAMPLES);
    let auth = format!("Authorization: Bearer {API_KEY}");
    let examples = examples.to_string();
    let mut args: Vec<String> = [
        "--config-file",
        config.to_str().unwrap(),
        "run",
        &target.orch.url("/openapi.json"),
        "--header",
        &auth,
        // A server-sent event stream that never ends: one request would hang
        // until the request timeout. Its headers are checked by the other test.
        "--exclude-path",
        "/panel/events",
        "--checks",
        "not_a_server_error,status_code_conformance,content_type_conformance,\
         response_headers_conformance,response_schema_conformance,ignored_auth,\
         error_is_json_detail",
        "--max-examples",
        &examples,
        // One worker: with two, CPython 3.11 sometimes fails inside
        // schemathesis itself ("SystemError: AST constructor recursion depth
        // mismatch", a thread race in its compiler), which is not our finding.
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--generation-database",
        "none",
        "--no-color",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Ok(seed) = std::env::var("FUZZ_SEED") {
        args.extend(["--seed".to_owned(), seed]);
    }
    let shown: Vec<String> = args
        .iter()
        .map(|a| {
            if a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        })
        .collect();
    eprintln!("running: {st} {}", shown.join(" "));

    let log_path = work.join("output.txt");
    let log = std::fs::File::create(&log_path).unwrap();
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&st)
        .args(&args)
        .current_dir(&work)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {st}: {e}"));
    let status = tokio::time::timeout(SCHEMATHESIS_DEADLINE, child.wait()).await;
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let status = match status {
        Ok(status) => status.expect("wait for schemathesis"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("schemathesis ran over {SCHEMATHESIS_DEADLINE:?}; its output so far:\n{output}");
        }
    };

    let live = target.orch.get("/health/live").await;
    let cases = summary_number(&output, "generated");
    let selected = summary_number(&output, "Selected:");
    let tested = summary_number(&output, "Tested:");
    eprintln!(
        "schemathesis: {status} in {elapsed:.1?}; {} test cases over {} operations; \
         {} engine requests to hosts off loopback caught by the trap proxy",
        cases.map_or("?".into(), |n| n.to_string()),
        tested.map_or("?".into(), |n| n.to_string()),
        target.trapped.load(Ordering::Relaxed),
    );
    if !status.success() || live.0 != 200 {
        panic!(
            "schemathesis found failures ({status}; GET /health/live afterwards: {} {}):\n\
             {output}\n--- orchestrator log (tail) ---\n{}",
            live.0,
            live.1,
            tail(&target.orch.logs(), 60),
        );
    }
    eprintln!("{}", tail(&output, 30));
    // Guards against a run that silently tests nothing: every documented
    // operation was selected and tested, but the event stream (excluded above)
    // and `GET /openapi.json` (schemathesis leaves out the document it loads).
    let documented = documented_operations(&target.orch).await.len() as u64;
    assert_eq!(
        selected,
        Some(documented - 2),
        "operations selected:\n{output}"
    );
    assert_eq!(tested, selected, "operations tested:\n{output}");
    assert!(
        cases.is_some_and(|n| n >= documented * 20),
        "too few test cases:\n{output}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Our own hostile inputs
// ---------------------------------------------------------------------------

/// Every (method, path) the served document lists.
async fn documented_operations(orch: &Orch) -> Vec<(Method, String, Value)> {
    let (status, doc) = orch.get("/openapi.json").await;
    assert_eq!(status, 200, "GET /openapi.json");
    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if let Ok(method) = method.to_ascii_uppercase().parse::<Method>() {
                operations.push((method, path.clone(), operation.clone()));
            }
        }
    }
    operations
}

/// Path segments that try traversal, sheer size, odd encodings and odd types.
/// Each is put in the URL as written (already percent-encoded where needed).
fn hostile_ids() -> Vec<String> {
    let long_unicode: String = "%F0%9F%9A%80".repeat(10 * 1024 / 12);
    vec![
        "..%2F..%2Fetc%2Fpasswd".into(),
        "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd%00".into(),
        "%2e%2e%2f%2e%2e%2fCargo.toml".into(),
        "..%5C..%5Cwindows%5Cwin.ini".into(),
        "a".repeat(10 * 1024),
        long_unicode,
        "h%C3%A9llo-%D0%BC%D0%B8%D1%80-%F0%9F%9A%80".into(),
        // Not UTF-8 once decoded.
        "%FF%FE%FD".into(),
        // Not valid percent-encoding.
        "%zz%".into(),
        "%00".into(),
        "%0D%0AX-Injected:%20yes".into(),
        "'%20OR%201=1;--".into(),
        "%3Cscript%3Ealert(1)%3C%2Fscript%3E".into(),
        "-1".into(),
        "18446744073709551616".into(),
        "1e3".into(),
        "0x10".into(),
        "%7Bid%7D".into(),
        "null".into(),
        "127.0.0.1%3A0".into(),
    ]
}

/// Query strings, for routes with query parameters (and harmless elsewhere).
fn hostile_queries() -> Vec<String> {
    vec![
        "status=%FF".into(),
        "status=started&status=ended".into(),
        "status=STARTED".into(),
        "container_id[]=x".into(),
        format!("container_id={}", "%F0%9F%9A%80".repeat(800)),
        "since=not-a-date".into(),
        "since=2026-13-45T99:99:99Z".into(),
        "since=-999999-01-01T00:00:00Z".into(),
        format!("since={}", "9".repeat(10 * 1024)),
        "key=".into(),
        "key=%00&value=%FF".into(),
        "%%%=%%%".into(),
        "a=1&a=2&&&=&".into(),
    ]
}

/// Request bodies: wrong JSON types, broken JSON, odd numbers, deep nesting.
fn hostile_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(5_000), "}".repeat(5_000));
    let values = [
        "null",
        "true",
        "42",
        "-1",
        "1e400",
        "\"text\"",
        "[]",
        "[{}]",
        "{}",
        r#"{"host": 5, "port": "x"}"#,
        r#"{"host": "127.0.0.1", "port": 1.5}"#,
        r#"{"host": "127.0.0.1", "port": 99999999999999999999999}"#,
        r#"{"host": "../../etc/passwd", "port": 1}"#,
        r#"{"host": "h\u00e9llo", "port": -1}"#,
        r#"{"max_streams_per_engine": "lots"}"#,
        r#"{"max_streams_per_engine": -9223372036854775808}"#,
        r#"{"stream": "x"}"#,
        r#"{"stream": {"key_type": [], "key": {}}}"#,
        r#"{"stream": {"key_type": "infohash", "key": "k"}, "engine": {"host": "127.0.0.1", "port": 0}}"#,
        r#"{"stream": {"key_type": "infohash", "key": "k"}, "engine": {"host": "127.0.0.1", "port": 1}, "session": {"is_live": 2}}"#,
        r#"{"stream_id": 5, "container_id": []}"#,
        r#"{"image": "", "ports": {"0/tcp": 70000}}"#,
        r#"{"image": 1, "env": [], "labels": "x"}"#,
        r#"{"labels": {"a": {"b": 1}}, "env": null}"#,
        r#"{"a": 1, "a": 2}"#,
        "{",
        "{\"host\": \"127.0.0.1\", \"port\": 1",
        "\u{feff}{}",
    ];
    let mut bodies: Vec<(&'static str, Vec<u8>)> = values
        .iter()
        .map(|v| ("application/json", v.as_bytes().to_vec()))
        .collect();
    bodies.push(("application/json", deep.into_bytes()));
    bodies.push(("application/json", deep_object.into_bytes()));
    bodies.push(("application/json", vec![b'{', 0xff, 0xfe, b'}']));
    bodies.push(("application/json", vec![b' '; 70 * 1024]));
    bodies.push((
        "application/json",
        format!(r#"{{"host": "{}", "port": 1}}"#, "a".repeat(70 * 1024)).into_bytes(),
    ));
    bodies.push(("text/plain", b"{}".to_vec()));
    bodies.push((
        "application/x-www-form-urlencoded",
        b"host=a&port=1".to_vec(),
    ));
    bodies.push(("application/json; charset=utf-16", b"{}".to_vec()));
    bodies
}

/// One answer that must not be a server error, and, when it is a rejection,
/// must be JSON `{"detail": "..."}`.
struct Checker<'a> {
    orch: &'a Orch,
    problems: Vec<String>,
    requests: usize,
    statuses: std::collections::BTreeMap<u16, usize>,
}

impl Checker<'_> {
    async fn send(&mut self, request: reqwest::RequestBuilder, path: &str, what: &str) {
        self.requests += 1;
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                self.problems.push(format!("{what}: no answer: {e}"));
                return;
            }
        };
        let status = response.status().as_u16();
        *self.statuses.entry(status).or_default() += 1;
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if path == "/panel/events" && status == 200 {
            // The event stream never ends: its answer line is all there is to check.
            return;
        }
        let body = response.bytes().await.unwrap_or_default();
        let text = String::from_utf8_lossy(&body);
        let short: String = text.chars().take(200).collect();
        if status >= 500 && !(status == 503 && may_answer_503(path)) {
            self.problems.push(format!("{what}: {status} {short}"));
        }
        if status >= 400 {
            let detail = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned));
            match detail {
                _ if !content_type.starts_with("application/json") => self.problems.push(format!(
                    "{what}: {status} with Content-Type '{content_type}': {short}"
                )),
                Some(detail)
                    if !detail.trim().is_empty() && !detail.starts_with("internal error") => {}
                _ => self.problems.push(format!(
                    "{what}: {status} without a useful `detail`: {short}"
                )),
            }
        }
    }

    fn url(&self, path: &str, query: Option<&str>) -> String {
        match query {
            Some(q) => format!("{}{path}?{q}", self.orch.base),
            None => format!("{}{path}", self.orch.base),
        }
    }
}

fn is_protected(operation: &Value) -> bool {
    operation["security"]
        .as_array()
        .is_some_and(|s| !s.is_empty())
}

fn has_body(operation: &Value) -> bool {
    operation.get("requestBody").is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let target = start_target(dir.path()).await;
    let orch = &target.orch;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let operations = documented_operations(orch).await;
    assert!(operations.len() >= 25, "the document lists every route");
    let mut check = Checker {
        orch,
        problems: Vec::new(),
        requests: 0,
        statuses: Default::default(),
    };
    let started = Instant::now();
    let bodies = hostile_bodies();
    let queries = hostile_queries();

    for (method, path, operation) in &operations {
        let templated = path.contains('{');
        let request = |url: String| client.request(method.clone(), url).bearer_auth(API_KEY);
        // Hostile path parameters.
        if templated {
            for id in hostile_ids() {
                let concrete = fill(path, &id);
                let what = format!("{method} {path} with id {}", clip(&id));
                check
                    .send(request(check.url(&concrete, None)), path, &what)
                    .await;
            }
        }
        // DELETE gets an id that does not exist: the fixtures stay for the rest.
        let id = if *method == Method::DELETE {
            "some-id"
        } else {
            sample_id(path, &target)
        };
        let concrete = fill(path, id);
        // Hostile query strings.
        for query in &queries {
            let what = format!("{method} {path}?{}", clip(query));
            check
                .send(request(check.url(&concrete, Some(query))), path, &what)
                .await;
        }
        // Hostile bodies, on every POST (also those that take none).
        if *method == Method::POST {
            for (content_type, body) in &bodies {
                let what = format!(
                    "{method} {path} with {content_type} body {}",
                    clip(&String::from_utf8_lossy(body))
                );
                let req = request(check.url(&concrete, None))
                    .header(CONTENT_TYPE, *content_type)
                    .body(body.clone());
                check.send(req, path, &what).await;
            }
        }
        // Hostile credentials on protected routes.
        if is_protected(operation) {
            let url = check.url(&concrete, None);
            let tokens: [&[u8]; 5] = [
                b"",
                b"Bearer",
                b"Bearer \xff\xfe",
                b"Basic ZnV6ejprZXk=",
                b"Bearer fuzz-key-but-longer",
            ];
            for token in tokens {
                let mut req = client.request(method.clone(), &url);
                if !token.is_empty() {
                    req = req.header(AUTHORIZATION, HeaderValue::from_bytes(token).unwrap());
                }
                if has_body(operation) {
                    req = req.json(&json!({}));
                }
                let what = format!(
                    "{method} {path} with Authorization '{}'",
                    String::from_utf8_lossy(token)
                );
                check.send(req, path, &what).await;
            }
            let long = format!("Bearer {}", "k".repeat(10 * 1024));
            let what = format!("{method} {path} with a 10 KB bearer token");
            check
                .send(
                    client
                        .request(method.clone(), &url)
                        .header(AUTHORIZATION, long),
                    path,
                    &what,
                )
                .await;
        }
        // A method the route does not serve.
        let what = format!("PUT {path}");
        check
            .send(
                client.put(check.url(&concrete, None)).bearer_auth(API_KEY),
                path,
                &what,
            )
            .await;
    }

    // A few rejections whose `detail` must name the problem.
    let named = [
        (
            Method::GET,
            "/engines/..%2F..%2Fetc%2Fpasswd".into(),
            None,
            404,
            "../../etc/passwd",
        ),
        (
            Method::GET,
            "/panel/assets/..%2F..%2FCargo.toml".into(),
            None,
            404,
            "../../Cargo.toml",
        ),
        (Method::GET, "/engines/%FF".into(), None, 400, "UTF-8"),
        (
            Method::POST,
            "/scale/18446744073709551616".into(),
            None,
            422,
            "MAX_REPLICAS",
        ),
        (
            Method::POST,
            "/engines".into(),
            Some(("application/json", r#"{"host": 5, "port": 1}"#)),
            422,
            "host",
        ),
        (
            Method::POST,
            "/engines".into(),
            Some(("text/plain", "{}")),
            415,
            "Content-Type",
        ),
        (
            Method::GET,
            format!("/streams/{}/stats?since=yesterday", target.stream_id),
            None,
            400,
            "since",
        ),
    ];
    for (method, path, body, want_status, want_text) in named {
        let mut request = client
            .request(method.clone(), orch.url(&path))
            .bearer_auth(API_KEY);
        if let Some((content_type, body)) = body {
            request = request.header(CONTENT_TYPE, content_type).body(body);
        }
        let response = request.send().await.expect("answer");
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or_default();
        let detail = answer["detail"].as_str().unwrap_or_default();
        if status != want_status || !detail.contains(want_text) {
            check.problems.push(format!(
                "{method} {}: want {want_status} naming '{want_text}', got {status} {answer}",
                clip(&path)
            ));
        }
    }

    let requests = check.requests;
    let problems = std::mem::take(&mut check.problems);
    let (live, _) = orch.get("/health/live").await;
    eprintln!(
        "hostile inputs: {requests} requests over {} operations in {:.1?}; \
         answers by status {:?}; {} engine requests off loopback caught by the trap proxy",
        operations.len(),
        started.elapsed(),
        check.statuses,
        target.trapped.load(Ordering::Relaxed),
    );
    assert_eq!(
        live,
        200,
        "the orchestrator stopped answering:\n{}",
        orch.logs()
    );
    assert!(
        problems.is_empty(),
        "{} answers broke the rules:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// `path` with every `{param}` replaced by `value`.
fn fill(path: &str, value: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        out.push_str(value);
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// An id that exists, for the routes where hostile queries and bodies should
/// get past the lookup.
fn sample_id<'a>(path: &str, target: &'a Target) -> &'a str {
    if path.starts_with("/engines/") {
        &target.engine_id
    } else if path.starts_with("/streams/") {
        &target.stream_id
    } else if path.starts_with("/scale/") {
        "1"
    } else if path.starts_with("/panel/assets/") {
        "app.js"
    } else {
        "some-id"
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= 60 {
        text.to_owned()
    } else {
        let head: String = text.chars().take(60).collect();
        format!("{head}… ({} bytes)", text.len())
    }
}

#[test]
fn summary_numbers_are_read() {
    let output = "API Operations:\n  Selected: 27/28\n  Tested: 27\n\nTest cases:\n  6001 generated, 6001 passed\n";
    assert_eq!(summary_number(output, "Selected:"), Some(27));
    assert_eq!(summary_number(output, "Tested:"), Some(27));
    assert_eq!(summary_number(output, "generated"), Some(6001));
}
