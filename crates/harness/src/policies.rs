//! The policies `evaluate`, `simulate` and `report` compare, by name: one
//! [`PolicyKind`] and one factory, so a name means the same controller
//! everywhere and an unknown name is an error rather than a silent default.
//!
//! The harness knows no environment, so the caller builds the pieces that
//! depend on one (the oracle reads the simulator's hidden state) and hands
//! them over in [`PolicyInputs`].

use crate::{Controller, Fixed};
use selfheal_agent::confidence::ConfidenceGate;
use selfheal_agent::{
    GlueBuiltinsPolicy, GreedyPolicy, NoOpPolicy, RandomPolicy, RulesPolicy, Supervised, WatchdogConfig,
};
use std::fmt;
use std::str::FromStr;

/// A policy `evaluate` knows, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// `noop`: never acts.
    NoOp,
    /// `random`: a uniformly random allowed action (seed 0).
    Random,
    /// `rules`: the calibrated rule thresholds.
    Rules,
    /// `glue-builtins`: AWS Glue's own retries, timeout and auto scaling.
    GlueBuiltins,
    /// `learned`: the greedy table supervised by the confidence gate and the
    /// watchdog, exactly as the sidecar decides.
    Learned,
    /// `oracle`: the planner that reads the simulator's hidden state.
    Oracle,
}

impl PolicyKind {
    /// Every kind, in report order.
    pub const ALL: [PolicyKind; 6] = [
        PolicyKind::NoOp,
        PolicyKind::Random,
        PolicyKind::Rules,
        PolicyKind::GlueBuiltins,
        PolicyKind::Learned,
        PolicyKind::Oracle,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::NoOp => "noop",
            PolicyKind::Random => "random",
            PolicyKind::Rules => "rules",
            PolicyKind::GlueBuiltins => "glue-builtins",
            PolicyKind::Learned => "learned",
            PolicyKind::Oracle => "oracle",
        }
    }

    /// The names this build knows, comma-separated, for messages.
    pub fn known() -> String {
        PolicyKind::ALL.map(PolicyKind::name).join(", ")
    }

    /// The controller of this kind, built from `inputs`.
    ///
    /// # Errors
    /// [`PolicyError::Missing`] when the piece this kind needs (the Glue
    /// built-ins or the oracle) was not given.
    pub fn controller<'a, E: 'a>(
        self,
        inputs: PolicyInputs<'a, E>,
    ) -> Result<Box<dyn Controller<E> + 'a>, PolicyError> {
        let PolicyInputs { greedy, rules, glue, gate, watchdog, oracle } = inputs;
        Ok(match self {
            PolicyKind::NoOp => Box::new(Fixed(NoOpPolicy)),
            PolicyKind::Random => Box::new(Fixed(RandomPolicy::new(0))),
            PolicyKind::Rules => Box::new(Fixed(rules)),
            PolicyKind::GlueBuiltins => Box::new(Fixed(glue.ok_or(PolicyError::Missing("Glue built-in settings"))?)),
            PolicyKind::Learned => Box::new(Supervised::new(greedy, rules, gate, watchdog)),
            PolicyKind::Oracle => oracle.ok_or(PolicyError::Missing("oracle"))?,
        })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<PolicyKind, PolicyError> {
        PolicyKind::ALL.into_iter().find(|k| k.name() == s).ok_or_else(|| PolicyError::Unknown(s.to_string()))
    }
}

/// What the policies are built from; the factory takes what its kind needs.
pub struct PolicyInputs<'a, E> {
    /// The learned policy's greedy table (with its fallbacks).
    pub greedy: GreedyPolicy,
    /// The rule policy (also the learned policy's fallback).
    pub rules: RulesPolicy,
    /// Glue's built-ins, where `glue-builtins` is wanted.
    pub glue: Option<GlueBuiltinsPolicy>,
    /// The confidence gate on an unhealthy window's silence.
    pub gate: ConfidenceGate,
    /// The learned policy's watchdog.
    pub watchdog: WatchdogConfig,
    /// The oracle as a controller of the environment, where `oracle` is wanted.
    pub oracle: Option<Box<dyn Controller<E> + 'a>>,
}

/// A policy that cannot be named or built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// A name this build does not know.
    #[error("unknown policy {0:?}; expected one of {known}", known = PolicyKind::known())]
    Unknown(String),
    /// The piece a kind needs was not given.
    #[error("the {0} the policy needs was not given")]
    Missing(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_an_unknown_name_lists_the_known_ones() {
        for k in PolicyKind::ALL {
            assert_eq!(k.name().parse::<PolicyKind>(), Ok(k));
            assert_eq!(k.to_string(), k.name());
        }
        let err = "orcale".parse::<PolicyKind>().unwrap_err();
        assert_eq!(err, PolicyError::Unknown("orcale".into()));
        assert_eq!(
            err.to_string(),
            "unknown policy \"orcale\"; expected one of noop, random, rules, glue-builtins, learned, oracle"
        );
    }
}
