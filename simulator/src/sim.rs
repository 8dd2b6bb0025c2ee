//! The simulator as an [`Environment`]: samples [`Model`] and renders telemetry.
//!
//! Three RNG streams per episode, all derived from the episode seed: fault
//! arrivals, fault endings, and measurement noise. Each draws a fixed amount per
//! step whatever the policy does, so every policy evaluated on a seed meets the
//! same faults at the same times (common random numbers), which makes
//! side-by-side comparisons far less noisy than their seeds alone would be.

use crate::model::{Model, State, NO_FAULT};
use crate::render::{draws, render};
use crate::scenario::Scenario;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::seeds::mix as mix_seed;
use selfheal_core::{Action, Environment, FaultKind, FaultSet, RecordLedger, Step, StepInfo, Telemetry};

/// A simulated pipeline.
#[derive(Clone, Debug)]
pub struct Simulator {
    model: Model,
    state: State,
    t: u32,
    stuck_steps: u32,
    ledger: RecordLedger,
    arrivals: Xoshiro256PlusPlus,
    endings: Xoshiro256PlusPlus,
    noise: Xoshiro256PlusPlus,
}

impl Simulator {
    /// A simulator for a scenario; call [`Environment::reset`] before stepping.
    pub fn new(scenario: &Scenario) -> Simulator {
        let model = Model::new(scenario);
        let state = model.initial();
        Simulator {
            model,
            state,
            t: 0,
            stuck_steps: 0,
            ledger: RecordLedger::default(),
            arrivals: Xoshiro256PlusPlus::seed_from_u64(0),
            endings: Xoshiro256PlusPlus::seed_from_u64(0),
            noise: Xoshiro256PlusPlus::seed_from_u64(0),
        }
    }

    /// The dynamics.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The hidden state (for the oracle and for tests; never for policies).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Steps taken in this episode.
    pub fn t(&self) -> u32 {
        self.t
    }

    /// Where every record went so far.
    pub fn ledger(&self) -> RecordLedger {
        self.ledger
    }

    /// Force a fault to be active now (tests and fault drills). Returns false if
    /// the slots are full or the kind is already active.
    pub fn inject(&mut self, kind: FaultKind) -> bool {
        if !self.model.may_arrive(self.state.slots, kind) {
            return false;
        }
        self.state.slots = Model::with_fault(self.state.slots, kind);
        true
    }

    fn arrival(&mut self) -> Option<FaultKind> {
        let u: f64 = self.arrivals.gen();
        let mut acc = 0.0;
        for k in FaultKind::ALL {
            acc += self.model.arrival_p[k.index()];
            if u < acc {
                return Some(k);
            }
        }
        None
    }
}

impl Environment for Simulator {
    fn reset(&mut self, seed: u64) -> Telemetry {
        self.arrivals = Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, 1));
        self.endings = Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, 2));
        self.noise = Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, 3));
        self.state = self.model.initial();
        self.t = 0;
        self.stuck_steps = 0;
        self.ledger = RecordLedger::default();
        // The first window shows the pipeline as it was before the episode: healthy.
        let f = self.model.flows(self.state.slots, self.state.level, 0, crate::model::FlowModifier::None);
        let u = draws(&mut self.noise);
        render(&self.model, &self.state, &f, 0, &u)
    }

    /// Faults drawn from the scenario's mix (one, or two where the scenario
    /// allows it, each with probability ½; an outage throttled with
    /// probability ½), a backlog uniform in `0..=backlog_limit` and any worker
    /// level; the first window shows them. The faults are not counted as onsets: the episode starts inside
    /// the incident.
    fn reset_exploring(&mut self, seed: u64) -> Telemetry {
        self.reset(seed);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix_seed(seed, 4));
        let total: f64 = self.model.arrival_p.iter().sum();
        let draw = |rng: &mut Xoshiro256PlusPlus| {
            let u = rng.gen::<f64>() * total;
            let mut acc = 0.0;
            FaultKind::ALL.into_iter().find(|k| {
                acc += self.model.arrival_p[k.index()];
                u < acc
            })
        };
        if total > 0.0 {
            let n = if rng.gen::<bool>() { 2 } else { 1 };
            for _ in 0..n {
                if let Some(kind) = draw(&mut rng) {
                    if self.model.may_arrive(self.state.slots, kind) {
                        self.state.slots = Model::with_fault(self.state.slots, kind);
                    }
                }
            }
        }
        // An outage may already be throttled (backpressure applied earlier):
        // late stages of a long outage, a full backlog behind a held ingest,
        // are where a policy must choose between dead letters and expiry.
        if rng.gen::<bool>() {
            for c in &mut self.state.slots {
                if *c == FaultKind::DownstreamOutage as u8 {
                    *c = crate::model::OUTAGE_THROTTLED;
                }
            }
            self.state.slots.sort_unstable();
        }
        self.state.backlog = rng.gen_range(0..=self.model.backlog_limit);
        self.state.level = rng.gen_range(0..self.model.capacity.len()) as u8;
        let f =
            self.model.flows(self.state.slots, self.state.level, self.state.backlog, crate::model::FlowModifier::None);
        let u = draws(&mut self.noise);
        render(&self.model, &self.state, &f, 0, &u)
    }

    fn step(&mut self, action: Action) -> Step {
        let m = &self.model;
        let d = m.decide(&self.state, action);
        let u_end: [f64; 2] = [self.endings.gen(), self.endings.gen()];
        let ended = [
            u_end[0] < m.end_probability(d.slots[0], action, &d),
            u_end[1] < m.end_probability(d.slots[1], action, &d),
        ];
        let mut slots = Model::without(d.slots, ended);
        let human = d.human && slots[0] != NO_FAULT;
        let mut onsets = FaultSet::EMPTY;
        if let Some(kind) = self.arrival() {
            if self.model.may_arrive(slots, kind) {
                slots = Model::with_fault(slots, kind);
                onsets.insert(kind);
            }
        }
        let m = &self.model;
        let f = m.flows(slots, d.level, self.state.backlog, d.modifier);
        self.state = State { slots, human, level: d.level, backlog: f.backlog };
        self.t += 1;
        let active = self.state.faults();
        if active.contains(FaultKind::StuckJob) {
            self.stuck_steps += 1;
        } else {
            self.stuck_steps = 0;
        }
        let unit = u64::from(m.unit_records);
        let l = &mut self.ledger;
        l.arrived += u64::from(f.arrived) * unit;
        l.delivered += u64::from(f.delivered) * unit;
        l.dead_lettered += u64::from(f.dead_lettered) * unit;
        l.lost += u64::from(f.lost) * unit;
        l.queued = u64::from(f.backlog) * unit;
        let u = draws(&mut self.noise);
        let telemetry = render(m, &self.state, &f, self.stuck_steps, &u);
        Step {
            telemetry,
            done: self.t >= m.horizon,
            info: StepInfo {
                t: self.t,
                healthy: active.is_empty() && f.slo_met,
                slo_met: f.slo_met,
                onsets,
                active,
                ledger: self.ledger,
                workers: m.workers[usize::from(d.level)],
            },
        }
    }

    fn horizon(&self) -> u32 {
        self.model.horizon
    }
}
