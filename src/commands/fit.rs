//! `selfheal fit`: the detector's baseline from one pipeline's own history
//! (issue 14).
//!
//! The shipped detector learned "normal" from the simulator. A real Glue job
//! has its own normal (its run length, its heap, its records a minute) and
//! publishes only some of the metrics, so against the simulator's baseline
//! its ordinary minutes look like incidents. This command reads the job's
//! history, picks its healthy windows without labels (no failed run's end in
//! or right after them, no wild outlier) and moves the detector's baseline
//! and threshold there ([`selfheal_detect::telemetry::DetectorModel::rebaseline`]); the forest and the
//! signatures stay, so the shipped policy still applies to the result.
//!
//! The history is read the way the sidecar reads it, so the windows fitted on
//! are the windows decided on: JSON lines through the push parser and window
//! assembler (samples and "Glue Job State Change" events; an event's counts
//! fold into its job's pipeline), a NAB CSV through the file source, or
//! CloudWatch through the sidecar's own CloudWatch source.

use crate::defaults;
use anyhow::{bail, Context, Result};
use selfheal_agent::store::write_atomic;
use selfheal_core::{Metric, Telemetry};
use selfheal_detect::features::TelemetryFeatures;
use selfheal_detect::telemetry::RebaselineParams;
use selfheal_sidecar::source::{FileSource, Pacing, TelemetrySource};
use selfheal_sidecar::window::{assemble, parse_body, Assembler, Window};
use std::path::{Path, PathBuf};

/// Fit the detector's baseline on one pipeline's own history.
///
/// Reads the pipeline's telemetry windows, drops those at or just before a
/// failed job run's end (from "Glue Job State Change" events) and outliers
/// (|z| > 6 on some metric), and re-estimates the detector's per-metric median
/// and scale and its alarm threshold on the rest. The forest and failure
/// signatures of the base detector are kept, so policies trained on it still
/// apply. The file records the metric set it was fitted for; `selfheal run`
/// and `selfheal validate` refuse it for a pipeline that publishes another.
/// Same input, same file.
#[derive(clap::Args)]
#[command(after_help = "Examples:
  selfheal fit --history orders-week.jsonl --pipeline orders --job orders-etl
      JSON lines as `POST /ingest` takes them ({\"ts\": ..., \"pipeline\": \"orders\", \"metrics\": {...}}),
      with Glue Job State Change events (EventBridge JSON) on their own lines.
  selfheal fit --config sidecar.toml --pipeline orders --minutes 10080
      a week of the pipeline's CloudWatch metrics, read as the sidecar's [source] reads them.
Then set `detector = \"detector-orders.json\"` under [model] in the sidecar configuration.")]
pub struct Args {
    /// Replay file of the pipeline's history: JSON lines (.jsonl/.json/.ndjson)
    /// of samples and Glue Job State Change events, or a NAB CSV
    /// (`timestamp,value`, with --metric).
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    history: Option<PathBuf>,
    /// Sidecar configuration with a CloudWatch `[source]` to backfill from
    /// (its pipelines, namespace, period and metrics; `[aws]` for the endpoint).
    #[arg(long, requires = "minutes")]
    config: Option<PathBuf>,
    /// Minutes of CloudWatch history to read, up to now (with --config).
    #[arg(long, requires = "config")]
    minutes: Option<u64>,
    /// The pipeline whose history to fit on (as the source names it).
    #[arg(long)]
    pipeline: String,
    /// Glue job whose state-change events belong to the pipeline (history
    /// file only); default: the pipeline's name.
    #[arg(long)]
    job: Option<String>,
    /// Seconds per window when assembling a JSON lines history (the sidecar's
    /// `source.window_secs`); CloudWatch uses `source.period_secs`.
    #[arg(long, default_value_t = 60)]
    period_secs: u64,
    /// Metric a CSV history holds (`selfheal config --metrics` lists the names).
    #[arg(long)]
    metric: Option<String>,
    /// Detector to rebaseline; default: the shipped one.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Share of the pipeline's healthy windows allowed over the threshold, in (0, 0.5).
    #[arg(long, default_value_t = 0.02)]
    false_alarm_rate: f64,
    /// Where to write the detector (atomically); default `detector-<pipeline>.json`.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: Args) -> Result<()> {
    anyhow::ensure!(a.false_alarm_rate > 0.0 && a.false_alarm_rate < 0.5, "--false-alarm-rate must be in (0, 0.5)");
    anyhow::ensure!(a.period_secs >= 1, "--period-secs must be at least 1");
    let base = defaults::detector(a.base.as_deref())?;
    let (windows, source) = match (&a.history, &a.config) {
        (Some(path), _) => (read_history(path, &a)?, format!("history:{}", path.display())),
        (None, Some(config)) => {
            let minutes = a.minutes.context("--minutes is needed with --config")?;
            backfill(config, &a.pipeline, minutes)?
        }
        (None, None) => bail!("nothing to fit on: pass --history FILE or --config FILE --minutes N"),
    };
    let history: Vec<Telemetry> = windows.iter().map(|w| w.telemetry).collect();
    let params = RebaselineParams { false_alarm_rate: a.false_alarm_rate, source, pipeline: a.pipeline.clone() };
    let model = base
        .rebaseline(&history, &params)
        .with_context(|| format!("fitting the detector on {}'s history ({})", a.pipeline, params.source))?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("detector-{}.json", a.pipeline)));
    write_atomic(&out, model.to_json().as_bytes())?;

    let b = model.meta.baseline.as_ref().expect("rebaselined");
    let lacking: Vec<&str> =
        TelemetryFeatures::inputs().iter().map(|m| m.name()).filter(|m| !b.metrics.iter().any(|h| h == m)).collect();
    let none = |v: Vec<&str>| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    println!("pipeline {} ({})", b.pipeline, b.source);
    println!("windows read: {}", b.windows);
    println!("healthy windows used: {}", b.healthy_windows);
    println!(
        "excluded: {} at or before a failed run's end, {} as outliers (|z| > {}), {} with no detector metric",
        b.excluded.failed_runs,
        b.excluded.outliers,
        selfheal_detect::telemetry::OUTLIER_Z,
        b.excluded.empty
    );
    println!("metrics present: {}", none(b.metrics.iter().map(String::as_str).collect()));
    println!("metrics the detector reads that the history lacks: {}", none(lacking));
    println!("threshold: {:.6} (false-alarm rate {})", model.threshold, a.false_alarm_rate);
    println!("pairs with policies of detector {}", model.policy_fingerprint());
    println!("wrote {}", out.display());
    Ok(())
}

/// The pipeline's windows from a replay file, in time order.
fn read_history(path: &Path, a: &Args) -> Result<Vec<Window>> {
    let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "json" | "ndjson"));
    let all = if jsonl {
        let body = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (samples, rejected) = parse_body(&body);
        let mut asm = Assembler::new(a.period_secs as i64 * 1000);
        asm.map_jobs([(a.job.clone().unwrap_or_else(|| a.pipeline.clone()), a.pipeline.clone())]);
        let got = assemble(&mut asm, &samples, rejected);
        if let Some((line, why)) = got.rejected.first() {
            bail!(
                "{}:{line}: {why} ({} line(s) refused in all; the history must be readable as a whole)",
                path.display(),
                got.rejected.len()
            );
        }
        let mut all = got.windows;
        all.extend(asm.drain());
        all
    } else {
        let name = a.metric.as_deref().context("a CSV history holds one metric: name it with --metric")?;
        let metric = Metric::from_name(name)
            .with_context(|| format!("unknown metric {name:?}; `selfheal config --metrics` lists them"))?;
        let mut src = FileSource::open(path, metric, &a.pipeline, Pacing::Fast, None, &[])?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut all = Vec::with_capacity(src.remaining());
        rt.block_on(async {
            while let Some(batch) = src.next().await? {
                all.extend(batch);
            }
            Ok::<_, anyhow::Error>(())
        })?;
        all
    };
    let mut pipelines: Vec<&str> = all.iter().map(|w| w.pipeline.as_str()).collect();
    pipelines.sort_unstable();
    pipelines.dedup();
    if !pipelines.contains(&a.pipeline.as_str()) {
        bail!(
            "{}: no window of pipeline {:?}; the file has {}",
            path.display(),
            a.pipeline,
            if pipelines.is_empty() { "none".to_string() } else { pipelines.join(", ") }
        );
    }
    let others: Vec<&str> = pipelines.iter().copied().filter(|p| *p != a.pipeline).collect();
    if !others.is_empty() {
        // A job's events are filed under the job's name unless --job maps it.
        eprintln!("ignored: windows of {} (events of the pipeline's Glue job? pass --job JOB_NAME)", others.join(", "));
    }
    let mut mine: Vec<Window> = all.into_iter().filter(|w| w.pipeline == a.pipeline).collect();
    mine.sort_by_key(|w| w.ts_ms);
    Ok(mine)
}

/// The pipeline's windows of the last `minutes` from CloudWatch, and the
/// source's description.
#[cfg(feature = "aws")]
fn backfill(config: &Path, pipeline: &str, minutes: u64) -> Result<(Vec<Window>, String)> {
    use rand::SeedableRng;
    use selfheal_sidecar::config::{SidecarConfig, SourceConfig};
    let cfg = SidecarConfig::load(config)?;
    let SourceConfig::Cloudwatch(c) = &cfg.source else {
        bail!("{}: source.kind is not \"cloudwatch\"; --config backfills from CloudWatch", config.display())
    };
    let Some(p) = c.pipelines.iter().find(|p| p.name == pipeline) else {
        let names: Vec<&str> = c.pipelines.iter().map(|p| p.name.as_str()).collect();
        bail!("{}: no source.pipelines entry named {pipeline:?} (it has {})", config.display(), names.join(", "));
    };
    let mut c = c.clone();
    c.pipelines = vec![p.clone()];
    c.lookback_secs = minutes * 60;
    c.lag_secs = 0;
    let source = format!("cloudwatch:{} {minutes} min", p.job_name);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let windows = rt.block_on(async {
        let sdk = selfheal_aws::sdk_config(&cfg.aws).await;
        let client = selfheal_aws::cloudwatch::Client::new(&sdk);
        let now = selfheal_sidecar::now_ms() / 1000;
        // The job's runs (GetJobRuns) mark the windows of failed runs, which
        // are no baseline; the catalog is not read (drift is no baseline matter).
        use selfheal_aws::evidence::{Evidence, EvidenceSources};
        let job_name = (!c.pipelines[0].job_name.is_empty()).then(|| c.pipelines[0].job_name.clone());
        let evidence = Evidence::new(
            selfheal_aws::glue::Client::new(&sdk),
            vec![EvidenceSources { pipeline: pipeline.to_string(), job_name, tables: None }],
        );
        let mut src =
            selfheal_aws::cloudwatch::CloudWatchSource::new(client, c, now, cfg.model.seed).with_evidence(evidence);
        // What the sidecar will read: the metrics ListMetrics finds (as `run` does).
        if let Err(f) = src.discover(now).await {
            tracing::warn!(error = %f.message, kind = f.kind.name(), "ListMetrics failed: every known metric is queried");
        }
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(cfg.model.seed);
        let mut windows = Vec::new();
        let mut failures = 0u32;
        // Each successful poll moves the cursor past what it emitted; a poll
        // with nothing new means caught up. Bounded, in case data keeps arriving.
        for _ in 0..1000 {
            match src.poll(now).await {
                Ok(ws) if ws.is_empty() => {
                    // Failed runs mark windows to leave out: without GetJobRuns
                    // the baseline may include them. Say so, loudly.
                    for ((_, call, kind), n) in src.evidence_failures() {
                        eprintln!(
                            "warning: {call} failed {n} time(s) ({kind}): failed job runs could not be read, so \
                             their windows are left out only if they are outliers; check the job name and the \
                             glue:{call} permission"
                        );
                    }
                    return Ok(windows);
                }
                Ok(ws) => {
                    failures = 0;
                    windows.extend(ws);
                }
                Err(f) if f.kind.retryable() && BACKFILL_RETRY.may_retry(failures + 1) => {
                    failures += 1;
                    let wait = BACKFILL_RETRY.delay_ms(failures, &mut rng);
                    tracing::warn!(error = %f.message, kind = f.kind.name(), wait_ms = wait, attempt = failures,
                        "CloudWatch GetMetricData failed; backing off");
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                }
                Err(f) if f.kind.retryable() => bail!(
                    "CloudWatch GetMetricData still failing after {} attempts ({}: {}); try again later",
                    failures + 1,
                    f.kind.name(),
                    f.message
                ),
                Err(f) => bail!("CloudWatch GetMetricData failed ({}: {})", f.kind.name(), f.message),
            }
        }
        Ok::<_, anyhow::Error>(windows)
    })?;
    if windows.is_empty() {
        bail!(
            "CloudWatch has no datapoint of pipeline {pipeline:?} (job {}) in the last {minutes} minutes; \
             check the job name, the region/endpoint and that the job runs with --enable-metrics",
            p.job_name
        );
    }
    Ok((windows, source))
}

/// Throttling and 5xx of a backfill: full jitter, at most 6 attempts in all
/// (waits of up to 1, 2, 4, 8, 16 s): a backfill is interactive, so it
/// gives up within a minute with a clear error rather than retrying for ever.
#[cfg(feature = "aws")]
const BACKFILL_RETRY: selfheal_guard::retry::RetryPolicy =
    selfheal_guard::retry::RetryPolicy { max_attempts: 6, base_ms: 500, cap_ms: 16_000 };

#[cfg(not(feature = "aws"))]
fn backfill(_config: &Path, _pipeline: &str, _minutes: u64) -> Result<(Vec<Window>, String)> {
    bail!("--config backfills from CloudWatch, which needs the `aws` feature; rebuild with default features")
}
