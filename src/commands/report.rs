//! `selfheal report`: the policy review (HTML, Markdown, JSON, CSV), and the
//! simulation behind it, shared by `playbook`.

use crate::{defaults, wiring};
use anyhow::{Context, Result};
use selfheal_agent::store::{ModelFile, RulesFile};
use selfheal_agent::{GlueSettings, RulesPolicy};
use selfheal_core::{Action, Slo};
use selfheal_detect::telemetry::DetectorModel;
use selfheal_harness::{aggregate, run_episode, Comparison, PolicyKind};
use selfheal_report::eval::{self, ActionMix};
use selfheal_report::playbook::SignatureSample;
use selfheal_report::policy::{note, PolicyView, SeenMap};
use selfheal_report::recorder::{action_mix, merge_samples, Keep, Recorder};
use selfheal_report::render::{self, ReportInput};
use selfheal_sim::{Oracle, Scenario, Simulator};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The shipped policy's learning curve.
pub const SHIPPED_CURVE: &str = include_str!("../../models/policy.curve.csv");

/// Write a review of a policy: `report.html` (self-contained: inline SVG
/// charts and CSS, no scripts, fonts or network), `report.md`, `policy.json`
/// and `policy.csv`.
///
/// Without arguments it reviews the shipped policy: the evaluation runs on the
/// shipped scenario's evaluation seeds (the same as `selfheal evaluate`), the
/// learning curve is the shipped one.
#[derive(clap::Args)]
pub struct Args {
    /// Policy model file; defaults to the shipped models/policy.json.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// `selfheal evaluate --format json` output to show instead of evaluating here.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Provenance log of the sidecar (live behaviour); rotated segments are read too.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Learning curve CSV; defaults to the policy path with .curve.csv (the shipped curve for the shipped policy).
    #[arg(long)]
    training: Option<PathBuf>,
    /// Output directory.
    #[arg(long, default_value = "report")]
    out: PathBuf,
    #[command(flatten)]
    sim: SimArgs,
}

/// Where the simulated episodes run.
#[derive(clap::Args, Clone)]
pub struct SimArgs {
    /// Rule thresholds; defaults to the shipped models/rules.json.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Glue built-in settings; defaults to the shipped models/glue-builtins.json.
    #[arg(long)]
    glue_builtins: Option<PathBuf>,
    /// Detector model; defaults to the shipped models/detector.json.
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Scenario file; defaults to the shipped scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// Seeds `A..B`; defaults to the scenario's evaluation seeds (as `evaluate`).
    #[arg(long, value_parser = defaults::parse_seeds)]
    seeds: Option<std::ops::Range<u64>>,
}

/// What the simulated evaluation episodes showed.
pub struct Sim {
    /// The comparison, exactly as `evaluate` computes it.
    pub eval: Comparison,
    /// Action mix per fault kind.
    pub mix: ActionMix,
    /// States met by the learned policy, with the rules' shadow choice.
    pub seen: SeenMap,
    /// Windows per signature (no-op and learned episodes).
    pub signatures: BTreeMap<u32, SignatureSample>,
}

/// Run every policy on `seeds` exactly as `evaluate` does, recording the
/// action mix, the rules' shadow choices and per-signature windows on the way.
pub fn simulate(
    scenario: &Scenario,
    seeds: std::ops::Range<u64>,
    model: &ModelFile,
    rules: &RulesFile,
    glue: GlueSettings,
    detector: &DetectorModel,
    view: &PolicyView,
) -> Result<Sim> {
    let oracle = Oracle::solve(scenario);
    let usd = wiring::worker_step_usd(scenario);
    let reward = wiring::reward(scenario);
    let (mut lines, mut mix) = (Vec::new(), Vec::new());
    let (mut seen, mut sigs) = (SeenMap::new(), BTreeMap::<u32, SignatureSample>::new());
    let mut parts = wiring::PolicyParts::new(scenario, model, detector, rules, Some(&oracle));
    parts.glue = glue;
    for kind in PolicyKind::ALL {
        let name = kind.name();
        let mut env = Simulator::new(scenario);
        let (mut enc, inner) = parts.controller(kind)?;
        let keep = Keep {
            sample: kind == PolicyKind::Learned || kind == PolicyKind::NoOp,
            learned: kind == PolicyKind::Learned,
        };
        let shadow = RulesPolicy::new(rules.thresholds, Slo::default());
        let mut rec = Recorder::new(inner, |env: &Simulator| env.state().faults(), view, shadow, keep);
        let episodes: Vec<_> =
            seeds.clone().map(|seed| run_episode(&mut env, &mut rec, enc.as_mut(), &reward, seed, |_| {})).collect();
        lines.push(aggregate(name, &episodes, usd));
        mix.push(rec.mix(name));
        let (kind_seen, kind_sigs) = rec.into_parts();
        if keep.learned {
            seen = kind_seen;
        }
        merge_samples(&mut sigs, kind_sigs);
    }
    let eval = Comparison::new(&scenario.name, seeds.end - seeds.start, lines);
    Ok(Sim { eval, mix: action_mix(&seeds, mix), seen, signatures: sigs })
}

/// Load what a review needs: the policy (and its view), rules, detector, scenario and seeds.
pub struct Loaded {
    pub model: ModelFile,
    pub view: PolicyView,
    pub rules: RulesFile,
    pub glue: GlueSettings,
    pub detector: DetectorModel,
    pub scenario: Scenario,
    pub seeds: std::ops::Range<u64>,
    pub source: String,
}

pub fn load(policy: Option<&Path>, sim: &SimArgs) -> Result<Loaded> {
    let model = defaults::policy(policy)?;
    let view = PolicyView::new(model.clone())?;
    let scenario = defaults::scenario(sim.scenario.as_deref())?;
    let seeds = sim.seeds.clone().unwrap_or_else(|| scenario.eval_seeds());
    Ok(Loaded {
        model,
        view,
        rules: defaults::rules(sim.rules.as_deref())?,
        glue: defaults::glue_builtins(sim.glue_builtins.as_deref())?.settings,
        detector: defaults::detector(sim.detector.as_deref())?,
        scenario,
        seeds,
        source: policy.map_or("shipped models/policy.json".into(), |p| p.display().to_string()),
    })
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    let l = load(a.policy.as_deref(), &a.sim)?;
    let sim = simulate(&l.scenario, l.seeds.clone(), &l.model, &l.rules, l.glue, &l.detector, &l.view)?;
    let (eval, eval_source) = match &a.eval {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            (eval::parse(&text, &p.display().to_string())?, format!("from {}", p.display()))
        }
        None => (
            sim.eval.clone(),
            format!("evaluated here on seeds {}..{} (as `selfheal evaluate`)", l.seeds.start, l.seeds.end),
        ),
    };
    let (curve_text, curve_source) = match (&a.training, &a.policy) {
        (Some(p), _) => (
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?),
            p.display().to_string(),
        ),
        (None, None) => (Some(SHIPPED_CURVE.to_string()), "shipped models/policy.curve.csv".into()),
        (None, Some(p)) => {
            let c = p.with_extension("curve.csv");
            (std::fs::read_to_string(&c).ok(), c.display().to_string())
        }
    };
    let curve = curve_text.map(|t| selfheal_report::curve::parse(&t, &curve_source)).transpose()?;
    let mut seen = sim.seen.clone();
    let mut rules_source = format!(
        "the rule policy's most frequent choice in the state, kept as a shadow beside the learned policy (fed the same windows, as the sidecar does) over its evaluation episodes on seeds {}..{}",
        l.seeds.start, l.seeds.end
    );
    let live = match &a.log {
        Some(p) => {
            let log = crate::commands::provlog::read_review_log(p)?;
            for j in &log.decisions {
                let shadow = Action::ALL.into_iter().find(|x| x.name() == j.d.shadow);
                note(&mut seen, j.d.state, shadow);
            }
            rules_source.push_str(&format!(", and the shadow choices logged in {}", p.display()));
            Some(render::live(&log, &p.display().to_string(), 60))
        }
        None => None,
    };
    let lines = l.view.lines(&seen);
    let input = ReportInput {
        policy: &l.view,
        policy_source: l.source.clone(),
        lines,
        rules_source,
        curve,
        curve_source,
        eval,
        eval_source,
        mix: Some(sim.mix),
        live,
        coverage: coverage(&l.detector, a.sim.detector.as_deref()),
    };
    for w in input.coverage.iter().flat_map(render::DetectorCoverage::warnings) {
        eprintln!("{w}");
    }
    let files = render::write_all(&input, &a.out)?;
    for f in &files {
        println!("wrote {}", f.display());
    }
    eprintln!("report in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The detector file's coverage figures (`meta.coverage`), if it has any.
fn coverage(detector: &DetectorModel, path: Option<&Path>) -> Option<render::DetectorCoverage> {
    let rows: Vec<render::CoverageRow> = detector
        .meta
        .coverage
        .iter()
        .map(|c| render::CoverageRow { kind: c.kind.clone(), windows: c.windows, flagged: c.flagged })
        .collect();
    (!rows.is_empty()).then(|| render::DetectorCoverage {
        source: path.map_or("shipped models/detector.json".into(), |p| p.display().to_string()),
        rows,
    })
}
