//! The operating mode: how much the sidecar may do on its own.
//!
//! Trust is earned in steps. A new deployment starts in `observe`, where a wrong
//! decision costs nothing; it moves to `recommend` once its proposals look sane to
//! the on-call, and to `act` once they trust it. The mode is the first guard: it
//! decides whether the others are consulted at all.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// How much the sidecar may do on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Detect, decide and log only; never act and never propose. The default: the safest.
    #[default]
    Observe,
    /// Every action waits for a human's approval before it runs.
    Recommend,
    /// Act alone where the confidence gate allows; otherwise propose and wait for approval.
    Act,
}

impl Mode {
    /// Every mode, from the most to the least cautious.
    pub const ALL: [Mode; 3] = [Mode::Observe, Mode::Recommend, Mode::Act];

    /// The stable snake_case name used in config files, logs and the API.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Observe => "observe",
            Mode::Recommend => "recommend",
            Mode::Act => "act",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The name did not match any mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown mode {0:?}; expected one of: observe, recommend, act")]
pub struct UnknownMode(pub String);

impl FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Mode::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| UnknownMode(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(m.name().parse::<Mode>().unwrap(), m);
            assert_eq!(m.to_string(), m.name());
        }
        assert_eq!(Mode::default(), Mode::Observe);
    }

    #[test]
    fn unknown_mode_lists_the_three() {
        let err = "auto".parse::<Mode>().unwrap_err();
        assert_eq!(err, UnknownMode("auto".into()));
        let msg = err.to_string();
        for m in Mode::ALL {
            assert!(msg.contains(m.name()), "{msg}");
        }
        assert!("Act".parse::<Mode>().is_err(), "names are case-sensitive");
    }
}
