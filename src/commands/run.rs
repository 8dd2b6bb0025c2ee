//! `selfheal run`: the sidecar controller, and the small commands around it
//! (`config`, `validate`, `approve`, `reject`, `pause`, `resume`).
//!
//! This is the one place that knows which concrete source, actuator, encoder
//! and models the daemon gets; `selfheal-sidecar` only knows their traits.

use crate::{defaults, wiring};
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use selfheal_agent::store::ModelFile;
use selfheal_agent::{EncoderKind, GlueBuiltinsPolicy, QLearner, QTable, RulesPolicy};
use selfheal_core::{Detector, Metric, StateEncoder};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_sidecar::actuate::{Actuator, CommandActuator, DryRun, SimActuator};
use selfheal_sidecar::auth::{self, Token};
use selfheal_sidecar::config::{
    ActuatorConfig, LowConfidence, Pace, SidecarConfig, SourceConfig, DEFAULT_CONTROL_TOKEN_ENV, EXAMPLE,
};
use selfheal_sidecar::daemon::{self, Checkpoint, Daemon, Listeners};
use selfheal_sidecar::decide::{Controller, DecideConfig, EncoderFactory, Parts};
use selfheal_sidecar::http::{ControlAuth, Ingest};
use selfheal_sidecar::source::{FileSource, HttpSource, Pacing, SimFleet, SimSource, TelemetrySource};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Run the sidecar controller: watch pipelines, decide within guardrails,
/// act, learn online, and log every decision.
///
/// With no --config it is a live demo: the built-in simulator with 3
/// pipelines and injected faults, the shipped models, act mode. Every decision
/// is one line on stderr; /metrics, /healthz and /readyz answer on
/// 127.0.0.1:9477, the control plane (/approvals, /pause, /resume, /ingest;
/// bearer token from daemon.control_token_file or SELFHEAL_CONTROL_TOKEN) on
/// 127.0.0.1:9478. Stop it with Ctrl-C (SIGINT) or SIGTERM: in-flight actions
/// finish (or are cancelled after the grace period), the Q table is saved, the
/// log is synced. `selfheal config --example` prints every setting.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Configuration file (TOML); without it, the built-in simulator demo.
    #[arg(long)]
    config: Option<PathBuf>,
    /// HTTP address of /metrics, /healthz, /readyz (overrides daemon.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP address of the control plane: /approvals, /pause, /resume, /ingest
    /// (overrides daemon.control_listen). Not loopback only with a control token.
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// Mode (overrides guard.mode): observe, recommend or act.
    #[arg(long)]
    mode: Option<selfheal_guard::Mode>,
    /// State directory (overrides daemon.state_dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep learning from the checkpoint in the state directory even though
    /// it grew from another model than the configured one (without this flag
    /// such a checkpoint is refused: its online updates belong to that model).
    #[arg(long)]
    resume_from_checkpoint: bool,
}

/// Load the configuration the way `run` does.
pub fn load_config(path: Option<&std::path::Path>) -> Result<SidecarConfig> {
    match path {
        Some(p) => Ok(SidecarConfig::load(p)?),
        None => Ok(SidecarConfig::default()),
    }
}

pub fn run(a: Args) -> Result<()> {
    let mut cfg = load_config(a.config.as_deref())?;
    if let Some(l) = a.listen {
        cfg.daemon.listen = l;
    }
    if let Some(l) = a.control_listen {
        cfg.daemon.control_listen = l;
    }
    if let Some(m) = a.mode {
        cfg.guard.mode = m;
    }
    if let Some(d) = a.state_dir {
        cfg.daemon.state_dir = d;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(cfg, a.resume_from_checkpoint))
}

/// The model to start from: the configured one, or the checkpoint in the
/// state directory if it grew from that model (or `resume` says so). Returns
/// the model, where it came from and the identity of the trained model it
/// grew from (what the next checkpoint records).
pub fn starting_model(cfg: &SidecarConfig, resume: bool) -> Result<(ModelFile, String, String)> {
    let checkpoint_path = cfg.daemon.checkpoint_path();
    let configured_from =
        cfg.model.policy.as_ref().map_or("shipped models/policy.json".into(), |p| p.display().to_string());
    let configured = defaults::policy(cfg.model.policy.as_deref())?;
    let identity = configured.identity();
    if !checkpoint_path.exists() {
        return Ok((configured, configured_from, identity));
    }
    let m = ModelFile::load(&checkpoint_path).with_context(|| {
        format!(
            "the checkpoint {} does not load; move it away to start from the configured model",
            checkpoint_path.display()
        )
    })?;
    let grown = m.meta.grown_from.clone().unwrap_or_else(|| m.identity());
    if grown != identity && !resume {
        bail!(
            "the checkpoint {} grew from the model {grown}, not from the configured model {identity} ({configured_from}); \
             its online updates belong to that model. Move the checkpoint away to start from the configured model, \
             or pass --resume-from-checkpoint to keep learning from it",
            checkpoint_path.display()
        );
    }
    Ok((m, checkpoint_path.display().to_string(), grown))
}

/// The checkpoint of `table`, grown from `model`: the model's own encoder
/// configuration (the ladder the sidecar decides with is the deployment's,
/// derived again at each start) and the identity it grew from.
pub fn checkpoint_of(model: &ModelFile, grown_from: &str, describe: &dyn StateEncoder, table: &QTable) -> ModelFile {
    let mut meta = model.meta.clone();
    meta.grown_from = Some(grown_from.to_string());
    ModelFile::new(meta, describe, model.encoder.config.clone(), table)
}

/// The control plane's tokens, checked against where it listens: refuses a
/// non-loopback control listener without a control token. Logs where the
/// token came from (never the token) and warns about a loose token file and
/// an open loopback control plane.
fn control_auth(cfg: &SidecarConfig) -> Result<ControlAuth> {
    let resolved = auth::resolve(&cfg.daemon, |v| std::env::var(v).ok())?;
    let control = match resolved {
        Some((token, from, warning)) => {
            if let Some(w) = warning {
                tracing::warn!("{w}");
            }
            tracing::info!(token_id = %token.id(), from = %from, "control plane requires a bearer token");
            Some(token)
        }
        None => None,
    };
    auth::check_exposure(&cfg.daemon, control.as_ref())?;
    let ingest = match &cfg.source {
        SourceConfig::Http { token_env: Some(var), .. } => {
            let v = std::env::var(var).with_context(|| format!("source.token_env names {var}, which is not set"))?;
            let t = Token::new(v.trim());
            tracing::info!(token_id = %t.id(), "source.token_env: /ingest also accepts this ingest-only token \
                (it cannot approve, pause or resume; [daemon] control_token_file sets the control token)");
            Some(t)
        }
        _ => None,
    };
    if control.is_none() {
        tracing::warn!(control_listen = %cfg.daemon.control_listen,
            "no control token ([daemon] control_token_file, or the environment variable {}): the control plane \
             (/approvals, /pause, /resume{}) is open to every process on this host; it listens on loopback only",
            cfg.daemon.control_token_env, if ingest.is_some() { "" } else { ", /ingest" });
    }
    if matches!(cfg.source, SourceConfig::Http { .. })
        && cfg.daemon.control_listen.ip().is_loopback()
        && !cfg.daemon.listen.ip().is_loopback()
    {
        tracing::warn!(control_listen = %cfg.daemon.control_listen, listen = %cfg.daemon.listen,
            "/ingest is served on the control listener, which is loopback: telemetry pushers on other hosts \
             cannot reach it (set daemon.control_listen and a control token to accept them)");
    }
    Ok(ControlAuth { control, ingest })
}

async fn serve(cfg: SidecarConfig, resume: bool) -> Result<()> {
    // Before the models load: a refused exposure is the quickest error to give.
    let control_auth = control_auth(&cfg)?;
    let scenario = defaults::scenario(cfg.model.scenario.as_deref())?;
    let detector_model = defaults::detector(cfg.model.detector.as_deref())?;
    let checkpoint_path = cfg.daemon.checkpoint_path();
    let (model, from, grown_from) = starting_model(&cfg, resume)?;
    // Checks the policy against the scenario's shape, the detector and the
    // actuator's worker ladder; decides with the actuator's ladder.
    let enc_cfg = wiring::sidecar_encoder(&model, &scenario, &detector_model, &cfg.actuator, "the configuration")?;
    check_declared_metrics(&cfg, &detector_model, "the configuration")?;
    // Checked above: only the table is built here, with the model's own encoder.
    let (enc, _) = wiring::encoder(&model.encoder.id, model.encoder.config.clone(), &detector_model)?;
    let table = model.table(enc.as_ref())?;
    tracing::info!(model = %from, states = table.visited_states().count(), worker_levels = ?enc_cfg.worker_levels,
        "Q table loaded");
    let detector: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector_model.clone()));
    let Some(kind) = EncoderKind::parse(&model.encoder.id) else {
        bail!("unknown encoder {:?}; this build knows {}", model.encoder.id, EncoderKind::known())
    };
    let encoder: EncoderFactory = {
        let (c, d) = (enc_cfg.clone(), detector.clone());
        Arc::new(move || kind.build(c.clone(), d.clone()) as Box<dyn StateEncoder + Send>)
    };
    let (_, describe) = wiring::encoder(&model.encoder.id, enc_cfg.clone(), &detector_model)?;
    let rules_file = defaults::rules(cfg.model.rules.as_deref())?;
    let reward = wiring::reward(&scenario);
    let rules = RulesPolicy::new(rules_file.thresholds, reward.slo);
    let mut learner = QLearner::from_table(table, model.meta.params, cfg.model.seed);
    learner.set_epsilon(cfg.model.epsilon);
    let glue = Some(
        GlueBuiltinsPolicy::new(
            defaults::glue_builtins(cfg.model.glue_builtins.as_deref())?.settings,
            &wiring::job_shape(&scenario),
        )
        .context("the Glue built-ins shadow")?,
    );
    let parts = Parts { encoder, describe: describe.clone(), detector, learner, rules, glue, reward: Box::new(reward) };
    let g = &cfg.guard;
    let dcfg = DecideConfig {
        mode: g.mode,
        confidence: g.confidence,
        watchdog: g.watchdog,
        propose_when_unsure: g.low_confidence == LowConfidence::Propose,
        approval_ttl_ms: g.approval_ttl_secs * 1000,
        budget: g.budget,
        reward_windows: cfg.model.reward_windows,
        learn: cfg.model.learn,
        epsilon: cfg.model.epsilon,
        log_healthy: cfg.daemon.log_healthy,
        seed: cfg.model.seed,
    };
    let run_id = format!("{:x}", selfheal_sidecar::now_ms());
    let mut controller = Controller::new(dcfg, parts, run_id);

    let mut fleet = None;
    let mut ingest = None;
    let source: Box<dyn TelemetrySource> = match &cfg.source {
        SourceConfig::Simulator { pipelines, tick_ms, seed } => {
            let f = Arc::new(Mutex::new(SimFleet::new(&scenario, *pipelines, *seed, selfheal_sidecar::now_ms())));
            fleet = Some(f.clone());
            Box::new(SimSource::new(f, Duration::from_millis(*tick_ms)))
        }
        SourceConfig::File { path, metric, pipeline, pace, speed, from } => {
            let metric = Metric::from_name(metric).context("source.metric")?;
            let pacing = match pace {
                Pace::Fast => Pacing::Fast,
                Pace::Realtime => Pacing::Realtime(*speed),
            };
            let from = match from {
                Some(f) => Some(
                    selfheal_sidecar::provenance::parse_time(f, selfheal_sidecar::now_ms())
                        .map_err(anyhow::Error::msg)
                        .context("source.from")?,
                ),
                None => None,
            };
            // Glue Job State Change events name the job: file them under its pipeline.
            let jobs: Vec<(String, String)> = match &cfg.actuator {
                ActuatorConfig::Glue { pipelines } => {
                    pipelines.iter().map(|p| (p.job_name.clone(), p.name.clone())).collect()
                }
                _ => Vec::new(),
            };
            Box::new(FileSource::open(path, metric, pipeline, pacing, from, &jobs)?)
        }
        SourceConfig::Cloudwatch(c) => {
            let (source, published) = cloudwatch_source(&cfg, c).await?;
            // The discovered sets are known here: each pipeline's gaps are
            // named now rather than after its first windows.
            for (pipeline, set) in &published {
                // A detector fitted on another metric set would read the
                // missing ones at a baseline they never had: refuse. A job
                // with nothing listed yet (new, or idle for two weeks) is no
                // evidence of another set: wait for its metrics instead.
                let inputs = selfheal_detect::features::TelemetryFeatures::inputs();
                if set.iter().any(|m| inputs.contains(m)) {
                    wiring::check_metric_set(&detector_model, set, pipeline).map_err(|e| {
                        anyhow::anyhow!("pipeline {pipeline}: what ListMetrics found against model.detector: {e}")
                    })?;
                } else {
                    tracing::warn!(pipeline = %pipeline,
                        "ListMetrics found none of the detector's metrics for this pipeline yet: the metric set is not checked");
                }
                controller.expect_published(pipeline, set);
            }
            source
        }
        SourceConfig::Http { window_secs, .. } => {
            let (tx, src) = HttpSource::channel(1024);
            let ing = Ingest::new(*window_secs as i64 * 1000, tx);
            // Glue Job State Change events name the job: file them under its pipeline.
            if let ActuatorConfig::Glue { pipelines } = &cfg.actuator {
                ing.map_jobs(pipelines.iter().map(|p| (p.job_name.clone(), p.name.clone())));
            }
            ingest = Some(Arc::new(ing));
            Box::new(src)
        }
    };
    let actuator: Arc<dyn Actuator> = match &cfg.actuator {
        ActuatorConfig::Simulator => {
            Arc::new(SimActuator(fleet.clone().context("actuator.kind = \"simulator\" needs the simulator source")?))
        }
        ActuatorConfig::DryRun => Arc::new(DryRun),
        ActuatorConfig::Command { commands } => Arc::new(CommandActuator::new(commands.clone())),
        ActuatorConfig::Glue { pipelines } => glue_actuator(&cfg, pipelines).await?,
    };
    let replica = fleet_replica(&cfg, &model, describe.clone()).await?;
    let path = checkpoint_path.clone();
    let base = model.clone();
    let checkpoint: Checkpoint = Arc::new(move |table| {
        checkpoint_of(&base, &grown_from, describe.as_ref(), table).save(&path).map_err(|e| e.to_string())
    });
    let listener = tokio::net::TcpListener::bind(cfg.daemon.listen)
        .await
        .with_context(|| format!("cannot listen on {} (daemon.listen / --listen)", cfg.daemon.listen))?;
    let control = tokio::net::TcpListener::bind(cfg.daemon.control_listen).await.with_context(|| {
        format!("cannot listen on {} (daemon.control_listen / --control-listen)", cfg.daemon.control_listen)
    })?;
    eprintln!(
        "selfheal sidecar: http://{} (metrics, healthz, readyz); control http://{} (approvals, pause, resume, ingest{}); \
         log {}; stop with Ctrl-C",
        listener.local_addr()?,
        control.local_addr()?,
        if control_auth.control.is_some() { "; bearer token" } else { "; no token" },
        cfg.daemon.log_path().display()
    );
    let max_body_bytes = usize::try_from(cfg.daemon.max_body_bytes).unwrap_or(usize::MAX);
    let listeners = Listeners { metrics: listener, control, auth: control_auth, max_body_bytes };
    let d = Daemon { cfg, controller, source, actuator, ingest, checkpoint, fleet: replica };
    let summary = daemon::run(d, listeners, shutdown_signal()).await?;
    eprintln!(
        "selfheal sidecar stopped: {} windows, {} actions succeeded, {} failed, {} Q updates",
        summary.windows, summary.succeeded, summary.failed, summary.q_updates
    );
    Ok(())
}

/// What each CloudWatch pipeline was discovered publishing at start (empty
/// when `[source] metrics` names the metrics, or discovery failed).
type Published = Vec<(String, Vec<Metric>)>;

#[cfg(feature = "aws")]
async fn cloudwatch_source(
    cfg: &SidecarConfig,
    c: &selfheal_sidecar::config::CloudWatchConfig,
) -> Result<(Box<dyn TelemetrySource>, Published)> {
    use selfheal_aws::evidence::{CatalogTables, Evidence, EvidenceSources};
    let sdk = selfheal_aws::sdk_config(&cfg.aws).await;
    let client = selfheal_aws::cloudwatch::Client::new(&sdk);
    let now = selfheal_sidecar::now_ms() / 1000;
    // Glue evidence: each watched job's runs; catalog drift where the glue
    // actuator's pipeline of the same name names its tables.
    let glue_pipelines: &[selfheal_sidecar::config::GluePipeline] = match &cfg.actuator {
        ActuatorConfig::Glue { pipelines } => pipelines,
        _ => &[],
    };
    let sources = c
        .pipelines
        .iter()
        .map(|p| {
            let g = glue_pipelines.iter().find(|g| g.name == p.name);
            let tables = g.and_then(|g| {
                Some(CatalogTables {
                    database: g.database.clone()?,
                    table: g.table.clone()?,
                    source_table: g.source_table.clone()?,
                })
            });
            EvidenceSources {
                pipeline: p.name.clone(),
                job_name: (!p.job_name.is_empty()).then(|| p.job_name.clone()),
                tables,
            }
        })
        .collect();
    let evidence = Evidence::new(selfheal_aws::glue::Client::new(&sdk), sources);
    let mut src =
        selfheal_aws::cloudwatch::CloudWatchSource::new(client, c.clone(), now, cfg.model.seed).with_evidence(evidence);
    let mut published = Vec::new();
    match src.discover(now).await {
        Ok(()) => {
            for p in &c.pipelines {
                match src.published(&p.name) {
                    Some(set) => {
                        tracing::info!(pipeline = %p.name, job = %p.job_name,
                            metrics = ?set.iter().map(|m| m.name()).collect::<Vec<_>>(),
                            "the pipeline publishes these metrics (ListMetrics) and evidence (Glue); only they are read");
                        published.push((p.name.clone(), set));
                    }
                    None => {
                        tracing::info!(pipeline = %p.name, "metrics read as [source] metrics names them (not discovered)")
                    }
                }
            }
        }
        Err(f) => tracing::warn!(error = %f.message, kind = f.kind.name(),
            "ListMetrics failed at start: the first poll discovers again"),
    }
    Ok((Box::new(src), published))
}

#[cfg(feature = "aws")]
async fn glue_actuator(
    cfg: &SidecarConfig,
    pipelines: &[selfheal_sidecar::config::GluePipeline],
) -> Result<Arc<dyn Actuator>> {
    let sdk = selfheal_aws::sdk_config(&cfg.aws).await;
    let client = selfheal_aws::glue::Client::new(&sdk);
    Ok(Arc::new(selfheal_aws::glue::GlueActuator::new(client, pipelines.to_vec(), cfg.model.seed)))
}

/// The fleet replica's stores from `[fleet]` (DynamoDB and S3 clients from `[aws]`).
#[cfg(feature = "aws")]
async fn fleet_replica(
    cfg: &SidecarConfig,
    model: &ModelFile,
    describe: Arc<dyn StateEncoder + Send + Sync>,
) -> Result<Option<selfheal_sidecar::fleet::Fleet>> {
    use selfheal_sidecar::fleet::lib::{aws_sdk_dynamodb as ddb, aws_sdk_s3 as s3};
    let Some(f) = &cfg.fleet else { return Ok(None) };
    let sdk = selfheal_aws::sdk_config(&cfg.aws).await;
    let s3 = s3::config::Builder::from(&sdk)
        // A local or VPC endpoint serves path-style addresses; AWS serves both.
        .force_path_style(cfg.aws.endpoint_url.is_some())
        .request_checksum_calculation(s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    let fleet = selfheal_sidecar::fleet::Fleet::connect(
        f,
        ddb::Client::new(&sdk),
        s3::Client::from_conf(s3),
        model.clone(),
        describe,
    )
    .await?;
    Ok(Some(fleet))
}

#[cfg(not(feature = "aws"))]
async fn fleet_replica(
    cfg: &SidecarConfig,
    _model: &ModelFile,
    _describe: Arc<dyn StateEncoder + Send + Sync>,
) -> Result<Option<selfheal_sidecar::fleet::Fleet>> {
    if cfg.fleet.is_some() {
        bail!("[fleet] needs the `aws` feature; rebuild with default features");
    }
    Ok(None)
}

#[cfg(not(feature = "aws"))]
async fn cloudwatch_source(
    _cfg: &SidecarConfig,
    _c: &selfheal_sidecar::config::CloudWatchConfig,
) -> Result<(Box<dyn TelemetrySource>, Published)> {
    bail!("source.kind = \"cloudwatch\" needs the `aws` feature; rebuild with default features")
}

#[cfg(not(feature = "aws"))]
async fn glue_actuator(
    _cfg: &SidecarConfig,
    _pipelines: &[selfheal_sidecar::config::GluePipeline],
) -> Result<Arc<dyn Actuator>> {
    bail!("actuator.kind = \"glue\" needs the `aws` feature; rebuild with default features")
}

/// Undo a schema remap: restore the previous version of a pipeline's Glue
/// table (Glue keeps every version; `GetTableVersions`, then `UpdateTable`).
#[derive(ClapArgs, Debug)]
pub struct RollbackArgs {
    /// The sidecar configuration naming the pipeline's table (`[[actuator.pipelines]]`).
    #[arg(long)]
    config: PathBuf,
    /// Pipeline whose table to restore.
    #[arg(long)]
    pipeline: String,
}

#[cfg(feature = "aws")]
pub fn rollback(a: RollbackArgs) -> Result<()> {
    let cfg = SidecarConfig::load(&a.config)?;
    let ActuatorConfig::Glue { pipelines } = &cfg.actuator else {
        bail!("{}: actuator.kind is not \"glue\"; rollback restores Glue tables", a.config.display());
    };
    let p = pipelines
        .iter()
        .find(|p| p.name == a.pipeline)
        .with_context(|| format!("no [[actuator.pipelines]] entry named {:?}", a.pipeline))?;
    let (Some(db), Some(table)) = (&p.database, &p.table) else {
        bail!("pipeline {:?} has no database/table configured", a.pipeline);
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let msg = rt.block_on(async {
        let sdk = selfheal_aws::sdk_config(&cfg.aws).await;
        selfheal_aws::glue::rollback(&selfheal_aws::glue::Client::new(&sdk), db, table).await
    })?;
    println!("{msg}");
    Ok(())
}

#[cfg(not(feature = "aws"))]
pub fn rollback(_a: RollbackArgs) -> Result<()> {
    bail!("rollback needs the `aws` feature; rebuild with default features")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::warn!("SIGINT: shutting down"),
        _ = term.recv() => tracing::warn!("SIGTERM: shutting down"),
    }
}

/// Print the complete, commented example configuration.
#[derive(ClapArgs, Debug)]
pub struct ConfigArgs {
    /// Print the example configuration (every key, documented, with its default).
    #[arg(long)]
    example: bool,
    /// List the metric names sources accept.
    #[arg(long)]
    metrics: bool,
}

pub fn config(a: ConfigArgs) -> Result<()> {
    if a.metrics {
        for m in Metric::ALL {
            println!("{}\t{}", m.name(), m.stage());
        }
        return Ok(());
    }
    if !a.example {
        bail!("nothing to do: pass --example (the commented example config) or --metrics (metric names)");
    }
    print!("{EXAMPLE}");
    Ok(())
}

/// Check a configuration without touching the network.
#[derive(ClapArgs, Debug)]
pub struct ValidateArgs {
    /// The file to check.
    #[arg(long)]
    config: PathBuf,
}

pub fn validate(a: ValidateArgs) -> Result<()> {
    let cfg = SidecarConfig::load(&a.config)?;
    for (key, path) in [
        ("model.policy", &cfg.model.policy),
        ("model.detector", &cfg.model.detector),
        ("model.rules", &cfg.model.rules),
        ("model.scenario", &cfg.model.scenario),
    ] {
        if let Some(p) = path {
            if !p.exists() {
                bail!("{}: {key}: {} does not exist", a.config.display(), p.display());
            }
        }
    }
    if let SourceConfig::File { path, .. } = &cfg.source {
        if !path.exists() {
            bail!("{}: source.path: {} does not exist", a.config.display(), path.display());
        }
    }
    // The models against each other and against the actuator, as `run` loads them.
    let name = a.config.display().to_string();
    let model = defaults::policy(cfg.model.policy.as_deref()).with_context(|| format!("{name}: model.policy"))?;
    let scenario =
        defaults::scenario(cfg.model.scenario.as_deref()).with_context(|| format!("{name}: model.scenario"))?;
    let detector =
        defaults::detector(cfg.model.detector.as_deref()).with_context(|| format!("{name}: model.detector"))?;
    let enc = wiring::sidecar_encoder(&model, &scenario, &detector, &cfg.actuator, &name)?;
    check_declared_metrics(&cfg, &detector, &name)?;
    // The control token as `run` would find it here: the file must read; a
    // non-loopback control listener needs one (from the file, or the
    // environment variable in this environment, which should be the daemon's).
    let token = auth::resolve(&cfg.daemon, |v| std::env::var(v).ok()).with_context(|| name.clone())?;
    if let Some((_, _, Some(w))) = &token {
        eprintln!("warning: {name}: {w}");
    }
    auth::check_exposure(&cfg.daemon, token.as_ref().map(|t| &t.0)).with_context(|| name.clone())?;
    let control = match &token {
        Some((t, from, _)) => format!("token {} from {from}", t.id()),
        None => "no token: loopback only".into(),
    };
    println!(
        "{}: ok (mode {}, source {}, actuator {}, worker levels {:?}; control on {}, {control})",
        a.config.display(),
        cfg.guard.mode,
        source_kind(&cfg.source),
        actuator_kind(&cfg.actuator),
        enc.worker_levels,
        cfg.daemon.control_listen,
    );
    Ok(())
}

/// The detector against each configured pipeline's declared metric set
/// ([`wiring::check_metric_set`]): today the CloudWatch source's
/// `source.metrics` list, when set. An undeclared set is not checked here
/// (discovery with ListMetrics checks it once it knows the set).
pub fn check_declared_metrics(cfg: &SidecarConfig, detector: &DetectorModel, config: &str) -> Result<()> {
    let SourceConfig::Cloudwatch(c) = &cfg.source else { return Ok(()) };
    let Some(names) = &c.metrics else { return Ok(()) };
    let published: Vec<Metric> = names.iter().filter_map(|n| Metric::from_name(n)).collect();
    for p in &c.pipelines {
        wiring::check_metric_set(detector, &published, &p.name)
            .map_err(|e| anyhow::anyhow!("{config}: source.metrics against model.detector: {e}"))?;
    }
    Ok(())
}

fn source_kind(s: &SourceConfig) -> &'static str {
    match s {
        SourceConfig::Simulator { .. } => "simulator",
        SourceConfig::File { .. } => "file",
        SourceConfig::Http { .. } => "http",
        SourceConfig::Cloudwatch(_) => "cloudwatch",
    }
}

fn actuator_kind(s: &ActuatorConfig) -> &'static str {
    match s {
        ActuatorConfig::Simulator => "simulator",
        ActuatorConfig::DryRun => "dry-run",
        ActuatorConfig::Command { .. } => "command",
        ActuatorConfig::Glue { .. } => "glue",
    }
}

/// Approve, reject, pause or resume on a running daemon.
#[derive(ClapArgs, Debug)]
pub struct ClientArgs {
    /// Decision id (from the daemon's log, `selfheal log` or GET /approvals); not used by pause/resume.
    id: Option<String>,
    /// The daemon's control address (its daemon.control_listen).
    #[arg(long, default_value = "127.0.0.1:9478")]
    addr: String,
    /// File holding the control token (the daemon's daemon.control_token_file);
    /// without it, the environment variable --token-env names, if set.
    #[arg(long)]
    token_file: Option<PathBuf>,
    /// Environment variable holding the control token.
    #[arg(long, default_value = DEFAULT_CONTROL_TOKEN_ENV)]
    token_env: String,
    /// Reason (pause only).
    #[arg(long)]
    reason: Option<String>,
}

/// What a client command asks the daemon.
pub enum Ask {
    Approve,
    Reject,
    Pause,
    Resume,
}

pub fn client(ask: Ask, a: ClientArgs) -> Result<()> {
    let (path, body) = match ask {
        Ask::Approve | Ask::Reject => {
            let id = a.id.as_deref().context("which decision? pass its id, e.g. `selfheal approve 18c2f-42`")?;
            let decision = if matches!(ask, Ask::Approve) { "approve" } else { "reject" };
            (format!("/approvals/{id}"), serde_json::json!({ "decision": decision, "by": "cli" }))
        }
        Ask::Pause => {
            ("/pause".into(), serde_json::json!({ "reason": a.reason.unwrap_or_else(|| "paused from the CLI".into()) }))
        }
        Ask::Resume => ("/resume".into(), serde_json::json!({})),
    };
    let token = match &a.token_file {
        Some(p) => Some(auth::read_token_file(p).context("--token-file")?.0),
        None => std::env::var(&a.token_env).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty()),
    };
    let url = format!("http://{}{path}", a.addr);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, text) = rt.block_on(async {
        let mut req = reqwest::Client::new().post(&url).json(&body).timeout(Duration::from_secs(10));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| {
            format!("cannot reach the daemon at {url}; is `selfheal run`'s control plane listening there (--addr)?")
        })?;
        let status = resp.status();
        Ok::<_, anyhow::Error>((status, resp.text().await.unwrap_or_default()))
    })?;
    match status.as_u16() {
        401 if token.is_none() => {
            bail!("{status}: the daemon wants its control token: pass --token-file, or set {}", a.token_env)
        }
        403 => bail!("{status}: the daemon refused this token (is it the daemon's control token?)"),
        404 if text.contains("metrics listener") => {
            bail!("{status}: {} is the daemon's metrics listener; pass its control address (--addr)", a.addr)
        }
        _ if !status.is_success() => bail!("{status}: {}", text.trim()),
        _ => {}
    }
    println!("{}", text.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_another_model_is_refused_unless_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SidecarConfig::default();
        cfg.daemon.state_dir = dir.path().to_path_buf();
        // No checkpoint: the configured (shipped) model.
        let (m, from, grown) = starting_model(&cfg, false).unwrap();
        assert!(from.contains("models/policy.json"));
        assert_eq!(grown, m.identity());
        // A checkpoint that grew from the same model is taken.
        let mut same = m.clone();
        same.meta.grown_from = Some(m.identity());
        same.save(&cfg.daemon.checkpoint_path()).unwrap();
        let (_, from, _) = starting_model(&cfg, false).unwrap();
        assert_eq!(from, cfg.daemon.checkpoint_path().display().to_string());
        // One that grew from another model is refused, naming both sides.
        let mut other = m.clone();
        other.meta.grown_from = Some("detector-v1/other/seed=9/episodes=10/states=1".into());
        other.save(&cfg.daemon.checkpoint_path()).unwrap();
        let err = format!("{:#}", starting_model(&cfg, false).unwrap_err());
        assert!(err.contains("detector-v1/other/seed=9") && err.contains(&m.identity()), "{err}");
        assert!(err.contains("--resume-from-checkpoint"), "{err}");
        let (_, _, grown) = starting_model(&cfg, true).unwrap();
        assert_eq!(grown, "detector-v1/other/seed=9/episodes=10/states=1", "resuming keeps the lineage");
    }

    #[test]
    fn a_sidecar_with_its_own_ladder_restarts_from_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SidecarConfig::from_toml_str(
            "[actuator]\nkind = \"glue\"\n[[actuator.pipelines]]\nname = \"orders\"\njob_name = \"orders-etl\"\n\
             worker_levels = [2, 4, 8, 16]\ndefault_workers = 4\n",
            "t.toml",
        )
        .unwrap();
        cfg.daemon.state_dir = dir.path().to_path_buf();
        let scenario = defaults::scenario(None).unwrap();
        let detector = defaults::detector(None).unwrap();
        let (model, _, grown) = starting_model(&cfg, false).unwrap();
        let enc_cfg = wiring::sidecar_encoder(&model, &scenario, &detector, &cfg.actuator, "t").unwrap();
        assert_eq!(enc_cfg.worker_levels, vec![2, 4, 8, 16]);
        let (_, describe) = wiring::encoder(&model.encoder.id, enc_cfg, &detector).unwrap();
        let (enc, _) = wiring::learned(&model, &scenario, &detector).unwrap();
        let table = model.table(enc.as_ref()).unwrap();
        checkpoint_of(&model, &grown, describe.as_ref(), &table).save(&cfg.daemon.checkpoint_path()).unwrap();
        // The next start takes the checkpoint and still fits the deployment.
        let (ck, from, _) = starting_model(&cfg, false).unwrap();
        assert!(from.ends_with("policy.json") && from.contains(&dir.path().display().to_string()), "{from}");
        let again = wiring::sidecar_encoder(&ck, &scenario, &detector, &cfg.actuator, "t");
        assert!(again.is_ok(), "{:#}", again.unwrap_err());
    }
}
