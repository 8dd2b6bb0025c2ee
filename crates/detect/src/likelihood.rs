//! A calibrated output in the manner of HTM's anomaly likelihood.
//!
//! A detector's raw score (here an isolation forest's, in (0, 1]) means
//! different things on different series: a noisy series keeps its raw scores
//! high, a smooth one low. What carries from series to series is how
//! *improbable* the recent raw scores are under the recent distribution of raw
//! scores. Following Ahmad et al., "Unsupervised real-time anomaly detection for
//! streaming data" (Neurocomputing 2017, the anomaly likelihood of NAB's
//! `numenta` detector), studied in NAB's repository and the paper, not copied:
//!
//! 1. the raw scores are averaged over a short window of `average` rows (a
//!    single odd score is noise, a run of them is an event);
//! 2. the averages of the last `history` rows are summarised by a normal
//!    distribution (rolling mean and deviation, O(1) per row; the deviation has
//!    a floor `sd_floor`, so the jitter of a near-constant raw score does not
//!    make every small wobble improbable);
//! 3. the likelihood is the normal tail Q(z) of the current average, z = (mean
//!    of the short window − μ)/σ, and the output is its log, scaled so that
//!    Q = 1e-10 maps to 1: `score = ln Q / ln 1e-10`, clipped to [0, 1]. The log
//!    spreads the interesting tail (Q between 1e-3 and 1e-8) over the range a
//!    threshold sweep can use, as NAB's `numenta` detector does.
//!
//! Until the history holds `min_history` values the output is 0.

use std::collections::VecDeque;

/// Rolling mean and deviation of the last `cap` values, O(1) per push.
#[derive(Clone, Debug)]
pub struct Rolling {
    cap: usize,
    values: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    pushes: u64,
}

impl Rolling {
    /// An empty window of at most `cap` values (at least 1).
    pub fn new(cap: usize) -> Rolling {
        Rolling {
            cap: cap.max(1),
            values: VecDeque::with_capacity(cap.clamp(1, 1 << 16)),
            sum: 0.0,
            sum_sq: 0.0,
            pushes: 0,
        }
    }

    /// Add a value, dropping the oldest when full.
    pub fn push(&mut self, v: f64) {
        if self.values.len() == self.cap {
            let old = self.values.pop_front().unwrap_or(0.0);
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        self.values.push_back(v);
        self.sum += v;
        self.sum_sq += v * v;
        self.pushes += 1;
        // Re-sum now and then so rounding from the subtractions cannot build up.
        if self.pushes.is_multiple_of(1 << 14) {
            self.sum = self.values.iter().sum();
            self.sum_sq = self.values.iter().map(|v| v * v).sum();
        }
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Mean of the values held (0 when empty).
    pub fn mean(&self) -> f64 {
        self.sum / self.values.len().max(1) as f64
    }

    /// Population deviation of the values held.
    pub fn sd(&self) -> f64 {
        let n = self.values.len().max(1) as f64;
        (self.sum_sq / n - self.mean().powi(2)).max(0.0).sqrt()
    }
}

/// Parameters of [`Likelihood`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LikelihoodParams {
    /// Rows in the short average of raw scores.
    pub average: usize,
    /// Rows of the distribution the short average is judged against.
    pub history: usize,
    /// Values the history needs before any output is given.
    pub min_history: usize,
    /// Floor of the history's deviation.
    pub sd_floor: f64,
}

/// The anomaly likelihood of a stream of raw scores.
#[derive(Clone, Debug)]
pub struct Likelihood {
    params: LikelihoodParams,
    short: Rolling,
    history: Rolling,
}

impl Likelihood {
    /// A fresh estimator.
    pub fn new(params: LikelihoodParams) -> Likelihood {
        Likelihood { short: Rolling::new(params.average), history: Rolling::new(params.history), params }
    }

    /// Feed the next raw score; returns the log-likelihood score in [0, 1].
    /// The current average is judged against the history *before* it.
    pub fn push(&mut self, raw: f64) -> f64 {
        self.short.push(raw);
        let avg = self.short.mean();
        let out = if self.history.len() >= self.params.min_history.max(2) {
            let z = (avg - self.history.mean()) / self.history.sd().max(self.params.sd_floor);
            log_tail_score(z)
        } else {
            0.0
        };
        self.history.push(avg);
        out
    }
}

/// ln 1e-10: the log-tail that maps to a score of 1.
const LN_FLOOR: f64 = -23.025850929940457;

/// `ln Q(z) / ln 1e-10` clipped to [0, 1], with Q the standard normal's upper
/// tail: 0.03 at z = 0, 0.5 at Q = 1e-5 (z ≈ 4.26), 1 from Q = 1e-10 (z ≈ 6.36).
pub fn log_tail_score(z: f64) -> f64 {
    (ln_normal_tail(z) / LN_FLOOR).clamp(0.0, 1.0)
}

/// ln Q(z), Q(z) = P(N(0,1) > z), accurate to about 1e-7 relative in Q and
/// finite for every finite z (no underflow to ln 0 in the far tail).
pub fn ln_normal_tail(z: f64) -> f64 {
    if z.is_nan() {
        return f64::NAN;
    }
    // Q(z) = erfc(z/√2)/2, with erfc in the form t·exp(−x² + P(t)) of
    // Numerical Recipes' erfcc (fractional error < 1.2e-7), taken in logs.
    let x = z / std::f64::consts::SQRT_2;
    let ax = x.abs();
    let t = 1.0 / (1.0 + 0.5 * ax);
    let poly = -1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let ln_erfc_abs = t.ln() - ax * ax + poly;
    if x >= 0.0 {
        ln_erfc_abs - std::f64::consts::LN_2
    } else {
        // erfc(−a) = 2 − erfc(a).
        (1.0 - 0.5 * ln_erfc_abs.exp()).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_tail_values() {
        // Q(0) = 0.5, Q(1.96) ≈ 0.025, Q(4.2649) ≈ 1e-5, Q(−3) ≈ 0.99865.
        let q = |z: f64| ln_normal_tail(z).exp();
        assert!((q(0.0) - 0.5).abs() < 1e-7);
        assert!((q(1.959964) - 0.025).abs() < 1e-7);
        assert!((q(4.264891) / 1e-5 - 1.0).abs() < 1e-4);
        assert!((q(-3.0) - 0.998650).abs() < 1e-6);
        assert!(ln_normal_tail(40.0).is_finite() && ln_normal_tail(40.0) < -700.0);
        assert!((log_tail_score(4.264891) - 0.5).abs() < 1e-4);
        assert_eq!(log_tail_score(7.0), 1.0);
        assert!(log_tail_score(-5.0) < 1e-5);
    }

    #[test]
    fn a_run_of_high_raw_scores_is_improbable_a_steady_level_is_not() {
        let p = LikelihoodParams { average: 5, history: 500, min_history: 50, sd_floor: 1e-3 };
        let mut l = Likelihood::new(p);
        let mut last = 0.0;
        for i in 0..1000 {
            last = l.push(0.4 + 0.02 * ((i * 7919 % 17) as f64 / 17.0));
        }
        assert!(last < 0.2, "steady {last}");
        let peak = (0..5).map(|_| l.push(0.8)).fold(0.0, f64::max);
        assert!(peak > 0.9, "run of high scores {peak}");
    }

    #[test]
    fn rolling_window() {
        let mut r = Rolling::new(3);
        for v in [1.0, 2.0, 3.0, 4.0] {
            r.push(v);
        }
        assert_eq!(r.len(), 3);
        assert!((r.mean() - 3.0).abs() < 1e-12);
        assert!((r.sd() - (2.0f64 / 3.0).sqrt()).abs() < 1e-12);
    }
}
