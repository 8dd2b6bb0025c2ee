//! `selfheal evaluate`: every policy side by side on the same held-out seeds.

use crate::{defaults, wiring};
use anyhow::Result;
use selfheal_core::seeds::TRAIN_SEED_FLOOR;
use selfheal_harness::{aggregate, Comparison, PolicyKind};
use selfheal_sim::Oracle;
use std::path::PathBuf;
use std::time::Instant;

/// Output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document.
    Json,
    /// CSV, one row per policy.
    Csv,
}

/// Evaluate the learned policy against no-op, random, rule-based, Glue's
/// built-ins (retries, timeout, delay notification, auto scaling) and oracle
/// policies on the same held-out seeds.
///
/// Without arguments it uses the shipped scenario, policy and rule thresholds.
/// pct_of_oracle = 100 × (R − R_noop) / (R_oracle − R_noop); MTTR counts steps from
/// a fault's onset until the pipeline is healthy again; intervals are 95 %
/// bootstrap intervals over seeds.
#[derive(clap::Args)]
pub struct Args {
    /// Policy model file; defaults to the shipped models/policy.json.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Rule thresholds file; defaults to the shipped models/rules.json.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Glue built-in settings for `glue-builtins`; defaults to the shipped models/glue-builtins.json.
    #[arg(long)]
    glue_builtins: Option<PathBuf>,
    /// Detector model for detector-v1 policies; defaults to the shipped models/detector.json.
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Scenario file (TOML); defaults to the shipped default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Seeds `A..B` (end exclusive); defaults to the scenario's evaluation seeds.
    #[arg(long, value_parser = defaults::parse_seeds)]
    seeds: Option<std::ops::Range<u64>>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// The learned policy's watchdog: after this many consecutive unhealthy
    /// windows with no action and no page, it pages a person (once per
    /// incident), then falls back to the rule policy (as the sidecar's
    /// `[guard.watchdog] windows`).
    #[arg(long, default_value_t = selfheal_agent::WatchdogConfig::default().windows)]
    watchdog_windows: u32,
}

pub fn run(a: Args) -> Result<()> {
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    let model = defaults::policy(a.policy.as_deref())?;
    let rules = defaults::rules(a.rules.as_deref())?;
    let detector = defaults::detector(a.detector.as_deref())?;
    let seeds = a.seeds.unwrap_or_else(|| scenario.eval_seeds());
    anyhow::ensure!(
        seeds.end <= TRAIN_SEED_FLOOR,
        "evaluation seeds must stay below 2^32; seeds at or above it are training seeds"
    );
    let started = Instant::now();
    let oracle = Oracle::solve(&scenario);
    tracing::info!(states = oracle.num_states(), secs = started.elapsed().as_secs_f64(), "oracle solved");
    let usd = wiring::worker_step_usd(&scenario);
    let mut lines = Vec::new();
    let mut parts = wiring::PolicyParts::new(&scenario, &model, &detector, &rules, Some(&oracle));
    parts.glue = defaults::glue_builtins(a.glue_builtins.as_deref())?.settings;
    parts.watchdog.windows = a.watchdog_windows;
    parts.watchdog.stale_after = parts.watchdog.stale_after.max(a.watchdog_windows);
    parts.watchdog.check()?;
    for kind in PolicyKind::ALL {
        let episodes = parts.run(kind, seeds.clone())?;
        lines.push(aggregate(kind.name(), &episodes, usd));
    }
    let c = Comparison::new(&scenario.name, seeds.end - seeds.start, lines);
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&c)?),
        Format::Csv => print!("{}", csv(&c)),
        Format::Table => print!("{}", table(&c, &seeds)),
    }
    Ok(())
}

/// A field the harness always writes (older evaluations may lack it), as text.
fn opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map_or_else(String::new, |v| v.to_string())
}

/// An interval the harness always writes (older evaluations may lack it).
fn ci(x: Option<[f64; 2]>) -> [f64; 2] {
    x.unwrap_or([f64::NAN; 2])
}

fn csv(c: &Comparison) -> String {
    let mut out = String::from(
        "scenario,seeds,name,mean_return,return_ci95_lo,return_ci95_hi,pct_of_oracle,mttr_steps,mttr_ci95_lo,mttr_ci95_hi,unresolved,slo_attainment,auto_resolved,escalations,records_lost,dead_lettered,cost,false_actions,episodes_with_loss,worst_return,incident_p95_steps,longest_idle_streak,watchdog_firings,slo_ci95_lo,slo_ci95_hi,records_lost_ci95_lo,records_lost_ci95_hi,cost_ci95_lo,cost_ci95_hi\n",
    );
    for p in &c.policies {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            c.scenario,
            c.seeds,
            p.name,
            p.mean_return,
            p.return_ci95[0],
            p.return_ci95[1],
            p.pct_of_oracle,
            p.mttr_steps,
            p.mttr_ci95[0],
            p.mttr_ci95[1],
            p.unresolved,
            p.slo_attainment,
            p.auto_resolved,
            p.escalations,
            p.records_lost,
            p.dead_lettered,
            p.cost,
            p.false_actions,
            opt(p.episodes_with_loss),
            opt(p.worst_return),
            opt(p.incident_p95_steps),
            opt(p.longest_idle_streak),
            opt(p.watchdog_firings),
            ci(p.slo_ci95)[0],
            ci(p.slo_ci95)[1],
            ci(p.records_lost_ci95)[0],
            ci(p.records_lost_ci95)[1],
            ci(p.cost_ci95)[0],
            ci(p.cost_ci95)[1]
        ));
    }
    out
}

fn table(c: &Comparison, seeds: &std::ops::Range<u64>) -> String {
    let mut out = format!("scenario {}  seeds {}..{} ({})\n\n", c.scenario, seeds.start, seeds.end, c.seeds);
    out.push_str(&format!(
        "{:<13} {:>9} {:>19} {:>7} {:>6} {:>15} {:>6} {:>6} {:>6} {:>5} {:>5} {:>8} {:>7} {:>6}\n",
        "policy",
        "return",
        "return 95% CI",
        "%oracle",
        "MTTR",
        "MTTR 95% CI",
        "unres",
        "SLO",
        "auto",
        "esc",
        "lost",
        "dlq",
        "cost$",
        "false"
    ));
    for p in &c.policies {
        out.push_str(&format!(
            "{:<13} {:>9.2} {:>19} {:>7.1} {:>6.2} {:>15} {:>6} {:>5.1}% {:>5.1}% {:>5} {:>5} {:>8} {:>7.2} {:>6}\n",
            p.name,
            p.mean_return,
            format!("[{:.1}, {:.1}]", p.return_ci95[0], p.return_ci95[1]),
            p.pct_of_oracle,
            p.mttr_steps,
            format!("[{:.2}, {:.2}]", p.mttr_ci95[0], p.mttr_ci95[1]),
            p.unresolved,
            100.0 * p.slo_attainment,
            100.0 * p.auto_resolved,
            p.escalations,
            p.records_lost,
            p.dead_lettered,
            p.cost,
            p.false_actions
        ));
    }
    if let Some(line) = versus(c, "learned", "glue-builtins") {
        out.push_str(&line);
    }
    out.push_str(&format!(
        "\ntails: episodes that lost records, the worst episode, the 95th percentile of incident duration,\nthe longest unhealthy streak with neither action nor page, and watchdog firings:\n{:<13} {:>11} {:>10} {:>13} {:>12} {:>9}\n",
        "policy", "loss eps", "worst", "incident p95", "idle streak", "watchdog"
    ));
    for p in &c.policies {
        out.push_str(&format!(
            "{:<13} {:>11} {:>10.1} {:>13.0} {:>12} {:>9}\n",
            p.name,
            format!("{}/{}", opt(p.episodes_with_loss), c.seeds),
            p.worst_return.unwrap_or(f64::NAN),
            p.incident_p95_steps.unwrap_or(f64::NAN),
            opt(p.longest_idle_streak),
            opt(p.watchdog_firings)
        ));
    }
    out.push_str("\nMTTR by the fault kind that opened the incident (unresolved in brackets):\n");
    out.push_str(&format!("{:<20}", "fault"));
    for p in &c.policies {
        out.push_str(&format!(" {:>14}", p.name));
    }
    out.push('\n');
    for k in selfheal_core::FaultKind::ALL {
        if !c.policies.iter().any(|p| p.by_fault.iter().any(|f| f.fault == k)) {
            continue;
        }
        out.push_str(&format!("{:<20}", k.name()));
        for p in &c.policies {
            match p.by_fault.iter().find(|f| f.fault == k) {
                Some(f) => out.push_str(&format!(" {:>8.2} [{:>3}]", f.mttr_steps, f.unresolved)),
                None => out.push_str(&format!(" {:>14}", "-")),
            }
        }
        out.push('\n');
    }
    out.push_str("\nMTTR in steps (one step = one CloudWatch period); lost/dlq in records; cost = mean worker cost per episode.\n");
    out
}

/// One line: policy `a` against policy `b` on MTTR, records lost, SLO and
/// cost, each with its 95 % bootstrap interval (None when either is missing).
fn versus(c: &Comparison, a: &str, b: &str) -> Option<String> {
    let (x, y) = (c.policy(a)?, c.policy(b)?);
    let iv = |v: [f64; 2], prec: usize| format!("[{:.prec$}, {:.prec$}]", v[0], v[1]);
    let pct = |v: [f64; 2]| [100.0 * v[0], 100.0 * v[1]];
    Some(format!(
        "\n{a} vs {b}: MTTR {:.2} {} vs {:.2} {} steps; records lost {} {} vs {} {}; SLO {:.1}% {} vs {:.1}% {}; cost ${:.2} {} vs ${:.2} {} per episode\n",
        x.mttr_steps,
        iv(x.mttr_ci95, 2),
        y.mttr_steps,
        iv(y.mttr_ci95, 2),
        x.records_lost,
        iv(ci(x.records_lost_ci95), 0),
        y.records_lost,
        iv(ci(y.records_lost_ci95), 0),
        100.0 * x.slo_attainment,
        iv(pct(ci(x.slo_ci95)), 1),
        100.0 * y.slo_attainment,
        iv(pct(ci(y.slo_ci95)), 1),
        x.cost,
        iv(ci(x.cost_ci95), 2),
        y.cost,
        iv(ci(y.cost_ci95), 2),
    ))
}
