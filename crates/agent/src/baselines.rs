//! Baseline policies: no-op, random, and the calibrated rule-based policy that
//! static runbooks encode ("if error rate > x retry; if CPU > y scale up; if
//! schema errors > 0 remap").
//!
//! The rules fire in a fixed priority order, the way such runbooks are written;
//! their thresholds are calibrated by grid search on training seeds (`selfheal
//! calibrate`), so the comparison with the learned policy is against the best
//! this family of rules can do on the same simulator, not a straw man.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::{Action, Metric, Observation, Policy, Slo, Telemetry};
use serde::{Deserialize, Serialize};

/// Never acts.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOpPolicy;

impl Policy for NoOpPolicy {
    fn name(&self) -> &str {
        "noop"
    }

    fn act(&mut self, _obs: &Observation<'_>) -> Action {
        Action::NoOp
    }
}

/// Picks uniformly among the allowed actions.
#[derive(Clone, Debug)]
pub struct RandomPolicy {
    rng: Xoshiro256PlusPlus,
}

impl RandomPolicy {
    /// A random policy; [`Policy::reset`] reseeds it per episode.
    pub fn new(seed: u64) -> RandomPolicy {
        RandomPolicy { rng: Xoshiro256PlusPlus::seed_from_u64(seed) }
    }
}

impl Policy for RandomPolicy {
    fn name(&self) -> &str {
        "random"
    }

    fn reset(&mut self, seed: u64) {
        self.rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x005E_ED0F_7A4D_0A11);
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        let k = self.rng.gen_range(0..obs.mask.count());
        obs.mask.iter().nth(k).unwrap_or(Action::NoOp)
    }
}

/// Thresholds of the rule-based policy; `None` (JSON `null`) switches a rule off.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleThresholds {
    /// Retry when the error ratio exceeds this.
    pub retry_error_ratio: Option<f64>,
    /// Scale up when CPU load exceeds this.
    pub scale_up_cpu: Option<f64>,
    /// Scale up when heap usage exceeds this.
    pub scale_up_heap: Option<f64>,
    /// Restart when nothing was read and the run has been going this long (ms).
    pub restart_stalled_ms: Option<f64>,
    /// Apply backpressure when the backlog exceeds this many steps of arrivals.
    pub backpressure_backlog_steps: Option<f64>,
    /// Escalate after this many consecutive unhealthy steps.
    pub escalate_after_steps: Option<u32>,
    /// Workers at the normal level; above it, scale down once healthy.
    pub base_workers: f64,
}

fn above(x: f64, threshold: Option<f64>) -> bool {
    threshold.is_some_and(|t| x > t)
}

impl Default for RuleThresholds {
    fn default() -> Self {
        RuleThresholds {
            retry_error_ratio: Some(0.05),
            scale_up_cpu: Some(0.9),
            scale_up_heap: Some(0.9),
            restart_stalled_ms: Some(180_000.0),
            backpressure_backlog_steps: Some(4.0),
            escalate_after_steps: Some(5),
            base_workers: 10.0,
        }
    }
}

/// The static runbook, in priority order:
/// 1. schema-mismatch errors → `SchemaRemap`;
/// 2. error ratio above threshold → `RetryWithBackoff`;
/// 3. CPU or heap above threshold → `ScaleUp`;
/// 4. nothing read for too long → `Restart`;
/// 5. backlog above threshold → `Backpressure`;
/// 6. unhealthy for too long → `Escalate` (and again every 4× as long while it
///    lasts);
/// 7. healthy with extra workers → `ScaleDown`;
/// 8. otherwise `NoOp`.
#[derive(Clone, Debug)]
pub struct RulesPolicy {
    th: RuleThresholds,
    slo: Slo,
    unhealthy_steps: u32,
    escalated: bool,
}

impl RulesPolicy {
    /// A rule policy with these thresholds.
    pub fn new(th: RuleThresholds, slo: Slo) -> RulesPolicy {
        RulesPolicy { th, slo, unhealthy_steps: 0, escalated: false }
    }

    /// Its thresholds.
    pub fn thresholds(&self) -> &RuleThresholds {
        &self.th
    }

    fn decide(&mut self, t: &Telemetry, obs: &Observation<'_>) -> Action {
        let th = &self.th;
        let arrived = t.get(Metric::RecordsIn).max(1.0);
        let backlog_steps = t.get(Metric::Backlog) / arrived;
        let stalled = t.get(Metric::RecordsRead) == 0.0
            && th.restart_stalled_ms.is_some_and(|ms| t.get(Metric::ElapsedTime) >= ms);
        let unhealthy = !self.slo.met(t) || t.errors() > 0.02 * arrived || stalled;
        if unhealthy {
            self.unhealthy_steps += 1;
        } else {
            self.unhealthy_steps = 0;
            self.escalated = false;
        }
        let allowed = |a: Action| obs.mask.allows(a);
        if t.get(Metric::ErrorsSchema) > 0.0 {
            return Action::SchemaRemap;
        }
        if above(t.error_ratio(), th.retry_error_ratio) {
            return Action::RetryWithBackoff;
        }
        if (above(t.get(Metric::CpuLoad), th.scale_up_cpu) || above(t.get(Metric::HeapUsage), th.scale_up_heap))
            && allowed(Action::ScaleUp)
        {
            return Action::ScaleUp;
        }
        if stalled {
            return Action::Restart;
        }
        if above(backlog_steps, th.backpressure_backlog_steps) && allowed(Action::Backpressure) {
            return Action::Backpressure;
        }
        // Page after n unhealthy steps, and page again every 4n steps while the
        // incident lasts (a second fault can arrive behind the first).
        if let Some(n) = th.escalate_after_steps {
            let repage = !self.escalated || self.unhealthy_steps >= 4 * n;
            if self.unhealthy_steps >= n && repage {
                self.escalated = true;
                self.unhealthy_steps = 0;
                return Action::Escalate;
            }
        }
        if !unhealthy && t.get(Metric::Executors) > th.base_workers && backlog_steps < 1.0 && allowed(Action::ScaleDown)
        {
            return Action::ScaleDown;
        }
        Action::NoOp
    }
}

impl Policy for RulesPolicy {
    fn name(&self) -> &str {
        "rules"
    }

    fn reset(&mut self, _seed: u64) {
        self.unhealthy_steps = 0;
        self.escalated = false;
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        self.decide(obs.telemetry, obs)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use selfheal_core::ActionMask;

    /// A healthy window at 10 workers: everything read and delivered (shared
    /// with the Glue built-ins' tests).
    pub(crate) fn window() -> Telemetry {
        let mut t = Telemetry::default();
        t.set(Metric::RecordsIn, 1000.0);
        t.set(Metric::RecordsRead, 1000.0);
        t.set(Metric::RecordsDelivered, 1000.0);
        t.set(Metric::LatencyP95, 60.0);
        t.set(Metric::Executors, 10.0);
        t.set(Metric::CpuLoad, 0.5);
        t.set(Metric::HeapUsage, 0.5);
        t.set(Metric::ElapsedTime, 45_000.0);
        t
    }

    fn act(p: &mut RulesPolicy, t: &Telemetry) -> Action {
        p.act(&Observation { telemetry: t, state: 0, mask: ActionMask::ALL, anomalous: false })
    }

    #[test]
    fn rules_fire_in_priority_order() {
        let mut p = RulesPolicy::new(RuleThresholds::default(), Slo::default());
        assert_eq!(act(&mut p, &window()), Action::NoOp);
        let mut t = window();
        t.set(Metric::CpuLoad, 0.97);
        assert_eq!(act(&mut p, &t), Action::ScaleUp);
        t.set(Metric::Errors5xx, 900.0);
        t.set(Metric::RecordsDelivered, 0.0);
        assert_eq!(act(&mut p, &t), Action::RetryWithBackoff);
        t.set(Metric::ErrorsSchema, 10.0);
        assert_eq!(act(&mut p, &t), Action::SchemaRemap);
    }

    #[test]
    fn stalled_run_is_restarted_and_long_incidents_escalate_once() {
        let th = RuleThresholds { escalate_after_steps: Some(2), ..RuleThresholds::default() };
        let mut p = RulesPolicy::new(th, Slo::default());
        let mut t = window();
        t.set(Metric::RecordsRead, 0.0);
        t.set(Metric::RecordsDelivered, 0.0);
        t.set(Metric::ElapsedTime, 600_000.0);
        assert_eq!(act(&mut p, &t), Action::Restart);
        // An unhealthy window no rule covers: escalate after two steps, once.
        let mut t = window();
        t.set(Metric::LatencyP95, 900.0);
        assert_eq!(act(&mut p, &t), Action::Escalate);
        assert_eq!(act(&mut p, &t), Action::NoOp);
    }

    #[test]
    fn scales_back_down_when_healthy() {
        let mut p = RulesPolicy::new(RuleThresholds::default(), Slo::default());
        let mut t = window();
        t.set(Metric::Executors, 20.0);
        assert_eq!(act(&mut p, &t), Action::ScaleDown);
    }
}
