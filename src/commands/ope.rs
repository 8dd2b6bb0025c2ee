//! `selfheal ope`: off-policy evaluation of a candidate policy from a
//! provenance log; and `selfheal simlog`, which writes a simulated one.

use super::report::{load, SimArgs};
use crate::{defaults, wiring};
use anyhow::Result;
use selfheal_agent::RulesPolicy;
use selfheal_core::Slo;
use selfheal_harness::Fixed;
use selfheal_report::ope::{estimate, OpeConfig};
use selfheal_report::policy::PolicyView;
use selfheal_report::simlog::{true_value, write_simlog, SimLogParams};
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

pub fn run_simlog(a: SimLogArgs) -> Result<()> {
    let l = load(a.policy.as_deref(), &a.sim)?;
    let (mut enc, greedy) = wiring::learned(&l.model, &l.scenario, &l.detector)?;
    let reward = wiring::reward(&l.scenario);
    let gamma = l.view.gamma();
    let mut env = Simulator::new(&l.scenario);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&a.out)?);
    let rules = RulesPolicy::new(l.rules.thresholds, Slo::default());
    let params = SimLogParams { episodes: a.episodes, epsilon: a.epsilon, seed: a.seed };
    let decisions = write_simlog(&mut env, enc.as_mut(), &reward, &l.view, rules, &params, &mut out)?;
    out.flush()?;
    let truth = true_value(&mut env, &mut Fixed(greedy), enc.as_mut(), &reward, gamma, a.truth_episodes);
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
