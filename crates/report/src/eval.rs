//! The evaluation: `selfheal evaluate --format json` read back (its type is
//! [`selfheal_schema::eval`]'s, the one the harness writes), plus the action
//! mix per fault kind that the binary computes by running the same episodes.

use crate::ReportError;
use serde::Serialize;

pub use selfheal_schema::eval::{Comparison, FaultLine, PolicyReport};

/// Parse `selfheal evaluate --format json` output; `origin` names the file in errors.
///
/// # Errors
/// [`ReportError::Format`] when the text is not an evaluation.
pub fn parse(text: &str, origin: &str) -> Result<Comparison, ReportError> {
    serde_json::from_str(text).map_err(|e| ReportError::Format {
        path: origin.to_string(),
        message: format!("not `selfheal evaluate --format json` output: {e}"),
    })
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
