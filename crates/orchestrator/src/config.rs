//! Configuration: environment variables (the names operators already have in
//! their compose files), a `.env` file, and the same settings as command-line
//! flags. Everything is parsed and checked before any port is bound, and a bad
//! value stops start-up with a message naming the variable.

use crate::ports::PortRange;
use crate::runtime::Label;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgAction, Parser};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{var}: {message}")]
    Invalid { var: &'static str, message: String },
}

fn invalid(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var,
        message: message.into(),
    }
}

fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| format!("'{text}' is not a range like 19000-19999"))?;
    let start: u16 = start
        .trim()
        .parse()
        .map_err(|_| format!("'{start}' is not a port number (1-65535)"))?;
    let end: u16 = end
        .trim()
        .parse()
        .map_err(|_| format!("'{end}' is not a port number (1-65535)"))?;
    if start == 0 {
        return Err("ports start at 1".into());
    }
    if start > end {
        return Err(format!("the range starts at {start}, above its end {end}"));
    }
    Ok(PortRange { start, end })
}

fn parse_label(text: &str) -> Result<Label, String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => Ok(Label {
            key: key.trim().to_owned(),
            value: value.trim().to_owned(),
        }),
        _ => Err(format!("'{text}' is not a label like key=value")),
    }
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !value.is_finite() || value <= 0.0 {
        return Err(format!("'{text}' must be a number of seconds above 0"));
    }
    Ok(value)
}

fn parse_non_negative_seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("'{text}' must be a number of seconds, 0 or more"));
    }
    Ok(value)
}

/// `RUNTIME`: where engines run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeChoice {
    Docker,
    Swarm,
}

fn parse_runtime(text: &str) -> Result<RuntimeChoice, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "docker" => Ok(RuntimeChoice::Docker),
        "swarm" => Ok(RuntimeChoice::Swarm),
        other => Err(format!("'{other}' is not a runtime: docker or swarm")),
    }
}

/// `512m`, `1g`, `256k` or bytes, as `docker run --memory` takes them; at
/// least 6 MiB (Docker's own minimum).
fn parse_memory(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (digits, unit) = match lower.char_indices().last() {
        Some((at, c @ ('k' | 'm' | 'g'))) => (&lower[..at], c),
        _ => (lower, ' '),
    };
    let scale: i64 = match unit {
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        _ => 1,
    };
    let value: i64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a memory size like 512m or 1g"))?;
    let bytes = value
        .checked_mul(scale)
        .ok_or_else(|| format!("'{text}' is too large"))?;
    if bytes < 6 << 20 {
        return Err(format!("'{text}' is below Docker's minimum of 6m"));
    }
    Ok(bytes)
}

fn parse_cpus(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of CPU cores like 1.5"))?;
    if !value.is_finite() || value < 0.01 {
        return Err(format!("'{text}' must be at least 0.01 cores"));
    }
    Ok(value)
}

/// Every setting, each with its environment variable. `--help` lists them all
/// with their defaults. The value names are the variable names so that a parse
/// error names the variable an operator would edit.
#[derive(Parser, Clone)]
#[command(
    name = "acestream-orchestrator",
    version,
    about = "Keeps a pool of AceStream engines healthy, tracks their usage and hands stream proxies the best engine.",
    after_help = "Every option can also be set by its environment variable or in a .env file in the working directory."
)]
pub struct Config {
    /// Listen address.
    #[arg(
        long,
        env = "APP_HOST",
        value_name = "APP_HOST",
        default_value = "0.0.0.0"
    )]
    pub app_host: IpAddr,

    /// Listen port.
    #[arg(
        long,
        env = "APP_PORT",
        value_name = "APP_PORT",
        default_value_t = 8000
    )]
    pub app_port: u16,

    /// Bearer key for protected endpoints. While unset, protected endpoints answer only clients on loopback.
    #[arg(long, env = "API_KEY", value_name = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// SQLite database, `sqlite:///relative/path.db` or `sqlite:////absolute/path.db`.
    #[arg(
        long,
        env = "DB_URL",
        value_name = "DB_URL",
        default_value = "sqlite:///./orchestrator.db"
    )]
    pub db_url: String,

    /// Seconds a client has to send a request's headers, and again its body
    /// (slow clients are cut off; a slow body gets 408).
    #[arg(long, env = "HTTP_HEADER_TIMEOUT_S", value_name = "HTTP_HEADER_TIMEOUT_S", default_value = "10", value_parser = parse_seconds)]
    pub http_header_timeout_s: f64,

    /// Seconds between two health sweeps.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_S", value_name = "HEALTH_CHECK_INTERVAL_S", default_value = "30", value_parser = parse_seconds)]
    pub health_check_interval_s: f64,

    /// Seconds before a health check counts as failed.
    #[arg(long, env = "HEALTH_CHECK_TIMEOUT_S", value_name = "HEALTH_CHECK_TIMEOUT_S", default_value = "5", value_parser = parse_seconds)]
    pub health_check_timeout_s: f64,

    /// Consecutive failed checks before an engine is unhealthy.
    #[arg(
        long,
        env = "HEALTH_FAILURE_THRESHOLD",
        value_name = "HEALTH_FAILURE_THRESHOLD",
        default_value_t = 1
    )]
    pub health_failure_threshold: u32,

    /// Health checks running at once.
    #[arg(
        long,
        env = "HEALTH_CHECK_CONCURRENCY",
        value_name = "HEALTH_CHECK_CONCURRENCY",
        default_value_t = 128
    )]
    pub health_check_concurrency: usize,

    /// stat_url polls running at once.
    #[arg(
        long,
        env = "COLLECT_CONCURRENCY",
        value_name = "COLLECT_CONCURRENCY",
        default_value_t = 32
    )]
    pub collect_concurrency: usize,

    /// Health checks and transitions kept per engine for `GET /engines/{id}/health`.
    #[arg(
        long,
        env = "HEALTH_HISTORY_MAX",
        value_name = "HEALTH_HISTORY_MAX",
        default_value_t = 50
    )]
    pub health_history_max: usize,

    /// Seconds an engine we run may stay unhealthy before it is replaced.
    #[arg(long, env = "HEALTH_UNHEALTHY_GRACE_PERIOD_S", value_name = "HEALTH_UNHEALTHY_GRACE_PERIOD_S", default_value = "60", value_parser = parse_non_negative_seconds)]
    pub health_unhealthy_grace_period_s: f64,

    /// Seconds between two replacements.
    #[arg(long, env = "HEALTH_REPLACEMENT_COOLDOWN_S", value_name = "HEALTH_REPLACEMENT_COOLDOWN_S", default_value = "60", value_parser = parse_non_negative_seconds)]
    pub health_replacement_cooldown_s: f64,

    /// Above this share of unhealthy engines, suspect a shared cause and replace none.
    #[arg(
        long,
        env = "HEALTH_MAX_UNHEALTHY_PERCENT",
        value_name = "HEALTH_MAX_UNHEALTHY_PERCENT",
        default_value_t = 50
    )]
    pub health_max_unhealthy_percent: u8,

    /// Seconds between two polls of each started stream's stat_url.
    #[arg(long, env = "COLLECT_INTERVAL_S", value_name = "COLLECT_INTERVAL_S", default_value = "5", value_parser = parse_seconds)]
    pub collect_interval_s: f64,

    /// Stat snapshots kept per stream.
    #[arg(
        long,
        env = "STATS_HISTORY_MAX",
        value_name = "STATS_HISTORY_MAX",
        default_value_t = 720
    )]
    pub stats_history_max: usize,

    /// Days an ended stream and its stat snapshots are kept in the database
    /// (0 keeps them forever).
    #[arg(
        long,
        env = "STREAMS_RETENTION_DAYS",
        value_name = "STREAMS_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub streams_retention_days: u32,

    /// Seconds between two database clean-ups (expired streams, then giving
    /// freed space back); one also runs at start.
    #[arg(long, env = "DB_CLEANUP_INTERVAL_S", value_name = "DB_CLEANUP_INTERVAL_S", default_value = "3600", value_parser = parse_seconds)]
    pub db_cleanup_interval_s: f64,

    /// Ended streams kept in memory for `GET /streams` (the database keeps them for `STREAMS_RETENTION_DAYS`).
    #[arg(
        long,
        env = "ENDED_STREAMS_MAX",
        value_name = "ENDED_STREAMS_MAX",
        default_value_t = 1000
    )]
    pub ended_streams_max: usize,

    /// Default stream limit per engine for `POST /engines/select`.
    #[arg(
        long,
        env = "MAX_STREAMS_PER_ENGINE",
        value_name = "MAX_STREAMS_PER_ENGINE",
        default_value_t = 2
    )]
    pub max_streams_per_engine: u32,

    /// Seconds a slot reserved by `POST /engines/select` waits for its stream_started.
    #[arg(long, env = "SELECT_RESERVATION_TTL_S", value_name = "SELECT_RESERVATION_TTL_S", default_value = "30", value_parser = parse_seconds)]
    pub select_reservation_ttl_s: f64,

    /// Built-in proxy: seconds without a byte from the engine before the
    /// stream moves to another engine.
    #[arg(long, env = "PROXY_STALL_S", value_name = "PROXY_STALL_S", default_value = "5", value_parser = parse_seconds)]
    pub proxy_stall_s: f64,

    /// Built-in proxy: seconds a failover (or a first start) may take before
    /// viewers' connections end.
    #[arg(long, env = "PROXY_FAILOVER_TIMEOUT_S", value_name = "PROXY_FAILOVER_TIMEOUT_S", default_value = "20", value_parser = parse_seconds)]
    pub proxy_failover_timeout_s: f64,

    /// Built-in proxy: seconds a session lives on after its last viewer left
    /// (zapping back re-uses it).
    #[arg(long, env = "PROXY_LINGER_S", value_name = "PROXY_LINGER_S", default_value = "10", value_parser = parse_non_negative_seconds)]
    pub proxy_linger_s: f64,

    /// Built-in proxy: seconds behind the live edge viewers are served, so a
    /// failover shorter than this is not seen (0 = live edge).
    #[arg(long, env = "PROXY_HEADROOM_S", value_name = "PROXY_HEADROOM_S", default_value = "0", value_parser = parse_non_negative_seconds)]
    pub proxy_headroom_s: f64,

    /// Built-in proxy: memory per stream (the shared buffer), in MiB.
    #[arg(
        long,
        env = "PROXY_BUFFER_MB",
        value_name = "PROXY_BUFFER_MB",
        default_value_t = 16
    )]
    pub proxy_buffer_mb: u32,

    /// Built-in proxy: most viewers of one stream.
    #[arg(
        long,
        env = "MAX_VIEWERS_PER_STREAM",
        value_name = "MAX_VIEWERS_PER_STREAM",
        default_value_t = 100
    )]
    pub max_viewers_per_stream: u32,

    /// Built-in proxy: most streams (contents) served at once.
    #[arg(
        long,
        env = "PROXY_MAX_SESSIONS",
        value_name = "PROXY_MAX_SESSIONS",
        default_value_t = 200
    )]
    pub proxy_max_sessions: u32,

    /// Built-in proxy: when set, `/ace/getstream` needs `?token=` with this value
    /// (players cannot send a bearer header).
    #[arg(
        long,
        env = "STREAM_TOKEN",
        value_name = "STREAM_TOKEN",
        hide_env_values = true
    )]
    pub stream_token: Option<String>,

    /// HLS output: segment duration aimed at, in seconds (segments are cut
    /// at keyframes, so they last this or up to a keyframe interval more).
    #[arg(long, env = "HLS_SEGMENT_S", value_name = "HLS_SEGMENT_S", default_value = "2", value_parser = parse_seconds)]
    pub hls_segment_s: f64,

    /// HLS output: segments in the live playlist (and in memory, per stream).
    #[arg(
        long,
        env = "HLS_WINDOW_SIZE",
        value_name = "HLS_WINDOW_SIZE",
        default_value_t = 6
    )]
    pub hls_window_size: u32,

    /// The orchestrator's address as players reach it (`https://tv.example.com`),
    /// for the URLs of rewritten playlists; unset = the request's Host header.
    #[arg(long, env = "PUBLIC_URL", value_name = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Hosts `GET /playlist?url=` may fetch from, comma-separated: exact
    /// names or addresses (which may be private), `*.example.com`, or `*`
    /// (any public address). Unset = no remote playlist is fetched.
    #[arg(
        long,
        env = "PLAYLIST_ALLOWED_HOSTS",
        value_name = "PLAYLIST_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub playlist_allowed_hosts: Vec<String>,

    /// Seconds `GET /playlist?url=` may take to fetch the remote playlist.
    #[arg(long, env = "PLAYLIST_FETCH_TIMEOUT_S", value_name = "PLAYLIST_FETCH_TIMEOUT_S", default_value = "10", value_parser = parse_seconds)]
    pub playlist_fetch_timeout_s: f64,

    /// The Gluetun container engines run behind (one node, as the Python
    /// orchestrator read it).
    #[arg(
        long,
        env = "GLUETUN_CONTAINER_NAME",
        value_name = "GLUETUN_CONTAINER_NAME"
    )]
    pub gluetun_container_name: Option<String>,

    /// Several Gluetun containers, comma-separated.
    #[arg(
        long,
        env = "GLUETUN_CONTAINERS",
        value_name = "GLUETUN_CONTAINERS",
        value_delimiter = ','
    )]
    pub gluetun_containers: Vec<String>,

    /// Key for Gluetun's control server (`X-API-Key`, Gluetun 3.40 and later).
    #[arg(
        long,
        env = "GLUETUN_API_KEY",
        value_name = "GLUETUN_API_KEY",
        hide_env_values = true
    )]
    pub gluetun_api_key: Option<String>,

    /// Port of Gluetun's control server inside the node.
    #[arg(
        long,
        env = "GLUETUN_CONTROL_PORT",
        value_name = "GLUETUN_CONTROL_PORT",
        default_value_t = 8000
    )]
    pub gluetun_control_port: u16,

    /// Engines placed behind a VPN node before another node gets more.
    #[arg(
        long,
        env = "PREFERRED_ENGINES_PER_VPN",
        value_name = "PREFERRED_ENGINES_PER_VPN",
        default_value_t = 10
    )]
    pub preferred_engines_per_vpn: u32,

    /// Most engines behind one VPN node.
    #[arg(
        long,
        env = "MAX_ENGINES_PER_VPN",
        value_name = "MAX_ENGINES_PER_VPN",
        default_value_t = 20
    )]
    pub max_engines_per_vpn: u32,

    /// When a VPN node recovers, restart (recreate) the engines behind it, as
    /// the Python orchestrator did, instead of re-checking them.
    #[arg(long, env = "VPN_RESTART_ENGINES_ON_RECONNECT", value_name = "VPN_RESTART_ENGINES_ON_RECONNECT", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub vpn_restart_engines_on_reconnect: bool,

    /// Seconds between two checks of every VPN node.
    #[arg(long, env = "VPN_CHECK_INTERVAL_S", value_name = "VPN_CHECK_INTERVAL_S", default_value = "5", value_parser = parse_seconds)]
    pub vpn_check_interval_s: f64,

    /// A directory of WireGuard `.conf` files, one credential each: the
    /// orchestrator creates Gluetun nodes with them as engines need them.
    #[arg(long, env = "VPN_CONFIGS_DIR", value_name = "VPN_CONFIGS_DIR")]
    pub vpn_configs_dir: Option<PathBuf>,

    /// The image of the Gluetun nodes the orchestrator creates.
    #[arg(
        long,
        env = "GLUETUN_IMAGE",
        value_name = "GLUETUN_IMAGE",
        default_value = "qmcgaw/gluetun"
    )]
    pub gluetun_image: String,

    /// The TUN device given to the Gluetun nodes the orchestrator creates
    /// (host path, mapped to the same path); empty: none.
    #[arg(
        long,
        env = "GLUETUN_TUN_DEVICE",
        value_name = "GLUETUN_TUN_DEVICE",
        default_value = "/dev/net/tun"
    )]
    pub gluetun_tun_device: String,

    /// Seconds a node the orchestrator created may stay down before it is
    /// replaced by one on another credential.
    #[arg(long, env = "VPN_UNHEALTHY_GRACE_PERIOD_S", value_name = "VPN_UNHEALTHY_GRACE_PERIOD_S", default_value = "120", value_parser = parse_non_negative_seconds)]
    pub vpn_unhealthy_grace_period_s: f64,

    /// Seconds a credential whose node failed (down past the grace period,
    /// or never healthy) is not leased again.
    #[arg(long, env = "VPN_CREDENTIAL_COOLDOWN_S", value_name = "VPN_CREDENTIAL_COOLDOWN_S", default_value = "600", value_parser = parse_non_negative_seconds)]
    pub vpn_credential_cooldown_s: f64,

    /// Seconds a node the orchestrator created lives without engines before
    /// it is removed and its credential freed.
    #[arg(long, env = "VPN_IDLE_GRACE_PERIOD_S", value_name = "VPN_IDLE_GRACE_PERIOD_S", default_value = "60", value_parser = parse_non_negative_seconds)]
    pub vpn_idle_grace_period_s: f64,

    /// Seconds a new node has to report its tunnel running.
    #[arg(long, env = "VPN_STARTUP_TIMEOUT_S", value_name = "VPN_STARTUP_TIMEOUT_S", default_value = "60", value_parser = parse_seconds)]
    pub vpn_startup_timeout_s: f64,

    /// Engine image.
    #[arg(
        long,
        env = "TARGET_IMAGE",
        value_name = "TARGET_IMAGE",
        default_value = "acestream/engine:latest"
    )]
    pub target_image: String,

    /// Label that marks the containers we manage.
    #[arg(long, env = "CONTAINER_LABEL", value_name = "CONTAINER_LABEL", default_value = "ondemand.app=myservice", value_parser = parse_label)]
    pub container_label: Label,

    /// Docker network for engine containers.
    #[arg(long, env = "DOCKER_NETWORK", value_name = "DOCKER_NETWORK")]
    pub docker_network: Option<String>,

    /// Where engines run: `docker` (containers on this Docker host) or
    /// `swarm` (one Docker Swarm service per engine, on any node; needs
    /// SWARM_NETWORK and a manager node's Docker socket).
    #[arg(long, env = "RUNTIME", value_name = "RUNTIME", default_value = "docker", value_parser = parse_runtime)]
    pub runtime: RuntimeChoice,

    /// RUNTIME=swarm: the attachable overlay network the engines join; the
    /// orchestrator, attached to it too, reaches each engine by its service
    /// name.
    #[arg(long, env = "SWARM_NETWORK", value_name = "SWARM_NETWORK")]
    pub swarm_network: Option<String>,

    /// RUNTIME=swarm: placement constraints for engines, comma-separated
    /// (`node.labels.acestream==true,node.role==worker`). Engines are spread
    /// over the nodes that qualify (a `spread=node.labels.zone` item spreads
    /// over that label instead of node.id).
    #[arg(
        long,
        env = "ENGINE_PLACEMENT",
        value_name = "ENGINE_PLACEMENT",
        value_delimiter = ','
    )]
    pub engine_placement: Vec<String>,

    /// Memory limit of every engine (`512m`, `1g`, or bytes); none when unset.
    #[arg(long, env = "ENGINE_MEMORY_LIMIT", value_name = "ENGINE_MEMORY_LIMIT", value_parser = parse_memory)]
    pub engine_memory_limit: Option<i64>,

    /// CPU limit of every engine, in cores (`1.5`); none when unset.
    #[arg(long, env = "ENGINE_CPU_LIMIT", value_name = "ENGINE_CPU_LIMIT", value_parser = parse_cpus)]
    pub engine_cpu_limit: Option<f64>,

    /// Engines kept free (without a stream).
    #[arg(
        long,
        env = "MIN_REPLICAS",
        value_name = "MIN_REPLICAS",
        default_value_t = 0
    )]
    pub min_replicas: u32,

    /// Most engines run at once.
    #[arg(
        long,
        env = "MAX_REPLICAS",
        value_name = "MAX_REPLICAS",
        default_value_t = 20
    )]
    pub max_replicas: u32,

    /// Seconds a new engine has to answer its API.
    #[arg(long, env = "STARTUP_TIMEOUT_S", value_name = "STARTUP_TIMEOUT_S", default_value = "25", value_parser = parse_seconds)]
    pub startup_timeout_s: f64,

    /// Seconds between two Docker resyncs.
    #[arg(long, env = "MONITOR_INTERVAL_S", value_name = "MONITOR_INTERVAL_S", default_value = "10", value_parser = parse_seconds)]
    pub monitor_interval_s: f64,

    /// Seconds between two autoscaler runs.
    #[arg(long, env = "AUTOSCALE_INTERVAL_S", value_name = "AUTOSCALE_INTERVAL_S", default_value = "30", value_parser = parse_seconds)]
    pub autoscale_interval_s: f64,

    /// Seconds an empty engine lives before removal.
    #[arg(long, env = "ENGINE_GRACE_PERIOD_S", value_name = "ENGINE_GRACE_PERIOD_S", default_value = "30", value_parser = parse_non_negative_seconds)]
    pub engine_grace_period_s: f64,

    /// Remove the engine when its stream ends.
    #[arg(long, env = "AUTO_DELETE", value_name = "AUTO_DELETE", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub auto_delete: bool,

    /// Host ports for engine containers.
    #[arg(long, env = "PORT_RANGE_HOST", value_name = "PORT_RANGE_HOST", default_value = "19000-19999", value_parser = parse_port_range)]
    pub port_range_host: PortRange,

    /// In-container HTTP ports.
    #[arg(long, env = "ACE_HTTP_RANGE", value_name = "ACE_HTTP_RANGE", default_value = "40000-44999", value_parser = parse_port_range)]
    pub ace_http_range: PortRange,

    /// In-container HTTPS ports.
    #[arg(long, env = "ACE_HTTPS_RANGE", value_name = "ACE_HTTPS_RANGE", default_value = "45000-49999", value_parser = parse_port_range)]
    pub ace_https_range: PortRange,

    /// Images `POST /provision` may run, comma-separated (default: TARGET_IMAGE only).
    #[arg(
        long,
        env = "PROVISION_ALLOWED_IMAGES",
        value_name = "PROVISION_ALLOWED_IMAGES",
        value_delimiter = ','
    )]
    pub provision_allowed_images: Vec<String>,

    /// Origins allowed to call the API from a browser (CORS), comma-separated; unset = CORS off.
    #[arg(
        long,
        env = "CORS_ALLOW_ORIGINS",
        value_name = "CORS_ALLOW_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_allow_origins: Vec<String>,

    /// Also publish the engine's HTTPS port.
    #[arg(long, env = "ACE_MAP_HTTPS", value_name = "ACE_MAP_HTTPS", default_value = "false", value_parser = BoolishValueParser::new(), action = ArgAction::Set)]
    pub ace_map_https: bool,

    /// Do not serve: ask the orchestrator listening on APP_HOST:APP_PORT (loopback
    /// when APP_HOST is 0.0.0.0 or ::) whether it is live, exit 0 if it is and 1
    /// if not. For container health checks in images without curl.
    #[arg(long)]
    pub healthcheck: bool,
}

impl fmt::Debug for Config {
    // By hand so that the API key never reaches a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("app_host", &self.app_host)
            .field("app_port", &self.app_port)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field(
                "stream_token",
                &self.stream_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "gluetun_api_key",
                &self.gluetun_api_key.as_ref().map(|_| "<redacted>"),
            )
            .field("vpn_nodes", &self.vpn_nodes())
            .field("vpn_configs_dir", &self.vpn_configs_dir)
            .field("db_url", &self.db_url)
            .field("health_check_interval_s", &self.health_check_interval_s)
            .field("health_check_timeout_s", &self.health_check_timeout_s)
            .field("health_failure_threshold", &self.health_failure_threshold)
            .field("collect_interval_s", &self.collect_interval_s)
            .field("max_streams_per_engine", &self.max_streams_per_engine)
            .field("container_label", &self.container_label.to_string())
            .field("min_replicas", &self.min_replicas)
            .field("max_replicas", &self.max_replicas)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Parses flags and environment (the caller loads `.env` first) and checks the
    /// rules that span several values.
    pub fn from_args<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Self::try_parse_from(args)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.health_failure_threshold == 0 {
            return Err(invalid("HEALTH_FAILURE_THRESHOLD", "must be 1 or more"));
        }
        if self.health_check_concurrency == 0 {
            return Err(invalid("HEALTH_CHECK_CONCURRENCY", "must be 1 or more"));
        }
        if self.collect_concurrency == 0 {
            return Err(invalid("COLLECT_CONCURRENCY", "must be 1 or more"));
        }
        if self.health_history_max == 0 {
            return Err(invalid("HEALTH_HISTORY_MAX", "must be 1 or more"));
        }
        if self.health_max_unhealthy_percent > 100 {
            return Err(invalid(
                "HEALTH_MAX_UNHEALTHY_PERCENT",
                "must be between 0 and 100",
            ));
        }
        if self.stats_history_max == 0 {
            return Err(invalid("STATS_HISTORY_MAX", "must be 1 or more"));
        }
        if self.proxy_buffer_mb == 0 || self.proxy_buffer_mb > 1024 {
            return Err(invalid("PROXY_BUFFER_MB", "must be between 1 and 1024"));
        }
        if !(1.0..=10.0).contains(&self.hls_segment_s) {
            return Err(invalid("HLS_SEGMENT_S", "must be between 1 and 10 seconds"));
        }
        if !(2..=100).contains(&self.hls_window_size) {
            return Err(invalid("HLS_WINDOW_SIZE", "must be between 2 and 100"));
        }
        if let Some(url) = &self.public_url {
            let ok = reqwest::Url::parse(url).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.query().is_none()
                    && u.fragment().is_none()
            });
            if !ok {
                return Err(invalid(
                    "PUBLIC_URL",
                    "must be an http(s) URL without query, like https://tv.example.com",
                ));
            }
        }
        for host in &self.playlist_allowed_hosts {
            let host = host.trim();
            let name = host.strip_prefix("*.").unwrap_or(host);
            if host.is_empty()
                || (host != "*"
                    && (name.is_empty()
                        || !name.bytes().all(|b| {
                            b.is_ascii_alphanumeric()
                                || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                        })))
            {
                return Err(invalid(
                    "PLAYLIST_ALLOWED_HOSTS",
                    format!("'{host}' is not a host name, an address, *.domain or *"),
                ));
            }
        }
        if self.max_viewers_per_stream == 0 {
            return Err(invalid("MAX_VIEWERS_PER_STREAM", "must be 1 or more"));
        }
        if self.proxy_max_sessions == 0 {
            return Err(invalid("PROXY_MAX_SESSIONS", "must be 1 or more"));
        }
        if self.max_streams_per_engine == 0 {
            return Err(invalid("MAX_STREAMS_PER_ENGINE", "must be 1 or more"));
        }
        if self.max_replicas < self.min_replicas {
            return Err(invalid(
                "MAX_REPLICAS",
                format!(
                    "{} is below MIN_REPLICAS ({})",
                    self.max_replicas, self.min_replicas
                ),
            ));
        }
        if let Some(key) = &self.api_key {
            if key.trim().is_empty() {
                return Err(invalid(
                    "API_KEY",
                    "is set but empty; unset it or give a key",
                ));
            }
        }
        if self.container_label.value.is_empty() {
            return Err(invalid("CONTAINER_LABEL", "needs a value after '='"));
        }
        for origin in &self.cors_allow_origins {
            let origin = origin.trim();
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.trim_end_matches('/').contains(['?', '#'])
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                return Err(invalid(
                    "CORS_ALLOW_ORIGINS",
                    format!("'{origin}' is not an origin like https://panel.example.org"),
                ));
            }
        }
        if let Some(dir) = &self.vpn_configs_dir {
            if !dir.is_dir() {
                return Err(invalid(
                    "VPN_CONFIGS_DIR",
                    format!("'{}' is not a directory", dir.display()),
                ));
            }
            // The nodes' control servers are published on the host: never
            // without a key.
            let has_key =
                matches!(self.gluetun_api_key.as_deref(), Some(k) if !k.trim().is_empty());
            if !has_key {
                return Err(invalid(
                    "GLUETUN_API_KEY",
                    "is needed with VPN_CONFIGS_DIR: the control servers of the nodes the orchestrator creates are protected with it",
                ));
            }
            if self.max_engines_per_vpn == 0 {
                return Err(invalid("MAX_ENGINES_PER_VPN", "must be 1 or more"));
            }
        }
        if self.runtime == RuntimeChoice::Swarm {
            if self
                .swarm_network
                .as_deref()
                .is_none_or(|n| n.trim().is_empty())
            {
                return Err(invalid(
                    "SWARM_NETWORK",
                    "RUNTIME=swarm needs the overlay network the engines and the orchestrator share",
                ));
            }
            if !self.vpn_nodes().is_empty() || self.vpn_configs_dir.is_some() {
                return Err(invalid(
                    "RUNTIME",
                    "swarm cannot run engines behind Gluetun containers (GLUETUN_CONTAINER_NAME/GLUETUN_CONTAINERS/VPN_CONFIGS_DIR): a service cannot join another container's network namespace",
                ));
            }
        }
        if let Some(bad) = self.engine_placement.iter().map(|c| c.trim()).find(|c| {
            !c.is_empty() && !c.starts_with("spread=") && !c.contains("==") && !c.contains("!=")
        }) {
            return Err(invalid(
                "ENGINE_PLACEMENT",
                format!("'{bad}' is not a constraint like node.labels.acestream==true"),
            ));
        }
        self.db_path()?;
        Ok(())
    }

    /// The images `POST /provision` may run.
    pub fn allowed_images(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .provision_allowed_images
            .iter()
            .map(|i| i.trim().to_owned())
            .filter(|i| !i.is_empty())
            .collect();
        if listed.is_empty() {
            vec![self.target_image.clone()]
        } else {
            listed
        }
    }

    /// The SQLite file named by `DB_URL`. Accepts the SQLAlchemy spelling the
    /// Python orchestrator used (`sqlite:///./x.db` relative, `sqlite:////abs/x.db`
    /// absolute) and a bare `sqlite:x.db` or path.
    pub fn db_path(&self) -> Result<PathBuf, ConfigError> {
        let url = self.db_url.trim();
        let path = if let Some(rest) = url.strip_prefix("sqlite:///") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(invalid(
                "DB_URL",
                format!("'{url}' is not a SQLite URL; only sqlite:///path.db is supported"),
            ));
        } else {
            url
        };
        if path.is_empty() || path == ":memory:" {
            return Err(invalid(
                "DB_URL",
                "needs a file path (an in-memory database would lose every write on restart)",
            ));
        }
        Ok(PathBuf::from(path))
    }

    /// The VPN nodes: `GLUETUN_CONTAINER_NAME` first, then `GLUETUN_CONTAINERS`,
    /// each once.
    pub fn vpn_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = Vec::new();
        for name in self
            .gluetun_container_name
            .iter()
            .chain(&self.gluetun_containers)
            .map(|n| n.trim())
            .filter(|n| !n.is_empty())
        {
            if !nodes.iter().any(|n| n == name) {
                nodes.push(name.to_owned());
            }
        }
        nodes
    }

    pub fn health_interval(&self) -> Duration {
        Duration::from_secs_f64(self.health_check_interval_s)
    }

    pub fn health_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.health_check_timeout_s)
    }

    pub fn collect_interval(&self) -> Duration {
        Duration::from_secs_f64(self.collect_interval_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["acestream-orchestrator"];
        all.extend_from_slice(args);
        let config = Config::from_args(all).map_err(|e| e.to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.app_port, 8000);
        assert_eq!(c.health_check_interval_s, 30.0);
        assert_eq!(c.health_check_timeout_s, 5.0);
        assert_eq!(c.health_failure_threshold, 1);
        assert_eq!(c.max_streams_per_engine, 2);
        assert_eq!(c.container_label.to_string(), "ondemand.app=myservice");
        assert_eq!(
            c.port_range_host,
            PortRange {
                start: 19000,
                end: 19999
            }
        );
        assert!(!c.auto_delete);
        assert_eq!(c.db_path().unwrap(), PathBuf::from("./orchestrator.db"));
        assert_eq!(
            c.allowed_images(),
            vec!["acestream/engine:latest".to_owned()]
        );
        assert!(c.cors_allow_origins.is_empty());
    }

    #[test]
    fn bad_values_name_their_variable() {
        let cases: &[(&[&str], &str)] = &[
            (&["--app-port", "eighty"], "APP_PORT"),
            (
                &["--health-check-interval-s", "0"],
                "HEALTH_CHECK_INTERVAL_S",
            ),
            (&["--health-check-timeout-s=-1"], "HEALTH_CHECK_TIMEOUT_S"),
            (&["--port-range-host", "20000-19000"], "PORT_RANGE_HOST"),
            (&["--ace-http-range", "40000"], "ACE_HTTP_RANGE"),
            (&["--container-label", "nolabel"], "CONTAINER_LABEL"),
            (
                &["--min-replicas", "5", "--max-replicas", "2"],
                "MAX_REPLICAS",
            ),
            (
                &["--health-failure-threshold", "0"],
                "HEALTH_FAILURE_THRESHOLD",
            ),
            (&["--db-url", "postgres://x"], "DB_URL"),
            (&["--auto-delete", "maybe"], "AUTO_DELETE"),
            (&["--runtime", "kubernetes"], "RUNTIME"),
            (&["--runtime", "swarm"], "SWARM_NETWORK"),
            (
                &[
                    "--runtime",
                    "swarm",
                    "--swarm-network",
                    "n",
                    "--gluetun-container-name",
                    "g",
                ],
                "RUNTIME",
            ),
            (&["--engine-placement", "node.labels.x"], "ENGINE_PLACEMENT"),
            (&["--engine-memory-limit", "lots"], "ENGINE_MEMORY_LIMIT"),
            (&["--engine-memory-limit", "1k"], "ENGINE_MEMORY_LIMIT"),
            (&["--engine-cpu-limit", "0"], "ENGINE_CPU_LIMIT"),
            (
                &["--cors-allow-origins", "not an origin"],
                "CORS_ALLOW_ORIGINS",
            ),
        ];
        for (args, var) in cases {
            let err = parse(args).expect_err(&format!("{args:?} should be refused"));
            assert!(err.contains(var), "{args:?}: '{err}' does not name {var}");
        }
    }

    #[test]
    fn swarm_settings() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.runtime, RuntimeChoice::Docker);
        let c = parse(&[
            "--runtime",
            "Swarm",
            "--swarm-network",
            "acestream",
            "--engine-placement",
            "node.labels.acestream==true, node.role!=manager,spread=node.labels.zone",
            "--engine-memory-limit",
            "512m",
            "--engine-cpu-limit",
            "1.5",
        ])
        .unwrap();
        assert_eq!(c.runtime, RuntimeChoice::Swarm);
        assert_eq!(c.engine_placement.len(), 3);
        assert_eq!(c.engine_memory_limit, Some(512 << 20));
        assert_eq!(c.engine_cpu_limit, Some(1.5));
        assert_eq!(parse_memory("1G"), Ok(1 << 30));
        assert_eq!(parse_memory("10485760"), Ok(10 << 20));
        assert_eq!(parse_memory("64mb"), Ok(64 << 20));
    }

    #[test]
    fn db_urls_in_the_sqlalchemy_spelling() {
        let path = |url: &str| parse(&["--db-url", url]).unwrap().db_path().unwrap();
        assert_eq!(
            path("sqlite:////var/lib/orch.db"),
            PathBuf::from("/var/lib/orch.db")
        );
        assert_eq!(
            path("sqlite:///data/orch.db"),
            PathBuf::from("data/orch.db")
        );
        assert_eq!(path("orch.db"), PathBuf::from("orch.db"));
    }

    #[test]
    fn debug_never_shows_the_key() {
        let c = parse(&["--api-key", "s3cret"]).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[test]
    fn on_demand_vpn_nodes_need_a_directory_and_a_control_server_key() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.gluetun_image, "qmcgaw/gluetun");
        assert_eq!(c.gluetun_tun_device, "/dev/net/tun");
        assert_eq!(c.vpn_unhealthy_grace_period_s, 120.0);
        assert_eq!(c.vpn_credential_cooldown_s, 600.0);
        assert!(c.vpn_configs_dir.is_none());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        let e = parse(&["--vpn-configs-dir", path]).unwrap_err();
        assert!(
            e.starts_with("GLUETUN_API_KEY: is needed with VPN_CONFIGS_DIR"),
            "{e}"
        );
        parse(&["--vpn-configs-dir", path, "--gluetun-api-key", "k"]).unwrap();
        let missing = format!("{path}/nope");
        let e = parse(&["--vpn-configs-dir", &missing, "--gluetun-api-key", "k"]).unwrap_err();
        assert!(e.starts_with("VPN_CONFIGS_DIR: "), "{e}");
        assert!(e.contains("is not a directory"), "{e}");
    }
}
