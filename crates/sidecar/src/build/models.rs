//! The models against each other and against the deployment: a policy, the
//! scenario it was trained on, the detector it was trained with and the
//! actuator's worker ladder must all agree before the sidecar decides with
//! them, and every refusal names both sides and the fix.
//!
//! Why in the sidecar crate: it is the one library that knows the agent's
//! model files, the simulator's scenarios, the detector and the sidecar's
//! configuration together (the agent knows neither the simulator nor the
//! detector). The binary's training and evaluation commands reuse these
//! functions (through its `wiring` module) so a policy is checked the same way
//! everywhere.

use super::BuildError;
use crate::config::{ActuatorConfig, CloudWatchConfig, SidecarConfig, SourceConfig};
use selfheal_agent::store::ModelFile;
use selfheal_agent::{DetectorRef, EncoderConfig, EncoderKind, GreedyPolicy, JobShape};
use selfheal_core::{Detector, Metric, RewardV1, StateEncoder};
use selfheal_detect::features::TelemetryFeatures;
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_sim::Scenario;
use std::sync::Arc;

/// A state encoder the harness and the sidecar can drive.
pub type Encoder = Box<dyn StateEncoder + Send + Sync>;

/// The encoder configuration a scenario implies: its worker ladder and base level.
pub fn encoder_config(s: &Scenario) -> EncoderConfig {
    EncoderConfig {
        worker_levels: s.pipeline.workers.clone(),
        base_level: s.pipeline.base_level,
        detector: None,
        driver_workers: 0,
    }
}

/// The reward a scenario is scored with (its records per unit of throughput).
pub fn reward(s: &Scenario) -> RewardV1 {
    RewardV1 { unit_records: f64::from(s.pipeline.unit_records), ..RewardV1::default() }
}

/// The job shape a scenario implies for the Glue built-ins: its worker levels
/// and its CloudWatch period, s.
pub fn job_shape(s: &Scenario) -> JobShape {
    JobShape { worker_levels: s.pipeline.workers.clone(), step_seconds: s.pipeline.step_seconds }
}

/// Glue's built-in behaviour for this scenario's job shape (the shadow the
/// sidecar and `evaluate` compare against), with a warning when auto scaling
/// is on but no worker level lies within its bounds (it then never scales).
///
/// # Errors
/// Settings [`GlueBuiltinsPolicy::new`] refuses.
pub fn glue_shadow(
    settings: selfheal_agent::GlueSettings,
    s: &Scenario,
) -> Result<selfheal_agent::GlueBuiltinsPolicy, selfheal_agent::glue_builtins::GlueSettingsError> {
    let p = selfheal_agent::GlueBuiltinsPolicy::new(settings, &job_shape(s))?;
    if settings.auto_scaling && !p.can_scale() {
        tracing::warn!(
            levels = ?s.pipeline.workers,
            min_workers = settings.min_workers,
            max_workers = settings.max_workers,
            "no worker level of the scenario lies within the Glue auto-scaling bounds; glue-builtins never scales"
        );
    }
    Ok(p)
}

/// Build the encoder `id` for a deployment (and a shared copy for fallbacks).
///
/// # Errors
/// [`BuildError::Encoder`]: an id this build does not know, listing the known ones.
pub fn encoder(
    id: &str,
    config: EncoderConfig,
    detector: &DetectorModel,
) -> Result<(Encoder, Arc<dyn StateEncoder + Send + Sync>), BuildError> {
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

/// The detector against each configured pipeline's declared metric set
/// ([`check_metric_set`]): today the CloudWatch source's `source.metrics`
/// list, when set. An undeclared set is not checked here (discovery with
/// ListMetrics checks it once it knows the set). `config` names the file.
///
/// # Errors
/// [`BuildError::Mismatch`], naming `source.metrics` and `model.detector`.
pub fn check_declared_metrics(cfg: &SidecarConfig, detector: &DetectorModel, config: &str) -> Result<(), BuildError> {
    let SourceConfig::Cloudwatch(CloudWatchConfig { metrics: Some(names), pipelines, .. }) = &cfg.source else {
        return Ok(());
    };
    let published: Vec<Metric> = names.iter().filter_map(|n| Metric::from_name(n)).collect();
    for p in pipelines {
        check_metric_set(detector, &published, &p.name)
            .map_err(|e| BuildError::Mismatch(format!("{config}: source.metrics against model.detector: {e}")))?;
    }
    Ok(())
}

/// Check a model fits a scenario (and its detector) and build its encoder and
/// greedy policy.
///
/// # Errors
/// [`BuildError::Mismatch`] (worker ladder or detector), naming both sides;
/// an unknown encoder; a table that does not fit its encoder.
pub fn learned(
    model: &ModelFile,
    s: &Scenario,
    detector: &DetectorModel,
) -> Result<(Encoder, GreedyPolicy), BuildError> {
    let want = encoder_config(s);
    let have = &model.encoder.config;
    if have.worker_levels != want.worker_levels || have.base_level != want.base_level {
        return Err(BuildError::Mismatch(format!(
            "the policy was trained for worker levels {:?} (base {}), but scenario {:?} has {:?} (base {}); train a policy for this pipeline shape",
            have.worker_levels,
            have.base_level,
            s.name,
            want.worker_levels,
            want.base_level
        )));
    }
    if let Some(r) = &have.detector {
        let actual = detector_ref(detector);
        if *r != actual {
            return Err(BuildError::Mismatch(format!(
                "the policy was trained with detector {} ({} signatures) but the detector given is {} ({} signatures); pass the detector it was trained with (--detector) or retrain",
                r.fingerprint,
                r.signatures,
                actual.fingerprint,
                actual.signatures
            )));
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
/// [`BuildError::Mismatch`], with `config` (the config file's name) in the message.
pub fn sidecar_encoder(
    model: &ModelFile,
    scenario: &Scenario,
    detector: &DetectorModel,
    actuator: &ActuatorConfig,
    config: &str,
) -> Result<EncoderConfig, BuildError> {
    let mismatch = |m: String| Err(BuildError::Mismatch(m));
    let want = encoder_config(scenario);
    let have = &model.encoder.config;
    if have.worker_levels != want.worker_levels || have.base_level != want.base_level {
        return mismatch(format!(
            "{config}: model.policy was trained on scenario {:?} for worker levels {:?} (base {}), but \
             model.scenario ({}) has {:?} (base {}); set model.scenario to the scenario file the policy was trained on",
            model.meta.scenario,
            have.worker_levels,
            have.base_level,
            scenario.name,
            want.worker_levels,
            want.base_level
        ));
    }
    learned(model, scenario, detector)
        .map_err(|e| BuildError::Mismatch(format!("{config}: model.policy against model.detector: {e}")))?;
    let mut enc = model.encoder.config.clone();
    let ActuatorConfig::Glue { pipelines } = actuator else { return Ok(enc) };
    let mut ladder: Option<(&str, &Vec<u32>, u8)> = None;
    for p in pipelines {
        let Some(base) = p.worker_levels.iter().position(|w| *w == p.default_workers) else {
            return mismatch(format!(
                "{config}: actuator.pipelines {:?}: default_workers = {} is not one of its worker_levels {:?}; \
                 make it one of them",
                p.name, p.default_workers, p.worker_levels
            ));
        };
        if p.worker_levels.len() != model.encoder.config.worker_levels.len() || base != usize::from(enc.base_level) {
            return mismatch(format!(
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
            ));
        }
        match ladder {
            Some((other, levels, _)) if levels != &p.worker_levels => {
                return mismatch(format!(
                "{config}: actuator.pipelines {other:?} and {:?} have different worker ladders ({levels:?} vs {:?}); \
                     one sidecar decides with one ladder: run one sidecar per ladder",
                p.name, p.worker_levels
            ))
            }
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
