//! `selfheal simulate`: one episode as JSON lines.

use crate::{defaults, wiring};
use anyhow::Result;
use selfheal_core::FaultKind;
use selfheal_harness::{run_episode, PolicyKind};
use selfheal_sim::{Oracle, Simulator};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

/// Run one episode and print every step as a JSON line: the action, reward,
/// encoded state, ground truth (active faults, health, record ledger) and the
/// full telemetry window.
#[derive(clap::Args)]
pub struct Args {
    /// Scenario file (TOML); defaults to the shipped default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Episode seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Policy: noop, random, rules, glue-builtins, learned or oracle.
    #[arg(long, default_value = "learned")]
    policy: PolicyKind,
    /// Policy model for `learned`; defaults to the shipped one.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Detector model for detector-v1 policies; defaults to the shipped one.
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Rule thresholds for `rules`; defaults to the shipped ones.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Glue built-in settings for `glue-builtins`; defaults to the shipped ones.
    #[arg(long)]
    glue_builtins: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let model = defaults::policy(a.model.as_deref())?;
    let rules = defaults::rules(a.rules.as_deref())?;
    let detector = defaults::detector(a.detector.as_deref())?;
    let oracle = (a.policy == PolicyKind::Oracle).then(|| Oracle::solve(&scenario));
    let mut parts = wiring::PolicyParts::new(&scenario, &model, &detector, &rules, oracle.as_ref());
    parts.glue = defaults::glue_builtins(a.glue_builtins.as_deref())?.settings;
    let (mut enc, mut ctl) = parts.controller(a.policy)?;
    let mut env = Simulator::new(&scenario);
    let reward = wiring::reward(&scenario);
    let (describer, _) = wiring::encoder(&model.encoder.id, model.encoder.config.clone(), &detector)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = None;
    run_episode(&mut env, ctl.as_mut(), enc.as_mut(), &reward, a.seed, |r| {
        let names = |s: selfheal_core::FaultSet| s.iter().map(FaultKind::name).collect::<Vec<_>>();
        let line = json!({
            "t": r.info.t,
            "state": describer.describe(r.state),
            "action": r.action.name(),
            "reward": r.reward,
            "healthy": r.info.healthy,
            "slo_met": r.info.slo_met,
            "active_faults": names(r.info.active),
            "onsets": names(r.info.onsets),
            "ledger": r.info.ledger,
            "telemetry": r.telemetry,
        });
        if err.is_none() {
            if let Err(e) = writeln!(out, "{line}") {
                err = Some(e);
            }
        }
    });
    if let Some(e) = err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    out.flush().ok();
    Ok(())
}
