//! The oracle plans with the simulator's own model; these tests pin that the
//! model is exact: the reward the simulator reports from noisy telemetry equals
//! the model's, step by step, and the oracle's planned value matches what it
//! achieves.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::{Action, Environment, RewardFn, RewardV1};
use selfheal_sim::model::{FlowModifier, Model};
use selfheal_sim::{Oracle, Scenario, Simulator};

#[test]
fn telemetry_reward_equals_model_reward_every_step() {
    let scenario = Scenario::builtin_default();
    let model = Model::new(&scenario);
    let reward = RewardV1::default();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let mut sim = Simulator::new(&scenario);
    for seed in 0..40 {
        sim.reset(seed);
        for _ in 0..scenario.horizon {
            let before = *sim.state();
            let a = Action::from_index(rng.gen_range(0..Action::COUNT)).unwrap();
            let step = sim.step(a);
            let after = *sim.state();
            let d = model.decide(&before, a);
            let f = model.flows(after.slots, after.level, before.backlog, FlowModifier::of(a));
            let expected = model.flow_reward(&f, d.level) - RewardV1::action_cost(a);
            let got = reward.reward(a, &step.telemetry);
            assert!(
                (got - expected).abs() < 1e-9,
                "seed {seed} t {}: telemetry {got} vs model {expected}",
                step.info.t
            );
            assert_eq!(f.slo_met, step.info.slo_met);
        }
    }
}

#[test]
fn oracle_achieves_its_planned_value() {
    let text = "name='small'\nhorizon=80\n[faults]\nrate=0.05\n[faults.mix]\nstuck_job=1\ndownstream_outage=1\nnovel=1\nupstream_5xx=1\n";
    let scenario = Scenario::from_toml_str(text, "small").unwrap();
    let oracle = Oracle::solve(&scenario);
    let reward = RewardV1::default();
    let mut sim = Simulator::new(&scenario);
    let n = 2000;
    let mut returns = Vec::with_capacity(n);
    for seed in 0..n as u64 {
        sim.reset(seed);
        let mut ret = 0.0;
        for _ in 0..scenario.horizon {
            let a = oracle.act(sim.t(), sim.state());
            ret += reward.reward(a, &sim.step(a).telemetry);
        }
        returns.push(ret);
    }
    let mean = returns.iter().sum::<f64>() / n as f64;
    let sd = (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
    let se = sd / (n as f64).sqrt();
    let planned = oracle.expected_return();
    assert!((mean - planned).abs() < 4.0 * se, "planned {planned:.3}, achieved {mean:.3} ± {se:.3}");
}
