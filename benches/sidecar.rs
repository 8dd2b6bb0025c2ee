//! Sample in → decision out, in process (issue 7): the sidecar's decision core
//! `DecisionCore::on_window`, built exactly as `selfheal run` builds it.
//!
//! Run with `cargo bench --bench sidecar`; `cargo test --benches` runs each
//! benchmark once as a smoke test (and the percentile runs with a few thousand
//! calls instead of 200,000). Results are recorded in `benches/RESULTS.md`.
//!
//! Setup, as in `src/commands/run.rs` with the shipped models: the Q table of
//! `models/policy.json` (encoder `detector-v2`, so every pipeline's encoder
//! holds the detector of `models/detector.json`), the rules of
//! `models/rules.json` as the shadow, `reward-v1` of the built-in scenario,
//! online learning on, ε = 0, act mode, the default confidence gate (30 visits,
//! lead 0.5, untrusted actions become proposals) and a generous budget (10,000
//! actions an hour, no cooldown, every pipeline may be acted on at once), so
//! decisions are not all denied.
//!
//! Windows come from `SimFleet` (the simulator source of the daemon): 16
//! pipelines of the built-in scenario, each playing its own seeded episodes,
//! with faults arriving and ending as the scenario draws them. **Feedback is
//! applied**: an action cleared to run (`Plan::Act`) is applied to the
//! pipeline's next simulated step at once and reported as succeeded
//! (`on_executed`), as the simulator actuator does, so incidents are healed
//! and the controller sees the mix of healthy and faulty windows a live fleet
//! shows. Proposals expire through `on_tick`, called once per fleet tick as
//! the daemon does every 500 ms. Only the measured call is timed; stepping the
//! fleet, applying actions, `on_executed`, `on_tick` and dropping the output
//! are not.
//!
//! - `sidecar/on_window`: one `on_window` call (the criterion mean);
//! - `sidecar/on_window_observed`: the same with the two
//!   `selfheal_decision_seconds` observations the daemon loop makes (issue 18),
//!   for the histograms' overhead against `sidecar/on_window` (within the
//!   noise between two rigs); `sidecar/decision_observations`: those
//!   observations alone;
//! - `sidecar/sample_to_decision`: one JSON line (a full sample, all 21
//!   metrics) through `parse_line`, `Assembler::push` (which closes the
//!   pipeline's previous window) and `on_window` on the window it closed;
//! - percentiles: after the criterion groups, each variant times every one of
//!   200,000 individual calls with `Instant` and prints p50, p90, p99, p99.9
//!   and the maximum. The target is p99 ≤ 50 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use selfheal_agent::store::{GlueBuiltinsFile, ModelFile, RulesFile};
use selfheal_agent::{EncoderKind, GlueBuiltinsPolicy, JobShape, QLearner, RulesPolicy};
use selfheal_core::{Detector, Metric, RewardV1, StateEncoder};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_guard::budget::BudgetConfig;
use selfheal_guard::confidence::ConfidenceGate;
use selfheal_guard::Mode;
use selfheal_sidecar::decide::{DecideConfig, DecisionCore, EncoderFactory, Output, Parts, Plan};
use selfheal_sidecar::metrics::{DECISION_LOGGED_SECONDS, DECISION_SECONDS};
use selfheal_sidecar::source::SimFleet;
use selfheal_sidecar::window::{parse_line, Assembler, Window};
use selfheal_sim::Scenario;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLICY_JSON: &str = include_str!("../models/policy.json");
const DETECTOR_JSON: &str = include_str!("../models/detector.json");
const RULES_JSON: &str = include_str!("../models/rules.json");
const GLUE_JSON: &str = include_str!("../models/glue-builtins.json");

/// Simulated pipelines.
const PIPELINES: u32 = 16;
/// Individually timed calls per percentile run (bench mode).
const TIMED_CALLS: usize = 200_000;
/// The same in test mode (`cargo test --benches`).
const TIMED_CALLS_TEST: usize = 2_000;
/// Start of simulated time: a whole minute, so windows align with the assembler's periods.
const START_MS: i64 = 1_795_000_020_000;
/// Wall clock handed to the controller: it moves one scenario step per tick too.
const WALL_START_MS: i64 = 1_795_000_000_000;

/// True under `cargo bench` (criterion passes `--bench`), false under `cargo test --benches`.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A controller wired like `selfheal run` with the shipped models.
fn controller() -> (DecisionCore, i64) {
    let scenario = Scenario::builtin_default();
    let model = ModelFile::from_json(POLICY_JSON, "models/policy.json").expect("shipped policy");
    let detector_model = DetectorModel::from_json(DETECTOR_JSON, "models/detector.json").expect("shipped detector");
    let kind = EncoderKind::parse(&model.encoder.id).expect("the shipped policy's encoder is known");
    assert!(kind.uses_detector(), "the shipped policy decides on detector states");
    let enc_cfg = model.encoder.config.clone();
    let detector: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector_model));
    let describe: Arc<dyn StateEncoder + Send + Sync> = Arc::from(kind.build(enc_cfg.clone(), detector.clone()));
    let table = model.table(describe.as_ref()).expect("the policy fits its encoder");
    let encoder: EncoderFactory = {
        let (c, d) = (enc_cfg, detector.clone());
        Arc::new(move || kind.build(c.clone(), d.clone()) as Box<dyn StateEncoder + Send>)
    };
    let rules_file = RulesFile::from_json(RULES_JSON, "models/rules.json").expect("shipped rules");
    let reward = RewardV1 { unit_records: f64::from(scenario.pipeline.unit_records), ..RewardV1::default() };
    let rules = RulesPolicy::new(rules_file.thresholds, reward.slo);
    let mut learner =
        QLearner::from_table(table, model.params("the shipped model").expect("its params pass their check"), 0);
    learner.set_epsilon(0.0);
    let glue = GlueBuiltinsFile::from_json(GLUE_JSON, "models/glue-builtins.json").expect("shipped Glue settings");
    let shape =
        JobShape { worker_levels: scenario.pipeline.workers.clone(), step_seconds: scenario.pipeline.step_seconds };
    let glue = Some(GlueBuiltinsPolicy::new(glue.settings, &shape).expect("shipped Glue settings fit the scenario"));
    let parts = Parts { encoder, describe, detector, learner, rules, glue, reward: Box::new(reward) };
    let cfg = DecideConfig {
        mode: Mode::Act,
        confidence: ConfidenceGate::default(),
        watchdog: Default::default(),
        propose_when_unsure: true,
        approval_ttl_ms: 900_000,
        budget: BudgetConfig { actions_per_hour: 10_000, cooldown_secs: 0, blast_radius: PIPELINES },
        reward_windows: 1,
        learn: true,
        epsilon: 0.0,
        log_healthy: false,
        seed: 0,
    };
    let step_ms = i64::from(scenario.pipeline.step_seconds) * 1000;
    (DecisionCore::new(cfg, parts, "bench".into()), step_ms)
}

/// The fleet, the controller and the clocks: one live sidecar without I/O.
struct Rig {
    ctl: DecisionCore,
    fleet: SimFleet,
    queue: VecDeque<Window>,
    step_ms: i64,
    now_ms: i64,
    acted: u64,
}

impl Rig {
    fn new() -> Rig {
        let (ctl, step_ms) = controller();
        assert_eq!(START_MS % step_ms, 0, "simulated time starts on a period boundary");
        let fleet = SimFleet::new(&Scenario::builtin_default(), PIPELINES, 0, START_MS);
        Rig { ctl, fleet, queue: VecDeque::new(), step_ms, now_ms: WALL_START_MS, acted: 0 }
    }

    /// The next window of the fleet (a tick of every pipeline when the last one is used up).
    fn next_window(&mut self) -> Window {
        if self.queue.is_empty() {
            self.now_ms += self.step_ms;
            let out = self.ctl.on_tick(self.now_ms);
            drop(out);
            self.queue.extend(self.fleet.tick());
        }
        self.queue.pop_front().expect("a tick yields a window per pipeline")
    }

    /// Carry out a decision's plan as the simulator actuator would, instantly.
    fn apply(&mut self, out: Output) {
        if let Some(Plan::Act(order)) = &out.plan {
            self.fleet.apply(&order.pipeline, order.action, &order.key).expect("the pipeline is simulated");
            let done = self.ctl.on_executed(order, true, "applied".into(), self.now_ms);
            self.acted += 1;
            drop(done);
        }
    }

    /// One timed `on_window`.
    fn decide_timed(&mut self) -> Duration {
        let w = self.next_window();
        let now = self.now_ms;
        let t0 = Instant::now();
        let out = self.ctl.on_window(black_box(&w), now);
        let dt = t0.elapsed();
        self.apply(out);
        dt
    }

    /// One timed `on_window` with the daemon loop's two observations of
    /// `selfheal_decision_seconds` around it, as `daemon.rs` makes them
    /// (without the log append between them): the histograms' overhead is
    /// this against `decide_timed`.
    fn decide_observed_timed(&mut self) -> Duration {
        let w = self.next_window();
        let now = self.now_ms;
        let outer = Instant::now();
        let t0 = Instant::now();
        let out = self.ctl.on_window(black_box(&w), now);
        DECISION_SECONDS.observe(t0.elapsed());
        DECISION_LOGGED_SECONDS.observe(t0.elapsed());
        let dt = outer.elapsed();
        self.apply(out);
        dt
    }
}

/// A pushing client's view: every window of the fleet as one JSON line.
struct LineRig {
    rig: Rig,
    asm: Assembler,
    line: String,
}

impl LineRig {
    fn new() -> LineRig {
        let rig = Rig::new();
        let asm = Assembler::new(rig.step_ms);
        LineRig { rig, asm, line: String::with_capacity(1024) }
    }

    /// One timed sample: parse, assemble, and decide on the window it closed.
    fn sample_timed(&mut self) -> Duration {
        let w = self.rig.next_window();
        self.line.clear();
        write!(self.line, "{{\"ts\":{},\"pipeline\":\"{}\",\"metrics\":{{", w.ts_ms, w.pipeline).unwrap();
        for (i, m) in Metric::ALL.iter().enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(self.line, "{sep}\"{}\":{}", m.name(), w.telemetry.get(*m)).unwrap();
        }
        self.line.push_str("}}");
        let now = self.rig.now_ms;
        let t0 = Instant::now();
        let sample = parse_line(black_box(self.line.as_bytes())).expect("the line parses");
        let closed = self.asm.push(&sample.pipeline, sample.ts, &sample.metrics.0).expect("samples are in order");
        let out = closed.map(|w| self.rig.ctl.on_window(&w, now));
        let dt = t0.elapsed();
        drop(sample);
        if let Some(out) = out {
            self.rig.apply(out);
        }
        dt
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("sidecar");
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(5));

    let mut rig = Rig::new();
    g.bench_function("on_window", |b| b.iter_custom(|iters| (0..iters).map(|_| rig.decide_timed()).sum()));

    let mut rig = Rig::new();
    g.bench_function("on_window_observed", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rig.decide_observed_timed()).sum())
    });

    // The observations alone, as the daemon loop makes them per window: an
    // `Instant` and two timed histogram observations.
    g.bench_function("decision_observations", |b| {
        b.iter(|| {
            let t0 = Instant::now();
            DECISION_SECONDS.observe(black_box(t0).elapsed());
            DECISION_LOGGED_SECONDS.observe(black_box(t0).elapsed());
        })
    });

    let mut lines = LineRig::new();
    g.bench_function("sample_to_decision", |b| b.iter_custom(|iters| (0..iters).map(|_| lines.sample_timed()).sum()));
    g.finish();
}

fn percentiles(name: &str, mut times: Vec<Duration>, note: &str) {
    times.sort_unstable();
    let n = times.len();
    let at = |q: f64| times[((q * n as f64) as usize).min(n - 1)].as_secs_f64() * 1e6;
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e6 / n as f64;
    println!(
        "{name}: {n} calls: mean {mean:.2} µs, p50 {:.2} µs, p90 {:.2} µs, p99 {:.2} µs, p99.9 {:.2} µs, max {:.2} µs \
         (target p99 ≤ 50 µs: {}){note}",
        at(0.50),
        at(0.90),
        at(0.99),
        at(0.999),
        times[n - 1].as_secs_f64() * 1e6,
        if at(0.99) <= 50.0 { "met" } else { "MISSED" },
    );
}

/// Individually timed calls, sorted into percentiles.
fn tails(_c: &mut Criterion) {
    let n = if bench_mode() { TIMED_CALLS } else { TIMED_CALLS_TEST };
    // Fresh rigs, warmed up for one simulated day first (the Q table, the
    // proposal list and the budget's memory reach their working size).
    let mut rig = Rig::new();
    for _ in 0..(n / 10).min(PIPELINES as usize * 1440) {
        rig.decide_timed();
    }
    let (acted0, windows0) = (rig.acted, rig.ctl.stats.windows);
    let times: Vec<Duration> = (0..n).map(|_| rig.decide_timed()).collect();
    let s = &rig.ctl.stats;
    let note = format!(
        "; {} windows, {} actions run, {} Q updates, {} proposals pending",
        s.windows - windows0,
        rig.acted - acted0,
        s.q_updates,
        rig.ctl.pending().len()
    );
    percentiles("sidecar/on_window", times, &note);

    let mut lines = LineRig::new();
    for _ in 0..(n / 10).min(PIPELINES as usize * 1440) {
        lines.sample_timed();
    }
    let times: Vec<Duration> = (0..n).map(|_| lines.sample_timed()).collect();
    percentiles("sidecar/sample_to_decision", times, "");
}

criterion_group!(benches, bench, tails);
criterion_main!(benches);
