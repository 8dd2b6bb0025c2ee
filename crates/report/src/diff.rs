//! Policy diffs: the states whose greedy action changed between two policies,
//! with the evidence behind each side.

use crate::policy::PolicyView;
use crate::ReportError;
use selfheal_core::StateId;
use serde::Serialize;

/// One side of a changed state.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// Greedy action.
    pub action: String,
    /// Training visits of the state.
    pub visits: u64,
    /// The state whose row decides.
    pub decided_by: StateId,
    /// Q lead of the action over the runner-up.
    pub q_lead: Option<f64>,
    /// Confidence.
    pub confidence: String,
}

/// A state whose action changed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// State id.
    pub state: StateId,
    /// In words.
    pub desc: String,
    /// The old policy.
    pub old: Side,
    /// The new policy.
    pub new: Side,
}

fn side(p: &PolicyView, s: StateId) -> Side {
    let l = p.line(s, None);
    Side {
        action: l.chosen,
        visits: l.state_visits,
        decided_by: l.decided_by,
        q_lead: l.q_lead,
        confidence: l.confidence,
    }
}

/// The states visited by either policy whose greedy action differs; most visited (new, then old) first.
pub fn diff(old: &PolicyView, new: &PolicyView) -> Result<(usize, Vec<Change>), ReportError> {
    if old.model.encoder.id != new.model.encoder.id || old.model.num_states != new.model.num_states {
        return Err(ReportError::Policy(format!(
            "the policies number their states differently ({} with {} states vs {} with {}); a diff needs the same encoder",
            old.model.encoder.id, old.model.num_states, new.model.encoder.id, new.model.num_states
        )));
    }
    let mut ids: Vec<StateId> = old.table().visited_states().chain(new.table().visited_states()).collect();
    ids.sort_unstable();
    ids.dedup();
    let compared = ids.len();
    let mut out: Vec<Change> = ids
        .into_iter()
        .filter(|s| old.act(*s) != new.act(*s))
        .map(|s| Change { state: s, desc: new.describe(s), old: side(old, s), new: side(new, s) })
        .collect();
    out.sort_by(|a, b| (b.new.visits, b.old.visits, a.state).cmp(&(a.new.visits, a.old.visits, b.state)));
    Ok((compared, out))
}

/// The diff in words.
pub fn text(compared: usize, changes: &[Change]) -> String {
    let lead = |x: Option<f64>| x.map_or("–".to_string(), |v| format!("{v:.3}"));
    let mut s = format!("{} states compared; the greedy action changed in {}\n\n", compared, changes.len());
    if !changes.is_empty() {
        s.push_str(&format!(
            "{:>6}  {:<18} {:>9} {:>8} {:<6}  {:<18} {:>9} {:>8} {:<6}  state\n",
            "state", "old action", "visits", "Q lead", "conf", "new action", "visits", "Q lead", "conf"
        ));
    }
    for c in changes {
        s.push_str(&format!(
            "{:>6}  {:<18} {:>9} {:>8} {:<6}  {:<18} {:>9} {:>8} {:<6}  {}\n",
            c.state,
            c.old.action,
            c.old.visits,
            lead(c.old.q_lead),
            c.old.confidence,
            c.new.action,
            c.new.visits,
            lead(c.new.q_lead),
            c.new.confidence,
            c.desc
        ));
    }
    s
}
