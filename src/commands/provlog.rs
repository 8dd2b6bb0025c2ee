//! `selfheal log` and `selfheal explain`: read the sidecar's provenance log.

use anyhow::Result;
use clap::Args as ClapArgs;
use selfheal_report::log::{open_proposals, OpenProposal};
use selfheal_sidecar::provenance::{explain, filter, one_line, parse_time, read_log, LogFilter, LogRead, Record};
use std::path::{Path, PathBuf};

/// Where the log is: --log, else the default state directory's.
#[derive(ClapArgs, Debug)]
pub struct LogSource {
    /// Provenance log (default: selfheal-state/provenance.jsonl, the daemon's
    /// default); its rotated segments (provenance.000001.jsonl, ...) are read too.
    #[arg(long, default_value = "selfheal-state/provenance.jsonl")]
    log: PathBuf,
}

/// The log at `path` for `report`, `shadow` and `ope`: its rotated segments,
/// oldest first, then `path` itself, joined by decision id across them.
pub fn read_review_log(path: &Path) -> Result<selfheal_report::log::Log> {
    let files = selfheal_sidecar::provenance::segments(path)?;
    Ok(selfheal_report::log::read_segments(&files, path)?)
}

/// The log at `path` and its rotated segments, bad lines warned about.
fn read(path: &Path) -> Result<LogRead> {
    let read = read_log(path)?;
    for (line, why) in &read.skipped {
        eprintln!("warning: {}:{line}: skipped: {why}", path.display());
    }
    Ok(read)
}

/// Tell the chain of one decision in plain words: the window, the anomaly,
/// the state, the Q values, the choice, the rules' choice, the guardrail
/// verdict, approvals, every call attempt, the outcome and the reward.
#[derive(ClapArgs, Debug)]
pub struct ExplainArgs {
    /// Decision id (as the daemon logs it, e.g. 18c2f3a-42).
    id: String,
    #[command(flatten)]
    source: LogSource,
}

pub fn run_explain(a: ExplainArgs) -> Result<()> {
    let read = read(&a.source.log)?;
    println!("{}", explain(&a.id, &read.records)?);
    Ok(())
}

/// List provenance records, filtered by time, pipeline, action and verdict.
/// Records of a decision (approvals, calls, outcome, reward) follow its
/// filters. Times: Unix ms, RFC 3339 (2026-11-23T03:00:00Z) or relative (-15m, -2h).
#[derive(ClapArgs, Debug)]
pub struct LogArgs {
    #[command(flatten)]
    source: LogSource,
    /// Records at or after this time.
    #[arg(long)]
    since: Option<String>,
    /// Records before this time.
    #[arg(long)]
    until: Option<String>,
    /// Only this pipeline's decisions.
    #[arg(long)]
    pipeline: Option<String>,
    /// Only decisions that chose this action (e.g. scale_up).
    #[arg(long)]
    action: Option<String>,
    /// Only decisions with this verdict: noop, observed, proposed, pending, allowed, escalated, paused, denied.
    #[arg(long)]
    verdict: Option<String>,
    /// Only this decision's records.
    #[arg(long)]
    id: Option<String>,
    /// Print the records as JSON lines instead of one readable line each.
    #[arg(long)]
    json: bool,
    /// Instead of records: what each pipeline waits for now, i.e. the
    /// proposals with no answer, expiry or outcome in the log yet, how long
    /// they have waited and how many later windows waited on them.
    #[arg(long)]
    waiting: bool,
    /// With --waiting: the proposal lifetime (the daemon's
    /// guard.approval_ttl_secs); older proposals have expired. Default: the
    /// value in --config if given, else 900.
    #[arg(long)]
    ttl_secs: Option<u64>,
    /// The daemon's config file, for its guard.approval_ttl_secs (--waiting).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The proposal lifetime for `--waiting`: `--ttl-secs`, else the config's
/// `guard.approval_ttl_secs`, else the daemon's default (900 s).
fn ttl_secs(a: &LogArgs) -> Result<u64> {
    if let Some(t) = a.ttl_secs {
        return Ok(t);
    }
    match &a.config {
        Some(p) => Ok(selfheal_sidecar::config::SidecarConfig::load(p)?.guard.approval_ttl_secs),
        None => Ok(selfheal_sidecar::config::SidecarConfig::default().guard.approval_ttl_secs),
    }
}

pub fn run_log(a: LogArgs) -> Result<()> {
    let now = selfheal_sidecar::now_ms();
    let time = |s: &Option<String>| s.as_deref().map(|s| parse_time(s, now)).transpose().map_err(anyhow::Error::msg);
    let ttl_ms = i64::try_from(ttl_secs(&a)?.saturating_mul(1000)).unwrap_or(i64::MAX);
    let f = LogFilter {
        since_ms: time(&a.since)?,
        until_ms: time(&a.until)?,
        pipeline: a.pipeline,
        action: a.action,
        verdict: a.verdict,
        id: a.id,
    };
    let read = read(&a.source.log)?;
    if a.waiting {
        for line in waiting(&read.records, &f, now, ttl_ms) {
            println!("{line}");
        }
        return Ok(());
    }
    for rec in filter(&read.records, &f) {
        if a.json {
            println!("{}", serde_json::to_string(rec)?);
        } else {
            println!("{}", one_line(rec));
        }
    }
    Ok(())
}

/// One line per proposal still open in `records` at `now` (ms): no approval,
/// outcome or expiry recorded and younger than `ttl_ms`, oldest first.
fn waiting(records: &[Record], f: &LogFilter, now: i64, ttl_ms: i64) -> Vec<String> {
    let mut out: Vec<String> = open_proposals(records, filter(records, f), now, ttl_ms)
        .into_iter()
        .map(|OpenProposal { decision: d, waits }| {
            format!(
                "{} waits for a human: {} proposed {} s ago ({}; {}), expires in {} s; {waits} later window(s) waited \
                 on it; answer with `selfheal approve {}` or `selfheal reject {}`",
                d.pipeline,
                d.chosen,
                (now - d.ts_ms) / 1000,
                d.id,
                d.reason,
                (ttl_ms - (now - d.ts_ms)) / 1000,
                d.id,
                d.id
            )
        })
        .collect();
    if out.is_empty() {
        out.push("nothing waits for a human".into());
    }
    out
}
