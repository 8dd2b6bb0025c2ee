//! The policy in words: every state a person should read, with the action the
//! shipped greedy policy takes there, the Q of every action, the visits and a
//! confidence, flagged where training never (or rarely) saw the state and where
//! the rule policy would do something else.

use crate::ReportError;
use selfheal_agent::detector_encoder::DetectorState;
use selfheal_agent::encoder::action_mask;
use selfheal_agent::{deciding_state, DetectorEncoder, EncoderKind, GreedyPolicy, ModelFile, QTable, UnknownEncoder};
use selfheal_core::{Action, ActionMask, Detection, Detector, StateEncoder, StateId, Telemetry};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A detector that only knows how many signatures it has: enough to number,
/// unpack and describe `detector-v1` states without the forest.
struct Shape(u16);

impl Detector for Shape {
    fn id(&self) -> &str {
        "shape-only"
    }
    fn signatures(&self) -> u16 {
        self.0
    }
    fn detect(&self, _t: &Telemetry) -> Detection {
        Detection::default()
    }
}

/// How often a state was met outside training, and what the rules chose there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seen {
    /// Decisions made in the state (simulated evaluation episodes or the log).
    pub decisions: u64,
    /// The rule policy's choices there, by action index.
    pub rules: [u64; Action::COUNT],
}

/// Seen counts by state.
pub type SeenMap = BTreeMap<StateId, Seen>;

/// Add one observation of `state` where the rules chose `rules`.
pub fn note(seen: &mut SeenMap, state: StateId, rules: Option<Action>) {
    let e = seen.entry(state).or_default();
    e.decisions += 1;
    if let Some(a) = rules {
        e.rules[a.index()] += 1;
    }
}

/// Visits from which a state's own row decides (below it, a fallback state decides).
pub const MIN_VISITS: u64 = GreedyPolicy::MIN_VISITS;
/// Visits from which, with a clear Q lead, the confidence is high.
pub const HIGH_VISITS: u64 = 1000;
/// Q lead (best minus runner-up) from which the choice counts as clear.
pub const CLEAR_LEAD: f64 = 0.1;

/// One state of the policy, as a person reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StateLine {
    /// State id.
    pub id: StateId,
    /// The state in words.
    pub desc: String,
    /// Failure signature (0 = normal), for `detector-v1` policies.
    pub signature: Option<u32>,
    /// Whether an action was already taken in the incident, for `detector-v1`.
    pub attempted: Option<bool>,
    /// The action the greedy policy takes.
    pub chosen: String,
    /// The state whose row decides (itself unless it has too few visits).
    pub decided_by: StateId,
    /// Q of every action in [`Action::ALL`] order, of the deciding row; `None` where not allowed.
    pub q: Vec<Option<f64>>,
    /// Training visits per action of the state itself.
    pub visits: Vec<u32>,
    /// Training visits of the state itself.
    pub state_visits: u64,
    /// Training visits of the deciding state.
    pub deciding_visits: u64,
    /// Q of the chosen action minus the best other allowed action.
    pub q_lead: Option<f64>,
    /// `high`, `medium`, `low` or `none` (see [`confidence`]).
    pub confidence: String,
    /// Never visited in training (acts as a fallback state does).
    pub never_visited: bool,
    /// Visited fewer than [`MIN_VISITS`] times (acts as a fallback state does).
    pub low_visits: bool,
    /// What the rule policy chose most often in this state, where it was observed.
    pub rules_choice: Option<String>,
    /// Share of the observations with that choice.
    pub rules_share: Option<f64>,
    /// Decisions observed in the state (simulated evaluation episodes and the log).
    pub seen: u64,
    /// The learned choice differs from the rules' usual one.
    pub differs_from_rules: bool,
}

/// Confidence from visits and Q lead: `none` (never visited in training),
/// `low` (fewer than [`MIN_VISITS`]: a fallback state decides), `high`
/// (≥ [`HIGH_VISITS`] and a lead ≥ [`CLEAR_LEAD`]), else `medium`.
pub fn confidence(visits: u64, lead: Option<f64>) -> &'static str {
    if visits == 0 {
        "none"
    } else if visits < MIN_VISITS {
        "low"
    } else if visits >= HIGH_VISITS && lead.is_some_and(|l| l >= CLEAR_LEAD) {
        "high"
    } else {
        "medium"
    }
}

/// A loaded policy with its encoder, able to say what it does anywhere.
pub struct PolicyView {
    /// The model file.
    pub model: ModelFile,
    table: QTable,
    encoder: Arc<dyn StateEncoder + Send + Sync>,
    detector: Option<DetectorEncoder>,
}

impl std::fmt::Debug for PolicyView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyView").field("encoder", &self.model.encoder.id).finish()
    }
}

impl PolicyView {
    /// Rebuild the encoder the model names (its shape only) and the table.
    pub fn new(model: ModelFile) -> Result<PolicyView, ReportError> {
        let cfg = model.encoder.config.clone();
        let kind: EncoderKind =
            model.encoder.id.parse().map_err(|e: UnknownEncoder| ReportError::Policy(e.to_string()))?;
        let sigs = cfg.detector.as_ref().map(|d| d.signatures).unwrap_or(0);
        let detector = kind.detector_encoder(cfg.clone(), Arc::new(Shape(sigs)));
        let encoder: Arc<dyn StateEncoder + Send + Sync> = match &detector {
            Some(e) => Arc::new(e.clone()),
            None => Arc::from(kind.build(cfg, Arc::new(Shape(sigs)))),
        };
        let table = model.table(encoder.as_ref()).map_err(|e| ReportError::Policy(e.to_string()))?;
        Ok(PolicyView { model, table, encoder, detector })
    }

    /// The table.
    pub fn table(&self) -> &QTable {
        &self.table
    }

    /// The encoder (shape only: it cannot encode telemetry).
    pub fn encoder(&self) -> &dyn StateEncoder {
        self.encoder.as_ref()
    }

    /// Discount the policy was trained with.
    pub fn gamma(&self) -> f64 {
        self.model.meta.params.gamma
    }

    /// Number of failure signatures (0 for `telemetry-v1`).
    pub fn signatures(&self) -> u32 {
        self.model.encoder.config.detector.as_ref().map_or(0, |d| u32::from(d.signatures))
    }

    /// The parts of a `detector-v1` state.
    pub fn parts(&self, s: StateId) -> Option<DetectorState> {
        self.detector.as_ref().map(|d| d.unpack(s))
    }

    /// Pack `detector-v1` parts.
    pub fn pack(&self, p: DetectorState) -> Option<StateId> {
        self.detector.as_ref().map(|d| d.pack(p))
    }

    /// The actions allowed in a state (`detector-v1`: from its worker level,
    /// throttling and escalation bits; `telemetry-v1`: all).
    pub fn mask(&self, s: StateId) -> ActionMask {
        match self.parts(s) {
            Some(p) => {
                let levels = self.model.encoder.config.worker_levels.len() as u32;
                action_mask(p.level, levels, p.throttled, p.escalated)
            }
            None => ActionMask::ALL,
        }
    }

    /// The state whose row decides in `s`.
    pub fn deciding(&self, s: StateId) -> StateId {
        deciding_state(&self.table, self.encoder.as_ref(), s)
    }

    /// The greedy action in `s` under `mask`.
    pub fn act_masked(&self, s: StateId, mask: ActionMask) -> Action {
        self.table.best(self.deciding(s), mask)
    }

    /// The greedy action in `s`.
    pub fn act(&self, s: StateId) -> Action {
        self.act_masked(s, self.mask(s))
    }

    /// Q̂(s, a): the deciding row's value.
    pub fn q(&self, s: StateId, a: Action) -> f64 {
        self.table.row(self.deciding(s))[a.index()]
    }

    /// Q of the chosen action minus the best other allowed one.
    pub fn lead(&self, s: StateId, mask: ActionMask) -> Option<f64> {
        let row = self.table.row(self.deciding(s));
        let best = self.act_masked(s, mask);
        let other = mask.iter().filter(|a| *a != best).map(|a| row[a.index()]).fold(f64::NEG_INFINITY, f64::max);
        other.is_finite().then(|| row[best.index()] - other)
    }

    /// The state in words.
    pub fn describe(&self, s: StateId) -> String {
        self.encoder.describe(s)
    }

    /// One line for state `s`.
    pub fn line(&self, s: StateId, seen: Option<&Seen>) -> StateLine {
        let mask = self.mask(s);
        let chosen = self.act_masked(s, mask);
        let deciding = self.deciding(s);
        let row = self.table.row(deciding);
        let visits = self.table.visits(s).to_vec();
        let state_visits = self.table.state_visits(s);
        let lead = self.lead(s, mask);
        let rules = seen.and_then(|x| {
            let total: u64 = x.rules.iter().sum();
            let (i, n) = x.rules.iter().enumerate().max_by_key(|(i, n)| (**n, std::cmp::Reverse(*i)))?;
            (total > 0).then(|| (Action::ALL[i], *n as f64 / total as f64))
        });
        StateLine {
            id: s,
            desc: self.describe(s),
            signature: self.parts(s).map(|p| p.signature),
            attempted: self.parts(s).map(|p| p.attempted),
            chosen: chosen.name().to_string(),
            decided_by: deciding,
            q: Action::ALL.iter().map(|a| mask.allows(*a).then_some(row[a.index()])).collect(),
            visits,
            state_visits,
            deciding_visits: self.table.state_visits(deciding),
            q_lead: lead,
            confidence: confidence(state_visits, lead).to_string(),
            never_visited: state_visits == 0,
            low_visits: state_visits < MIN_VISITS,
            rules_choice: rules.map(|(a, _)| a.name().to_string()),
            rules_share: rules.map(|(_, s)| s),
            seen: seen.map_or(0, |x| x.decisions),
            differs_from_rules: rules.is_some_and(|(a, _)| a != chosen),
        }
    }

    /// Every state visited in training, and every state met in `seen`; most
    /// visited first, then most seen, then by id.
    pub fn lines(&self, seen: &SeenMap) -> Vec<StateLine> {
        let mut ids: Vec<StateId> = self.table.visited_states().collect();
        ids.extend(
            seen.keys().filter(|s| self.table.state_visits(**s) == 0 && (**s as usize) < self.table.num_states()),
        );
        let mut out: Vec<StateLine> = ids.into_iter().map(|s| self.line(s, seen.get(&s))).collect();
        out.sort_by(|a, b| b.state_visits.cmp(&a.state_visits).then(b.seen.cmp(&a.seen)).then(a.id.cmp(&b.id)));
        out
    }
}

/// A view of the embedded or given model JSON.
pub fn view_from_json(text: &str, origin: &str) -> Result<PolicyView, ReportError> {
    let m = ModelFile::from_json(text, origin).map_err(|e| ReportError::Policy(e.to_string()))?;
    PolicyView::new(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_bands() {
        assert_eq!(confidence(0, None), "none");
        assert_eq!(confidence(10, Some(5.0)), "low");
        assert_eq!(confidence(5000, Some(0.5)), "high");
        assert_eq!(confidence(5000, Some(0.01)), "medium");
        assert_eq!(confidence(100, Some(1.0)), "medium");
    }
}
