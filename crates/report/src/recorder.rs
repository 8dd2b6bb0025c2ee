//! What the report shows of a policy's simulated behaviour is recorded while
//! the evaluation episodes run, by wrapping each policy's controller: the
//! action mix per fault kind, the rule policy's shadow choice in every state
//! the learned policy meets, and per failure signature the windows' metric
//! values, true faults and the learned policy's actions (what a playbook
//! states). The wrapper changes no decision, so the episodes and their
//! figures are exactly those of `selfheal evaluate`. It is generic over the
//! environment; the caller says how to read the active faults from it.

use crate::eval::{ActionMix, MixRow, PolicyMix};
use crate::playbook::SignatureSample;
use crate::policy::{note, PolicyView, SeenMap};
use selfheal_agent::RulesPolicy;
use selfheal_core::{Action, FaultKind, FaultSet, Metric, Observation, Policy, Telemetry};
use selfheal_harness::Controller;
use std::collections::BTreeMap;

/// A metric read from a window.
pub type Reading = fn(&Telemetry) -> f64;

/// Metrics a playbook states ranges for: (label with unit, reading).
pub const SYMPTOM_METRICS: [(&str, Reading); 13] = [
    ("latency p95 (s)", |t| t.get(Metric::LatencyP95)),
    ("error ratio", |t| t.error_ratio()),
    ("CPU load", |t| t.get(Metric::CpuLoad)),
    ("heap usage", |t| t.get(Metric::HeapUsage)),
    ("backlog (records)", |t| t.get(Metric::Backlog)),
    ("records read", |t| t.get(Metric::RecordsRead)),
    ("skewness", |t| t.get(Metric::Skewness)),
    ("failed tasks", |t| t.get(Metric::FailedTasks)),
    ("upstream 5xx errors", |t| t.get(Metric::Errors5xx)),
    ("timeout errors", |t| t.get(Metric::ErrorsTimeout)),
    ("schema-mismatch errors", |t| t.get(Metric::ErrorsSchema)),
    ("data-quality errors", |t| t.get(Metric::ErrorsDataQuality)),
    ("sink errors", |t| t.get(Metric::ErrorsSink)),
];

/// Windows of metric values kept per signature at most.
const SAMPLE_CAP: usize = 20_000;

/// What to record of one policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keep {
    /// Keep per-signature samples (windows, metrics, faults).
    pub sample: bool,
    /// This is the learned policy: keep its actions per signature and the
    /// rules' shadow choice per state.
    pub learned: bool,
}

/// A controller that decides as `inner` does and records on the way.
pub struct Recorder<'a, E> {
    inner: Box<dyn Controller<E> + 'a>,
    faults: fn(&E) -> FaultSet,
    view: &'a PolicyView,
    shadow: Option<RulesPolicy>,
    keep: Keep,
    mix: Vec<[u64; Action::COUNT]>,
    seen: SeenMap,
    sigs: BTreeMap<u32, SignatureSample>,
}

impl<'a, E> Recorder<'a, E> {
    /// Wrap `inner`; `faults` reads the active faults from the environment
    /// (ground truth), `view` splits states into their parts, and `shadow`
    /// is the rule policy fed the same windows (kept only when
    /// `keep.learned`).
    pub fn new(
        inner: Box<dyn Controller<E> + 'a>,
        faults: fn(&E) -> FaultSet,
        view: &'a PolicyView,
        shadow: RulesPolicy,
        keep: Keep,
    ) -> Self {
        Recorder {
            inner,
            faults,
            view,
            shadow: keep.learned.then_some(shadow),
            keep,
            mix: vec![[0; Action::COUNT]; 1 + FaultKind::COUNT],
            seen: SeenMap::new(),
            sigs: BTreeMap::new(),
        }
    }

    /// The action mix per fault kind (`healthy` first; rows without
    /// decisions left out) under `name`.
    pub fn mix(&self, name: &str) -> PolicyMix {
        let rows = self
            .mix
            .iter()
            .enumerate()
            .filter(|(_, c)| c.iter().sum::<u64>() > 0)
            .map(|(i, c)| MixRow {
                fault: if i == 0 { "healthy".into() } else { FaultKind::ALL[i - 1].name().into() },
                decisions: c.iter().sum(),
                counts: c.to_vec(),
            })
            .collect();
        PolicyMix { name: name.to_string(), rows }
    }

    /// The states met with the rules' shadow choice (empty unless learned),
    /// and the per-signature samples.
    pub fn into_parts(self) -> (SeenMap, BTreeMap<u32, SignatureSample>) {
        (self.seen, self.sigs)
    }
}

impl<E> Controller<E> for Recorder<'_, E> {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn watchdog_fired(&self) -> bool {
        self.inner.watchdog_fired()
    }
    fn reset(&mut self, seed: u64) {
        self.inner.reset(seed);
        if let Some(r) = &mut self.shadow {
            r.reset(seed);
        }
    }
    fn decide(&mut self, env: &E, obs: &Observation<'_>) -> Action {
        let a = self.inner.decide(env, obs);
        let faults = (self.faults)(env);
        if faults.is_empty() {
            self.mix[0][a.index()] += 1;
        }
        for k in faults.iter() {
            self.mix[1 + k.index()][a.index()] += 1;
        }
        if let Some(r) = &mut self.shadow {
            note(&mut self.seen, obs.state, Some(r.act(obs)));
        }
        if self.keep.sample {
            if let Some(p) = self.view.parts(obs.state) {
                let s = self.sigs.entry(p.signature).or_default();
                s.windows += 1;
                if s.metrics.is_empty() {
                    s.metrics = SYMPTOM_METRICS.iter().map(|(n, _)| (n.to_string(), Vec::new())).collect();
                }
                if s.metrics[0].1.len() < SAMPLE_CAP {
                    for ((_, g), (_, v)) in SYMPTOM_METRICS.iter().zip(s.metrics.iter_mut()) {
                        v.push(g(obs.telemetry));
                    }
                }
                if faults.is_empty() {
                    *s.faults.entry("none".into()).or_default() += 1;
                }
                for k in faults.iter() {
                    *s.faults.entry(k.name().into()).or_default() += 1;
                }
                if self.keep.learned {
                    *s.actions.entry((p.attempted, a.name().to_string())).or_default() += 1;
                }
            }
        }
        a
    }
}

/// Add the samples of `from` to `into`, signature by signature.
pub fn merge_samples(into: &mut BTreeMap<u32, SignatureSample>, from: BTreeMap<u32, SignatureSample>) {
    for (k, s) in from {
        let t = into.entry(k).or_default();
        t.windows += s.windows;
        if t.metrics.is_empty() {
            t.metrics = s.metrics;
        } else {
            for ((_, a), (_, b)) in t.metrics.iter_mut().zip(s.metrics) {
                a.extend(b);
            }
        }
        for (f, n) in s.faults {
            *t.faults.entry(f).or_default() += n;
        }
        for (f, n) in s.actions {
            *t.actions.entry(f).or_default() += n;
        }
    }
}

/// The action mix of every policy on seeds `seeds` (`A..B`).
pub fn action_mix(seeds: &std::ops::Range<u64>, policies: Vec<PolicyMix>) -> ActionMix {
    ActionMix { seeds: format!("{}..{}", seeds.start, seeds.end), policies }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(windows: u64, v: f64, fault: &str) -> SignatureSample {
        SignatureSample {
            windows,
            metrics: vec![("latency p95 (s)".into(), vec![v; windows as usize])],
            faults: BTreeMap::from([(fault.to_string(), windows)]),
            actions: BTreeMap::from([((false, "noop".to_string()), windows)]),
        }
    }

    #[test]
    fn merged_samples_add_windows_faults_and_actions_and_keep_every_value() {
        let mut into = BTreeMap::from([(1, sample(2, 1.0, "none"))]);
        merge_samples(&mut into, BTreeMap::from([(1, sample(3, 2.0, "stuck_job")), (2, sample(1, 5.0, "none"))]));
        let one = &into[&1];
        assert_eq!(one.windows, 5);
        assert_eq!(one.metrics[0].1, [1.0, 1.0, 2.0, 2.0, 2.0]);
        assert_eq!(one.faults, BTreeMap::from([("none".to_string(), 2), ("stuck_job".to_string(), 3)]));
        assert_eq!(one.actions[&(false, "noop".to_string())], 5);
        assert_eq!(into[&2].windows, 1, "a signature met only in the second policy's episodes is added");
    }

    #[test]
    fn the_action_mix_names_its_seeds() {
        assert_eq!(action_mix(&(3..8), Vec::new()).seeds, "3..8");
    }
}
