//! Engines: finding them by id or address, adding, refreshing and forgetting them.

use super::*;

impl Registry {
    /// Finds the engine an event names: by id, else by address. Loopback aliases
    /// are one host, and a container we run also answers to its published port.
    pub fn find_engine(&self, container_id: Option<&str>, host: &str, port: u16) -> Option<&str> {
        if let Some(id) = container_id {
            if let Some((key, _)) = self.engines.get_key_value(id) {
                return Some(key);
            }
        }
        let host = canonical_host(host);
        let key = (host.to_owned(), port);
        let known = self.found_by_address.lock().get(&key).cloned();
        if let Some(id) = known {
            if let Some((key, _)) = self.engines.get_key_value(&id) {
                return Some(key);
            }
        }
        let loopback = host == "127.0.0.1";
        let found = self
            .engines
            .iter()
            .find(|(_, entry)| {
                let e = &entry.engine;
                (e.port == port && canonical_host(&e.host) == host)
                    || (loopback
                        && e.runtime == RuntimeKind::Docker
                        && e.host_http_port() == Some(port))
            })
            .map(|(id, _)| id.as_str())?;
        // Only hits are kept: at most two addresses per engine (its own and
        // a published port), whatever unknown addresses events name.
        self.found_by_address.lock().insert(key, found.to_owned());
        Some(found)
    }

    /// Forgets the answers of [`Registry::find_engine`]: which engine an
    /// address names may have changed.
    fn addresses_changed(&mut self) {
        self.found_by_address.get_mut().clear();
    }

    /// Adds an engine. `container_id` defaults to `"host:port"`.
    pub fn register(&mut self, engine: Engine) -> (String, Vec<WriteOp>) {
        let id = engine.container_id.clone();
        let ops = vec![WriteOp::UpsertEngine(Box::new(engine.clone()))];
        self.engines.insert(id.clone(), EngineEntry::new(engine));
        self.addresses_changed();
        (id, ops)
    }

    pub fn new_external_engine(
        host: &str,
        port: u16,
        container_id: Option<String>,
        name: Option<String>,
        labels: BTreeMap<String, String>,
        now: Timestamp,
    ) -> Engine {
        Engine {
            container_id: container_id.unwrap_or_else(|| external_engine_id(host, port)),
            container_name: name,
            host: host.trim().to_owned(),
            port,
            labels,
            runtime: RuntimeKind::External,
            first_seen: now,
            last_seen: now,
            health: EngineHealth::default(),
            usage: EngineUsage::default(),
        }
    }

    /// Forgets an engine; its active streams end with `reason`.
    pub fn remove_engine(
        &mut self,
        id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Engine, Vec<WriteOp>), RegistryError> {
        let active: Vec<String> = match self.engines.get(id) {
            Some(entry) => entry.active.iter().cloned().collect(),
            None => return Err(RegistryError::EngineNotFound(id.to_owned())),
        };
        let mut ops = Vec::new();
        for stream_id in active {
            if let Some((_, more)) = self.end_stream(&stream_id, Some(reason), now) {
                ops.extend(more);
            }
        }
        self.reservations.retain(|r| r.engine_id != id);
        self.draining.remove(id);
        let entry = self
            .engines
            .remove(id)
            .ok_or_else(|| RegistryError::EngineNotFound(id.to_owned()))?;
        self.addresses_changed();
        ops.push(WriteOp::DeleteEngine(id.to_owned()));
        Ok((entry.engine, ops))
    }

    /// Adds an engine, or refreshes the address, name and labels of a known one
    /// (adoption after a restart finds engines the database already knew).
    pub fn upsert(&mut self, engine: Engine) -> Vec<WriteOp> {
        match self.entry_mut(&engine.container_id) {
            Some(entry) => {
                let known = &mut entry.engine;
                if known.host == engine.host
                    && known.port == engine.port
                    && known.container_name == engine.container_name
                    && known.labels == engine.labels
                    && known.runtime == engine.runtime
                {
                    return Vec::new();
                }
                known.host = engine.host;
                known.port = engine.port;
                known.container_name = engine.container_name;
                known.labels = engine.labels;
                known.runtime = engine.runtime;
                let op = WriteOp::UpsertEngine(Box::new(known.clone()));
                self.addresses_changed();
                vec![op]
            }
            None => self.register(engine).1,
        }
    }

    /// Marks a VPN node down (with why) or up (`None`); answers whether that
    /// changed anything.
    pub fn set_node_down(&mut self, node: &str, reason: Option<String>) -> bool {
        match reason {
            Some(reason) => self.nodes_down.insert(node.to_owned(), reason).is_none(),
            None => self.nodes_down.remove(node).is_some(),
        }
    }

    /// Whether a VPN node's tunnel is down.
    pub fn node_down(&self, node: &str) -> bool {
        self.nodes_down.contains_key(node)
    }

    /// Records the port a VPN node's provider forwards (`None`: none).
    pub fn set_node_forwarded_port(&mut self, node: &str, port: Option<u16>) {
        match port {
            Some(port) => self.nodes_forwarded.insert(node.to_owned(), port),
            None => self.nodes_forwarded.remove(node),
        };
    }

    /// The port a VPN node's provider forwards, when it does.
    pub fn node_forwarded_port(&self, node: &str) -> Option<u16> {
        self.nodes_forwarded.get(node).copied()
    }

    /// Why an engine must not be used now although it may answer: the VPN
    /// node it sits behind is down.
    pub fn engine_blocked(&self, id: &str) -> Option<&str> {
        if let Some(why) = self.draining.get(id) {
            return Some(why);
        }
        let node = self.engines.get(id)?.engine.vpn_node()?;
        self.nodes_down.get(node).map(String::as_str)
    }

    /// Drains an engine (with why) before it is recreated, or stops (`None`).
    pub fn set_engine_draining(&mut self, id: &str, reason: Option<String>) -> bool {
        match reason {
            Some(reason) if self.engines.contains_key(id) => {
                self.draining.insert(id.to_owned(), reason).is_none()
            }
            Some(_) => false,
            None => self.draining.remove(id).is_some(),
        }
    }

    /// Started streams the engine carries now.
    pub fn active_streams_of(&self, id: &str) -> usize {
        self.engines.get(id).map_or(0, |e| e.active.len())
    }

    /// Whether the mass-failure guard holds replacements back.
    pub fn replacement_suspended(&self) -> bool {
        self.replacement_suspended
    }

    pub fn set_replacement_suspended(&mut self, suspended: bool) {
        self.replacement_suspended = suspended;
    }

    /// Ids of every engine.
    pub fn all_engine_ids(&self) -> Vec<String> {
        self.engines.keys().cloned().collect()
    }

    /// The engines that `runtime` runs.
    pub fn engines_run_by(&self, runtime: RuntimeKind) -> impl Iterator<Item = &Engine> {
        self.engines
            .values()
            .map(|e| &e.engine)
            .filter(move |e| e.runtime == runtime)
    }

    /// The engines we run, as the autoscaler sees them.
    pub fn pool(&self, now: Timestamp) -> Vec<crate::autoscale::PoolEngine> {
        let reserved = self.reservation_counts(now);
        self.engines
            .values()
            .filter(|e| e.engine.runtime == RuntimeKind::Docker)
            .map(|e| crate::autoscale::PoolEngine {
                id: e.engine.container_id.clone(),
                load: e.active.len() as u32
                    + reserved
                        .get(e.engine.container_id.as_str())
                        .copied()
                        .unwrap_or(0),
                idle_since: e.engine.last_seen.max(e.engine.first_seen),
                used: e.engine.usage.streams_total > 0,
            })
            .collect()
    }

    /// Engines we run that have been unhealthy since before `since`.
    pub fn unhealthy_since(&self, since: Timestamp) -> Vec<(String, Timestamp)> {
        self.engines
            .values()
            .filter(|e| e.engine.runtime == RuntimeKind::Docker)
            .filter(|e| e.engine.health.status == HealthStatus::Unhealthy)
            // Behind a VPN node that is down, the node is the cause: its
            // engines are not replaced one by one.
            .filter(|e| {
                e.engine
                    .vpn_node()
                    .is_none_or(|node| !self.nodes_down.contains_key(node))
            })
            .filter_map(|e| {
                let at = e.engine.health.status_since?;
                (at <= since).then(|| (e.engine.container_id.clone(), at))
            })
            .collect()
    }

    /// Records a note in an engine's health history (a replacement, say) without
    /// changing its status.
    pub fn note(&mut self, id: &str, reason: String, now: Timestamp) -> Vec<WriteOp> {
        let max = self.limits.health_history_max;
        let Some(entry) = self.entry_mut(id) else {
            return Vec::new();
        };
        let status = entry.engine.health.status;
        let transition = HealthTransition {
            ts: now,
            from: status,
            to: status,
            reason,
        };
        push_bounded(&mut entry.transitions, transition.clone(), max);
        vec![WriteOp::HealthTransition {
            engine_id: id.to_owned(),
            transition,
        }]
    }
}
