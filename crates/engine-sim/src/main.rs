//! acestream-engine-sim: an emulator of the AceStream engine HTTP API that can be told
//! to hang, refuse connections, fail and starve. See README.md.

mod api;
mod control;
mod engine;
mod server;
mod ts;
mod tsloop;

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::engine::{Engine, Mode};
use crate::tsloop::TsLoop;

const DEFAULT_HTTP_PORT: u16 = 6878;
/// sysexits.h EX_USAGE: the command was used incorrectly (here: a bad --ts-file).
const EXIT_USAGE: i32 = 64;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Port of the (first) engine API; 0 = ephemeral. Default: `--http-port=` from the
    /// CONF variable, as the engine's Docker image reads it, else 6878.
    #[arg(long)]
    http_port: Option<u16>,

    /// Address to listen on (API and control). Default 127.0.0.1.
    #[arg(long, env = "ENGINE_SIM_BIND", conflicts_with = "bind_all")]
    bind: Option<IpAddr>,

    /// Listen on 0.0.0.0 (also honoured as a line of CONF).
    #[arg(long)]
    bind_all: bool,

    /// Port of a separate control listener (0 = ephemeral) that answers whatever the
    /// engines' modes. Without it, control is only on each API port under /sim/.
    #[arg(long, env = "ENGINE_SIM_CONTROL_PORT")]
    control_port: Option<u16>,

    /// Initial mode of every engine.
    #[arg(long, value_enum, default_value_t = Mode::Healthy, env = "ENGINE_SIM_MODE")]
    mode: Mode,

    /// Keep the API ports closed this long after start, like a booting engine.
    #[arg(long, default_value_t = 0, env = "ENGINE_SIM_STARTUP_DELAY_MS")]
    startup_delay_ms: u64,

    /// Delay every API answer this long.
    #[arg(long, default_value_t = 0, env = "ENGINE_SIM_LATENCY_MS")]
    latency_ms: u64,

    /// Number of independent engines, on ports http-port.. (or all ephemeral if 0).
    #[arg(long, default_value_t = 1, env = "ENGINE_SIM_COUNT",
          value_parser = clap::value_parser!(u16).range(1..))]
    count: u16,

    /// MPEG-TS file that every stream serves, looped as a live broadcast whose position
    /// follows the wall clock. Without it streams carry null packets.
    #[arg(long, env = "ENGINE_SIM_TS_FILE")]
    ts_file: Option<PathBuf>,

    /// Bitrate (bits/s) of --ts-file when the file has no PCRs to measure it from.
    #[arg(long, default_value_t = 5_000_000, env = "ENGINE_SIM_TS_BITRATE",
          value_parser = clap::value_parser!(u64).range(1..))]
    ts_bitrate: u64,

    /// Content ids (or infohashes) that no engine can play, comma-separated:
    /// getstream answers `{"response": null, "error": "…"}` for them, the
    /// way a real engine answers for a dead torrent, while everything else
    /// stays healthy.
    #[arg(long, env = "ENGINE_SIM_UNAVAILABLE", value_delimiter = ',')]
    unavailable: Vec<String>,
}

/// The part of the engine image's CONF variable that the emulator honours.
#[derive(Debug, Default, PartialEq)]
struct Conf {
    http_port: Option<u16>,
    bind_all: bool,
}

/// CONF holds one flag per line (`--http-port=6878`, `--bind-all`, ...); unknown flags
/// are the real engine's business and are ignored.
fn parse_conf(text: &str) -> anyhow::Result<Conf> {
    let mut conf = Conf::default();
    for line in text.lines().map(str::trim) {
        if let Some(value) = line
            .strip_prefix("--http-port=")
            .or_else(|| line.strip_prefix("--http-port "))
        {
            let port = value
                .trim()
                .parse()
                .with_context(|| format!("bad CONF line {line:?}"))?;
            conf.http_port = Some(port);
        } else if line == "--bind-all" {
            conf.bind_all = true;
        }
    }
    Ok(conf)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // No colour codes in `docker logs` or files.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    // One listener per engine: thousands of engines need more than the usual
    // soft limit of 1,024 open files. The hard limit is the ceiling.
    if let Err(err) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(%err, "cannot raise the open-file limit");
    }
    let conf = match std::env::var("CONF") {
        Ok(text) => parse_conf(&text)?,
        Err(_) => Conf::default(),
    };
    let base_port = cli
        .http_port
        .or(conf.http_port)
        .unwrap_or(DEFAULT_HTTP_PORT);
    let ip = match cli.bind {
        Some(ip) => ip,
        None if cli.bind_all || conf.bind_all => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let ts_loop = cli
        .ts_file
        .as_deref()
        .map(|path| match TsLoop::load(path, cli.ts_bitrate) {
            Ok(ts_loop) => {
                info!(
                    path = %path.display(),
                    packets = ts_loop.packets(),
                    bitrate = ts_loop.bitrate(),
                    rate_from = ?ts_loop.rate_source,
                    loop_seconds = ts_loop.loop_duration().as_secs_f64(),
                    "serving a looped TS file"
                );
                Arc::new(ts_loop)
            }
            Err(err) => {
                eprintln!("error: --ts-file {}: {err:#}", path.display());
                std::process::exit(EXIT_USAGE);
            }
        });
    api::set_unavailable(
        cli.unavailable
            .iter()
            .map(|id| id.trim().to_ascii_lowercase()),
    );
    let startup_delay = Duration::from_millis(cli.startup_delay_ms);
    let count = usize::from(cli.count);
    if base_port != 0 && usize::from(base_port) + count - 1 > usize::from(u16::MAX) {
        bail!("--count {count} from port {base_port} runs past port 65535");
    }

    // Bound first, so the control API answers even while the engines are booting.
    let control = match cli.control_port {
        Some(port) => Some(
            TcpListener::bind((ip, port))
                .await
                .with_context(|| format!("binding control port {port}"))?,
        ),
        None => None,
    };

    // Every API port is bound now so that the READY line names real ports and a busy
    // port fails the start. Engines that must start closed (booting, or in `refuse`)
    // release theirs and bind it again later; another process could grab an ephemeral
    // port in between, which is acceptable for a test tool.
    let keep_open = startup_delay.is_zero() && cli.mode != Mode::Refuse;
    let mut engines = Vec::with_capacity(count);
    let mut listeners = Vec::with_capacity(count);
    for index in 0..count {
        let port = if base_port == 0 {
            0
        } else {
            base_port + index as u16
        };
        let listener = TcpListener::bind((ip, port))
            .await
            .with_context(|| format!("binding API port {port}"))?;
        let addr = listener.local_addr()?;
        engines.push(Arc::new(Engine::new(
            index,
            addr,
            cli.mode,
            cli.latency_ms,
            ts_loop.clone(),
        )));
        listeners.push(keep_open.then_some(listener));
    }
    let engines: control::Engines = engines.into();

    for (engine, listener) in engines.iter().zip(listeners) {
        let router = api::router(engine.clone());
        tokio::spawn(server::run_engine(
            engine.clone(),
            router,
            listener,
            startup_delay,
        ));
    }
    let control_addr = match control {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let router = control::router(engines.clone());
            tokio::spawn(async move {
                if let Err(err) = axum::serve(listener, router).await {
                    error!(%err, "control listener stopped");
                }
            });
            Some(addr)
        }
        None => None,
    };

    // Handlers go in before READY: a test may signal us the moment it reads the line,
    // and as PID 1 an unhandled SIGTERM would be ignored altogether.
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;

    let ready = ready_line(control_addr, engines.iter().map(|e| e.addr));
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{ready}")?;
    stdout.flush()?;
    drop(stdout);
    info!(
        engines = count,
        mode = cli.mode.as_str(),
        startup_delay_ms = cli.startup_delay_ms,
        control = ?control_addr,
        "engine simulator started"
    );

    let name = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = sigint.recv() => "SIGINT",
    };
    info!(signal = name, "shutting down");
    // Exit at once: hung requests and endless streams will never finish on their own,
    // and there is no state worth saving.
    std::process::exit(0)
}

/// `READY control=<addr|none> engines=<addr>,<addr>,...`
fn ready_line(control: Option<SocketAddr>, engines: impl Iterator<Item = SocketAddr>) -> String {
    let control = control.map_or_else(|| "none".to_owned(), |a| a.to_string());
    let engines: Vec<String> = engines.map(|a| a.to_string()).collect();
    format!("READY control={control} engines={}", engines.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conf_takes_http_port_and_bind_all() {
        let conf = parse_conf("--http-port=6900\n--https-port=6901\n--bind-all\n").unwrap();
        assert_eq!(
            conf,
            Conf {
                http_port: Some(6900),
                bind_all: true
            }
        );
        assert_eq!(parse_conf("--https-port=1").unwrap(), Conf::default());
        assert!(parse_conf("--http-port=x").is_err());
    }

    #[test]
    fn ready_line_format() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        assert_eq!(
            ready_line(None, [a, b].into_iter()),
            "READY control=none engines=127.0.0.1:1,127.0.0.1:2"
        );
        assert_eq!(
            ready_line(Some(a), [b].into_iter()),
            "READY control=127.0.0.1:1 engines=127.0.0.1:2"
        );
    }
}
