//! Which engine a proxy should use next: a pure policy, so that it can be tested
//! and benchmarked without a server.

use crate::time::Timestamp;

/// What selection needs to know about one engine.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub healthy: bool,
    /// Active streams plus open reservations.
    pub load: u32,
    pub last_stream_usage: Option<Timestamp>,
}

/// Picks a healthy engine whose load is under `max_load`: the least loaded first,
/// then the one idle the longest (never used counts as idle forever), ties by id
/// so the answer is deterministic.
pub fn pick<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    max_load: u32,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .filter(|c| c.healthy && c.load < max_load)
        // `None < Some(_)`, so never-used engines come first among equals.
        .min_by_key(|c| (c.load, c.last_stream_usage, c.id))
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, healthy: bool, load: u32, used: Option<i64>) -> Candidate<'_> {
        Candidate {
            id,
            healthy,
            load,
            last_stream_usage: used.map(Timestamp::from_millis),
        }
    }

    #[test]
    fn fewest_streams_then_longest_idle_then_id() {
        let pool = [
            c("busy", true, 1, None),
            c("recent", true, 0, Some(2_000)),
            c("old", true, 0, Some(1_000)),
            c("sick", false, 0, None),
        ];
        assert_eq!(pick(pool, 2), Some("old"));

        let pool = [
            c("b", true, 0, None),
            c("a", true, 0, None),
            c("x", true, 0, Some(1)),
        ];
        assert_eq!(pick(pool, 2), Some("a"), "never used wins, ties by id");
    }

    #[test]
    fn never_picks_unhealthy_or_full_engines() {
        let pool = [c("sick", false, 0, None), c("full", true, 2, None)];
        assert_eq!(pick(pool, 2), None);
        assert_eq!(pick([c("one", true, 1, None)], 1), None);
    }

    #[test]
    fn exhaustive_small_pools_respect_the_invariants() {
        // Every combination of health and load over three engines: the pick is
        // healthy, under the limit, and no eligible engine has a lower load.
        for mask in 0..(2u32.pow(3) * 27) {
            let health = mask % 8;
            let loads = [(mask / 8) % 3, (mask / 24) % 3, (mask / 72) % 3];
            let ids = ["e0", "e1", "e2"];
            let pool: Vec<_> = (0..3)
                .map(|i| c(ids[i], health & (1 << i) != 0, loads[i], Some(i as i64)))
                .collect();
            let eligible: Vec<_> = pool.iter().filter(|c| c.healthy && c.load < 2).collect();
            match pick(pool.clone(), 2) {
                None => assert!(eligible.is_empty()),
                Some(id) => {
                    let chosen = pool.iter().find(|c| c.id == id).unwrap();
                    assert!(chosen.healthy && chosen.load < 2);
                    assert!(eligible.iter().all(|e| e.load >= chosen.load));
                }
            }
        }
    }
}
