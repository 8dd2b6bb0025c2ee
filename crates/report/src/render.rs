//! The report files: `report.html` (one self-contained page: inline CSS and
//! inline SVG, no scripts, no fonts, no network), `report.md`, `policy.json`
//! and `policy.csv`.

use crate::charts::{self, Bar, Series};
use crate::curve::CurveRow;
use crate::eval::{ActionMix, Comparison, PolicyReport};
use crate::log::Log;
use crate::policy::{PolicyView, StateLine};
use crate::ReportError;
use selfheal_core::Action;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything a report shows.
pub struct ReportInput<'a> {
    /// The policy.
    pub policy: &'a PolicyView,
    /// Where it came from.
    pub policy_source: String,
    /// Its states in words.
    pub lines: Vec<StateLine>,
    /// How the rules' choice per state was found.
    pub rules_source: String,
    /// The learning curve, if any.
    pub curve: Option<Vec<CurveRow>>,
    /// Where it came from.
    pub curve_source: String,
    /// The evaluation.
    pub eval: Comparison,
    /// Where it came from.
    pub eval_source: String,
    /// Action mix per fault kind.
    pub mix: Option<ActionMix>,
    /// Live behaviour from a provenance log.
    pub live: Option<Live>,
    /// What the detector flags per fault kind, when its file records it.
    pub coverage: Option<DetectorCoverage>,
}

/// The detector's coverage: per labelled fault kind, the windows it flags
/// (`meta.coverage` of a detector file written by `selfheal fit-detector`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct DetectorCoverage {
    /// The detector file.
    pub source: String,
    /// One row per fault kind.
    pub rows: Vec<CoverageRow>,
}

/// One fault kind's windows and how many of them the detector flags.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CoverageRow {
    /// Fault kind.
    pub kind: String,
    /// Windows in which it was active.
    pub windows: usize,
    /// Of those, flagged anomalous.
    pub flagged: usize,
}

impl CoverageRow {
    /// Flagged share, 0..1 (0 without windows).
    pub fn share(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.flagged as f64 / self.windows as f64
        }
    }
}

impl DetectorCoverage {
    /// One line per fault kind the detector never flags: a fault the policy
    /// cannot see, whatever it learned.
    pub fn warnings(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter(|r| r.flagged == 0)
            .map(|r| {
                format!(
                    "warning: the detector flags none of the {} {} windows: the policy cannot see this fault",
                    r.windows, r.kind
                )
            })
            .collect()
    }
}

/// The coverage section of `report.html`.
fn coverage_html(h: &mut String, c: Option<&DetectorCoverage>) {
    h.push_str("<h3 id=\"detector-coverage\">Detector coverage</h3>");
    let Some(c) = c.filter(|c| !c.rows.is_empty()) else {
        h.push_str(
            "<p>The detector file holds no coverage figures (fitted before <code>selfheal fit-detector</code> \
             recorded them); refit it to see which fault kinds it flags.</p>",
        );
        return;
    };
    let _ = write!(
        h,
        "<p>Share of each fault kind's windows the detector flags anomalous, as <code>selfheal fit-detector</code> \
         measured it ({}). A kind never flagged is a fault the policy cannot see.</p>\
         <table id=\"coverage-table\"><thead><tr><th class=\"l\">fault kind</th><th>windows</th><th>flagged</th>\
         <th>share</th></tr></thead><tbody>",
        esc(&c.source)
    );
    for r in &c.rows {
        let _ = write!(
            h,
            "<tr data-kind=\"{}\"><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{} %</td></tr>",
            esc(&r.kind),
            esc(&r.kind),
            r.windows,
            r.flagged,
            f(100.0 * r.share(), 1)
        );
    }
    h.push_str("</tbody></table>\n");
    for w in c.warnings() {
        let _ = writeln!(h, "<p class=\"warn\"><span class=\"flag\">blind</span> {}</p>", esc(&w));
    }
}

/// The coverage section of `report.md`.
fn coverage_markdown(s: &mut String, c: Option<&DetectorCoverage>) {
    s.push_str("\n## Detector coverage\n\n");
    let Some(c) = c.filter(|c| !c.rows.is_empty()) else {
        s.push_str("The detector file holds no coverage figures; refit it with `selfheal fit-detector`.\n");
        return;
    };
    let _ = write!(s, "{}\n\n| fault kind | windows | flagged | share |\n|---|---:|---:|---:|\n", c.source);
    for r in &c.rows {
        let _ = writeln!(s, "| {} | {} | {} | {} % |", r.kind, r.windows, r.flagged, f(100.0 * r.share(), 1));
    }
    for w in c.warnings() {
        let _ = write!(s, "\n**{w}**\n");
    }
}

/// Live behaviour, summarised from a provenance log.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Live {
    /// Where the log came from.
    pub source: String,
    /// Decisions.
    pub decisions: u64,
    /// Pipelines.
    pub pipelines: u64,
    /// Decisions per verdict.
    pub verdicts: BTreeMap<String, u64>,
    /// Decisions per chosen action.
    pub chosen: BTreeMap<String, u64>,
    /// Outcomes per status.
    pub outcomes: BTreeMap<String, u64>,
    /// Approvals given.
    pub approved: u64,
    /// Proposals rejected or expired.
    pub rejected: u64,
    /// Failed call attempts.
    pub failed_calls: u64,
    /// Escalations sent (delivered, not delivered).
    pub escalations: (u64, u64),
    /// Decisions where the rules would have chosen otherwise.
    pub shadow_differs: u64,
    /// Sum of rewards.
    pub reward_sum: f64,
    /// Decisions with a reward.
    pub rewarded: u64,
    /// Lines skipped as unreadable.
    pub skipped_lines: u64,
    /// First and last decision time, Unix ms.
    pub span_ms: (i64, i64),
    /// Per time bucket: start ms, decisions per verdict, mean reward.
    pub buckets: Vec<(i64, BTreeMap<String, u64>, f64)>,
}

/// Summarise a log (time split into at most `n_buckets` buckets).
pub fn live(log: &Log, source: &str, n_buckets: usize) -> Live {
    let mut l = Live { source: source.to_string(), skipped_lines: log.skipped.len() as u64, ..Live::default() };
    let (lo, hi) =
        log.decisions.iter().fold((i64::MAX, i64::MIN), |(lo, hi), j| (lo.min(j.d.ts_ms), hi.max(j.d.ts_ms)));
    let mut pipelines = std::collections::HashSet::new();
    let width = if hi > lo { ((hi - lo) / n_buckets.max(1) as i64).max(1) + 1 } else { 1 };
    let nb = if hi > lo { ((hi - lo) / width + 1) as usize } else { 1 };
    let mut buckets: Vec<(i64, BTreeMap<String, u64>, f64, u64)> =
        (0..nb).map(|k| (lo + k as i64 * width, BTreeMap::new(), 0.0, 0)).collect();
    for j in &log.decisions {
        let d = &j.d;
        l.decisions += 1;
        pipelines.insert(d.pipeline.as_str());
        *l.verdicts.entry(d.verdict.to_string()).or_default() += 1;
        *l.chosen.entry(d.chosen.name().to_owned()).or_default() += 1;
        if let Some(o) = &j.outcome {
            *l.outcomes.entry(o.clone()).or_default() += 1;
        }
        match j.approved {
            Some(true) => l.approved += 1,
            Some(false) => l.rejected += 1,
            None => {}
        }
        l.failed_calls += u64::from(j.failed_calls);
        match j.escalation {
            Some(true) => l.escalations.0 += 1,
            Some(false) => l.escalations.1 += 1,
            None => {}
        }
        l.shadow_differs += u64::from(!d.shadow.is_empty() && d.shadow != d.chosen.name());
        let b = &mut buckets[((d.ts_ms - lo) / width).clamp(0, nb as i64 - 1) as usize];
        *b.1.entry(d.verdict.to_string()).or_default() += 1;
        if let Some(r) = j.reward {
            l.reward_sum += r;
            l.rewarded += 1;
            b.2 += r;
            b.3 += 1;
        }
    }
    l.pipelines = pipelines.len() as u64;
    l.span_ms = if l.decisions > 0 { (lo, hi) } else { (0, 0) };
    l.buckets = if l.decisions > 0 {
        buckets.into_iter().map(|(t, v, r, n)| (t, v, if n > 0 { r / n as f64 } else { f64::NAN })).collect()
    } else {
        Vec::new()
    };
    l
}

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn f(x: f64, d: usize) -> String {
    if x.is_finite() {
        format!("{x:.d$}")
    } else {
        "–".into()
    }
}

/// The evaluation columns: key, header, display precision, percent.
const EVAL_COLS: [(&str, &str); 19] = [
    ("mean_return", "return"),
    ("return_ci95", "return 95 % CI"),
    ("pct_of_oracle", "% of oracle"),
    ("mttr_steps", "MTTR (steps)"),
    ("mttr_ci95", "MTTR 95 % CI"),
    ("unresolved", "unresolved"),
    ("slo_attainment", "SLO"),
    ("auto_resolved", "auto-resolved"),
    ("escalations", "escalations"),
    ("records_lost", "records lost"),
    ("dead_lettered", "dead-lettered"),
    ("cost", "cost $/episode"),
    ("false_actions", "false actions"),
    ("episodes_with_loss", "episodes with loss"),
    ("worst_return", "worst return"),
    ("incident_p95_steps", "incident p95 (steps)"),
    ("longest_idle_streak", "longest idle streak"),
    ("watchdog_firings", "watchdog firings"),
    ("by_fault", ""),
];

/// One evaluation cell: (exact values, shown text).
fn eval_cell(p: &PolicyReport, key: &str) -> (Vec<f64>, String) {
    let ci = |c: [f64; 2], d| (c.to_vec(), format!("[{}, {}]", f(c[0], d), f(c[1], d)));
    let n = |x: u64| (vec![x as f64], x.to_string());
    // Tails are absent from evaluations written before they existed.
    let opt_n = |x: Option<u64>| x.map_or((vec![], "–".into()), n);
    let opt_f = |x: Option<f64>, d| x.map_or((vec![], "–".into()), |v| (vec![v], f(v, d)));
    match key {
        "mean_return" => (vec![p.mean_return], f(p.mean_return, 2)),
        "return_ci95" => ci(p.return_ci95, 1),
        "pct_of_oracle" => (vec![p.pct_of_oracle], f(p.pct_of_oracle, 1)),
        "mttr_steps" => (vec![p.mttr_steps], f(p.mttr_steps, 2)),
        "mttr_ci95" => ci(p.mttr_ci95, 2),
        "unresolved" => n(p.unresolved),
        "slo_attainment" => (vec![p.slo_attainment], format!("{} %", f(100.0 * p.slo_attainment, 1))),
        "auto_resolved" => (vec![p.auto_resolved], format!("{} %", f(100.0 * p.auto_resolved, 1))),
        "escalations" => n(p.escalations),
        "records_lost" => n(p.records_lost),
        "dead_lettered" => n(p.dead_lettered),
        "cost" => (vec![p.cost], f(p.cost, 2)),
        "false_actions" => n(p.false_actions),
        "episodes_with_loss" => opt_n(p.episodes_with_loss),
        "worst_return" => opt_f(p.worst_return, 2),
        "incident_p95_steps" => opt_f(p.incident_p95_steps, 0),
        "longest_idle_streak" => opt_n(p.longest_idle_streak),
        "watchdog_firings" => opt_n(p.watchdog_firings),
        _ => (vec![], String::new()),
    }
}

/// Exact number text (shortest round trip; `NaN` for not-a-number).
fn exact(v: &[f64]) -> String {
    v.iter().map(|x| if x.is_finite() { format!("{x}") } else { "NaN".into() }).collect::<Vec<_>>().join(" ")
}

/// The charts, in page order: (section, id, title, svg).
struct Charts {
    training: Vec<(String, String)>,
    eval: Vec<(String, String)>,
    mix: Vec<(String, String)>,
    mix_legend: Vec<String>,
    live: Vec<(String, String)>,
}

fn make_charts(inp: &ReportInput<'_>) -> Result<Charts, ReportError> {
    let mut c = Charts { training: vec![], eval: vec![], mix: vec![], mix_legend: vec![], live: vec![] };
    if let Some(rows) = &inp.curve {
        let pts = |g: &dyn Fn(&CurveRow) -> Option<f64>| -> Vec<(f64, f64)> {
            rows.iter().filter_map(|r| g(r).map(|y| (r.episode, y))).collect()
        };
        let one = |name: &str, p| vec![Series { name: name.into(), points: p }];
        c.training.push((
            "chart-return".into(),
            charts::lines(
                "Return per episode (training, with exploration)",
                "episode",
                "mean return",
                &one("return", pts(&|r| Some(r.mean_return))),
            )?,
        ));
        c.training.push((
            "chart-train-mttr".into(),
            charts::lines("MTTR per episode (training)", "episode", "steps", &one("MTTR", pts(&|r| r.mttr_steps)))?,
        ));
        c.training.push((
            "chart-epsilon".into(),
            charts::lines("Exploration ε per episode", "episode", "ε", &one("ε", pts(&|r| Some(r.epsilon))))?,
        ));
    }
    let e = &inp.eval.policies;
    type Pick<'a> = &'a dyn Fn(&PolicyReport) -> (f64, Option<[f64; 2]>);
    let bar = |g: Pick<'_>| -> Vec<Bar> {
        e.iter().map(|p| Bar { label: p.name.clone(), value: g(p).0, ci: g(p).1 }).collect()
    };
    c.eval.push((
        "chart-mttr".into(),
        charts::bars("MTTR (steps, 95 % CI)", "steps", &bar(&|p| (p.mttr_steps, Some(p.mttr_ci95))))?,
    ));
    c.eval.push((
        "chart-slo".into(),
        charts::bars("SLO attainment (%)", "%", &bar(&|p| (100.0 * p.slo_attainment, None)))?,
    ));
    c.eval.push(("chart-cost".into(), charts::bars("Worker cost per episode ($)", "USD", &bar(&|p| (p.cost, None)))?));
    c.eval.push(("chart-oracle".into(), charts::bars("% of oracle", "%", &bar(&|p| (p.pct_of_oracle, None)))?));
    if let Some(mix) = &inp.mix {
        c.mix_legend = Action::ALL.iter().map(|a| a.name().to_string()).collect();
        for pm in mix.policies.iter().filter(|p| p.name != "noop") {
            let cats: Vec<String> = pm.rows.iter().map(|r| r.fault.clone()).collect();
            let series: Vec<(String, Vec<f64>)> = Action::ALL
                .iter()
                .map(|a| {
                    let shares =
                        pm.rows.iter().map(|r| r.counts[a.index()] as f64 / r.decisions.max(1) as f64).collect();
                    (a.name().to_string(), shares)
                })
                .collect();
            c.mix.push((
                format!("chart-mix-{}", pm.name),
                charts::stacked(&format!("Action mix by active fault: {}", pm.name), &cats, &series)?,
            ));
        }
    }
    if let Some(l) = &inp.live {
        if !l.buckets.is_empty() {
            let t0 = l.span_ms.0;
            let hours = |t: i64| (t - t0) as f64 / 3_600_000.0;
            let verdicts: Vec<&String> = l.verdicts.keys().collect();
            let series: Vec<Series> = verdicts
                .iter()
                .map(|v| Series {
                    name: (*v).clone(),
                    points: l.buckets.iter().map(|(t, m, _)| (hours(*t), *m.get(*v).unwrap_or(&0) as f64)).collect(),
                })
                .collect();
            c.live.push((
                "chart-live-decisions".into(),
                charts::lines("Decisions over time, by verdict", "hours since first decision", "decisions", &series)?,
            ));
            let rew = vec![Series {
                name: "reward".into(),
                points: l.buckets.iter().filter(|b| b.2.is_finite()).map(|(t, _, r)| (hours(*t), *r)).collect(),
            }];
            c.live.push((
                "chart-live-reward".into(),
                charts::lines("Mean reward per decision over time", "hours since first decision", "reward", &rew)?,
            ));
        }
    }
    Ok(c)
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;max-width:1220px;padding:16px 24px;color:#1d2430;background:#fff}
h1{font-size:24px;margin:8px 0 4px}h2{font-size:19px;border-bottom:2px solid #0072b2;padding-bottom:3px;margin-top:30px}h3{font-size:15px;margin:18px 0 6px}
p,li{font-size:14px;line-height:1.45}.muted{color:#5a6472;font-size:13px}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0}th,td{border:1px solid #d5dae1;padding:3px 6px;text-align:right;white-space:nowrap}
th{background:#eef2f7;position:sticky;top:0;white-space:normal}.legend span{margin-right:14px;font-size:13px}.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px}td.l,th.l{text-align:left;white-space:normal}tr:nth-child(even) td{background:#fafbfc}
.grid{display:flex;flex-wrap:wrap;gap:12px}.grid figure{margin:0;border:1px solid #e3e7ec;border-radius:4px;padding:4px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.card{border:1px solid #d5dae1;border-radius:6px;padding:8px 14px;min-width:150px}
.card b{display:block;font-size:22px}.card span{font-size:12px;color:#5a6472}
.flag{display:inline-block;border-radius:3px;padding:0 4px;margin:1px;font-size:11px;background:#fde7d3;color:#8a3b00}
.flag.d{background:#e0ecf8;color:#084a83}td.best{font-weight:700;background:#e6f4ea!important}
.desc{min-width:380px;max-width:520px}.conf-high{color:#006644}.conf-medium{color:#7a5b00}.conf-low,.conf-none{color:#a11}";

/// `report.html`.
pub fn html(inp: &ReportInput<'_>) -> Result<String, ReportError> {
    let ch = make_charts(inp)?;
    let m = &inp.policy.model;
    let mut h = String::with_capacity(2 << 20);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>selfheal policy review</title><style>{CSS}</style></head><body>\n"
    );
    let _ = writeln!(
        h,
        "<h1>Policy review</h1><p class=\"muted\">policy {} · encoder {} · trained on scenario <b>{}</b>, seed {}, {} episodes, reward {} · γ = {} · {} states visited in training of {}</p>",
        esc(&inp.policy_source),
        esc(&m.encoder.id),
        esc(&m.meta.scenario),
        m.meta.seed,
        m.meta.episodes,
        esc(&m.meta.reward_fn),
        m.meta.params.gamma,
        inp.policy.table().visited_states().count(),
        m.num_states
    );
    // At a glance.
    let learned = inp.eval.policy("learned");
    let rules = inp.eval.policy("rules");
    let flagged_low = inp.lines.iter().filter(|l| l.low_visits && l.seen > 0).count();
    let differs = inp.lines.iter().filter(|l| l.differs_from_rules).count();
    h.push_str("<div class=\"cards\">");
    let mut card = |v: String, label: &str| {
        let _ = write!(h, "<div class=\"card\"><b>{}</b><span>{}</span></div>", esc(&v), esc(label));
    };
    if let Some(p) = learned {
        card(format!("{} %", f(p.pct_of_oracle, 1)), "learned: % of oracle");
        card(f(p.mttr_steps, 2), "learned: MTTR (steps)");
        card(format!("{} %", f(100.0 * p.slo_attainment, 1)), "learned: SLO attainment");
    }
    if let Some(p) = rules {
        card(f(p.mttr_steps, 2), "rules: MTTR (steps)");
    }
    card(differs.to_string(), "states where learned ≠ rules");
    card(flagged_low.to_string(), "states met but rarely/never trained");
    h.push_str("</div>\n");

    // Evaluation.
    let _ = writeln!(
        h,
        "<h2 id=\"evaluation\">Evaluation</h2><p>{} · scenario <b>{}</b>, {} seeds; every policy meets the same faults at the same times. % of oracle = 100 × (R − R<sub>noop</sub>) / (R<sub>oracle</sub> − R<sub>noop</sub>); MTTR in steps (one CloudWatch period); intervals are 95 % bootstrap intervals over seeds.</p>",
        esc(&inp.eval_source),
        esc(&inp.eval.scenario),
        inp.eval.seeds
    );
    h.push_str("<table id=\"eval-table\"><thead><tr><th class=\"l\">policy</th>");
    for (k, name) in EVAL_COLS.iter().filter(|c| !c.1.is_empty()) {
        let _ = write!(h, "<th data-key=\"{k}\">{}</th>", esc(name));
    }
    h.push_str("</tr></thead><tbody>\n");
    for p in &inp.eval.policies {
        let _ = write!(h, "<tr data-policy=\"{}\"><td class=\"l\">{}</td>", esc(&p.name), esc(&p.name));
        for (k, _) in EVAL_COLS.iter().filter(|c| !c.1.is_empty()) {
            let (v, text) = eval_cell(p, k);
            let _ = write!(h, "<td data-key=\"{k}\" data-value=\"{}\">{}</td>", exact(&v), esc(&text));
        }
        h.push_str("</tr>\n");
    }
    h.push_str("</tbody></table>\n");
    figures(&mut h, &ch.eval);
    // MTTR by fault.
    h.push_str("<h3>MTTR by the fault kind that opened the incident (unresolved in brackets)</h3><table id=\"fault-table\"><thead><tr><th class=\"l\">fault</th>");
    for p in &inp.eval.policies {
        let _ = write!(h, "<th>{}</th>", esc(&p.name));
    }
    h.push_str("</tr></thead><tbody>");
    let mut faults: Vec<&str> = Vec::new();
    for p in &inp.eval.policies {
        for fl in &p.by_fault {
            if !faults.contains(&fl.fault.name()) {
                faults.push(fl.fault.name());
            }
        }
    }
    for k in &faults {
        let _ = write!(h, "<tr><td class=\"l\">{}</td>", esc(k));
        for p in &inp.eval.policies {
            match p.by_fault.iter().find(|x| x.fault.name() == *k) {
                Some(x) => {
                    let _ = write!(h, "<td>{} [{}]</td>", f(x.mttr_steps, 2), x.unresolved);
                }
                None => h.push_str("<td>–</td>"),
            }
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>\n");
    if let Some(mix) = &inp.mix {
        let _ = write!(
            h,
            "<h3>Action mix per fault kind</h3><p>Share of each action among the decisions taken while a fault of that kind was active (<i>healthy</i>: none active), from running every policy on seeds {} of the scenario (the same episodes as the table when it was computed here). An overlap of two faults counts for both.</p>",
            esc(&mix.seeds)
        );
        h.push_str("<p class=\"legend\">");
        for (k, name) in ch.mix_legend.iter().enumerate() {
            let c = charts::COLORS[k % charts::COLORS.len()];
            let _ = write!(h, "<span><i style=\"background:rgb({},{},{})\"></i>{}</span>", c.0, c.1, c.2, esc(name));
        }
        h.push_str("</p>");
        figures(&mut h, &ch.mix);
    }

    coverage_html(&mut h, inp.coverage.as_ref());

    // Training.
    h.push_str("<h2 id=\"training\">Training</h2>");
    if inp.curve.is_some() {
        let _ = write!(h, "<p>Learning curves from {} (each point averages a block of episodes; return and MTTR include exploration).</p>", esc(&inp.curve_source));
        figures(&mut h, &ch.training);
    } else {
        h.push_str("<p>No learning curve given (<code>--training curve.csv</code>).</p>");
    }

    // Live.
    h.push_str("<h2 id=\"live\">Live behaviour</h2>");
    match &inp.live {
        Some(l) => live_html(&mut h, l, &ch.live),
        None => h.push_str("<p>No provenance log given (<code>--log provenance.jsonl</code>).</p>"),
    }

    // Policy in words.
    let _ = writeln!(
        h,
        "<h2 id=\"policy\">The policy in words</h2><p>Every state visited in training, and every state met in the evaluation episodes or the log (never-visited ones flagged), most visited first. <b>chosen</b>: the action the shipped greedy policy takes (in a state with fewer than {} visits it acts as the fallback state <i>decided by</i>). Q of every allowed action (– where not allowed; the chosen one highlighted). <b>confidence</b>: <i>high</i> ≥ {} visits and a Q lead ≥ {}; <i>medium</i> ≥ {} visits; <i>low</i> fewer (a fallback decides); <i>none</i> never visited. <b>rules</b>: {}.</p>",
        crate::policy::MIN_VISITS,
        crate::policy::HIGH_VISITS,
        crate::policy::CLEAR_LEAD,
        crate::policy::MIN_VISITS,
        esc(&inp.rules_source)
    );
    h.push_str(
        "<table id=\"policy-table\"><thead><tr><th>state</th><th class=\"l\">state in words</th><th>chosen</th>",
    );
    for a in Action::ALL {
        let _ = write!(h, "<th>Q {}</th>", a.name());
    }
    h.push_str("<th>visits</th><th>Q lead</th><th>confidence</th><th>rules</th><th>seen</th><th class=\"l\">flags</th></tr></thead><tbody>\n");
    for l in &inp.lines {
        let _ = write!(
            h,
            "<tr data-state=\"{}\"><td>{}</td><td class=\"l desc\">{}</td><td data-chosen=\"{}\"><b>{}</b></td>",
            l.id,
            l.id,
            esc(&l.desc),
            l.chosen,
            l.chosen
        );
        for (a, q) in Action::ALL.iter().zip(&l.q) {
            match q {
                Some(q) if a.name() == l.chosen => {
                    let _ = write!(h, "<td class=\"best\">{}</td>", f(*q, 3));
                }
                Some(q) => {
                    let _ = write!(h, "<td>{}</td>", f(*q, 3));
                }
                None => h.push_str("<td>–</td>"),
            }
        }
        let rules = match (&l.rules_choice, l.rules_share) {
            (Some(r), Some(s)) => format!("{r} ({:.0} %)", 100.0 * s),
            _ => "–".into(),
        };
        let _ = write!(
            h,
            "<td>{}</td><td>{}</td><td class=\"conf-{}\">{}</td><td>{}</td><td>{}</td><td class=\"l\">",
            l.state_visits,
            l.q_lead.map_or("–".into(), |x| f(x, 3)),
            l.confidence,
            l.confidence,
            esc(&rules),
            l.seen
        );
        if l.never_visited {
            let _ = write!(h, "<span class=\"flag\">never visited in training: acts as state {}</span>", l.decided_by);
        } else if l.low_visits {
            let _ = write!(h, "<span class=\"flag\">low visits: acts as state {}</span>", l.decided_by);
        }
        if l.differs_from_rules {
            h.push_str("<span class=\"flag d\">differs from rules</span>");
        }
        h.push_str("</td></tr>\n");
    }
    h.push_str("</tbody></table>\n");
    h.push_str("<p class=\"muted\">Generated by <code>selfheal report</code>. This page is self-contained: inline CSS and SVG, no scripts, fonts or network.</p></body></html>\n");
    Ok(h)
}

fn figures(h: &mut String, charts: &[(String, String)]) {
    h.push_str("<div class=\"grid\">");
    for (id, svg) in charts {
        let _ = write!(h, "<figure id=\"{id}\">{svg}</figure>");
    }
    h.push_str("</div>\n");
}

fn live_html(h: &mut String, l: &Live, charts: &[(String, String)]) {
    let mean = if l.rewarded > 0 { l.reward_sum / l.rewarded as f64 } else { f64::NAN };
    let _ = write!(
        h,
        "<p>{}: {} decisions on {} pipelines over {:.1} hours; rules would have chosen otherwise in {} ({:.1} %); mean reward {} over {} rewarded decisions{}.</p>",
        esc(&l.source),
        l.decisions,
        l.pipelines,
        (l.span_ms.1 - l.span_ms.0) as f64 / 3_600_000.0,
        l.shadow_differs,
        100.0 * l.shadow_differs as f64 / l.decisions.max(1) as f64,
        f(mean, 3),
        l.rewarded,
        if l.skipped_lines > 0 { format!("; {} unreadable lines skipped", l.skipped_lines) } else { String::new() }
    );
    h.push_str("<table id=\"live-table\"><thead><tr><th class=\"l\">what</th><th>count</th></tr></thead><tbody>");
    let mut row = |k: String, v: u64| {
        let _ = write!(h, "<tr><td class=\"l\">{}</td><td>{v}</td></tr>", esc(&k));
    };
    for (k, v) in &l.verdicts {
        row(format!("verdict {k}"), *v);
    }
    row("approved".into(), l.approved);
    row("rejected or expired".into(), l.rejected);
    for (k, v) in &l.outcomes {
        row(format!("outcome {k}"), *v);
    }
    row("failed call attempts".into(), l.failed_calls);
    row("escalations delivered".into(), l.escalations.0);
    row("escalations not delivered".into(), l.escalations.1);
    for (k, v) in &l.chosen {
        row(format!("chosen {k}"), *v);
    }
    h.push_str("</tbody></table>");
    figures(h, charts);
}

/// `report.md`.
pub fn markdown(inp: &ReportInput<'_>) -> String {
    let m = &inp.policy.model;
    let mut s = format!(
        "# Policy review\n\npolicy {} · encoder {} · trained on scenario {}, seed {}, {} episodes · γ = {}\n\n## Evaluation\n\n{} · scenario {}, {} seeds\n\n| policy |",
        inp.policy_source, m.encoder.id, m.meta.scenario, m.meta.seed, m.meta.episodes, m.meta.params.gamma, inp.eval_source, inp.eval.scenario, inp.eval.seeds
    );
    let cols: Vec<_> = EVAL_COLS.iter().filter(|c| !c.1.is_empty()).collect();
    for (_, name) in &cols {
        let _ = write!(s, " {name} |");
    }
    s.push_str("\n|---|");
    s.push_str(&"---:|".repeat(cols.len()));
    s.push('\n');
    for p in &inp.eval.policies {
        let _ = write!(s, "| {} |", p.name);
        for (k, _) in &cols {
            let _ = write!(s, " {} |", eval_cell(p, k).1);
        }
        s.push('\n');
    }
    if let Some(mix) = &inp.mix {
        let _ = write!(s, "\n### Action mix per fault kind (seeds {})\n\n", mix.seeds);
        for pm in &mix.policies {
            let _ = write!(s, "**{}**: ", pm.name);
            let parts: Vec<String> = pm
                .rows
                .iter()
                .map(|r| {
                    let mut top: Vec<(usize, u64)> = r.counts.iter().copied().enumerate().filter(|x| x.1 > 0).collect();
                    top.sort_by_key(|x| std::cmp::Reverse(x.1));
                    let t: Vec<String> = top
                        .iter()
                        .take(3)
                        .map(|(i, n)| {
                            format!("{} {:.0} %", Action::ALL[*i].name(), 100.0 * *n as f64 / r.decisions.max(1) as f64)
                        })
                        .collect();
                    format!("{}: {}", r.fault, t.join(", "))
                })
                .collect();
            s.push_str(&parts.join("; "));
            s.push_str("\n\n");
        }
    }
    if let Some(rows) = &inp.curve {
        let _ = write!(s, "\n## Training\n\n{}: {} blocks", inp.curve_source, rows.len());
        if let (Some(a), Some(b)) = (rows.first(), rows.last()) {
            let _ = write!(
                s,
                "; return {} → {}, MTTR {} → {}, ε {} → {}",
                f(a.mean_return, 2),
                f(b.mean_return, 2),
                a.mttr_steps.map_or("–".into(), |x| f(x, 2)),
                b.mttr_steps.map_or("–".into(), |x| f(x, 2)),
                f(a.epsilon, 3),
                f(b.epsilon, 3)
            );
        }
        s.push('\n');
    }
    coverage_markdown(&mut s, inp.coverage.as_ref());
    if let Some(l) = &inp.live {
        let _ = write!(
            s,
            "\n## Live behaviour\n\n{}: {} decisions on {} pipelines; approved {}, rejected/expired {}, failed call attempts {}, escalations {} delivered / {} not; rules differ in {}; reward sum {:.3}\n\n",
            l.source, l.decisions, l.pipelines, l.approved, l.rejected, l.failed_calls, l.escalations.0, l.escalations.1, l.shadow_differs, l.reward_sum
        );
        for (k, v) in &l.verdicts {
            let _ = writeln!(s, "- verdict {k}: {v}");
        }
        for (k, v) in &l.outcomes {
            let _ = writeln!(s, "- outcome {k}: {v}");
        }
    }
    let _ = write!(s, "\n## The policy in words\n\nrules: {}\n\n| state | state in words | chosen | visits | Q lead | confidence | rules | seen | flags | Q |\n|---:|---|---|---:|---:|---|---|---:|---|---|\n", inp.rules_source);
    for l in &inp.lines {
        let q: Vec<String> =
            Action::ALL.iter().zip(&l.q).filter_map(|(a, q)| q.map(|q| format!("{} {:.3}", a.name(), q))).collect();
        let mut flags = Vec::new();
        if l.never_visited {
            flags.push(format!("never visited (acts as {})", l.decided_by));
        } else if l.low_visits {
            flags.push(format!("low visits (acts as {})", l.decided_by));
        }
        if l.differs_from_rules {
            flags.push("differs from rules".into());
        }
        let _ = writeln!(
            s,
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} |",
            l.id,
            l.desc,
            l.chosen,
            l.state_visits,
            l.q_lead.map_or("–".into(), |x| f(x, 3)),
            l.confidence,
            l.rules_choice
                .as_deref()
                .map_or("–".into(), |r| format!("{r} ({:.0} %)", 100.0 * l.rules_share.unwrap_or(0.0))),
            l.seen,
            flags.join(", "),
            q.join(", ")
        );
    }
    s
}

/// `policy.json`: the model's provenance and every state line.
pub fn policy_json(inp: &ReportInput<'_>) -> String {
    #[derive(Serialize)]
    struct Doc<'a> {
        format: &'static str,
        policy: &'a str,
        meta: &'a selfheal_agent::ModelMeta,
        encoder: &'a str,
        actions: Vec<&'static str>,
        rules_source: &'a str,
        states: &'a [StateLine],
    }
    let d = Doc {
        format: "selfheal-policy-review",
        policy: &inp.policy_source,
        meta: &inp.policy.model.meta,
        encoder: &inp.policy.model.encoder.id,
        actions: Action::ALL.iter().map(|a| a.name()).collect(),
        rules_source: &inp.rules_source,
        states: &inp.lines,
    };
    #[allow(clippy::expect_used)] // plain structs with string keys: serde_json cannot fail on them
    let mut s = serde_json::to_string_pretty(&d).expect("review serialises");
    s.push('\n');
    s
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// `policy.csv`: one row per state.
pub fn policy_csv(lines: &[StateLine]) -> String {
    let mut s = String::from("state,desc,signature,attempted,chosen,decided_by,state_visits,deciding_visits,q_lead,confidence,never_visited,low_visits,rules_choice,rules_share,seen,differs_from_rules");
    for a in Action::ALL {
        let _ = write!(s, ",q_{}", a.name());
    }
    for a in Action::ALL {
        let _ = write!(s, ",visits_{}", a.name());
    }
    s.push('\n');
    let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
    for l in lines {
        let _ = write!(
            s,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            l.id,
            csv_field(&l.desc),
            l.signature.map_or(String::new(), |x| x.to_string()),
            l.attempted.map_or(String::new(), |x| x.to_string()),
            l.chosen,
            l.decided_by,
            l.state_visits,
            l.deciding_visits,
            opt(l.q_lead),
            l.confidence,
            l.never_visited,
            l.low_visits,
            l.rules_choice.as_deref().unwrap_or(""),
            opt(l.rules_share),
            l.seen,
            l.differs_from_rules
        );
        for q in &l.q {
            let _ = write!(s, ",{}", opt(*q));
        }
        for v in &l.visits {
            let _ = write!(s, ",{v}");
        }
        s.push('\n');
    }
    s
}

/// Write the four files into `dir`; returns their paths.
pub fn write_all(inp: &ReportInput<'_>, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>, ReportError> {
    let files = [
        ("report.html", html(inp)?),
        ("report.md", markdown(inp)),
        ("policy.json", policy_json(inp)),
        ("policy.csv", policy_csv(&inp.lines)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        crate::write_text(&p, &text)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coverage() -> DetectorCoverage {
        let row = |kind: &str, windows, flagged| CoverageRow { kind: kind.into(), windows, flagged };
        DetectorCoverage {
            source: "d.json".into(),
            rows: vec![row("upstream_5xx", 200, 150), row("stuck_job", 34_516, 0)],
        }
    }

    #[test]
    fn coverage_is_a_table_with_a_warning_for_a_kind_never_flagged() {
        let c = coverage();
        assert_eq!(c.warnings().len(), 1);
        assert!(c.warnings()[0].contains("none of the 34516 stuck_job windows"), "{:?}", c.warnings());
        let mut h = String::new();
        coverage_html(&mut h, Some(&c));
        assert!(h.contains("id=\"coverage-table\""), "{h}");
        assert!(h.contains("<td class=\"l\">upstream_5xx</td><td>200</td><td>150</td><td>75.0 %</td>"), "{h}");
        assert!(h.contains("<td>0.0 %</td>") && h.contains("class=\"warn\"") && h.contains("stuck_job"), "{h}");
        assert_eq!(h.matches("class=\"warn\"").count(), 1, "the kind it flags is not warned about");
        let mut md = String::new();
        coverage_markdown(&mut md, Some(&c));
        assert!(md.contains("| upstream_5xx | 200 | 150 | 75.0 % |"), "{md}");
        assert!(md.contains("**warning: the detector flags none of the 34516 stuck_job windows"), "{md}");
        // A detector file without the figures says so instead.
        let mut h = String::new();
        coverage_html(&mut h, None);
        assert!(h.contains("holds no coverage figures") && !h.contains("coverage-table"), "{h}");
    }
}
