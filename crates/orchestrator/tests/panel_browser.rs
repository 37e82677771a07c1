//! The dashboard at `/panel`, in a real headless Chromium driven over the W3C
//! WebDriver protocol (chromedriver), against the real orchestrator binary and
//! emulated engines: the KPIs, the colours, "Never" and "… ago", a hung engine
//! turning red without a reload, the polling fallback, the API key, actions
//! with their confirmations, and that the page fetches nothing from any other
//! origin. The server side (content types, caching, 404s, the event stream)
//! is checked without a browser.
//!
//! Chromium and chromedriver come from Debian (`apt-get install chromium
//! chromium-driver`); `CHROME` and `CHROMEDRIVER` name other binaries. With
//! `SKIP_BROWSER_TESTS=1` the browser tests pass without running. With
//! `UPDATE_SCREENSHOTS=1` they also write the screenshots in `docs/images/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use common::{wait_for, LabelCleanup, Orch, Sim};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long the page may take to show something the server already knows.
const SHOWN: Duration = Duration::from_secs(10);

/// The key WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// WebDriver's codes for keys.
const ENTER: &str = "\u{E007}";
const ESCAPE: &str = "\u{E00C}";

const GREEN: &str = "rgb(63, 185, 80)";
const RED: &str = "rgb(248, 81, 73)";
const GREY: &str = "rgb(139, 148, 158)";

// ---- a minimal WebDriver client ----------------------------------------------------

/// The first of `names` found on `PATH`, unless the variable `var` names a binary.
fn find_program(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Whether browser tests are skipped on purpose (`SKIP_BROWSER_TESTS=1`).
fn skipped() -> bool {
    let skip = std::env::var_os("SKIP_BROWSER_TESTS").is_some_and(|v| v != "0" && !v.is_empty());
    if skip {
        eprintln!("SKIP_BROWSER_TESTS is set: not running the dashboard in a browser");
    }
    skip
}

/// A headless Chromium behind its own chromedriver, both ended on drop.
struct Browser {
    // Field order is drop order: the driver dies before the profile is removed.
    _driver: Child,
    _profile: tempfile::TempDir,
    driver_port: u16,
    session: String,
    url: String,
    client: reqwest::Client,
}

impl Browser {
    /// Starts chromedriver on an ephemeral port and opens a session with a
    /// fresh profile and a window of `width` × `height`.
    async fn launch(width: u32, height: u32) -> Browser {
        const INSTALL: &str =
            "install Debian's packages with `apt-get install -y chromium chromium-driver`, \
            name the binaries with CHROME=… CHROMEDRIVER=…, or set SKIP_BROWSER_TESTS=1";
        let driver_path = find_program("CHROMEDRIVER", &["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found; {INSTALL}"));
        let chrome_path = find_program(
            "CHROME",
            &[
                "chromium",
                "chromium-browser",
                "google-chrome",
                "google-chrome-stable",
            ],
        )
        .unwrap_or_else(|| panic!("chromium not found; {INSTALL}"));

        // With --port=0 chromedriver takes an ephemeral IPv6 port and then
        // wants the same number on IPv4; when another process holds that one
        // it exits ("IPv4 port not available"): try again with another.
        let mut attempt = 0;
        let (driver, port, mut lines) = loop {
            attempt += 1;
            let mut driver = Command::new(&driver_path)
                .arg("--port=0")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
            // "ChromeDriver was started successfully on port 37747."
            let mut lines = BufReader::new(driver.stdout.take().unwrap()).lines();
            let port = tokio::time::timeout(Duration::from_secs(20), async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(rest) = line.split("started successfully on port ").nth(1) {
                        let digits: String =
                            rest.chars().take_while(char::is_ascii_digit).collect();
                        if let Ok(port) = digits.parse::<u16>() {
                            return Some(port);
                        }
                    }
                }
                None
            })
            .await
            .ok()
            .flatten();
            match port {
                Some(port) => break (driver, port, lines),
                None if attempt < 8 => {
                    let _ = driver.kill().await;
                }
                None => panic!("chromedriver did not say which port it listens on"),
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir().unwrap();
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            // A safety net: any host name resolves to nothing, so even a bug in the
            // page could not reach past this machine.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1".to_owned(),
            "--lang=en-US".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({
            "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": { "binary": chrome_path, "args": args },
                // Lets the test read the console: script errors, CSP violations.
                "goog:loggingPrefs": { "browser": "ALL" },
            }}
        });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        // Starting Chromium takes seconds on a busy machine.
        let answer = wait_for(
            "chromedriver to accept a session",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                let url = format!("{base}/session");
                let capabilities = capabilities.clone();
                async move {
                    let response = client.post(url).json(&capabilities).send().await.ok()?;
                    Some(
                        response
                            .json::<Value>()
                            .await
                            .expect("chromedriver answers JSON"),
                    )
                }
            },
        )
        .await;
        let session = answer["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver refused the session: {answer}"));
        Browser {
            _driver: driver,
            _profile: profile,
            driver_port: port,
            session: session.to_owned(),
            url: format!("{base}/session/{session}"),
            client,
        }
    }

    /// One WebDriver command; answers its `value` or the driver's error message.
    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> Result<Value, String> {
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let ok = response.status().is_success();
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(answer["value"].clone())
        } else {
            Err(format!(
                "{}: {}",
                answer["value"]["error"], answer["value"]["message"]
            ))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, body)
            .await
            .unwrap_or_else(|e| panic!("WebDriver POST {path}: {e}"))
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Runs `body` as a function in the page; `arguments[i]` are `args`.
    async fn js(&self, body: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": body, "args": args }))
            .await
    }

    /// Polls `body` (a function body that returns a value) until it answers
    /// something other than null, false or "", and answers that.
    async fn wait(&self, what: &str, deadline: Duration, body: &str, args: Value) -> Value {
        let until = Instant::now() + deadline;
        let mut last: Value;
        loop {
            match self
                .command(
                    reqwest::Method::POST,
                    "/execute/sync",
                    json!({ "script": body, "args": args }),
                )
                .await
            {
                Ok(value) if !matches!(&value, Value::Null | Value::Bool(false)) && value != "" => {
                    return value
                }
                Ok(value) => last = value,
                Err(error) => last = Value::String(error),
            }
            if Instant::now() > until {
                panic!("timed out after {deadline:?} waiting for {what}; last answer: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The text of the first element matching `css`, trimmed.
    async fn text(&self, css: &str) -> String {
        self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent.trim() : null;",
            json!([css]),
        )
        .await
        .as_str()
        .unwrap_or_else(|| panic!("no element {css}"))
        .to_owned()
    }

    /// Waits until the text of `css` is `want`.
    async fn wait_text(&self, css: &str, want: &str) {
        self.wait(
            &format!("{css} to read {want:?}"),
            SHOWN,
            "const e = document.querySelector(arguments[0]); return !!e && e.textContent.trim() === arguments[1];",
            json!([css, want]),
        )
        .await;
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        found[ELEMENT]
            .as_str()
            .expect("an element reference")
            .to_owned()
    }

    /// Clicks like a user: the element must be visible and not covered.
    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn resize(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height }))
            .await;
    }

    /// Saves a PNG of the viewport as `docs/images/{name}` when UPDATE_SCREENSHOTS is set.
    async fn screenshot(&self, name: &str) {
        if std::env::var_os("UPDATE_SCREENSHOTS").is_none_or(|v| v.is_empty() || v == "0") {
            return;
        }
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await
            .expect("screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 PNG"))
            .expect("valid base64");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/images");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), png).unwrap();
    }

    /// Every URL the page has fetched: the document, scripts, styles, API calls
    /// and the event stream.
    async fn fetched_urls(&self) -> Vec<String> {
        let urls = self
            .js(
                "return performance.getEntries()
                    .filter(e => e.entryType === 'navigation' || e.entryType === 'resource')
                    .map(e => e.name);",
                json!([]),
            )
            .await;
        serde_json::from_value(urls).unwrap()
    }

    /// Errors on the page's console since the last call: uncaught exceptions,
    /// Content-Security-Policy violations, failed loads.
    async fn console_errors(&self) -> Vec<String> {
        let entries = self.post("/se/log", json!({ "type": "browser" })).await;
        entries
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

impl Drop for Browser {
    /// Ends the session, which makes chromedriver close Chromium: killing the
    /// driver alone would leave the browser running. Plain blocking I/O, as a
    /// destructor cannot await; it also runs when a test fails.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) else {
            return;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let request = format!(
            "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.session, self.driver_port
        );
        if stream.write_all(request.as_bytes()).is_ok() {
            // The answer comes once the browser is gone.
            let _ = stream.read_to_end(&mut Vec::new());
        }
    }
}

// ---- page helpers -------------------------------------------------------------------

fn card(id: &str) -> String {
    format!(".engine[data-id=\"{id}\"]")
}

/// Waits until the engine's card shows `health` as a word and in `colour`.
async fn wait_health(browser: &Browser, id: &str, health: &str, colour: &str, deadline: Duration) {
    browser
        .wait(
            &format!("{id} to show {health} in {colour}"),
            deadline,
            "const c = document.querySelector(arguments[0]);
             if (!c) return false;
             const dot = getComputedStyle(c.querySelector('.badge .dot')).backgroundColor;
             return c.dataset.health === arguments[1]
                 && c.querySelector('.badge .word').textContent === arguments[1]
                 && dot === arguments[2];",
            json!([card(id), health, colour]),
        )
        .await;
}

/// Registers an engine under a display name.
async fn register(orch: &Orch, port: u16, name: &str, key: Option<&str>) -> String {
    let mut request = orch
        .client
        .post(orch.url("/engines"))
        .json(&json!({ "host": "127.0.0.1", "port": port, "name": name }));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    assert!(response.status().is_success(), "register {port}");
    let body: Value = response.json().await.unwrap();
    body["container_id"].as_str().unwrap().to_owned()
}

/// Opens a playback session on an emulated engine and reports it as started, so
/// that the collector gets real statistics for it.
async fn start_stream(orch: &Orch, port: u16, stream_id: &str, infohash: &str) -> Value {
    let session: Value = orch
        .client
        .get(format!(
            "http://127.0.0.1:{port}/ace/getstream?infohash={infohash}&format=json"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let session = &session["response"];
    let (status, stream) = orch
        .post(
            "/events/stream_started",
            json!({
                "engine": { "host": "127.0.0.1", "port": port },
                "stream": { "key_type": "infohash", "key": infohash },
                "session": {
                    "playback_session_id": session["playback_session_id"],
                    "stat_url": session["stat_url"],
                    "command_url": session["command_url"],
                    "is_live": 1,
                },
                "labels": { "stream_id": stream_id },
            }),
        )
        .await;
    assert_eq!(status, 200, "stream_started: {stream}");
    stream
}

fn assert_all_local(orch: &Orch, urls: &[String]) {
    assert!(
        urls.iter().any(|u| u.ends_with("/panel/assets/app.js")),
        "the resource list misses the page's own script: {urls:?}"
    );
    let foreign: Vec<_> = urls
        .iter()
        .filter(|u| !u.starts_with(&format!("{}/", orch.base)))
        .collect();
    assert!(
        foreign.is_empty(),
        "the page fetched from another origin: {foreign:?}"
    );
}

// ---- the tests -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_pool_and_follows_it_live() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (interval, timeout) = (0.5, 0.4);
    let orch = Orch::start(dir.path(), &[]).await;
    let sim = Sim::start(3).await;
    let mut ids = Vec::new();
    for (i, port) in sim.ports.iter().enumerate() {
        ids.push(register(&orch, *port, &format!("engine-{}", i + 1), None).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", SHOWN).await;
    }
    let stream = start_stream(&orch, sim.ports[0], "ch-42", &"a1".repeat(20)).await;

    let browser = Browser::launch(1366, 1100).await;
    browser.goto(&orch.url("/panel")).await;

    // The KPIs.
    browser.wait_text("#kpi-engines", "3").await;
    browser.wait_text("#kpi-streams", "1").await;
    browser.wait_text("#kpi-healthy", "3 / 3 healthy").await;
    browser.wait_text("#connection .text", "Live").await;
    assert!(
        browser.text("#kpi-updated").await.contains(':'),
        "last update is a clock time"
    );

    // Every engine is green and says so; usage and checks are "… ago" or "Never".
    for id in &ids {
        wait_health(&browser, id, "healthy", GREEN, SHOWN).await;
    }
    let used = browser.text(&format!("{} .usage", card(&ids[0]))).await;
    assert!(is_ago(&used), "engine-1 was used just now: {used:?}");
    for id in &ids[1..] {
        assert_eq!(browser.text(&format!("{} .usage", card(id))).await, "Never");
    }
    let checked = browser.text(&format!("{} .checked", card(&ids[0]))).await;
    assert!(is_ago(&checked), "checked: {checked:?}");
    assert_eq!(
        browser.text(&format!("{} .name", card(&ids[0]))).await,
        "engine-1"
    );
    assert_eq!(
        browser.text(&format!("{} .addr", card(&ids[0]))).await,
        format!("127.0.0.1:{}", sim.ports[0])
    );
    assert_eq!(
        browser
            .text(&format!("{} .stream-count", card(&ids[0])))
            .await,
        "1"
    );
    browser
        .wait(
            "the health strip of engine-1 to show passed checks",
            SHOWN,
            "return document.querySelectorAll(arguments[0]).length >= 3;",
            json!([format!("{} .strip .tick.ok", card(&ids[0]))]),
        )
        .await;

    // The stream: its facts, its links, and a chart drawn from its statistics.
    let stream_card = ".stream[data-id=\"ch-42\"]";
    browser
        .wait_text(&format!("{stream_card} .engine-name"), "engine-1")
        .await;
    let key = browser.text(&format!("{stream_card} .key")).await;
    assert!(
        key.starts_with(&"a1".repeat(20)) && key.contains("infohash"),
        "{key}"
    );
    let links = browser
        .js(
            "return [...document.querySelectorAll(arguments[0])].map(a => a.href);",
            json!([format!("{stream_card} .links a")]),
        )
        .await;
    assert_eq!(links, json!([stream["stat_url"], stream["command_url"]]));
    browser
        .wait(
            "the stream's chart to draw a few samples",
            Duration::from_secs(15),
            "const d = document.querySelector(arguments[0])?.getAttribute('d') || '';
             return (d.match(/L/g) || []).length >= 3;",
            json!([format!("{stream_card} path.down")]),
        )
        .await;
    // The chart goes on growing while the stream's record stays the same:
    // statistics are not in the feed, so the page must fetch them itself.
    let drawn = browser
        .js(
            "return ((document.querySelector(arguments[0])?.getAttribute('d') || '').match(/L/g) || []).length;",
            json!([format!("{stream_card} path.down")]),
        )
        .await
        .as_u64()
        .unwrap();
    browser
        .wait(
            "the stream's chart to go on drawing new samples",
            Duration::from_secs(15),
            "const d = document.querySelector(arguments[0])?.getAttribute('d') || '';
             return (d.match(/L/g) || []).length > arguments[1];",
            json!([format!("{stream_card} path.down"), drawn]),
        )
        .await;
    let caption = browser.text(&format!("{stream_card} figcaption")).await;
    assert!(
        caption.contains("KB/s") && caption.contains("peers"),
        "{caption}"
    );

    // A hung engine turns red on the open page, without a reload.
    browser.js("window.notReloaded = true;", json!([])).await;
    sim.set_mode(Some(1), "hang").await;
    let hung_at = Instant::now();
    wait_health(
        &browser,
        &ids[1],
        "unhealthy",
        RED,
        Duration::from_secs_f64(interval + timeout + 2.5),
    )
    .await;
    let took = hung_at.elapsed();
    eprintln!("the hung engine turned red on the page after {took:?}");
    assert_eq!(
        browser
            .js("return window.notReloaded === true;", json!([]))
            .await,
        true,
        "the page was reloaded"
    );
    browser.wait_text("#kpi-healthy", "2 / 3 healthy").await;
    let error = browser.text(&format!("{} .error", card(&ids[1]))).await;
    assert!(error.contains("no answer within"), "{error}");
    browser
        .wait(
            "a failed check in engine-2's strip",
            SHOWN,
            "return !!document.querySelector(arguments[0]);",
            json!([format!("{} .strip .tick.fail", card(&ids[1]))]),
        )
        .await;
    wait_health(&browser, &ids[0], "healthy", GREEN, SHOWN).await;
    browser.screenshot("panel-cards.png").await;

    // Choosing an engine (here with the keyboard: Enter on its name) shows its
    // transitions with their reasons.
    browser
        .type_into(&format!("{} .name", card(&ids[1])), ENTER)
        .await;
    browser
        .wait(
            "the detail dialog with the transition to unhealthy",
            SHOWN,
            "const d = document.getElementById('detail');
             const t = d.querySelector('.transition[data-to=\"unhealthy\"]');
             return d.open && t && t.textContent;",
            json!([]),
        )
        .await;
    assert_eq!(browser.text("#detail-title").await, "engine-2");
    let transition = browser
        .text("#detail-transitions .transition[data-to=\"unhealthy\"]")
        .await;
    assert!(
        transition.contains("healthy → unhealthy") && transition.contains("no answer"),
        "{transition}"
    );
    browser.screenshot("panel-engine-detail.png").await;
    browser.type_into("#detail [data-close]", ESCAPE).await;
    browser
        .wait(
            "the detail dialog to close",
            SHOWN,
            "return !document.getElementById('detail').open;",
            json!([]),
        )
        .await;

    // One row per engine, on request.
    browser.click("[data-view=\"rows\"]").await;
    browser
        .wait(
            "the rows layout",
            SHOWN,
            "return document.getElementById('engines').classList.contains('rows');",
            json!([]),
        )
        .await;
    browser.screenshot("panel-rows.png").await;
    browser.click("[data-view=\"cards\"]").await;

    // A phone: one column, and still everything on it.
    browser.resize(390, 1400).await;
    browser
        .wait(
            "one column of engine cards",
            SHOWN,
            "const cards = [...document.querySelectorAll('.engine')];
             return cards.length === 3 && cards.every(c => c.offsetLeft === cards[0].offsetLeft)
                 && document.documentElement.scrollWidth <= window.innerWidth;",
            json!([]),
        )
        .await;
    browser.screenshot("panel-phone.png").await;
    browser.resize(1366, 1100).await;

    // Stopping a stream asks first, then the stream goes.
    browser.click(&format!("{stream_card} .stop")).await;
    browser
        .wait(
            "the confirmation",
            SHOWN,
            "return document.getElementById('confirm').open;",
            json!([]),
        )
        .await;
    browser.click("#confirm-ok").await;
    browser.wait_text("#kpi-streams", "0").await;
    assert_eq!(orch.get("/streams/ch-42").await.1["status"], "ended");

    // Deleting an engine asks first; cancelling keeps it.
    let delete = format!("{} .delete", card(&ids[2]));
    browser.click(&delete).await;
    browser
        .wait(
            "the delete confirmation naming the engine",
            SHOWN,
            "const d = document.getElementById('confirm');
             return d.open && document.getElementById('confirm-message').textContent.includes(arguments[0]);",
            json!([ids[2]]),
        )
        .await;
    browser.click("#confirm-cancel").await;
    browser
        .wait(
            "the confirmation to close",
            SHOWN,
            "return !document.getElementById('confirm').open;",
            json!([]),
        )
        .await;
    assert_eq!(orch.get(&format!("/engines/{}", ids[2])).await.0, 200);
    browser.wait_text("#kpi-engines", "3").await;

    browser.click(&delete).await;
    browser
        .wait(
            "the confirmation",
            SHOWN,
            "return document.getElementById('confirm').open;",
            json!([]),
        )
        .await;
    browser.click("#confirm-ok").await;
    browser
        .wait(
            "the deleted engine's card to go",
            SHOWN,
            "return !document.querySelector(arguments[0]);",
            json!([card(&ids[2])]),
        )
        .await;
    browser.wait_text("#kpi-engines", "2").await;
    assert_eq!(orch.get(&format!("/engines/{}", ids[2])).await.0, 404);
    browser
        .wait(
            "a toast saying so",
            SHOWN,
            "return [...document.querySelectorAll('.toast')].some(t => t.textContent === 'engine-3 deleted');",
            json!([]),
        )
        .await;

    // Nothing of all this came from anywhere but the orchestrator.
    let urls = browser.fetched_urls().await;
    assert!(
        urls.iter().any(|u| u.contains("/streams/ch-42/stats")),
        "{urls:?}"
    );
    assert_all_local(&orch, &urls);
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the console shows errors: {errors:#?}");
}

/// A player reading `url` in the background until it is aborted (or dropped
/// with the runtime).
async fn open_player(client: &reqwest::Client, url: String) -> tokio::task::JoinHandle<()> {
    let mut response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "the proxy refused a player");
    tokio::spawn(async move { while let Ok(Some(_)) = response.chunk().await {} })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxied_streams_show_viewers_player_url_and_failovers() {
    if skipped() {
        return;
    }
    const CONTENT: &str = "0123456789abcdef0123456789abcdef01234567";
    let video = common::test_video(6);
    let dir = tempfile::tempdir().unwrap();
    let sim = Sim::start_with(&["--count", "2", "--ts-file", &video]).await;
    // No sweeps: what marks the hung engine is the proxy's own check.
    let orch = Orch::start(
        dir.path(),
        &[("PROXY_STALL_S", "1.5"), ("HEALTH_CHECK_INTERVAL_S", "60")],
    )
    .await;
    let names = ["engine-a", "engine-b"];
    let mut ids = Vec::new();
    for (port, name) in sim.ports.iter().zip(names) {
        ids.push(register(&orch, *port, name, None).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", SHOWN).await;
    }

    // Streams reported by start events: one named like the built-in proxy's
    // (no viewers yet, no failovers) and one of another proxy (not counted).
    let infohash = "b2".repeat(20);
    start_stream(&orch, sim.ports[0], "proxy-test", &infohash).await;
    start_stream(&orch, sim.ports[0], "ch-7", &"c3".repeat(20)).await;

    let browser = Browser::launch(1366, 1000).await;
    browser.goto(&orch.url("/panel")).await;
    let test_card = ".stream[data-id=\"proxy-test\"]";
    let other_card = ".stream[data-id=\"ch-7\"]";
    browser
        .wait_text(&format!("{test_card} .viewers"), "0 viewers")
        .await;
    browser
        .wait_text(&format!("{other_card} .viewers"), "–")
        .await;
    let shown = browser
        .js(
            "const q = (css) => document.querySelector(css);
             return [q(arguments[0] + ' .failovers').hidden, q(arguments[1] + ' .failovers').hidden,
                     q(arguments[0] + ' .player').hidden, q(arguments[1] + ' .player').hidden,
                     q(arguments[0] + ' .player-url').textContent];",
            json!([test_card, other_card]),
        )
        .await;
    assert_eq!(
        shown,
        json!([
            true,
            true,
            false,
            true,
            orch.url(&format!("/ace/getstream?infohash={infohash}"))
        ]),
        "no failovers; a player URL only for the proxied stream"
    );
    for id in ["proxy-test", "ch-7"] {
        let (status, answer) = orch.delete(&format!("/streams/{id}")).await;
        assert_eq!(status, 200, "stop {id}: {answer}");
    }
    browser
        .wait(
            "the reported streams to go",
            SHOWN,
            "return document.querySelectorAll('.stream').length === 0;",
            json!([]),
        )
        .await;

    // Two players of one content through the proxy: one stream, two viewers.
    let client = reqwest::Client::new();
    let url = orch.url(&format!("/ace/getstream?id={CONTENT}"));
    let players = vec![
        open_player(&client, url.clone()).await,
        open_player(&client, url.clone()).await,
    ];
    let started = || async {
        orch.get("/streams?status=started")
            .await
            .1
            .as_array()
            .unwrap()
            .clone()
    };
    let stream = wait_for("two viewers in GET /streams", SHOWN, || async {
        let s = started().await;
        (s.len() == 1 && s[0]["viewers"] == 2).then(|| s[0].clone())
    })
    .await;
    let stream_id = stream["id"].as_str().unwrap().to_owned();
    assert!(stream_id.starts_with("proxy-"), "{stream}");
    let first = stream["container_id"].as_str().unwrap().to_owned();
    let index = ids.iter().position(|id| *id == first).unwrap();
    let stream_card = format!(".stream[data-id=\"{stream_id}\"]");
    browser
        .wait_text(&format!("{stream_card} .viewers"), "2 viewers")
        .await;
    browser
        .wait_text(&format!("{stream_card} .engine-name"), names[index])
        .await;
    assert_eq!(
        browser.text(&format!("{stream_card} .player-url")).await,
        url
    );
    browser.click(&format!("{stream_card} .copy")).await;
    browser
        .wait(
            "the copy button to say what it did",
            SHOWN,
            "return [...document.querySelectorAll('.toast')].some(t => t.textContent.startsWith('Player URL'));",
            json!([]),
        )
        .await;

    // The serving engine hangs: the proxy moves the stream to the other one.
    sim.set_mode(Some(index), "hang").await;
    let moved = wait_for(
        "the failover in GET /streams",
        Duration::from_secs(15),
        || async {
            let s = started().await;
            (s.len() == 1 && s[0]["failovers"].as_array().is_some_and(|f| !f.is_empty()))
                .then(|| s[0].clone())
        },
    )
    .await;
    let failover = &moved["failovers"][0];
    assert_eq!(failover["from"], first.as_str(), "{failover}");
    let gap = failover["gap_ms"].as_u64().unwrap();
    browser
        .wait_text(&format!("{stream_card} .failover-count"), "1 failover")
        .await;
    browser
        .click(&format!("{stream_card} .failovers summary"))
        .await;
    let item = browser
        .wait(
            "the failover in the opened list",
            SHOWN,
            "const d = document.querySelector(arguments[0] + ' .failovers');
             const f = d && d.open && d.querySelector('.failover');
             return f && [f.querySelector('.move').textContent, f.querySelector('.gap').textContent,
                          f.querySelector('.reason').textContent, f.querySelector('time').textContent];",
            json!([stream_card]),
        )
        .await;
    assert_eq!(item[0], format!("{} → {}", names[index], names[1 - index]));
    assert_eq!(item[1], format!("{gap} ms gap"));
    assert_eq!(item[2], failover["reason"], "{failover}");
    assert!(
        item[3].as_str().unwrap().contains(':'),
        "a clock time: {item}"
    );
    // Both viewers are still there, now on the other engine.
    browser
        .wait_text(&format!("{stream_card} .viewers"), "2 viewers")
        .await;
    browser
        .wait_text(&format!("{stream_card} .engine-name"), names[1 - index])
        .await;
    // Tall enough for the engines and the stream in one picture.
    browser.resize(1366, 1400).await;
    browser.js("window.scrollTo(0, 0);", json!([])).await;
    browser.screenshot("panel-proxy-failover.png").await;

    // The hung engine's history has the proxy's check, under its source.
    browser.click(&format!("{} .name", card(&ids[index]))).await;
    browser
        .wait(
            "a check with source proxy in the engine's detail",
            SHOWN,
            "const d = document.getElementById('detail');
             return d.open && [...d.querySelectorAll('#detail-checks tr')]
                 .some(r => r.cells[2].textContent === 'proxy' && r.classList.contains('fail'));",
            json!([]),
        )
        .await;

    for player in players {
        player.abort();
    }
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the console shows errors: {errors:#?}");
}

/// Facts about the `.name` of the engine card `css`: its text, its title, its
/// height against one line-height, and whether its text is cut off.
const NAME_BOX: &str = "const e = document.querySelector(arguments[0] + ' .name');
     if (!e) return null;
     const style = getComputedStyle(e);
     return {
         text: e.textContent,
         title: e.title,
         lines: e.getBoundingClientRect().height / parseFloat(style.lineHeight),
         elided: e.scrollWidth > e.clientWidth,
         ellipsis: style.textOverflow,
         width: e.clientWidth,
     };";

/// An engine's name is one line on its card and in its row: an address does
/// not break in the middle (`127.0.0.1:` / `28828`), a name too long for its
/// place is elided, and the full name is the element's tooltip.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_name_stays_on_one_line_with_the_full_text_on_hover() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(dir.path(), &[("HEALTH_CHECK_INTERVAL_S", "60")]).await;
    // No engine listens on these ports: the badge says "unhealthy" or
    // "unknown", the widest words it has.
    let address = orch.register(28828).await;
    let long_name = format!("engine-{}", "with-a-very-long-name-".repeat(6));
    let long = register(&orch, 28829, &long_name, None).await;
    assert_eq!(
        address, "127.0.0.1:28828",
        "an unnamed engine is named by its address"
    );

    let browser = Browser::launch(1366, 1100).await;
    browser.goto(&orch.url("/panel")).await;
    browser.wait_text("#kpi-engines", "2").await;

    // Every layout: cards, rows, and cards on a phone.
    for (layout, width) in [("cards", 1366), ("rows", 1366), ("cards", 390)] {
        browser.resize(width, 1100).await;
        browser.click(&format!("[data-view=\"{layout}\"]")).await;
        browser
            .wait(
                "the layout",
                SHOWN,
                "return document.getElementById('engines').classList.contains(arguments[0]);",
                json!([layout]),
            )
            .await;
        let context = format!("{layout} at {width} px");
        let shown = browser
            .wait("the address card", SHOWN, NAME_BOX, json!([card(&address)]))
            .await;
        assert_eq!(shown["text"], "127.0.0.1:28828", "{context}: {shown}");
        let lines = shown["lines"].as_f64().unwrap();
        assert!(
            lines < 1.5,
            "{context}: the address is on {lines} lines: {shown}"
        );
        assert_eq!(
            shown["elided"], false,
            "{context}: an address this short fits whole: {shown}"
        );
        assert!(
            shown["title"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:28828"),
            "{context}: {shown}"
        );

        let shown = browser
            .wait(
                "the long name's card",
                SHOWN,
                NAME_BOX,
                json!([card(&long)]),
            )
            .await;
        assert_eq!(shown["text"], long_name.as_str(), "{context}: {shown}");
        let lines = shown["lines"].as_f64().unwrap();
        assert!(
            lines < 1.5,
            "{context}: the long name is on {lines} lines: {shown}"
        );
        assert_eq!(shown["elided"], true, "{context}: {shown}");
        assert_eq!(shown["ellipsis"], "ellipsis", "{context}: {shown}");
        assert!(
            shown["title"].as_str().unwrap().starts_with(&long_name),
            "{context}: the full name is the tooltip: {shown}"
        );
        // Nothing overflows the page.
        assert_eq!(
            browser
                .js(
                    "return document.documentElement.scrollWidth <= window.innerWidth;",
                    json!([])
                )
                .await,
            true,
            "{context}: the page scrolls sideways"
        );
    }
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "the console shows errors: {errors:#?}");
}

/// Whether `text` reads like "0s ago", "12s ago", "5m ago", "2h ago" or "3d ago".
fn is_ago(text: &str) -> bool {
    text.strip_suffix(" ago").is_some_and(|n| {
        let digits = n.trim_end_matches(['s', 'm', 'h', 'd']);
        n.len() == digits.len() + 1
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_the_api_key_and_failed_actions() {
    if skipped() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = "panel-test-key";
    // No sweeps, and a hung engine with a long timeout: the check a new
    // engine gets at once stays unanswered, so the engine stays "unknown"
    // until the test lets it answer. Docker unreachable, so provisioning
    // fails without side effects.
    let orch = Orch::start(
        dir.path(),
        &[
            ("API_KEY", key),
            ("HEALTH_CHECK_INTERVAL_S", "3600"),
            ("HEALTH_CHECK_TIMEOUT_S", "60"),
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
        ],
    )
    .await;
    let sim = Sim::start(1).await;
    sim.set_mode(None, "hang").await;

    let browser = Browser::launch(1280, 900).await;
    browser.goto(&orch.url("/panel?push=0")).await;
    browser.wait_text("#kpi-engines", "0").await;
    browser
        .wait_text("#connection .text", "Polling every 5 s")
        .await;
    browser
        .js(
            "const s = document.getElementById('poll-interval'); s.value = '2';
             s.dispatchEvent(new Event('change'));",
            json!([]),
        )
        .await;
    browser
        .wait_text("#connection .text", "Polling every 2 s")
        .await;

    // Polling picks up an engine registered after the page loaded.
    let id = register(&orch, sim.port(), "engine-1", Some(key)).await;
    browser.wait_text("#kpi-engines", "1").await;
    wait_health(&browser, &id, "unknown", GREY, SHOWN).await;
    assert_eq!(
        browser.text(&format!("{} .checked", card(&id))).await,
        "Never"
    );
    assert_eq!(
        browser.text(&format!("{} .usage", card(&id))).await,
        "Never"
    );
    browser.wait_text("#kpi-healthy", "0 / 1 healthy").await;

    // Without the key, an action says what is wrong and changes nothing.
    browser.click(&format!("{} .check", card(&id))).await;
    let toast = browser
        .wait(
            "an error toast about the key",
            SHOWN,
            "return [...document.querySelectorAll('.toast.error')].map(t => t.textContent).join('\\n');",
            json!([]),
        )
        .await;
    let toast = toast.as_str().unwrap();
    assert!(
        toast.contains("HTTP 401") && toast.contains("API key"),
        "{toast}"
    );
    assert_eq!(orch.engine(&id).await["health_status"], "unknown");
    // The console shows the refused request: the empty console of the other
    // test means something.
    let errors = browser.console_errors().await;
    assert!(errors.iter().any(|e| e.contains("401")), "{errors:#?}");

    // With the key typed in, "Check now" works and the engine turns green.
    browser.type_into("#api-key", key).await;
    browser.click(&format!("{} .check", card(&id))).await;
    sim.set_mode(None, "healthy").await;
    wait_health(&browser, &id, "healthy", GREEN, SHOWN).await;
    let checked = browser.text(&format!("{} .checked", card(&id))).await;
    assert!(is_ago(&checked), "{checked}");

    // The key outlives a reload.
    browser.goto(&orch.url("/panel?push=0")).await;
    browser
        .wait(
            "the key to be filled in again",
            SHOWN,
            "return document.getElementById('api-key').value === arguments[0];",
            json!([key]),
        )
        .await;

    // "Check all" with a failing engine: red, with the key from storage. (An
    // engine answering 500, not a hung one: this orchestrator waits 60 s
    // for a hung engine, see above.)
    sim.set_mode(Some(0), "error").await;
    browser.wait_text("#kpi-engines", "1").await;
    browser.click("#check-all").await;
    wait_health(&browser, &id, "unhealthy", RED, SHOWN).await;
    browser.wait_text("#kpi-healthy", "0 / 1 healthy").await;

    // A failed provisioning shows the API's own `detail`.
    let response = orch
        .client
        .post(orch.url("/provision/acestream"))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert!(
        !status.is_success(),
        "provisioning should fail without Docker: {answer}"
    );
    let detail = answer["detail"].as_str().unwrap().to_owned();
    browser.click("#provision").await;
    browser
        .wait(
            "the provisioning error",
            Duration::from_secs(20),
            "return [...document.querySelectorAll('.toast.error')]
                 .some(t => t.textContent.includes(arguments[0]) && t.textContent.includes(arguments[1]));",
            json!([detail, format!("HTTP {}", status.as_u16())]),
        )
        .await;

    let urls = browser.fetched_urls().await;
    assert!(
        urls.iter().any(|u| u.contains("/panel/snapshot")),
        "{urls:?}"
    );
    assert!(
        !urls.iter().any(|u| u.contains("/panel/events")),
        "push=0 opens no event stream: {urls:?}"
    );
    assert_all_local(&orch, &urls);
}

// ---- the server side, without a browser -------------------------------------------------

/// One server-sent event of the dashboard's feed.
struct FeedEvent {
    kind: String,
    id: Option<String>,
    data: Value,
    /// Bytes of the event on the wire.
    size: usize,
}

/// Reads server-sent events from a response.
struct EventReader {
    response: reqwest::Response,
    buffer: String,
}

impl EventReader {
    async fn open(orch: &Orch, last_event_id: Option<&str>) -> EventReader {
        let mut request = reqwest::Client::new().get(orch.url("/panel/events"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        EventReader {
            response,
            buffer: String::new(),
        }
    }

    /// The next `snapshot` or `delta`, or None if none arrives within `deadline`.
    async fn next(&mut self, deadline: Duration) -> Option<FeedEvent> {
        let until = Instant::now() + deadline;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let kind = block
                    .lines()
                    .find_map(|l| l.strip_prefix("event: "))
                    .map(str::to_owned);
                let Some(kind) = kind else { continue };
                let id = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .map(str::to_owned);
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect();
                let data = serde_json::from_str(&data).expect("event data is JSON");
                return Some(FeedEvent {
                    kind,
                    id,
                    data,
                    size: block.len(),
                });
            }
            let chunk = tokio::time::timeout_at(until, self.response.chunk())
                .await
                .ok()?
                .expect("event stream read")
                .expect("event stream open");
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next `snapshot` event's data.
    async fn next_snapshot(&mut self, deadline: Duration) -> Option<Value> {
        let until = Instant::now() + deadline;
        loop {
            let event = self
                .next(until.saturating_duration_since(Instant::now()))
                .await?;
            if event.kind == "snapshot" {
                return Some(event.data);
            }
        }
    }
}

/// What a dashboard knows, built from a snapshot and the deltas after it the
/// way the page does (docs/DASHBOARD.md).
#[derive(Debug, PartialEq, Default, Clone)]
struct PanelState {
    version: String,
    engines: std::collections::BTreeMap<String, Value>,
    checks: std::collections::BTreeMap<String, Vec<Value>>,
    streams: std::collections::BTreeMap<String, Value>,
    nodes: std::collections::BTreeMap<String, Value>,
}

impl PanelState {
    fn from_snapshot(snapshot: &Value) -> PanelState {
        let mut state = PanelState {
            version: snapshot["version"].as_str().unwrap().to_owned(),
            ..Default::default()
        };
        for engine in snapshot["engines"].as_array().unwrap() {
            let id = engine["container_id"].as_str().unwrap().to_owned();
            let checks = snapshot["recent_checks"][&id].as_array().cloned();
            state.checks.insert(id.clone(), checks.unwrap_or_default());
            state.engines.insert(id, engine.clone());
        }
        for stream in snapshot["streams"].as_array().unwrap() {
            state
                .streams
                .insert(stream["id"].as_str().unwrap().to_owned(), stream.clone());
        }
        for node in snapshot["vpn_nodes"].as_array().unwrap() {
            state
                .nodes
                .insert(node["name"].as_str().unwrap().to_owned(), node.clone());
        }
        state
    }

    fn apply(&mut self, delta: &Value) {
        fn merge(items: &mut std::collections::BTreeMap<String, Value>, section: &Value) {
            for (id, patch) in section.as_object().into_iter().flatten() {
                if patch.is_null() {
                    items.remove(id);
                    continue;
                }
                let item = items.entry(id.clone()).or_insert_with(|| json!({}));
                for (field, value) in patch.as_object().unwrap() {
                    item[field] = value.clone();
                }
            }
        }
        let t = delta["t"].as_i64().unwrap();
        merge(&mut self.engines, &delta["engines"]);
        for (id, patch) in delta["engines"].as_object().into_iter().flatten() {
            if patch.is_null() {
                self.checks.remove(id);
            }
        }
        for (id, fresh) in delta["checks"].as_object().into_iter().flatten() {
            let fresh: Vec<Value> = fresh
                .as_array()
                .unwrap()
                .iter()
                .map(|c| {
                    let ts = chrono::DateTime::from_timestamp_millis(t - c[0].as_i64().unwrap())
                        .unwrap()
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let mut check = json!({"ts": ts, "ok": c[1] == 1});
                    if let Some(error) = c.get(2) {
                        check["error"] = error.clone();
                    }
                    check
                })
                .collect();
            let patch = &delta["engines"][id];
            if patch.get("last_health_check").is_none() {
                self.engines.get_mut(id).unwrap()["last_health_check"] = fresh[0]["ts"].clone();
            }
            let kept = self.checks.entry(id.clone()).or_default();
            let mut merged = fresh;
            merged.append(kept);
            merged.truncate(30);
            *kept = merged;
        }
        merge(&mut self.streams, &delta["streams"]);
        merge(&mut self.nodes, &delta["vpn_nodes"]);
        self.version = delta["version"].as_str().unwrap().to_owned();
    }

    /// Applies every event until the stream is quiet for `quiet`.
    async fn follow(&mut self, events: &mut EventReader, quiet: Duration) -> usize {
        let mut count = 0;
        while let Some(event) = events.next(quiet).await {
            count += 1;
            match event.kind.as_str() {
                "snapshot" => *self = PanelState::from_snapshot(&event.data),
                "delta" => self.apply(&event.data),
                other => panic!("unexpected event {other}"),
            }
            assert_eq!(event.id.as_deref(), Some(self.version.as_str()));
        }
        count
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vpn_node_shows_its_engines_and_turns_red_when_its_tunnel_drops() {
    if skipped() {
        return;
    }
    const KEY: &str = "panel-vpn-key";
    let label = common::unique("panel-vpn-label");
    let _cleanup = LabelCleanup {
        label: label.clone(),
        pid: None,
    };
    let gluetun = common::GluetunNode::start(
        &common::unique("panel-vpn"),
        &label,
        KEY,
        &[
            "GLUETUN_SIM_COUNTRY=Sweden",
            "GLUETUN_SIM_FORWARDED_PORT=41234",
        ],
        &[],
    );
    let node = gluetun.name.clone();

    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("GLUETUN_CONTAINER_NAME", node.as_str()),
            ("GLUETUN_API_KEY", KEY),
            ("VPN_CHECK_INTERVAL_S", "0.5"),
        ],
    )
    .await;
    let sim = Sim::start(1).await;
    let (status, engine) = orch
        .post(
            "/engines",
            json!({ "host": "127.0.0.1", "port": sim.ports[0], "name": "engine-vpn",
                    "labels": { "acestream.vpn_node": node } }),
        )
        .await;
    assert_eq!(status, 201, "{engine}");
    let engine_id = engine["container_id"].as_str().unwrap().to_owned();

    let browser = Browser::launch(1280, 1000).await;
    browser.goto(&orch.url("/panel")).await;
    let node_card = format!(".vpn-node[data-id=\"{node}\"]");
    // The node's card, its badge in the engines' colours, what Gluetun reports
    // and the engine under it; the engine's card names the node.
    let shows = "const [sel, health, word, colour, engineSel, engineId, down] = arguments;
         const c = document.querySelector(sel);
         const e = document.querySelector(engineSel);
         if (!c || !e || document.getElementById('vpn').hidden) return false;
         const dot = getComputedStyle(c.querySelector('.badge .dot')).backgroundColor;
         const item = c.querySelector(`.node-engine[data-id=\"${engineId}\"]`);
         return c.dataset.health === health
             && c.querySelector('.badge .word').textContent === word
             && dot === colour
             && c.querySelector('.public-ip').textContent === '203.0.113.7 (Sweden)'
             && c.querySelector('.forwarded-port').textContent === '41234'
             && !!item && item.querySelector('.engine-name').textContent === 'engine-vpn'
             && item.dataset.vpnDown === down
             && (item.querySelector('.vpn-down')?.textContent ?? '') === (down === 'true' ? 'VPN down' : '')
             && e.dataset.vpnDown === down
             && e.querySelector('.vpn .vpn-name')?.textContent === c.dataset.id
             && (e.querySelector('.vpn .vpn-down')?.textContent ?? '') === (down === 'true' ? 'VPN down' : '');";
    let engine_card = card(&engine_id);
    browser
        .wait(
            "the node healthy with its IP, country, port and engine",
            SHOWN,
            shows,
            json!([
                node_card,
                "healthy",
                "healthy",
                GREEN,
                engine_card,
                engine_id,
                "false"
            ]),
        )
        .await;
    assert_eq!(
        browser.text(&format!("{node_card} .error")).await,
        "",
        "no error on a healthy node"
    );
    assert_eq!(
        browser.text(&format!("{node_card} .node-credential")).await,
        "static node",
        "a configured node holds no credential of VPN_CONFIGS_DIR"
    );

    gluetun.set_tunnel("stopped").await;
    browser
        .wait(
            "the node down in red, its engine marked",
            Duration::from_secs(15),
            shows,
            json!([
                node_card,
                "unhealthy",
                "down",
                RED,
                engine_card,
                engine_id,
                "true"
            ]),
        )
        .await;
    let error = browser.text(&format!("{node_card} .error")).await;
    assert!(error.contains("tunnel is stopped"), "the reason: {error:?}");
    // The engine itself still answers its probes: only the node is at fault.
    let greyed = browser
        .js(
            "return getComputedStyle(document.querySelector(arguments[0] + ' .addr').parentElement).opacity;",
            json!([engine_card]),
        )
        .await;
    assert_eq!(greyed, "0.5", "the engine behind a down node is greyed");
    browser.screenshot("panel-vpn-down.png").await;

    gluetun.set_tunnel("running").await;
    browser
        .wait(
            "the node healthy again",
            Duration::from_secs(15),
            shows,
            json!([
                node_card,
                "healthy",
                "healthy",
                GREEN,
                engine_card,
                engine_id,
                "false"
            ]),
        )
        .await;
    // Pushed, not polled.
    assert_eq!(
        browser
            .js(
                "return document.getElementById('connection').dataset.state;",
                json!([])
            )
            .await,
        "live"
    );
    let errors = browser.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert_all_local(&orch, &browser.fetched_urls().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_panel_routes_serve_assets_snapshots_and_events() {
    let dir = tempfile::tempdir().unwrap();
    // No sweeps, and the engine below hangs with a long timeout, so the check
    // a new engine gets at once leaves it "unknown" until the test asks.
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "3600"),
            ("HEALTH_CHECK_TIMEOUT_S", "60"),
        ],
    )
    .await;
    let client = reqwest::Client::new();

    let page = client.get(orch.url("/panel")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("connect-src 'self'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(page.text().await.unwrap().contains("/panel/assets/app.js"));

    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ] {
        let url = orch.url(&format!("/panel/assets/{file}"));
        let response = client.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.headers()["cache-control"], "no-cache");
        let etag = response.headers()["etag"].clone();
        let again = client
            .get(&url)
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{file} is revalidated by its ETag");
    }
    let (status, body) = orch.get("/panel/assets/nope.js").await;
    assert_eq!(status, 404);
    assert!(
        body["detail"].as_str().unwrap().contains("nope.js"),
        "{body}"
    );

    // The snapshot carries exactly GET /engines.
    let sim = Sim::start(1).await;
    sim.set_mode(None, "hang").await;
    let id = orch.register(sim.port()).await;
    let (status, snapshot) = orch.get("/panel/snapshot").await;
    assert_eq!(status, 200);
    assert_eq!(snapshot["engines"], orch.get("/engines").await.1);
    assert_eq!(snapshot["streams"], json!([]));
    assert!(snapshot["generated_at"].as_str().unwrap().ends_with('Z'));

    // The event stream: a snapshot at once, a delta after a change, and bursts
    // of changes folded together.
    let mut events = EventReader::open(&orch, None).await;
    let first = events
        .next(Duration::from_secs(5))
        .await
        .expect("a snapshot on connect");
    assert_eq!(first.kind, "snapshot");
    assert_eq!(first.id.as_deref(), first.data["version"].as_str());
    let first = first.data;
    assert_eq!(first["engines"][0]["health_status"], "unknown");
    assert_eq!(first["recent_checks"][&id], json!([]));
    assert_eq!(first["vpn_nodes"], json!([]), "no VPN nodes without VPN");

    sim.set_mode(None, "healthy").await;
    let asked = Instant::now();
    let (status, _) = orch
        .post(&format!("/engines/{id}/health/check"), Value::Null)
        .await;
    assert_eq!(status, 200);
    let after_check = loop {
        let event = events.next(SHOWN).await.expect("a delta after the check");
        assert_eq!(event.kind, "delta");
        if event.data["engines"][&id]["health_status"] == "healthy" {
            break event.data;
        }
    };
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "pushed late: {:?}",
        asked.elapsed()
    );
    assert_eq!(after_check["checks"][&id][0][1], 1, "{after_check}");

    // 20 changes in a burst make a handful of events, not 20.
    let burst = Instant::now();
    for _ in 0..20 {
        orch.post(&format!("/engines/{id}/health/check"), Value::Null)
            .await;
    }
    let burst_took = burst.elapsed();
    // The stream falls silent once the burst is told.
    let mut count = 0;
    while events.next(Duration::from_millis(1000)).await.is_some() {
        count += 1;
    }
    let most = (burst_took.as_millis() / 500) as usize + 2;
    assert!(
        (1..=most).contains(&count),
        "{count} events for 20 changes in {burst_took:?}"
    );
}

/// Starts an orchestrator without sweeps and `count` healthy engines, and
/// waits until every one of them had its first check.
async fn quiet_pool(dir: &Path, count: usize) -> (Orch, Sim, Vec<String>) {
    let orch = Orch::start(
        dir,
        &[
            ("HEALTH_CHECK_INTERVAL_S", "3600"),
            ("HEALTH_CHECK_TIMEOUT_S", "1"),
            ("COLLECT_INTERVAL_S", "3600"),
        ],
    )
    .await;
    let sim = Sim::start(count).await;
    let mut ids = Vec::new();
    for &port in &sim.ports {
        ids.push(orch.register(port).await);
    }
    for id in &ids {
        orch.wait_health(id, "healthy", SHOWN).await;
    }
    (orch, sim, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_to_one_engine_sends_a_small_delta_naming_it_only() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, sim, ids) = quiet_pool(dir.path(), 40).await;
    let mut events = EventReader::open(&orch, None).await;
    let snapshot = events.next_snapshot(SHOWN).await.expect("a snapshot");
    assert_eq!(snapshot["engines"].as_array().unwrap().len(), 40);
    let snapshot_bytes = snapshot.to_string().len();
    // Whatever the registration left to tell is told.
    while events.next(Duration::from_millis(800)).await.is_some() {}

    // A routine check of one engine: its check and its latency, nothing else.
    let one = &ids[7];
    orch.post(&format!("/engines/{one}/health/check"), Value::Null)
        .await;
    let event = events.next(SHOWN).await.expect("a delta after one check");
    assert_eq!(event.kind, "delta");
    let delta = &event.data;
    let named: Vec<&String> = delta["engines"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
        .chain(delta["checks"].as_object().unwrap().keys())
        .collect();
    assert!(named.iter().all(|k| *k == one), "only {one}: {delta}");
    assert!(
        delta.get("streams").is_none() && delta.get("vpn_nodes").is_none(),
        "{delta}"
    );
    assert!(
        event.size < 400,
        "{} bytes for one check (the snapshot has {snapshot_bytes}): {delta}",
        event.size
    );

    // The same engine hangs: it turns unhealthy, with the reason, and still
    // nothing is said about the 39 others.
    sim.set_mode(Some(7), "hang").await;
    orch.post(&format!("/engines/{one}/health/check"), Value::Null)
        .await;
    let event = loop {
        let event = events.next(SHOWN).await.expect("a delta after the hang");
        if event.data["engines"][one]["health_status"] == "unhealthy" {
            break event;
        }
    };
    let patch = event.data["engines"][one].as_object().unwrap();
    assert!(
        patch["last_health_error"]
            .as_str()
            .unwrap()
            .contains("no answer"),
        "{patch:?}"
    );
    assert_eq!(event.data["engines"].as_object().unwrap().len(), 1);
    assert_eq!(event.data["checks"].as_object().unwrap().len(), 1);
    assert!(event.size < 1024, "{} bytes: {}", event.size, event.data);
    assert!(
        !patch.contains_key("host") && !patch.contains_key("labels"),
        "only changed fields: {patch:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_that_reconnects_ends_with_the_state_of_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let (orch, sim, ids) = quiet_pool(dir.path(), 6).await;
    let mut events = EventReader::open(&orch, None).await;
    let mut page = PanelState::default();
    page.follow(&mut events, Duration::from_millis(800)).await;
    assert_eq!(page.engines.len(), 6);
    // The page goes away (a laptop closed, a proxy restarted)…
    drop(events);
    let left_at = page.version.clone();
    let page_when_it_left = page.clone();

    // …while the pool changes: a check, a hang, a deletion, a new engine, a stream.
    orch.post(&format!("/engines/{}/health/check", ids[0]), Value::Null)
        .await;
    sim.set_mode(Some(1), "hang").await;
    orch.post(&format!("/engines/{}/health/check", ids[1]), Value::Null)
        .await;
    let (status, _) = orch.delete(&format!("/engines/{}", ids[2])).await;
    assert_eq!(status, 200);
    let extra = Sim::start(1).await;
    let new_id = orch.register(extra.port()).await;
    orch.wait_health(&new_id, "healthy", SHOWN).await;
    let (status, body) = orch
        .post(
            "/events/stream_started",
            common::started_event(sim.ports[3], "feedface", "s1"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Let the feed publish these as deltas before the page comes back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut poke = EventReader::open(&orch, None).await;
    poke.next_snapshot(SHOWN).await.unwrap();
    drop(poke);

    // It comes back with the version it had: it gets what it missed, not a
    // snapshot, and ends where a fresh page starts.
    let mut events = EventReader::open(&orch, Some(&left_at)).await;
    let first = events.next(SHOWN).await.expect("the missed deltas");
    assert_eq!(first.kind, "delta", "resumed, not re-sent: {}", first.data);
    page.apply(&first.data);
    page.follow(&mut events, Duration::from_millis(1500)).await;
    let mut fresh_events = EventReader::open(&orch, None).await;
    let mut fresh = PanelState::default();
    fresh
        .follow(&mut fresh_events, Duration::from_millis(800))
        .await;
    assert_eq!(page.version, fresh.version);
    assert_eq!(page, fresh);
    assert!(!page.engines.contains_key(&ids[2]));
    assert!(page.engines.contains_key(&new_id));
    assert_eq!(page.engines[&ids[1]]["health_status"], "unhealthy");
    assert_eq!(page.streams.len(), 1);

    // A version of another server run (or a garbled one) gets a snapshot.
    let mut events = EventReader::open(&orch, Some("1-5")).await;
    assert_eq!(events.next(SHOWN).await.unwrap().kind, "snapshot");

    // Polling: the ETag is the version; the same version is a 304, and
    // ?since= answers the deltas after it.
    let client = reqwest::Client::new();
    let response = client
        .get(orch.url("/panel/snapshot"))
        .send()
        .await
        .unwrap();
    let etag = response.headers()["etag"].clone();
    let polled: Value = response.json().await.unwrap();
    assert_eq!(PanelState::from_snapshot(&polled), fresh);
    let again = client
        .get(orch.url("/panel/snapshot"))
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let since = client
        .get(orch.url(&format!("/panel/snapshot?since={left_at}")))
        .send()
        .await
        .unwrap();
    assert_eq!(since.status(), 200);
    let since: Value = since.json().await.unwrap();
    let deltas = since["deltas"].as_array().expect("deltas after since");
    assert_eq!(since["version"], fresh.version.as_str());
    let mut polled_page = page_when_it_left;
    for delta in deltas {
        polled_page.apply(delta);
    }
    assert_eq!(
        polled_page, fresh,
        "polling with ?since= ends at the same state"
    );
    let (status, garbled) = orch.get("/panel/snapshot?since=nonsense").await;
    assert_eq!(status, 200);
    assert!(
        garbled["engines"].is_array(),
        "a snapshot for an unknown version"
    );
}

// ---- a large pool ------------------------------------------------------------------------

/// Registers engines `first..` on `ports` of `host`, named `engine-N`, 32 at a time.
async fn register_many(orch: &Orch, host: &str, ports: &[u16], first: usize) -> Vec<String> {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    futures::stream::iter(ports.iter().enumerate())
        .map(|(i, port)| {
            let client = client.clone();
            let url = orch.url("/engines");
            let body = json!({"host": host, "port": port, "name": format!("engine-{}", first + i)});
            async move {
                let response = client.post(url).json(&body).send().await.unwrap();
                assert!(response.status().is_success(), "register {body}");
                let engine: Value = response.json().await.unwrap();
                engine["container_id"].as_str().unwrap().to_owned()
            }
        })
        .buffered(32)
        .collect()
        .await
}

/// The page's picture of the engines compared with a fresh `GET /panel/snapshot`
/// of the same version: "same" or what differs.
const SAME_AS_SNAPSHOT: &str = "
  const canon = (v) => Array.isArray(v) ? v.map(canon)
    : v && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canon(v[k])])) : v;
  const page = window.orchestratorPanel;
  const have = page.state.store.version;
  const snap = window.__snapshot;
  const number = (v) => Number(String(v).split('-')[1]);
  if (!snap || number(have) > number(snap.version)) {
    window.__snapshot = null;
    fetch('/panel/snapshot').then((r) => r.json()).then((s) => { window.__snapshot = s; });
    return false;
  }
  if (have !== snap.version) return false;
  const mine = page.asSnapshot();
  const a = JSON.stringify(canon({ e: mine.engines.sort((x, y) => x.container_id < y.container_id ? -1 : 1), c: mine.recent_checks }));
  const b = JSON.stringify(canon({ e: snap.engines, c: snap.recent_checks }));
  return a === b ? 'same' : `differs at version ${have}`;";

/// 1,000 engines (set `PANEL_ENGINES` for another size), 10 % of them hung,
/// checked every 2 s: the map, the filters, the search, the detail, pages,
/// and what it costs the browser (first render, long tasks, DOM size).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_engines_read_at_a_glance() {
    if skipped() {
        return;
    }
    let total: usize = std::env::var("PANEL_ENGINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let hung = total / 10;
    let dir = tempfile::tempdir().unwrap();
    let orch = Orch::start(
        dir.path(),
        &[
            ("HEALTH_CHECK_INTERVAL_S", "2"),
            ("HEALTH_CHECK_TIMEOUT_S", "1"),
            ("HEALTH_CHECK_CONCURRENCY", "256"),
        ],
    )
    .await;
    // Healthy engines on 127.0.0.1, hung ones on 127.0.0.2: two groups on the map.
    let healthy_sim = Sim::start(total - hung).await;
    let hung_sim = Sim::start_with(&["--count", &hung.to_string(), "--bind-all"]).await;
    hung_sim.set_mode(None, "hang").await;
    let started = Instant::now();
    let mut ids = register_many(&orch, "127.0.0.1", &healthy_sim.ports, 1).await;
    let hung_ids = register_many(&orch, "127.0.0.2", &hung_sim.ports, total - hung + 1).await;
    ids.extend(hung_ids.iter().cloned());
    // Every hung engine is unhealthy and most healthy ones are healthy (on a
    // busy machine a debug build misses some 1 s timeouts).
    wait_for("every engine checked", Duration::from_secs(180), || async {
        let (_, engines) = orch.get("/engines").await;
        let engines = engines.as_array().unwrap().clone();
        let count = |host: &str, health: &str| {
            engines
                .iter()
                .filter(|e| e["host"] == host && e["health_status"] == health)
                .count()
        };
        let (healthy, hung_down) = (
            count("127.0.0.1", "healthy"),
            count("127.0.0.2", "unhealthy"),
        );
        eprintln!(
            "{healthy} healthy of {}, {hung_down} hung ones unhealthy of {hung}",
            total - hung
        );
        (hung_down == hung && healthy * 100 >= (total - hung) * 80).then_some(())
    })
    .await;
    eprintln!(
        "{total} engines registered and checked in {:?}",
        started.elapsed()
    );

    let browser = Browser::launch(1366, 1000).await;
    browser.goto(&orch.url("/panel")).await;
    browser
        .wait(
            "the first render",
            Duration::from_secs(30),
            "return document.body.dataset.rendered === 'true'",
            json!([]),
        )
        .await;
    let first_render = browser
        .js(
            "return window.orchestratorPanel.state.firstRender",
            json!([]),
        )
        .await
        .as_f64()
        .unwrap();
    let timing = browser
        .js("return window.orchestratorPanel.state.timing", json!([]))
        .await;
    eprintln!("PANEL {total} engines: snapshot arrived {} ms after navigation, drawing began at {} ms, done at {first_render:.0} ms", timing["snapshotArrived"], timing["drawStarted"]);

    // The map: one cell per engine, the hung ones red, grouped by host.
    let cells = browser
        .js(
            "return document.querySelectorAll('#pool-map .cell').length",
            json!([]),
        )
        .await;
    assert_eq!(cells, total);
    let red = browser
        .wait(
            "the hung engines red on the map",
            SHOWN,
            "const red = [...document.querySelectorAll('#pool-map [data-group=\\'host:127.0.0.2\\'] .cell')]
                .filter((c) => getComputedStyle(c).backgroundColor === arguments[0]).length;
             return red === arguments[1] ? red : false;",
            json!([RED, hung]),
        )
        .await;
    assert_eq!(red, hung);
    assert_eq!(
        browser
            .text("[data-group=\"host:127.0.0.2\"] .map-group-counts")
            .await,
        format!("{hung} engines, {hung} unhealthy")
    );
    assert!(browser
        .text("#kpi-healthy")
        .await
        .ends_with(&format!(" / {total} healthy")));
    // Problems first: the first page is the hung engines.
    browser
        .wait_text(
            "#engines-shown",
            &format!("Showing 1–24 of {total} engines, problems first"),
        )
        .await;
    let first_page = browser
        .js(
            "return [...document.querySelectorAll('#engines .engine')].map((c) => c.dataset.health)",
            json!([]),
        )
        .await;
    let first_page = first_page.as_array().unwrap();
    assert_eq!(first_page.len(), 24.min(total));
    assert!(
        first_page[..24.min(hung)].iter().all(|h| h == "unhealthy"),
        "{first_page:?}"
    );
    browser.screenshot("panel-map.png").await;

    // Updates stream in for a few sweeps; the page keeps up without long tasks.
    // (Only the page's own tasks count: the test's scripts run outside the window.)
    let before = browser
        .js(
            "return [window.orchestratorPanel.state.events, performance.now()]",
            json!([]),
        )
        .await;
    let events_before = before[0].as_u64().unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let after = browser
        .js(
            "return [window.orchestratorPanel.state.events, performance.now()]",
            json!([]),
        )
        .await;
    let events_after = after[0].as_u64().unwrap();
    assert!(
        events_after >= events_before + 4,
        "deltas arrived: {events_before} -> {events_after}"
    );
    let long_tasks = browser
        .js(
            "return window.orchestratorPanel.longTasks
                .filter((t) => t.start > arguments[0] && t.start < arguments[1]).map((t) => t.duration);",
            json!([before[1], after[1]]),
        )
        .await;
    let longest = long_tasks
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_f64)
        .fold(0.0, f64::max);
    let dom = browser
        .js(
            "return [document.getElementsByTagName('*').length, document.querySelectorAll('.cell').length]",
            json!([]),
        )
        .await;
    let (elements, cell_elements) = (dom[0].as_u64().unwrap(), dom[1].as_u64().unwrap());
    eprintln!(
        "PANEL {total} engines: first render {first_render:.0} ms after navigation; \
         longest task while updates stream in {longest:.0} ms ({} long tasks); \
         DOM {elements} elements, {} without the map cells; {} events in 8 s",
        long_tasks.as_array().unwrap().len(),
        elements - cell_elements,
        events_after - events_before
    );
    assert!(
        elements - cell_elements < 2500,
        "the DOM beyond the map cells is bounded: {elements} elements, {cell_elements} cells"
    );
    // The targets (docs/PERFORMANCE.md) are 2 s and 200 ms; on a machine
    // shared with other builds the test asserts only bounds that catch a
    // page that blocks (the old one did for 5 s at 1,000 engines), unless
    // PANEL_TARGETS=1 asks for the targets themselves.
    let strict = std::env::var_os("PANEL_TARGETS").is_some_and(|v| v == "1");
    let (render_limit, task_limit) = if strict {
        (2000.0, 200.0)
    } else {
        (10_000.0, 1000.0)
    };
    assert!(
        first_render <= render_limit,
        "first render {first_render:.0} ms after navigation"
    );
    assert!(
        longest <= task_limit,
        "a main-thread task of {longest:.0} ms while updates stream in: {long_tasks}"
    );
    // What the page holds is what a fresh page would get.
    let same = browser
        .wait(
            "the page's engines to match a fresh snapshot of its version",
            Duration::from_secs(20),
            SAME_AS_SNAPSHOT,
            json!([]),
        )
        .await;
    assert_eq!(same, "same");

    // Only the unhealthy ones: 100 in the list, the rest of the map dimmed.
    browser
        .click("#health-filter [data-health=\"unhealthy\"]")
        .await;
    let filtered = browser
        .wait(
            "only unhealthy engines listed",
            SHOWN,
            "const shown = document.getElementById('engines-shown').textContent;
             const n = Number(document.querySelector('#health-filter [data-health=unhealthy] .count').textContent);
             const cards = [...document.querySelectorAll('#engines .engine')];
             const dim = document.querySelectorAll('#pool-map .cell.dim').length;
             return shown.includes(`of ${n} (of ${arguments[0]})`) && cards.length > 0
                 && cards.every((c) => c.dataset.health === 'unhealthy') && dim === arguments[0] - n ? n : false;",
            json!([total]),
        )
        .await;
    assert!(filtered.as_u64().unwrap() as usize >= hung, "{filtered}");
    browser.screenshot("panel-map-unhealthy.png").await;

    // A page further.
    if hung > 24 {
        browser.click("#engines-pager [data-page=\"next\"]").await;
        browser
            .wait(
                "the second page",
                SHOWN,
                "return document.getElementById('engines-shown').textContent.startsWith('Showing 25–48 of ')",
                json!([]),
            )
            .await;
    }
    browser.click("#health-filter [data-health=\"all\"]").await;

    // Search by address: one engine, one bright cell.
    let wanted = total / 2;
    let address = format!("127.0.0.1:{}", healthy_sim.ports[wanted - 1]);
    browser.type_into("#engine-search", &address).await;
    browser
        .wait_text(
            "#engines-shown",
            &format!("Showing 1–1 of 1 (of {total}) engines, problems first"),
        )
        .await;
    assert_eq!(
        browser.text("#engines .engine .name").await,
        format!("engine-{wanted}")
    );
    let bright = browser
        .js(
            "return document.querySelectorAll('#pool-map .cell:not(.dim)').length",
            json!([]),
        )
        .await;
    assert_eq!(bright, 1);
    browser.screenshot("panel-map-search.png").await;
    browser
        .js(
            "const s = document.getElementById('engine-search'); s.value = ''; s.dispatchEvent(new Event('input'));",
            json!([]),
        )
        .await;

    // By host: the group filter.
    browser
        .click("#group-filter option[value=\"host:127.0.0.2\"]")
        .await;
    browser
        .wait_text(
            "#engines-shown",
            &format!(
                "Showing 1–{} of {hung} (of {total}) engines, problems first",
                24.min(hung)
            ),
        )
        .await;

    // A hung engine's cell: hover says who and why; a click opens its detail.
    let cell = format!("#pool-map .cell[data-id=\"{}\"]", hung_ids[0]);
    let title = browser
        .js(
            "const cell = document.querySelector(arguments[0]);
             cell.dispatchEvent(new MouseEvent('mouseover', { bubbles: true }));
             return cell.title;",
            json!([cell]),
        )
        .await;
    let title = title.as_str().unwrap();
    assert!(
        title.starts_with(&format!("engine-{} — unhealthy", total - hung + 1))
            && title.contains("no answer"),
        "{title}"
    );
    browser.click(&cell).await;
    browser
        .wait_text("#detail-title", &format!("engine-{}", total - hung + 1))
        .await;
    browser
        .wait(
            "the detail's transitions",
            SHOWN,
            "return !!document.querySelector('#detail-transitions .transition[data-to=\"unhealthy\"]')",
            json!([]),
        )
        .await;
    browser.screenshot("panel-map-detail.png").await;
    browser.click("#detail [data-close]").await;
    assert_all_local(&orch, &browser.fetched_urls().await);
    assert!(
        browser.console_errors().await.is_empty(),
        "{:?}",
        browser.console_errors().await
    );
    drop(ids);
}
