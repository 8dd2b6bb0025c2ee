//! The evaluation: `selfheal evaluate --format json`, read back, plus the action
//! mix per fault kind that the binary computes by running the same episodes.

use crate::ReportError;
use serde::{Deserialize, Deserializer, Serialize};

/// `null` (how serde_json writes NaN) reads as NaN.
fn nan<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A field present in the file (null for not-a-number); absent is `None`.
fn nan_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    Ok(Some(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN)))
}

fn nan2<'de, D: Deserializer<'de>>(d: D) -> Result<[f64; 2], D::Error> {
    let v = <[Option<f64>; 2]>::deserialize(d)?;
    Ok([v[0].unwrap_or(f64::NAN), v[1].unwrap_or(f64::NAN)])
}

/// MTTR of the incidents one fault kind opened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaultLine {
    /// Fault kind name.
    pub fault: String,
    /// Incidents it opened.
    pub incidents: u64,
    /// Their mean steps to heal.
    #[serde(deserialize_with = "nan")]
    pub mttr_steps: f64,
    /// Of them, still open at the end.
    pub unresolved: u64,
}

/// One policy's line (the JSON shape of `evaluate`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalLine {
    /// Policy name.
    pub name: String,
    /// Mean return over seeds.
    #[serde(deserialize_with = "nan")]
    pub mean_return: f64,
    /// 95 % interval of the mean return.
    #[serde(deserialize_with = "nan2")]
    pub return_ci95: [f64; 2],
    /// Share of the oracle's improvement over no-op, percent.
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
    /// Share of steps meeting the SLO.
    #[serde(deserialize_with = "nan")]
    pub slo_attainment: f64,
    /// Share of incidents healed without escalation.
    #[serde(deserialize_with = "nan")]
    pub auto_resolved: f64,
    /// `Escalate` actions.
    pub escalations: u64,
    /// Records lost.
    pub records_lost: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Mean worker cost per episode, USD.
    #[serde(deserialize_with = "nan")]
    pub cost: f64,
    /// Remedial actions in healthy windows.
    pub false_actions: u64,
    /// Episodes in which any record was lost (absent in older evaluations).
    #[serde(default)]
    pub episodes_with_loss: Option<u64>,
    /// The worst episode's return.
    #[serde(default, deserialize_with = "nan_opt")]
    pub worst_return: Option<f64>,
    /// 95th percentile of incident duration, steps.
    #[serde(default, deserialize_with = "nan_opt")]
    pub incident_p95_steps: Option<f64>,
    /// Longest unhealthy streak with no action, no page and no backpressure.
    #[serde(default)]
    pub longest_idle_streak: Option<u64>,
    /// Watchdog firings (pages and fallbacks).
    #[serde(default)]
    pub watchdog_firings: Option<u64>,
    /// Per fault kind.
    #[serde(default)]
    pub by_fault: Vec<FaultLine>,
}

/// The whole comparison.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Scenario name.
    pub scenario: String,
    /// Number of seeds.
    pub seeds: u64,
    /// One line per policy.
    pub policies: Vec<EvalLine>,
}

impl Evaluation {
    /// Parse `evaluate --format json` output.
    pub fn from_json(text: &str, origin: &str) -> Result<Evaluation, ReportError> {
        serde_json::from_str(text).map_err(|e| ReportError::Format {
            path: origin.to_string(),
            message: format!("not `selfheal evaluate --format json` output: {e}"),
        })
    }

    /// The line of a policy.
    pub fn policy(&self, name: &str) -> Option<&EvalLine> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// How often each policy took each action, by the fault active when it decided.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ActionMix {
    /// Seeds the episodes ran on, `A..B`.
    pub seeds: String,
    /// One block per policy.
    pub policies: Vec<PolicyMix>,
}

/// One policy's action mix.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PolicyMix {
    /// Policy name.
    pub name: String,
    /// Rows: `healthy` (no fault active) and one per fault kind seen.
    pub rows: Vec<MixRow>,
}

/// Action counts while one fault kind was active.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MixRow {
    /// Fault kind name, or `healthy`.
    pub fault: String,
    /// Decisions counted.
    pub decisions: u64,
    /// Counts per action, in `Action::ALL` order.
    pub counts: Vec<u64>,
}
