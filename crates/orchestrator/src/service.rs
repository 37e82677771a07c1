//! The orchestrator's shared core: the registry behind its lock, the store, the
//! metrics and the HTTP client used to talk to engines. API handlers and
//! background loops go through here.

use std::time::Duration;

use parking_lot::RwLock;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::registry::{Limits, Registry, RegistryError};
use crate::persist::WriteOp;
use crate::store::{Retention, Store, StoreError};
use crate::time::Timestamp;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the change could not be saved: {0}")]
    Store(#[from] StoreError),
}

/// Settings the core needs at run time, taken from [`Config`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_concurrency: usize,
    pub collect_concurrency: usize,
    pub collect_interval: Duration,
    pub max_streams_per_engine: u32,
    pub reservation_ttl_s: f64,
    pub retention: Retention,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            health_interval: config.health_interval(),
            health_timeout: config.health_timeout(),
            health_concurrency: config.health_check_concurrency,
            collect_concurrency: config.collect_concurrency,
            collect_interval: config.collect_interval(),
            max_streams_per_engine: config.max_streams_per_engine,
            reservation_ttl_s: config.select_reservation_ttl_s,
            retention: Retention {
                stats_per_stream: config.stats_history_max,
                health_per_engine: config.health_history_max,
            },
        }
    }

    pub fn limits(config: &Config) -> Limits {
        Limits {
            failure_threshold: config.health_failure_threshold,
            health_history_max: config.health_history_max,
            stats_history_max: config.stats_history_max,
            ended_streams_max: config.ended_streams_max,
        }
    }
}

pub struct Orchestrator {
    pub registry: RwLock<Registry>,
    pub store: Store,
    pub metrics: Metrics,
    pub settings: Settings,
    /// For engine APIs: probes, stat polls, stop commands. Each request sets its
    /// own timeout.
    pub http: reqwest::Client,
    /// Bumped after every registry change; live views (the dashboard's event
    /// stream) watch it instead of polling the registry.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Orchestrator {
    pub fn new(registry: Registry, store: Store, settings: Settings) -> Self {
        let http = reqwest::Client::builder()
            .user_agent(concat!(
                "acestream-orchestrator/",
                env!("CARGO_PKG_VERSION")
            ))
            // Engines are plain HTTP on a LAN; never follow a redirect elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.health_timeout)
            // No idle keep-alive connections: with 1,000 engines they would hold
            // ~20 MB of buffers and a descriptor each, and a fresh connection per
            // probe also proves the engine still accepts connections. Loopback
            // or LAN connects cost microseconds.
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default();
        let orch = Self {
            registry: RwLock::new(registry),
            store,
            metrics: Metrics::new(),
            settings,
            http,
            changes: tokio::sync::watch::Sender::new(0),
        };
        orch.refresh_gauges();
        orch
    }

    /// Applies a change to the registry and waits until it is committed. The
    /// write is queued under the lock (so the database sees changes in registry
    /// order) and awaited after the lock is gone.
    pub async fn write<T, E>(
        &self,
        change: impl FnOnce(&mut Registry, Timestamp) -> Result<(T, Vec<WriteOp>), E>,
    ) -> Result<T, ServiceError>
    where
        ServiceError: From<E>,
    {
        let (value, pending) = {
            let mut registry = self.registry.write();
            let (value, ops) = change(&mut registry, Timestamp::now())?;
            (value, (!ops.is_empty()).then(|| self.store.submit(ops)))
        };
        // Every change worth showing is persisted, so a change without writes
        // (a resync that found everything as it was) wakes no live view.
        if let Some(pending) = pending {
            self.changed();
            pending.committed().await?;
        }
        Ok(value)
    }

    /// Like [`Orchestrator::write`] for bookkeeping that nobody waits for.
    pub fn write_in_background<T>(
        &self,
        change: impl FnOnce(&mut Registry, Timestamp) -> (T, Vec<WriteOp>),
    ) -> T {
        let mut registry = self.registry.write();
        let (value, ops) = change(&mut registry, Timestamp::now());
        self.store.enqueue(ops);
        drop(registry);
        self.changed();
        value
    }

    /// Tells watchers that the registry changed.
    pub fn changed(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// A receiver that wakes up after registry changes.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn refresh_gauges(&self) {
        let registry = self.registry.read();
        self.metrics
            .set_engine_counts(registry.health_counts(), registry.active_stream_count());
    }
}

impl From<std::convert::Infallible> for ServiceError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
