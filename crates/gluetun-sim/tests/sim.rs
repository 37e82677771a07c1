//! Runs the real binary on an ephemeral port and talks to it over HTTP, as the
//! orchestrator's tests will; one test runs the image under Docker.

use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{sleep, timeout, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gluetun-sim");

struct Sim {
    child: Child,
    /// Kept open so the simulator never writes into a closed pipe.
    _stdout: ChildStdout,
    addr: String,
}

/// A command for the binary with none of its variables inherited from the caller.
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("RUST_LOG", "warn").kill_on_drop(true);
    for var in [
        "LISTEN",
        "API_KEY",
        "VPN_STATUS",
        "FORWARDED_PORT",
        "PUBLIC_IP",
        "COUNTRY",
        "REGION",
        "CITY",
        "ORGANIZATION",
        "MODE",
    ] {
        cmd.env_remove(format!("GLUETUN_SIM_{var}"));
    }
    cmd.env_remove("HTTP_CONTROL_SERVER_ADDRESS")
        .env_remove("HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE");
    cmd.envs(env.iter().copied());
    cmd
}

/// Starts the simulator on an ephemeral loopback port and waits for its READY line.
async fn start(args: &[&str], env: &[(&str, &str)]) -> Sim {
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut child = command(&all, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the simulator");
    let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
    let line = timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("READY line within 10 s")
        .expect("read stdout")
        .expect("a line before EOF");
    let addr = line
        .strip_prefix("READY listen=")
        .unwrap_or_else(|| panic!("not a READY line: {line:?}"))
        .to_owned();
    Sim {
        child,
        _stdout: lines.into_inner().into_inner(),
        addr,
    }
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        client().get(self.url(path)).send().await.expect("answer")
    }

    async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        serde_json::from_str(&resp.text().await.unwrap()).expect("JSON")
    }

    async fn put(&self, path: &str, body: &str) -> reqwest::Response {
        client()
            .put(self.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("answer")
    }

    async fn set_mode(&self, mode: &str) {
        let resp = self
            .put("/sim/mode", &json!({ "mode": mode }).to_string())
            .await;
        assert_eq!(resp.status(), 200, "setting mode {mode}");
    }

    async fn healthcheck(&self) -> i32 {
        healthcheck(&self.addr).await
    }
}

async fn healthcheck(addr: &str) -> i32 {
    let out = timeout(
        Duration::from_secs(10),
        command(&["--healthcheck", "--listen", addr], &[]).output(),
    )
    .await
    .expect("--healthcheck ends within 10 s")
    .expect("run --healthcheck");
    out.status.code().expect("an exit code")
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

/// Polls `check` until it returns Some, or panics after `limit`.
async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn gluetun_routes_and_shapes() {
    let sim = start(
        &["--public-ip", "198.51.100.4", "--country", "Sweden"],
        &[
            ("GLUETUN_SIM_FORWARDED_PORT", "5914"),
            ("GLUETUN_SIM_CITY", "Stockholm"),
            ("GLUETUN_SIM_REGION", ""),
        ],
    )
    .await;

    let resp = sim.get("/v1/vpn/status").await;
    assert_eq!(resp.status(), 200);
    // Go's net/http sniffs its JSON bodies as text.
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; charset=utf-8",
        "Gluetun does not set application/json"
    );
    assert_eq!(resp.text().await.unwrap(), "{\"status\":\"running\"}\n");
    assert_eq!(
        sim.get_json("/v1/openvpn/status").await,
        json!({"status": "running"})
    );
    assert_eq!(
        sim.get_json("/v1/publicip/ip").await,
        json!({"public_ip": "198.51.100.4", "country": "Sweden", "city": "Stockholm"})
    );
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 5914, "ports": [5914]})
    );
    let version = sim.get_json("/v1/version").await;
    assert!(version["version"].is_string(), "{version}");

    // The old port-forward routes redirect, as Gluetun's do; a client that follows
    // redirects gets the same answer.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, status) in [
        ("/v1/openvpn/portforwarded", 301),
        ("/openvpn/portforwarded", 308),
    ] {
        let resp = no_redirects.get(sim.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(resp.headers()["location"], "/v1/portforward", "{path}");
        assert_eq!(
            sim.get_json(path).await,
            json!({"port": 5914, "ports": [5914]}),
            "{path} followed"
        );
    }

    // Gluetun's router: unknown path 404, known path with a wrong method 405.
    let resp = sim.get("/v1/nope").await;
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.text().await.unwrap(), "Not Found\n");
    let resp = client()
        .post(sim.url("/v1/vpn/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(sim.put("/v1/publicip/ip", "{}").await.status(), 405);

    // Without any forwarded port, Gluetun has no port-forwarding service: null ports.
    let bare = start(&[], &[]).await;
    assert_eq!(
        bare.get_json("/v1/portforward").await,
        json!({"port": 0, "ports": null})
    );
    assert_eq!(
        bare.get_json("/v1/publicip/ip").await,
        json!({"public_ip": "203.0.113.7", "country": "Netherlands",
               "region": "North Holland", "city": "Amsterdam"})
    );
}

#[tokio::test]
async fn the_tunnel_stops_and_comes_back_through_put() {
    let sim = start(&["--forwarded-port", "40000"], &[]).await;
    let put_status = |path: &'static str, status: &'static str| {
        let sim = &sim;
        async move {
            let resp = sim
                .put(path, &json!({ "status": status }).to_string())
                .await;
            assert_eq!(resp.status(), 200, "PUT {path} {status}");
            serde_json::from_str::<Value>(&resp.text().await.unwrap()).unwrap()
        }
    };

    assert_eq!(
        put_status("/v1/vpn/status", "stopped").await,
        json!({"outcome": "stopped"})
    );
    assert_eq!(
        sim.get_json("/v1/vpn/status").await,
        json!({"status": "stopped"})
    );
    assert_eq!(
        sim.get_json("/v1/openvpn/status").await,
        json!({"status": "stopped"})
    );
    // Gluetun clears its public IP data when the tunnel goes down.
    let resp = sim.get("/v1/publicip/ip").await;
    assert_eq!(resp.text().await.unwrap(), "{\"public_ip\":\"\"}\n");
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 0, "ports": []})
    );
    assert_eq!(
        put_status("/v1/vpn/status", "stopped").await,
        json!({"outcome": "already stopped"})
    );

    // The old alias drives the same tunnel.
    assert_eq!(
        put_status("/v1/openvpn/status", "running").await,
        json!({"outcome": "running"})
    );
    assert_eq!(
        put_status("/v1/vpn/status", "running").await,
        json!({"outcome": "already running"})
    );
    assert_eq!(
        sim.get_json("/v1/vpn/status").await,
        json!({"status": "running"})
    );
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 40000, "ports": [40000]})
    );
    assert_eq!(
        sim.get_json("/v1/publicip/ip").await["public_ip"],
        "203.0.113.7"
    );

    // Bad bodies: 400 with a text line, tunnel untouched.
    let resp = sim.put("/v1/vpn/status", r#"{"status":"paused"}"#).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        "invalid status: paused: possible values are: stopped, running\n"
    );
    assert_eq!(sim.put("/v1/vpn/status", "not json").await.status(), 400);
    assert_eq!(
        sim.get_json("/v1/vpn/status").await,
        json!({"status": "running"})
    );

    // Starting stopped, and the emulator-only switch that ignores mode and key.
    let stopped = start(&["--vpn-status", "stopped"], &[]).await;
    assert_eq!(
        stopped.get_json("/v1/vpn/status").await,
        json!({"status": "stopped"})
    );
    let resp = stopped.put("/sim/vpn", r#"{"status":"running"}"#).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["vpn"], "running");
    assert_eq!(
        stopped.get_json("/v1/vpn/status").await,
        json!({"status": "running"})
    );
}

#[tokio::test]
async fn the_forwarded_port_comes_from_the_env_and_changes_at_run_time() {
    let sim = start(&[], &[("GLUETUN_SIM_FORWARDED_PORT", "40001")]).await;
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 40001, "ports": [40001]})
    );

    // Gluetun's body: a list, kept sorted.
    let resp = sim
        .put("/v1/portforward", r#"{"ports":[40003,40002]}"#)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "");
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 40002, "ports": [40002, 40003]})
    );
    assert_eq!(
        sim.get_json("/v1/openvpn/portforwarded").await,
        json!({"port": 40002, "ports": [40002, 40003]})
    );

    // The emulator's shorthand: one port.
    assert_eq!(
        sim.put("/v1/portforward", r#"{"port":41000}"#)
            .await
            .status(),
        200
    );
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 41000, "ports": [41000]})
    );

    // The port is released with the tunnel and comes back with it.
    sim.put("/v1/vpn/status", r#"{"status":"stopped"}"#).await;
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 0, "ports": []})
    );
    sim.put("/v1/vpn/status", r#"{"status":"running"}"#).await;
    assert_eq!(sim.get_json("/v1/portforward").await["port"], 41000);

    // No port at all.
    assert_eq!(
        sim.put("/v1/portforward", r#"{"port":0}"#).await.status(),
        200
    );
    assert_eq!(
        sim.get_json("/v1/portforward").await,
        json!({"port": 0, "ports": []})
    );

    let resp = sim.put("/v1/portforward", "{").await;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        "failed setting forwarded ports\n"
    );

    // Several ports from the flag.
    let many = start(&["--forwarded-port", "7000,6000"], &[]).await;
    assert_eq!(
        many.get_json("/v1/portforward").await,
        json!({"port": 6000, "ports": [6000, 7000]})
    );
}

async fn assert_key_enforced(sim: &Sim, key: &str) {
    for path in [
        "/v1/vpn/status",
        "/v1/publicip/ip",
        "/v1/portforward",
        "/v1/openvpn/status",
        "/v1/openvpn/portforwarded",
        "/v1/version",
    ] {
        let resp = sim.get(path).await;
        assert_eq!(resp.status(), 401, "{path} without a key");
        assert_eq!(resp.text().await.unwrap(), "Unauthorized\n");
        let resp = client()
            .get(sim.url(path))
            .header("X-API-Key", "wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong key");
        let resp = client()
            .get(sim.url(path))
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} with the key");
    }
    // PUTs too.
    let put = |key: Option<&str>| {
        let mut req = client()
            .put(sim.url("/v1/vpn/status"))
            .body(r#"{"status":"stopped"}"#);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        req.send()
    };
    assert_eq!(put(None).await.unwrap().status(), 401);
    assert_eq!(put(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(put(Some(key)).await.unwrap().status(), 200);
    // Gluetun also takes the key as a query parameter.
    let resp = sim.get(&format!("/v1/vpn/status?api_key={key}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), "{\"status\":\"stopped\"}\n");
    // Unknown routes are 404 before the key is looked at, as in Gluetun.
    assert_eq!(sim.get("/v1/nope").await.status(), 404);
    // The emulator's routes need no key.
    let state = sim.get_json("/sim/state").await;
    assert_eq!(state["api_key"], true);
}

#[tokio::test]
async fn the_api_key_is_enforced() {
    let sim = start(&["--api-key", "s3cret"], &[]).await;
    assert_key_enforced(&sim, "s3cret").await;

    let sim = start(&[], &[("GLUETUN_SIM_API_KEY", "from-env")]).await;
    assert_key_enforced(&sim, "from-env").await;

    // Gluetun's own variable.
    let sim = start(
        &[],
        &[(
            "HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE",
            r#"{"auth":"apikey","apikey":"gluetun-style"}"#,
        )],
    )
    .await;
    assert_key_enforced(&sim, "gluetun-style").await;

    let open = start(
        &[],
        &[(
            "HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE",
            r#"{"auth":"none"}"#,
        )],
    )
    .await;
    assert_eq!(open.get("/v1/vpn/status").await.status(), 200);

    // A role the emulator cannot honour is a usage error, not an open server.
    let out = command(
        &["--listen", "127.0.0.1:0"],
        &[(
            "HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE",
            r#"{"auth":"basic","username":"u","password":"p"}"#,
        )],
    )
    .output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[tokio::test]
async fn fault_modes() {
    let sim = start(&["--mode", "hang"], &[]).await;
    // A request that hangs now is answered once the mode changes.
    let pending = tokio::spawn({
        let url = sim.url("/v1/vpn/status");
        async move { client().get(url).send().await }
    });
    eventually("the request to hang", Duration::from_secs(5), || async {
        (sim.get_json("/sim/state").await["hanging"] == 1).then_some(())
    })
    .await;
    let quick = client_with_timeout(Duration::from_millis(500));
    let err = quick
        .get(sim.url("/v1/publicip/ip"))
        .send()
        .await
        .expect_err("a hung server does not answer");
    assert!(err.is_timeout(), "{err}");
    // The emulator's routes still answer.
    assert_eq!(sim.get_json("/sim/state").await["mode"], "hang");
    assert_eq!(sim.get("/sim/health").await.status(), 200);
    sim.set_mode("healthy").await;
    let resp = timeout(Duration::from_secs(5), pending)
        .await
        .expect("released by the mode change")
        .unwrap()
        .expect("answered");
    assert_eq!(resp.status(), 200);

    sim.set_mode("garbage").await;
    let resp = sim.get("/v1/vpn/status").await;
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    // Whatever the route, even one Gluetun doesn't have.
    assert_eq!(sim.get("/v1/nope").await.status(), 200);

    sim.set_mode("error").await;
    for path in ["/v1/vpn/status", "/v1/publicip/ip", "/v1/portforward"] {
        assert_eq!(sim.get(path).await.status(), 500, "{path}");
    }
    assert_eq!(
        sim.put("/v1/vpn/status", r#"{"status":"stopped"}"#)
            .await
            .status(),
        500
    );
    assert_eq!(sim.get_json("/sim/state").await["vpn"], "running");

    sim.set_mode("healthy").await;
    assert_eq!(
        sim.get_json("/v1/vpn/status").await,
        json!({"status": "running"})
    );
    assert_eq!(
        sim.put("/sim/mode", r#"{"mode":"sideways"}"#)
            .await
            .status(),
        400
    );

    // The initial mode from the environment.
    let sim = start(&[], &[("GLUETUN_SIM_MODE", "error")]).await;
    assert_eq!(sim.get("/v1/vpn/status").await.status(), 500);
}

#[tokio::test]
async fn healthcheck_follows_the_tunnel() {
    let sim = start(&["--api-key", "k"], &[]).await;
    assert_eq!(sim.healthcheck().await, 0);
    let resp = client()
        .put(sim.url("/v1/vpn/status"))
        .header("X-API-Key", "k")
        .body(r#"{"status":"stopped"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(sim.healthcheck().await, 1);
    sim.put("/sim/vpn", r#"{"status":"running"}"#).await;
    assert_eq!(sim.healthcheck().await, 0);
    // Like the real image's separate health server, it ignores control-server faults.
    sim.set_mode("hang").await;
    assert_eq!(sim.healthcheck().await, 0);

    // Nothing listening: unhealthy.
    let addr = sim.addr.clone();
    drop(sim);
    eventually(
        "the killed server's port to close",
        Duration::from_secs(5),
        || async { (healthcheck(&addr).await == 1).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut sim = start(&["--mode", "hang"], &[]).await;
    // A hung request doesn't hold the exit up.
    let url = sim.url("/v1/vpn/status");
    tokio::spawn(async move { client().get(url).send().await });
    let pid = sim.child.id().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let status = timeout(Duration::from_secs(5), sim.child.wait())
        .await
        .expect("exits within 5 s")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

const WG_PRIVATE: &str = "wOEI9rqqbDwnN8/Bpp22sVz48T71vJ4fYmFWujulwUU=";
const WG_PUBLIC: &str = "wAUaJMhAq3NFutLHIdF8AN0B5WG8RndfQKLPTEDHal0=";

#[tokio::test]
async fn a_custom_wireguard_tunnel_reports_its_peer_and_refuses_to_start_without_a_key() {
    let env = [
        ("VPN_SERVICE_PROVIDER", "custom"),
        ("VPN_TYPE", "wireguard"),
        ("WIREGUARD_PRIVATE_KEY", WG_PRIVATE),
        ("WIREGUARD_PUBLIC_KEY", WG_PUBLIC),
        ("WIREGUARD_ADDRESSES", "10.64.0.2/32"),
        ("WIREGUARD_ENDPOINT_IP", "198.51.100.7"),
        ("WIREGUARD_ENDPOINT_PORT", "51820"),
    ];
    let sim = start(&[], &env).await;
    let state = sim.get_json("/sim/state").await;
    assert_eq!(state["settings"]["provider"], "custom");
    assert_eq!(state["settings"]["wireguard"]["public_key"], WG_PUBLIC);
    assert_eq!(
        state["settings"]["wireguard"]["endpoint"],
        "198.51.100.7:51820"
    );
    assert!(!state.to_string().contains(WG_PRIVATE), "{state}");
    assert_eq!(sim.get_json("/v1/vpn/status").await["status"], "running");

    // Without its private key the real Gluetun logs why and exits 1.
    let without: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .filter(|(k, _)| *k != "WIREGUARD_PRIVATE_KEY")
        .collect();
    let out = timeout(
        Duration::from_secs(10),
        command(&["--listen", "127.0.0.1:0"], &without).output(),
    )
    .await
    .expect("exits at once")
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("private key is not set"), "{stderr}");
}

// ---- the image -----------------------------------------------------------------

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .expect("docker CLI")
}

/// Removes the container when dropped, whatever happened.
struct Container(String);

impl Drop for Container {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

impl Container {
    fn health(&self) -> String {
        let out = docker(&["inspect", "-f", "{{.State.Health.Status}}", &self.0]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

#[tokio::test]
async fn the_image_health_follows_the_tunnel() {
    if !std::process::Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIPPED the_image_health_follows_the_tunnel: the Docker Engine is not reachable (docker info failed)");
        return;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../scripts/gluetun-sim-image"
    );
    let status = std::process::Command::new(script)
        .stdout(Stdio::null())
        .status()
        .expect("run scripts/gluetun-sim-image");
    assert!(status.success(), "scripts/gluetun-sim-image failed");

    let unique = format!(
        "gluetun-sim-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let label = format!("acestream.test={unique}");
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &unique,
        "--label",
        &label,
        "-p",
        "127.0.0.1::8000",
        "-e",
        "GLUETUN_SIM_FORWARDED_PORT=40000",
        "-e",
        r#"HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE={"auth":"apikey","apikey":"img"}"#,
        "acestream-gluetun-sim:latest",
    ]);
    assert!(
        out.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = Container(unique.clone());

    let out = docker(&["port", &unique, "8000/tcp"]);
    let published = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .expect("a published port")
        .trim()
        .to_owned();
    let base = format!("http://{published}");
    let authed = |req: reqwest::RequestBuilder| req.header("X-API-Key", "img").send();

    let healthy = eventually(
        "the container to turn healthy",
        Duration::from_secs(30),
        || async { (container.health() == "healthy").then_some(()) },
    );
    healthy.await;
    let resp = authed(client().get(format!("{base}/v1/portforward")))
        .await
        .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["port"], 40000);
    assert_eq!(
        client()
            .get(format!("{base}/v1/vpn/status"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    let resp = authed(
        client()
            .put(format!("{base}/v1/vpn/status"))
            .body(r#"{"status":"stopped"}"#),
    )
    .await
    .unwrap();
    assert_eq!(resp.json::<Value>().await.unwrap()["outcome"], "stopped");
    eventually(
        "the container to turn unhealthy",
        Duration::from_secs(30),
        || async { (container.health() == "unhealthy").then_some(()) },
    )
    .await;

    // PID 1 stops on SIGTERM with exit code 0.
    let out = docker(&["stop", "-t", "10", &unique]);
    assert!(out.status.success());
    let out = docker(&["inspect", "-f", "{{.State.ExitCode}}", &unique]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}

#[tokio::test]
async fn gluetuns_own_address_variable_is_honoured() {
    let mut child = command(&[], &[("HTTP_CONTROL_SERVER_ADDRESS", "127.0.0.1:0")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("READY line within 10 s")
        .unwrap()
        .unwrap();
    assert!(line.starts_with("READY listen=127.0.0.1:"), "{line}");
    assert!(!line.ends_with(":8000"), "{line}");
    // GLUETUN_SIM_LISTEN wins over it.
    let sim = start(&[], &[("HTTP_CONTROL_SERVER_ADDRESS", "127.0.0.2:1")]).await;
    assert!(sim.addr.starts_with("127.0.0.1:"), "{}", sim.addr);
}
