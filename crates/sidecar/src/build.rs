//! Composition: the daemon built from its configuration, vector style.
//!
//! Each config section builds its own component ([`SourceConfig::build`],
//! [`ActuatorConfig::build`]); [`assemble`] builds the whole daemon from a
//! [`SidecarConfig`] and the loaded [`Inputs`]; [`validate`] runs every check
//! `assemble` would, without the network. The binary only loads files (or its
//! embedded defaults), calls one of these and prints: a reader finds how the
//! daemon is put together here, next to the parts, and a test can build one
//! without the CLI.
//!
//! The AWS components (the CloudWatch source, the Glue actuator) come in
//! through [`AwsComponents`], which `selfheal-aws` implements: that crate
//! depends on this one (for the [`TelemetrySource`] and [`Actuator`] seams and
//! the config types), so this one cannot depend on it; an optional `aws`
//! feature here would be a dependency cycle. A build without AWS passes `None`
//! and gets [`BuildError::Unsupported`] for those kinds.

pub mod models;

pub use models::{
    check_declared_metrics, check_metric_set, detector_ref, encoder, encoder_config, encoder_of, job_shape, learned,
    reward, sidecar_encoder, Encoder,
};

use crate::actuate::{Actuator, CommandActuator, DryRun, SimActuator};
use crate::auth::{self, AuthError, Token};
use crate::config::{ActuatorConfig, CloudWatchConfig, GluePipeline, LowConfidence, Pace, SidecarConfig, SourceConfig};
use crate::daemon::{Checkpoint, Daemon, Listeners};
use crate::decide::{DecideConfig, DecisionCore, EncoderFactory, Parts};
use crate::http::{ControlAuth, Ingest};
use crate::source::{FileSource, HttpSource, Pacing, SimFleet, SimSource, SourceError, TelemetrySource};
use crate::BoxFuture;
use selfheal_agent::store::{GlueBuiltinsFile, ModelFile, RulesFile, StoreError};
use selfheal_agent::{GlueSettingsError, QLearner, QTable, RulesPolicy, UnknownEncoder};
use selfheal_core::{Detector, Metric, StateEncoder};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use selfheal_sim::Scenario;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the daemon could not be built. Each message names the setting or file
/// at fault and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The models do not fit each other or the deployment.
    #[error("{0}")]
    Mismatch(String),
    /// A model file does not load or does not fit its encoder.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The checkpoint in the state directory cannot be used.
    #[error("{0}")]
    Checkpoint(String),
    /// An encoder id this build does not know.
    #[error(transparent)]
    Encoder(#[from] UnknownEncoder),
    /// The control plane's tokens.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The control plane's tokens, as a named configuration file sets them.
    #[error("{config}: {error}")]
    AuthIn {
        /// The configuration file.
        config: String,
        /// What is wrong.
        error: AuthError,
    },
    /// A value the configuration names (the environment variable, the time, the metric).
    #[error("{key}: {message}")]
    Setting {
        /// The key, as in the file (`source.from`).
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The telemetry source could not open.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The Glue built-ins shadow's settings.
    #[error("the Glue built-ins shadow: {0}")]
    Glue(#[from] GlueSettingsError),
    /// The fleet replica could not start (`[fleet]`).
    #[error(transparent)]
    Fleet(#[from] crate::fleet::FleetError),
    /// A component this build was compiled without.
    #[error("{0} needs the `aws` feature; rebuild with default features")]
    Unsupported(&'static str),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({key}): {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The settings that set it.
        key: &'static str,
        /// Why.
        error: std::io::Error,
    },
    /// An AWS component could not start.
    #[error("{0}")]
    Aws(String),
}

/// What each CloudWatch pipeline was discovered publishing at start (empty
/// when `[source] metrics` names the metrics, or discovery failed).
pub type Published = Vec<(String, Vec<Metric>)>;

/// A source and what it discovered each pipeline publishing ([`AwsComponents::cloudwatch`]).
pub type Discovered = (Box<dyn TelemetrySource>, Published);

/// The components that need the AWS SDK; `selfheal-aws` implements this
/// (see the module doc for why it is a trait and not a feature).
pub trait AwsComponents: Sync {
    /// The CloudWatch source of `source`, with the Glue evidence of the
    /// pipelines `cfg.actuator` names, and what discovery (ListMetrics) found
    /// each pipeline publishing.
    ///
    /// # Errors
    /// [`BuildError::Aws`] when the source cannot start.
    fn cloudwatch<'a>(
        &'a self,
        cfg: &'a SidecarConfig,
        source: &'a CloudWatchConfig,
    ) -> BoxFuture<'a, Result<Discovered, BuildError>>;

    /// The Glue actuator of `pipelines`.
    ///
    /// # Errors
    /// [`BuildError::Aws`] when the client cannot be made.
    fn glue<'a>(
        &'a self,
        cfg: &'a SidecarConfig,
        pipelines: &'a [GluePipeline],
    ) -> BoxFuture<'a, Result<Arc<dyn Actuator>, BuildError>>;

    /// The DynamoDB and S3 clients of a fleet replica (`[fleet]`), from `[aws]`.
    fn fleet_clients<'a>(&'a self, cfg: &'a SidecarConfig) -> BoxFuture<'a, FleetClients>;
}

/// The clients a fleet replica's lease table and policy store use.
pub type FleetClients = (crate::fleet::lib::aws_sdk_dynamodb::Client, crate::fleet::lib::aws_sdk_s3::Client);

/// What a component is built with besides its own section.
pub struct Context<'a> {
    /// The whole configuration (a source reads the actuator's job names, the
    /// AWS settings and the seed).
    pub cfg: &'a SidecarConfig,
    /// The scenario the simulator source runs.
    pub scenario: &'a Scenario,
    /// The AWS components, when this build has them.
    pub aws: Option<&'a dyn AwsComponents>,
}

/// A built telemetry source and what the daemon wires around it.
pub struct BuiltSource {
    /// The source.
    pub source: Box<dyn TelemetrySource>,
    /// The simulated fleet (simulator source), which the simulator actuator acts on.
    pub fleet: Option<Arc<Mutex<SimFleet>>>,
    /// The ingest endpoint (HTTP source), served on the control listener.
    pub ingest: Option<Arc<Ingest>>,
    /// What each CloudWatch pipeline was discovered publishing.
    pub published: Published,
}

impl SourceConfig {
    /// The source this section describes.
    ///
    /// # Errors
    /// A file that does not read or parse, an unparsable `source.from`, an
    /// AWS source without [`Context::aws`] or that cannot start.
    pub async fn build(&self, cx: &Context<'_>) -> Result<BuiltSource, BuildError> {
        let cfg = cx.cfg;
        let built =
            |source: Box<dyn TelemetrySource>| BuiltSource { source, fleet: None, ingest: None, published: Vec::new() };
        // Glue Job State Change events name the job: file them under its pipeline.
        let jobs: Vec<(String, String)> = match &cfg.actuator {
            ActuatorConfig::Glue { pipelines } => {
                pipelines.iter().map(|p| (p.job_name.clone(), p.name.clone())).collect()
            }
            _ => Vec::new(),
        };
        Ok(match self {
            SourceConfig::Simulator { pipelines, tick_ms, seed } => {
                let f = Arc::new(Mutex::new(SimFleet::new(cx.scenario, *pipelines, *seed, crate::now_ms())));
                let mut b = built(Box::new(SimSource::new(f.clone(), Duration::from_millis(*tick_ms))));
                b.fleet = Some(f);
                b
            }
            SourceConfig::File { path, metric, pipeline, pace, speed, from } => {
                let metric = Metric::from_name(metric).ok_or_else(|| BuildError::Setting {
                    key: "source.metric",
                    message: format!("unknown metric {metric:?}; `selfheal config --metrics` lists them"),
                })?;
                let pacing = match pace {
                    Pace::Fast => Pacing::Fast,
                    Pace::Realtime => Pacing::Realtime(*speed),
                };
                let from = match from {
                    Some(f) => Some(
                        crate::provenance::parse_time(f, crate::now_ms())
                            .map_err(|message| BuildError::Setting { key: "source.from", message })?,
                    ),
                    None => None,
                };
                built(Box::new(FileSource::open(path, metric, pipeline, pacing, from, &jobs)?))
            }
            SourceConfig::Cloudwatch(c) => {
                let aws = cx.aws.ok_or(BuildError::Unsupported("source.kind = \"cloudwatch\""))?;
                let (source, published) = aws.cloudwatch(cfg, c).await?;
                let mut b = built(source);
                b.published = published;
                b
            }
            SourceConfig::Http { window_secs, .. } => {
                let (tx, src) = HttpSource::channel(1024);
                let ing = Ingest::new(*window_secs as i64 * 1000, tx);
                ing.map_jobs(jobs);
                let mut b = built(Box::new(src));
                b.ingest = Some(Arc::new(ing));
                b
            }
        })
    }
}

impl ActuatorConfig {
    /// The actuator this section describes; `fleet` is the simulator
    /// source's fleet ([`BuiltSource::fleet`]), which the simulator actuator
    /// acts on.
    ///
    /// # Errors
    /// The simulator actuator without the simulator source; the Glue
    /// actuator without [`Context::aws`] or that cannot start.
    pub async fn build(
        &self,
        cx: &Context<'_>,
        fleet: Option<Arc<Mutex<SimFleet>>>,
    ) -> Result<Arc<dyn Actuator>, BuildError> {
        Ok(match self {
            ActuatorConfig::Simulator => Arc::new(SimActuator(fleet.ok_or(BuildError::Setting {
                key: "actuator.kind",
                message: "\"simulator\" needs the simulator source".into(),
            })?)),
            ActuatorConfig::DryRun => Arc::new(DryRun),
            ActuatorConfig::Command { commands } => Arc::new(CommandActuator::new(commands.clone())),
            ActuatorConfig::Glue { pipelines } => {
                let aws = cx.aws.ok_or(BuildError::Unsupported("actuator.kind = \"glue\""))?;
                aws.glue(cx.cfg, pipelines).await?
            }
        })
    }
}

/// The policy the daemon starts from, where it came from, and the identity
/// of the trained model it grew from (what the next checkpoint records).
#[derive(Clone, Debug)]
pub struct StartingModel {
    /// The model.
    pub model: ModelFile,
    /// Where it was read from (a path, or the shipped model's name).
    pub from: String,
    /// [`ModelFile::identity`] of the trained model it grew from.
    pub grown_from: String,
}

/// The model to start from: `configured` (read from `configured_from`), or
/// the checkpoint at `checkpoint` if it grew from that model (or `resume`
/// says so).
///
/// # Errors
/// A checkpoint that does not load; one that grew from another model,
/// unless `resume` (both identities and the way out are in the message).
pub fn starting_model(
    configured: ModelFile,
    configured_from: String,
    checkpoint: &Path,
    resume: bool,
) -> Result<StartingModel, BuildError> {
    let identity = configured.identity();
    if !checkpoint.exists() {
        return Ok(StartingModel { model: configured, from: configured_from, grown_from: identity });
    }
    let m = ModelFile::load(checkpoint).map_err(|e| {
        BuildError::Checkpoint(format!(
            "the checkpoint {} does not load; move it away to start from the configured model: {e}",
            checkpoint.display()
        ))
    })?;
    let grown = m.meta.grown_from.clone().unwrap_or_else(|| m.identity());
    if grown != identity && !resume {
        return Err(BuildError::Checkpoint(format!(
            "the checkpoint {} grew from the model {grown}, not from the configured model {identity} ({configured_from}); \
             its online updates belong to that model. Move the checkpoint away to start from the configured model, \
             or pass --resume-from-checkpoint to keep learning from it",
            checkpoint.display()
        )));
    }
    Ok(StartingModel { model: m, from: checkpoint.display().to_string(), grown_from: grown })
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
/// non-loopback control listener without a control token. `env` reads an
/// environment variable. Logs where the token came from (never the token)
/// and warns about a loose token file and an open loopback control plane.
///
/// # Errors
/// A token file that does not read, an exposed control plane without a
/// token, or a `source.token_env` that is not set.
pub fn control_auth(cfg: &SidecarConfig, env: impl Fn(&str) -> Option<String>) -> Result<ControlAuth, BuildError> {
    let resolved = auth::resolve(&cfg.daemon, &env)?;
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
            let v = env(var).ok_or_else(|| BuildError::Setting {
                key: "source.token_env",
                message: format!("names {var}, which is not set"),
            })?;
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

/// Everything the daemon loads from files (or the binary's embedded
/// defaults) before it is built.
pub struct Inputs {
    /// The scenario the policy was trained on (its worker ladder; the
    /// simulator source runs it).
    pub scenario: Scenario,
    /// The detector the policy was trained with.
    pub detector: DetectorModel,
    /// The policy to start from ([`starting_model`]).
    pub model: StartingModel,
    /// The rule thresholds, logged as the shadow choice.
    pub rules: RulesFile,
    /// Glue's built-in settings, logged as the second shadow.
    pub glue_builtins: GlueBuiltinsFile,
}

/// A daemon ready to run ([`crate::daemon::run`]) on its bound listeners.
pub struct Assembled {
    /// The daemon.
    pub daemon: Daemon,
    /// Its listeners, bound.
    pub listeners: Listeners,
}

/// The decision core's settings from the config's model and guard sections.
pub fn decide_config(cfg: &SidecarConfig) -> DecideConfig {
    let g = &cfg.guard;
    DecideConfig {
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
    }
}

/// Build the whole daemon: the control plane's tokens (`env` reads the
/// environment), the models checked against each other and the deployment,
/// the decision core, the source, the actuator, the checkpoint writer, and
/// both listeners bound.
///
/// # Errors
/// The first problem found, in that order; see [`BuildError`].
pub async fn assemble(
    cfg: SidecarConfig,
    inputs: Inputs,
    aws: Option<&dyn AwsComponents>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Assembled, BuildError> {
    let control_auth = control_auth(&cfg, env)?;
    let Inputs { scenario, detector: detector_model, model: start, rules: rules_file, glue_builtins } = inputs;
    let StartingModel { model, from, grown_from } = start;
    // Checks the policy against the scenario's shape, the detector and the
    // actuator's worker ladder; decides with the actuator's ladder.
    let enc_cfg = sidecar_encoder(&model, &scenario, &detector_model, &cfg.actuator, "the configuration")?;
    check_declared_metrics(&cfg, &detector_model, "the configuration")?;
    // Checked above: only the table is built here, with the model's own encoder.
    let (enc, _) = encoder(&model.encoder.id, model.encoder.config.clone(), &detector_model)?;
    let table = model.table(enc.as_ref())?;
    tracing::info!(model = %from, states = table.visited_states().count(), worker_levels = ?enc_cfg.worker_levels,
        "Q table loaded");
    let detector: Arc<dyn Detector + Send + Sync> = Arc::new(TelemetryDetector::new(detector_model.clone()));
    let kind: selfheal_agent::EncoderKind = model.encoder.id.parse()?;
    let encoder_factory: EncoderFactory = {
        let (c, d) = (enc_cfg.clone(), detector.clone());
        Arc::new(move || kind.build(c.clone(), d.clone()) as Box<dyn StateEncoder + Send>)
    };
    let (_, describe) = encoder(&model.encoder.id, enc_cfg.clone(), &detector_model)?;
    let reward = reward(&scenario);
    let rules = RulesPolicy::new(rules_file.thresholds, reward.slo);
    let mut learner = QLearner::from_table(table, model.params(&from)?, cfg.model.seed);
    learner.set_epsilon(cfg.model.epsilon);
    let glue = Some(models::glue_shadow(glue_builtins.settings, &scenario)?);
    let parts = Parts {
        encoder: encoder_factory,
        describe: describe.clone(),
        detector,
        learner,
        rules,
        glue,
        reward: Box::new(reward),
    };
    let run_id = format!("{:x}", crate::now_ms());
    let mut controller = DecisionCore::new(decide_config(&cfg), parts, run_id);

    let cx = Context { cfg: &cfg, scenario: &scenario, aws };
    let built = cfg.source.build(&cx).await?;
    // The discovered sets are known here: each pipeline's gaps are named now
    // rather than after its first windows.
    for (pipeline, set) in &built.published {
        // A detector fitted on another metric set would read the missing
        // ones at a baseline they never had: refuse. A job with nothing
        // listed yet (new, or idle for two weeks) is no evidence of another
        // set: wait for its metrics instead.
        let inputs = selfheal_detect::features::TelemetryFeatures::inputs();
        if set.iter().any(|m| inputs.contains(m)) {
            check_metric_set(&detector_model, set, pipeline).map_err(|e| {
                BuildError::Mismatch(format!("pipeline {pipeline}: what ListMetrics found against model.detector: {e}"))
            })?;
        } else {
            tracing::warn!(pipeline = %pipeline,
                "ListMetrics found none of the detector's metrics for this pipeline yet: the metric set is not checked");
        }
        controller.expect_published(pipeline, set);
    }
    let actuator = cfg.actuator.build(&cx, built.fleet.clone()).await?;
    let fleet = match &cfg.fleet {
        None => None,
        Some(f) => {
            let (dynamodb, s3) = aws.ok_or(BuildError::Unsupported("[fleet]"))?.fleet_clients(&cfg).await;
            Some(crate::fleet::Fleet::connect(f, dynamodb, s3, model.clone(), describe.clone()).await?)
        }
    };
    let path = cfg.daemon.checkpoint_path();
    let checkpoint: Checkpoint = Arc::new(move |table| {
        checkpoint_of(&model, &grown_from, describe.as_ref(), table).save(&path).map_err(|e| e.to_string())
    });
    let bind = |addr: SocketAddr, key: &'static str| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|error| BuildError::Listen { addr, key, error })
    };
    let metrics = bind(cfg.daemon.listen, "daemon.listen / --listen").await?;
    let control = bind(cfg.daemon.control_listen, "daemon.control_listen / --control-listen").await?;
    let max_body_bytes = usize::try_from(cfg.daemon.max_body_bytes).unwrap_or(usize::MAX);
    let listeners = Listeners { metrics, control, auth: control_auth, max_body_bytes };
    let BuiltSource { source, ingest, .. } = built;
    let daemon = Daemon { cfg, controller, source, actuator, ingest, checkpoint, fleet };
    Ok(Assembled { daemon, listeners })
}

/// The model paths a configuration names that do not exist, each with its
/// key (`model.policy`, ..., `source.path`), in that order.
pub fn missing_paths(cfg: &SidecarConfig) -> Vec<(&'static str, PathBuf)> {
    let m = &cfg.model;
    let mut named = vec![
        ("model.policy", m.policy.as_deref()),
        ("model.detector", m.detector.as_deref()),
        ("model.rules", m.rules.as_deref()),
        ("model.scenario", m.scenario.as_deref()),
        ("model.glue_builtins", m.glue_builtins.as_deref()),
    ];
    if let SourceConfig::File { path, .. } = &cfg.source {
        named.push(("source.path", Some(path.as_path())));
    }
    named.into_iter().filter_map(|(k, p)| p.filter(|p| !p.exists()).map(|p| (k, p.to_path_buf()))).collect()
}

/// What [`validate`] found: enough for a one-line summary.
#[derive(Clone, Debug)]
pub struct Validated {
    /// The worker ladder the sidecar would decide with.
    pub worker_levels: Vec<u32>,
    /// The control token's id and where it came from, or "no token: loopback only".
    pub control: String,
    /// A warning about the token file (loose permissions).
    pub warning: Option<String>,
}

/// The checks [`assemble`] makes before it touches the network, except the
/// checkpoint's lineage (the state directory may not exist where `validate`
/// runs) and the Glue built-ins settings (loaded by the caller): the models
/// against each other and the actuator, the declared metric set against the
/// detector, the control token as `run` would find it (`env` reads the
/// environment, which should be the daemon's) against where the control
/// plane listens. `config` names the file in messages.
///
/// # Errors
/// The first problem found, naming `config` and the key.
pub fn validate(
    cfg: &SidecarConfig,
    config: &str,
    model: &ModelFile,
    scenario: &Scenario,
    detector: &DetectorModel,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Validated, BuildError> {
    let enc = sidecar_encoder(model, scenario, detector, &cfg.actuator, config)?;
    check_declared_metrics(cfg, detector, config)?;
    let named = |error: AuthError| BuildError::AuthIn { config: config.to_string(), error };
    let token = auth::resolve(&cfg.daemon, &env).map_err(named)?;
    let warning = token.as_ref().and_then(|(_, _, w)| w.as_ref().map(|w| format!("{config}: {w}")));
    auth::check_exposure(&cfg.daemon, token.as_ref().map(|t| &t.0)).map_err(named)?;
    // The ingest token as `run` reads it: an unset `source.token_env` fails here, not at start.
    if let SourceConfig::Http { token_env: Some(var), .. } = &cfg.source {
        if env(var).is_none() {
            return Err(BuildError::Setting {
                key: "source.token_env",
                message: format!("names {var}, which is not set"),
            });
        }
    }
    let control = match &token {
        Some((t, from, _)) => format!("token {} from {from}", t.id()),
        None => "no token: loopback only".into(),
    };
    Ok(Validated { worker_levels: enc.worker_levels, control, warning })
}
