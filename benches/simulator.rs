//! Throughput of the simulator and the learner (issue 5).
//!
//! Run with `cargo bench --bench simulator`; `cargo test --benches` runs each
//! benchmark once as a smoke test. Results are recorded in `benches/RESULTS.md`.
//!
//! - `sim/step`: simulator steps on the default scenario with a fixed, cheap
//!   action sequence, one iteration = one episode (reset + 240 steps);
//! - `sim/step+encode`: the same plus the `telemetry-v1` encoder on every
//!   window, as training does (no detector in either);
//! - `q/update`: Q-learning updates on pre-generated random transitions;
//! - `train/episode`: one full training episode (simulator, encoder, reward,
//!   ε-greedy action choice and Q update every step);
//! - `oracle/solve`: solving the default scenario by backward induction.

use criterion::measurement::WallTime;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_agent::{EncoderConfig, EpsilonSchedule, QLearner, QParams, TelemetryEncoder};
use selfheal_core::{
    Action, ActionMask, EncodeState, Environment, EpisodeMemory, Learner, ParamGuard, RewardV1, StateId, Transition,
};
use selfheal_harness::{train, TrainConfig};
use selfheal_sim::{Oracle, Scenario, Simulator};
use std::time::Duration;

/// Transitions per `q/update` iteration.
const Q_BATCH: usize = 4096;

/// A cheap, fixed action sequence: mostly `NoOp`, with a remedial action every
/// 16 steps so the paths that react to actions are exercised too.
fn action_at(t: u32) -> Action {
    const REMEDIES: [Action; 4] = [Action::RetryWithBackoff, Action::Restart, Action::ScaleUp, Action::ScaleDown];
    if t % 16 == 15 {
        REMEDIES[(t / 16) as usize % REMEDIES.len()]
    } else {
        Action::NoOp
    }
}

fn encoder(s: &Scenario) -> TelemetryEncoder {
    TelemetryEncoder::new(EncoderConfig {
        worker_levels: s.pipeline.workers.clone(),
        base_level: s.pipeline.base_level,
        detector: None,
        driver_workers: 0,
    })
}

/// A group with short measurement windows, so that the whole run stays well
/// under two minutes.
fn group<'a>(c: &'a mut Criterion, name: &str, secs: u64) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(secs));
    g
}

fn sim(c: &mut Criterion) {
    let scenario = Scenario::builtin_default();
    let horizon = scenario.horizon;
    let mut g = group(c, "sim", 5);
    g.throughput(Throughput::Elements(u64::from(horizon)));

    let mut env = Simulator::new(&scenario);
    let mut seed = 0u64;
    g.bench_function("step", |b| {
        b.iter(|| {
            seed += 1;
            black_box(env.reset(seed));
            for t in 0..horizon {
                black_box(env.step(action_at(t)));
            }
        })
    });

    let mut env = Simulator::new(&scenario);
    let mut enc = encoder(&scenario);
    let mut seed = 0u64;
    g.bench_function("step+encode", |b| {
        b.iter(|| {
            seed += 1;
            let first = env.reset(seed);
            enc.reset();
            black_box(enc.encode(&first));
            for t in 0..horizon {
                let a = action_at(t);
                enc.record_action(a);
                let step = env.step(a);
                black_box(enc.encode(&step.telemetry));
            }
        })
    });
    g.finish();
}

fn q_update(c: &mut Criterion) {
    let scenario = Scenario::builtin_default();
    let num_states = encoder(&scenario).num_states();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let transitions: Vec<Transition> = (0..Q_BATCH)
        .map(|_| Transition {
            state: rng.gen_range(0..num_states) as StateId,
            action: Action::ALL[rng.gen_range(0..Action::COUNT)],
            reward: rng.gen_range(-2.0..0.0),
            steps: 1,
            next_state: rng.gen_range(0..num_states) as StateId,
            next_mask: ActionMask::ALL,
            done: rng.gen_bool(1.0 / 240.0),
        })
        .collect();
    let mut learner = QLearner::new(num_states, selfheal_core::Checked::<QParams>::default(), 1);
    let mut g = group(c, "q", 4);
    g.throughput(Throughput::Elements(Q_BATCH as u64));
    g.bench_function("update", |b| {
        b.iter(|| {
            for t in &transitions {
                learner.update(black_box(t));
            }
        })
    });
    g.finish();
}

fn train_episode(c: &mut Criterion) {
    let scenario = Scenario::builtin_default();
    let enc = encoder(&scenario);
    let mut workers = vec![(Simulator::new(&scenario), Box::new(enc.clone()))];
    let reward = RewardV1 { unit_records: f64::from(scenario.pipeline.unit_records), ..RewardV1::default() };
    // `train` starts each call at episode 0; a flat ε of 0.1 stands for the
    // bulk of a training run rather than its fully random first episode.
    let params = QParams { epsilon: EpsilonSchedule { start: 0.1, end: 0.1, decay_episodes: 0 }, ..QParams::default() };
    let mut learner = QLearner::new(enc.num_states(), params.check().expect("bench parameters in bounds"), 1);
    let mut seed = 0u64;
    let mut g = group(c, "train", 4);
    g.throughput(Throughput::Elements(u64::from(scenario.horizon)));
    g.bench_function("episode", |b| {
        b.iter(|| {
            seed += 1;
            let cfg = TrainConfig { episodes: 1, seed, coverage: Default::default() };
            train(&mut workers, &reward, &mut learner, cfg, |p| {
                black_box(p);
            });
        })
    });
    g.finish();
}

fn oracle(c: &mut Criterion) {
    let scenario = Scenario::builtin_default();
    let mut g = group(c, "oracle", 8);
    g.sample_size(10);
    g.bench_function("solve", |b| b.iter(|| Oracle::solve(black_box(&scenario))));
    g.finish();
}

criterion_group!(benches, sim, q_update, train_episode, oracle);
criterion_main!(benches);
