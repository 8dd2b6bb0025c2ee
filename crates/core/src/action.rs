//! Recovery actions: one enum for the simulator and the real actuators, so a policy
//! trained in simulation is deployable as is (DESIGN §2).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A recovery action the agent can choose. The order is part of the model file
/// format (Q-table columns), so new actions are appended, never inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Wait: right for transient blips and false alarms.
    NoOp,
    /// Start the job run again after exponential backoff with full jitter.
    RetryWithBackoff,
    /// Run the next job run with more workers.
    ScaleUp,
    /// Run the next job run with fewer workers (saves cost once healthy).
    ScaleDown,
    /// Read the source's new schema and apply the column mapping.
    SchemaRemap,
    /// Stop the running job and start it again.
    Restart,
    /// Lower the ingest rate / max concurrent runs while downstream is unhealthy.
    Backpressure,
    /// Move the run to a later, quieter slot.
    Reschedule,
    /// Route failing records to a dead-letter location; keep the rest flowing.
    Quarantine,
    /// Page a human with the provenance trail; take no automatic action.
    Escalate,
}

impl Action {
    /// Number of actions; the width of a Q-table row.
    pub const COUNT: usize = 10;
    /// Every action, in column order.
    pub const ALL: [Action; Action::COUNT] = [
        Action::NoOp,
        Action::RetryWithBackoff,
        Action::ScaleUp,
        Action::ScaleDown,
        Action::SchemaRemap,
        Action::Restart,
        Action::Backpressure,
        Action::Reschedule,
        Action::Quarantine,
        Action::Escalate,
    ];

    /// Column index of this action.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The action at a column index.
    pub fn from_index(i: usize) -> Option<Action> {
        Action::ALL.get(i).copied()
    }

    /// The stable snake_case name used in files, logs and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            Action::NoOp => "noop",
            Action::RetryWithBackoff => "retry_with_backoff",
            Action::ScaleUp => "scale_up",
            Action::ScaleDown => "scale_down",
            Action::SchemaRemap => "schema_remap",
            Action::Restart => "restart",
            Action::Backpressure => "backpressure",
            Action::Reschedule => "reschedule",
            Action::Quarantine => "quarantine",
            Action::Escalate => "escalate",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name did not match any action.
#[derive(Debug, thiserror::Error)]
#[error("unknown action {0:?}; expected one of: noop, retry_with_backoff, scale_up, scale_down, schema_remap, restart, backpressure, reschedule, quarantine, escalate")]
pub struct UnknownAction(pub String);

impl FromStr for Action {
    type Err = UnknownAction;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| UnknownAction(s.to_string()))
    }
}

/// Which actions are allowed in a state (action masking): a bit per action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActionMask(u16);

impl ActionMask {
    /// Every action allowed.
    pub const ALL: ActionMask = ActionMask((1 << Action::COUNT) - 1);

    /// Whether `a` is allowed.
    pub fn allows(self, a: Action) -> bool {
        self.0 & (1 << a.index()) != 0
    }

    /// The mask without `a`.
    #[must_use]
    pub fn without(self, a: Action) -> ActionMask {
        ActionMask(self.0 & !(1 << a.index()))
    }

    /// The allowed actions, in column order.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.allows(*a))
    }

    /// Number of allowed actions.
    pub fn count(self) -> usize {
        self.0.count_ones() as usize
    }
}

impl Default for ActionMask {
    fn default() -> Self {
        ActionMask::ALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_indices_are_dense() {
        for (i, a) in Action::ALL.into_iter().enumerate() {
            assert_eq!(a.index(), i);
            assert_eq!(a.name().parse::<Action>().unwrap(), a);
            assert_eq!(Action::from_index(i), Some(a));
        }
        assert!("reboot".parse::<Action>().is_err());
    }

    #[test]
    fn mask_removes_actions() {
        let m = ActionMask::ALL.without(Action::ScaleUp);
        assert!(!m.allows(Action::ScaleUp));
        assert!(m.allows(Action::NoOp));
        assert_eq!(m.count(), Action::COUNT - 1);
    }
}
