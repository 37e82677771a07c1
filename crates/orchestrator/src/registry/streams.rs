//! Streams: started and ended events, their engines' active sets, stat history.

use super::*;

impl Registry {
    /// Records a started stream, registering its engine when nobody knew it.
    pub fn stream_started(
        &mut self,
        event: StreamStart,
        now: Timestamp,
    ) -> Result<(Stream, Vec<WriteOp>), RegistryError> {
        let mut ops = Vec::new();
        let engine_id =
            match self.find_engine(event.container_id.as_deref(), &event.host, event.port) {
                Some(id) => id.to_owned(),
                None => {
                    let engine = Self::new_external_engine(
                        &event.host,
                        event.port,
                        event.container_id.clone(),
                        None,
                        BTreeMap::new(),
                        now,
                    );
                    let (id, more) = self.register(engine);
                    ops.extend(more);
                    id
                }
            };
        let (engine_host, engine_port) = {
            let e = &self.engines[&engine_id].engine;
            (e.host.clone(), e.port)
        };
        // The collector and "stop stream" fetch these URLs: they must stay on the
        // engine, or an event could aim the orchestrator at any host.
        for (field, url) in [
            ("stat_url", &event.stat_url),
            ("command_url", &event.command_url),
        ] {
            if let Some(url) = url {
                check_engine_url(
                    field,
                    url,
                    &[(&engine_host, engine_port), (&event.host, event.port)],
                )?;
            }
        }
        let stream_id = event
            .labels
            .get("stream_id")
            .filter(|s| !s.is_empty())
            .cloned()
            .unwrap_or_else(|| {
                format!(
                    "{}|{}",
                    event.key,
                    event.playback_session_id.as_deref().unwrap_or("")
                )
            });

        // Repeating an event overwrites the stream; detach it from a previous engine.
        let mut was_active_here = false;
        if let Some(old) = self.streams.get(&stream_id) {
            if old.status == StreamStatus::Started {
                if old.container_id == engine_id {
                    was_active_here = true;
                } else {
                    let old_engine = old.container_id.clone();
                    ops.extend(self.detach(&old_engine, &stream_id, now));
                }
            } else {
                self.ended_order.retain(|id| id != &stream_id);
            }
        }

        self.consume_reservation(&engine_id, event.reservation_id.as_deref(), now);
        let entry = self
            .entry_mut(&engine_id)
            .ok_or_else(|| RegistryError::EngineNotFound(engine_id.clone()))?;
        if entry.active.is_empty() {
            entry.engine.usage.busy_since = Some(now);
        }
        entry.active.insert(stream_id.clone());
        if !was_active_here {
            entry.engine.usage.streams_total += 1;
        }
        entry.engine.usage.last_stream_usage = Some(now);
        entry.engine.last_seen = now;
        ops.push(WriteOp::UpsertEngine(Box::new(entry.engine.clone())));

        let stream = Stream {
            id: stream_id.clone(),
            play: crate::domain::PlayPaths::for_key(event.key_type, &event.key),
            key_type: event.key_type,
            key: event.key,
            container_id: engine_id,
            playback_session_id: event.playback_session_id,
            stat_url: event.stat_url,
            command_url: event.command_url,
            is_live: event.is_live,
            started_at: now,
            ended_at: None,
            status: StreamStatus::Started,
            end_reason: None,
            viewers: 0,
            viewers_by_kind: Default::default(),
            failovers: Vec::new(),
        };
        // The built-in proxy repeats the event when it moves a stream to
        // another engine: what it recorded about the stream stays, and a
        // stream moved while it runs keeps its start (the same event on the
        // same engine overwrites it, as proxies expect).
        let mut stream = stream;
        if let Some(old) = self.streams.get(&stream_id) {
            if old.status == StreamStatus::Started {
                stream.viewers = old.viewers;
                stream.viewers_by_kind = old.viewers_by_kind;
                stream.failovers = old.failovers.clone();
                if old.container_id != stream.container_id {
                    stream.started_at = old.started_at;
                }
            }
        }
        ops.push(WriteOp::UpsertStream(Box::new(stream.clone())));
        self.streams.insert(stream_id, stream.clone());
        Ok((stream, ops))
    }

    /// Removes a stream from its engine's active set, closing a busy period.
    pub(super) fn detach(
        &mut self,
        engine_id: &str,
        stream_id: &str,
        now: Timestamp,
    ) -> Vec<WriteOp> {
        let Some(entry) = self.entry_mut(engine_id) else {
            return Vec::new();
        };
        if !entry.active.remove(stream_id) {
            return Vec::new();
        }
        if entry.active.is_empty() {
            let usage = &mut entry.engine.usage;
            if let Some(since) = usage.busy_since.take() {
                usage.busy_ms_closed += (now.millis() - since.millis()).max(0);
            }
            // The autoscaler's grace period counts from here.
            entry.engine.last_seen = now;
        }
        vec![WriteOp::UpsertEngine(Box::new(entry.engine.clone()))]
    }

    /// Ends a started stream. `None` when it is unknown or already ended.
    pub(super) fn end_stream(
        &mut self,
        stream_id: &str,
        reason: Option<&str>,
        now: Timestamp,
    ) -> Option<(Stream, Vec<WriteOp>)> {
        let stream = self.streams.get_mut(stream_id)?;
        if stream.status != StreamStatus::Started {
            return None;
        }
        stream.status = StreamStatus::Ended;
        stream.ended_at = Some(now);
        stream.end_reason = reason.map(str::to_owned);
        let stream = stream.clone();
        let mut ops = self.detach(&stream.container_id, stream_id, now);
        ops.push(WriteOp::UpsertStream(Box::new(stream.clone())));
        self.ended_order.push_back(stream_id.to_owned());
        self.prune_ended();
        Some((stream, ops))
    }

    pub(super) fn prune_ended(&mut self) {
        while self.ended_order.len() > self.limits.ended_streams_max {
            let Some(old) = self.ended_order.pop_front() else {
                break;
            };
            if self
                .streams
                .get(&old)
                .is_some_and(|s| s.status == StreamStatus::Ended)
            {
                self.streams.remove(&old);
                self.stats.remove(&old);
            }
        }
    }

    /// Forgets ended streams that ended before `cutoff` (and their stat
    /// history): the retention clean-up removes them from the database, so
    /// `GET /streams` stops showing them too. Returns how many went.
    pub fn forget_ended_before(&mut self, cutoff: Timestamp) -> usize {
        let streams = &mut self.streams;
        let stats = &mut self.stats;
        let before = self.ended_order.len();
        self.ended_order.retain(|id| {
            let expired = streams.get(id).is_some_and(|s| {
                s.status == StreamStatus::Ended && s.ended_at.is_some_and(|at| at < cutoff)
            });
            if expired {
                streams.remove(id);
                stats.remove(id);
            }
            !expired
        });
        before - self.ended_order.len()
    }

    /// The `stream_ended` event: by stream id; without one, the newest started
    /// stream of the container. Returns whether anything changed and the stream, if known.
    pub fn stream_ended(
        &mut self,
        container_id: Option<&str>,
        stream_id: Option<&str>,
        reason: Option<&str>,
        now: Timestamp,
    ) -> (bool, Option<Stream>, Vec<WriteOp>) {
        // By id; only an event that names no stream at all falls back to the
        // container's newest started stream. An unknown id ends nothing: proxies
        // send the ids of streams that failed to start, and ending another
        // viewer's stream for them would be wrong (docs/CONTRACT.md).
        let target = match stream_id {
            Some(id) => self.streams.contains_key(id).then(|| id.to_owned()),
            None => container_id.and_then(|cid| {
                self.engines.get(cid).and_then(|entry| {
                    entry
                        .active
                        .iter()
                        .filter_map(|id| self.streams.get(id))
                        .max_by_key(|s| (s.started_at, s.id.clone()))
                        .map(|s| s.id.clone())
                })
            }),
        };
        let Some(target) = target else {
            return (false, None, Vec::new());
        };
        match self.end_stream(&target, reason, now) {
            Some((stream, ops)) => (true, Some(stream), ops),
            None => (false, self.streams.get(&target).cloned(), Vec::new()),
        }
    }

    /// Ends a stream by id for `DELETE /streams/{id}`.
    pub fn stop_stream(
        &mut self,
        stream_id: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(Stream, Vec<WriteOp>), RegistryError> {
        match self.end_stream(stream_id, Some(reason), now) {
            Some(done) => Ok(done),
            None => self
                .streams
                .get(stream_id)
                .cloned()
                .map(|s| (s, Vec::new()))
                .ok_or_else(|| RegistryError::StreamNotFound(stream_id.to_owned())),
        }
    }

    /// Sets how many players read a started stream through the built-in
    /// proxy. In memory only: a restart ends every proxied session.
    pub fn set_viewers(&mut self, stream_id: &str, by_kind: crate::domain::ViewersByKind) -> bool {
        match self.streams.get_mut(stream_id) {
            Some(s) if s.status == StreamStatus::Started && s.viewers_by_kind != by_kind => {
                s.viewers = by_kind.ts + by_kind.hls;
                s.viewers_by_kind = by_kind;
                true
            }
            _ => false,
        }
    }

    /// Players of proxied streams now, by kind.
    pub fn proxy_viewers_by_kind(&self) -> crate::domain::ViewersByKind {
        let mut all = crate::domain::ViewersByKind::default();
        for stream in self
            .engines
            .values()
            .flat_map(|e| e.active.iter())
            .filter_map(|id| self.streams.get(id))
        {
            all.ts += stream.viewers_by_kind.ts;
            all.hls += stream.viewers_by_kind.hls;
        }
        all
    }

    /// Records a failover of a proxied stream (the most recent `max` kept).
    pub fn push_failover(
        &mut self,
        stream_id: &str,
        failover: crate::domain::FailoverRecord,
        max: usize,
    ) -> Vec<WriteOp> {
        let Some(stream) = self.streams.get_mut(stream_id) else {
            return Vec::new();
        };
        stream.failovers.push(failover);
        if stream.failovers.len() > max {
            let excess = stream.failovers.len() - max;
            stream.failovers.drain(..excess);
        }
        vec![WriteOp::UpsertStream(Box::new(stream.clone()))]
    }

    pub fn stream(&self, id: &str) -> Option<&Stream> {
        self.streams.get(id)
    }

    /// Streams, newest first, optionally filtered.
    pub fn streams(
        &self,
        status: Option<StreamStatus>,
        container_id: Option<&str>,
    ) -> Vec<&Stream> {
        let mut list: Vec<&Stream> = self
            .streams
            .values()
            .filter(|s| status.is_none_or(|st| s.status == st))
            .filter(|s| container_id.is_none_or(|c| s.container_id == c))
            .collect();
        list.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then_with(|| a.id.cmp(&b.id))
        });
        list
    }

    /// The started streams to poll, interleaved across engines (first stream of
    /// each engine, then the second…) so that bounded concurrency spreads over
    /// engines instead of piling onto one.
    pub fn stat_targets(&self) -> Vec<StatTarget> {
        let mut per_engine: Vec<Vec<StatTarget>> = self
            .engines
            .values()
            .map(|entry| {
                entry
                    .active
                    .iter()
                    .filter_map(|id| self.streams.get(id))
                    .filter_map(|s| {
                        s.stat_url.as_ref().map(|url| StatTarget {
                            stream_id: s.id.clone(),
                            engine_id: s.container_id.clone(),
                            stat_url: url.clone(),
                        })
                    })
                    .rev()
                    .collect()
            })
            .collect();
        let mut targets = Vec::with_capacity(per_engine.iter().map(Vec::len).sum());
        while !per_engine.is_empty() {
            per_engine.retain_mut(|list| match list.pop() {
                Some(target) => {
                    targets.push(target);
                    true
                }
                None => false,
            });
        }
        targets
    }

    /// Adds a snapshot to a stream that is still started.
    pub fn push_stat(&mut self, stream_id: &str, snapshot: StatSnapshot) -> Vec<WriteOp> {
        let active = self
            .streams
            .get(stream_id)
            .is_some_and(|s| s.status == StreamStatus::Started);
        if !active {
            return Vec::new();
        }
        let history = self.stats.entry(stream_id.to_owned()).or_default();
        push_bounded(history, snapshot.clone(), self.limits.stats_history_max);
        vec![WriteOp::StatSnapshot {
            stream_id: stream_id.to_owned(),
            snapshot,
        }]
    }

    pub fn stats(&self, stream_id: &str, since: Option<Timestamp>) -> Option<Vec<&StatSnapshot>> {
        self.streams.get(stream_id)?;
        Some(
            self.stats
                .get(stream_id)
                .map(|h| {
                    h.iter()
                        .filter(|s| since.is_none_or(|t| s.ts > t))
                        .collect()
                })
                .unwrap_or_default(),
        )
    }
}

/// Accepts `url` only when it is http(s) and points at one of the given
/// addresses (loopback aliases count as the same host).
pub(super) fn check_engine_url(
    field: &'static str,
    url: &str,
    allowed: &[(&str, u16)],
) -> Result<(), RegistryError> {
    let parsed = Url::parse(url).map_err(|_| RegistryError::BadUrl {
        field,
        url: url.to_owned(),
    })?;
    let (host, port) = match (
        parsed.scheme(),
        parsed.host_str(),
        parsed.port_or_known_default(),
    ) {
        ("http" | "https", Some(host), Some(port)) => (host.to_owned(), port),
        _ => {
            return Err(RegistryError::BadUrl {
                field,
                url: url.to_owned(),
            })
        }
    };
    if allowed
        .iter()
        .any(|(h, p)| *p == port && same_host(h, &host))
    {
        Ok(())
    } else {
        Err(RegistryError::ForeignUrl {
            field,
            url: url.to_owned(),
            engine: external_engine_id(allowed[0].0, allowed[0].1),
        })
    }
}
