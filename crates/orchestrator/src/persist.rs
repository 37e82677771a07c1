//! What the in-memory registry and the database exchange: the change records a
//! registry mutation produces (and the store writes), and the state the store
//! loads at start-up (and the registry is rebuilt from). Both sides depend on
//! this module, neither on the other.

use std::collections::{HashMap, VecDeque};

use crate::domain::{Engine, EngineHealth, HealthCheck, HealthTransition, StatSnapshot, Stream};

/// One change to persist.
#[derive(Debug, Clone)]
pub enum WriteOp {
    UpsertEngine(Box<Engine>),
    DeleteEngine(String),
    /// The health columns of a known engine (the hot path of every check).
    EngineHealth {
        engine_id: String,
        health: EngineHealth,
    },
    UpsertStream(Box<Stream>),
    StatSnapshot {
        stream_id: String,
        snapshot: StatSnapshot,
    },
    HealthCheck {
        engine_id: String,
        check: HealthCheck,
    },
    HealthTransition {
        engine_id: String,
        transition: HealthTransition,
    },
}

/// Everything the registry needs after a restart.
#[derive(Debug, Default)]
pub struct Loaded {
    pub engines: Vec<Engine>,
    pub streams: Vec<Stream>,
    pub stats: HashMap<String, VecDeque<StatSnapshot>>,
    pub checks: HashMap<String, VecDeque<HealthCheck>>,
    pub transitions: HashMap<String, VecDeque<HealthTransition>>,
}
