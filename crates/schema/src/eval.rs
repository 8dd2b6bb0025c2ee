//! The evaluation: `selfheal evaluate --format json`, written by the harness
//! (`selfheal_harness::aggregate`) and read back by `report`.
//!
//! Shape (one JSON object): `scenario`, `seeds` (count), `policies` (one
//! [`PolicyReport`] per policy, in report order). Rewards are per step and
//! unitless, MTTR is in steps (one CloudWatch period), cost in USD per
//! episode, intervals are 95 % bootstrap intervals over seeds. The fields
//! marked "absent in older evaluations" were added after the format first
//! shipped: they are `Some` whenever the harness writes them and `None` when
//! an older file lacks them.

use crate::float::{nan, nan2, nan2_opt, nan_opt};
use selfheal_core::FaultKind;
use serde::{Deserialize, Serialize};

/// The whole comparison: every policy on the same seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Scenario name.
    pub scenario: String,
    /// Number of seeds.
    pub seeds: u64,
    /// One line per policy.
    pub policies: Vec<PolicyReport>,
}

/// One policy's line in the comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    /// Policy name (`noop`, `random`, `rules`, `glue-builtins`, `learned`, `oracle`).
    pub name: String,
    /// Mean return over seeds.
    #[serde(deserialize_with = "nan")]
    pub mean_return: f64,
    /// 95 % interval of the mean return.
    #[serde(deserialize_with = "nan2")]
    pub return_ci95: [f64; 2],
    /// Share of the oracle's improvement over no-op, percent (NaN without both).
    #[serde(deserialize_with = "nan")]
    pub pct_of_oracle: f64,
    /// Mean steps to heal.
    #[serde(deserialize_with = "nan")]
    pub mttr_steps: f64,
    /// 95 % interval of the MTTR.
    #[serde(deserialize_with = "nan2")]
    pub mttr_ci95: [f64; 2],
    /// Incidents still open at the end of their episode.
    pub unresolved: u64,
    /// Share of steps meeting the SLO, 0..=1.
    #[serde(deserialize_with = "nan")]
    pub slo_attainment: f64,
    /// 95 % interval of the SLO attainment (absent in older evaluations).
    #[serde(default, deserialize_with = "nan2_opt", skip_serializing_if = "Option::is_none")]
    pub slo_ci95: Option<[f64; 2]>,
    /// Share of incidents healed without escalation, 0..=1.
    #[serde(deserialize_with = "nan")]
    pub auto_resolved: f64,
    /// `Escalate` actions.
    pub escalations: u64,
    /// Records lost.
    pub records_lost: u64,
    /// 95 % interval of the records lost, the total over the seeds (absent in
    /// older evaluations).
    #[serde(default, deserialize_with = "nan2_opt", skip_serializing_if = "Option::is_none")]
    pub records_lost_ci95: Option<[f64; 2]>,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Mean worker cost per episode, USD.
    #[serde(deserialize_with = "nan")]
    pub cost: f64,
    /// 95 % interval of the mean cost (absent in older evaluations).
    #[serde(default, deserialize_with = "nan2_opt", skip_serializing_if = "Option::is_none")]
    pub cost_ci95: Option<[f64; 2]>,
    /// Remedial actions in healthy windows.
    pub false_actions: u64,
    /// Episodes that lost any record (absent in older evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub episodes_with_loss: Option<u64>,
    /// The worst episode's return (absent in older evaluations).
    #[serde(default, deserialize_with = "nan_opt", skip_serializing_if = "Option::is_none")]
    pub worst_return: Option<f64>,
    /// 95th percentile of incident duration, steps (nearest rank, over every
    /// incident of every episode, unresolved ones with their time to the end;
    /// absent in older evaluations).
    #[serde(default, deserialize_with = "nan_opt", skip_serializing_if = "Option::is_none")]
    pub incident_p95_steps: Option<f64>,
    /// Longest unhealthy streak with neither action nor escalation, steps,
    /// over all episodes (absent in older evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub longest_idle_streak: Option<u64>,
    /// Decisions forced by the policy's watchdog (absent in older evaluations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_firings: Option<u64>,
    /// Incidents and MTTR per fault kind that opened them (empty in older evaluations).
    #[serde(default)]
    pub by_fault: Vec<FaultLine>,
}

/// MTTR of the incidents one fault kind opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultLine {
    /// Fault kind.
    pub fault: FaultKind,
    /// Incidents it opened.
    pub incidents: u64,
    /// Their mean steps to heal.
    #[serde(deserialize_with = "nan")]
    pub mttr_steps: f64,
    /// Of them, still open at the end.
    pub unresolved: u64,
}

impl Comparison {
    /// Assemble the comparison and fill in `pct_of_oracle` =
    /// 100 × (R − R_noop) / (R_oracle − R_noop) from the lines named `noop`
    /// and `oracle` (left as given when either is missing).
    pub fn new(scenario: &str, seeds: u64, mut policies: Vec<PolicyReport>) -> Comparison {
        let find = |n: &str, p: &[PolicyReport]| p.iter().find(|x| x.name == n).map(|x| x.mean_return);
        if let (Some(r0), Some(r1)) = (find("noop", &policies), find("oracle", &policies)) {
            for p in &mut policies {
                p.pct_of_oracle = 100.0 * (p.mean_return - r0) / (r1 - r0);
            }
        }
        Comparison { scenario: scenario.to_string(), seeds, policies }
    }

    /// The line of a policy.
    pub fn policy(&self, name: &str) -> Option<&PolicyReport> {
        self.policies.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An evaluation written before the tails, the intervals beyond return
    /// and MTTR, and the per-fault lines existed, with a NaN written as null.
    const OLD: &str = r#"{"scenario":"s","seeds":2,"policies":[{"name":"noop","mean_return":-3.5,
        "return_ci95":[-4.0,null],"pct_of_oracle":0.0,"mttr_steps":null,"mttr_ci95":[1.0,2.0],"unresolved":1,
        "slo_attainment":0.5,"auto_resolved":1.0,"escalations":0,"records_lost":10,"dead_lettered":0,
        "cost":0.25,"false_actions":0}]}"#;

    #[test]
    fn an_older_evaluation_reads_with_its_missing_fields_as_none_and_nulls_as_nan() {
        let c: Comparison = serde_json::from_str(OLD).unwrap();
        let p = c.policy("noop").unwrap();
        assert!(p.mttr_steps.is_nan() && p.return_ci95[1].is_nan());
        assert_eq!(p.return_ci95[0], -4.0);
        assert_eq!((p.slo_ci95, p.episodes_with_loss, p.worst_return, p.longest_idle_streak), (None, None, None, None));
        assert!(p.by_fault.is_empty());
        // Written back, the absent fields stay absent (not null, which would read as NaN).
        let again = serde_json::to_string(&c).unwrap();
        assert!(!again.contains("slo_ci95") && !again.contains("worst_return"), "{again}");
        let back: Comparison = serde_json::from_str(&again).unwrap();
        assert_eq!(back.policies[0].worst_return, None);
    }

    #[test]
    fn a_current_evaluation_round_trips_and_pct_of_oracle_is_filled_in() {
        let mut old: Comparison = serde_json::from_str(OLD).unwrap();
        let mut line = old.policies.remove(0);
        line.mttr_steps = 2.0;
        line.slo_ci95 = Some([0.4, 0.6]);
        line.worst_return = Some(f64::NAN);
        line.by_fault = vec![FaultLine { fault: FaultKind::ALL[0], incidents: 2, mttr_steps: 3.0, unresolved: 0 }];
        let oracle = PolicyReport { name: "oracle".into(), mean_return: -1.5, ..line.clone() };
        let learned = PolicyReport { name: "learned".into(), mean_return: -2.0, ..line.clone() };
        let c = Comparison::new("s", 2, vec![line, learned, oracle]);
        assert_eq!(c.policy("learned").unwrap().pct_of_oracle, 75.0);
        let text = serde_json::to_string(&c).unwrap();
        assert!(text.contains("\"worst_return\":null"), "a NaN is written as null: {text}");
        let back: Comparison = serde_json::from_str(&text).unwrap();
        assert!(back.policies[0].worst_return.is_some_and(f64::is_nan));
        assert_eq!(back.policies[1].by_fault, c.policies[1].by_fault);
        assert_eq!(back.policies[2].slo_ci95, Some([0.4, 0.6]));
    }
}
