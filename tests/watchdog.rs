//! Inaction is a decision: the learned policy never leaves an unhealthy
//! pipeline with nothing done for longer than the watchdog allows, in
//! `evaluate`, in `simulate` and in the sidecar's decision core fed the same
//! simulated windows (issue: no idle agent while a pipeline burns).

mod common;

use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{EncoderKind, QLearner, RulesPolicy, WatchdogConfig};
use selfheal_core::{Action, Detector, Environment, Metric, RewardV1, StateEncoder};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_guard::budget::BudgetConfig;
use selfheal_guard::confidence::ConfidenceGate;
use selfheal_guard::Mode;
use selfheal_sidecar::decide::{DecideConfig, DecisionCore, EncoderFactory, Parts, Plan};
use selfheal_sidecar::window::Window;
use selfheal_sim::{Scenario, Simulator};
use std::sync::Arc;

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

/// The sidecar's decision core wired like `selfheal run` with the shipped
/// models, in act mode with the default gate and watchdog; the budget is
/// generous so the watchdog, not the budget, is what is tested.
fn sidecar_core() -> DecisionCore {
    let scenario = Scenario::builtin_default();
    let model = ModelFile::load(std::path::Path::new("models/policy.json")).expect("shipped policy");
    let text = std::fs::read_to_string("models/detector.json").unwrap();
    let detector_model = DetectorModel::from_json(&text, "models/detector.json").expect("shipped detector");
    let kind = EncoderKind::parse(&model.encoder.id).expect("a known encoder");
    let enc_cfg = model.encoder.config.clone();
    let detector: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector_model));
    let describe: Arc<dyn StateEncoder + Send + Sync> = Arc::from(kind.build(enc_cfg.clone(), detector.clone()));
    let table = model.table(describe.as_ref()).expect("the policy fits its encoder");
    let encoder: EncoderFactory = {
        let (c, d) = (enc_cfg, detector.clone());
        Arc::new(move || kind.build(c.clone(), d.clone()) as Box<dyn StateEncoder + Send>)
    };
    let rules = RulesFile::load(std::path::Path::new("models/rules.json")).expect("shipped rules");
    let reward = RewardV1 { unit_records: f64::from(scenario.pipeline.unit_records), ..RewardV1::default() };
    let mut learner =
        QLearner::from_table(table, model.params("the shipped model").expect("its params pass their check"), 0);
    learner.set_epsilon(0.0);
    let rules = RulesPolicy::new(rules.thresholds, reward.slo);
    let parts = Parts { encoder, describe, detector, learner, rules, glue: None, reward: Box::new(reward) };
    let cfg = DecideConfig {
        mode: Mode::Act,
        confidence: ConfidenceGate::default(),
        watchdog: WatchdogConfig::default(),
        propose_when_unsure: true,
        approval_ttl_ms: 900_000,
        budget: BudgetConfig { actions_per_hour: 100_000, cooldown_secs: 0, blast_radius: 1_000 },
        reward_windows: 1,
        learn: false,
        epsilon: 0.0,
        log_healthy: false,
        seed: 0,
    };
    DecisionCore::new(cfg, parts, "watchdog-test".into())
}

#[test]
fn the_sidecar_core_fed_the_same_windows_never_idles_past_the_watchdog() {
    assert_eq!(W, WatchdogConfig::default().windows);
    let scenario = Scenario::builtin_default();
    let mut ctl = sidecar_core();
    let mut sim = Simulator::new(&scenario);
    let (mut longest, mut pages) = (0, 0);
    for seed in 100_000..101_000u64 {
        let pipeline = format!("sim-{seed}");
        let mut t = sim.reset(seed);
        let mut streak = Streak::new();
        for step in 0..scenario.horizon {
            let ts = 1_795_000_020_000 + i64::from(step) * 60_000;
            let w = Window { pipeline: pipeline.clone(), ts_ms: ts, telemetry: t };
            let out = ctl.on_window(&w, ts);
            let executed = match out.plan {
                Some(Plan::Act(order)) => {
                    let a = order.action;
                    ctl.on_executed(&order, true, "applied to the simulator".into(), ts);
                    a
                }
                Some(Plan::Escalate(_)) => {
                    pages += 1;
                    Action::Escalate
                }
                _ => Action::NoOp,
            };
            let throttled = t.get(Metric::IngestThrottled) > 0.5;
            let s = sim.step(executed);
            streak.step(executed, throttled, s.info.healthy);
            t = s.telemetry;
        }
        longest = longest.max(streak.longest);
    }
    assert!(longest <= W, "the sidecar core left a pipeline idle for {longest} windows (watchdog: {W})");
    assert!(pages > 0, "incidents over 1,000 episodes were paged at least once");
}
