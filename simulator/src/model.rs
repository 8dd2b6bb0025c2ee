//! The simulator's dynamics: one definition, read by the sampler ([`crate::Simulator`])
//! and by the planner ([`crate::Oracle`]).
//!
//! The hidden state is small and discrete on purpose: up to two active faults
//! (a downstream outage remembers whether ingest is throttled), whether a human is
//! working the incident, the worker level, and the backlog in whole units of
//! records. Fault lifetimes are memoryless (a hazard per step), so knowing how long
//! a fault has lasted tells nothing about when it ends: the oracle's only advantage
//! over a policy that reads telemetry is knowing *which* fault it is.
//!
//! One step, in order:
//! 1. the action takes effect (worker level, throttle, paging a human);
//! 2. each active fault ends with a probability that combines its natural hazard,
//!    the action's fix probability and the human's, see [`FaultEffects`];
//! 3. a new fault may arrive (it shows in this step's telemetry);
//! 4. records flow: arrivals join the backlog, the pipeline processes what its
//!    faults and workers allow, failing writes are dead-lettered, and what the
//!    backlog cannot hold expires.

use crate::scenario::Scenario;
use selfheal_core::{Action, FaultKind, FaultSet, RewardV1};

/// Slot code of an empty fault slot.
pub const NO_FAULT: u8 = u8::MAX;
/// Slot code of a downstream outage while ingest is throttled (backpressure).
pub const OUTAGE_THROTTLED: u8 = FaultKind::COUNT as u8;
/// Probability per step that an engaged human fixes a fault they can fix.
pub const HUMAN_FIX: f64 = 0.25;

/// How a fault kind reacts to each action, per step.
#[derive(Clone, Copy, Debug)]
pub struct FaultEffects {
    /// Chance per step that the fault ends by itself (0 = persists until fixed).
    pub hazard: f64,
    /// Chance that an action fixes it, per action (column order of [`Action`]).
    pub fix: [f64; Action::COUNT],
    /// Factor on the hazard per action: below 1 the action makes the fault last
    /// longer (retrying into an outage, scaling into a rate-limited upstream).
    pub hazard_factor: [f64; Action::COUNT],
    /// Whether an engaged human can fix it (a downstream outage is someone else's).
    pub human_fixable: bool,
    /// Extra p95 latency in seconds while active (a multiple of 30).
    pub extra_latency_s: u32,
}

const fn fix(pairs: &[(Action, f64)]) -> [f64; Action::COUNT] {
    let mut out = [0.0; Action::COUNT];
    let mut i = 0;
    while i < pairs.len() {
        out[pairs[i].0 as usize] = pairs[i].1;
        i += 1;
    }
    out
}

const fn factor(pairs: &[(Action, f64)]) -> [f64; Action::COUNT] {
    let mut out = [1.0; Action::COUNT];
    let mut i = 0;
    while i < pairs.len() {
        out[pairs[i].0 as usize] = pairs[i].1;
        i += 1;
    }
    out
}

use Action as A;

/// The fault table: what fixes, what does nothing, what makes it worse. The
/// README of `simulator/scenarios` prints it as a table.
pub fn effects(kind: FaultKind) -> FaultEffects {
    match kind {
        // Ingest runs fail on 5xx; a retry after backoff usually lands after the
        // blip. More workers open more connections into a rate-limited upstream.
        FaultKind::Upstream5xx => FaultEffects {
            hazard: 0.10,
            fix: fix(&[(A::RetryWithBackoff, 0.85), (A::Restart, 0.85), (A::Reschedule, 0.5)]),
            hazard_factor: factor(&[(A::ScaleUp, 0.5)]),
            human_fixable: true,
            extra_latency_s: 0,
        },
        // Slow network: half the throughput; retries and restarts re-establish
        // connections; more workers mean more connections timing out.
        FaultKind::NetworkTimeout => FaultEffects {
            hazard: 0.15,
            fix: fix(&[(A::RetryWithBackoff, 0.6), (A::Restart, 0.6), (A::Reschedule, 0.6)]),
            hazard_factor: factor(&[(A::ScaleUp, 0.5)]),
            human_fixable: true,
            extra_latency_s: 120,
        },
        // Persists until the mapping is updated; retries and scaling do nothing.
        FaultKind::SchemaDrift => FaultEffects {
            hazard: 0.0,
            fix: fix(&[(A::SchemaRemap, 0.95)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 0,
        },
        // A co-located job hogs the cluster. Rescheduling moves away from it;
        // scaling up compensates while it lasts; a restart throws work away.
        FaultKind::ResourceContention => FaultEffects {
            hazard: 0.10,
            fix: fix(&[(A::Reschedule, 0.8)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 30,
        },
        // Executors OOM and two tasks in three fail. Bigger/more workers fix it; a
        // restart sometimes helps; fewer workers stall the job.
        FaultKind::MemoryPressure => FaultEffects {
            hazard: 0.0,
            fix: fix(&[(A::ScaleUp, 0.9), (A::Restart, 0.25)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 60,
        },
        // Hung job: only a restart unsticks it; a retry is rejected (a run is
        // still going).
        FaultKind::StuckJob => FaultEffects {
            hazard: 0.0,
            fix: fix(&[(A::Restart, 0.95)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 0,
        },
        // Every attempt fails on the same bad records until they are quarantined.
        FaultKind::PoisonRecords => FaultEffects {
            hazard: 0.0,
            fix: fix(&[(A::Quarantine, 1.0)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 0,
        },
        // The sink is down and comes back by itself; retrying hammers it and
        // delays recovery. Backpressure (a state, not a fix) stops dead-lettering.
        FaultKind::DownstreamOutage => FaultEffects {
            hazard: 0.15,
            fix: fix(&[]),
            hazard_factor: factor(&[(A::RetryWithBackoff, 1.0 / 3.0), (A::Restart, 1.0 / 3.0)]),
            human_fixable: false,
            extra_latency_s: 0,
        },
        // Hot-partition skew: a restart repartitions the data.
        FaultKind::Novel => FaultEffects {
            hazard: 0.0,
            fix: fix(&[(A::Restart, 0.7)]),
            hazard_factor: factor(&[]),
            human_fixable: true,
            extra_latency_s: 60,
        },
    }
}

/// The kind of a slot code.
pub fn slot_kind(code: u8) -> Option<FaultKind> {
    if code == OUTAGE_THROTTLED {
        Some(FaultKind::DownstreamOutage)
    } else {
        FaultKind::ALL.get(usize::from(code)).copied()
    }
}

/// The hidden state of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    /// Active faults as slot codes, sorted, [`NO_FAULT`] last.
    pub slots: [u8; 2],
    /// A human is working the incident (after `Escalate`, until no fault is left).
    pub human: bool,
    /// Worker level (index into the scenario's capacity and workers).
    pub level: u8,
    /// Records waiting, in units.
    pub backlog: u32,
}

impl State {
    /// The active fault kinds.
    pub fn faults(&self) -> FaultSet {
        self.slots.iter().filter_map(|c| slot_kind(*c)).collect()
    }

    /// Whether ingest is throttled.
    pub fn throttled(&self) -> bool {
        self.slots.contains(&OUTAGE_THROTTLED)
    }
}

/// How an action changes this step's flow of records, beyond the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowModifier {
    /// No change.
    None,
    /// The run is stopped or deferred this step: nothing is processed.
    Stall,
    /// The failing batch (and, under schema drift, everything attempted) is
    /// dead-lettered.
    Quarantine,
}

impl FlowModifier {
    /// The modifier of an action.
    pub fn of(a: Action) -> FlowModifier {
        match a {
            Action::Restart | Action::Reschedule => FlowModifier::Stall,
            Action::Quarantine => FlowModifier::Quarantine,
            _ => FlowModifier::None,
        }
    }

    /// Dense index (for tables).
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The deterministic part of a step: the state right after the action.
#[derive(Clone, Copy, Debug)]
pub struct Decided {
    /// Slots after backpressure took hold.
    pub slots: [u8; 2],
    /// Whether a human is engaged.
    pub human: bool,
    /// Worker level after scaling.
    pub level: u8,
    /// Whether a scale-up really added workers (not already at the top).
    pub scaled_up: bool,
    /// The action's effect on this step's flows.
    pub modifier: FlowModifier,
}

/// Where the records went in one step, in units, plus what the SLO sees.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Flows {
    /// Units that arrived.
    pub arrived: u32,
    /// Units the job read (attempted to process).
    pub read: u32,
    /// Units written to the sink.
    pub delivered: u32,
    /// Units dead-lettered.
    pub dead_lettered: u32,
    /// Units expired from the backlog.
    pub lost: u32,
    /// Backlog after the step, units.
    pub backlog: u32,
    /// Units attempted against a failing sink.
    pub sink_attempted: u32,
    /// Units rejected by the transform for a schema mismatch.
    pub schema_rejected: u32,
    /// p95 latency, seconds, before measurement noise.
    pub latency_s: f64,
    /// Pipeline error records, before noise.
    pub errors: f64,
    /// Whether the SLO is met.
    pub slo_met: bool,
}

/// The dynamics of one scenario.
#[derive(Clone, Debug)]
pub struct Model {
    /// Units arriving per step.
    pub arrivals: u32,
    /// Capacity per worker level, units per step.
    pub capacity: Vec<u32>,
    /// Workers per level.
    pub workers: Vec<u32>,
    /// Worker level at reset.
    pub base_level: u8,
    /// Backlog bound, units.
    pub backlog_limit: u32,
    /// Records per unit.
    pub unit_records: u32,
    /// Faults active at once.
    pub max_concurrent: u8,
    /// Arrival probability per kind per step.
    pub arrival_p: [f64; FaultKind::COUNT],
    /// The reward the oracle plans with; the simulator's telemetry yields the same.
    pub reward: RewardV1,
    /// Steps per episode.
    pub horizon: u32,
}

impl Model {
    /// The model of a scenario.
    pub fn new(s: &Scenario) -> Model {
        let mut arrival_p = [0.0; FaultKind::COUNT];
        for k in FaultKind::ALL {
            arrival_p[k.index()] = s.arrival_probability(k);
        }
        let p = &s.pipeline;
        Model {
            arrivals: p.arrivals,
            capacity: p.capacity.clone(),
            workers: p.workers.clone(),
            base_level: p.base_level,
            backlog_limit: p.backlog_limit,
            unit_records: p.unit_records,
            max_concurrent: s.faults.max_concurrent,
            arrival_p,
            reward: RewardV1 { unit_records: f64::from(p.unit_records), ..RewardV1::default() },
            horizon: s.horizon,
        }
    }

    /// Number of worker levels.
    pub fn levels(&self) -> u8 {
        self.capacity.len() as u8
    }

    /// The state at reset: no faults, base workers, empty backlog.
    pub fn initial(&self) -> State {
        State { slots: [NO_FAULT; 2], human: false, level: self.base_level, backlog: 0 }
    }

    /// Step 1: the action takes effect.
    pub fn decide(&self, s: &State, a: Action) -> Decided {
        let mut slots = s.slots;
        let mut level = s.level;
        let mut scaled_up = false;
        match a {
            Action::ScaleUp if level + 1 < self.levels() => {
                level += 1;
                scaled_up = true;
            }
            Action::ScaleDown if level > 0 => level -= 1,
            Action::Backpressure => {
                for c in &mut slots {
                    if *c == FaultKind::DownstreamOutage as u8 {
                        *c = OUTAGE_THROTTLED;
                    }
                }
                slots.sort_unstable();
            }
            _ => {}
        }
        let any = slots[0] != NO_FAULT;
        let human = any && (s.human || a == Action::Escalate);
        Decided { slots, human, level, scaled_up, modifier: FlowModifier::of(a) }
    }

    /// Step 2: chance that the fault in slot `code` ends this step.
    pub fn end_probability(&self, code: u8, a: Action, d: &Decided) -> f64 {
        let Some(kind) = slot_kind(code) else { return 0.0 };
        let e = effects(kind);
        let mut fix = e.fix[a.index()];
        if a == Action::ScaleUp && !d.scaled_up {
            fix = 0.0;
        }
        let natural = (e.hazard * e.hazard_factor[a.index()]).min(1.0);
        let human = if d.human && e.human_fixable { HUMAN_FIX } else { 0.0 };
        1.0 - (1.0 - natural) * (1.0 - fix) * (1.0 - human)
    }

    /// Step 3: whether a fault of `kind` may arrive into `slots`.
    pub fn may_arrive(&self, slots: [u8; 2], kind: FaultKind) -> bool {
        let active = slots.iter().filter(|c| **c != NO_FAULT).count();
        active < usize::from(self.max_concurrent) && !slots.iter().any(|c| slot_kind(*c) == Some(kind))
    }

    /// Slots with `kind` added (caller checked [`Model::may_arrive`]).
    pub fn with_fault(slots: [u8; 2], kind: FaultKind) -> [u8; 2] {
        let mut out = slots;
        out[1] = kind as u8;
        out.sort_unstable();
        out
    }

    /// Slots with the faults whose `ended` flag is set removed.
    pub fn without(slots: [u8; 2], ended: [bool; 2]) -> [u8; 2] {
        let mut out = [NO_FAULT; 2];
        let mut n = 0;
        for i in 0..2 {
            if slots[i] != NO_FAULT && !ended[i] {
                out[n] = slots[i];
                n += 1;
            }
        }
        out
    }

    /// Step 4: how records flow with these faults, workers and backlog.
    pub fn flows(&self, slots: [u8; 2], level: u8, backlog: u32, m: FlowModifier) -> Flows {
        let cap = self.capacity[usize::from(level)];
        let mut process = cap;
        let mut outage = false;
        let mut throttled = false;
        let mut schema = false;
        let mut errors = 0.0;
        let mut extra = 0u32;
        for &code in &slots {
            let Some(kind) = slot_kind(code) else { continue };
            extra = extra.max(effects(kind).extra_latency_s);
            process = process.min(match kind {
                FaultKind::Upstream5xx | FaultKind::SchemaDrift | FaultKind::StuckJob | FaultKind::PoisonRecords => 0,
                FaultKind::NetworkTimeout => cap / 2,
                FaultKind::ResourceContention => cap.saturating_sub(2),
                // One hot partition bounds throughput, however many workers run.
                FaultKind::Novel => cap.min(1),
                FaultKind::MemoryPressure => cap / 3,
                FaultKind::DownstreamOutage => cap,
            });
            match kind {
                FaultKind::DownstreamOutage => {
                    outage = true;
                    throttled |= code == OUTAGE_THROTTLED;
                }
                FaultKind::SchemaDrift => schema = true,
                _ => {}
            }
        }
        if m == FlowModifier::Stall {
            process = 0;
        }
        let unit = f64::from(self.unit_records);
        let mut f = Flows { arrived: self.arrivals, ..Flows::default() };
        let mut q = backlog + self.arrivals;
        if m == FlowModifier::Quarantine {
            let moved = q.min(1);
            q -= moved;
            f.dead_lettered += moved;
            if schema {
                let moved = q.min(cap);
                q -= moved;
                f.dead_lettered += moved;
            }
        } else if schema {
            f.schema_rejected = q.min(cap);
        }
        if outage {
            if !throttled {
                let attempted = q.min(process);
                q -= attempted;
                f.read = attempted;
                f.dead_lettered += attempted;
                f.sink_attempted = attempted;
            }
        } else {
            let done = q.min(process);
            q -= done;
            f.read = done;
            f.delivered = done;
        }
        f.lost = q.saturating_sub(self.backlog_limit);
        f.backlog = q - f.lost;
        // Error records per class, before noise; the renderer adds the noise.
        for &code in &slots {
            errors += match slot_kind(code) {
                Some(FaultKind::Upstream5xx) => unit * f64::from(self.arrivals) * 0.5,
                Some(FaultKind::NetworkTimeout) => timeout_errors(f.delivered, unit),
                Some(FaultKind::SchemaDrift) => unit * f64::from(f.schema_rejected.max(1)),
                Some(FaultKind::PoisonRecords) => poison_errors(unit),
                Some(FaultKind::DownstreamOutage) => sink_errors(f.sink_attempted, unit),
                _ => 0.0,
            };
        }
        f.errors = errors;
        f.latency_s = 60.0 + 30.0 * f64::from(f.backlog) + f64::from(extra);
        let delivered = f64::from(f.delivered) * unit;
        let ratio = if errors + delivered > 0.0 { errors / (errors + delivered) } else { 0.0 };
        f.slo_met = f.latency_s <= self.reward.slo.latency_p95_s && ratio <= self.reward.slo.error_ratio;
        f
    }

    /// The reward of a step, as [`RewardV1`] computes it from the rendered
    /// telemetry, without the action's price.
    pub fn flow_reward(&self, f: &Flows, level: u8) -> f64 {
        let r = &self.reward;
        let slo = if f.slo_met { 0.0 } else { 1.0 };
        -slo - r.backlog_penalty * f64::from(f.backlog)
            - r.dead_letter_penalty * f64::from(f.dead_lettered)
            - r.lost_penalty * f64::from(f.lost)
            - r.worker_cost * f64::from(self.workers[usize::from(level)])
    }
}

/// Timeout errors: a third or more of the attempts time out.
pub fn timeout_errors(delivered_units: u32, unit: f64) -> f64 {
    0.5 * unit * f64::from(delivered_units) + 0.2 * unit
}

/// Records rejected per attempt by poison records.
pub fn poison_errors(unit: f64) -> f64 {
    0.1 * unit
}

/// Failed writes against a down sink (health probes fail even when throttled).
pub fn sink_errors(attempted_units: u32, unit: f64) -> f64 {
    (unit * f64::from(attempted_units)).max(0.04 * unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        Model::new(&Scenario::builtin_default())
    }

    #[test]
    fn healthy_pipeline_delivers_everything() {
        let m = model();
        let f = m.flows([NO_FAULT; 2], 1, 0, FlowModifier::None);
        assert_eq!((f.delivered, f.backlog, f.lost, f.dead_lettered), (2, 0, 0, 0));
        assert!(f.slo_met);
    }

    #[test]
    fn outage_dead_letters_unless_throttled() {
        let m = model();
        let o = FaultKind::DownstreamOutage as u8;
        let f = m.flows([o, NO_FAULT], 1, 4, FlowModifier::None);
        assert_eq!((f.delivered, f.dead_lettered, f.backlog), (0, 3, 3));
        let f = m.flows([OUTAGE_THROTTLED, NO_FAULT], 1, 4, FlowModifier::None);
        assert_eq!((f.delivered, f.dead_lettered, f.backlog), (0, 0, 6));
        assert!(!f.slo_met);
    }

    #[test]
    fn backlog_beyond_the_limit_is_lost_and_counted() {
        let m = model();
        let f = m.flows([FaultKind::StuckJob as u8, NO_FAULT], 1, 120, FlowModifier::None);
        assert_eq!((f.lost, f.backlog), (2, 120));
    }

    #[test]
    fn backpressure_throttles_only_an_outage() {
        let m = model();
        let mut s = m.initial();
        s.slots = [FaultKind::SchemaDrift as u8, FaultKind::DownstreamOutage as u8];
        let d = m.decide(&s, Action::Backpressure);
        assert_eq!(d.slots, [FaultKind::SchemaDrift as u8, OUTAGE_THROTTLED]);
    }

    #[test]
    fn end_probabilities_combine_hazard_fix_and_human() {
        let m = model();
        let mut s = m.initial();
        s.slots = [FaultKind::StuckJob as u8, NO_FAULT];
        let d = m.decide(&s, Action::NoOp);
        assert_eq!(m.end_probability(s.slots[0], Action::NoOp, &d), 0.0);
        let d = m.decide(&s, Action::Restart);
        assert!((m.end_probability(s.slots[0], Action::Restart, &d) - 0.95).abs() < 1e-12);
        let d = m.decide(&s, Action::Escalate);
        assert!((m.end_probability(s.slots[0], Action::Escalate, &d) - HUMAN_FIX).abs() < 1e-12);
        s.level = 3;
        s.slots = [FaultKind::MemoryPressure as u8, NO_FAULT];
        let d = m.decide(&s, Action::ScaleUp);
        assert_eq!(m.end_probability(s.slots[0], Action::ScaleUp, &d), 0.0, "no workers added, no fix");
    }
}
