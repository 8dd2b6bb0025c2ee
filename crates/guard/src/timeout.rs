//! A call timeout learned from the endpoint's own latencies.
//!
//! A fixed timeout is either too short for a slow-but-healthy endpoint or too long
//! to notice a hung one. Scaling the median of recent successful latencies adapts
//! to each endpoint; the median ignores the odd outlier, and the clamp keeps the
//! timeout sane while there is little to learn from.

use crate::InvalidConfig;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Settings of a learned timeout.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutConfig {
    /// Timeout before any latency is observed (clamped to `[min_ms, max_ms]`). Default 10 000.
    pub initial_ms: u64,
    /// Shortest timeout. Default 1 000.
    pub min_ms: u64,
    /// Longest timeout. Default 60 000.
    pub max_ms: u64,
    /// Timeout = `factor` × median latency. Default 1.5.
    pub factor: f64,
    /// Number of most recent latencies the median is taken over. Default 50.
    pub window: usize,
}

impl Default for TimeoutConfig {
    fn default() -> Self {
        TimeoutConfig { initial_ms: 10_000, min_ms: 1_000, max_ms: 60_000, factor: 1.5, window: 50 }
    }
}

impl TimeoutConfig {
    /// Check the settings: `min_ms <= max_ms`, `factor` finite and at least 1, `window` at least 1.
    ///
    /// Why `factor >= 1`: only successful calls feed the median, so with a
    /// factor below 1 the slower half of healthy calls time out, the median is
    /// learned from the fast ones only, the timeout ratchets down to `min_ms`
    /// and the failure rate opens the breaker on a healthy endpoint.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.min_ms > self.max_ms {
            return Err(InvalidConfig(format!("timeout: min_ms {} exceeds max_ms {}", self.min_ms, self.max_ms)));
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            return Err(InvalidConfig(format!("timeout: factor must be finite and at least 1, got {}", self.factor)));
        }
        if self.window == 0 {
            return Err(InvalidConfig("timeout: window must be at least 1".into()));
        }
        Ok(())
    }
}

/// A timeout for one endpoint, learned from its successful calls.
#[derive(Clone, Debug)]
pub struct LearnedTimeout {
    config: TimeoutConfig,
    latencies: VecDeque<u64>,
}

impl LearnedTimeout {
    /// A timeout that has seen nothing yet.
    pub fn new(config: TimeoutConfig) -> Result<LearnedTimeout, InvalidConfig> {
        config.validate()?;
        Ok(LearnedTimeout { config, latencies: VecDeque::with_capacity(config.window) })
    }

    /// Record the latency of a successful call (failures and timeouts say nothing
    /// about how long a healthy call takes, so leave them out).
    pub fn observe(&mut self, latency_ms: u64) {
        if self.latencies.len() == self.config.window {
            self.latencies.pop_front();
        }
        self.latencies.push_back(latency_ms);
    }

    /// The timeout to use now: `factor` × median of the recent latencies, rounded up
    /// and clamped to `[min_ms, max_ms]`; `initial_ms`, clamped, before any observation.
    pub fn current_ms(&self) -> u64 {
        let c = &self.config;
        let Some(median) = self.median_ms() else {
            return c.initial_ms.clamp(c.min_ms, c.max_ms);
        };
        // `as` saturates: a huge product becomes u64::MAX, then max_ms.
        ((c.factor * median).ceil() as u64).clamp(c.min_ms, c.max_ms)
    }

    /// Median of the recent latencies (mean of the middle two for an even count).
    pub fn median_ms(&self) -> Option<f64> {
        let mut v: Vec<u64> = self.latencies.iter().copied().collect();
        v.sort_unstable();
        let n = v.len();
        match n {
            0 => None,
            _ if n % 2 == 1 => Some(v[n / 2] as f64),
            _ => Some((v[n / 2 - 1] as f64 + v[n / 2] as f64) / 2.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn learned() -> LearnedTimeout {
        LearnedTimeout::new(TimeoutConfig::default()).unwrap()
    }

    #[test]
    fn initial_before_any_observation() {
        assert_eq!(learned().current_ms(), 10_000);
        let t = LearnedTimeout::new(TimeoutConfig { initial_ms: 500, ..TimeoutConfig::default() }).unwrap();
        assert_eq!(t.current_ms(), 1_000, "initial is clamped too");
    }

    #[test]
    fn factor_times_median() {
        let mut t = learned();
        for l in [4_000, 2_000, 100_000] {
            t.observe(l);
        }
        assert_eq!(t.median_ms(), Some(4_000.0), "the outlier does not move the median");
        assert_eq!(t.current_ms(), 6_000);
        t.observe(3_001);
        assert_eq!(t.median_ms(), Some(3_500.5));
        assert_eq!(t.current_ms(), 5_251, "rounded up");
    }

    #[test]
    fn clamped_to_min_and_max() {
        let mut t = learned();
        t.observe(10);
        assert_eq!(t.current_ms(), 1_000);
        let mut t = learned();
        t.observe(u64::MAX);
        assert_eq!(t.current_ms(), 60_000);
    }

    #[test]
    fn only_the_last_window_counts() {
        let mut t = LearnedTimeout::new(TimeoutConfig { window: 3, ..TimeoutConfig::default() }).unwrap();
        for _ in 0..10 {
            t.observe(30_000);
        }
        for _ in 0..3 {
            t.observe(2_000);
        }
        assert_eq!(t.current_ms(), 3_000);
    }

    #[test]
    fn invalid_config_is_refused() {
        let d = TimeoutConfig::default();
        assert!(LearnedTimeout::new(TimeoutConfig { min_ms: 5, max_ms: 4, ..d }).is_err());
        assert!(LearnedTimeout::new(TimeoutConfig { factor: f64::NAN, ..d }).is_err());
        assert!(LearnedTimeout::new(TimeoutConfig { factor: 0.0, ..d }).is_err());
        assert!(LearnedTimeout::new(TimeoutConfig { factor: 0.8, ..d }).is_err());
        assert!(LearnedTimeout::new(TimeoutConfig { factor: 1.0, ..d }).is_ok());
        assert!(LearnedTimeout::new(TimeoutConfig { window: 0, ..d }).is_err());
        assert_eq!(crate::test_util::from_pairs::<TimeoutConfig>(&[]).unwrap(), d);
        assert!(crate::test_util::from_pairs::<TimeoutConfig>(&[("timeout_ms", 1)]).is_err());
    }
}
