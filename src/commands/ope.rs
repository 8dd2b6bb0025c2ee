//! `selfheal ope`: off-policy evaluation of a candidate policy from a
//! provenance log; and `selfheal simlog`, which writes a simulated one.

use super::report::{load, SimArgs};
use crate::{defaults, wiring};
use anyhow::Result;
use selfheal_agent::RulesPolicy;
use selfheal_core::{Action, ActionMask, Metric, Observation, Policy, Slo, StateId, Telemetry};
use selfheal_harness::{run_episode, Controller, Fixed};
use selfheal_report::log::{
    line, DecisionRecord, OutcomeRecord, OutcomeStatus, Record, RewardRecord, Verdict, WindowSummary,
};
use selfheal_report::ope::{estimate, Explorer, OpeConfig};
use selfheal_report::policy::PolicyView;
use selfheal_sim::Simulator;
use std::io::Write;
use std::path::PathBuf;

/// Estimate a candidate policy's value from logged decisions before deploying
/// it: per-decision weighted importance sampling and weighted doubly robust
/// (direct model: the candidate's own Q table), each with a 95 % bootstrap
/// interval over episodes. Episodes are chunks of `--horizon` consecutive
/// decisions of one pipeline; the value is the expected discounted return of a
/// chunk (γ: the candidate's). The log must carry the behaviour policy's
/// `probability` of every choice and hold every decision (`log_healthy = true`).
#[derive(clap::Args)]
pub struct Args {
    /// Provenance log; its rotated segments (provenance.000001.jsonl, ...) are read too.
    #[arg(long)]
    log: PathBuf,
    /// Candidate policy; defaults to the shipped models/policy.json.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Decisions per episode.
    #[arg(long, default_value_t = 240)]
    horizon: usize,
    /// Discount [default: the candidate's training discount].
    #[arg(long)]
    gamma: Option<f64>,
    /// Bootstrap resamples.
    #[arg(long, default_value_t = 2000)]
    resamples: usize,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0x00FE_5EED)]
    seed: u64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let view = PolicyView::new(defaults::policy(a.policy.as_deref())?)?;
    let log = crate::commands::provlog::read_review_log(&a.log)?;
    let cfg = OpeConfig { horizon: a.horizon, gamma: a.gamma, resamples: a.resamples, seed: a.seed };
    let r = estimate(&view, &log, cfg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print!("{}", selfheal_report::ope::text(&r));
    }
    Ok(())
}

/// Write a simulated provenance log (development): the policy, ε-greedy, runs
/// on the scenario and every decision is logged as the sidecar logs it (with
/// the behaviour probability, the rules' shadow choice, outcome and reward).
/// With `--truth-episodes N` it also prints the greedy policy's true value
/// (mean discounted return over N fresh episodes).
#[derive(clap::Args)]
pub struct SimLogArgs {
    /// Output log file.
    #[arg(long)]
    out: PathBuf,
    /// Policy; defaults to the shipped models/policy.json.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Seed of the behaviour (exploration and episode seeds).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Episodes to log (each its own pipeline, one decision per step).
    #[arg(long, default_value_t = 200)]
    episodes: u64,
    /// Exploration ε of the behaviour policy.
    #[arg(long, default_value_t = 0.05)]
    epsilon: f64,
    /// Episodes for the true value (0: none).
    #[arg(long, default_value_t = 0)]
    truth_episodes: u64,
    #[command(flatten)]
    sim: SimArgs,
}

struct Behaviour<'a> {
    view: &'a PolicyView,
    explorer: Explorer,
    rules: RulesPolicy,
    steps: Vec<(StateId, ActionMask, Action, f64, Action, Telemetry)>,
}

impl Controller<Simulator> for Behaviour<'_> {
    fn name(&self) -> &str {
        "behaviour"
    }
    fn reset(&mut self, seed: u64) {
        self.explorer.reseed(seed ^ 0xB0E4_A710);
        self.rules.reset(seed);
        self.steps.clear();
    }
    fn decide(&mut self, _env: &Simulator, obs: &Observation<'_>) -> Action {
        let greedy = self.view.act_masked(obs.state, obs.mask);
        let (chosen, p) = self.explorer.choose(greedy, obs.mask);
        let shadow = self.rules.act(obs);
        self.steps.push((obs.state, obs.mask, chosen, p, shadow, *obs.telemetry));
        chosen
    }
}

/// 2026-01-01T00:00:00Z, the simulated log's clock origin.
const T0_MS: i64 = 1_767_225_600_000;

pub fn run_simlog(a: SimLogArgs) -> Result<()> {
    let l = load(a.policy.as_deref(), &a.sim)?;
    let (mut enc, greedy) = wiring::learned(&l.model, &l.scenario, &l.detector)?;
    let reward = wiring::reward(&l.scenario);
    let gamma = l.view.gamma();
    let mut env = Simulator::new(&l.scenario);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&a.out)?);
    let mut b = Behaviour {
        view: &l.view,
        explorer: Explorer::new(a.epsilon, a.seed),
        rules: RulesPolicy::new(l.rules.thresholds, Slo::default()),
        steps: Vec::new(),
    };
    let horizon = i64::from(l.scenario.horizon);
    let mut decisions = 0u64;
    for e in 0..a.episodes {
        let env_seed = 1_000_000 + a.seed * 100_000 + e;
        let mut rewards = Vec::new();
        run_episode(&mut env, &mut b, enc.as_mut(), &reward, env_seed, |s| rewards.push((s.reward, s.state)));
        let pipeline = format!("sim-{}-{e:05}", a.seed);
        for (t, ((state, mask, chosen, p, shadow, tel), (r, _))) in b.steps.iter().zip(&rewards).enumerate() {
            let ts = T0_MS + ((e as i64) * horizon + t as i64) * 60_000;
            let id = format!("{}-{e}-{t}", a.seed);
            let parts = l.view.parts(*state);
            let sig = parts.map_or(0, |x| x.signature);
            let next = rewards.get(t + 1).map_or(*state, |x| x.1);
            let q: Vec<(String, f64)> = mask.iter().map(|x| (x.name().to_string(), l.view.q(*state, x))).collect();
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
                state_text: l.view.describe(*state),
                q,
                visits: l.view.table().state_visits(l.view.deciding(*state)),
                chosen: *chosen,
                probability: *p,
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
            let qv = l.view.q(*state, *chosen);
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
    out.flush()?;
    let truth = if a.truth_episodes > 0 {
        let mut ctl = Fixed(greedy);
        let mut sum = 0.0;
        for e in 0..a.truth_episodes {
            let (mut ret, mut disc) = (0.0, 1.0);
            run_episode(&mut env, &mut ctl, enc.as_mut(), &reward, 3_000_000 + e, |s| {
                ret += disc * s.reward;
                disc *= gamma;
            });
            sum += ret;
        }
        Some(sum / a.truth_episodes as f64)
    } else {
        None
    };
    println!(
        "{}",
        serde_json::json!({
            "log": a.out.display().to_string(), "decisions": decisions, "episodes": a.episodes,
            "epsilon": a.epsilon, "seed": a.seed, "gamma": gamma,
            "truth_episodes": a.truth_episodes, "true_value": truth,
        })
    );
    Ok(())
}
