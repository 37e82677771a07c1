//! A container runtime that lives in memory, for fast policy tests: the
//! reconciler, autoscaler, replacement and the mass-failure guard run against
//! it on a paused tokio clock (seconds of simulated time in milliseconds).
//! Its containers are also engines: [`MemoryRuntime`] implements
//! [`Probe`], answering for each container as the test says (healthy, or
//! hung), so provisioning and health checks need no network.
//!
//! The Docker runtime is tested against the real daemon; this one stands in
//! only where a daemon would make a policy test slow or flaky.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use super::{
    ContainerInfo, ContainerRuntime, ContainerSpec, ContainerStatus, EventStream, Label,
    RuntimeError, RuntimeEvent, RuntimeEventKind, TaskPlacement,
};
use crate::engine_client::{Probe, ProbeOutcome};
use crate::time::Timestamp;

#[derive(Default)]
struct State {
    containers: BTreeMap<String, ContainerInfo>,
    /// Containers whose engine does not answer (hung), by id.
    hung: std::collections::BTreeSet<String>,
    next_id: u64,
    unreachable: bool,
    /// Every `create_and_start`, in order, by name: what a test asserts on.
    created: Vec<String>,
}

/// See the module documentation. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct MemoryRuntime {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<RuntimeEvent>,
}

impl Default for MemoryRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRuntime {
    pub fn new() -> Self {
        Self {
            state: Arc::default(),
            events: broadcast::channel(1024).0,
        }
    }

    fn emit(&self, kind: RuntimeEventKind, info: &ContainerInfo) {
        let _ = self.events.send(RuntimeEvent {
            kind,
            container_id: info.id.clone(),
            name: Some(info.name.clone()),
            at: Timestamp::now(),
        });
    }

    /// Makes the daemon unreachable (every call fails) or reachable again.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.state.lock().unreachable = unreachable;
    }

    /// Makes a container's engine hang (probes fail) or answer again.
    pub fn set_hung(&self, id: &str, hung: bool) {
        let mut state = self.state.lock();
        if hung {
            state.hung.insert(id.to_owned());
        } else {
            state.hung.remove(id);
        }
    }

    /// Removes a container behind the orchestrator's back (`docker rm -f`).
    pub fn remove_by_hand(&self, id: &str) {
        let removed = self.state.lock().containers.remove(id);
        if let Some(info) = removed {
            self.emit(RuntimeEventKind::Destroy, &info);
        }
    }

    /// What Swarm would report for a service: its status and current task
    /// (a new task, its node down, ...). Emits nothing: the caller sends the
    /// event it wants to test with.
    pub fn set_task(&self, id: &str, status: ContainerStatus, task: Option<TaskPlacement>) {
        if let Some(info) = self.state.lock().containers.get_mut(id) {
            info.status = status;
            info.task = task;
        }
    }

    /// Adds a running container as if started by hand or by a previous run.
    pub fn add_running(&self, spec: ContainerSpec) -> ContainerInfo {
        let info = self.insert(spec);
        self.emit(RuntimeEventKind::Start, &info);
        info
    }

    fn insert(&self, spec: ContainerSpec) -> ContainerInfo {
        let mut state = self.state.lock();
        state.next_id += 1;
        let info = ContainerInfo {
            id: format!("{:064x}", state.next_id),
            name: spec.name.clone(),
            image: spec.image,
            created: Timestamp::now(),
            status: ContainerStatus::Running,
            labels: spec.labels,
            ports: spec.ports,
            networks: BTreeMap::new(),
            health: None,
            task: None,
        };
        state.created.push(spec.name);
        state.containers.insert(info.id.clone(), info.clone());
        info
    }

    /// Names of every container created so far, in order.
    pub fn created(&self) -> Vec<String> {
        self.state.lock().created.clone()
    }

    /// Ids of the containers that exist now.
    pub fn running(&self) -> Vec<String> {
        self.state.lock().containers.keys().cloned().collect()
    }

    fn check_reachable(&self) -> Result<(), RuntimeError> {
        if self.state.lock().unreachable {
            return Err(RuntimeError::Unreachable(
                "the memory runtime is switched off".into(),
            ));
        }
        Ok(())
    }

    /// The container published on `port` (the engine's address on this host).
    fn by_port(&self, port: u16) -> Option<String> {
        let state = self.state.lock();
        state
            .containers
            .values()
            .find(|c| c.ports.iter().any(|p| p.host_port == Some(port)))
            .map(|c| c.id.clone())
    }
}

impl ContainerRuntime for MemoryRuntime {
    fn create_and_start(
        &self,
        spec: ContainerSpec,
    ) -> BoxFuture<'_, Result<ContainerInfo, RuntimeError>> {
        Box::pin(async move {
            self.check_reachable()?;
            if self
                .state
                .lock()
                .containers
                .values()
                .any(|c| c.name == spec.name)
            {
                return Err(RuntimeError::NameConflict(spec.name));
            }
            let info = self.insert(spec);
            self.emit(RuntimeEventKind::Start, &info);
            Ok(info)
        })
    }

    fn stop_and_remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            self.check_reachable()?;
            let removed = self.state.lock().containers.remove(id);
            match removed {
                Some(info) => {
                    self.emit(RuntimeEventKind::Destroy, &info);
                    Ok(())
                }
                None => Err(RuntimeError::NotFound(id.to_owned())),
            }
        })
    }

    fn list_managed<'a>(
        &'a self,
        label: &'a Label,
    ) -> BoxFuture<'a, Result<Vec<ContainerInfo>, RuntimeError>> {
        Box::pin(async move {
            self.check_reachable()?;
            Ok(self
                .state
                .lock()
                .containers
                .values()
                .filter(|c| c.has_label(label))
                .cloned()
                .collect())
        })
    }

    fn inspect<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<ContainerInfo>, RuntimeError>> {
        Box::pin(async move {
            self.check_reachable()?;
            let state = self.state.lock();
            Ok(state
                .containers
                .get(id)
                .or_else(|| state.containers.values().find(|c| c.name == id))
                .cloned())
        })
    }

    fn events<'a>(&'a self, _label: &'a Label) -> BoxFuture<'a, Result<EventStream, RuntimeError>> {
        Box::pin(async move {
            self.check_reachable()?;
            let receiver = self.events.subscribe();
            let stream = futures::stream::unfold(receiver, |mut receiver| async move {
                loop {
                    match receiver.recv().await {
                        Ok(event) => return Some((Ok(event), receiver)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            });
            Ok(Box::pin(stream) as EventStream)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), RuntimeError>> {
        Box::pin(async move { self.check_reachable() })
    }
}

impl Probe for MemoryRuntime {
    fn probe<'a>(
        &'a self,
        _host: &'a str,
        port: u16,
        timeout: Duration,
    ) -> BoxFuture<'a, ProbeOutcome> {
        Box::pin(async move {
            let answering = self
                .by_port(port)
                .is_some_and(|id| !self.state.lock().hung.contains(&id));
            if answering {
                ProbeOutcome {
                    ok: true,
                    latency: Duration::from_millis(1),
                    error: None,
                }
            } else {
                // A hung engine costs its whole timeout, in simulated time.
                tokio::time::sleep(timeout).await;
                ProbeOutcome {
                    ok: false,
                    latency: timeout,
                    error: Some(format!(
                        "no answer within {:.1}s (engine hung?)",
                        timeout.as_secs_f64()
                    )),
                }
            }
        })
    }
}
