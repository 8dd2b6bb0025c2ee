//! Wiring: the concrete parts (simulator, oracle, encoder, policies) put
//! together. The only place that knows them all.

use anyhow::{bail, Result};
use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{
    DetectorEncoder, DetectorRef, EncoderConfig, GreedyPolicy, NoOpPolicy, RandomPolicy, RulesPolicy, TelemetryEncoder,
};
use selfheal_core::{Action, Detector, Observation, RewardV1, Slo, StateEncoder};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_harness::{run_episode, Controller, EpisodeStats, Fixed};
use selfheal_sim::{Oracle, Scenario, Simulator};
use std::sync::Arc;

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
    EncoderConfig { worker_levels: s.pipeline.workers.clone(), base_level: s.pipeline.base_level, detector: None }
}

/// The reward a scenario is scored with.
pub fn reward(s: &Scenario) -> RewardV1 {
    RewardV1 { unit_records: f64::from(s.pipeline.unit_records), ..RewardV1::default() }
}

/// USD for one worker for one step (AWS Glue: $0.44 per DPU-hour).
pub fn worker_step_usd(s: &Scenario) -> f64 {
    0.44 * f64::from(s.pipeline.step_seconds) / 3600.0
}

/// A state encoder the harness can drive.
pub type Encoder = Box<dyn StateEncoder + Send + Sync>;

/// Build the encoder `id` for a deployment (and a shared copy for fallbacks).
pub fn encoder(
    id: &str,
    config: EncoderConfig,
    detector: &DetectorModel,
) -> Result<(Encoder, Arc<dyn StateEncoder + Send + Sync>)> {
    Ok(match id {
        "telemetry-v1" => {
            let e = TelemetryEncoder::new(config);
            (Box::new(e.clone()), Arc::new(e))
        }
        "detector-v1" => {
            let d: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector.clone()));
            let e = DetectorEncoder::new(config, d);
            (Box::new(e.clone()), Arc::new(e))
        }
        other => bail!("unknown encoder {other:?}; expected telemetry-v1 or detector-v1"),
    })
}

/// The reference a `detector-v1` policy keeps to its detector.
pub fn detector_ref(d: &DetectorModel) -> DetectorRef {
    DetectorRef { fingerprint: d.fingerprint(), signatures: d.signatures.len() as u16 }
}

/// Check a model fits a scenario (and its detector) and build its encoder and
/// greedy policy.
pub fn learned(model: &ModelFile, s: &Scenario, detector: &DetectorModel) -> Result<(Encoder, GreedyPolicy)> {
    let want = encoder_config(s);
    let have = &model.encoder.config;
    if have.worker_levels != want.worker_levels || have.base_level != want.base_level {
        bail!(
            "the policy was trained for worker levels {:?} (base {}), but scenario {:?} has {:?} (base {}); train a policy for this pipeline shape",
            have.worker_levels,
            have.base_level,
            s.name,
            want.worker_levels,
            want.base_level
        );
    }
    if let Some(r) = &have.detector {
        let actual = detector_ref(detector);
        if *r != actual {
            bail!(
                "the policy was trained with detector {} ({} signatures) but the detector given is {} ({} signatures); pass the detector it was trained with (--detector) or retrain",
                r.fingerprint,
                r.signatures,
                actual.fingerprint,
                actual.signatures
            );
        }
    }
    let (enc, shared) = encoder(&model.encoder.id, have.clone(), detector)?;
    let table = model.table(enc.as_ref())?;
    Ok((enc, GreedyPolicy::with_fallbacks(table, shared)))
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
    detector: &DetectorModel,
) -> Result<Vec<EpisodeStats>> {
    let mut env = Simulator::new(s);
    let (mut enc, greedy) = learned(model, s, detector)?;
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
    Ok(seeds.map(|seed| run_episode(&mut env, ctl.as_mut(), enc.as_mut(), &reward, seed, |_| {})).collect())
}
