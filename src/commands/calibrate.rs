//! `selfheal calibrate`: tune the rule-based baseline's thresholds honestly.

use crate::{defaults, wiring};
use anyhow::Result;
use selfheal_agent::store::{RulesFile, RulesMeta};
use selfheal_agent::{RuleThresholds, RulesPolicy, TelemetryEncoder};
use selfheal_core::seeds::training_episode;
use selfheal_core::Slo;
use selfheal_harness::{run_episode, Fixed};
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

/// The grid searched; `None` switches a rule off.
pub fn grid(base_workers: f64) -> Vec<RuleThresholds> {
    let mut out = Vec::new();
    for retry in [Some(0.05), Some(0.2), Some(0.5), Some(0.9), None] {
        for cpu in [Some(0.8), Some(0.9), None] {
            for heap in [Some(0.85), Some(0.92), None] {
                for stall in [Some(60_000.0), Some(120_000.0), Some(240_000.0), None] {
                    for backlog in [Some(1.0), Some(2.0), Some(4.0), Some(8.0), None] {
                        for esc in [Some(1), Some(2), Some(3), Some(5), Some(8), None] {
                            out.push(RuleThresholds {
                                retry_error_ratio: retry,
                                scale_up_cpu: cpu,
                                scale_up_heap: heap,
                                restart_stalled_ms: stall,
                                backpressure_backlog_steps: backlog,
                                escalate_after_steps: esc,
                                base_workers,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

pub fn run(a: Args) -> Result<()> {
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let base = f64::from(scenario.pipeline.workers[usize::from(scenario.pipeline.base_level)]);
    let candidates = grid(base);
    let seeds: Vec<u64> = (0..a.episodes).map(|i| training_episode(a.seed, i)).collect();
    let score = |th: &RuleThresholds| {
        let mut env = Simulator::new(&scenario);
        let mut enc = TelemetryEncoder::new(wiring::encoder_config(&scenario));
        let reward = wiring::reward(&scenario);
        let mut ctl = Fixed(RulesPolicy::new(*th, Slo::default()));
        seeds.iter().map(|s| run_episode(&mut env, &mut ctl, &mut enc, &reward, *s, |_| {}).ret).sum::<f64>()
            / seeds.len() as f64
    };
    let bar = indicatif::ProgressBar::new(candidates.len() as u64);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = candidates.len().div_ceil(threads);
    let scores: Vec<f64> = std::thread::scope(|sc| {
        let handles: Vec<_> = candidates
            .chunks(chunk)
            .map(|part| {
                let bar = bar.clone();
                let score = &score;
                sc.spawn(move || {
                    part.iter()
                        .map(|th| {
                            bar.inc(1);
                            score(th)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("calibration thread")).collect()
    });
    bar.finish_and_clear();
    // Best mean return; ties go to the earlier (more eager) candidate.
    let (best, best_score) =
        scores.iter().enumerate().fold((0, f64::NEG_INFINITY), |acc, (i, s)| if *s > acc.1 { (i, *s) } else { acc });
    let file = RulesFile::new(
        RulesMeta {
            scenario: scenario.name.clone(),
            seeds: format!("training_episode({}, 0..{})", a.seed, a.episodes),
            candidates: candidates.len() as u64,
            mean_return: best_score,
        },
        candidates[best],
    );
    file.save(&a.out)?;
    eprintln!("best of {} candidates: mean return {best_score:.2} → {}", candidates.len(), a.out.display());
    println!("{}", serde_json::to_string_pretty(&file.thresholds)?);
    Ok(())
}
