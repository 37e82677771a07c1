//! Selection and reservations: a slot is held from `POST /engines/select` (or the
//! proxy's own choice) until its `stream_started` arrives or it expires.

use super::*;

impl Registry {
    pub(super) fn reservation_counts(&self, now: Timestamp) -> HashMap<&str, u32> {
        let mut counts = HashMap::new();
        for r in self.reservations.iter().filter(|r| r.expires_at > now) {
            *counts.entry(r.engine_id.as_str()).or_insert(0) += 1;
        }
        counts
    }

    /// Drops expired reservations; answers how many went.
    pub fn purge_expired_reservations(&mut self, now: Timestamp) -> usize {
        let before = self.reservations.len();
        self.reservations.retain(|r| r.expires_at > now);
        before - self.reservations.len()
    }

    /// Gives a reservation back early; answers whether it existed.
    pub fn release_reservation(&mut self, reservation_id: &str) -> bool {
        let before = self.reservations.len();
        self.reservations
            .retain(|r| r.reservation_id != reservation_id);
        before != self.reservations.len()
    }

    pub(super) fn consume_reservation(
        &mut self,
        engine_id: &str,
        reservation_id: Option<&str>,
        now: Timestamp,
    ) {
        self.purge_expired_reservations(now);
        let position = reservation_id
            .and_then(|rid| {
                self.reservations
                    .iter()
                    .position(|r| r.reservation_id == rid)
            })
            .or_else(|| {
                self.reservations
                    .iter()
                    .position(|r| r.engine_id == engine_id)
            });
        if let Some(i) = position {
            self.reservations.remove(i);
        }
    }

    /// Picks the best engine and reserves a slot on it until a `stream_started`
    /// arrives for it or `ttl_s` passes. Runs under the write lock, so two
    /// callers can never both get the last free slot.
    pub fn select_and_reserve(
        &mut self,
        max_streams: u32,
        ttl_s: f64,
        now: Timestamp,
    ) -> Option<Reservation> {
        self.select_and_reserve_excluding(max_streams, ttl_s, now, &[])
    }

    /// [`Registry::select_and_reserve`] among the engines not in `exclude`
    /// (the proxy's failover leaves out the engines that failed).
    pub fn select_and_reserve_excluding(
        &mut self,
        max_streams: u32,
        ttl_s: f64,
        now: Timestamp,
        exclude: &[String],
    ) -> Option<Reservation> {
        self.purge_expired_reservations(now);
        let reserved = self.reservation_counts(now);
        let chosen = select::pick(
            self.engines
                .values()
                .filter(|entry| !exclude.contains(&entry.engine.container_id))
                .filter(|entry| !self.draining.contains_key(&entry.engine.container_id))
                // Behind a VPN node whose tunnel is down: its P2P traffic is cut.
                .filter(|entry| {
                    entry
                        .engine
                        .vpn_node()
                        .is_none_or(|node| !self.nodes_down.contains_key(node))
                })
                .map(|entry| Candidate {
                    id: &entry.engine.container_id,
                    healthy: entry.engine.health.status == HealthStatus::Healthy,
                    load: entry.active.len() as u32
                        + reserved
                            .get(entry.engine.container_id.as_str())
                            .copied()
                            .unwrap_or(0),
                    last_stream_usage: entry.engine.usage.last_stream_usage,
                }),
            max_streams,
        )?
        .to_owned();
        let reservation = Reservation {
            reservation_id: uuid::Uuid::new_v4().to_string(),
            engine_id: chosen,
            created_at: now,
            expires_at: now.plus_seconds(ttl_s),
        };
        self.reservations.push(reservation.clone());
        Some(reservation)
    }
}
