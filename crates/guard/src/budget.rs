//! The action budget: how much the agent may do, how often, and how widely.
//!
//! A policy that is wrong in a loop does the most harm by repetition: restarting a
//! job every minute, or scaling every pipeline at once. The budget bounds that harm
//! whatever the policy says: a cap on actions in any sliding hour, a cooldown per
//! (pipeline, action kind), and a blast radius on how many pipelines are being
//! acted on at the same time.

use selfheal_core::Action;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, VecDeque};

/// The sliding window of the hourly cap, in ms: exactly one hour.
pub const HOUR_MS: u64 = 3_600_000;

/// Limits of the action budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// Most actions started in any sliding hour, over all pipelines. Default 20.
    pub actions_per_hour: u32,
    /// Least time between two starts of the same action kind on the same pipeline. Default 300.
    pub cooldown_secs: u64,
    /// Most pipelines with an action in flight at once. Default 1.
    pub blast_radius: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig { actions_per_hour: 20, cooldown_secs: 300, blast_radius: 1 }
    }
}

/// Why the budget refused an action.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The hourly cap is used up.
    #[error("budget: {used} actions in the last hour (limit {limit})")]
    PerHour {
        /// `actions_per_hour`.
        limit: u32,
        /// Actions started in the last hour.
        used: u32,
    },
    /// The same action ran on the same pipeline too recently.
    #[error("cooldown: {action} on {pipeline} ran recently; allowed again in {} s", remaining_ms.div_ceil(1000))]
    Cooldown {
        /// The pipeline.
        pipeline: String,
        /// The action kind.
        action: Action,
        /// Time until the cooldown ends.
        remaining_ms: u64,
    },
    /// Acting on this pipeline would widen the blast radius past its limit.
    #[error("blast radius: {} pipeline(s) being acted on (limit {limit}): {}", in_flight.len(), in_flight.join(", "))]
    BlastRadius {
        /// `blast_radius`.
        limit: u32,
        /// The pipelines with an action in flight, sorted.
        in_flight: Vec<String>,
    },
}

/// The budget's memory: recent starts, last start per (pipeline, action), actions in flight.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    config: BudgetConfig,
    /// Start times of the last hour (may hold older ones until the next start prunes them).
    starts: VecDeque<u64>,
    /// Last start of each (pipeline, action) still within its cooldown.
    last_start: HashMap<(String, Action), u64>,
    /// Actions in flight per pipeline (never 0: a finished pipeline is removed).
    in_flight: BTreeMap<String, u32>,
}

impl Budget {
    /// An empty budget with these limits.
    pub fn new(config: BudgetConfig) -> Budget {
        Budget { config, ..Budget::default() }
    }

    /// The limits.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Actions started in the hour up to `now_ms`: those at `t` with `now_ms - t < HOUR_MS`
    /// (a start stamped after `now_ms`, after a clock step back, counts too).
    pub fn used_last_hour(&self, now_ms: u64) -> u32 {
        let n = self.starts.iter().filter(|t| now_ms.saturating_sub(**t) < HOUR_MS).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The pipelines with an action in flight, sorted.
    pub fn in_flight(&self) -> impl Iterator<Item = &str> {
        self.in_flight.keys().map(String::as_str)
    }

    /// Whether `action` may start on `pipeline` at `now_ms`. Checks, in order: the
    /// hourly cap, the cooldown, the blast radius. Another action on a pipeline
    /// already in flight does not widen the blast radius.
    pub fn check(&self, now_ms: u64, pipeline: &str, action: Action) -> Result<(), Denied> {
        let limit = self.config.actions_per_hour;
        let used = self.used_last_hour(now_ms);
        if used >= limit {
            return Err(Denied::PerHour { limit, used });
        }
        let cooldown_ms = self.config.cooldown_secs.saturating_mul(1000);
        if let Some(last) = self.last_start.get(&(pipeline.to_string(), action)) {
            let elapsed = now_ms.saturating_sub(*last);
            if elapsed < cooldown_ms {
                let remaining_ms = cooldown_ms - elapsed;
                return Err(Denied::Cooldown { pipeline: pipeline.to_string(), action, remaining_ms });
            }
        }
        let limit = self.config.blast_radius;
        if !self.in_flight.contains_key(pipeline) && self.in_flight.len() >= limit as usize {
            return Err(Denied::BlastRadius { limit, in_flight: self.in_flight().map(String::from).collect() });
        }
        Ok(())
    }

    /// Record that `action` started on `pipeline` at `now_ms`: it counts against the
    /// hour, starts its cooldown and puts the pipeline in flight until [`Budget::finish`].
    /// Does not check; call [`Budget::check`] first.
    pub fn start(&mut self, now_ms: u64, pipeline: &str, action: Action) {
        while self.starts.front().is_some_and(|t| now_ms.saturating_sub(*t) >= HOUR_MS) {
            self.starts.pop_front();
        }
        self.starts.push_back(now_ms);
        let cooldown_ms = self.config.cooldown_secs.saturating_mul(1000);
        self.last_start.retain(|_, t| now_ms.saturating_sub(*t) < cooldown_ms);
        self.last_start.insert((pipeline.to_string(), action), now_ms);
        *self.in_flight.entry(pipeline.to_string()).or_insert(0) += 1;
    }

    /// One action on `pipeline` has finished (call once per [`Budget::start`]); the
    /// pipeline leaves the blast radius when its last action finishes.
    pub fn finish(&mut self, pipeline: &str) {
        if let Some(n) = self.in_flight.get_mut(pipeline) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(pipeline);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;

    fn budget(per_hour: u32, cooldown_secs: u64, blast: u32) -> Budget {
        Budget::new(BudgetConfig { actions_per_hour: per_hour, cooldown_secs, blast_radius: blast })
    }

    #[test]
    fn hourly_cap_slides() {
        let mut b = budget(2, 0, 10);
        b.start(0, "a", Action::Restart);
        b.start(10 * MIN, "b", Action::Restart);
        let err = b.check(59 * MIN, "c", Action::Restart).unwrap_err();
        assert_eq!(err, Denied::PerHour { limit: 2, used: 2 });
        assert_eq!(err.to_string(), "budget: 2 actions in the last hour (limit 2)");
        // The first start leaves the window exactly one hour later.
        assert!(b.check(HOUR_MS - 1, "c", Action::Restart).is_err());
        assert!(b.check(HOUR_MS, "c", Action::Restart).is_ok());
        assert_eq!(b.used_last_hour(HOUR_MS), 1);
    }

    #[test]
    fn cooldown_is_per_pipeline_and_action() {
        let mut b = budget(100, 300, 10);
        b.start(0, "a", Action::Restart);
        b.finish("a");
        let err = b.check(MIN, "a", Action::Restart).unwrap_err();
        assert_eq!(err, Denied::Cooldown { pipeline: "a".into(), action: Action::Restart, remaining_ms: 4 * MIN });
        assert_eq!(err.to_string(), "cooldown: restart on a ran recently; allowed again in 240 s");
        assert!(b.check(MIN, "a", Action::ScaleUp).is_ok());
        assert!(b.check(MIN, "b", Action::Restart).is_ok());
        assert!(b.check(5 * MIN - 1, "a", Action::Restart).is_err());
        assert!(b.check(5 * MIN, "a", Action::Restart).is_ok());
    }

    #[test]
    fn blast_radius_counts_pipelines_in_flight() {
        let mut b = budget(100, 0, 1);
        b.start(0, "a", Action::Restart);
        let err = b.check(1, "b", Action::ScaleUp).unwrap_err();
        assert_eq!(err, Denied::BlastRadius { limit: 1, in_flight: vec!["a".into()] });
        assert_eq!(err.to_string(), "blast radius: 1 pipeline(s) being acted on (limit 1): a");
        // Same pipeline: not wider.
        assert!(b.check(1, "a", Action::ScaleUp).is_ok());
        b.start(1, "a", Action::ScaleUp);
        b.finish("a");
        assert!(b.check(2, "b", Action::ScaleUp).is_err(), "one action on a still in flight");
        b.finish("a");
        assert!(b.check(2, "b", Action::ScaleUp).is_ok());
        assert_eq!(b.in_flight().count(), 0);
        b.finish("never-started"); // harmless
    }

    #[test]
    fn zero_limits_deny_everything() {
        assert!(matches!(budget(0, 0, 1).check(0, "a", Action::NoOp), Err(Denied::PerHour { .. })));
        assert!(matches!(budget(5, 0, 0).check(0, "a", Action::NoOp), Err(Denied::BlastRadius { .. })));
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c = crate::test_util::from_pairs::<BudgetConfig>(&[]).unwrap();
        assert_eq!(c, BudgetConfig { actions_per_hour: 20, cooldown_secs: 300, blast_radius: 1 });
        assert!(crate::test_util::from_pairs::<BudgetConfig>(&[("cooldown_ms", 1)]).is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Advance the clock, then try to start an action (start only if check allows).
        Try { dt_ms: u64, pipeline: usize, action: usize },
        /// Finish one in-flight action (the `pick`-th pipeline in flight), if any.
        Finish { pick: usize },
    }

    fn op() -> impl Strategy<Value = Op> {
        // Steps in whole minutes (or 1 ms short) land exactly on, or just before, the
        // boundaries of the hour and of minute-multiple cooldowns.
        let minutes = (1..=90u64, 0..2u64).prop_map(|(m, early)| m * MIN - early);
        let dt_ms = prop_oneof![Just(0u64), 0..5 * MIN, minutes, 0..2 * HOUR_MS];
        let attempt = (dt_ms, 0..5usize, 0..Action::COUNT).prop_map(|(dt_ms, pipeline, action)| Op::Try {
            dt_ms,
            pipeline,
            action,
        });
        prop_oneof![3 => attempt, 1 => (0..8usize).prop_map(|pick| Op::Finish { pick })]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Driven the way the sidecar drives it (start only after check says Ok), the
        /// budget never lets through more than its limits, and it refuses only when a
        /// limit is actually reached (checked against a plain model).
        #[test]
        fn limits_hold_under_random_streams(
            per_hour in 1u32..8,
            cooldown_secs in prop_oneof![0u64..1800, (0u64..=30).prop_map(|m| m * 60)],
            blast in 1u32..4,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut b = budget(per_hour, cooldown_secs, blast);
            let cooldown_ms = cooldown_secs * 1000;
            let mut now = 1_700_000_000_000u64;
            let mut starts: Vec<(u64, usize, Action)> = Vec::new();
            let mut in_flight: BTreeMap<usize, u32> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Try { dt_ms, pipeline, action } => {
                        now += dt_ms;
                        let action = Action::ALL[action];
                        let name = format!("p{pipeline}");
                        // The model's verdict, from the raw history.
                        let used = starts.iter().filter(|(t, _, _)| now - t < HOUR_MS).count() as u32;
                        let cooled = match starts.iter().rev().find(|(_, p, a)| *p == pipeline && *a == action) {
                            Some((t, _, _)) => now - t >= cooldown_ms,
                            None => true,
                        };
                        let widens = !in_flight.contains_key(&pipeline) && in_flight.len() >= blast as usize;
                        let model_ok = used < per_hour && cooled && !widens;
                        let verdict = b.check(now, &name, action);
                        prop_assert_eq!(verdict.is_ok(), model_ok, "at {} {} {}: {:?}", now, name, action, verdict);
                        if verdict.is_ok() {
                            b.start(now, &name, action);
                            starts.push((now, pipeline, action));
                            *in_flight.entry(pipeline).or_insert(0) += 1;
                            prop_assert!(in_flight.len() <= blast as usize);
                        }
                    }
                    Op::Finish { pick } => {
                        if let Some(&p) = in_flight.keys().nth(pick % in_flight.len().max(1)) {
                            b.finish(&format!("p{p}"));
                            let n = in_flight.get_mut(&p).unwrap();
                            *n -= 1;
                            if *n == 0 {
                                in_flight.remove(&p);
                            }
                        }
                    }
                }
                let budget_view: Vec<&str> = b.in_flight().collect();
                let model_view: Vec<String> = in_flight.keys().map(|p| format!("p{p}")).collect();
                prop_assert_eq!(budget_view, model_view);
            }
            // Every window of one hour: the busiest one starts at some start, so check each.
            for (i, (t0, _, _)) in starts.iter().enumerate() {
                let in_window = starts[i..].iter().take_while(|(t, _, _)| *t < t0 + HOUR_MS).count();
                prop_assert!(in_window <= per_hour as usize, "{} starts in the hour from {}", in_window, t0);
            }
            // Same (pipeline, action) never twice within the cooldown.
            for (i, (t1, p1, a1)) in starts.iter().enumerate() {
                if let Some((t2, _, _)) = starts[i + 1..].iter().find(|(_, p, a)| p == p1 && a == a1) {
                    prop_assert!(t2 - t1 >= cooldown_ms, "{:?} on p{} at {} and {}", a1, p1, t1, t2);
                }
            }
        }
    }
}
