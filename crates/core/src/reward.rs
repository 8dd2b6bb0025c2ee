//! The reward: one function, used by training in the simulator and by the sidecar
//! online, computed from telemetry alone (the sidecar never sees the true fault).
//!
//! Its version is written into every model file, so a Q table is never silently
//! reused under a different notion of "good".

use crate::{Action, Metric, Telemetry};
use serde::{Deserialize, Serialize};

/// Turns an action and the window that followed it into a number.
pub trait RewardFn {
    /// Version tag stored in model files.
    fn version(&self) -> &'static str;
    /// Reward for having taken `action` and then observed `next`.
    fn reward(&self, action: Action, next: &Telemetry) -> f64;
    /// The metrics a window must have for [`RewardFn::reward`] to mean
    /// anything; a window without one of them teaches nothing.
    fn inputs(&self) -> &'static [Metric] {
        &[]
    }
    /// Whether `next` has every one of [`RewardFn::inputs`].
    fn computable(&self, next: &Telemetry) -> bool {
        next.all_present(self.inputs())
    }
}

/// The service-level objective a window is judged against.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Highest acceptable p95 end-to-end latency, seconds.
    pub latency_p95_s: f64,
    /// Highest acceptable error ratio, 0..1.
    pub error_ratio: f64,
}

impl Default for Slo {
    fn default() -> Self {
        // The simulator's latency moves in 30 s steps; 135 s sits between two of
        // them, so its ±4 % measurement noise never flips the verdict.
        Slo { latency_p95_s: 135.0, error_ratio: 0.05 }
    }
}

impl Slo {
    /// Whether the window meets the objective.
    pub fn met(&self, t: &Telemetry) -> bool {
        t.get(Metric::LatencyP95) <= self.latency_p95_s && t.error_ratio() <= self.error_ratio
    }
}

/// Reward v1: minus one per step out of SLO, minus the records dead-lettered and
/// lost and a little per record waiting (per unit of records), minus worker cost
/// and a price per action.
///
/// Escalation is priced high because it wakes a person; dead-lettered records
/// are priced above an SLO miss because someone must replay them; lost records
/// are the worst outcome of all.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardV1 {
    /// The objective.
    pub slo: Slo,
    /// Records per unit for the record penalties.
    pub unit_records: f64,
    /// Penalty per unit dead-lettered.
    pub dead_letter_penalty: f64,
    /// Penalty per unit lost.
    pub lost_penalty: f64,
    /// Cost per executor per step.
    pub worker_cost: f64,
    /// Penalty per unit of backlog per step (freshness): keeps a policy from
    /// saving on workers by letting work pile up within the SLO.
    pub backlog_penalty: f64,
}

impl Default for RewardV1 {
    fn default() -> Self {
        RewardV1 {
            slo: Slo::default(),
            unit_records: 500.0,
            dead_letter_penalty: 2.0,
            lost_penalty: 10.0,
            worker_cost: 0.01,
            backlog_penalty: 0.02,
        }
    }
}

impl RewardV1 {
    /// Price of taking an action (operator time, API calls, risk).
    pub fn action_cost(action: Action) -> f64 {
        match action {
            Action::NoOp => 0.0,
            Action::RetryWithBackoff | Action::ScaleUp | Action::ScaleDown | Action::Backpressure => 0.05,
            Action::SchemaRemap | Action::Reschedule | Action::Quarantine => 0.1,
            Action::Restart => 0.2,
            Action::Escalate => 3.0,
        }
    }
}

impl RewardFn for RewardV1 {
    fn version(&self) -> &'static str {
        "reward-v1"
    }

    /// The SLO's inputs: without the latency and the delivered records the
    /// reward cannot tell a healthy window from a failing one (on a job that
    /// publishes only Glue's metrics it read −0.04 in every window).
    fn inputs(&self) -> &'static [Metric] {
        &[Metric::LatencyP95, Metric::RecordsDelivered]
    }

    fn reward(&self, action: Action, next: &Telemetry) -> f64 {
        let slo = if self.slo.met(next) { 0.0 } else { 1.0 };
        let dlq = next.get(Metric::RecordsDeadLettered) / self.unit_records;
        let lost = next.get(Metric::RecordsLost) / self.unit_records;
        let backlog = next.get(Metric::Backlog) / self.unit_records;
        -slo - self.backlog_penalty * backlog
            - self.dead_letter_penalty * dlq
            - self.lost_penalty * lost
            - self.worker_cost * next.get(Metric::Executors)
            - RewardV1::action_cost(action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Telemetry {
        let mut t = Telemetry::default();
        t.set(Metric::LatencyP95, 90.0);
        t.set(Metric::RecordsDelivered, 1000.0);
        t.set(Metric::Executors, 10.0);
        t
    }

    #[test]
    fn healthy_window_costs_only_workers() {
        let r = RewardV1::default().reward(Action::NoOp, &healthy());
        assert!((r + 0.1).abs() < 1e-12);
    }

    #[test]
    fn slo_miss_dead_letters_and_escalation_are_penalised() {
        let rf = RewardV1::default();
        let mut t = healthy();
        t.set(Metric::LatencyP95, 400.0);
        assert!((rf.reward(Action::NoOp, &t) + 1.1).abs() < 1e-12);
        let mut t = healthy();
        t.set(Metric::RecordsDeadLettered, 500.0);
        assert!((rf.reward(Action::NoOp, &t) + 2.1).abs() < 1e-12);
        assert!((rf.reward(Action::Escalate, &healthy()) + 3.1).abs() < 1e-12);
    }
}
