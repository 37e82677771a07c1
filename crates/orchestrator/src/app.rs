//! Wiring: open the database, restore the registry, bind the listener, start the
//! background loops, serve, and shut everything down in order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::config::RuntimeChoice;
use crate::playlist::FetchPolicy;
use crate::pool::reconciler::Reconciler;
use crate::pool::Pool;
use crate::proxy::hls::HlsConfig;
use crate::proxy::hub::{Proxy, ProxySettings};
use crate::proxy::SessionConfig;
use crate::registry::Registry;
use crate::retention::{self, CleanupSettings};
use crate::runtime::swarm::SwarmPlacement;
use crate::runtime::{ContainerRuntime, DockerRuntime, SwarmRuntime};
use crate::service::{Orchestrator, Settings};
use crate::store::Store;
use crate::vpn::{Vpn, VpnSettings};
use crate::{collector, health, serve};

/// How long in-flight requests get to finish after a shutdown signal. The
/// whole shutdown must stay under 5 s.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

pub struct App {
    listener: TcpListener,
    header_timeout: Duration,
    cors_origins: Vec<String>,
    orch: Arc<Orchestrator>,
    pool: Arc<Pool>,
    reconciler: Reconciler,
    proxy: Arc<Proxy>,
    vpn: Arc<Vpn>,
    stream_token: Option<Arc<str>>,
    api_key: Option<Arc<str>>,
    cleanup: CleanupSettings,
}

impl App {
    /// Everything that can fail at start-up happens here, before anything runs.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        let settings = Settings::from_config(config);
        let path = config.db_path()?;
        let (store, loaded) = Store::open(&path, settings.retention, config.ended_streams_max)
            .with_context(|| format!("cannot open the database {}", path.display()))?;
        let registry = Registry::restore(Settings::limits(config), loaded);
        tracing::info!(
            db = %path.display(),
            engines = registry.engine_count(),
            active_streams = registry.active_stream_count(),
            "state restored"
        );
        let addr = SocketAddr::new(config.app_host, config.app_port);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (APP_HOST/APP_PORT)"))?;
        let orch = Arc::new(Orchestrator::new(registry, store, settings));
        let runtime = container_runtime(config).await;
        let runtime_for_vpn = runtime.clone();
        let (pool, reconciler) = Pool::from_config(runtime, orch.clone(), config);
        let proxy = Proxy::new(orch.clone(), proxy_settings(config));
        let vpn = Vpn::new(vpn_settings(config), runtime_for_vpn, orch.clone());
        vpn.set_pool(&pool);
        pool.set_vpn(&vpn);
        // Adopt what already runs before answering anyone (the nodes we
        // created with their leases first, then the engines); a daemon that
        // is down now is retried by the reconciler.
        if let Err(error) = pool.adopt_nodes().await {
            tracing::warn!(%error, "container runtime not reachable at start-up; the VPN nodes we created are not adopted");
        }
        if let Err(error) = pool.resync().await {
            tracing::warn!(%error, "container runtime not reachable at start-up; engines we run will be adopted once it is");
        }
        // Know the VPN nodes (up or down, their forwarded ports) before the
        // reconciler places the first engine behind one.
        vpn.check_all().await;
        Ok(App {
            listener,
            header_timeout: Duration::from_secs_f64(config.http_header_timeout_s),
            cors_origins: config.cors_allow_origins.clone(),
            orch,
            pool,
            reconciler,
            proxy,
            vpn,
            stream_token: config.stream_token.as_deref().map(Arc::from),
            api_key: config.api_key.as_deref().map(Arc::from),
            cleanup: CleanupSettings::from_config(config),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn orchestrator(&self) -> Arc<Orchestrator> {
        self.orch.clone()
    }

    /// Serves until `shutdown` is cancelled, then drains requests (bounded),
    /// stops the loops and flushes the database.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let addr = self.local_addr()?;
        let tasks = TaskTracker::new();
        tasks.spawn(
            health::run(self.orch.clone(), shutdown.clone())
                .instrument(tracing::info_span!("health_monitor")),
        );
        tasks.spawn(
            self.vpn
                .clone()
                .run(shutdown.clone())
                .instrument(tracing::info_span!("vpn_monitor")),
        );
        tasks.spawn(
            collector::run(self.orch.clone(), shutdown.clone())
                .instrument(tracing::info_span!("collector")),
        );
        tasks.spawn(
            retention::run(self.orch.clone(), self.cleanup, shutdown.clone())
                .instrument(tracing::info_span!("db_cleanup")),
        );
        tasks.spawn(
            maintenance(self.orch.clone(), shutdown.clone())
                .instrument(tracing::info_span!("maintenance")),
        );
        tasks.spawn(
            self.reconciler
                .run(shutdown.clone())
                .instrument(tracing::info_span!("reconciler")),
        );
        tasks.close();

        tracing::info!(%addr, "listening");
        let router = api::router(AppState {
            proxy: self.proxy.clone(),
            vpn: self.vpn.clone(),
            stream_token: self.stream_token.clone(),
            orch: self.orch.clone(),
            api_key: self.api_key,
            pool: Some(self.pool.clone()),
            shutdown: shutdown.clone(),
            panel: Arc::new(api::panel::Feed::new(&self.orch)),
        });
        let router = api::read_bodies_first(router, self.header_timeout);
        let router = match api::cors(&self.cors_origins) {
            Some(cors) => router.layer(cors),
            None => router,
        };
        let server = tokio::spawn(serve::serve(
            self.listener,
            router,
            self.header_timeout,
            shutdown.clone(),
            DRAIN_TIMEOUT,
        ));

        shutdown.cancelled().await;
        tracing::info!("shutting down");
        match server.await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!("requests still open after {DRAIN_TIMEOUT:?}; closing them")
            }
            Err(error) => tracing::warn!(%error, "server task failed"),
        }
        if tokio::time::timeout(Duration::from_secs(1), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("background tasks did not stop within 1s");
        }
        self.orch.flush().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// The runtime `RUNTIME` names, on the Docker daemon of `DOCKER_HOST`.
async fn container_runtime(config: &Config) -> Arc<dyn ContainerRuntime> {
    let docker = DockerRuntime::from_env();
    match config.runtime {
        RuntimeChoice::Docker => Arc::new(docker),
        RuntimeChoice::Swarm => {
            let placement = SwarmPlacement::parse(&config.engine_placement);
            tracing::info!(network = ?config.swarm_network, constraints = ?placement.constraints, spread = ?placement.spread, "engines run as Docker Swarm services");
            let swarm = SwarmRuntime::new(docker, placement);
            // Say now, not at the first failed provision, when the socket is
            // not a manager's.
            if let Err(error) = swarm.ping().await {
                tracing::warn!(%error, "RUNTIME=swarm: the Docker daemon cannot manage services yet");
            }
            Arc::new(swarm)
        }
    }
}

/// How long a player's first request may wait for its session's first
/// bytes: long enough for the pool to start an engine for it (and, with
/// on-demand VPN nodes, the node before it), then for the engine's first
/// bytes; never shorter than `PROXY_FAILOVER_TIMEOUT_S`. A player that
/// arrives at an empty pool is served late rather than refused.
pub fn proxy_start_timeout(config: &Config) -> Duration {
    let mut provisioning = config.startup_timeout_s + config.proxy_stall_s;
    if config.vpn_configs_dir.is_some() {
        provisioning += config.vpn_startup_timeout_s;
    }
    Duration::from_secs_f64(provisioning.max(config.proxy_failover_timeout_s))
}

/// The built-in proxy's settings.
pub fn proxy_settings(config: &Config) -> ProxySettings {
    ProxySettings {
        session: SessionConfig {
            ring_bytes: config.proxy_buffer_mb as usize * 1024 * 1024,
            stall_timeout: Duration::from_secs_f64(config.proxy_stall_s),
            failover_timeout: Duration::from_secs_f64(config.proxy_failover_timeout_s),
            start_timeout: proxy_start_timeout(config),
            max_failover_attempts: 5,
            headroom: Duration::from_secs_f64(config.proxy_headroom_s),
            max_viewers: config.max_viewers_per_stream as usize,
        },
        linger: Duration::from_secs_f64(config.proxy_linger_s),
        max_sessions: config.proxy_max_sessions as usize,
        max_streams_per_engine: config.max_streams_per_engine,
        engine_timeout: config.health_timeout().max(Duration::from_secs(10)),
        hls: HlsConfig {
            target: Duration::from_secs_f64(config.hls_segment_s),
            window: config.hls_window_size as usize,
            // A player fetches about once a segment; four missed ones and it is gone.
            viewer_timeout: Duration::from_secs_f64(config.hls_segment_s * 4.0),
            // After the start (bounded by PROXY_FAILOVER_TIMEOUT_S): a
            // segment needs two keyframes, so a few targets and some slack.
            first_segment_wait: Duration::from_secs_f64(config.hls_segment_s * 3.0 + 5.0),
        },
        public_url: config.public_url.clone(),
        playlists: FetchPolicy {
            allowed_hosts: config
                .playlist_allowed_hosts
                .iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect(),
            timeout: Duration::from_secs_f64(config.playlist_fetch_timeout_s),
        },
    }
}

/// The VPN nodes' settings.
pub fn vpn_settings(config: &Config) -> VpnSettings {
    VpnSettings {
        nodes: config.vpn_nodes(),
        on_demand: config.vpn_configs_dir.is_some(),
        api_key: config.gluetun_api_key.clone(),
        control_port: config.gluetun_control_port,
        interval: Duration::from_secs_f64(config.vpn_check_interval_s),
        timeout: config.health_timeout(),
        network: config.docker_network.clone(),
        failure_threshold: config.health_failure_threshold,
        history_max: config.health_history_max,
        restart_engines_on_reconnect: config.vpn_restart_engines_on_reconnect,
    }
}

/// Periodic housekeeping: expired reservations and history trimming.
async fn maintenance(orch: Arc<Orchestrator>, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        orch.housekeeping();
    }
}
