//! The oracle: knows the true fault and acts optimally.
//!
//! It solves the simulator's own model ([`Model`]) exactly by backward induction
//! over the finite horizon, maximising the expected undiscounted return that
//! `evaluate` reports. The state is the simulator's hidden state; the step
//! decomposes into the action's outcome (which faults end) and the arrival (which
//! fault starts), so each backward step costs O(states × (actions × 4 + 10)).
//! On the default scenario that is 53k states × 240 steps, about a second.

use crate::model::{slot_kind, FlowModifier, Model, State, NO_FAULT, OUTAGE_THROTTLED};
use crate::scenario::Scenario;
use selfheal_core::{Action, FaultKind, RewardV1};

const MODIFIERS: [FlowModifier; 3] = [FlowModifier::None, FlowModifier::Stall, FlowModifier::Quarantine];

fn code_slot(code: u8) -> usize {
    if code == NO_FAULT {
        FaultKind::COUNT + 1
    } else {
        usize::from(code)
    }
}

/// An optimal policy for one scenario, as a table over (step, hidden state).
#[derive(Clone, Debug)]
pub struct Oracle {
    model: Model,
    configs: Vec<[u8; 2]>,
    config_index: Vec<u32>,
    backlog_levels: usize,
    states: usize,
    policy: Vec<u8>,
    value0: f64,
}

impl Oracle {
    /// Solve a scenario.
    pub fn solve(scenario: &Scenario) -> Oracle {
        let model = Model::new(scenario);
        let configs = enumerate_configs(&model);
        let mut config_index = vec![u32::MAX; (FaultKind::COUNT + 2) * (FaultKind::COUNT + 2)];
        for (i, c) in configs.iter().enumerate() {
            config_index[code_slot(c[0]) * (FaultKind::COUNT + 2) + code_slot(c[1])] = i as u32;
        }
        let levels = usize::from(model.levels());
        let backlog_levels = model.backlog_limit as usize + 1;
        let states = configs.len() * 2 * levels * backlog_levels;
        let mut oracle =
            Oracle { model, configs, config_index, backlog_levels, states, policy: Vec::new(), value0: 0.0 };
        oracle.backward_induction();
        oracle
    }

    fn config(&self, slots: [u8; 2]) -> usize {
        let i = self.config_index[code_slot(slots[0]) * (FaultKind::COUNT + 2) + code_slot(slots[1])];
        assert!(i != u32::MAX, "fault configuration {slots:?} is outside the oracle's scenario");
        i as usize
    }

    fn index(&self, cfg: usize, human: bool, level: usize, backlog: usize) -> usize {
        let levels = usize::from(self.model.levels());
        ((cfg * 2 + usize::from(human)) * levels + level) * self.backlog_levels + backlog
    }

    fn backward_induction(&mut self) {
        let m = &self.model;
        let levels = usize::from(m.levels());
        let nb = self.backlog_levels;
        let nc = self.configs.len();
        let horizon = m.horizon as usize;

        // Flows do not depend on time: tabulate reward and next backlog per
        // (configuration after arrival, level, backlog, modifier).
        let flow_at = |cfg: usize, level: usize, b: usize, mi: usize| ((cfg * levels + level) * nb + b) * 3 + mi;
        let mut flow_r = vec![0.0; nc * levels * nb * 3];
        let mut flow_b = vec![0u32; nc * levels * nb * 3];
        for (ci, slots) in self.configs.iter().enumerate() {
            for level in 0..levels {
                for b in 0..nb {
                    for (mi, md) in MODIFIERS.iter().enumerate() {
                        let f = m.flows(*slots, level as u8, b as u32, *md);
                        flow_r[flow_at(ci, level, b, mi)] = m.flow_reward(&f, level as u8);
                        flow_b[flow_at(ci, level, b, mi)] = f.backlog;
                    }
                }
            }
        }
        // Arrival distribution per configuration (before arrival).
        let arrivals: Vec<Vec<(f64, usize)>> = self
            .configs
            .iter()
            .map(|slots| {
                let mut out = Vec::new();
                let mut none = 1.0;
                for k in FaultKind::ALL {
                    let p = m.arrival_p[k.index()];
                    if p > 0.0 && m.may_arrive(*slots, k) {
                        out.push((p, self.config(Model::with_fault(*slots, k))));
                        none -= p;
                    }
                }
                out.push((none, self.config(*slots)));
                out
            })
            .collect();
        // Outcomes of each action per (configuration, human, level): which faults
        // end, with what probability.
        struct Outcomes {
            level: usize,
            modifier: usize,
            cost: f64,
            branches: Vec<(f64, usize, bool)>,
        }
        let mut outcomes: Vec<Outcomes> = Vec::with_capacity(nc * 2 * levels * Action::COUNT);
        for slots in &self.configs {
            for human in [false, true] {
                for level in 0..levels {
                    for a in Action::ALL {
                        let s = State { slots: *slots, human, level: level as u8, backlog: 0 };
                        let d = m.decide(&s, a);
                        let p = [m.end_probability(d.slots[0], a, &d), m.end_probability(d.slots[1], a, &d)];
                        let mut branches = Vec::with_capacity(4);
                        for e0 in [false, true] {
                            for e1 in [false, true] {
                                let pr = if e0 { p[0] } else { 1.0 - p[0] } * if e1 { p[1] } else { 1.0 - p[1] };
                                if pr == 0.0 {
                                    continue;
                                }
                                let mid = Model::without(d.slots, [e0, e1]);
                                let h = d.human && mid[0] != NO_FAULT;
                                branches.push((pr, self.config(mid), h));
                            }
                        }
                        outcomes.push(Outcomes {
                            level: usize::from(d.level),
                            modifier: d.modifier.index(),
                            cost: RewardV1::action_cost(a),
                            branches,
                        });
                    }
                }
            }
        }

        let mut v_next = vec![0.0f64; self.states];
        let mut v_now = vec![0.0f64; self.states];
        let mut g = vec![0.0f64; self.states * 3];
        let mut policy = vec![0u8; horizon * self.states];
        let mut q = vec![0.0f64; nb];
        for t in (0..horizon).rev() {
            // G(mid state, modifier): expectation over arrivals of flow reward
            // plus the value of the next state.
            for (ci, arr) in arrivals.iter().enumerate() {
                for human in [false, true] {
                    for level in 0..levels {
                        for mi in 0..3 {
                            for b in 0..nb {
                                let mut acc = 0.0;
                                for &(p, cn) in arr {
                                    let fi = flow_at(cn, level, b, mi);
                                    let h = human && self.configs[cn][0] != NO_FAULT;
                                    let next = self.index(cn, h, level, flow_b[fi] as usize);
                                    acc += p * (flow_r[fi] + v_next[next]);
                                }
                                g[self.index(ci, human, level, b) * 3 + mi] = acc;
                            }
                        }
                    }
                }
            }
            let pol = &mut policy[t * self.states..(t + 1) * self.states];
            for ci in 0..nc {
                for human in [false, true] {
                    for level in 0..levels {
                        let base = self.index(ci, human, level, 0);
                        let ob = ((ci * 2 + usize::from(human)) * levels + level) * Action::COUNT;
                        for (ai, o) in outcomes[ob..ob + Action::COUNT].iter().enumerate() {
                            q.iter_mut().for_each(|x| *x = -o.cost);
                            for &(pr, mc, h) in &o.branches {
                                let gb = self.index(mc, h, o.level, 0);
                                for (b, qb) in q.iter_mut().enumerate() {
                                    *qb += pr * g[(gb + b) * 3 + o.modifier];
                                }
                            }
                            for (b, qb) in q.iter().enumerate() {
                                if ai == 0 || *qb > v_now[base + b] + 1e-12 {
                                    v_now[base + b] = *qb;
                                    pol[base + b] = ai as u8;
                                }
                            }
                        }
                    }
                }
            }
            std::mem::swap(&mut v_now, &mut v_next);
        }
        let s0 = self.model.initial();
        self.value0 = v_next[self.index(self.config(s0.slots), s0.human, usize::from(s0.level), 0)];
        self.policy = policy;
    }

    /// The optimal action at step `t` (0-based) in hidden state `s`.
    pub fn act(&self, t: u32, s: &State) -> Action {
        let t = (t as usize).min(self.model.horizon as usize - 1);
        let i = self.index(self.config(s.slots), s.human, usize::from(s.level), s.backlog as usize);
        Action::from_index(usize::from(self.policy[t * self.states + i])).expect("stored action index")
    }

    /// Expected return of the optimal policy from the initial state.
    pub fn expected_return(&self) -> f64 {
        self.value0
    }

    /// Size of the state space it solved.
    pub fn num_states(&self) -> usize {
        self.states
    }
}

/// Every fault configuration the scenario can reach, the empty one first.
fn enumerate_configs(m: &Model) -> Vec<[u8; 2]> {
    let codes: Vec<u8> = FaultKind::ALL
        .iter()
        .filter(|k| m.arrival_p[k.index()] > 0.0)
        .flat_map(|k| if *k == FaultKind::DownstreamOutage { vec![*k as u8, OUTAGE_THROTTLED] } else { vec![*k as u8] })
        .collect();
    let mut out = vec![[NO_FAULT, NO_FAULT]];
    for &c in &codes {
        out.push([c, NO_FAULT]);
    }
    if m.max_concurrent >= 2 {
        for (i, &a) in codes.iter().enumerate() {
            for &b in &codes[i + 1..] {
                if slot_kind(a) != slot_kind(b) {
                    let mut pair = [a, b];
                    pair.sort_unstable();
                    out.push(pair);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenario_state_space() {
        let m = Model::new(&Scenario::builtin_default());
        // 1 empty + 10 singles (outage twice) + 28 + 16 pairs.
        assert_eq!(enumerate_configs(&m).len(), 55);
    }

    #[test]
    fn oracle_restarts_a_stuck_job_and_waits_when_healthy() {
        let text = "name='t'\nhorizon=30\n[faults]\nrate=0.05\n[faults.mix]\nstuck_job=1\nschema_drift=1\n";
        let o = Oracle::solve(&Scenario::from_toml_str(text, "t").unwrap());
        let m = Model::new(&Scenario::from_toml_str(text, "t").unwrap());
        let mut s = m.initial();
        assert_eq!(o.act(0, &s), Action::NoOp);
        s.slots = [FaultKind::StuckJob as u8, NO_FAULT];
        assert_eq!(o.act(0, &s), Action::Restart);
        s.slots = [FaultKind::SchemaDrift as u8, NO_FAULT];
        assert_eq!(o.act(0, &s), Action::SchemaRemap);
    }
}
