//! Inaction is a decision: the learned policy never leaves an unhealthy
//! pipeline with nothing done for longer than the watchdog allows, in
//! `evaluate`, in `simulate` and in the sidecar's decision core fed the same
//! simulated windows (issue: no idle agent while a pipeline burns).

mod common;

use selfheal_agent::WatchdogConfig;
use selfheal_core::{Action, Metric};

/// The default `watchdog_windows` (checked against the code below).
const W: u32 = 10;

/// The longest run of steps that were unhealthy before the decision, decided
/// `noop`, with nobody paged in the incident and no backpressure holding
/// ingest: the same definition as `evaluate`'s `longest_idle_streak`.
struct Streak {
    healthy: bool,
    paged: bool,
    idle: u32,
    longest: u32,
}

impl Streak {
    fn new() -> Streak {
        Streak { healthy: true, paged: false, idle: 0, longest: 0 }
    }
    /// `throttled`: the window decided on had ingest throttled; `healthy_after`:
    /// ground truth after the step.
    fn step(&mut self, action: Action, throttled: bool, healthy_after: bool) {
        if self.healthy {
            self.paged = false;
        }
        if !self.healthy && action == Action::Escalate {
            self.paged = true;
        }
        if !self.healthy && action == Action::NoOp && !self.paged && !throttled {
            self.idle += 1;
            self.longest = self.longest.max(self.idle);
        } else {
            self.idle = 0;
        }
        self.healthy = healthy_after;
    }
}

#[test]
fn the_default_watchdog_is_the_one_tested() {
    assert_eq!(W, WatchdogConfig::default().windows);
}

#[test]
fn regression_seed_100018_a_stalled_pipeline_is_acted_on_within_the_watchdog_and_loses_nothing() {
    // Seed 100018: a stuck job, then a downstream outage and the novel fault on
    // top. The policy once answered `noop` for 117 unhealthy windows and lost
    // 58,000 records.
    let out = common::selfheal(&["simulate", "--seed", "100018"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let steps: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(steps.len(), 240);
    let stuck = steps
        .iter()
        .position(|s| s["onsets"].as_array().unwrap().iter().any(|f| f == "stuck_job"))
        .expect("seed 100018 has a stuck job");
    // The first window that shows the stall is the one after the onset.
    let acted = steps[stuck + 1..]
        .iter()
        .position(|s| s["action"] != "noop")
        .expect("the policy acts or escalates after the stall");
    assert!(acted < W as usize, "first action {} windows after the stall (watchdog: {W})", acted + 1);
    let mut streak = Streak::new();
    let mut throttled = false;
    for s in &steps {
        let action = Action::ALL.into_iter().find(|a| s["action"] == a.name()).unwrap();
        streak.step(action, throttled, s["healthy"].as_bool().unwrap());
        throttled = s["telemetry"][Metric::IngestThrottled.name()].as_f64().unwrap_or(0.0) > 0.5;
    }
    assert!(streak.longest <= W, "idle streak of {} windows", streak.longest);
    assert_eq!(steps.last().unwrap()["ledger"]["lost"], 0, "no record lost");
}

#[test]
fn evaluate_over_1000_held_out_seeds_never_idles_past_the_watchdog() {
    let out = common::selfheal(&["evaluate", "--seeds", "100000..101000", "--format", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = |n: &str| c["policies"].as_array().unwrap().iter().find(|p| p["name"] == n).unwrap().clone();
    let (learned, noop) = (line("learned"), line("noop"));
    assert!(
        learned["longest_idle_streak"].as_u64().unwrap() <= u64::from(W),
        "learned idled {} windows",
        learned["longest_idle_streak"]
    );
    assert_eq!(learned["records_lost"], 0);
    assert_eq!(learned["episodes_with_loss"], 0);
    // The measure can fail: the no-op policy idles through whole episodes.
    assert!(noop["longest_idle_streak"].as_u64().unwrap() > 100);
    assert!(noop["episodes_with_loss"].as_u64().unwrap() > 0);
}
