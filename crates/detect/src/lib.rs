//! The analysis layer: from a metric stream to an anomaly score, an anomalous
//! flag and a failure signature.
//!
//! - [`features`]: feature windows of pipeline telemetry, O(1) per window;
//! - [`forest`]: isolation forests grown by the algorithm of the
//!   `extended-isolation-forest` crate, but from a seeded RNG, and exchanged with
//!   the crate through its serde representation;
//! - [`flat`]: the same forest compiled into a flat, cache-friendly layout for
//!   single-point scoring;
//! - [`signature`]: failure signatures by seeded k-means over anomalous windows;
//! - [`context`]: scale-free, level-following, season-aware vectors of one series;
//! - [`likelihood`]: raw scores calibrated into an anomaly likelihood;
//! - [`stream`]: streaming detection of one series (learn, score, adapt);
//! - [`telemetry`]: the pipeline detector the agent's state is built on;
//! - [`benchmark`]: the streaming detector over NAB categories, scored by
//!   `selfheal_nab` and cross-validated.

#![forbid(unsafe_code)]

pub mod benchmark;
pub mod context;
pub mod coverage;
pub mod features;
pub mod flat;
pub mod forest;
pub mod likelihood;
pub mod scores;
pub mod signature;
pub mod stream;
pub mod telemetry;
