//! `selfheal fit-detector`: grow the pipeline detector on simulated telemetry.

use crate::{defaults, wiring};
use anyhow::{Context, Result};
use selfheal_agent::store::write_atomic;
use selfheal_agent::{NoOpPolicy, RandomPolicy, RulesPolicy};
use selfheal_core::seeds::training_episode;
use selfheal_core::{Detector, FaultKind, Slo, Telemetry};
use selfheal_detect::forest::ForestParams;
use selfheal_detect::telemetry::{Coverage, DetectorModel, FitParams, TelemetryDetector};
use selfheal_harness::{run_episode, Controller, Fixed};
use selfheal_sim::Simulator;
use std::path::PathBuf;

/// Fit the pipeline detector: an isolation forest grown on healthy telemetry
/// windows, a threshold at a target false-alarm rate, and failure signatures
/// (k-means, k by silhouette) over the windows it flags.
///
/// Windows come from simulated episodes on training seeds (never evaluation
/// seeds), run by the no-op, random and rule-based policies so that faults are
/// seen both untreated and mid-treatment; the simulator's ground truth labels
/// which windows are healthy. Same arguments, same model file.
#[derive(clap::Args)]
pub struct Args {
    /// Scenario file (TOML); defaults to the shipped default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Episodes per policy.
    #[arg(long, default_value_t = 150)]
    episodes: u64,
    /// Seed of the episodes, the forest and the k-means.
    #[arg(long, default_value_t = 11)]
    seed: u64,
    /// Share of healthy windows allowed over the threshold.
    #[arg(long, default_value_t = 0.02)]
    false_alarm_rate: f64,
    /// Smallest number of signatures tried.
    #[arg(long, default_value_t = 6)]
    k_min: usize,
    /// Largest number of signatures tried.
    #[arg(long, default_value_t = 16)]
    k_max: usize,
    /// Where to write the detector (atomically).
    #[arg(long, default_value = "models/detector.json")]
    out: PathBuf,
    /// Fail (exit 1, nothing written) when a fault kind of the scenario is
    /// flagged in less than --min-coverage of its windows; without it, warn.
    #[arg(long)]
    strict: bool,
    /// Share of a fault kind's windows the detector must flag not to be
    /// reported as blind to it.
    #[arg(long, default_value_t = 0.05)]
    min_coverage: f64,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&a.min_coverage), "--min-coverage must be in [0, 1]");
    let params = FitParams {
        forest: ForestParams { n_trees: 50, sample_size: 128, extension_level: 0, seed: a.seed },
        false_alarm_rate: a.false_alarm_rate,
        k_min: a.k_min,
        k_max: a.k_max,
        signature_seed: a.seed,
    };
    params
        .check()
        .map_err(|e| anyhow::anyhow!("--{} must be {}", e.param.replace('_', "-"), e.bound.replace('_', "-")))?;
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let rules = defaults::rules(None)?;
    let reward = wiring::reward(&scenario);
    let mut env = Simulator::new(&scenario);
    let mut enc = selfheal_agent::TelemetryEncoder::new(wiring::encoder_config(&scenario));
    let mut healthy: Vec<Telemetry> = Vec::new();
    let mut faulty: Vec<(Telemetry, selfheal_core::FaultSet)> = Vec::new();
    let mut policies: Vec<Box<dyn Controller<Simulator>>> = vec![
        Box::new(Fixed(NoOpPolicy)),
        Box::new(Fixed(RandomPolicy::new(a.seed))),
        Box::new(Fixed(RulesPolicy::new(rules.thresholds, Slo::default()))),
    ];
    for (p, ctl) in policies.iter_mut().enumerate() {
        for i in 0..a.episodes {
            let seed = training_episode(a.seed, p as u64 * 1_000_000 + i);
            run_episode(&mut env, ctl.as_mut(), &mut enc, &reward, seed, |r| {
                if r.info.healthy {
                    healthy.push(*r.telemetry);
                } else {
                    faulty.push((*r.telemetry, r.info.active));
                }
            });
        }
    }
    let candidates: Vec<Telemetry> = faulty.iter().map(|(t, _)| *t).collect();
    let mut model =
        DetectorModel::fit(&scenario.name, &healthy, &candidates, &params).context("fitting the detector")?;

    // What it sees of each fault kind: a kind it never flags is a fault it
    // is blind to (a hung job reads as a quiet one), and signatures built
    // without it cannot name it. Reported, kept in the file, and an error
    // with --strict.
    let det = TelemetryDetector::new(model.clone());
    let mut coverage: Vec<Coverage> =
        FaultKind::ALL.iter().map(|k| Coverage { kind: k.name().to_string(), windows: 0, flagged: 0 }).collect();
    for (t, active) in &faulty {
        let flagged = det.detect(t).anomalous;
        for f in active.iter() {
            coverage[f.index()].windows += 1;
            coverage[f.index()].flagged += usize::from(flagged);
        }
    }
    coverage.retain(|c| c.windows > 0);
    eprintln!("windows flagged per fault kind:");
    for c in &coverage {
        eprintln!("  {:<22} {:>7} of {:>7} ({:.1}%)", c.kind, c.flagged, c.windows, 100.0 * c.share());
    }
    let blind: Vec<&Coverage> = coverage.iter().filter(|c| c.share() < a.min_coverage).collect();
    for c in &blind {
        eprintln!(
            "warning: the detector flags {} of {} {} windows ({:.1}%, under --min-coverage {:.0}%): it is nearly \
             blind to this fault, and no signature stands for it; the watchdog and the SLO checks are all that \
             will notice it",
            c.flagged,
            c.windows,
            c.kind,
            100.0 * c.share(),
            100.0 * a.min_coverage
        );
    }
    if a.strict && !blind.is_empty() {
        let kinds: Vec<&str> = blind.iter().map(|c| c.kind.as_str()).collect();
        anyhow::bail!(
            "--strict: the detector is blind to {} (nothing written to {})",
            kinds.join(", "),
            a.out.display()
        );
    }
    model.meta.coverage = coverage;
    write_atomic(&a.out, model.to_json().as_bytes())?;

    // What the signatures mean: the true faults behind each one.
    let false_alarms = healthy.iter().filter(|t| det.detect(t).anomalous).count();
    let k = usize::from(det.signatures());
    let mut table = vec![[0usize; FaultKind::COUNT + 1]; k + 1];
    let mut flagged = 0;
    for (t, active) in &faulty {
        let d = det.detect(t);
        flagged += usize::from(d.anomalous);
        let row = &mut table[usize::from(d.signature)];
        if active.is_empty() {
            row[FaultKind::COUNT] += 1;
        }
        for f in active.iter() {
            row[f.index()] += 1;
        }
    }
    eprintln!(
        "{} healthy windows ({} false alarms, {:.2}%), {} unhealthy ({} flagged, {:.1}%); k = {} by silhouette {:?}",
        healthy.len(),
        false_alarms,
        100.0 * false_alarms as f64 / healthy.len() as f64,
        faulty.len(),
        flagged,
        100.0 * flagged as f64 / faulty.len().max(1) as f64,
        k,
        model.signatures.silhouette.iter().map(|(k, s)| format!("{k}:{s:.3}")).collect::<Vec<_>>()
    );
    eprintln!("unhealthy windows per signature (0 = not flagged) and the true faults behind them:");
    for (sig, row) in table.iter().enumerate() {
        let total: usize = row.iter().sum();
        let mut parts: Vec<(usize, String)> = FaultKind::ALL
            .iter()
            .map(|f| (row[f.index()], f.name().to_string()))
            .chain([(row[FaultKind::COUNT], "recovering".to_string())])
            .filter(|(n, _)| *n > 0)
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        let text: Vec<String> = parts.iter().take(4).map(|(n, name)| format!("{name} {n}")).collect();
        eprintln!("  {sig:>2}: {total:>6}  {}", text.join(", "));
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
