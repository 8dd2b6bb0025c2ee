//! A circuit breaker per downstream endpoint, with resilience4j's semantics.
//!
//! When an endpoint (the Glue API, a pager) is failing, calling it again only adds
//! load and delays its recovery. The breaker watches the outcomes of recent calls
//! and, once too many fail or are slow, short-circuits calls for a while, then lets
//! a few trial calls through to learn whether the endpoint is back. It follows
//! resilience4j's count-based breaker (closed, open, half-open; automatic
//! open-to-half-open transition off), so its settings read the same.

use crate::InvalidConfig;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fmt;

/// Settings of a breaker; names and meaning as in resilience4j. The defaults suit a
/// sidecar calling an endpoint a few times a minute: a window of the last 10 calls
/// judged once 5 are in, a minute's rest once it opens, two trial calls to close again.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Open when at least this share of the window failed, in percent. Default 50.
    pub failure_rate_threshold: f64,
    /// Open when at least this share of the window was slow, in percent. Default 100.
    pub slow_call_rate_threshold: f64,
    /// A call taking longer than this is slow. Default 60 000.
    pub slow_call_duration_ms: u64,
    /// Number of most recent call outcomes the rates are computed over. Default 10.
    pub sliding_window_size: u32,
    /// Calls recorded before the rates are judged at all (capped at the window size). Default 5.
    pub minimum_number_of_calls: u32,
    /// How long the breaker stays open before it lets trial calls through. Default 60 000.
    pub wait_duration_in_open_ms: u64,
    /// Trial calls let through while half-open. Default 2.
    pub permitted_calls_in_half_open: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_ms: 60_000,
            sliding_window_size: 10,
            minimum_number_of_calls: 5,
            wait_duration_in_open_ms: 60_000,
            permitted_calls_in_half_open: 2,
        }
    }
}

impl BreakerConfig {
    /// Check the settings: thresholds in (0, 100], window, minimum and trial calls at least 1.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let pct = |name: &str, v: f64| {
            if v > 0.0 && v <= 100.0 {
                Ok(())
            } else {
                Err(InvalidConfig(format!("breaker: {name} must be in (0, 100], got {v}")))
            }
        };
        pct("failure_rate_threshold", self.failure_rate_threshold)?;
        pct("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        for (name, v) in [
            ("sliding_window_size", self.sliding_window_size),
            ("minimum_number_of_calls", self.minimum_number_of_calls),
            ("permitted_calls_in_half_open", self.permitted_calls_in_half_open),
        ] {
            if v == 0 {
                return Err(InvalidConfig(format!("breaker: {name} must be at least 1")));
            }
        }
        Ok(())
    }
}

/// The state of a breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow; outcomes are recorded.
    Closed,
    /// Calls are rejected until the wait is over.
    Open,
    /// A few trial calls decide between closed and open.
    HalfOpen,
}

impl BreakerState {
    /// "closed", "open" or "half_open".
    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of a Prometheus state gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A call the breaker did not permit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Open: retry at `retry_at_ms`.
    #[error("circuit breaker open; retry in {} s", wait_ms.div_ceil(1000))]
    Open {
        /// When a call may be tried again (Unix ms).
        retry_at_ms: u64,
        /// Time from the rejected attempt until then.
        wait_ms: u64,
    },
    /// Half-open with every trial call already taken: retry once they complete.
    #[error("circuit breaker half-open; all {permitted} trial calls in flight, retry after they complete")]
    HalfOpenFull {
        /// `permitted_calls_in_half_open`.
        permitted: u32,
    },
}

impl Rejected {
    /// The breaker's state when it rejected.
    pub fn state(&self) -> BreakerState {
        match self {
            Rejected::Open { .. } => BreakerState::Open,
            Rejected::HalfOpenFull { .. } => BreakerState::HalfOpen,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Outcome {
    failed: bool,
    slow: bool,
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Closed,
    Open { retry_at_ms: u64 },
    HalfOpen { permits_left: u32 },
}

/// A circuit breaker for one endpoint. Ask [`Breaker::try_acquire`] before each call
/// and report its outcome with [`Breaker::on_success`] or [`Breaker::on_failure`]
/// (or [`Breaker::release`] if the permitted call was not made after all).
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
    /// Outcomes since the last transition: the sliding window when closed, the trial calls when half-open.
    window: VecDeque<Outcome>,
    rejected: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Result<Breaker, InvalidConfig> {
        config.validate()?;
        Ok(Breaker { config, inner: Inner::Closed, window: VecDeque::new(), rejected: 0 })
    }

    /// The settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The current state. An open breaker whose wait is over still reads open until
    /// the next [`Breaker::try_acquire`] moves it to half-open.
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Calls rejected so far (resilience4j's not-permitted calls).
    pub fn rejected_total(&self) -> u64 {
        self.rejected
    }

    /// Failure rate of the recorded calls in percent, once enough are recorded to judge it.
    pub fn failure_rate(&self) -> Option<f64> {
        self.rate(|o| o.failed)
    }

    /// Slow call rate of the recorded calls in percent, once enough are recorded to judge it.
    pub fn slow_call_rate(&self) -> Option<f64> {
        self.rate(|o| o.slow)
    }

    /// Ask to make a call at `now_ms`. Closed: permitted. Open: rejected until the
    /// wait is over, then the breaker turns half-open and this asks again. Half-open:
    /// permitted while trial calls remain.
    pub fn try_acquire(&mut self, now_ms: u64) -> Result<(), Rejected> {
        if let Inner::Open { retry_at_ms } = self.inner {
            if now_ms < retry_at_ms {
                self.rejected += 1;
                return Err(Rejected::Open { retry_at_ms, wait_ms: retry_at_ms - now_ms });
            }
            self.transition(Inner::HalfOpen { permits_left: self.config.permitted_calls_in_half_open });
        }
        match &mut self.inner {
            Inner::Closed => Ok(()),
            Inner::HalfOpen { permits_left } if *permits_left > 0 => {
                *permits_left -= 1;
                Ok(())
            }
            _ => {
                self.rejected += 1;
                Err(Rejected::HalfOpenFull { permitted: self.config.permitted_calls_in_half_open })
            }
        }
    }

    /// Give back a permit whose call was not made (e.g. the bulkhead refused it), so a
    /// half-open breaker does not wait for a trial call that never comes.
    pub fn release(&mut self) {
        if let Inner::HalfOpen { permits_left } = &mut self.inner {
            *permits_left = (*permits_left + 1).min(self.config.permitted_calls_in_half_open);
        }
    }

    /// A permitted call succeeded after `duration_ms`, finishing at `now_ms`.
    pub fn on_success(&mut self, now_ms: u64, duration_ms: u64) {
        self.record(now_ms, Outcome { failed: false, slow: duration_ms > self.config.slow_call_duration_ms });
    }

    /// A permitted call failed after `duration_ms`, finishing at `now_ms`.
    pub fn on_failure(&mut self, now_ms: u64, duration_ms: u64) {
        self.record(now_ms, Outcome { failed: true, slow: duration_ms > self.config.slow_call_duration_ms });
    }

    /// Calls needed before the rates are judged in the current state.
    fn minimum_calls(&self) -> usize {
        match self.inner {
            Inner::Closed => self.config.minimum_number_of_calls.min(self.config.sliding_window_size) as usize,
            _ => self.config.permitted_calls_in_half_open as usize,
        }
    }

    fn rate(&self, pick: impl Fn(&Outcome) -> bool) -> Option<f64> {
        if matches!(self.inner, Inner::Open { .. }) || self.window.len() < self.minimum_calls() {
            return None;
        }
        Some(100.0 * self.window.iter().filter(|o| pick(o)).count() as f64 / self.window.len() as f64)
    }

    fn thresholds_exceeded(&self) -> Option<bool> {
        let (failure, slow) = (self.failure_rate()?, self.slow_call_rate()?);
        Some(failure >= self.config.failure_rate_threshold || slow >= self.config.slow_call_rate_threshold)
    }

    fn record(&mut self, now_ms: u64, outcome: Outcome) {
        let open = Inner::Open { retry_at_ms: now_ms.saturating_add(self.config.wait_duration_in_open_ms) };
        match self.inner {
            // A late outcome of a call permitted before the breaker opened.
            Inner::Open { .. } => {}
            Inner::Closed => {
                if self.window.len() == self.config.sliding_window_size as usize {
                    self.window.pop_front();
                }
                self.window.push_back(outcome);
                if self.thresholds_exceeded() == Some(true) {
                    self.transition(open);
                }
            }
            Inner::HalfOpen { .. } => {
                self.window.push_back(outcome);
                match self.thresholds_exceeded() {
                    Some(true) => self.transition(open),
                    Some(false) => self.transition(Inner::Closed),
                    None => {}
                }
            }
        }
    }

    fn transition(&mut self, to: Inner) {
        self.inner = to;
        self.window.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: u64 = 60_000;

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default()).unwrap()
    }

    /// A breaker opened at time 0 by five failures.
    fn opened() -> Breaker {
        let mut b = breaker();
        for _ in 0..5 {
            b.try_acquire(0).unwrap();
            b.on_failure(0, 100);
        }
        assert_eq!(b.state(), BreakerState::Open);
        b
    }

    #[test]
    fn opens_on_repeated_failures_once_minimum_calls_are_in() {
        let mut b = breaker();
        for i in 0..4 {
            b.try_acquire(i).unwrap();
            b.on_failure(i, 100);
            assert_eq!(b.state(), BreakerState::Closed, "only {} calls recorded", i + 1);
            assert_eq!(b.failure_rate(), None);
        }
        b.try_acquire(4).unwrap();
        b.on_failure(4, 100);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn window_slides_and_opens_at_the_threshold() {
        let mut b = breaker();
        b.on_failure(0, 100);
        b.on_failure(1, 100);
        for i in 2..10 {
            b.on_success(i, 100);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failure_rate(), Some(20.0));
        // The oldest outcome (a failure) leaves the window of 10 as a new one comes in.
        b.on_success(10, 100);
        assert_eq!(b.failure_rate(), Some(10.0));
        for i in 11..15 {
            b.on_failure(i, 100);
        }
        assert_eq!(b.failure_rate(), Some(40.0));
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(15, 100); // 5 of 10: exactly the threshold opens
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn open_short_circuits_until_the_wait_is_over() {
        let mut b = opened();
        let err = b.try_acquire(1_000).unwrap_err();
        assert_eq!(err, Rejected::Open { retry_at_ms: WAIT, wait_ms: WAIT - 1_000 });
        assert_eq!(err.state(), BreakerState::Open);
        assert_eq!(err.to_string(), "circuit breaker open; retry in 59 s");
        assert!(b.try_acquire(WAIT - 1).is_err());
        assert_eq!(b.rejected_total(), 2);
        assert_eq!(b.state(), BreakerState::Open, "no automatic transition");
        assert!(b.try_acquire(WAIT).is_ok());
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_permits_only_the_trial_calls() {
        let mut b = opened();
        b.try_acquire(WAIT).unwrap();
        b.try_acquire(WAIT).unwrap();
        assert_eq!(b.try_acquire(WAIT).unwrap_err(), Rejected::HalfOpenFull { permitted: 2 });
        assert_eq!(b.rejected_total(), 1);
        b.release();
        assert!(b.try_acquire(WAIT).is_ok(), "a released permit can be taken again");
    }

    #[test]
    fn recovers_to_closed_on_successful_trials() {
        let mut b = opened();
        b.try_acquire(WAIT).unwrap();
        b.try_acquire(WAIT).unwrap();
        b.on_success(WAIT + 10, 10);
        assert_eq!(b.state(), BreakerState::HalfOpen, "decided only once both trials are in");
        b.on_success(WAIT + 20, 10);
        assert_eq!(b.state(), BreakerState::Closed);
        // The window was reset: four failures are not yet enough to judge.
        for i in 0..4 {
            b.on_failure(WAIT + 30 + i, 10);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.failure_rate(), None);
    }

    #[test]
    fn reopens_when_trials_fail() {
        let mut b = opened();
        let t = WAIT + 5_000;
        b.try_acquire(t).unwrap();
        b.try_acquire(t).unwrap();
        b.on_success(t, 10);
        b.on_failure(t + 1, 10); // 1 of 2 = 50 % >= 50 %
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.try_acquire(t + 1).unwrap_err(), Rejected::Open { retry_at_ms: t + 1 + WAIT, wait_ms: WAIT });
    }

    #[test]
    fn slow_calls_open_it_too() {
        let mut b = breaker();
        b.on_success(0, 60_000); // exactly the limit is not slow
        for i in 1..5 {
            b.on_success(i, 60_001);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.slow_call_rate(), Some(80.0));
        for i in 0..5 {
            b.on_success(5 + i, 90_000);
        }
        assert_eq!(b.state(), BreakerState::Closed, "9 of 10 slow, threshold 100 %");
        b.on_success(10, 90_000); // slides the fast one out: 10 of 10
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn late_outcomes_while_open_are_ignored() {
        let mut b = opened();
        b.on_success(10, 10);
        b.on_failure(10, 10);
        assert_eq!(b.state(), BreakerState::Open);
        assert!(b.try_acquire(WAIT).is_ok());
    }

    #[test]
    fn minimum_calls_capped_at_window_size() {
        let config = BreakerConfig { sliding_window_size: 3, minimum_number_of_calls: 100, ..BreakerConfig::default() };
        let mut b = Breaker::new(config).unwrap();
        b.on_failure(0, 1);
        b.on_failure(0, 1);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(0, 1);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn invalid_config_is_refused() {
        let bad = BreakerConfig { failure_rate_threshold: 0.0, ..BreakerConfig::default() };
        assert!(Breaker::new(bad).unwrap_err().to_string().contains("failure_rate_threshold"));
        let bad = BreakerConfig { permitted_calls_in_half_open: 0, ..BreakerConfig::default() };
        assert!(Breaker::new(bad).is_err());
        let c = crate::test_util::from_pairs::<BreakerConfig>(&[("sliding_window_size", 20)]).unwrap();
        assert_eq!(c, BreakerConfig { sliding_window_size: 20, ..BreakerConfig::default() });
        assert!(crate::test_util::from_pairs::<BreakerConfig>(&[("window", 20)]).is_err());
    }

    #[test]
    fn state_names_and_gauge() {
        let all = [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen];
        assert_eq!(all.map(BreakerState::name), ["closed", "open", "half_open"]);
        assert_eq!(all.map(BreakerState::gauge), [0, 1, 2]);
    }
}
