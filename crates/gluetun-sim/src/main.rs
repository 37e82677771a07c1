//! gluetun-sim: an emulator of Gluetun's HTTP control server (VPN status, public IP,
//! forwarded port, API key) that can be told to hang, answer garbage or fail, and that
//! doubles as its own Docker health check. See README.md.

mod api;
mod tunnel;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::api::{Config, Mode, PublicIp, Sim};

const DEFAULT_LISTEN: &str = "0.0.0.0:8000";
/// sysexits.h EX_USAGE.
const EXIT_USAGE: i32 = 64;
/// How long `--healthcheck` waits for the server (Docker's own timeout may be shorter).
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Listen address, `HOST:PORT` or Go's `:PORT`. Falls back to Gluetun's own
    /// HTTP_CONTROL_SERVER_ADDRESS, then 0.0.0.0:8000. Port 0 = ephemeral.
    #[arg(long, env = "GLUETUN_SIM_LISTEN")]
    listen: Option<String>,

    /// API key every Gluetun route requires (header `X-API-Key`, or `?api_key=`).
    /// Falls back to Gluetun's HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE
    /// (`{"auth":"apikey","apikey":"…"}` or `{"auth":"none"}`). Empty = no key.
    #[arg(long, env = "GLUETUN_SIM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// Initial tunnel status.
    #[arg(long, value_parser = ["running", "stopped"], default_value = "running",
          env = "GLUETUN_SIM_VPN_STATUS")]
    vpn_status: String,

    /// Forwarded port(s), comma-separated; 0 or none = port forwarding without a port.
    #[arg(long, env = "GLUETUN_SIM_FORWARDED_PORT", value_delimiter = ',')]
    forwarded_port: Option<Vec<u16>>,

    /// Public IP reported while the tunnel runs.
    #[arg(long, env = "GLUETUN_SIM_PUBLIC_IP", default_value = "203.0.113.7")]
    public_ip: IpAddr,

    /// Country reported with the public IP (omitted when empty).
    #[arg(long, env = "GLUETUN_SIM_COUNTRY", default_value = "Netherlands")]
    country: String,

    /// Region reported with the public IP (omitted when empty).
    #[arg(long, env = "GLUETUN_SIM_REGION", default_value = "North Holland")]
    region: String,

    /// City reported with the public IP (omitted when empty).
    #[arg(long, env = "GLUETUN_SIM_CITY", default_value = "Amsterdam")]
    city: String,

    /// Organization reported with the public IP (omitted when empty).
    #[arg(long, env = "GLUETUN_SIM_ORGANIZATION", default_value = "")]
    organization: String,

    /// Initial fault mode of Gluetun's routes (the /sim/ routes ignore it).
    #[arg(long, value_enum, default_value_t = Mode::Healthy, env = "GLUETUN_SIM_MODE")]
    mode: Mode,

    /// Ask the server listening at the configured address whether the tunnel runs:
    /// exit 0 if so, 1 otherwise (for Docker's HEALTHCHECK).
    #[arg(long)]
    healthcheck: bool,
}

/// The part of Gluetun's default auth role the emulator understands.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Role {
    #[serde(default)]
    #[allow(dead_code)]
    name: String,
    #[serde(default)]
    auth: String,
    #[serde(default)]
    apikey: String,
    #[serde(default)]
    #[allow(dead_code)]
    username: String,
    #[serde(default)]
    #[allow(dead_code)]
    password: String,
}

/// The API key from HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE, as Gluetun reads it.
fn key_from_default_role(json: &str) -> anyhow::Result<Option<String>> {
    let role: Role = serde_json::from_str(json).context("not a JSON role object")?;
    match role.auth.to_ascii_lowercase().as_str() {
        "" | "none" => Ok(None),
        "apikey" if role.apikey.is_empty() => bail!("api key is empty"),
        "apikey" => Ok(Some(role.apikey)),
        "basic" => bail!("basic authentication is not emulated; use an API key"),
        other => bail!("authentication method not supported: {other}"),
    }
}

/// `HOST:PORT`, `[V6]:PORT`, or Go's `:PORT` (all interfaces).
fn parse_listen(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Some(port) = text.strip_prefix(':') {
        let port = port
            .parse()
            .with_context(|| format!("bad port in {text:?}"))?;
        return Ok(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)));
    }
    text.to_socket_addrs()
        .with_context(|| format!("bad listen address {text:?}"))?
        .next()
        .with_context(|| format!("{text:?} resolves to no address"))
}

fn usage_error(what: &str, err: anyhow::Error) -> ! {
    eprintln!("error: {what}: {err:#}");
    std::process::exit(EXIT_USAGE)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let listen_text = cli
        .listen
        .clone()
        .or_else(|| std::env::var("HTTP_CONTROL_SERVER_ADDRESS").ok())
        .unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = parse_listen(&listen_text).unwrap_or_else(|e| usage_error("--listen", e));

    if cli.healthcheck {
        std::process::exit(healthcheck(listen).await);
    }

    let api_key = match cli.api_key {
        Some(key) => Some(key),
        None => match std::env::var("HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE") {
            Ok(json) => key_from_default_role(&json)
                .unwrap_or_else(|e| usage_error("HTTP_CONTROL_SERVER_AUTH_DEFAULT_ROLE", e)),
            Err(_) => None,
        },
    };
    let non_empty = |s: String| (!s.is_empty()).then_some(s);
    let public_ip = PublicIp {
        region: non_empty(cli.region),
        country: non_empty(cli.country),
        city: non_empty(cli.city),
        organization: non_empty(cli.organization),
        ..PublicIp::new(cli.public_ip)
    };
    // Like Gluetun: settings that do not hold stop the program before the
    // control server starts.
    let settings = match tunnel::read(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            tracing::error!("{error}");
            eprintln!("ERROR {error}");
            std::process::exit(1);
        }
    };
    let auth = api_key.as_deref().is_some_and(|k| !k.is_empty());
    let sim = Sim::new(Config {
        running: cli.vpn_status == "running",
        ports: cli.forwarded_port,
        mode: cli.mode,
        api_key,
        public_ip,
        settings,
        tun_device: std::path::Path::new("/dev/net/tun").exists(),
    });

    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let router = api::router(sim);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "server stopped");
            std::process::exit(1);
        }
    });

    // Handlers go in before READY: as PID 1 an unhandled SIGTERM would be ignored.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "READY listen={addr}")?;
    stdout.flush()?;
    drop(stdout);
    info!(%addr, vpn = cli.vpn_status, mode = cli.mode.as_str(), auth, "gluetun simulator started");

    let name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down");
    // Hung requests never finish on their own, and there is no state worth saving.
    std::process::exit(0)
}

/// Asks `GET /sim/health` of the server at `listen` (on loopback when it listens on
/// all interfaces). 0 when it answers 200, 1 otherwise.
async fn healthcheck(listen: SocketAddr) -> i32 {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(ip, listen.port());
    let outcome = tokio::time::timeout(HEALTHCHECK_TIMEOUT, async {
        let mut stream = TcpStream::connect(target).await?;
        stream
            .write_all(b"GET /sim/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    })
    .await;
    match outcome {
        Ok(Ok(answer)) => {
            let answer = String::from_utf8_lossy(&answer);
            let status_line = answer.lines().next().unwrap_or_default();
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            if status_line.split(' ').nth(1) == Some("200") {
                println!("healthy: vpn {body}");
                0
            } else {
                println!("unhealthy: vpn {body} ({status_line})");
                1
            }
        }
        Ok(Err(err)) => {
            println!("unhealthy: {target}: {err}");
            1
        }
        Err(_) => {
            println!("unhealthy: {target}: no answer in {HEALTHCHECK_TIMEOUT:?}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen(":8000").unwrap(),
            "0.0.0.0:8000".parse().unwrap()
        );
        assert_eq!(
            parse_listen("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_listen("8000").is_err());
        assert!(parse_listen(":x").is_err());
    }

    #[test]
    fn default_role() {
        assert_eq!(
            key_from_default_role(r#"{"auth":"apikey","apikey":"k"}"#).unwrap(),
            Some("k".to_owned())
        );
        assert_eq!(
            key_from_default_role(r#"{"name":"x","auth":"apiKey","apikey":"k"}"#).unwrap(),
            Some("k".to_owned())
        );
        assert_eq!(key_from_default_role(r#"{"auth":"none"}"#).unwrap(), None);
        assert_eq!(key_from_default_role("{}").unwrap(), None);
        assert!(key_from_default_role(r#"{"auth":"apikey"}"#).is_err());
        assert!(
            key_from_default_role(r#"{"auth":"basic","username":"u","password":"p"}"#).is_err()
        );
        assert!(key_from_default_role(r#"{"auth":"none","extra":1}"#).is_err());
    }
}
