//! The analysis layer: from a metric stream to an anomaly score, an anomalous
//! flag and a failure signature.
//!
//! - [`features`]: streaming feature windows, O(1) per sample;
//! - [`forest`]: isolation forests grown by the algorithm of the
//!   `extended-isolation-forest` crate, but from a seeded RNG, and exchanged with
//!   the crate through its serde representation;
//! - [`flat`]: the same forest compiled into a flat, cache-friendly layout for
//!   single-point scoring;
//! - [`signature`]: failure signatures by seeded k-means over anomalous windows;
//! - [`stream`]: streaming detection of one series (learn, score, adapt);
//! - [`telemetry`]: the pipeline detector the agent's state is built on;
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring rules.

#![forbid(unsafe_code)]

pub mod features;
pub mod flat;
pub mod forest;
pub mod nab;
pub mod signature;
pub mod stream;
pub mod telemetry;
