//! The policy stack around the Q table: what the learned policy does, in
//! `evaluate` and in the sidecar alike.
//!
//! 1. The greedy action of the deciding state (the state itself, or the
//!    encoder's fallback state when training saw it fewer than
//!    [`GreedyPolicy::MIN_VISITS`] times, see [`crate::qlearn::deciding_state`]).
//! 2. **Silence is gated.** In an unhealthy window a `NoOp` goes through the
//!    [`ConfidenceGate`] like any other choice; where the table has not earned
//!    its silence (too few visits, or `NoOp` barely ahead), the rule policy's
//!    action is taken instead, when the rules would act.
//! 3. **The watchdog** ([`crate::watchdog`]) bounds the time a pipeline stays
//!    unhealthy with nothing done: it pages a person, then falls back to the
//!    rules.
//! 4. **Evidence** ([`crate::diagnose`]): where Glue's own metrics name a
//!    fault that scaling cannot fix (a driver or single-executor out of
//!    memory, a failed run's class), a scale-up is vetoed and a person paged
//!    once with the reason; where the evidence names the documented remedy
//!    (a run failed out of memory on several executors: more capacity; the
//!    source table drifted while the job fails: a schema remap), that
//!    action is taken once per incident, whatever the table says: the table
//!    learned from windows that never carried this evidence.
//!
//! [`Supervisor`] is the per-pipeline state machine of steps 2–4; the sidecar's
//! decision core drives it with its own ε-greedy choice and guardrails, and
//! [`Supervised`] wraps it with the greedy policy and the rules into the
//! [`Policy`] that `evaluate`, `simulate` and the report measure.

use crate::confidence::ConfidenceGate;
use crate::diagnose::{diagnose, Finding};
use crate::qlearn::GreedyPolicy;
use crate::watchdog::{Call, Health, Watchdog, WatchdogConfig};
use crate::RulesPolicy;
use selfheal_core::{Action, ActionMask, Metric, Observation, Policy, Slo, Telemetry};

/// Whether a window is unhealthy, as the policy stack sees it: the detector
/// flagged it, the SLO (latency or error ratio) is missed, ingest is
/// throttled, or CPU is saturated (> 0.9). The `detector-v1` encoder's incident
/// memory uses the same test.
pub fn window_unhealthy(t: &Telemetry, anomalous: bool) -> bool {
    anomalous || !Slo::default().met(t) || t.get(Metric::IngestThrottled) > 0.5 || t.get(Metric::CpuLoad) > 0.9
}

/// Why the stack chose what it chose (in provenance logs by [`Cause::name`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// The policy's own choice.
    #[default]
    Policy,
    /// The policy chose `NoOp` in an unhealthy window without the gate's
    /// confidence: the rule policy's action was taken.
    GateFallback,
    /// The watchdog paged a person.
    WatchdogEscalate,
    /// The watchdog fired again after a page: the rule policy's action.
    WatchdogFallback,
    /// Glue's metrics name a fault scaling cannot fix ([`crate::diagnose`]):
    /// a person was paged with the explanation.
    EvidenceEscalate,
    /// The policy chose to scale up against such a finding: not run.
    EvidenceVeto,
    /// The evidence names its remedy ([`Finding::remedy`]): taken.
    EvidenceRemedy,
}

impl Cause {
    /// Every cause other than [`Cause::Policy`]: the overrides.
    pub const OVERRIDES: [Cause; 6] = [
        Cause::GateFallback,
        Cause::WatchdogEscalate,
        Cause::WatchdogFallback,
        Cause::EvidenceEscalate,
        Cause::EvidenceVeto,
        Cause::EvidenceRemedy,
    ];

    /// Whether the watchdog forced this choice.
    pub fn is_watchdog(self) -> bool {
        matches!(self, Cause::WatchdogEscalate | Cause::WatchdogFallback)
    }

    /// Short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Cause::Policy => "policy",
            Cause::GateFallback => "gate_fallback",
            Cause::WatchdogEscalate => "watchdog_escalate",
            Cause::WatchdogFallback => "watchdog_fallback",
            Cause::EvidenceEscalate => "evidence_escalate",
            Cause::EvidenceVeto => "evidence_veto",
            Cause::EvidenceRemedy => "evidence_remedy",
        }
    }
}

/// What the stack says for one window.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// The action to take (subject to the sidecar's guardrails).
    pub action: Action,
    /// Why.
    pub cause: Cause,
}

/// What [`Supervisor::choose`] is told about one window.
#[derive(Clone, Copy, Debug)]
pub struct Inputs<'a> {
    /// [`window_unhealthy`] of the window.
    pub unhealthy: bool,
    /// Ingest is throttled: backpressure holds the pipeline (waiting behind
    /// it is deliberate, neither idle nor gated).
    pub held: bool,
    /// The policy's choice (greedy or ε-greedy) in the deciding state.
    pub learned: Action,
    /// The deciding state's Q row, [`Action::COUNT`] long.
    pub row: &'a [f64],
    /// The deciding state's visit counts, [`Action::COUNT`] long.
    pub visits: &'a [u32],
    /// Actions allowed now.
    pub mask: ActionMask,
    /// The rule policy's choice for the same window.
    pub rules: Action,
    /// What Glue's metrics name outright ([`crate::diagnose::diagnose`]).
    pub finding: Option<Finding>,
}

/// Steps 2–3 of the stack for one pipeline: the gate on silence and the watchdog.
#[derive(Clone, Debug)]
pub struct Supervisor {
    gate: ConfidenceGate,
    watchdog: Watchdog,
    /// The finding a person was paged about, until `clear_after` windows in
    /// a row show none (as the watchdog ends an incident).
    paged_for: Option<&'static str>,
    /// The finding whose remedy was taken, until `clear_after` windows in a
    /// row show none: a remedy runs once per incident.
    remedied: Option<&'static str>,
    /// The remedy offered for the window last chosen for, until `record`
    /// says whether it ran.
    offered: Option<(&'static str, Action)>,
    /// Actions executed since the last `clear_after` windows without a
    /// finding: a remedy the policy or the rules already took (e.g. a
    /// scale-up on the window before the failed run was known) is not taken
    /// twice.
    recent: Vec<Action>,
    /// Consecutive windows without a finding.
    no_finding: u32,
}

impl Supervisor {
    /// A supervisor with this gate and watchdog.
    pub fn new(gate: ConfidenceGate, watchdog: WatchdogConfig) -> Supervisor {
        Supervisor {
            gate,
            watchdog: Watchdog::new(watchdog),
            paged_for: None,
            remedied: None,
            offered: None,
            recent: Vec::new(),
            no_finding: 0,
        }
    }

    /// Forget the current incident.
    pub fn reset(&mut self) {
        self.watchdog.reset();
        self.paged_for = None;
        self.remedied = None;
        self.offered = None;
        self.recent.clear();
        self.no_finding = 0;
    }

    /// The watchdog (its incident memory).
    pub fn watchdog(&self) -> &Watchdog {
        &self.watchdog
    }

    /// Choose for one window. Call [`Supervisor::record`] with what was
    /// executed afterwards.
    pub fn choose(&mut self, i: Inputs<'_>) -> Choice {
        let choice = self.choose_unchecked(i);
        // Step 4: evidence. A finding scaling cannot fix pages once and vetoes
        // scaling up.
        let Some(f) = i.finding else {
            self.no_finding += 1;
            if self.no_finding >= self.watchdog.config().clear_after {
                self.paged_for = None;
                self.remedied = None;
                self.recent.clear();
            }
            return choice;
        };
        self.no_finding = 0;
        if let Some(remedy) = f.remedy() {
            // Scaling up is vetoed on every finding but the one it remedies.
            let veto = |choice: Choice| {
                if choice.action == Action::ScaleUp && remedy != Action::ScaleUp {
                    Choice { action: Action::NoOp, cause: Cause::EvidenceVeto }
                } else {
                    choice
                }
            };
            if self.remedied == Some(f.name()) || self.recent.contains(&remedy) {
                // Taken already: the policy's choice stands while the remedy
                // takes effect, except the remedy again.
                if choice.action == remedy {
                    return Choice { action: Action::NoOp, cause: Cause::EvidenceVeto };
                }
                return veto(choice);
            }
            if i.mask.allows(remedy) {
                // Taken once it runs (`record`): a denied or proposed remedy
                // is offered again next window.
                self.offered = Some((f.name(), remedy));
                return Choice { action: remedy, cause: Cause::EvidenceRemedy };
            }
            // The remedy cannot run (e.g. already at the top worker level): a
            // person decides, once.
            if self.paged_for != Some(f.name()) && i.mask.allows(Action::Escalate) {
                self.paged_for = Some(f.name());
                return Choice { action: Action::Escalate, cause: Cause::EvidenceEscalate };
            }
            return veto(choice);
        }
        if f.escalate() && self.paged_for != Some(f.name()) && i.mask.allows(Action::Escalate) {
            self.paged_for = Some(f.name());
            return Choice { action: Action::Escalate, cause: Cause::EvidenceEscalate };
        }
        if choice.action == Action::ScaleUp {
            return Choice { action: Action::NoOp, cause: Cause::EvidenceVeto };
        }
        choice
    }

    fn choose_unchecked(&mut self, i: Inputs<'_>) -> Choice {
        let rules = (i.rules != Action::NoOp && i.mask.allows(i.rules)).then_some(i.rules);
        match self.watchdog.observe(Health::of(i.unhealthy, i.held)) {
            Call::Escalate if i.mask.allows(Action::Escalate) => {
                Choice { action: Action::Escalate, cause: Cause::WatchdogEscalate }
            }
            Call::Escalate | Call::Fallback => match (rules, i.learned) {
                (Some(r), _) => Choice { action: r, cause: Cause::WatchdogFallback },
                // The rules would wait: the policy's own action, if it has one,
                // runs now rather than waiting on a proposal (the sidecar's
                // gate does not judge a watchdog's choice).
                (None, Action::NoOp) => Choice { action: Action::NoOp, cause: Cause::Policy },
                (None, learned) => Choice { action: learned, cause: Cause::WatchdogFallback },
            },
            Call::Quiet => {
                let silent_unsure = i.unhealthy
                    && !i.held
                    && i.learned == Action::NoOp
                    && !self.gate.check(i.row, i.visits, i.mask, Action::NoOp).is_confident();
                match rules {
                    Some(r) if silent_unsure => Choice { action: r, cause: Cause::GateFallback },
                    _ => Choice { action: i.learned, cause: Cause::Policy },
                }
            }
        }
    }

    /// Note the action executed for the window last chosen for (a proposal
    /// or a denied action executes `NoOp`).
    pub fn record(&mut self, executed: Action) {
        self.watchdog.record(executed);
        if executed != Action::NoOp && !self.recent.contains(&executed) {
            self.recent.push(executed);
        }
        if let Some((name, remedy)) = self.offered.take() {
            if executed == remedy {
                self.remedied = Some(name);
            }
        }
    }
}

/// The learned policy as it ships: greedy over the table with fallback states,
/// supervised by the gate on silence and the watchdog, the rule policy beside
/// it. This is the `learned` line of `evaluate`.
#[derive(Clone, Debug)]
pub struct Supervised {
    greedy: GreedyPolicy,
    rules: RulesPolicy,
    supervisor: Supervisor,
    last: Cause,
}

impl Supervised {
    /// Supervise `greedy` with `rules` as the fallback.
    pub fn new(greedy: GreedyPolicy, rules: RulesPolicy, gate: ConfidenceGate, watchdog: WatchdogConfig) -> Supervised {
        Supervised { greedy, rules, supervisor: Supervisor::new(gate, watchdog), last: Cause::Policy }
    }

    /// Why the last action was chosen.
    pub fn last_cause(&self) -> Cause {
        self.last
    }

    /// The greedy policy underneath.
    pub fn greedy(&self) -> &GreedyPolicy {
        &self.greedy
    }
}

impl Policy for Supervised {
    fn name(&self) -> &str {
        "learned"
    }

    fn reset(&mut self, seed: u64) {
        self.rules.reset(seed);
        self.supervisor.reset();
        self.last = Cause::Policy;
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        let rules = self.rules.act(obs);
        let deciding = self.greedy.deciding_state(obs.state);
        let table = self.greedy.table();
        let unhealthy = window_unhealthy(obs.telemetry, obs.anomalous);
        let choice = self.supervisor.choose(Inputs {
            unhealthy,
            held: obs.telemetry.get(Metric::IngestThrottled) > 0.5,
            learned: table.best(deciding, obs.mask),
            row: table.row(deciding),
            visits: table.visits(deciding),
            mask: obs.mask,
            rules,
            finding: diagnose(obs.telemetry, unhealthy),
        });
        self.supervisor.record(choice.action);
        self.last = choice.cause;
        choice.action
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(unhealthy: bool, learned: Action, row: &'a [f64], visits: &'a [u32], rules: Action) -> Inputs<'a> {
        Inputs { unhealthy, held: false, learned, row, visits, mask: ActionMask::ALL, rules, finding: None }
    }

    fn sup(windows: u32) -> Supervisor {
        Supervisor::new(ConfidenceGate::default(), WatchdogConfig { windows, stale_after: 1000, clear_after: 1 })
    }

    #[test]
    fn an_unsure_silence_in_an_unhealthy_window_takes_the_rules_action() {
        let mut s = sup(10);
        let row = [0.0; Action::COUNT];
        // Few visits: silence is not trusted.
        let c = s.choose(inputs(true, Action::NoOp, &row, &[1; Action::COUNT], Action::Restart));
        assert_eq!(c, Choice { action: Action::Restart, cause: Cause::GateFallback });
        // Healthy: silence needs no confidence.
        let c = s.choose(inputs(false, Action::NoOp, &row, &[1; Action::COUNT], Action::Restart));
        assert_eq!(c.action, Action::NoOp);
        // Confident silence stands.
        let mut row = [-5.0; Action::COUNT];
        row[Action::NoOp.index()] = 0.0;
        let c = s.choose(inputs(true, Action::NoOp, &row, &[100; Action::COUNT], Action::Restart));
        assert_eq!(c, Choice { action: Action::NoOp, cause: Cause::Policy });
    }

    #[test]
    fn the_watchdog_pages_then_falls_back_to_the_rules() {
        let mut s = sup(3);
        let mut row = [-5.0; Action::COUNT];
        row[Action::NoOp.index()] = 0.0;
        let visits = [100; Action::COUNT];
        let mut actions = Vec::new();
        for _ in 0..7 {
            let c = s.choose(inputs(true, Action::NoOp, &row, &visits, Action::Restart));
            s.record(c.action);
            actions.push(c.action);
        }
        use Action::*;
        assert_eq!(actions, [NoOp, NoOp, Escalate, NoOp, NoOp, Restart, NoOp]);
    }

    #[test]
    fn evidence_with_a_remedy_takes_it_once_per_incident() {
        let mut s = sup(10);
        let row = [0.0; Action::COUNT];
        let visits = [100; Action::COUNT];
        let oom = Finding::ExecutorMemory { executors: 3.0, heap: 0.97 };
        let with = |f: Option<Finding>, learned: Action, mask: ActionMask| Inputs {
            finding: f,
            mask,
            ..inputs(true, learned, &row, &visits, Action::Restart)
        };
        let c = s.choose(with(Some(oom), Action::Restart, ActionMask::ALL));
        assert_eq!(c, Choice { action: Action::ScaleUp, cause: Cause::EvidenceRemedy });
        s.record(c.action);
        // Still failing while the bigger run starts: no second scale-up.
        let c = s.choose(with(Some(oom), Action::ScaleUp, ActionMask::ALL));
        assert_eq!(c, Choice { action: Action::NoOp, cause: Cause::EvidenceVeto });
        // The incident ends (clear_after = 1): a new one may take it again.
        s.choose(with(None, Action::NoOp, ActionMask::ALL));
        let c = s.choose(with(Some(oom), Action::NoOp, ActionMask::ALL));
        assert_eq!(c.cause, Cause::EvidenceRemedy);
        // A remedy that did not run (denied, or a proposal) is offered again.
        let mut denied = sup(10);
        let c = denied.choose(with(Some(oom), Action::Restart, ActionMask::ALL));
        assert_eq!(c.cause, Cause::EvidenceRemedy);
        denied.record(Action::NoOp);
        let c = denied.choose(with(Some(oom), Action::Restart, ActionMask::ALL));
        assert_eq!(c, Choice { action: Action::ScaleUp, cause: Cause::EvidenceRemedy });
        // The rules scaled up a window before the failed run was known: not twice.
        let mut early = sup(10);
        early.choose(with(None, Action::NoOp, ActionMask::ALL));
        early.record(Action::ScaleUp);
        let c = early.choose(with(Some(oom), Action::NoOp, ActionMask::ALL));
        assert!(c.action != Action::ScaleUp && c.cause != Cause::EvidenceRemedy, "not twice: {c:?}");
        // A drift's remedy is a remap: the policy's scale-up is vetoed before and after it.
        let drift = Finding::CatalogDrift { columns: 2.0 };
        let mut d = sup(10);
        let c = d.choose(with(Some(drift), Action::ScaleUp, ActionMask::ALL));
        assert_eq!(c.action, Action::SchemaRemap);
        d.record(c.action);
        let c = d.choose(with(Some(drift), Action::ScaleUp, ActionMask::ALL));
        assert_eq!(c, Choice { action: Action::NoOp, cause: Cause::EvidenceVeto });
        // At the top of the ladder scale-up is masked: a person is paged instead.
        let mut top = sup(10);
        let no_scale = ActionMask::ALL.without(Action::ScaleUp);
        let c = top.choose(with(Some(oom), Action::Restart, no_scale));
        assert_eq!(c, Choice { action: Action::Escalate, cause: Cause::EvidenceEscalate });
    }

    #[test]
    fn a_proposal_that_did_not_run_counts_as_idle() {
        let mut s = sup(2);
        let row = [0.0; Action::COUNT];
        let visits = [100; Action::COUNT];
        let c = s.choose(inputs(true, Action::ScaleUp, &row, &visits, Action::NoOp));
        assert_eq!(c.action, Action::ScaleUp);
        s.record(Action::NoOp); // proposed, not run
        let c = s.choose(inputs(true, Action::ScaleUp, &row, &visits, Action::NoOp));
        assert_eq!(c, Choice { action: Action::Escalate, cause: Cause::WatchdogEscalate });
    }
}
