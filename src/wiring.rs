//! Wiring: the concrete parts (simulator, oracle, encoder, policies) put
//! together. The only place that knows them all.

use anyhow::{bail, Context, Result};
use selfheal_agent::confidence::ConfidenceGate;
use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{
    DetectorRef, EncoderConfig, EncoderKind, GlueBuiltinsPolicy, GlueSettings, GreedyPolicy, JobShape, RulesPolicy,
    WatchdogConfig,
};
use selfheal_core::{Action, Detector, Metric, Observation, RewardV1, Slo, StateEncoder};
use selfheal_detect::features::TelemetryFeatures;
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_harness::{run_episode, Controller, EpisodeStats, PolicyInputs, PolicyKind};
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
    EncoderConfig {
        worker_levels: s.pipeline.workers.clone(),
        base_level: s.pipeline.base_level,
        detector: None,
        driver_workers: 0,
    }
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
///
/// # Errors
/// An id this build does not know, listing the known ones.
pub fn encoder(
    id: &str,
    config: EncoderConfig,
    detector: &DetectorModel,
) -> Result<(Encoder, Arc<dyn StateEncoder + Send + Sync>)> {
    Ok(encoder_of(id.parse()?, config, detector))
}

/// Build an encoder of `kind` over `detector` (and a shared copy for fallbacks).
pub fn encoder_of(
    kind: EncoderKind,
    config: EncoderConfig,
    detector: &DetectorModel,
) -> (Encoder, Arc<dyn StateEncoder + Send + Sync>) {
    let d: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector.clone()));
    (kind.build(config.clone(), d.clone()), Arc::from(kind.build(config, d)))
}

/// The reference a `detector-v1` policy keeps to its detector: a detector
/// rebaselined on a pipeline's history (`selfheal fit`) keeps its base's
/// forest and signatures, so it answers with its base's fingerprint
/// ([`DetectorModel::policy_fingerprint`]) and pairs with the base's policies.
pub fn detector_ref(d: &DetectorModel) -> DetectorRef {
    DetectorRef { fingerprint: d.policy_fingerprint(), signatures: d.signatures.len() as u16 }
}

/// Check that a pipeline publishes the metric set its detector was fitted
/// for: a detector rebaselined on one pipeline's history (`selfheal fit`)
/// knows that pipeline's normal only for the metrics the history had. A
/// metric it was fitted with that the pipeline does not publish is read at
/// the baseline (no evidence, faults go unseen); one the pipeline publishes
/// that the history lacked is judged against the simulator's baseline (false
/// alarms). `published` is the pipeline's declared or discovered metric set;
/// only the detector's inputs in it count. A detector without a baseline (fitted on the
/// simulator) fits every set. The baseline's pipeline name is not compared
/// (a pipeline may be renamed, or its detector reused by a twin), only logged.
///
/// # Errors
/// The mismatch, naming both sides, what is missing and extra, and the fix.
pub fn check_metric_set(detector: &DetectorModel, published: &[Metric], pipeline: &str) -> Result<(), String> {
    let Some(b) = &detector.meta.baseline else { return Ok(()) };
    let have: Vec<&str> =
        TelemetryFeatures::inputs().into_iter().filter(|m| published.contains(m)).map(|m| m.name()).collect();
    let fitted: Vec<&str> = b.metrics.iter().map(String::as_str).collect();
    let missing: Vec<&str> = fitted.iter().copied().filter(|m| !have.contains(m)).collect();
    let extra: Vec<&str> = have.iter().copied().filter(|m| !fitted.contains(m)).collect();
    if missing.is_empty() && extra.is_empty() {
        if b.pipeline != pipeline {
            tracing::warn!(pipeline, fitted_for = %b.pipeline, source = %b.source,
                "the detector was fitted on another pipeline's history; its metric set matches this one's");
        }
        return Ok(());
    }
    let list = |v: &[&str]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    Err(format!(
        "the detector was fitted for pipeline {:?} ({}) with metrics {{{}}}; pipeline {pipeline:?} publishes {{{}}} \
         (missing: {}; extra: {}). Re-run `selfheal fit --pipeline {pipeline} ...` on this pipeline's history \
         with the metrics it publishes, and point model.detector at the result",
        b.pipeline,
        b.source,
        fitted.join(", "),
        have.join(", "),
        list(&missing),
        list(&extra),
    ))
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

/// The encoder configuration a sidecar decides with: the model's, with the
/// worker ladder of the Glue actuator's pipelines where one is configured.
///
/// The state carries the worker level as a *position* in the ladder
/// (`level_of` picks the nearest level), so a policy trained on the ladder
/// `[5, 10, 20, 40]` serves a job whose ladder is `[2, 4, 8, 16]` as long as
/// both have as many levels and the job's default workers sit at the model's
/// base position. Everything is checked against everything: model against
/// scenario and detector ([`learned`]), model against each actuator
/// pipeline; every error names both sides and what to change.
///
/// # Errors
/// A mismatch, with `config` (the config file's name) in the message.
pub fn sidecar_encoder(
    model: &ModelFile,
    scenario: &Scenario,
    detector: &DetectorModel,
    actuator: &selfheal_sidecar::config::ActuatorConfig,
    config: &str,
) -> Result<EncoderConfig> {
    let want = encoder_config(scenario);
    let have = &model.encoder.config;
    if have.worker_levels != want.worker_levels || have.base_level != want.base_level {
        bail!(
            "{config}: model.policy was trained on scenario {:?} for worker levels {:?} (base {}), but \
             model.scenario ({}) has {:?} (base {}); set model.scenario to the scenario file the policy was trained on",
            model.meta.scenario,
            have.worker_levels,
            have.base_level,
            scenario.name,
            want.worker_levels,
            want.base_level
        );
    }
    learned(model, scenario, detector).with_context(|| format!("{config}: model.policy against model.detector"))?;
    let mut enc = model.encoder.config.clone();
    let selfheal_sidecar::config::ActuatorConfig::Glue { pipelines } = actuator else { return Ok(enc) };
    let mut ladder: Option<(&str, &Vec<u32>, u8)> = None;
    for p in pipelines {
        let Some(base) = p.worker_levels.iter().position(|w| *w == p.default_workers) else {
            bail!(
                "{config}: actuator.pipelines {:?}: default_workers = {} is not one of its worker_levels {:?}; \
                 make it one of them",
                p.name,
                p.default_workers,
                p.worker_levels
            );
        };
        if p.worker_levels.len() != model.encoder.config.worker_levels.len() || base != usize::from(enc.base_level) {
            bail!(
                "{config}: actuator.pipelines {:?} has the worker ladder {:?} with default {} (level {} of {}), but \
                 model.policy was trained for {} levels {:?} with base level {}; give the pipeline a ladder of {} \
                 levels whose default is level {}, or train a policy for this ladder (a scenario with \
                 workers = {:?}, base_level = {base})",
                p.name,
                p.worker_levels,
                p.default_workers,
                base,
                p.worker_levels.len(),
                enc.worker_levels.len(),
                model.encoder.config.worker_levels,
                enc.base_level,
                enc.worker_levels.len(),
                enc.base_level,
                p.worker_levels
            );
        }
        match ladder {
            Some((other, levels, _)) if levels != &p.worker_levels => bail!(
                "{config}: actuator.pipelines {other:?} and {:?} have different worker ladders ({levels:?} vs {:?}); \
                 one sidecar decides with one ladder: run one sidecar per ladder",
                p.name,
                p.worker_levels
            ),
            _ => ladder = Some((&p.name, &p.worker_levels, base as u8)),
        }
    }
    if let Some((_, levels, base)) = ladder {
        enc.worker_levels = levels.clone();
        enc.base_level = base;
        // On the G.* (and Z.2X) worker types a job's driver runs on one of
        // its workers, each other worker one executor: n workers report
        // n − 1 executors (EncoderConfig::driver_workers). Standard workers
        // run two executors each, which no offset describes: counted as is.
        let one_executor_each = |w: &str| w.starts_with("G.") || w.starts_with("Z.");
        enc.driver_workers = u32::from(pipelines.iter().all(|p| one_executor_each(&p.worker_type)));
    }
    Ok(enc)
}

/// The job shape a scenario implies for the Glue built-ins: its worker levels
/// and its CloudWatch period.
pub fn job_shape(s: &Scenario) -> JobShape {
    JobShape { worker_levels: s.pipeline.workers.clone(), step_seconds: s.pipeline.step_seconds }
}

/// The shipped Glue settings; the file is embedded and checked by a test, so
/// it always parses.
fn shipped_glue_settings() -> GlueSettings {
    crate::defaults::glue_builtins(None).expect("the shipped models/glue-builtins.json parses").settings
}

/// Everything a named policy may need: the learned model and its detector,
/// the rule thresholds, the oracle (solved once), and the policy stack's
/// settings (the same defaults as the sidecar's `[guard]` section).
pub struct PolicyParts<'a> {
    /// The scenario the policies run in.
    pub scenario: &'a Scenario,
    /// The learned policy's model.
    pub model: &'a ModelFile,
    /// Its detector.
    pub detector: &'a DetectorModel,
    /// Rule thresholds.
    pub rules: &'a RulesFile,
    /// Glue's built-in job settings (the shipped `models/glue-builtins.json`
    /// unless replaced).
    pub glue: GlueSettings,
    /// The oracle, where `oracle` is wanted.
    pub oracle: Option<&'a Oracle>,
    /// The confidence gate on an unhealthy window's silence.
    pub gate: ConfidenceGate,
    /// The watchdog.
    pub watchdog: WatchdogConfig,
}

impl<'a> PolicyParts<'a> {
    /// Parts with the default gate and watchdog.
    pub fn new(
        scenario: &'a Scenario,
        model: &'a ModelFile,
        detector: &'a DetectorModel,
        rules: &'a RulesFile,
        oracle: Option<&'a Oracle>,
    ) -> PolicyParts<'a> {
        PolicyParts {
            scenario,
            model,
            detector,
            rules,
            glue: shipped_glue_settings(),
            oracle,
            gate: ConfidenceGate::default(),
            watchdog: WatchdogConfig::default(),
        }
    }

    /// The rule policy.
    pub fn rules_policy(&self) -> RulesPolicy {
        RulesPolicy::new(self.rules.thresholds, Slo::default())
    }

    /// Glue's built-ins for this scenario's job shape.
    pub fn glue_policy(&self) -> Result<GlueBuiltinsPolicy> {
        let p = GlueBuiltinsPolicy::new(self.glue, &job_shape(self.scenario))?;
        if self.glue.auto_scaling && !p.can_scale() {
            tracing::warn!(
                levels = ?self.scenario.pipeline.workers,
                min_workers = self.glue.min_workers,
                max_workers = self.glue.max_workers,
                "no worker level of the scenario lies within the Glue auto-scaling bounds; glue-builtins never scales"
            );
        }
        Ok(p)
    }

    /// The learned policy's encoder, and the policy of `kind` as a
    /// controller ([`PolicyKind::controller`]): `learned` is the greedy table
    /// supervised by the gate and the watchdog ([`selfheal_agent::Supervised`]), exactly as
    /// the sidecar decides.
    pub fn controller(&self, kind: PolicyKind) -> Result<(Encoder, Box<dyn Controller<Simulator> + 'a>)> {
        let (enc, greedy) = learned(self.model, self.scenario, self.detector)?;
        let inputs = PolicyInputs {
            greedy,
            rules: self.rules_policy(),
            glue: (kind == PolicyKind::GlueBuiltins).then(|| self.glue_policy()).transpose()?,
            gate: self.gate,
            watchdog: self.watchdog,
            oracle: self.oracle.map(|o| Box::new(OracleController(o)) as Box<dyn Controller<Simulator> + 'a>),
        };
        Ok((enc, kind.controller(inputs)?))
    }

    /// Run the policy of `kind` on every seed.
    pub fn run(&self, kind: PolicyKind, seeds: std::ops::Range<u64>) -> Result<Vec<EpisodeStats>> {
        let mut env = Simulator::new(self.scenario);
        let (mut enc, mut ctl) = self.controller(kind)?;
        let reward = reward(self.scenario);
        Ok(seeds.map(|seed| run_episode(&mut env, ctl.as_mut(), enc.as_mut(), &reward, seed, |_| {})).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::Telemetry;
    use selfheal_detect::telemetry::RebaselineParams;

    /// Healthy windows of a Glue-only job: heap, CPU, elapsed time, failed
    /// tasks and records read, nothing of the `pipeline.*` namespace.
    fn glue_history(n: usize) -> Vec<Telemetry> {
        (0..n)
            .map(|i| {
                let wobble = ((i * 7919) % 101) as f64 / 100.0 - 0.5;
                let mut t = Telemetry::default();
                t.set(Metric::HeapUsage, 0.62 + 0.04 * wobble);
                t.set(Metric::CpuLoad, 0.35 + 0.05 * wobble);
                t.set(Metric::ElapsedTime, 600_000.0 + 60_000.0 * i as f64);
                t.set(Metric::RecordsRead, 1e6 * (1.0 + 0.1 * wobble));
                t.set(Metric::FailedTasks, 0.0);
                t.set(Metric::Executors, 10.0);
                t
            })
            .collect()
    }

    fn rebaselined() -> (DetectorModel, DetectorModel) {
        let base = crate::defaults::detector(None).unwrap();
        let p = RebaselineParams { false_alarm_rate: 0.02, source: "history:t".into(), pipeline: "orders".into() };
        let fitted = base.rebaseline(&glue_history(60), &p).unwrap();
        (base, fitted)
    }

    #[test]
    fn the_shipped_policy_pairs_with_a_rebaselined_shipped_detector() {
        let (base, fitted) = rebaselined();
        assert_ne!(fitted.fingerprint(), base.fingerprint());
        assert_eq!(detector_ref(&fitted), detector_ref(&base));
        let model = crate::defaults::policy(None).unwrap();
        let scenario = crate::defaults::scenario(None).unwrap();
        let paired = learned(&model, &scenario, &fitted);
        assert!(paired.is_ok(), "{:#}", paired.err().unwrap());
        // Another forest is still refused.
        let mut other = fitted.clone();
        other.meta.baseline.as_mut().unwrap().base_fingerprint = "0123456789abcdef".into();
        let err = format!("{:#}", learned(&model, &scenario, &other).err().unwrap());
        assert!(err.contains("0123456789abcdef"), "{err}");
    }

    #[test]
    fn a_detector_fitted_for_another_metric_set_is_refused() {
        let (base, fitted) = rebaselined();
        let set = fitted.meta.baseline.as_ref().unwrap().metrics.clone();
        assert_eq!(
            set,
            [Metric::FailedTasks, Metric::HeapUsage, Metric::CpuLoad, Metric::ElapsedTime, Metric::RecordsRead]
                .map(|m| m.name().to_string())
        );
        let glue = [
            Metric::FailedTasks,
            Metric::HeapUsage,
            Metric::CpuLoad,
            Metric::ElapsedTime,
            Metric::RecordsRead,
            Metric::Executors,
        ];
        // Executors is no detector input: it neither counts nor hurts.
        assert_eq!(check_metric_set(&fitted, &glue, "orders"), Ok(()));
        let err = check_metric_set(&fitted, &[Metric::HeapUsage, Metric::LatencyP95], "billing").unwrap_err();
        assert!(
            err.contains("fitted for pipeline \"orders\"") && err.contains("pipeline \"billing\" publishes"),
            "{err}"
        );
        assert!(err.contains("missing: glue.driver.aggregate.numFailedTasks, glue.ALL.system.cpuSystemLoad"), "{err}");
        assert!(err.contains("extra: pipeline.latency.p95"), "{err}");
        assert!(err.contains("selfheal fit --pipeline billing"), "{err}");
        // The simulator-fitted detector fits any set.
        assert_eq!(check_metric_set(&base, &[Metric::HeapUsage], "orders"), Ok(()));
    }
}
