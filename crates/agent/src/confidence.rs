//! The confidence gate: act alone only where the Q table has earned it.
//!
//! A tabular agent is only as good as its experience of a state. A state seen a
//! handful of times, or one where the chosen action barely beats the next best,
//! is where a learned policy is most likely wrong; there the sidecar proposes to a
//! human instead of acting. `Escalate` is always safe to take. `NoOp` is not
//! when the window is unhealthy: inaction while a pipeline burns is a decision
//! too, so the policy stack ([`crate::supervise`]) puts an unhealthy window's
//! `NoOp` through the same gate and lets the rule policy decide where the table
//! has not earned its silence. It lives in the agent crate because both the
//! evaluation harness and the sidecar's guardrails use it.

use selfheal_core::{Action, ActionMask};
use serde::{Deserialize, Serialize};

/// Thresholds a state's Q row must meet before the sidecar acts without a human.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidenceGate {
    /// Least total visits of the state (all actions together). Default 30.
    pub min_visits: u64,
    /// Least margin of the chosen action's Q value over the best other allowed
    /// action, in reward units. Default 0.5.
    pub min_lead: f64,
}

impl Default for ConfidenceGate {
    fn default() -> Self {
        ConfidenceGate { min_visits: 30, min_lead: 0.5 }
    }
}

/// What the gate says about one decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Confidence {
    /// Enough experience and a clear winner: the sidecar may act alone.
    Confident {
        /// Total visits of the state.
        visits: u64,
        /// Q of the chosen action minus the best other allowed Q (infinite if it is the only one).
        lead: f64,
    },
    /// Not sure enough: propose to a human instead.
    Unsure {
        /// Total visits of the state.
        visits: u64,
        /// Q of the chosen action minus the best other allowed Q (infinite if it is the only one).
        lead: f64,
        /// Why, for the log and the proposal.
        reason: String,
    },
}

impl Confidence {
    /// Whether the sidecar may act alone.
    pub fn is_confident(&self) -> bool {
        matches!(self, Confidence::Confident { .. })
    }
}

impl ConfidenceGate {
    /// Judge choosing `chosen` in a state whose Q row is `q` and visit counts `visits`
    /// (both [`Action::COUNT`] long, in column order), with `mask` the allowed actions.
    pub fn check(&self, q: &[f64], visits: &[u32], mask: ActionMask, chosen: Action) -> Confidence {
        assert!(q.len() == Action::COUNT && visits.len() == Action::COUNT, "a Q row has one value per action");
        let total: u64 = visits.iter().map(|v| u64::from(*v)).sum();
        let runner_up = mask.iter().filter(|a| *a != chosen).max_by(|a, b| q[a.index()].total_cmp(&q[b.index()]));
        let lead = runner_up.map_or(f64::INFINITY, |r| q[chosen.index()] - q[r.index()]);

        let mut reasons = Vec::new();
        if !mask.allows(chosen) {
            reasons.push(format!("{chosen} is not allowed in this state"));
        }
        if total < self.min_visits {
            reasons.push(format!("state visited {total} times (need {})", self.min_visits));
        }
        if lead.is_nan() || lead < self.min_lead {
            let r = runner_up.map_or("none", |r| r.name());
            reasons.push(format!("lead {lead:.3} of {chosen} over {r} is below {}", self.min_lead));
        }
        if reasons.is_empty() {
            Confidence::Confident { visits: total, lead }
        } else {
            Confidence::Unsure { visits: total, lead, reason: reasons.join("; ") }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(best: Action, best_q: f64, others: f64) -> [f64; Action::COUNT] {
        let mut q = [others; Action::COUNT];
        q[best.index()] = best_q;
        q
    }

    #[test]
    fn confident_with_visits_and_lead() {
        let g = ConfidenceGate::default();
        let q = row(Action::Restart, 1.0, -1.0);
        let v = g.check(&q, &[5; Action::COUNT], ActionMask::ALL, Action::Restart);
        assert_eq!(v, Confidence::Confident { visits: 50, lead: 2.0 });
        assert!(v.is_confident());
    }

    #[test]
    fn too_few_visits_is_unsure() {
        let g = ConfidenceGate::default();
        let q = row(Action::Restart, 1.0, -1.0);
        match g.check(&q, &[2; Action::COUNT], ActionMask::ALL, Action::Restart) {
            Confidence::Unsure { visits, lead, reason } => {
                assert_eq!(visits, 20);
                assert_eq!(lead, 2.0);
                assert!(reason.contains("visited 20 times (need 30)"), "{reason}");
            }
            v => panic!("expected unsure, got {v:?}"),
        }
    }

    #[test]
    fn small_lead_is_unsure_and_names_the_runner_up() {
        let g = ConfidenceGate::default();
        let mut q = row(Action::Restart, 1.0, -5.0);
        q[Action::ScaleUp.index()] = 0.8;
        let v = g.check(&q, &[10; Action::COUNT], ActionMask::ALL, Action::Restart);
        let Confidence::Unsure { lead, reason, .. } = v else { panic!("expected unsure") };
        assert!((lead - 0.2).abs() < 1e-12);
        assert!(reason.contains("over scale_up"), "{reason}");
    }

    #[test]
    fn lead_ignores_masked_actions() {
        let g = ConfidenceGate::default();
        let mut q = row(Action::Restart, 1.0, -5.0);
        q[Action::ScaleUp.index()] = 3.0; // better, but not allowed here
        let mask = ActionMask::ALL.without(Action::ScaleUp);
        assert_eq!(
            g.check(&q, &[10; Action::COUNT], mask, Action::Restart),
            Confidence::Confident { visits: 100, lead: 6.0 }
        );
    }

    #[test]
    fn only_allowed_action_has_infinite_lead() {
        let g = ConfidenceGate::default();
        let mask = Action::ALL.into_iter().filter(|a| *a != Action::NoOp).fold(ActionMask::ALL, |m, a| m.without(a));
        let v = g.check(&[0.0; Action::COUNT], &[3; Action::COUNT], mask, Action::NoOp);
        assert_eq!(v, Confidence::Confident { visits: 30, lead: f64::INFINITY });
    }

    #[test]
    fn disallowed_or_nan_is_unsure() {
        let g = ConfidenceGate::default();
        let q = row(Action::Restart, 1.0, -1.0);
        let mask = ActionMask::ALL.without(Action::Restart);
        assert!(!g.check(&q, &[10; Action::COUNT], mask, Action::Restart).is_confident());
        let mut q = row(Action::Restart, 1.0, -1.0);
        q[Action::Restart.index()] = f64::NAN;
        assert!(!g.check(&q, &[10; Action::COUNT], ActionMask::ALL, Action::Restart).is_confident());
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        assert_eq!(serde_json::from_str::<ConfidenceGate>("{}").unwrap(), ConfidenceGate::default());
        let g: ConfidenceGate = serde_json::from_str(r#"{"min_visits": 5}"#).unwrap();
        assert_eq!(g, ConfidenceGate { min_visits: 5, min_lead: 0.5 });
        assert!(serde_json::from_str::<ConfidenceGate>(r#"{"min_visit": 5}"#).is_err());
    }
}
