//! A simulated provenance log, for testing off-policy evaluation where the
//! truth is known: a behaviour policy (the learned policy's greedy choice,
//! explored with ε-greedy, [`Explorer`]) runs episodes of an environment and
//! every step is written as the sidecar would log it (decision with the
//! behaviour's probability, outcome, reward), in the schema's record types.
//! The true value of the greedy policy comes from running it directly.
//! Generic over the environment; the binary passes the simulator.

use crate::log::{line, DecisionRecord, OutcomeRecord, OutcomeStatus, Record, RewardRecord, Verdict, WindowSummary};
use crate::ope::Explorer;
use crate::policy::PolicyView;
use selfheal_agent::RulesPolicy;
use selfheal_core::Telemetry;
use selfheal_core::{Action, ActionMask, Environment, Metric, Observation, Policy, RewardFn, StateEncoder, StateId};
use selfheal_harness::{run_episode, Controller};
use std::io::Write;

/// 2026-01-01T00:00:00Z, the simulated log's clock origin (Unix ms).
pub const T0_MS: i64 = 1_767_225_600_000;

/// How the log is made.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimLogParams {
    /// Episodes to log; each is its own pipeline `sim-SEED-EEEEE`, one
    /// decision per step.
    pub episodes: u64,
    /// Exploration ε of the behaviour policy, 0..=1.
    pub epsilon: f64,
    /// Seed of the exploration; episode `e` runs on seed
    /// 1,000,000 + seed × 100,000 + e.
    pub seed: u64,
}

/// The behaviour: the greedy choice of `view`, explored; the rule policy's
/// choice kept as the shadow. Remembers the episode's steps.
struct Behaviour<'a> {
    view: &'a PolicyView,
    explorer: Explorer,
    rules: RulesPolicy,
    steps: Vec<(StateId, ActionMask, Action, f64, Action, Telemetry)>,
}

impl<E> Controller<E> for Behaviour<'_> {
    fn name(&self) -> &str {
        "behaviour"
    }
    fn reset(&mut self, seed: u64) {
        self.explorer.reseed(seed ^ 0xB0E4_A710);
        self.rules.reset(seed);
        self.steps.clear();
    }
    fn decide(&mut self, _env: &E, obs: &Observation<'_>) -> Action {
        let greedy = self.view.act_masked(obs.state, obs.mask);
        let (chosen, p) = self.explorer.choose(greedy, obs.mask);
        let shadow = self.rules.act(obs);
        self.steps.push((obs.state, obs.mask, chosen, p, shadow, *obs.telemetry));
        chosen
    }
}

/// Run the behaviour for `p.episodes` episodes of `env` and write every step
/// to `out` as JSON lines (decision; outcome `succeeded` for anything but
/// `noop`; reward one window later). Steps are one minute apart from
/// [`T0_MS`], episode after episode. Returns the decisions written; errors
/// are `out`'s.
pub fn write_simlog<E, S, R>(
    env: &mut E,
    enc: &mut S,
    reward: &R,
    view: &PolicyView,
    rules: RulesPolicy,
    p: &SimLogParams,
    out: &mut impl Write,
) -> std::io::Result<u64>
where
    E: Environment,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    let mut b = Behaviour { view, explorer: Explorer::new(p.epsilon, p.seed), rules, steps: Vec::new() };
    let horizon = i64::from(env.horizon());
    let mut decisions = 0u64;
    for e in 0..p.episodes {
        let env_seed = 1_000_000 + p.seed * 100_000 + e;
        let mut rewards = Vec::new();
        run_episode(env, &mut b, enc, reward, env_seed, |s| rewards.push((s.reward, s.state)));
        let pipeline = format!("sim-{}-{e:05}", p.seed);
        for (t, ((state, mask, chosen, prob, shadow, tel), (r, _))) in b.steps.iter().zip(&rewards).enumerate() {
            let ts = T0_MS + ((e as i64) * horizon + t as i64) * 60_000;
            let id = format!("{}-{e}-{t}", p.seed);
            let parts = view.parts(*state);
            let sig = parts.map_or(0, |x| x.signature);
            let next = rewards.get(t + 1).map_or(*state, |x| x.1);
            let q: Vec<(String, f64)> = mask.iter().map(|x| (x.name().to_string(), view.q(*state, x))).collect();
            let verdict = match chosen {
                Action::NoOp => Verdict::Noop,
                Action::Escalate => Verdict::Escalated,
                _ => Verdict::Allowed,
            };
            let d = DecisionRecord {
                id: id.clone(),
                ts_ms: ts,
                pipeline: pipeline.clone(),
                window: WindowSummary {
                    ts_ms: ts,
                    latency_p95_s: tel.get(Metric::LatencyP95),
                    error_ratio: tel.error_ratio(),
                    backlog: tel.get(Metric::Backlog),
                    records_in: tel.get(Metric::RecordsIn),
                    workers: tel.get(Metric::Executors),
                },
                score: 0.0,
                anomalous: sig > 0,
                signature: sig as u16,
                state: *state,
                state_text: view.describe(*state),
                q,
                visits: view.table().state_visits(view.deciding(*state)),
                chosen: *chosen,
                probability: *prob,
                shadow: shadow.name().into(),
                glue_shadow: None,
                mode: selfheal_guard::Mode::Act,
                verdict,
                reason: "simulated (selfheal simlog)".into(),
                idempotency_key: (*chosen != Action::NoOp).then(|| format!("{id}/{}", chosen.name())),
                cause: Default::default(),
                evidence: Vec::new(),
                policy_version: None,
            };
            out.write_all(line(&Record::Decision(d)).as_bytes())?;
            if *chosen != Action::NoOp {
                let o = OutcomeRecord {
                    id: id.clone(),
                    ts_ms: ts + 1000,
                    status: OutcomeStatus::Succeeded,
                    detail: "simulated".into(),
                };
                out.write_all(line(&Record::Outcome(o)).as_bytes())?;
            }
            let qv = view.q(*state, *chosen);
            let w = RewardRecord {
                id,
                ts_ms: ts + 60_000,
                reward: *r,
                windows: 1,
                next_state: next,
                action: None,
                q_before: qv,
                q_after: qv,
            };
            out.write_all(line(&Record::Reward(w)).as_bytes())?;
            decisions += 1;
        }
    }
    Ok(decisions)
}

/// The true value of `ctl`: its mean discounted return (discount `gamma`)
/// over `episodes` episodes on seeds 3,000,000 + e; `None` for 0 episodes.
pub fn true_value<E, C, S, R>(
    env: &mut E,
    ctl: &mut C,
    enc: &mut S,
    reward: &R,
    gamma: f64,
    episodes: u64,
) -> Option<f64>
where
    E: Environment,
    C: Controller<E> + ?Sized,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    if episodes == 0 {
        return None;
    }
    let mut sum = 0.0;
    for e in 0..episodes {
        let (mut ret, mut disc) = (0.0, 1.0);
        run_episode(env, ctl, enc, reward, 3_000_000 + e, |s| {
            ret += disc * s.reward;
            disc *= gamma;
        });
        sum += ret;
    }
    Some(sum / episodes as f64)
}
