//! Retries of a failed downstream call: exponential backoff with full jitter.
//!
//! Retrying at once, or on a fixed beat, makes every client that failed together
//! retry together and knocks a recovering endpoint over again. Full jitter (AWS's
//! "Exponential Backoff and Jitter") draws each delay uniformly below a bound that
//! doubles per retry, which spreads retries out and keeps the expected wait low.

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How many times and how patiently a failed call is tried again.
///
/// With the defaults a call is made at most 5 times; the 4 retries wait uniformly
/// up to 10 s, 20 s, 40 s and 80 s: about 75 s in all on average, 150 s at most.
/// A few attempts spread over minutes ride out a throttle, a deploy or a brief
/// 5xx storm without hammering the endpoint while it recovers. `cap_ms`
/// (5 minutes) only binds from the 6th retry on, if `max_attempts` is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included. Default 5.
    pub max_attempts: u32,
    /// Base of the exponential bound, in ms. Default 5 000.
    pub base_ms: u64,
    /// Largest bound of a delay, in ms. Default 300 000.
    pub cap_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 5, base_ms: 5_000, cap_ms: 300_000 }
    }
}

impl RetryPolicy {
    /// Whether another attempt may follow `attempts_made` attempts.
    pub fn may_retry(&self, attempts_made: u32) -> bool {
        attempts_made < self.max_attempts
    }

    /// Upper bound of the delay before retry `retry` (1 for the first retry):
    /// `min(cap_ms, base_ms × 2^retry)`, saturating instead of overflowing.
    pub fn bound_ms(&self, retry: u32) -> u64 {
        let factor = 1u64.checked_shl(retry).unwrap_or(u64::MAX);
        self.base_ms.saturating_mul(factor).min(self.cap_ms)
    }

    /// The delay before retry `retry` (1 for the first retry): uniform in `[0, bound_ms(retry)]`.
    pub fn delay_ms(&self, retry: u32, rng: &mut impl Rng) -> u64 {
        rng.gen_range(0..=self.bound_ms(retry))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn attempts_are_capped() {
        let p = RetryPolicy::default();
        assert!(p.may_retry(1));
        assert!(p.may_retry(4));
        assert!(!p.may_retry(5));

        assert!(!RetryPolicy { max_attempts: 0, ..p }.may_retry(0));
    }

    #[test]
    fn bounds_double_then_cap() {
        let p = RetryPolicy::default();
        assert_eq!(
            [1, 2, 3, 4, 5, 6, 7].map(|n| p.bound_ms(n)),
            [10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
    }

    #[test]
    fn delays_stay_within_bounds() {
        let p = RetryPolicy::default();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for n in 1..10 {
            for _ in 0..1_000 {
                assert!(p.delay_ms(n, &mut rng) <= p.bound_ms(n));
            }
        }
    }

    #[test]
    fn mean_is_half_the_bound() {
        let p = RetryPolicy::default();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        for n in [1, 3, 8] {
            let draws = 100_000;
            let mean = (0..draws).map(|_| p.delay_ms(n, &mut rng) as f64).sum::<f64>() / draws as f64;
            let half = p.bound_ms(n) as f64 / 2.0;
            assert!((mean - half).abs() < 0.01 * half, "retry {n}: mean {mean}, expected {half}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let p = RetryPolicy::default();
        let draw = |seed| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            (1..6).map(|n| p.delay_ms(n, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn huge_retries_do_not_overflow() {
        let p = RetryPolicy { max_attempts: u32::MAX, base_ms: u64::MAX / 3, cap_ms: u64::MAX };
        assert_eq!(p.bound_ms(63), u64::MAX);
        assert_eq!(p.bound_ms(64), u64::MAX);
        assert_eq!(p.bound_ms(u32::MAX), u64::MAX);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        let _ = p.delay_ms(u32::MAX, &mut rng);
        assert!(RetryPolicy::default().delay_ms(u32::MAX, &mut rng) <= 300_000);
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        assert_eq!(crate::test_util::from_pairs::<RetryPolicy>(&[]).unwrap(), RetryPolicy::default());
        assert!(crate::test_util::from_pairs::<RetryPolicy>(&[("base", 1)]).is_err());
    }
}
