//! Wiring: the concrete parts (simulator, oracle, encoder, policies) put
//! together. The only place that knows them all.

use anyhow::{bail, Result};
use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{EncoderConfig, GreedyPolicy, NoOpPolicy, RandomPolicy, RulesPolicy, TelemetryEncoder};
use selfheal_core::{Action, Observation, RewardV1, Slo};
use selfheal_harness::{run_episode, Controller, EpisodeStats, Fixed};
use selfheal_sim::{Oracle, Scenario, Simulator};

/// The oracle as a controller: reads the simulator's hidden state.
pub struct OracleController<'a>(pub &'a Oracle);

impl Controller<Simulator> for OracleController<'_> {
    fn name(&self) -> &str {
        "oracle"
    }
    fn reset(&mut self, _seed: u64) {}
    fn decide(&mut self, env: &Simulator, _obs: &Observation<'_>) -> Action {
        self.0.act(env.t(), env.state())
    }
}

/// The encoder configuration a scenario implies.
pub fn encoder_config(s: &Scenario) -> EncoderConfig {
    EncoderConfig { worker_levels: s.pipeline.workers.clone(), base_level: s.pipeline.base_level }
}

/// The reward a scenario is scored with.
pub fn reward(s: &Scenario) -> RewardV1 {
    RewardV1 { unit_records: f64::from(s.pipeline.unit_records), ..RewardV1::default() }
}

/// USD for one worker for one step (AWS Glue: $0.44 per DPU-hour).
pub fn worker_step_usd(s: &Scenario) -> f64 {
    0.44 * f64::from(s.pipeline.step_seconds) / 3600.0
}

/// Check a model fits a scenario and build its encoder and greedy policy.
pub fn learned(model: &ModelFile, s: &Scenario) -> Result<(TelemetryEncoder, GreedyPolicy)> {
    let want = encoder_config(s);
    if model.encoder.config != want {
        bail!(
            "the policy was trained for worker levels {:?} (base {}), but scenario {:?} has {:?} (base {}); train a policy for this pipeline shape",
            model.encoder.config.worker_levels,
            model.encoder.config.base_level,
            s.name,
            want.worker_levels,
            want.base_level
        );
    }
    let enc = TelemetryEncoder::new(model.encoder.config.clone());
    let table = model.table(&enc)?;
    Ok((enc.clone(), GreedyPolicy::with_fallbacks(table, enc)))
}

/// Names of the policies `evaluate` knows, in report order.
pub const POLICIES: [&str; 5] = ["noop", "random", "rules", "learned", "oracle"];

/// Run one named policy on every seed.
pub fn run_policy(
    name: &str,
    s: &Scenario,
    seeds: std::ops::Range<u64>,
    model: &ModelFile,
    rules: &RulesFile,
    oracle: Option<&Oracle>,
) -> Result<Vec<EpisodeStats>> {
    let mut env = Simulator::new(s);
    let (mut enc, greedy) = learned(model, s)?;
    let reward = reward(s);
    let mut ctl: Box<dyn Controller<Simulator> + '_> = match name {
        "noop" => Box::new(Fixed(NoOpPolicy)),
        "random" => Box::new(Fixed(RandomPolicy::new(0))),
        "rules" => Box::new(Fixed(RulesPolicy::new(rules.thresholds, Slo::default()))),
        "learned" => Box::new(Fixed(greedy)),
        "oracle" => match oracle {
            Some(o) => Box::new(OracleController(o)),
            None => bail!("the oracle was not solved"),
        },
        other => bail!("unknown policy {other:?}; expected one of {}", POLICIES.join(", ")),
    };
    Ok(seeds.map(|seed| run_episode(&mut env, ctl.as_mut(), &mut enc, &reward, seed, |_| {})).collect())
}
