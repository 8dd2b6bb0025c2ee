//! Streaming detection of one series, as `selfheal detect` runs it on a NAB file.
//!
//! 1. **Probation.** The first 15 % of the rows (at most 750, as NAB counts its
//!    probationary period) only feed the baseline and the training set; they are
//!    scored 0.
//! 2. **Fit.** At the end of probation an isolation forest is grown (seeded) on
//!    the feature vectors seen so far.
//! 3. **Score.** Every later row gets the forest's raw score of its feature
//!    vector (which depends on that row and the rows before it only).
//! 4. **Adapt.** Every `refit_every` rows the forest is regrown on the most
//!    recent `memory` vectors whose raw score stayed below the `normal_quantile`
//!    of the training scores, so the model follows slow drift of normal
//!    behaviour without learning the anomalies it flagged. Each refit has its
//!    own seed derived from the detector's seed: runs are reproducible.
//! 5. **Calibrate.** The output is not the raw score but how unusual the recent
//!    raw scores are against the long-run distribution of raw scores: the
//!    z-score of the mean of the last `short` raw scores against the mean and
//!    deviation of the last `long` ones, mapped monotonically onto [0, 1]. One
//!    threshold then means the same thing on every series, which is what NAB's
//!    single corpus-wide threshold asks for.

use crate::features::{SeriesFeatures, SeriesParams};
use crate::flat::FlatForest;
use crate::forest::{ForestParams, ForestRepr};
use selfheal_core::seeds::mix;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Parameters of the streaming detector.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    /// Feature windows.
    pub features: SeriesParams,
    /// Forest growth (its seed seeds every refit too).
    pub forest: ForestParams,
    /// Share of rows in probation (capped at `probation_cap`).
    pub probation: f64,
    /// Upper bound of the probation, rows.
    pub probation_cap: usize,
    /// Rows between refits.
    pub refit_every: usize,
    /// Normal vectors kept for refits.
    pub memory: usize,
    /// A vector is "normal" for refits below this quantile of training scores.
    pub normal_quantile: f64,
    /// Rows averaged into the short-term score.
    pub short: usize,
    /// Rows of the long-run score distribution.
    pub long: usize,
    /// Rows over which a score must be a new high to stand: a later, lower
    /// echo of the same event is damped (NAB charges every false-positive row
    /// and credits only the first detection in a window).
    #[serde(default)]
    pub novelty: usize,
    /// Factor applied to scores that are not a new high over `novelty` rows.
    #[serde(default = "default_damp")]
    pub damp: f64,
    /// Floor of the long-run deviation of raw scores, so the jitter of a flat
    /// series does not read as a huge deviation.
    #[serde(default = "default_sd_floor")]
    pub sd_floor: f64,
    /// After a score at or above `refractory_level` stands, later scores are
    /// damped for this many rows even if higher (one event, one report).
    #[serde(default)]
    pub refractory: usize,
    /// Score from which the refractory period starts.
    #[serde(default = "default_refractory_level")]
    pub refractory_level: f64,
}

fn default_refractory_level() -> f64 {
    0.8
}

fn default_sd_floor() -> f64 {
    1e-6
}

fn default_damp() -> f64 {
    0.5
}

impl Default for StreamParams {
    fn default() -> Self {
        // Tuned on NAB's realAWSCloudwatch files (benches/RESULTS.md has the
        // sweep): a day-long baseline half-life, eight-point shingles, a six-row
        // short-term mean, weekly refits on two weeks of normal rows, and only
        // new highs over 50 rows stand.
        StreamParams {
            features: SeriesParams { halflife: 288.0, clip: 4.0, shingle: 8 },
            forest: ForestParams { n_trees: 100, sample_size: 256, extension_level: 0, seed: 0 },
            probation: 0.15,
            probation_cap: 750,
            refit_every: 2016,
            memory: 4000,
            normal_quantile: 0.95,
            short: 6,
            long: 576,
            novelty: 50,
            damp: 0.0,
            sd_floor: 0.02,
            refractory: 0,
            refractory_level: 0.8,
        }
    }
}

/// Rolling mean and deviation of the last `cap` values, O(1) per push.
#[derive(Clone, Debug)]
struct Rolling {
    cap: usize,
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl Rolling {
    fn new(cap: usize) -> Rolling {
        Rolling { cap: cap.max(1), values: VecDeque::with_capacity(cap.max(1)), sum: 0.0, sum_sq: 0.0 }
    }

    fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            let old = self.values.pop_front().unwrap_or(0.0);
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.values.push_back(v);
        self.sum += v;
        self.sum_sq += v * v;
    }

    fn mean(&self) -> f64 {
        self.sum / self.values.len().max(1) as f64
    }

    fn sd(&self) -> f64 {
        let n = self.values.len().max(1) as f64;
        (self.sum_sq / n - self.mean().powi(2)).max(0.0).sqrt()
    }
}

/// The streaming detector of one series.
#[derive(Clone, Debug)]
pub struct StreamDetector {
    params: StreamParams,
    features: SeriesFeatures,
    probation: usize,
    row: usize,
    training: Vec<Vec<f64>>,
    normal: VecDeque<Vec<f64>>,
    normal_cut: f64,
    forest: Option<FlatForest>,
    refits: u64,
    short: Rolling,
    long: Rolling,
    recent: VecDeque<f64>,
    quiet_until: usize,
    vector: Vec<f64>,
}

impl StreamDetector {
    /// A detector for a series of `rows` rows (sets the probation length).
    pub fn new(params: StreamParams, rows: usize) -> StreamDetector {
        let probation = ((params.probation * rows as f64).floor() as usize).min(params.probation_cap);
        StreamDetector {
            features: SeriesFeatures::new(params.features),
            probation,
            row: 0,
            training: Vec::with_capacity(probation),
            normal: VecDeque::with_capacity(params.memory),
            normal_cut: f64::INFINITY,
            forest: None,
            refits: 0,
            short: Rolling::new(params.short),
            long: Rolling::new(params.long),
            recent: VecDeque::with_capacity(params.novelty),
            quiet_until: 0,
            vector: Vec::new(),
            params,
        }
    }

    /// Rows in probation.
    pub fn probation(&self) -> usize {
        self.probation
    }

    fn grow(&mut self, points: &[Vec<f64>]) {
        let sample = self.params.forest.sample_size.min(points.len());
        if sample < 2 {
            return;
        }
        let fp =
            ForestParams { sample_size: sample, seed: mix(self.params.forest.seed, self.refits), ..self.params.forest };
        if let Ok(r) = ForestRepr::grow(points, &fp) {
            self.forest = Some(FlatForest::compile(&r));
            self.refits += 1;
        }
    }

    /// Feed the next value; returns its score in [0, 1].
    pub fn push(&mut self, x: f64) -> f64 {
        self.features.push(x, &mut self.vector);
        let row = self.row;
        self.row += 1;
        if row < self.probation || (self.forest.is_none() && self.training.len() < 2) {
            self.training.push(self.vector.clone());
            return 0.0;
        }
        if self.forest.is_none() {
            let training = std::mem::take(&mut self.training);
            self.grow(&training);
            let Some(f) = &self.forest else { return 0.0 };
            let mut scores: Vec<f64> = training.iter().map(|v| f.score(v)).collect();
            scores.sort_by(|a, b| a.total_cmp(b));
            let q = ((scores.len() - 1) as f64 * self.params.normal_quantile).round() as usize;
            self.normal_cut = scores[q];
            let keep = training.len().saturating_sub(self.params.memory);
            self.normal.extend(training.into_iter().skip(keep));
        }
        let raw = self.forest.as_ref().map_or(0.0, |f| f.score(&self.vector));
        if raw <= self.normal_cut {
            if self.normal.len() == self.params.memory {
                self.normal.pop_front();
            }
            self.normal.push_back(self.vector.clone());
        }
        // Until enough out-of-sample scores exist, judge against the first ones.
        self.short.push(raw);
        if self.long.values.len() < 32 {
            self.long.push(raw);
        }
        let (mu, sd) = (self.long.mean(), self.long.sd());
        if self.long.values.len() >= 32 {
            self.long.push(raw);
        }
        if (row - self.probation + 1).is_multiple_of(self.params.refit_every.max(1)) {
            let pts: Vec<Vec<f64>> = self.normal.iter().cloned().collect();
            self.grow(&pts);
        }
        let z = (self.short.mean() - mu) / sd.max(self.params.sd_floor);
        let v = 0.5 + 0.5 * z / (1.0 + z.abs());
        if self.params.novelty == 0 {
            return v;
        }
        let high = self.recent.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if self.recent.len() == self.params.novelty {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
        if v > high && row >= self.quiet_until {
            if v >= self.params.refractory_level {
                self.quiet_until = row + 1 + self.params.refractory;
            }
            v
        } else {
            v * self.params.damp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(n: usize) -> Vec<f64> {
        (0..n).map(|i| 50.0 + 5.0 * ((i as f64) * 0.2).sin() + ((i * 7919) % 13) as f64 * 0.1).collect()
    }

    #[test]
    fn probation_scores_zero_then_a_spike_scores_high() {
        let mut xs = series(2000);
        xs[1500] = 120.0;
        let mut d = StreamDetector::new(StreamParams::default(), xs.len());
        assert_eq!(d.probation(), 300);
        let out: Vec<f64> = xs.iter().map(|x| d.push(*x)).collect();
        assert!(out[..300].iter().all(|s| *s == 0.0));
        assert!(out.iter().all(|s| (0.0..=1.0).contains(s)));
        let mut normal = out[600..1490].to_vec();
        normal.sort_by(|a, b| a.total_cmp(b));
        let p99 = normal[normal.len() * 99 / 100];
        let spike = out[1500..1505].iter().copied().fold(0.0, f64::max);
        assert!(spike > p99, "spike {spike} vs 99th percentile {p99}");
    }

    #[test]
    fn same_input_same_scores() {
        let xs = series(1500);
        let run = || {
            let mut d = StreamDetector::new(StreamParams::default(), xs.len());
            xs.iter().map(|x| d.push(*x)).collect::<Vec<f64>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_row_is_scored_from_the_past_only() {
        let xs = series(1200);
        let mut a = StreamDetector::new(StreamParams::default(), 1200);
        let full: Vec<f64> = xs.iter().map(|x| a.push(*x)).collect();
        let mut b = StreamDetector::new(StreamParams::default(), 1200);
        let mut changed = xs.clone();
        changed[1000..].iter_mut().for_each(|x| *x += 500.0);
        let other: Vec<f64> = changed.iter().map(|x| b.push(*x)).collect();
        assert_eq!(full[..1000], other[..1000]);
        assert_ne!(full[1000], other[1000]);
    }
}
