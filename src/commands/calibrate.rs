//! `selfheal calibrate`: tune the rule-based baseline's thresholds honestly.

use crate::{defaults, wiring};
use anyhow::{Context, Result};
use selfheal_agent::store::{RulesFile, RulesMeta};
use selfheal_agent::TelemetryEncoder;
use selfheal_core::seeds::training_episode;
use selfheal_harness::{calibrate_rules, rule_grid};
use selfheal_sim::Simulator;
use std::path::PathBuf;

/// Calibrate the rule-based policy: grid-search its thresholds on training
/// seeds (never the evaluation seeds) and keep the combination with the best
/// mean return. The result is what `evaluate` calls "rules".
#[derive(clap::Args)]
pub struct Args {
    /// Scenario file (TOML); defaults to the shipped default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Training episodes per candidate.
    #[arg(long, default_value_t = 60)]
    episodes: u64,
    /// Seed the training episodes derive from.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Where to write the thresholds.
    #[arg(long, default_value = "models/rules.json")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let base = f64::from(scenario.pipeline.workers[usize::from(scenario.pipeline.base_level)]);
    let candidates = rule_grid(base);
    let seeds: Vec<u64> = (0..a.episodes).map(|i| training_episode(a.seed, i)).collect();
    let make = || (Simulator::new(&scenario), TelemetryEncoder::new(wiring::encoder_config(&scenario)));
    let bar = indicatif::ProgressBar::new(candidates.len() as u64);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let reward = wiring::reward(&scenario);
    let best = calibrate_rules(&candidates, &seeds, &make, &reward, threads, &|| bar.inc(1))
        .context("the grid has no candidates")?;
    bar.finish_and_clear();
    let file = RulesFile::new(
        RulesMeta {
            scenario: scenario.name.clone(),
            seeds: format!("training_episode({}, 0..{})", a.seed, a.episodes),
            candidates: candidates.len() as u64,
            mean_return: best.mean_return,
        },
        best.best,
    );
    file.save(&a.out)?;
    eprintln!("best of {} candidates: mean return {:.2} → {}", candidates.len(), best.mean_return, a.out.display());
    println!("{}", serde_json::to_string_pretty(&file.thresholds)?);
    Ok(())
}
