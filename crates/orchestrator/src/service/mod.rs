//! The service layer: the one place where the orchestrator's state changes.
//!
//! [`Orchestrator`] owns the registry (behind its lock, private to this
//! module), the store, the metrics and the engine client. Handlers, background
//! loops and the dashboard read through [`Orchestrator::read`] (a closure, so no
//! lock guard escapes into async code) and change state only through the domain
//! commands in `engines.rs` and `streams.rs`, each of which persists, notifies
//! live views and records metrics in one place.

mod engines;
mod streams;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::RwLock;

pub use engines::{SelectError, Selection};

use crate::config::Config;
use crate::engine_client::{EngineClient, Probe, ProbeOutcome};
use crate::metrics::Metrics;
use crate::persist::WriteOp;
use crate::registry::{Limits, Registry, RegistryError};
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

/// Starts an engine when selection finds no free slot. The container pool
/// implements it; the service holds it weakly (the pool holds the service).
pub trait Provisioner: Send + Sync {
    /// Starts one engine and answers its id once its API answers.
    fn provision(&self) -> BoxFuture<'_, Result<String, String>>;
}

pub struct Orchestrator {
    registry: RwLock<Registry>,
    store: Store,
    pub metrics: Metrics,
    pub settings: Settings,
    /// The engines' HTTP API: probes, stat polls, stop commands, streams.
    pub engines: EngineClient,
    /// How engines are probed: `engines`, except in policy tests.
    probe: Arc<dyn Probe>,
    provisioner: OnceLock<Weak<dyn Provisioner>>,
    /// Bumped after every registry change; live views (the dashboard's event
    /// stream) watch it instead of polling the registry.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Orchestrator {
    pub fn new(registry: Registry, store: Store, settings: Settings) -> Self {
        let engines = EngineClient::new(settings.health_timeout);
        let orch = Self {
            registry: RwLock::new(registry),
            store,
            metrics: Metrics::new(),
            probe: Arc::new(engines.clone()),
            engines,
            settings,
            provisioner: OnceLock::new(),
            changes: tokio::sync::watch::Sender::new(0),
        };
        orch.refresh_gauges();
        orch
    }

    /// Probes engines with `probe` instead of over HTTP (policy tests).
    pub fn with_probe(mut self, probe: Arc<dyn Probe>) -> Self {
        self.probe = probe;
        self
    }

    /// Probes one engine's API.
    pub async fn probe(&self, host: &str, port: u16, timeout: Duration) -> ProbeOutcome {
        self.probe.probe(host, port, timeout).await
    }

    /// Lets selection start engines. Set once, by the container pool.
    pub fn set_provisioner(&self, provisioner: Weak<dyn Provisioner>) {
        let _ = self.provisioner.set(provisioner);
    }

    fn provisioner(&self) -> Option<Arc<dyn Provisioner>> {
        self.provisioner.get().and_then(Weak::upgrade)
    }

    /// Reads the registry. The closure runs under the read lock and must not
    /// block; what it returns must not borrow from the registry, so no guard
    /// can live across an await.
    pub fn read<T>(&self, read: impl FnOnce(&Registry) -> T) -> T {
        read(&self.registry.read())
    }

    /// Applies a change and waits until it is committed. The write is queued
    /// under the lock (so the database sees changes in registry order) and
    /// awaited after the lock is gone. When the commit fails, the store keeps
    /// the change and writes it again with the next commit that succeeds, so
    /// memory and disk converge once the database is writable again.
    ///
    /// A change that finds nothing to do still waits for a commit while
    /// earlier changes are not on disk: the state it answers with may be one
    /// of them (a `stream_ended` retried after its first attempt got 503 has
    /// the stream already ended in memory). Its 2xx then means what every 2xx
    /// means, that the state it confirms is committed; while the database
    /// still fails it gets the same 503 as the first attempt.
    async fn write<T, E>(
        &self,
        change: impl FnOnce(&mut Registry, Timestamp) -> Result<(T, Vec<WriteOp>), E>,
    ) -> Result<T, ServiceError>
    where
        ServiceError: From<E>,
    {
        let (value, pending) = {
            let mut registry = self.registry.write();
            // Refuse before changing anything when the database is far behind:
            // an acknowledged write must never be dropped for lack of room.
            self.store.ensure_room()?;
            let (value, ops) = change(&mut registry, Timestamp::now())?;
            let changed = !ops.is_empty();
            let pending = (changed || self.store.has_unsaved()).then(|| self.store.submit(ops));
            (value, pending.map(|pending| (changed, pending)))
        };
        if let Some((changed, pending)) = pending {
            // Every change worth showing is persisted, so a change without
            // writes (a resync that found everything as it was) wakes no
            // live view.
            if changed {
                self.changed();
            }
            pending.committed().await?;
        }
        Ok(value)
    }

    /// Like [`Orchestrator::write`] for bookkeeping that nobody waits for.
    fn write_in_background<T>(
        &self,
        change: impl FnOnce(&mut Registry, Timestamp) -> (T, Vec<WriteOp>),
    ) -> T {
        let mut registry = self.registry.write();
        let (value, ops) = change(&mut registry, Timestamp::now());
        let wrote = !ops.is_empty();
        self.store.enqueue(ops);
        drop(registry);
        if wrote {
            self.changed();
        }
        value
    }

    /// Tells watchers that the registry changed.
    fn changed(&self) {
        self.changes
            .send_modify(|version| *version = version.wrapping_add(1));
    }

    /// Wakes live views (the dashboard's event stream) after a change they
    /// show that is kept outside the registry: a VPN node's health, error,
    /// public IP or forwarded port. Registry changes wake them by themselves.
    pub fn notify_changed(&self) {
        self.changed();
    }

    /// A receiver that wakes up after registry changes.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn refresh_gauges(&self) {
        let (counts, active, by_kind) = self.read(|r| {
            (
                r.health_counts(),
                r.active_stream_count(),
                r.proxy_viewers_by_kind(),
            )
        });
        // A stream's `viewers` is always its TS plus its HLS viewers.
        self.metrics
            .proxy_viewers
            .set(i64::from(by_kind.ts) + i64::from(by_kind.hls));
        for (kind, count) in [("ts", by_kind.ts), ("hls", by_kind.hls)] {
            self.metrics
                .proxy_viewers_by_kind
                .get_or_create(&crate::metrics::KindLabel { kind })
                .set(i64::from(count));
        }
        self.metrics.set_engine_counts(counts, active);
        self.metrics
            .store_queue_depth
            .set(self.store.depth() as i64);
        self.metrics
            .store_dropped_writes
            .set(self.store.dropped() as i64);
    }

    /// Periodic housekeeping: expired reservations leave the engines' load,
    /// history tables are trimmed.
    pub fn housekeeping(&self) {
        let purged = self
            .registry
            .write()
            .purge_expired_reservations(Timestamp::now());
        if purged > 0 {
            self.changed();
        }
        self.store.trim(self.settings.retention);
    }

    /// The database, for the retention clean-up and its measurements.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Forgets in memory the ended streams the retention clean-up removes
    /// from the database.
    pub fn forget_ended_streams_before(&self, cutoff: Timestamp) -> usize {
        let forgotten = self.registry.write().forget_ended_before(cutoff);
        if forgotten > 0 {
            self.changed();
        }
        forgotten
    }

    /// Waits until everything queued is committed (or given up on).
    pub async fn flush(&self) {
        self.store.flush().await;
    }
}

impl From<std::convert::Infallible> for ServiceError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
