//! The autoscaling decision: a pure function from the pool to a plan, so that
//! its rules are tested exhaustively and never need a daemon.
//!
//! Rules (docs/CONTRACT.md, "Containers we run"): keep `min_free` engines
//! without a stream, never run more than `max_total`, honour the demand set
//! through `POST /scale/{demand}`, remove an empty engine above the minimum
//! only after `grace_s`, and with `auto_delete` remove an engine whose stream
//! ended (after the same grace).

use crate::time::Timestamp;

/// One engine we run, as the autoscaler sees it.
#[derive(Debug, Clone)]
pub struct PoolEngine {
    pub id: String,
    /// Active streams plus open reservations.
    pub load: u32,
    /// Since when it has carried nothing (meaningful when `load == 0`).
    pub idle_since: Timestamp,
    /// Whether it ever served a stream.
    pub used: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub min_free: u32,
    pub max_total: u32,
    pub demand: u32,
    pub grace_s: f64,
    pub auto_delete: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub provision: u32,
    /// Engines to remove, longest idle first.
    pub remove: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.provision == 0 && self.remove.is_empty()
    }
}

pub fn decide(pool: &[PoolEngine], policy: &Policy, now: Timestamp) -> Plan {
    let total = pool.len() as u32;
    let busy = pool.iter().filter(|e| e.load > 0).count() as u32;
    let target = (busy + policy.min_free)
        .max(policy.demand)
        .min(policy.max_total);

    let mut idle: Vec<&PoolEngine> = pool
        .iter()
        .filter(|e| e.load == 0 && e.idle_since.seconds_until(now) >= policy.grace_s)
        .collect();
    idle.sort_by(|a, b| {
        a.idle_since
            .cmp(&b.idle_since)
            .then_with(|| a.id.cmp(&b.id))
    });

    let mut remove: Vec<String> = Vec::new();
    if policy.auto_delete {
        remove.extend(idle.iter().filter(|e| e.used).map(|e| e.id.clone()));
    }
    let surplus = total.saturating_sub(target) as usize;
    for engine in &idle {
        if remove.len() >= surplus {
            break;
        }
        if !remove.contains(&engine.id) {
            remove.push(engine.id.clone());
        }
    }
    let remaining = total - remove.len() as u32;
    Plan {
        provision: target.saturating_sub(remaining),
        remove,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(id: &str, load: u32, idle_ms: i64, used: bool) -> PoolEngine {
        PoolEngine {
            id: id.into(),
            load,
            idle_since: Timestamp::from_millis(idle_ms),
            used,
        }
    }

    const NOW: i64 = 100_000;

    fn policy(min_free: u32, max_total: u32) -> Policy {
        Policy {
            min_free,
            max_total,
            demand: 0,
            grace_s: 30.0,
            auto_delete: false,
        }
    }

    #[test]
    fn keeps_the_minimum_free() {
        let pool = [engine("a", 1, 0, true), engine("b", 0, NOW, false)];
        let plan = decide(&pool, &policy(2, 10), Timestamp::from_millis(NOW));
        assert_eq!(
            plan,
            Plan {
                provision: 1,
                remove: vec![]
            }
        );
    }

    #[test]
    fn removes_surplus_only_after_the_grace_period() {
        let pool = [
            engine("old", 0, 0, true),
            engine("fresh", 0, NOW - 1_000, true),
            engine("busy", 2, 0, true),
        ];
        let plan = decide(&pool, &policy(0, 10), Timestamp::from_millis(NOW));
        assert_eq!(
            plan.remove,
            vec!["old".to_owned()],
            "fresh is still in its grace period"
        );
        assert_eq!(plan.provision, 0);
    }

    #[test]
    fn demand_and_max_bound_the_pool() {
        let mut p = policy(0, 3);
        p.demand = 5;
        let plan = decide(&[], &p, Timestamp::from_millis(NOW));
        assert_eq!(plan.provision, 3, "never above MAX_REPLICAS");
    }

    #[test]
    fn auto_delete_removes_used_engines_and_refills_the_minimum() {
        let mut p = policy(1, 5);
        p.auto_delete = true;
        let pool = [engine("used", 0, 0, true), engine("spare", 0, 0, false)];
        let plan = decide(&pool, &p, Timestamp::from_millis(NOW));
        assert_eq!(plan.remove, vec!["used".to_owned()]);
        assert_eq!(plan.provision, 0, "spare is still free");
    }

    #[test]
    fn exhaustive_small_pools_respect_the_invariants() {
        // Every pool of up to 4 engines with loads 0..2, idle or in grace,
        // used or not, against a range of policies.
        let now = Timestamp::from_millis(NOW);
        for size in 0..=4u32 {
            for shape in 0..(12u32.pow(size)) {
                let pool: Vec<PoolEngine> = (0..size)
                    .map(|i| {
                        let s = (shape / 12u32.pow(i)) % 12;
                        let idle = if s % 2 == 0 { 0 } else { NOW - 1 };
                        engine(&format!("e{i}"), (s / 4) % 3, idle, (s / 2) % 2 == 1)
                    })
                    .collect();
                for min_free in 0..3 {
                    for max_total in [0, 2, 5] {
                        for auto_delete in [false, true] {
                            let p = Policy {
                                min_free,
                                max_total,
                                demand: 1,
                                grace_s: 30.0,
                                auto_delete,
                            };
                            let plan = decide(&pool, &p, now);
                            let busy = pool.iter().filter(|e| e.load > 0).count() as u32;
                            let after =
                                pool.len() as u32 - plan.remove.len() as u32 + plan.provision;
                            for id in &plan.remove {
                                let e = pool.iter().find(|e| &e.id == id).unwrap();
                                assert_eq!(e.load, 0, "never removes a busy engine");
                                assert!(e.idle_since.seconds_until(now) >= 30.0, "grace honoured");
                            }
                            if plan.provision > 0 {
                                assert!(after <= max_total.max(busy), "{pool:?} {p:?} {plan:?}");
                            }
                            let free_after = after - busy;
                            assert!(
                                free_after >= min_free.min(max_total.saturating_sub(busy)),
                                "keeps the minimum free: {pool:?} {p:?} {plan:?}"
                            );
                        }
                    }
                }
            }
        }
    }
}
