//! The reconciler: the one task that changes the set of containers on its own
//! initiative. Like a kube-runtime controller it is a loop around one step
//! function, [`Reconciler::step`], which takes what woke it (the clock, a
//! runtime event, a command) and answers how long it may sleep. What it does:
//!
//! - **resync** every `MONITOR_INTERVAL_S` and on container events: adopt
//!   running containers with our label, forget engines whose container is gone;
//! - **replace** an engine we run that stayed unhealthy past the grace period,
//!   one per cooldown, none while too many are unhealthy at once (a shared
//!   cause: network, VPN, host) — the mass-failure guard;
//! - **autoscale** every `AUTOSCALE_INTERVAL_S`, and at once when `/scale` or
//!   `/gc` (commands sent to this task) ask for it.
//!
//! Provisioning itself is the pool's; the reconciler only decides.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::labels::{engine_from, ports_from_labels, ports_from_published};
use super::{EngineRequest, Pool};
use crate::autoscale::{self, Plan, Policy};
use crate::domain::{CheckSource, RuntimeKind};
use crate::runtime::{RuntimeError, RuntimeEvent, RuntimeEventKind, TaskPlacement};
use crate::time::Timestamp;

/// What the API asks of the reconciler.
#[derive(Debug)]
pub enum Command {
    /// `POST /scale/{demand}`: the demand changed (it is in the pool); autoscale now.
    Scale,
    /// `POST /gc`: remove idle engines now, ignoring their grace period.
    Gc(oneshot::Sender<Plan>),
}

/// What woke the reconciler.
#[derive(Debug)]
pub enum Trigger {
    /// A deadline passed (or the first step).
    Tick,
    Event(RuntimeEvent),
    Command(Command),
}

pub struct Reconciler {
    pool: Arc<Pool>,
    inbox: mpsc::Receiver<Command>,
    next_resync: Instant,
    next_autoscale: Instant,
    last_replacement: Option<Instant>,
}

impl Reconciler {
    pub(super) fn new(pool: Arc<Pool>, inbox: mpsc::Receiver<Command>) -> Self {
        let now = Instant::now();
        Self {
            pool,
            inbox,
            next_resync: now,
            next_autoscale: now,
            last_replacement: None,
        }
    }

    /// Does what is due, answers how long until something else is due.
    pub async fn step(&mut self, trigger: Trigger) -> Duration {
        match trigger {
            Trigger::Tick => {}
            Trigger::Event(event) => self.on_event(event).await,
            Trigger::Command(Command::Scale) => self.next_autoscale = Instant::now(),
            Trigger::Command(Command::Gc(reply)) => {
                let plan = self.autoscale(Some(0.0)).await;
                let _ = reply.send(plan);
            }
        }
        let now = Instant::now();
        if now >= self.next_resync {
            let _ = self.pool.resync().await;
            self.replace_unhealthy().await;
            self.pool.maintain_nodes().await;
            self.next_resync = Instant::now() + self.pool.settings.monitor_interval;
        }
        if now >= self.next_autoscale {
            self.autoscale(None).await;
            self.next_autoscale = Instant::now() + self.pool.settings.autoscale_interval;
        }
        self.next_resync
            .min(self.next_autoscale)
            .saturating_duration_since(Instant::now())
    }

    /// Runs until `shutdown`: follows the runtime's events (re-subscribing
    /// after a loss), takes commands, and steps when a deadline passes.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut events = None;
        let mut delay = Duration::ZERO;
        loop {
            if events.is_none() && self.pool.reachable.load(Ordering::SeqCst) {
                match self.pool.runtime.events(&self.pool.settings.label).await {
                    Ok(stream) => events = Some(stream),
                    Err(e) => tracing::debug!(error = %e, "cannot follow runtime events yet"),
                }
            }
            let next_event = async {
                match events.as_mut() {
                    Some(stream) => futures::StreamExt::next(stream).await,
                    None => std::future::pending().await,
                }
            };
            let trigger = tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => Trigger::Tick,
                command = self.inbox.recv() => match command {
                    Some(command) => Trigger::Command(command),
                    None => break,
                },
                event = next_event => match event {
                    Some(Ok(event)) => Trigger::Event(event),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "runtime event stream failed");
                        events = None;
                        Trigger::Tick
                    }
                    None => {
                        events = None;
                        Trigger::Tick
                    }
                },
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = self.step(trigger) => delay = next,
            }
        }
    }

    async fn on_event(&mut self, event: RuntimeEvent) {
        tracing::debug!(container = %event.container_id, kind = ?event.kind, "runtime event");
        match event.kind {
            RuntimeEventKind::Pause | RuntimeEventKind::Unpause => {
                // A paused engine hangs: check it now instead of at the next sweep.
                let orch = self.pool.orch.clone();
                tokio::spawn(async move {
                    orch.check_engine(&event.container_id, CheckSource::Probe)
                        .await;
                });
            }
            RuntimeEventKind::Die { exit_code } => {
                let _ = self.pool.resync().await;
                // Still known after the resync: the runtime starts it again
                // (Swarm's restart policy) and the engine keeps its identity.
                let code = exit_code.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                if self
                    .pool
                    .orch
                    .read(|r| r.engine(&event.container_id).is_some())
                {
                    let orch = self.pool.orch.clone();
                    let _ = orch
                        .note(
                            &event.container_id,
                            format!("its container died (exit code {code}); the runtime starts a new one"),
                        )
                        .await;
                    // Out of the selection now, not at the next sweep.
                    tokio::spawn(async move {
                        orch.check_engine(&event.container_id, CheckSource::Probe)
                            .await;
                    });
                }
            }
            _ => {
                let _ = self.pool.resync().await;
            }
        }
    }

    /// One autoscaler decision, carried out; `grace_s` overrides the grace
    /// period (`POST /gc` passes 0).
    async fn autoscale(&mut self, grace_s: Option<f64>) -> Plan {
        let pool = &self.pool;
        let now = Timestamp::now();
        let policy = Policy {
            min_free: pool.settings.min_replicas,
            max_total: pool.settings.max_replicas,
            demand: pool.demand(),
            grace_s: grace_s.unwrap_or(pool.settings.grace_s),
            auto_delete: pool.settings.auto_delete,
        };
        let engines = pool.orch.read(|r| r.pool(now));
        let plan = autoscale::decide(&engines, &policy, now);
        if plan.is_empty() {
            return plan;
        }
        tracing::info!(
            provision = plan.provision,
            remove = plan.remove.len(),
            "autoscaling"
        );
        for id in &plan.remove {
            if let Err(e) = pool
                .remove(id, "idle engine removed by the autoscaler")
                .await
            {
                tracing::warn!(container = %id, error = %e, "autoscaler could not remove an engine");
            }
        }
        for _ in 0..plan.provision {
            if let Err(e) = pool.provision_engine(EngineRequest::default()).await {
                tracing::warn!(error = %e, "autoscaler could not provision an engine");
                break;
            }
        }
        plan
    }

    /// Replaces one engine that has stayed unhealthy past the grace period:
    /// the new one is ready before the old one goes. None while more than
    /// `HEALTH_MAX_UNHEALTHY_PERCENT` are unhealthy, and one per cooldown.
    async fn replace_unhealthy(&mut self) {
        let pool = self.pool.clone();
        let settings = &pool.settings;
        let now = Timestamp::now();
        let (total, unhealthy, overdue, suspended) = pool.orch.read(|registry| {
            let total = registry.engines_run_by(RuntimeKind::Docker).count();
            let unhealthy = registry.unhealthy_since(now).len();
            let overdue = registry.unhealthy_since(now.plus_seconds(-settings.unhealthy_grace_s));
            (total, unhealthy, overdue, registry.replacement_suspended())
        });
        let share_exceeded =
            total > 0 && unhealthy * 100 > total * usize::from(settings.max_unhealthy_percent);
        if share_exceeded != suspended {
            pool.orch.set_replacement_suspended(share_exceeded);
            if share_exceeded {
                tracing::warn!(unhealthy, total, "more than {}% of the engines are unhealthy: suspecting a shared cause (network, VPN, host); replacing none", settings.max_unhealthy_percent);
            } else {
                tracing::info!(
                    unhealthy,
                    total,
                    "unhealthy share back under the limit; replacements resume"
                );
            }
        }
        if share_exceeded {
            return;
        }
        let Some((old, since)) = overdue.into_iter().min_by_key(|(_, since)| *since) else {
            return;
        };
        if self
            .last_replacement
            .is_some_and(|at| at.elapsed().as_secs_f64() < settings.replacement_cooldown_s)
        {
            return;
        }
        self.last_replacement = Some(Instant::now());
        let broken_for = since.seconds_until(now);
        tracing::info!(container = %old, broken_for_s = broken_for, "replacing an engine that stayed unhealthy");
        // One engine above MAX_REPLICAS for the moment the two overlap.
        let new = match pool
            .provision_engine_within(EngineRequest::default(), settings.max_replicas + 1)
            .await
        {
            Ok(new) => new,
            Err(e) => {
                tracing::warn!(container = %old, error = %e, "could not start a replacement; will try again after the cooldown");
                return;
            }
        };
        let reason = format!(
            "engine replaced by {} after being unhealthy for {:.0}s",
            new.container_name, broken_for
        );
        let _ = pool
            .orch
            .note(
                &new.container_id,
                format!("replaces {old}, unhealthy for {broken_for:.0}s"),
            )
            .await;
        if let Err(e) = pool.remove(&old, &reason).await {
            tracing::warn!(container = %old, error = %e, "could not remove the replaced engine");
        }
        pool.orch.metrics.replacements.inc();
        tracing::info!(old = %old, new = %new.container_id, "{reason}");
    }
}

impl Pool {
    /// Makes the registry match the runtime: adopts running containers with
    /// our label (reserving their ports), forgets engines whose container is
    /// gone. Never stops anything.
    pub async fn resync(&self) -> Result<(), RuntimeError> {
        let containers = match self.runtime.list_managed(&self.settings.label).await {
            Ok(list) => {
                if !self.reachable.swap(true, Ordering::SeqCst) {
                    tracing::info!("container runtime reachable again; resynced");
                }
                list
            }
            Err(e) => {
                if self.reachable.swap(false, Ordering::SeqCst) {
                    tracing::warn!(error = %e, "container runtime unreachable; the API and health checks go on, provisioning waits");
                }
                return Err(e);
            }
        };
        let mut alive = BTreeSet::new();
        for info in containers.iter().filter(|c| c.status.is_alive()) {
            let Some(ports) =
                ports_from_labels(&info.labels).or_else(|| ports_from_published(info))
            else {
                tracing::warn!(container = %info.id, name = %info.name, "managed container has no engine port; not adopted");
                continue;
            };
            alive.insert(info.id.clone());
            // Behind a VPN node the ports are the node's (see `nodes.rs`).
            if !info
                .labels
                .contains_key(crate::domain::labels::VPN_NODE_LABEL)
            {
                self.ports.reserve(&ports);
            }
            // Behind a VPN node, the engine is reached through the node.
            let via = info
                .labels
                .get(crate::domain::labels::VPN_NODE_LABEL)
                .unwrap_or(&info.name);
            let (host, port) = self.address(via, &ports);
            let engine = engine_from(info, host, port);
            if let Ok(true) = self.orch.adopt_engine(engine).await {
                tracing::info!(container = %info.id, name = %info.name, "adopted a running engine container");
            }
            if let Some(task) = &info.task {
                self.follow_task(&info.id, task).await;
            }
        }
        let gone: Vec<(String, std::collections::BTreeMap<String, String>)> = self.orch.read(|r| {
            r.engines_run_by(RuntimeKind::Docker)
                .filter(|e| !alive.contains(&e.container_id))
                .map(|e| (e.container_id.clone(), e.labels.clone()))
                .collect()
        });
        for (id, labels) in gone {
            tracing::info!(container = %id, "engine container is gone; forgetting it");
            self.forget(&id, &labels, "engine container is gone").await;
        }
        self.tasks.lock().retain(|id, _| alive.contains(id));
        Ok(())
    }

    /// Notes in the engine's history what Swarm did to it since the last
    /// resync: a new task (after a failure, perhaps on another node), its
    /// node going down or coming back.
    async fn follow_task(&self, id: &str, task: &TaskPlacement) {
        let before = self.tasks.lock().insert(id.to_owned(), task.clone());
        let Some(before) = before else {
            return;
        };
        let mut notes = Vec::new();
        if before.task_id != task.task_id {
            let node = if task.node.is_empty() {
                "not placed yet".to_owned()
            } else if task.node_id == before.node_id {
                format!("on the same node {}", task.node)
            } else {
                format!("on node {}", task.node)
            };
            notes.push(format!(
                "Swarm replaced task {} (node {}) with task {} {node}: {}",
                short(&before.task_id),
                or_unknown(&before.node),
                short(&task.task_id),
                task.state,
            ));
        } else if before.node_id == task.node_id
            && before.node_state != task.node_state
            && !task.node.is_empty()
        {
            notes.push(if task.node_state == "ready" {
                format!("node {} is ready again", task.node)
            } else {
                format!(
                    "node {} is {}: Swarm will run this engine elsewhere",
                    task.node, task.node_state
                )
            });
        }
        if before.state != "running" && task.state == "running" && before.task_id == task.task_id {
            notes.push(format!(
                "task {} running on node {}",
                short(&task.task_id),
                or_unknown(&task.node)
            ));
        }
        for note in notes {
            tracing::info!(container = %id, %note, "swarm task changed");
            let _ = self.orch.note(id, note).await;
        }
    }

    /// Sets the demand (`POST /scale/{demand}`); the reconciler acts on it at
    /// once, or at its next autoscale when it is busy (never waiting for it).
    pub fn set_demand(&self, demand: u32) {
        self.demand.store(demand, Ordering::SeqCst);
        let _ = self.commands.try_send(Command::Scale);
    }

    pub fn demand(&self) -> u32 {
        self.demand.load(Ordering::SeqCst)
    }

    /// Removes idle engines now (`POST /gc`), through the reconciler so that it
    /// never races the autoscaler. `None` when the reconciler is not running.
    pub async fn collect_garbage(&self) -> Option<Plan> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Gc(reply)).await.ok()?;
        answer.await.ok()
    }
}

/// A Swarm id as `docker service ps` shows it.
fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn or_unknown(node: &str) -> &str {
    if node.is_empty() {
        "unassigned"
    } else {
        node
    }
}
