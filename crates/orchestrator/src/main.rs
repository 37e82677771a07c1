use std::io::IsTerminal;
use std::process::ExitCode;

use clap::error::ErrorKind;
use orchestrator::app::App;
use orchestrator::config::Config;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Raises the soft limit of open files to the hard one. Every probe and
/// stat poll in flight holds a socket, and a health sweep of a large pool
/// runs hundreds at once (see `health::sweep_concurrency`); a service
/// manager's default soft limit of 1,024 would turn the rest into errors.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// Exit code for a configuration error (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // `.env` first, without overriding what the environment already says.
    match dotenvy::dotenv() {
        Ok(path) => tracing::info!(path = %path.display(), "read .env"),
        Err(e) if e.not_found() => {}
        Err(e) => {
            eprintln!("error: cannot read .env: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    let config = match Config::from_args(std::env::args_os()) {
        Ok(config) => config,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("error: invalid configuration: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    tracing::debug!(?config, "configuration");
    raise_open_file_limit();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if config.healthcheck {
        return runtime.block_on(healthcheck(&config));
    }
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(&config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

/// `--healthcheck`: one `GET /health/live` on the configured address.
async fn healthcheck(config: &Config) -> ExitCode {
    let host = match config.app_host {
        ip if !ip.is_unspecified() => ip,
        std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
    };
    let url = format!(
        "http://{}/health/live",
        std::net::SocketAddr::new(host, config.app_port)
    );
    let timeout = std::time::Duration::from_secs(3);
    let answer = async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        client.get(&url).send().await
    };
    match answer.await {
        Ok(response) if response.status().is_success() => {
            println!("live: {url} answered {}", response.status());
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("not live: {url} answered {}", response.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            let reason = if e.is_timeout() {
                format!("no answer within {} s", timeout.as_secs())
            } else {
                orchestrator::engine_client::EngineError::from_request(&e, timeout).to_string()
            };
            eprintln!("not live: {url}: {reason}");
            ExitCode::FAILURE
        }
    }
}

async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
