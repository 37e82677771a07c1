//! Policy tests: the reconciler (adoption, resync), the autoscaler, the
//! replacement of engines that stay unhealthy and the mass-failure guard, run
//! against the in-memory container runtime on a paused tokio clock. Minutes of
//! simulated time take milliseconds; the same policies are tested against the
//! real Docker daemon in docker_pool.rs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use orchestrator::domain::{CheckSource, HealthStatus};
use orchestrator::health;
use orchestrator::pool::reconciler::{Command, Reconciler, Trigger};
use orchestrator::pool::{Pool, PoolSettings};
use orchestrator::ports::{EnginePorts, PortRange};
use orchestrator::registry::{Limits, Registry};
use orchestrator::runtime::memory::MemoryRuntime;
use orchestrator::runtime::{ContainerRuntime, ContainerSpec, Label, PortMapping};
use orchestrator::service::{Orchestrator, Settings};
use orchestrator::store::{Retention, Store};

const LABEL: &str = "policy-test";

fn label() -> Label {
    Label {
        key: "ondemand.app".into(),
        value: LABEL.into(),
    }
}

struct World {
    orch: Arc<Orchestrator>,
    pool: Arc<Pool>,
    reconciler: Reconciler,
    runtime: MemoryRuntime,
    _dir: tempfile::TempDir,
}

fn settings(min_replicas: u32) -> PoolSettings {
    PoolSettings {
        image: "engine:test".into(),
        label: label(),
        network: None,
        limits: Default::default(),
        map_https: false,
        startup_timeout: Duration::from_secs(5),
        min_replicas,
        max_replicas: 6,
        monitor_interval: Duration::from_secs(10),
        autoscale_interval: Duration::from_secs(30),
        grace_s: 30.0,
        auto_delete: false,
        unhealthy_grace_s: 60.0,
        replacement_cooldown_s: 60.0,
        max_unhealthy_percent: 50,
        allowed_images: vec!["engine:test".into()],
        vpn: None,
        on_demand: None,
    }
}

fn world(pool_settings: PoolSettings, host_ports: (u16, u16)) -> World {
    let dir = tempfile::tempdir().unwrap();
    let retention = Retention {
        stats_per_stream: 10,
        health_per_engine: 10,
    };
    let (store, _) = Store::open(&dir.path().join("policy.db"), retention, 10).unwrap();
    let limits = Limits {
        failure_threshold: 1,
        health_history_max: 10,
        stats_history_max: 10,
        ended_streams_max: 10,
    };
    let core = Settings {
        health_interval: Duration::from_secs(2),
        health_timeout: Duration::from_secs(1),
        health_concurrency: 16,
        collect_concurrency: 4,
        collect_interval: Duration::from_secs(5),
        max_streams_per_engine: 2,
        reservation_ttl_s: 30.0,
        retention,
    };
    let runtime = MemoryRuntime::new();
    let orch = Arc::new(
        Orchestrator::new(Registry::new(limits), store, core).with_probe(Arc::new(runtime.clone())),
    );
    let ports = EnginePorts::new(
        PortRange {
            start: host_ports.0,
            end: host_ports.1,
        },
        PortRange {
            start: 40000,
            end: 40999,
        },
        PortRange {
            start: 45000,
            end: 45999,
        },
    );
    let (pool, reconciler) = Pool::new(
        Arc::new(runtime.clone()) as Arc<dyn ContainerRuntime>,
        orch.clone(),
        pool_settings,
        ports,
    );
    World {
        orch,
        pool,
        reconciler,
        runtime,
        _dir: dir,
    }
}

impl World {
    fn engines(&self) -> Vec<(String, HealthStatus)> {
        self.orch.read(|r| {
            r.all_engine_ids()
                .into_iter()
                .filter_map(|id| r.engine(&id).map(|e| (id, e.health.status)))
                .collect()
        })
    }

    fn count(&self, status: HealthStatus) -> usize {
        self.engines().iter().filter(|(_, s)| *s == status).count()
    }

    fn suspended(&self) -> bool {
        self.orch.read(|r| r.replacement_suspended())
    }

    /// Waits, in simulated time, until the check every new engine gets at
    /// once has been recorded (no engine is left `unknown`).
    async fn settle(&self) {
        for _ in 0..200 {
            if self.count(HealthStatus::Unknown) == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "engines still unknown after 2 s of simulated time: {:?}",
            self.engines()
        );
    }

    async fn tick(&mut self) {
        self.reconciler.step(Trigger::Tick).await;
        self.settle().await;
    }

    async fn sweep(&self) {
        health::sweep(&self.orch, CheckSource::Probe).await;
    }
}

fn engine_spec(name: &str, host_port: u16, label: Label) -> ContainerSpec {
    ContainerSpec {
        name: name.into(),
        image: "engine:test".into(),
        env: vec![],
        labels: BTreeMap::from([
            (label.key, label.value),
            ("acestream.http_port".into(), "40000".into()),
            ("host.http_port".into(), host_port.to_string()),
        ]),
        ports: vec![PortMapping::published(40000, host_port)],
        network: None,
        ..Default::default()
    }
}

#[tokio::test(start_paused = true)]
async fn the_reconciler_adopts_ours_ignores_others_and_forgets_the_gone() {
    let mut w = world(settings(0), (23000, 23099));
    let ours = w
        .runtime
        .add_running(engine_spec("engine-7", 23007, label()));
    let foreign = Label {
        key: "ondemand.app".into(),
        value: "someone-else".into(),
    };
    w.runtime.add_running(engine_spec("other", 23008, foreign));

    w.tick().await;
    assert_eq!(
        w.engines(),
        vec![(ours.id.clone(), HealthStatus::Healthy)],
        "adopted and checked at once, the foreign container left alone"
    );

    // Removed by hand: the event makes the reconciler forget it.
    w.runtime.remove_by_hand(&ours.id);
    w.reconciler
        .step(Trigger::Event(orchestrator::runtime::RuntimeEvent {
            kind: orchestrator::runtime::RuntimeEventKind::Destroy,
            container_id: ours.id.clone(),
            name: None,
            at: orchestrator::time::Timestamp::now(),
        }))
        .await;
    assert!(w.engines().is_empty());

    // A daemon that is down changes nothing; when it is back, resync catches up.
    let again = w
        .runtime
        .add_running(engine_spec("engine-8", 23009, label()));
    w.runtime.set_unreachable(true);
    tokio::time::advance(Duration::from_secs(10)).await;
    w.tick().await;
    assert!(w.engines().is_empty());
    w.runtime.set_unreachable(false);
    tokio::time::advance(Duration::from_secs(10)).await;
    w.tick().await;
    assert_eq!(w.engines(), vec![(again.id, HealthStatus::Healthy)]);
}

#[tokio::test(start_paused = true)]
async fn the_autoscaler_keeps_free_engines_follows_demand_and_waits_out_the_grace() {
    let mut w = world(settings(2), (23100, 23199));
    w.tick().await;
    assert_eq!(
        w.count(HealthStatus::Healthy),
        2,
        "MIN_REPLICAS free engines"
    );

    w.pool.set_demand(4);
    w.reconciler.step(Trigger::Command(Command::Scale)).await;
    w.settle().await;
    assert_eq!(w.runtime.running().len(), 4, "demand 4");

    // Demand back to 0: idle engines above the minimum go only after the
    // grace period (30 s), at the next autoscale (every 30 s).
    w.pool.set_demand(0);
    w.reconciler.step(Trigger::Command(Command::Scale)).await;
    assert_eq!(
        w.runtime.running().len(),
        4,
        "still within the grace period"
    );
    tokio::time::advance(Duration::from_secs(31)).await;
    w.tick().await;
    assert_eq!(w.runtime.running().len(), 2, "back to MIN_REPLICAS");
    assert_eq!(w.engines().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_engine_that_stays_unhealthy_is_replaced_after_the_grace_once_per_cooldown() {
    let mut w = world(settings(3), (23200, 23299));
    w.tick().await;
    let first: Vec<String> = w.engines().into_iter().map(|(id, _)| id).collect();
    assert_eq!(first.len(), 3);

    w.runtime.set_hung(&first[0], true);
    w.sweep().await;
    assert_eq!(w.count(HealthStatus::Unhealthy), 1);

    // Within HEALTH_UNHEALTHY_GRACE_PERIOD_S (60 s): nothing happens.
    tokio::time::advance(Duration::from_secs(30)).await;
    w.tick().await;
    assert!(w.runtime.running().contains(&first[0]));
    assert_eq!(w.runtime.created().len(), 3);

    // Past it: a new engine is started first, then the broken one removed.
    tokio::time::advance(Duration::from_secs(35)).await;
    w.tick().await;
    assert!(
        !w.runtime.running().contains(&first[0]),
        "the hung engine is gone"
    );
    assert_eq!(w.runtime.created().len(), 4, "one replacement");
    assert_eq!(w.count(HealthStatus::Healthy), 3);

    // Another engine hangs right away: the cooldown (60 s) holds it back.
    w.runtime.set_hung(&first[1], true);
    w.sweep().await;
    tokio::time::advance(Duration::from_secs(61)).await;
    w.sweep().await;
    // Unhealthy since 61 s, past its grace, but the last replacement was 61 s ago.
    w.tick().await;
    assert_eq!(
        w.runtime.created().len(),
        5,
        "replaced once the cooldown allowed"
    );
    assert!(!w.runtime.running().contains(&first[1]));
}

#[tokio::test(start_paused = true)]
async fn the_mass_failure_guard_replaces_nothing_while_most_engines_fail() {
    let mut w = world(settings(4), (23300, 23399));
    w.tick().await;
    let ids: Vec<String> = w.engines().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 4);

    // Three of four hang at once (a VPN drop, say): a shared cause.
    for id in &ids[..3] {
        w.runtime.set_hung(id, true);
    }
    w.sweep().await;
    assert_eq!(w.count(HealthStatus::Unhealthy), 3);
    tokio::time::advance(Duration::from_secs(10)).await;
    w.tick().await;
    assert!(w.suspended(), "the guard holds replacements back");
    tokio::time::advance(Duration::from_secs(300)).await;
    w.tick().await;
    assert_eq!(
        w.runtime.created().len(),
        4,
        "nothing replaced during the outage"
    );
    assert!(w.suspended());

    // The cause goes away: engines recover, the guard lifts, nobody was replaced.
    for id in &ids[..3] {
        w.runtime.set_hung(id, false);
    }
    w.sweep().await;
    tokio::time::advance(Duration::from_secs(10)).await;
    w.tick().await;
    assert!(!w.suspended());
    assert_eq!(w.count(HealthStatus::Healthy), 4);
    assert_eq!(w.runtime.created().len(), 4);
    assert!(w.pool.demand() == 0);
}

/// What the Swarm runtime reports when a node goes down and Swarm moves the
/// engine's task: the engine stays (same id) while its service is restarting,
/// and its history says what happened, step by step. (A single-node swarm
/// cannot lose a node, so this path is tested here, on reported states.)
#[tokio::test(start_paused = true)]
async fn a_swarm_engine_whose_node_goes_down_keeps_its_identity_and_its_history_says_why() {
    use orchestrator::runtime::{ContainerStatus, RuntimeEvent, RuntimeEventKind, TaskPlacement};
    let mut w = world(settings(0), (23300, 23399));
    let engine = w
        .runtime
        .add_running(engine_spec("engine-1", 23301, label()));
    let task = |task_id: &str, state: &str, node: &str, node_state: &str| TaskPlacement {
        task_id: task_id.into(),
        state: state.into(),
        message: String::new(),
        node_id: if node.is_empty() {
            String::new()
        } else {
            format!("id-{node}")
        },
        node: node.into(),
        node_state: node_state.into(),
    };
    let notes = |w: &World| -> Vec<String> {
        w.orch.read(|r| {
            r.health_history(&engine.id)
                .unwrap()
                .transitions
                .iter()
                .rev()
                .filter(|t| t.from == t.to)
                .map(|t| t.reason.clone())
                .collect()
        })
    };
    let placement_event = RuntimeEvent {
        kind: RuntimeEventKind::Placement,
        container_id: "node-a".into(),
        name: None,
        at: orchestrator::time::Timestamp::now(),
    };
    let runtime = w.runtime.clone();
    let set = |status, t| runtime.set_task(&engine.id, status, Some(t));

    set(
        ContainerStatus::Running,
        task("task-1", "running", "node-a", "ready"),
    );
    w.tick().await;
    assert_eq!(
        w.engines(),
        vec![(engine.id.clone(), HealthStatus::Healthy)]
    );
    assert!(
        notes(&w).is_empty(),
        "nothing to say on first sight: {:?}",
        notes(&w)
    );

    // The node goes down; Swarm has not moved the task yet.
    set(
        ContainerStatus::Running,
        task("task-1", "running", "node-a", "down"),
    );
    w.reconciler
        .step(Trigger::Event(placement_event.clone()))
        .await;
    // Swarm gives up on the node: a new task, not placed yet. The engine stays.
    set(
        ContainerStatus::Restarting,
        task("task-2", "pending", "", ""),
    );
    w.reconciler
        .step(Trigger::Event(placement_event.clone()))
        .await;
    assert_eq!(w.engines().len(), 1, "kept while Swarm reschedules it");
    // Placed and running on another node.
    set(
        ContainerStatus::Running,
        task("task-2", "running", "node-b", "ready"),
    );
    w.reconciler.step(Trigger::Event(placement_event)).await;

    assert_eq!(
        notes(&w),
        vec![
            "node node-a is down: Swarm will run this engine elsewhere".to_owned(),
            "Swarm replaced task task-1 (node node-a) with task task-2 not placed yet: pending"
                .to_owned(),
            "task task-2 running on node node-b".to_owned(),
        ]
    );
    assert_eq!(w.engines()[0].0, engine.id, "the same engine throughout");
}
