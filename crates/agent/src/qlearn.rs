//! Tabular Q-learning.
//!
//! Update: `Q(s,a) += α(s,a) · (r + γⁿ · max_{a' ∈ mask(s')} Q(s',a') − Q(s,a))`
//! with `n` the transition's `steps` (1, or the sidecar's `reward_windows`
//! when `r` is the discounted sum of that many windows' rewards)
//! with a count-based step size `α(s,a) = max(α_min, n(s,a)^−ω)`: polynomial
//! steps (ω ≈ 0.7) forget the early, exploratory targets faster than `1/n` yet
//! average away the noise of random fault arrivals in often-visited states, where
//! the actions' true values differ only by their small price. Exploration is ε-greedy
//! over the allowed actions, ε following a linear schedule over episodes. Greedy
//! ties break towards the lower action index (NoOp first), so the same table
//! always yields the same policy.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::{
    Action, ActionMask, Checked, Learner, Observation, ParamGuard, Policy, StateEncoder, StateId, Transition,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A dense Q table with visit counts.
///
/// Two counts per cell: **training** visits ([`QTable::visits`]), which the
/// confidence gate and the fallback to a trained neighbour read, and
/// **online** visits ([`QTable::online_visits`]), the updates a sidecar made
/// from live windows. They are kept apart so that a state the simulator
/// never taught cannot talk itself over the gate: thirty online updates of a
/// never-trained state once made it stop borrowing a trained neighbour's
/// choice and take the first of its untried, all-zero actions.
#[derive(Clone, Debug, PartialEq)]
pub struct QTable {
    num_states: usize,
    q: Vec<f64>,
    visits: Vec<u32>,
    online: Vec<u32>,
}

impl QTable {
    /// A zero table over `num_states` states.
    pub fn new(num_states: usize) -> QTable {
        let cells = num_states * Action::COUNT;
        QTable { num_states, q: vec![0.0; cells], visits: vec![0; cells], online: vec![0; cells] }
    }

    /// The online (live) update counts of a state's actions.
    pub fn online_visits(&self, s: StateId) -> &[u32] {
        let i = s as usize * Action::COUNT;
        &self.online[i..i + Action::COUNT]
    }

    /// Set a state's online counts (loading a checkpoint).
    pub fn set_online(&mut self, s: StateId, online: &[u32]) {
        let i = s as usize * Action::COUNT;
        self.online[i..i + Action::COUNT].copy_from_slice(online);
    }

    /// States with any online update.
    pub fn online_states(&self) -> impl Iterator<Item = StateId> + '_ {
        (0..self.num_states as StateId).filter(|s| self.online_visits(*s).iter().any(|v| *v > 0))
    }

    /// Number of states.
    pub fn num_states(&self) -> usize {
        self.num_states
    }

    /// The Q values of a state.
    pub fn row(&self, s: StateId) -> &[f64] {
        let i = s as usize * Action::COUNT;
        &self.q[i..i + Action::COUNT]
    }

    /// The visit counts of a state's actions.
    pub fn visits(&self, s: StateId) -> &[u32] {
        let i = s as usize * Action::COUNT;
        &self.visits[i..i + Action::COUNT]
    }

    /// Total visits of a state.
    pub fn state_visits(&self, s: StateId) -> u64 {
        self.visits(s).iter().map(|v| u64::from(*v)).sum()
    }

    /// Set a state's row (loading a model).
    pub fn set_row(&mut self, s: StateId, q: &[f64], visits: &[u32]) {
        let i = s as usize * Action::COUNT;
        self.q[i..i + Action::COUNT].copy_from_slice(q);
        self.visits[i..i + Action::COUNT].copy_from_slice(visits);
    }

    /// The best allowed action (lowest index on ties).
    pub fn best(&self, s: StateId, mask: ActionMask) -> Action {
        let row = self.row(s);
        let mut best = None;
        for a in mask.iter() {
            match best {
                Some((_, v)) if row[a.index()] <= v => {}
                _ => best = Some((a, row[a.index()])),
            }
        }
        best.map_or(Action::NoOp, |(a, _)| a)
    }

    /// The largest allowed Q value.
    pub fn max(&self, s: StateId, mask: ActionMask) -> f64 {
        let row = self.row(s);
        mask.iter().map(|a| row[a.index()]).fold(f64::NEG_INFINITY, f64::max)
    }

    /// States visited at least once, ascending.
    pub fn visited_states(&self) -> impl Iterator<Item = StateId> + '_ {
        (0..self.num_states as StateId).filter(|s| self.state_visits(*s) > 0)
    }
}

/// Linear ε decay over episodes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpsilonSchedule {
    /// ε at the first episode.
    pub start: f64,
    /// ε from `decay_episodes` on.
    pub end: f64,
    /// Episodes over which ε falls from `start` to `end`.
    pub decay_episodes: u64,
}

impl EpsilonSchedule {
    /// ε at an episode.
    pub fn at(&self, episode: u64) -> f64 {
        if episode >= self.decay_episodes || self.decay_episodes == 0 {
            self.end
        } else {
            self.start + (self.end - self.start) * episode as f64 / self.decay_episodes as f64
        }
    }
}

/// Learning parameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QParams {
    /// Floor of the step size.
    pub alpha: f64,
    /// Exponent ω of the count-based step size `n^−ω`.
    pub alpha_power: f64,
    /// Discount.
    pub gamma: f64,
    /// Exploration schedule.
    pub epsilon: EpsilonSchedule,
}

impl Default for QParams {
    fn default() -> Self {
        QParams {
            alpha: 0.0,
            alpha_power: 0.7,
            gamma: 0.97,
            epsilon: EpsilonSchedule { start: 1.0, end: 0.05, decay_episodes: 10_000 },
        }
    }
}

/// A Q-learning parameter out of its bounds: the parameter's name (as in
/// the model file's `params`) and the bound.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{param} must be {bound}")]
pub struct InvalidQParams {
    /// The parameter, e.g. `alpha_power`.
    pub param: &'static str,
    /// The bound it breaks, e.g. `in (0.5, 1]`.
    pub bound: &'static str,
}

impl ParamGuard for QParams {
    type Error = InvalidQParams;

    /// Check the bounds learning needs: `alpha`, `gamma` and both ends of
    /// ε in [0, 1]; `alpha_power` ω in (0.5, 1], where the count-based step
    /// size `n^−ω` still satisfies the Robbins–Monro conditions (Σα = ∞,
    /// Σα² < ∞; Even-Dar & Mansour, "Learning rates for Q-learning", 2003).
    ///
    /// # Errors
    /// The first parameter out of its bounds, naming it and the bound.
    fn validate(&self) -> Result<(), InvalidQParams> {
        let unit = |x: f64| (0.0..=1.0).contains(&x);
        let checks = [
            (unit(self.alpha), "alpha", "in [0, 1]"),
            (self.alpha_power > 0.5 && self.alpha_power <= 1.0, "alpha_power", "in (0.5, 1]"),
            (unit(self.gamma), "gamma", "in [0, 1]"),
            (unit(self.epsilon.start), "epsilon.start", "in [0, 1]"),
            (unit(self.epsilon.end), "epsilon.end", "in [0, 1]"),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, param, bound)) => Err(InvalidQParams { param, bound }),
            None => Ok(()),
        }
    }
}

/// An ε-greedy Q-learning agent.
#[derive(Clone, Debug)]
pub struct QLearner {
    table: QTable,
    params: Checked<QParams>,
    epsilon: f64,
    rng: Xoshiro256PlusPlus,
}

impl QLearner {
    /// A learner over `num_states` states; `seed` drives exploration.
    /// `params` come from [`ParamGuard::check`] on [`QParams`].
    pub fn new(num_states: usize, params: Checked<QParams>, seed: u64) -> QLearner {
        QLearner {
            table: QTable::new(num_states),
            params,
            epsilon: params.epsilon.start,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
        }
    }

    /// A learner that continues from a table (online learning), at the
    /// schedule's final ε. A model file's `meta.params` are checked when
    /// [`crate::store::ModelFile::load`] reads it ([`crate::store::ModelFile::params`]).
    pub fn from_table(table: QTable, params: Checked<QParams>, seed: u64) -> QLearner {
        QLearner { table, params, epsilon: params.epsilon.end, rng: Xoshiro256PlusPlus::seed_from_u64(seed) }
    }

    /// Set ε for an episode from the schedule.
    pub fn begin_episode(&mut self, episode: u64) {
        self.epsilon = self.params.epsilon.at(episode);
    }

    /// Set ε directly (0 = greedy).
    pub fn set_epsilon(&mut self, eps: f64) {
        self.epsilon = eps;
    }

    /// Current ε.
    pub fn epsilon(&self) -> f64 {
        self.epsilon
    }

    /// The table.
    pub fn table(&self) -> &QTable {
        &self.table
    }

    /// Take the table.
    pub fn into_table(self) -> QTable {
        self.table
    }

    /// Parameters.
    pub fn params(&self) -> &Checked<QParams> {
        &self.params
    }

    /// The probability with which the current ε-greedy policy picks `a`.
    pub fn action_probability(&self, s: StateId, mask: ActionMask, a: Action) -> f64 {
        let greedy = self.table.best(s, mask);
        let explore = self.epsilon / mask.count() as f64;
        explore + if a == greedy { 1.0 - self.epsilon } else { 0.0 }
    }
}

impl Policy for QLearner {
    fn name(&self) -> &str {
        "learned"
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        if self.epsilon > 0.0 && self.rng.gen::<f64>() < self.epsilon {
            let n = obs.mask.count();
            let k = self.rng.gen_range(0..n);
            obs.mask.iter().nth(k).unwrap_or(Action::NoOp)
        } else {
            self.table.best(obs.state, obs.mask)
        }
    }
}

impl QLearner {
    /// The discounted bootstrap `γ^steps · max_{a'} Q(s', a')` of a
    /// transition, 0 when it ended the episode.
    fn bootstrap(&self, t: &Transition) -> f64 {
        if t.done {
            return 0.0;
        }
        let steps = i32::try_from(t.steps.max(1)).unwrap_or(i32::MAX);
        self.params.gamma.powi(steps) * self.table.max(t.next_state, t.next_mask)
    }

    /// A Q update from a live window: the same rule as [`Learner::update`]
    /// (the step size decays with all updates of the cell), counted as an
    /// **online** visit, never as a training one (see [`QTable`]).
    pub fn update_online(&mut self, t: &Transition) {
        let bootstrap = self.bootstrap(t);
        let i = t.state as usize * Action::COUNT + t.action.index();
        self.table.online[i] = self.table.online[i].saturating_add(1);
        let n = self.table.visits[i].saturating_add(self.table.online[i]);
        let alpha = self.params.alpha.max(f64::from(n).powf(-self.params.alpha_power));
        self.table.q[i] += alpha * (t.reward + bootstrap - self.table.q[i]);
    }
}

impl Learner for QLearner {
    fn update(&mut self, t: &Transition) {
        let bootstrap = self.bootstrap(t);
        let i = t.state as usize * Action::COUNT + t.action.index();
        let n = self.table.visits[i].saturating_add(1);
        self.table.visits[i] = n;
        let alpha = self.params.alpha.max(f64::from(n).powf(-self.params.alpha_power));
        self.table.q[i] += alpha * (t.reward + bootstrap - self.table.q[i]);
    }
}

/// ε-greedy: a uniformly random allowed action with probability `eps`, else
/// `greedy`; returns the choice and the probability the rule gave it. The
/// sidecar logs that probability and off-policy evaluation divides by it, so
/// both use this one function.
pub fn epsilon_greedy(rng: &mut impl Rng, eps: f64, greedy: Action, mask: ActionMask) -> (Action, f64) {
    let chosen = if eps > 0.0 && rng.gen::<f64>() < eps {
        let k = rng.gen_range(0..mask.count());
        mask.iter().nth(k).unwrap_or(Action::NoOp)
    } else {
        greedy
    };
    let p = eps / mask.count() as f64 + if chosen == greedy { 1.0 - eps } else { 0.0 };
    (chosen, p)
}

/// The state whose row decides in state `s`: `s` itself when it was visited at
/// least [`GreedyPolicy::MIN_VISITS`] times, else the first of the encoder's
/// fallback states that was, else `s`. Shared by the greedy policy and the
/// sidecar, which learns online and so cannot hold a fixed [`GreedyPolicy`].
pub fn deciding_state(table: &QTable, encoder: &dyn StateEncoder, s: StateId) -> StateId {
    if table.state_visits(s) >= GreedyPolicy::MIN_VISITS {
        return s;
    }
    encoder.fallbacks(s).into_iter().find(|f| table.state_visits(*f) >= GreedyPolicy::MIN_VISITS).unwrap_or(s)
}

/// The greedy policy of a fixed table: what ships and what `evaluate` measures.
///
/// In a state seen fewer than [`GreedyPolicy::MIN_VISITS`] times in training it
/// acts as in the first of the encoder's fallback states that was seen enough.
#[derive(Clone)]
pub struct GreedyPolicy {
    table: QTable,
    encoder: Option<Arc<dyn StateEncoder + Send + Sync>>,
}

impl std::fmt::Debug for GreedyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GreedyPolicy").field("states", &self.table.num_states()).finish()
    }
}

impl GreedyPolicy {
    /// Visits below which a state's row is not trusted on its own.
    pub const MIN_VISITS: u64 = 30;

    /// Greedy over `table`, with no fallback.
    pub fn new(table: QTable) -> GreedyPolicy {
        GreedyPolicy { table, encoder: None }
    }

    /// Greedy over `table`, falling back along `encoder`'s fallback states.
    pub fn with_fallbacks(table: QTable, encoder: Arc<dyn StateEncoder + Send + Sync>) -> GreedyPolicy {
        GreedyPolicy { table, encoder: Some(encoder) }
    }

    /// The state whose row decides in state `s`.
    pub fn deciding_state(&self, s: StateId) -> StateId {
        match &self.encoder {
            Some(enc) => deciding_state(&self.table, enc.as_ref(), s),
            None => s,
        }
    }

    /// The table.
    pub fn table(&self) -> &QTable {
        &self.table
    }
}

impl Policy for GreedyPolicy {
    fn name(&self) -> &str {
        "learned"
    }

    fn act(&mut self, obs: &Observation<'_>) -> Action {
        self.table.best(self.deciding_state(obs.state), obs.mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_decays_linearly_then_holds() {
        let s = EpsilonSchedule { start: 1.0, end: 0.1, decay_episodes: 10 };
        assert_eq!(s.at(0), 1.0);
        assert!((s.at(5) - 0.55).abs() < 1e-12);
        assert_eq!(s.at(10), 0.1);
        assert_eq!(s.at(1000), 0.1);
    }

    #[test]
    fn update_moves_towards_target_and_respects_mask() {
        let mut l = QLearner::new(2, Checked::default(), 1);
        let t = Transition {
            state: 0,
            action: Action::Restart,
            reward: -1.0,
            steps: 1,
            next_state: 1,
            next_mask: ActionMask::ALL,
            done: true,
        };
        l.update(&t);
        assert_eq!(l.table().row(0)[Action::Restart.index()], -1.0, "first visit: alpha = 1");
        l.update(&Transition { reward: 1.0, ..t });
        let alpha2 = 2f64.powf(-QParams::default().alpha_power);
        let q = l.table().row(0)[Action::Restart.index()];
        assert!((q - (-1.0 + alpha2 * 2.0)).abs() < 1e-12, "second visit: alpha = 2^-w");
        // Restart is now above the untried actions at 0.
        assert_eq!(l.table().best(0, ActionMask::ALL), Action::Restart);
        l.update(&Transition { reward: -10.0, ..t });
        // Below 0 again: the untried NoOp wins the tie among zeros.
        assert_eq!(l.table().best(0, ActionMask::ALL), Action::NoOp);
        let masked = ActionMask::ALL.without(Action::NoOp);
        assert_eq!(l.table().best(0, masked), Action::RetryWithBackoff);
    }

    #[test]
    fn exploration_only_picks_allowed_actions() {
        let mut l = QLearner::new(1, Checked::default(), 7);
        l.set_epsilon(1.0);
        let mask = ActionMask::ALL.without(Action::Escalate).without(Action::NoOp);
        let t = selfheal_core::Telemetry::default();
        for _ in 0..1000 {
            let a = l.act(&Observation { telemetry: &t, state: 0, mask, anomalous: false });
            assert!(mask.allows(a));
        }
        let p: f64 = mask.iter().map(|a| l.action_probability(0, mask, a)).sum();
        assert!((p - 1.0).abs() < 1e-12);
    }

    #[test]
    fn n_step_transition_bootstraps_with_gamma_to_the_n() {
        // γ = 0.5 so the powers are exact; α = 1 on a first visit.
        let params = QParams { gamma: 0.5, ..QParams::default() }.check().unwrap();
        let mut l = QLearner::new(2, params, 3);
        // Give the next state a known value: Q(1, NoOp) = 8 (done, so no bootstrap).
        let seed = Transition {
            state: 1,
            action: Action::NoOp,
            reward: 8.0,
            steps: 1,
            next_state: 1,
            next_mask: ActionMask::ALL,
            done: true,
        };
        l.update(&seed);
        assert_eq!(l.table().max(1, ActionMask::ALL), 8.0);
        // Three windows of reward 1 each, summed with discounts: 1 + 0.5 + 0.25 = 1.75.
        // Bootstrap with γ³ = 0.125: target = 1.75 + 0.125 · 8 = 2.75 (with γ it would be 5.75).
        let three = Transition {
            state: 0,
            action: Action::Restart,
            reward: 1.75,
            steps: 3,
            next_state: 1,
            done: false,
            ..seed
        };
        l.update_online(&three);
        assert_eq!(l.table().row(0)[Action::Restart.index()], 2.75);
        // The training update follows the same rule.
        let mut t = QLearner::new(2, params, 3);
        t.update(&seed);
        t.update(&three);
        assert_eq!(t.table().row(0)[Action::Restart.index()], 2.75);
        // One step (and 0, read as 1) bootstraps with γ: 1.75 + 0.5 · 8 = 5.75.
        for steps in [0, 1] {
            let mut o = QLearner::new(2, params, 3);
            o.update(&seed);
            o.update_online(&Transition { steps, ..three });
            assert_eq!(o.table().row(0)[Action::Restart.index()], 5.75, "steps = {steps}");
        }
    }

    #[test]
    fn check_names_each_bound() {
        assert_eq!(QParams::default().validate(), Ok(()), "defaults_pass_their_check");
        type Case = (fn(&mut QParams), &'static str, &'static str);
        let cases: [Case; 9] = [
            (|p| p.alpha = -0.1, "alpha", "in [0, 1]"),
            (|p| p.alpha = 1.1, "alpha", "in [0, 1]"),
            (|p| p.alpha_power = 0.5, "alpha_power", "in (0.5, 1]"),
            (|p| p.alpha_power = 1.01, "alpha_power", "in (0.5, 1]"),
            (|p| p.gamma = -0.01, "gamma", "in [0, 1]"),
            (|p| p.gamma = f64::NAN, "gamma", "in [0, 1]"),
            (|p| p.epsilon.start = 1.5, "epsilon.start", "in [0, 1]"),
            (|p| p.epsilon.end = -1.0, "epsilon.end", "in [0, 1]"),
            (|p| p.epsilon.end = 2.0, "epsilon.end", "in [0, 1]"),
        ];
        for (set, param, bound) in cases {
            let mut p = QParams::default();
            set(&mut p);
            assert_eq!(p.check(), Err(InvalidQParams { param, bound }), "{p:?}");
            assert_eq!(p.validate(), Err(InvalidQParams { param, bound }), "{p:?}");
        }
        let edges = QParams { alpha: 1.0, alpha_power: 1.0, gamma: 0.0, ..QParams::default() };
        assert_eq!(*edges.check().unwrap(), edges, "inclusive ends are allowed");
        let err = QParams { alpha_power: 0.3, ..QParams::default() }.check().unwrap_err();
        assert_eq!(err.to_string(), "alpha_power must be in (0.5, 1]");
    }
}
