//! Domain commands about engines: registering, adopting and forgetting them,
//! recording health checks, selection with reservation (and provisioning when
//! nothing is free).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Orchestrator, ServiceError};
use crate::domain::{CheckSource, Engine, HealthCheck};
use crate::engine_client::{millis, ProbeOutcome};
use crate::metrics::{ResultLabel, StatusLabel};
use crate::registry::{CheckRecorded, Registry, Reservation};
use crate::time::Timestamp;

/// A reserved slot on an engine.
#[derive(Debug, Clone)]
pub struct Selection {
    pub reservation: Reservation,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SelectError {
    #[error("no healthy engine has a free slot (limit {max} streams per engine){}", .provision_error.as_ref().map(|e| format!("; no engine could be started: {e}")).unwrap_or_default())]
    NoneFree {
        max: u32,
        provision_error: Option<String>,
    },
}

impl Orchestrator {
    /// Registers an engine we do not run, or answers the one already known at
    /// that address. Answers its id and whether it is new; a new engine is
    /// checked at once rather than at the next sweep.
    pub async fn register_engine(
        self: &Arc<Self>,
        host: &str,
        port: u16,
        name: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<(String, bool), ServiceError> {
        let (id, created) = self
            .write(|registry, now| {
                if let Some(id) = registry.find_engine(None, host, port) {
                    return Ok::<_, std::convert::Infallible>(((id.to_owned(), false), Vec::new()));
                }
                let engine = Registry::new_external_engine(host, port, None, name, labels, now);
                let (id, ops) = registry.register(engine);
                Ok(((id, true), ops))
            })
            .await?;
        if created {
            tracing::info!(engine = %id, "engine registered");
            self.check_soon(&id);
        }
        Ok((id, created))
    }

    /// Adds an engine found running (adoption) or just started, or refreshes a
    /// known one. A new engine is checked at once.
    pub async fn adopt_engine(self: &Arc<Self>, engine: Engine) -> Result<bool, ServiceError> {
        let id = engine.container_id.clone();
        let created = self
            .write(|registry, _| {
                let created = registry.engine(&engine.container_id).is_none();
                Ok::<_, std::convert::Infallible>((created, registry.upsert(engine)))
            })
            .await?;
        if created {
            self.check_soon(&id);
        }
        Ok(created)
    }

    /// Probes an engine in the background, now.
    fn check_soon(self: &Arc<Self>, id: &str) {
        let orch = self.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            orch.check_engine(&id, CheckSource::Probe).await;
        });
    }

    /// Forgets an engine; its active streams end with `reason`.
    pub async fn forget_engine(&self, id: &str, reason: &str) -> Result<Engine, ServiceError> {
        let engine = self
            .write(|registry, now| registry.remove_engine(id, reason, now))
            .await?;
        Ok(engine)
    }

    /// Records a note in an engine's health history (a replacement, say).
    pub async fn note(&self, id: &str, reason: String) -> Result<(), ServiceError> {
        self.write(|registry, now| {
            Ok::<_, std::convert::Infallible>(((), registry.note(id, reason, now)))
        })
        .await
    }

    /// Records a check (in the background), logs a transition and updates the
    /// metrics. `None` when the engine went away meanwhile.
    pub fn record_check(&self, engine_id: &str, check: HealthCheck) -> Option<CheckRecorded> {
        let latency_s = check.latency_ms.map(|ms| ms / 1000.0);
        let (ok, source) = (check.ok, check.source);
        let recorded = self.write_in_background(|registry, _| {
            match registry.record_check(engine_id, check) {
                Some((recorded, ops)) => (Some(recorded), ops),
                None => (None, Vec::new()),
            }
        })?;
        self.metrics
            .record_check(ok, source, if ok { latency_s } else { None });
        if let Some(t) = &recorded.transition {
            self.metrics
                .health_transitions
                .get_or_create(&StatusLabel {
                    status: t.to.as_str(),
                })
                .inc();
            tracing::info!(
                engine = %engine_id,
                from = %t.from,
                to = %t.to,
                reason = %t.reason,
                "engine {engine_id} is now {}: {}",
                t.to,
                t.reason
            );
        }
        Some(recorded)
    }

    /// Probes one engine now and records the verdict. `None` when the engine
    /// is unknown or went away during the check.
    pub async fn check_engine(
        &self,
        id: &str,
        source: CheckSource,
    ) -> Option<(CheckRecorded, ProbeOutcome)> {
        let target = self.read(|r| r.probe_target(id))?;
        let outcome = self
            .probe(&target.host, target.port, self.settings.health_timeout)
            .await;
        let check = HealthCheck {
            ts: Timestamp::now(),
            ok: outcome.ok,
            source,
            latency_ms: Some(millis(outcome.latency)),
            error: outcome.error.clone(),
        };
        self.record_check(&target.engine_id, check)
            .map(|recorded| (recorded, outcome))
    }

    /// A VPN node went down (with why) or came back (`None`): its engines
    /// leave or rejoin the selection.
    pub fn set_node_down(&self, node: &str, reason: Option<String>) {
        if self.registry.write().set_node_down(node, reason) {
            self.changed();
        }
    }

    /// Drains an engine before it is recreated (`None`: no longer).
    pub fn set_engine_draining(&self, id: &str, reason: Option<String>) {
        if self.registry.write().set_engine_draining(id, reason) {
            self.changed();
        }
    }

    /// The port a VPN node forwards, for the engine that gets it as P2P port.
    pub fn set_node_forwarded_port(&self, node: &str, port: Option<u16>) {
        self.registry.write().set_node_forwarded_port(node, port);
    }

    /// Shown on every engine while unhealthy engines are not replaced because
    /// too many are unhealthy at once.
    pub fn set_replacement_suspended(&self, suspended: bool) {
        self.registry.write().set_replacement_suspended(suspended);
        self.metrics.replacement_suspended.set(i64::from(suspended));
        self.changed();
    }

    /// Picks and reserves the best engine (healthy, fewest streams plus
    /// reservations under `max`, idle longest).
    pub fn select(&self, max: u32) -> Option<Selection> {
        self.select_among(max, &[])
    }

    fn select_among(&self, max: u32, exclude: &[String]) -> Option<Selection> {
        let ttl = self.settings.reservation_ttl_s;
        let reservation =
            self.registry
                .write()
                .select_and_reserve_excluding(max, ttl, Timestamp::now(), exclude);
        // A reservation changes the engine's load: live views should show it.
        if reservation.is_some() {
            self.changed();
        }
        reservation.map(|reservation| Selection { reservation })
    }

    /// [`Orchestrator::select`]; when nothing fits and a container runtime is
    /// configured, starts an engine and picks again (another caller may take
    /// the new engine first; then the answer is "none free").
    pub async fn select_or_provision(&self, max: u32) -> Result<Selection, SelectError> {
        self.select_excluding(max, &[]).await
    }

    /// [`Orchestrator::select_or_provision`] among the engines not in
    /// `exclude` (the built-in proxy leaves out engines that failed it).
    pub async fn select_excluding(
        &self,
        max: u32,
        exclude: &[String],
    ) -> Result<Selection, SelectError> {
        let mut selection = self.select_among(max, exclude);
        let mut provision_error = None;
        if selection.is_none() {
            if let Some(provisioner) = self.provisioner() {
                match provisioner.provision().await {
                    Ok(_) => selection = self.select_among(max, exclude),
                    Err(e) => provision_error = Some(e),
                }
            }
        }
        let result = if selection.is_some() { "ok" } else { "none" };
        self.metrics
            .selections
            .get_or_create(&ResultLabel { result })
            .inc();
        selection.ok_or(SelectError::NoneFree {
            max,
            provision_error,
        })
    }

    /// Gives a reservation back before it expires (a start that failed).
    pub fn release_reservation(&self, reservation_id: &str) {
        if self.registry.write().release_reservation(reservation_id) {
            self.changed();
        }
    }
}
