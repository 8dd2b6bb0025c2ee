//! Feature windows: pipeline telemetry turned into vectors an isolation forest
//! can score, in O(1) time and memory per window.
//!
//! [`TelemetryFeatures`], for a whole pipeline window of many metrics: ratios
//! across metrics (each error class per record arrived, records read per
//! record arrived, backlog in periods of arrivals) and log-scaled resource
//! gauges, so windows of pipelines of any size land on one scale. One metric
//! streamed point by point (a CloudWatch series, a NAB file) is described by
//! [`crate::context`] instead (it replaced the exponentially weighted
//! baseline that lived here, issue 15).

use selfheal_core::{Metric, Telemetry};

/// Compress large magnitudes (sign-preserving log): keeps z-scores of 1,000 and
/// 100,000 distinguishable without letting one dominate the forest's cuts.
pub fn squash(v: f64) -> f64 {
    v.signum() * v.abs().ln_1p()
}

/// Names of the [`TelemetryFeatures`] dimensions, in order.
pub const TELEMETRY_FEATURES: [&str; 13] = [
    "upstream_5xx_per_record",
    "timeouts_per_record",
    "schema_errors_per_record",
    "data_quality_errors_per_record",
    "sink_errors_per_record",
    "heap_usage",
    "cpu_load",
    "log_skewness",
    "read_per_record",
    "log_run_minutes",
    "log_latency",
    "log_backlog_periods",
    "log_failed_tasks",
];

/// The metrics each [`TelemetryFeatures`] dimension is computed from, in
/// order. A dimension with an absent input is not computed from a 0: the
/// detector reads it at the healthy baseline (see
/// [`TelemetryFeatures::present`]).
pub const TELEMETRY_FEATURE_INPUTS: [&[Metric]; 13] = [
    &[Metric::Errors5xx, Metric::RecordsIn],
    &[Metric::ErrorsTimeout, Metric::RecordsIn],
    &[Metric::ErrorsSchema, Metric::RecordsIn],
    &[Metric::ErrorsDataQuality, Metric::RecordsIn],
    &[Metric::ErrorsSink, Metric::RecordsIn],
    &[Metric::HeapUsage],
    &[Metric::CpuLoad],
    &[Metric::Skewness],
    &[Metric::RecordsRead, Metric::RecordsIn],
    &[Metric::ElapsedTime],
    &[Metric::LatencyP95],
    &[Metric::Backlog, Metric::RecordsIn],
    &[Metric::FailedTasks],
];

/// Per-window features of pipeline telemetry (see the module doc).
#[derive(Clone, Copy, Debug, Default)]
pub struct TelemetryFeatures;

impl TelemetryFeatures {
    /// Dimension.
    pub const DIMS: usize = TELEMETRY_FEATURES.len();

    /// Which dimensions of [`TelemetryFeatures::extract`] the window has every
    /// input of ([`TELEMETRY_FEATURE_INPUTS`]).
    pub fn present(t: &Telemetry) -> [bool; Self::DIMS] {
        TELEMETRY_FEATURE_INPUTS.map(|inputs| t.all_present(inputs))
    }

    /// The metrics the features read, each once, in [`Metric::ALL`] order.
    pub fn inputs() -> Vec<Metric> {
        Metric::ALL.iter().copied().filter(|m| TELEMETRY_FEATURE_INPUTS.iter().any(|i| i.contains(m))).collect()
    }

    /// The feature vector of one window.
    pub fn extract(t: &Telemetry) -> [f64; Self::DIMS] {
        let arrived = t.get(Metric::RecordsIn).max(1.0);
        let per = |m: Metric| (t.get(m) / arrived).min(10.0);
        [
            per(Metric::Errors5xx),
            per(Metric::ErrorsTimeout),
            per(Metric::ErrorsSchema),
            per(Metric::ErrorsDataQuality),
            per(Metric::ErrorsSink),
            t.get(Metric::HeapUsage),
            t.get(Metric::CpuLoad),
            t.get(Metric::Skewness).max(1e-3).ln(),
            per(Metric::RecordsRead),
            (t.get(Metric::ElapsedTime) / 60_000.0).ln_1p(),
            t.get(Metric::LatencyP95).ln_1p(),
            (t.get(Metric::Backlog) / arrived).ln_1p(),
            t.get(Metric::FailedTasks).ln_1p(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_features_are_finite_on_an_empty_window() {
        let v = TelemetryFeatures::extract(&Telemetry::default());
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
