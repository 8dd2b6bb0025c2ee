//! Feature windows: a metric stream turned into vectors an isolation forest can
//! score, in O(1) time and memory per sample.
//!
//! Two shapes, for two kinds of input:
//!
//! - [`SeriesFeatures`], for one metric streamed point by point (a CloudWatch
//!   series, a NAB file): a robust rolling baseline (an exponentially weighted
//!   level and mean absolute deviation whose updates are winsorised at ±k
//!   deviations, so one spike does not drag the baseline after it), the z-score
//!   of each point against the baseline *before* it, the first difference in
//!   the same units, and a shingle of the last `shingle` z-scores. A point is
//!   always scored against the past only.
//! - [`TelemetryFeatures`], for a whole pipeline window of many metrics: ratios
//!   across metrics (each error class per record arrived, records read per
//!   record arrived, backlog in periods of arrivals) and log-scaled resource
//!   gauges, so windows of pipelines of any size land on one scale.

use selfheal_core::{Metric, Telemetry};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Parameters of [`SeriesFeatures`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesParams {
    /// Half-life of the baseline, in samples.
    pub halflife: f64,
    /// Winsorising bound of baseline updates, in deviations.
    pub clip: f64,
    /// Number of z-scores in the shingle.
    pub shingle: usize,
}

impl Default for SeriesParams {
    fn default() -> Self {
        SeriesParams { halflife: 96.0, clip: 4.0, shingle: 4 }
    }
}

/// Streaming features of one metric.
#[derive(Clone, Debug)]
pub struct SeriesFeatures {
    params: SeriesParams,
    alpha: f64,
    level: f64,
    dev: f64,
    last: Option<f64>,
    zs: VecDeque<f64>,
    seen: u64,
}

impl SeriesFeatures {
    /// A fresh extractor.
    pub fn new(params: SeriesParams) -> SeriesFeatures {
        SeriesFeatures {
            alpha: 1.0 - 0.5f64.powf(1.0 / params.halflife.max(1.0)),
            params,
            level: 0.0,
            dev: 0.0,
            last: None,
            zs: VecDeque::with_capacity(params.shingle),
            seen: 0,
        }
    }

    /// Dimension of the vectors: the shingle plus the first difference.
    pub fn dims(&self) -> usize {
        self.params.shingle + 1
    }

    /// Feed one value and write its feature vector into `out` (cleared first).
    /// Non-finite values must be rejected before this point.
    pub fn push(&mut self, x: f64, out: &mut Vec<f64>) {
        debug_assert!(x.is_finite());
        if self.seen == 0 {
            self.level = x;
            self.dev = 0.0;
        }
        // Floor the deviation relative to the level so a flat series does not
        // turn measurement jitter into huge z-scores.
        let scale = self.dev.max(1e-3 * self.level.abs()).max(1e-9);
        let z = (x - self.level) / scale;
        let d = self.last.map_or(0.0, |l| (x - l) / scale);
        // Robust update: winsorise the sample before it moves the baseline.
        let bound = self.params.clip * scale;
        let clipped = if self.seen < 2 { x } else { x.clamp(self.level - bound, self.level + bound) };
        let a = if self.seen < 10 { 1.0 / (self.seen as f64 + 1.0) } else { self.alpha };
        let before = self.level;
        self.level += a * (clipped - self.level);
        self.dev += a * ((clipped - before).abs() - self.dev);
        self.last = Some(x);
        self.seen += 1;

        if self.zs.len() == self.params.shingle {
            self.zs.pop_back();
        }
        self.zs.push_front(squash(z));
        out.clear();
        out.extend(self.zs.iter().copied());
        out.resize(self.params.shingle, 0.0);
        out.push(squash(d));
    }
}

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
    fn a_spike_stands_out_and_does_not_drag_the_baseline() {
        let mut f = SeriesFeatures::new(SeriesParams { halflife: 20.0, clip: 4.0, shingle: 3 });
        let mut v = Vec::new();
        for i in 0..200 {
            f.push(10.0 + (i % 5) as f64 * 0.1, &mut v);
        }
        assert_eq!(v.len(), 4);
        let calm = v[0].abs();
        f.push(50.0, &mut v);
        let spike = v[0];
        assert!(spike > 3.0 && calm < 1.5, "spike {spike}, calm {calm}");
        f.push(10.2, &mut v);
        assert!(v[0].abs() < 1.5, "baseline dragged: {}", v[0]);
        assert_eq!(v[1], spike, "the shingle remembers the spike");
    }

    #[test]
    fn features_use_only_the_past() {
        let xs: Vec<f64> = (0..100).map(|i| (i as f64 * 0.3).sin()).collect();
        let run = |n: usize| {
            let mut f = SeriesFeatures::new(SeriesParams::default());
            let mut v = Vec::new();
            for x in &xs[..n] {
                f.push(*x, &mut v);
            }
            v
        };
        // The vector of row 50 is the same whether or not later rows exist.
        assert_eq!(run(51), {
            let mut f = SeriesFeatures::new(SeriesParams::default());
            let mut v = Vec::new();
            let mut at50 = Vec::new();
            for (i, x) in xs.iter().enumerate() {
                f.push(*x, &mut v);
                if i == 50 {
                    at50 = v.clone();
                }
            }
            at50
        });
    }

    #[test]
    fn telemetry_features_are_finite_on_an_empty_window() {
        let v = TelemetryFeatures::extract(&Telemetry::default());
        assert!(v.iter().all(|x| x.is_finite()));
    }
}
