//! Policy review: turn a Q table, an evaluation and a provenance log into
//! something an on-call engineer reads in five minutes and a lead signs off.
//!
//! - [`policy`]: the policy in words (state parts, chosen action, Q of every
//!   action, visits, confidence, flags);
//! - [`eval`], [`curve`], [`log`]: the inputs (evaluate's JSON, the learning
//!   curve CSV, the sidecar's provenance log, read leniently);
//! - [`charts`]: inline SVG charts drawn with `plotters`;
//! - [`render`]: `report.html` (self-contained), `report.md`, `policy.json`, `policy.csv`;
//! - [`playbook`], [`shadow`], [`ope`], [`diff`]: playbooks per failure signature,
//!   the shadow comparison, off-policy evaluation and policy diffs.
//!
//! The crate knows the core and the agent only: whatever needs the simulator
//! (the evaluation, the action mix, simulated windows) is computed by the binary
//! and handed in as plain data.

#![forbid(unsafe_code)]

pub mod charts;
pub mod curve;
pub mod diff;
pub mod eval;
pub mod log;
pub mod ope;
pub mod playbook;
pub mod policy;
pub mod recorder;
pub mod render;
pub mod shadow;
pub mod simlog;

/// What can go wrong building a review.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The policy cannot be read as this build reads policies.
    #[error("policy: {0}")]
    Policy(String),
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An input file is not in the expected format.
    #[error("{path}: {message}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A chart could not be drawn.
    #[error("chart {0}")]
    Chart(String),
    /// Off-policy evaluation is impossible on this log.
    #[error("off-policy evaluation: {0}")]
    Ope(String),
}

/// Read a file, naming it in the error.
pub fn read_text(path: &std::path::Path) -> Result<String, ReportError> {
    std::fs::read_to_string(path).map_err(|source| ReportError::Io { path: path.display().to_string(), source })
}

/// Write a file (creating its directory), naming it in the error.
pub fn write_text(path: &std::path::Path, text: &str) -> Result<(), ReportError> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|source| ReportError::Io { path: d.display().to_string(), source })?;
    }
    std::fs::write(path, text).map_err(|source| ReportError::Io { path: path.display().to_string(), source })
}
