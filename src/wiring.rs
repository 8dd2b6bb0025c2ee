//! Wiring for training and evaluation: the simulator, the oracle and the
//! named policies put together. The checks of a model against its scenario
//! and detector are the sidecar crate's ([`selfheal_sidecar::build::models`]),
//! re-exported here so every command checks a policy the same way.

use anyhow::Result;
use selfheal_agent::confidence::ConfidenceGate;
use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{GlueBuiltinsPolicy, GlueSettings, RulesPolicy, WatchdogConfig};
use selfheal_core::{Action, Observation, Slo};
use selfheal_detect::telemetry::DetectorModel;
use selfheal_harness::{run_episode, Controller, EpisodeStats, PolicyInputs, PolicyKind};
use selfheal_sim::{Oracle, Scenario, Simulator};

pub use selfheal_sidecar::build::{detector_ref, encoder, encoder_config, encoder_of, learned, reward, Encoder};

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

/// USD for one worker for one step (AWS Glue: $0.44 per DPU-hour).
pub fn worker_step_usd(s: &Scenario) -> f64 {
    0.44 * f64::from(s.pipeline.step_seconds) / 3600.0
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
        Ok(selfheal_sidecar::build::models::glue_shadow(self.glue, self.scenario)?)
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
    use selfheal_core::{Metric, Telemetry};
    use selfheal_detect::telemetry::RebaselineParams;
    use selfheal_sidecar::build::check_metric_set;

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
