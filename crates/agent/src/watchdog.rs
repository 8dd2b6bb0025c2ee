//! The watchdog: inaction is a decision.
//!
//! A tabular policy decides each state from its own experience of that state.
//! Where the experience is thin (a rare combination of faults, a late stage of
//! an incident that training seldom reached) the greedy choice can be `NoOp`
//! for no better reason than exploration noise, and a pipeline is then left to
//! burn with nobody on it: the worst outcome an on-call engineer can imagine.
//! The watchdog bounds that tail whatever the table says. It counts the
//! consecutive unhealthy windows in which nothing was done (no action, no
//! page, no backpressure holding ingest); when the count reaches
//! [`WatchdogConfig::windows`] it fires:
//!
//! - the first firing of an incident **escalates** (a person is paged with the
//!   trail), since a person is the one remedy that fits every fault;
//! - a later firing in the same incident (the person is on it, the policy still
//!   idles) **falls back** to the rule policy's action, the runbook's answer.
//!
//! A window in which ingest is throttled is **held**, not idle: backpressure is
//! a remedy that stays in force, and waiting behind it is how a downstream
//! outage is ridden out (the oracle waits up to 34 windows there on held-out
//! seeds; paging, or the runbook's restart, would only make it worse).
//!
//! An incident ends only after [`WatchdogConfig::clear_after`] consecutive
//! healthy windows, the way a CloudWatch alarm returns to `OK` only when
//! enough datapoints of its evaluation period say so (`DatapointsToAlarm`,
//! <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/AlarmThatSendsEmail.html#alarm-evaluation>).
//! Telemetry flickers: a stuck job between two failed retries, an outage
//! whose errors pause for a minute, look healthy for a window or two. Without
//! the hysteresis such a window wiped the idle count, and a pipeline that the
//! ground truth called unhealthy throughout was left idle past the watchdog.
//! Inside an open incident a healthy-looking window in which nothing is done
//! counts as idle.
//!
//! It also escalates once when an incident has lasted
//! [`WatchdogConfig::stale_after`] windows without a page, whatever was tried:
//! actions that do not help are no better than none.
//!
//! One implementation serves the evaluation harness (through
//! [`crate::supervise::Supervised`]) and the sidecar's decision core, so the
//! tail `evaluate` measures is the tail the sidecar has. Sync and pure: it is
//! told each window's health and each executed action.

use selfheal_core::Action;
use serde::{Deserialize, Serialize};

/// When the watchdog fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Consecutive unhealthy windows with no action and no page after which
    /// the watchdog fires (≥ 1). Default 10.
    ///
    /// Why 10 (in windows of one CloudWatch period, a minute in the shipped
    /// scenario): a stalled pipeline in the shipped scenario starts losing
    /// records after `backlog_limit / arrivals` = 120 / 2 = 60 windows; a paged
    /// person fixes a fault with probability 0.25 per window, so within 16
    /// windows in 99 % of incidents (1 − 0.75¹⁶ ≈ 0.99), and draining the
    /// backlog at the top worker level takes at most 60 × 2 / 5 = 24 more.
    /// 10 + 16 + 24 = 50 < 60 windows: firing at 10 leaves room for the person
    /// to fix the fault before a record is lost. It is also past the time the
    /// SLO allows a quiet wait: the oracle's own longest idle unhealthy streak
    /// (measured in `benches/RESULTS.md`) stays below it on the held-out seeds,
    /// so a policy that waits wisely (through a throttled downstream outage) is
    /// rarely overruled.
    pub windows: u32,
    /// Windows an incident may last without a page, whatever was tried, before
    /// the watchdog escalates once (≥ `windows`). Default 40.
    pub stale_after: u32,
    /// Consecutive healthy windows that end an incident (≥ 1). Default 3.
    ///
    /// Why 3: in the default scenario driven by the rule policy over seeds
    /// 0..2000 (outside every evaluation range), the runs of windows that
    /// looked healthy (not anomalous, SLO met) while the ground truth had an
    /// incident open were 592 of one window, 14 of two and 4 of three; none
    /// longer. Three ends an incident only after more than 99 % of such
    /// flickers would have passed, and costs at most two windows of an
    /// incident that really ended.
    pub clear_after: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig { windows: 10, stale_after: 40, clear_after: 3 }
    }
}

/// A watchdog parameter out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchdogError {
    /// `windows` is 0.
    #[error("watchdog.windows must be at least 1 (got 0)")]
    ZeroWindows,
    /// `clear_after` is 0.
    #[error("watchdog.clear_after must be at least 1 (got 0)")]
    ZeroClear,
    /// `stale_after` is below `windows`.
    #[error("watchdog.stale_after ({stale_after}) must be at least watchdog.windows ({windows})")]
    StaleBeforeIdle {
        /// The configured `windows`.
        windows: u32,
        /// The configured `stale_after`.
        stale_after: u32,
    },
}

impl WatchdogConfig {
    /// Check the parameters.
    ///
    /// # Errors
    /// [`WatchdogError`] naming the bad field.
    pub fn check(&self) -> Result<(), WatchdogError> {
        if self.windows == 0 {
            return Err(WatchdogError::ZeroWindows);
        }
        if self.clear_after == 0 {
            return Err(WatchdogError::ZeroClear);
        }
        if self.stale_after < self.windows {
            return Err(WatchdogError::StaleBeforeIdle { windows: self.windows, stale_after: self.stale_after });
        }
        Ok(())
    }
}

/// A window's health, as the watchdog counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Healthy: any incident is over.
    Healthy,
    /// Unhealthy, and nothing holds it.
    Unhealthy,
    /// Unhealthy, with a sustained remedy in force (ingest throttled).
    Held,
}

impl Health {
    /// From the stack's verdict on the window and whether ingest is throttled.
    pub fn of(unhealthy: bool, throttled: bool) -> Health {
        match (unhealthy, throttled) {
            (false, _) => Health::Healthy,
            (true, true) => Health::Held,
            (true, false) => Health::Unhealthy,
        }
    }
}

/// What the watchdog demands for the window being decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Nothing: the policy decides.
    Quiet,
    /// Page a person (first firing of the incident, or a stale incident).
    Escalate,
    /// A person was paged and the policy still idles: take the rule policy's action.
    Fallback,
}

/// The watchdog of one pipeline.
#[derive(Clone, Debug)]
pub struct Watchdog {
    cfg: WatchdogConfig,
    /// Consecutive unhealthy windows with nothing executed.
    idle: u32,
    /// Windows the current incident has lasted.
    age: u32,
    /// A person was paged in this incident.
    escalated: bool,
    /// Consecutive healthy windows inside the open incident.
    healthy_run: u32,
}

impl Watchdog {
    /// A watchdog; `cfg` should have passed [`WatchdogConfig::check`] (a zero
    /// `windows` is treated as 1).
    pub fn new(cfg: WatchdogConfig) -> Watchdog {
        let windows = cfg.windows.max(1);
        let cfg =
            WatchdogConfig { windows, stale_after: cfg.stale_after.max(windows), clear_after: cfg.clear_after.max(1) };
        Watchdog { cfg, idle: 0, age: 0, escalated: false, healthy_run: 0 }
    }

    /// Its configuration.
    pub fn config(&self) -> WatchdogConfig {
        self.cfg
    }

    /// Forget the current incident (start of an episode).
    pub fn reset(&mut self) {
        self.idle = 0;
        self.age = 0;
        self.escalated = false;
        self.healthy_run = 0;
    }

    /// Note the health of the window about to be decided and say what the
    /// watchdog demands for it. `clear_after` healthy windows in a row end
    /// the incident (before that, a healthy window of an open incident counts
    /// like an unhealthy one); a held window (unhealthy, a sustained remedy
    /// such as backpressure in force) ages the incident but is not idle.
    pub fn observe(&mut self, health: Health) -> Call {
        match health {
            Health::Healthy => {
                self.healthy_run += 1;
                if self.age == 0 || self.healthy_run >= self.cfg.clear_after {
                    self.reset();
                    return Call::Quiet;
                }
                self.idle += 1;
            }
            Health::Held => {
                self.healthy_run = 0;
                self.idle = 0;
            }
            Health::Unhealthy => {
                self.healthy_run = 0;
                self.idle += 1;
            }
        }
        self.age += 1;
        if self.idle >= self.cfg.windows {
            if self.escalated {
                Call::Fallback
            } else {
                Call::Escalate
            }
        } else if self.age >= self.cfg.stale_after && !self.escalated {
            Call::Escalate
        } else {
            Call::Quiet
        }
    }

    /// Note the action executed for the window last observed.
    pub fn record(&mut self, executed: Action) {
        if executed != Action::NoOp {
            self.idle = 0;
        }
        if executed == Action::Escalate && self.age > 0 {
            self.escalated = true;
        }
    }

    /// Consecutive unhealthy windows with nothing executed, up to the last observed.
    pub fn idle(&self) -> u32 {
        self.idle
    }

    /// Windows the current incident has lasted (0 when healthy).
    pub fn age(&self) -> u32 {
        self.age
    }

    /// Whether a person was paged in the current incident.
    pub fn escalated(&self) -> bool {
        self.escalated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dog(windows: u32) -> Watchdog {
        Watchdog::new(WatchdogConfig { windows, stale_after: 100, clear_after: 1 })
    }

    #[test]
    fn fires_after_n_idle_unhealthy_windows_then_escalates_once() {
        let mut w = dog(3);
        assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
        w.record(Action::NoOp);
        assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
        w.record(Action::NoOp);
        assert_eq!(w.observe(Health::Unhealthy), Call::Escalate, "the third idle window fires");
        w.record(Action::Escalate);
        assert!(w.escalated());
        for _ in 0..2 {
            assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
            w.record(Action::NoOp);
        }
        assert_eq!(w.observe(Health::Unhealthy), Call::Fallback, "paged already: the rules' action, not a second page");
    }

    #[test]
    fn an_action_restarts_the_count_and_health_ends_the_incident() {
        let mut w = dog(2);
        assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
        w.record(Action::Restart);
        assert_eq!(w.observe(Health::Unhealthy), Call::Quiet, "the restart reset the idle count");
        w.record(Action::NoOp);
        assert_eq!(w.observe(Health::Unhealthy), Call::Escalate);
        w.record(Action::Escalate);
        assert_eq!(w.observe(Health::Healthy), Call::Quiet);
        assert!(!w.escalated() && w.age() == 0 && w.idle() == 0);
        w.record(Action::Escalate);
        assert!(!w.escalated(), "a page in a healthy window opens no incident");
    }

    #[test]
    fn a_held_window_is_not_idle_but_ages_the_incident() {
        let mut w = Watchdog::new(WatchdogConfig { windows: 2, stale_after: 6, clear_after: 1 });
        assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
        w.record(Action::Backpressure);
        for _ in 0..4 {
            assert_eq!(w.observe(Health::Held), Call::Quiet);
            w.record(Action::NoOp);
        }
        assert_eq!(w.idle(), 0);
        assert_eq!(w.observe(Health::Held), Call::Escalate, "six windows without a page: stale");
        assert_eq!(Health::of(true, true), Health::Held);
        assert_eq!(Health::of(false, true), Health::Healthy);
    }

    #[test]
    fn a_stale_incident_is_escalated_even_while_acting() {
        let mut w = Watchdog::new(WatchdogConfig { windows: 3, stale_after: 5, clear_after: 1 });
        for i in 1..=5 {
            let call = w.observe(Health::Unhealthy);
            assert_eq!(call, if i == 5 { Call::Escalate } else { Call::Quiet }, "window {i}");
            w.record(if call == Call::Escalate { Action::Escalate } else { Action::RetryWithBackoff });
        }
        for _ in 0..10 {
            assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
            w.record(Action::RetryWithBackoff);
        }
    }

    #[test]
    fn a_flicker_of_health_does_not_end_the_incident() {
        let mut w = Watchdog::new(WatchdogConfig { windows: 4, stale_after: 100, clear_after: 3 });
        for _ in 0..2 {
            assert_eq!(w.observe(Health::Unhealthy), Call::Quiet);
            w.record(Action::NoOp);
        }
        // Two healthy-looking windows: the incident stays open and idle grows.
        assert_eq!(w.observe(Health::Healthy), Call::Quiet);
        w.record(Action::NoOp);
        assert_eq!(w.observe(Health::Healthy), Call::Escalate, "four idle windows of one incident");
        w.record(Action::Escalate);
        assert!(w.escalated());
        // Three healthy windows in a row end it.
        for _ in 0..3 {
            assert_eq!(w.observe(Health::Healthy), Call::Quiet);
            w.record(Action::NoOp);
        }
        assert!(!w.escalated() && w.age() == 0 && w.idle() == 0);
        // A healthy window with no incident open opens none.
        assert_eq!(w.observe(Health::Healthy), Call::Quiet);
        assert_eq!(w.age(), 0);
    }

    #[test]
    fn parameters_are_checked() {
        assert_eq!(
            WatchdogConfig { windows: 0, stale_after: 5, clear_after: 1 }.check(),
            Err(WatchdogError::ZeroWindows)
        );
        assert!(WatchdogConfig { windows: 6, stale_after: 5, clear_after: 1 }.check().is_err());
        assert_eq!(
            WatchdogConfig { windows: 2, stale_after: 5, clear_after: 0 }.check(),
            Err(WatchdogError::ZeroClear)
        );
        assert!(WatchdogConfig::default().check().is_ok());
        let w: WatchdogConfig = serde_json::from_str(r#"{"windows": 4}"#).unwrap();
        assert_eq!(w, WatchdogConfig { windows: 4, ..WatchdogConfig::default() });
        assert!(serde_json::from_str::<WatchdogConfig>(r#"{"window": 4}"#).is_err());
    }
}
