//! Scale-free, level-following, season-aware feature vectors of one series.
//!
//! What NAB's best detectors have in common is that they never look at a raw
//! value: HTM encodes it relative to the file's range plus the time of day,
//! CAD OSE quantises it into a few bits of the range, ARTime normalises it
//! before its resonance layer. An isolation forest trained on one stretch of a
//! series and then asked about another needs the same: a value must be
//! described relative to where the series is *now*, in units of how much it
//! moves *now*, and, where the series has a daily cycle, relative to what is
//! usual at this time of day. Per row, O(`window`) time (a sorted insert), O(1)
//! for everything else:
//!
//! - **robust level and scale**: the median and the inter-quartile range of the
//!   last `window` values (a sorted buffer); scale = IQR/1.349, or, where more
//!   than half of the window is one value, the mean absolute deviation from the
//!   median, with a floor of 1e-9·|median|. A level shift is absorbed once it
//!   fills half the window; one spike never moves the median;
//! - **z** = (x − median)/scale of this row and the `shingle − 1` rows before
//!   it, and the step **dz** = (x − previous)/scale, each passed through a
//!   sign-preserving log ([`crate::features::squash`]) so a z of 1,000 does not
//!   swamp the forest's cuts;
//! - **seasonal residual**: a time-of-day profile (`season_bins` bins of the
//!   UTC day, each an exponentially weighted mean of the values seen in it);
//!   the residual x − profile, in units of its own mean absolute size. The
//!   profile is used only if, over the probation, it explains at least
//!   `season_strength` of the variance and the probation spans a day; else this
//!   coordinate is 0 (and the forest never splits on it).
//!
//! Every feature of a row depends on that row and the rows before it only.

use crate::features::squash;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Milliseconds in a day.
const DAY_MS: i64 = 86_400_000;

/// Parameters of [`SeriesContext`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextParams {
    /// Rows of the rolling median and inter-quartile range.
    pub window: usize,
    /// Rows of a second, long window whose z-score is one more coordinate (0: off).
    #[serde(default)]
    pub long_window: usize,
    /// z-scores in the vector (this row and the ones before).
    pub shingle: usize,
    /// Bins of the time-of-day profile (0: no seasonal context).
    pub season_bins: usize,
    /// Share of the probation's variance the profile must explain to be used.
    pub season_strength: f64,
    /// Weight of a new value in its bin's level, once the bin has had 1/weight visits.
    pub season_weight: f64,
}

impl Default for ContextParams {
    /// The streaming detector's defaults (chosen with its other parameters).
    fn default() -> Self {
        ContextParams {
            window: 576,
            long_window: 0,
            shingle: 1,
            season_bins: 24,
            season_strength: 0.3,
            season_weight: 0.05,
        }
    }
}

/// Streaming features of one series (see the module doc).
#[derive(Clone, Debug)]
pub struct SeriesContext {
    params: ContextParams,
    short: Window,
    long: Option<Window>,
    last: Option<f64>,
    zs: VecDeque<f64>,
    /// (level, visits) per time-of-day bin.
    bins: Vec<(f64, u64)>,
    seasonal: bool,
    /// Mean absolute seasonal residual (exponentially weighted).
    res_scale: f64,
    res_seen: u64,
}

impl SeriesContext {
    /// A fresh extractor.
    pub fn new(params: ContextParams) -> SeriesContext {
        SeriesContext {
            short: Window::new(params.window),
            long: (params.long_window > 0).then(|| Window::new(params.long_window)),
            last: None,
            zs: VecDeque::with_capacity(params.shingle.max(1)),
            bins: vec![(0.0, 0); params.season_bins],
            seasonal: false,
            res_scale: 0.0,
            res_seen: 0,
            params,
        }
    }

    /// Dimension of the vectors: the shingle, the step, the seasonal residual
    /// (and the long z-score).
    pub fn dims(&self) -> usize {
        self.params.shingle.max(1) + 2 + usize::from(self.long.is_some())
    }

    /// Whether the seasonal residual is in use.
    pub fn seasonal(&self) -> bool {
        self.seasonal
    }

    fn bin(&self, ts_ms: Option<i64>) -> Option<usize> {
        let n = self.params.season_bins;
        let ts = ts_ms?;
        (n > 0).then(|| (ts.rem_euclid(DAY_MS) as i128 * n as i128 / DAY_MS as i128) as usize)
    }

    /// Decide, from the probation's timestamps and values, whether the
    /// time-of-day profile is used from now on (see the module doc).
    pub fn decide_season(&mut self, stamps: &[Option<i64>], values: &[f64]) {
        self.seasonal = false;
        let n = self.params.season_bins;
        if n == 0 || values.len() < 2 * n {
            return;
        }
        let known: Vec<i64> = stamps.iter().flatten().copied().collect();
        let (Some(lo), Some(hi)) = (known.iter().min(), known.iter().max()) else { return };
        if hi - lo < DAY_MS {
            return;
        }
        let mut sums = vec![(0.0, 0usize); n];
        let mut used = Vec::with_capacity(values.len());
        for (t, x) in stamps.iter().zip(values) {
            if let Some(b) = self.bin(*t) {
                sums[b].0 += x;
                sums[b].1 += 1;
                used.push((b, *x));
            }
        }
        let mean = used.iter().map(|(_, x)| x).sum::<f64>() / used.len().max(1) as f64;
        let total: f64 = used.iter().map(|(_, x)| (x - mean).powi(2)).sum();
        let within: f64 = used.iter().map(|(b, x)| (x - sums[*b].0 / sums[*b].1 as f64).powi(2)).sum();
        if total > 0.0 && 1.0 - within / total >= self.params.season_strength {
            self.seasonal = true;
        }
    }

    /// Feed one finite value (with its time, if known) and write its feature
    /// vector into `out` (cleared first).
    pub fn push(&mut self, ts_ms: Option<i64>, x: f64, out: &mut Vec<f64>) {
        debug_assert!(x.is_finite());
        let (level, scale) = self.short.level_scale(x);
        let z = (x - level) / scale;
        let dz = self.last.map_or(0.0, |l| (x - l) / scale);
        let bin = self.bin(ts_ms);
        let residual = match bin {
            Some(b) if self.bins[b].1 > 0 => Some(x - self.bins[b].0),
            _ => None,
        };
        let season = match residual {
            Some(r) if self.seasonal => squash(r / self.res_scale.max(1e-3 * scale)),
            _ => 0.0,
        };

        // Update the window, the profile and the residual scale.
        let long = self.long.as_ref().map(|w| {
            let (l, s) = w.level_scale(x);
            squash((x - l) / s)
        });
        self.short.push(x);
        if let Some(w) = &mut self.long {
            w.push(x);
        }
        if let Some(b) = bin {
            let (lvl, visits) = &mut self.bins[b];
            *visits += 1;
            let w = (1.0 / *visits as f64).max(self.params.season_weight);
            *lvl += w * (x - *lvl);
        }
        if let Some(r) = residual {
            self.res_seen += 1;
            let w = (1.0 / self.res_seen as f64).max(0.01);
            self.res_scale += w * (r.abs() - self.res_scale);
        }
        self.last = Some(x);

        let k = self.params.shingle.max(1);
        if self.zs.len() == k {
            self.zs.pop_back();
        }
        self.zs.push_front(squash(z));
        out.clear();
        out.extend(self.zs.iter().copied());
        out.resize(k, 0.0);
        out.push(squash(dz));
        out.push(season);
        out.extend(long);
    }
}

/// The last `cap` values, also kept sorted: O(cap) per push (a memmove).
#[derive(Clone, Debug)]
struct Window {
    cap: usize,
    ring: VecDeque<f64>,
    sorted: Vec<f64>,
}

impl Window {
    fn new(cap: usize) -> Window {
        let cap = cap.max(1);
        Window { cap, ring: VecDeque::with_capacity(cap), sorted: Vec::with_capacity(cap) }
    }

    fn push(&mut self, x: f64) {
        if self.ring.len() == self.cap {
            let old = self.ring.pop_front().unwrap_or(x);
            let at = self.sorted.partition_point(|v| *v < old);
            self.sorted.remove(at);
        }
        self.ring.push_back(x);
        let at = self.sorted.partition_point(|v| *v < x);
        self.sorted.insert(at, x);
    }

    /// Robust (level, scale) of the window; (x, 1) while it is empty.
    fn level_scale(&self, x: f64) -> (f64, f64) {
        let n = self.sorted.len();
        if n == 0 {
            return (x, 1.0);
        }
        let q = |f: f64| self.sorted[((n - 1) as f64 * f).round() as usize];
        let median = q(0.5);
        let mut scale = (q(0.75) - q(0.25)) / 1.349;
        if scale <= 0.0 {
            scale = self.sorted.iter().map(|v| (v - median).abs()).sum::<f64>() / n as f64;
        }
        (median, scale.max(1e-9 * median.abs()).max(1e-300))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day_series(days: usize, step_min: i64) -> (Vec<Option<i64>>, Vec<f64>) {
        let per_day = (1440 / step_min) as usize;
        (0..days * per_day)
            .map(|i| {
                let t = i as i64 * step_min * 60_000;
                let phase = (t % DAY_MS) as f64 / DAY_MS as f64;
                (Some(t), 100.0 + 30.0 * (std::f64::consts::TAU * phase).sin() + ((i * 7919) % 11) as f64 * 0.3)
            })
            .unzip()
    }

    #[test]
    fn a_daily_cycle_is_found_and_noise_is_not() {
        let (t, v) = day_series(3, 5);
        let mut c = SeriesContext::new(ContextParams::default());
        c.decide_season(&t, &v);
        assert!(c.seasonal());
        let noise: Vec<f64> = (0..v.len()).map(|i| ((i * 7919) % 101) as f64).collect();
        c.decide_season(&t, &noise);
        assert!(!c.seasonal());
        // Less than a day of probation: no profile.
        c.decide_season(&t[..200], &v[..200]);
        assert!(!c.seasonal());
    }

    #[test]
    fn a_value_usual_by_level_but_not_for_the_time_of_day_stands_out() {
        let (t, v) = day_series(6, 5);
        let mut c = SeriesContext::new(ContextParams { shingle: 2, ..ContextParams::default() });
        c.decide_season(&t[..864], &v[..864]);
        let mut out = Vec::new();
        let mut calm: f64 = 0.0;
        for i in 0..v.len() - 1 {
            c.push(t[i], v[i], &mut out);
            if i > 1000 {
                calm = calm.max(out[3].abs());
            }
        }
        // The last row is at phase ~1 (value ~100); give it the daily peak, 130.
        c.push(t[v.len() - 1], 130.0, &mut out);
        assert_eq!(out.len(), 4);
        assert!(out[3] > calm + 1.0, "seasonal residual {} vs calm {calm}", out[3]);
    }

    #[test]
    fn level_shifts_are_absorbed_and_constants_stay_finite() {
        let mut c = SeriesContext::new(ContextParams { window: 50, shingle: 2, ..ContextParams::default() });
        let mut out = Vec::new();
        for i in 0..200 {
            c.push(None, if i < 100 { 10.0 } else { 1000.0 } + (i % 3) as f64, &mut out);
            assert!(out.iter().all(|v| v.is_finite()));
            if i == 100 {
                assert!(out[0] > 3.0, "the shift stands out: {out:?}");
            }
        }
        assert!(out[0].abs() < 1.5, "absorbed: {out:?}");
        let mut c = SeriesContext::new(ContextParams { shingle: 2, ..ContextParams::default() });
        for _ in 0..100 {
            c.push(Some(0), 5.0, &mut out);
            assert_eq!(out, vec![0.0; 4]);
        }
    }
}
