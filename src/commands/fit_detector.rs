//! `selfheal fit-detector`: grow the pipeline detector on simulated telemetry.

use crate::{defaults, wiring};
use anyhow::{Context, Result};
use selfheal_agent::store::write_atomic;
use selfheal_agent::{NoOpPolicy, RandomPolicy, RulesPolicy};
use selfheal_core::ParamGuard;
use selfheal_core::{FaultKind, Slo};
use selfheal_detect::coverage::{check_min_coverage, FitReport, RECOVERING};
use selfheal_detect::forest::ForestParams;
use selfheal_detect::telemetry::{DetectorModel, FitParams};
use selfheal_harness::{collect_detector_data, Controller, Fixed};
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
    let min_coverage =
        check_min_coverage(a.min_coverage).map_err(|_| anyhow::anyhow!("--min-coverage must be in [0, 1]"))?;
    let params = FitParams {
        forest: ForestParams { n_trees: 50, sample_size: 128, extension_level: 0, seed: a.seed },
        false_alarm_rate: a.false_alarm_rate,
        k_min: a.k_min,
        k_max: a.k_max,
        signature_seed: a.seed,
    }
    .check()
    .map_err(|e| anyhow::anyhow!("--{} must be {}", e.param.replace('_', "-"), e.bound.replace('_', "-")))?;
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let rules = defaults::rules(None)?;
    let mut policies: Vec<Box<dyn Controller<Simulator>>> = vec![
        Box::new(Fixed(NoOpPolicy)),
        Box::new(Fixed(RandomPolicy::new(a.seed))),
        Box::new(Fixed(RulesPolicy::new(rules.thresholds, Slo::default()))),
    ];
    let data = collect_detector_data(
        &mut Simulator::new(&scenario),
        &mut policies,
        &mut selfheal_agent::TelemetryEncoder::new(wiring::encoder_config(&scenario)),
        &wiring::reward(&scenario),
        a.seed,
        a.episodes,
    );
    let mut model = DetectorModel::fit(&scenario.name, &data.healthy, &data.candidates(), &params)
        .context("fitting the detector")?;
    let report = FitReport::measure(&model, &data.healthy, &data.faulty);
    let blind = report.blind(min_coverage)?;

    // What it sees of each fault kind: reported, kept in the file, and an
    // error with --strict.
    eprintln!("windows flagged per fault kind:");
    for c in &report.coverage {
        eprintln!("  {:<22} {:>7} of {:>7} ({:.1}%)", c.kind, c.flagged, c.windows, 100.0 * c.share());
    }
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
    model.meta.coverage = report.coverage.clone();
    write_atomic(&a.out, model.to_json().as_bytes())?;

    // What the signatures mean: the true faults behind each one.
    eprintln!(
        "{} healthy windows ({} false alarms, {:.2}%), {} unhealthy ({} flagged, {:.1}%); k = {} by silhouette {:?}",
        report.healthy,
        report.false_alarms,
        100.0 * report.false_alarms as f64 / report.healthy as f64,
        report.faulty,
        report.flagged,
        100.0 * report.flagged as f64 / report.faulty.max(1) as f64,
        report.signatures.len() - 1,
        model.signatures.silhouette.iter().map(|(k, s)| format!("{k}:{s:.3}")).collect::<Vec<_>>()
    );
    eprintln!("unhealthy windows per signature (0 = not flagged) and the true faults behind them:");
    for (sig, row) in report.signatures.iter().enumerate() {
        let total: usize = row.iter().sum();
        let mut parts: Vec<(usize, String)> = FaultKind::ALL
            .iter()
            .map(|f| (row[f.index()], f.name().to_string()))
            .chain([(row[RECOVERING], "recovering".to_string())])
            .filter(|(n, _)| *n > 0)
            .collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.0));
        let text: Vec<String> = parts.iter().take(4).map(|(n, name)| format!("{name} {n}")).collect();
        eprintln!("  {sig:>2}: {total:>6}  {}", text.join(", "));
    }
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
