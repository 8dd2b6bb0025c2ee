//! Drives policies through environments: one episode loop shared by training and
//! evaluation, the incident bookkeeping behind MTTR, and the side-by-side report.
//!
//! One sample's path, in [`episode::run_episode`]: telemetry → state encoder →
//! controller decides → environment steps → reward → controller learns. The
//! harness is generic over [`selfheal_core::Environment`], so it knows nothing
//! of the simulator; the binary wires the two together.

#![forbid(unsafe_code)]

pub mod calibrate;
pub mod detector_data;
pub mod episode;
pub mod policies;
pub mod report;
pub mod shard;
pub mod train;

pub use calibrate::{calibrate_rules, rule_grid, Calibration};
pub use detector_data::{collect_detector_data, DetectorData};
pub use episode::{run_episode, run_episode_from, Controller, EpisodeStats, Fixed, Start, StepRecord};
pub use policies::{PolicyError, PolicyInputs, PolicyKind};
pub use report::{aggregate, Comparison, PolicyReport};
pub use train::{train, Coverage, CurvePoint, CurveWriter, TrainConfig};
