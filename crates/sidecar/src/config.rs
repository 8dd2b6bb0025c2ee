//! The sidecar's configuration file (`sidecar.toml`).
//!
//! Parsing is strict (`deny_unknown_fields` everywhere) because a misspelt
//! safety key that is silently ignored is worse than no key at all. Parsing
//! checks shape; [`SidecarConfig::validate`] checks meaning and names the key
//! of every problem it finds, without touching the network. [`EXAMPLE`] is the
//! complete, commented example `selfheal config --example` prints; a test
//! checks it parses and validates, so it cannot drift from the code.

use crate::notify::WebhookConfig;
use selfheal_agent::WatchdogConfig;
use selfheal_guard::breaker::BreakerConfig;
use selfheal_guard::budget::BudgetConfig;
use selfheal_guard::confidence::ConfidenceGate;
use selfheal_guard::retry::RetryPolicy;
use selfheal_guard::timeout::TimeoutConfig;
use selfheal_guard::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SidecarConfig {
    /// Process-level settings.
    pub daemon: DaemonConfig,
    /// The models the agent decides with.
    pub model: ModelConfig,
    /// Where telemetry comes from.
    pub source: SourceConfig,
    /// What applies actions.
    pub actuator: ActuatorConfig,
    /// Guardrails.
    pub guard: GuardConfig,
    /// Escalation webhook; escalations are only logged without it.
    pub notify: Option<WebhookConfig>,
    /// How to reach AWS (CloudWatch source, Glue actuator, fleet leases).
    pub aws: AwsConfig,
    /// Run as one replica of a fleet (leases, shared policy); unset = one process.
    pub fleet: Option<crate::fleet::config::FleetConfig>,
}

/// How to reach AWS: the standard credential chain and region, plus overrides.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsConfig {
    /// Region; unset = the standard chain (AWS_REGION, profile).
    pub region: Option<String>,
    /// Named profile; unset = the standard chain (AWS_PROFILE, default).
    pub profile: Option<String>,
    /// Endpoint override for every AWS call (a local AWS API server, a VPC
    /// endpoint); unset = `AWS_ENDPOINT_URL` if set, else AWS itself.
    pub endpoint_url: Option<String>,
}

/// CloudWatch source settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchConfig {
    /// Pipelines to watch.
    pub pipelines: Vec<WatchedPipeline>,
    /// Seconds per window: the CloudWatch period queried.
    #[serde(default = "default_period")]
    pub period_secs: u32,
    /// CloudWatch data arrives late: periods younger than this are not read yet.
    #[serde(default = "default_lag")]
    pub lag_secs: u64,
    /// Seconds between polls.
    #[serde(default = "default_poll")]
    pub poll_secs: u64,
    /// At start, read this far back.
    #[serde(default = "default_lookback")]
    pub lookback_secs: u64,
    /// Namespace of the pipeline.* metrics (Glue job metrics are read from `Glue`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Metrics to read (names as `selfheal config --metrics` lists); unset = all.
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
}

/// One pipeline watched in CloudWatch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchedPipeline {
    /// Pipeline name (the `Pipeline` dimension of the custom namespace).
    pub name: String,
    /// Glue job name (the `JobName` dimension of Glue job metrics).
    pub job_name: String,
}

/// Glue actuator settings: what each pipeline's actions act on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GluePipeline {
    /// Pipeline name, as the source names it.
    pub name: String,
    /// The Glue job that runs the pipeline's transform.
    pub job_name: String,
    /// Worker type of scaled runs.
    #[serde(default = "default_worker_type")]
    pub worker_type: String,
    /// Worker counts scale_up/scale_down step through, ascending.
    #[serde(default = "default_worker_levels")]
    pub worker_levels: Vec<u32>,
    /// Workers when no run says otherwise.
    #[serde(default = "default_workers")]
    pub default_workers: u32,
    /// Glue database of the tables below.
    #[serde(default)]
    pub database: Option<String>,
    /// Table the job reads, whose schema schema_remap updates.
    #[serde(default)]
    pub table: Option<String>,
    /// Table that reflects the data as it arrives now (e.g. crawled), the target of a remap.
    #[serde(default)]
    pub source_table: Option<String>,
    /// Where quarantined records go (passed as `--dead-letter-path`).
    #[serde(default)]
    pub dead_letter_path: Option<String>,
    /// Rate limit a backpressured run is started with (`--max-records-per-second`).
    #[serde(default = "default_backpressure_rate")]
    pub backpressure_records_per_second: u64,
}

/// Process-level settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// HTTP address of /metrics, /healthz and /readyz: no credential, may be
    /// exposed (a Prometheus scrape, a Kubernetes probe).
    pub listen: SocketAddr,
    /// HTTP address of the control plane (/approvals, /pause, /resume,
    /// /ingest). Loopback by default; any other address needs a control token
    /// (see [`crate::auth`]).
    pub control_listen: SocketAddr,
    /// File holding the control plane's bearer token (wins over `control_token_env`).
    pub control_token_file: Option<PathBuf>,
    /// Environment variable holding the control plane's bearer token.
    pub control_token_env: String,
    /// Largest request body the control plane reads (413 beyond): bounds the
    /// memory one request can take.
    pub max_body_bytes: u64,
    /// Directory for the provenance log, checkpoints and the pause file.
    pub state_dir: PathBuf,
    /// Save the Q table after this many online updates (and at shutdown).
    pub checkpoint_every: u64,
    /// Seconds allowed for a graceful shutdown before in-flight actions are cancelled.
    pub shutdown_grace_secs: u64,
    /// Also write healthy no-op decisions to the provenance log.
    pub log_healthy: bool,

    // Provenance log rotation (see `provenance`'s module doc).
    /// Rotate `provenance.jsonl` once it holds this many bytes.
    pub log_max_bytes: u64,
    /// Rotate `provenance.jsonl` once its first record is this old, s.
    pub log_max_age_secs: u64,
    /// Rotated segments kept (`provenance.000001.jsonl`, ...); older ones are deleted.
    pub log_keep: usize,

    // Bounded memory (see `window::Bounds` and `decide::DecisionCore::evict_idle`).
    /// Most pipelines held at once (default 1,000): a sample of a new one
    /// beyond it is refused (`/ingest` answers 429). A sidecar watches tens to
    /// hundreds of pipelines; the cap bounds what a client pushing made-up
    /// names can take (about 10 kB each, benches/soak.sh), while eviction makes room again.
    pub max_pipelines: usize,
    /// A pipeline silent this long, s, on the data clock (the newest sample
    /// time seen, so a replay evicts as the live feed would), is forgotten:
    /// its open window and decision state are dropped, except while it has an
    /// open proposal, an action in flight or an action's reward pending.
    /// Default 90,000 s (25 h): a daily batch job keeps its state between runs.
    pub pipeline_idle_secs: u64,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9477)),
            control_listen: SocketAddr::from(([127, 0, 0, 1], 9478)),
            control_token_file: None,
            control_token_env: DEFAULT_CONTROL_TOKEN_ENV.into(),
            max_body_bytes: 4 * 1024 * 1024,
            state_dir: PathBuf::from("selfheal-state"),
            checkpoint_every: 500,
            shutdown_grace_secs: 10,
            log_healthy: false,

            log_max_bytes: 64 * 1024 * 1024,
            log_max_age_secs: 86_400,
            log_keep: 10,

            max_pipelines: 1000,
            pipeline_idle_secs: 90_000,
        }
    }
}

/// The environment variable of the control token, in the daemon and the CLI.
pub const DEFAULT_CONTROL_TOKEN_ENV: &str = "SELFHEAL_CONTROL_TOKEN";

impl DaemonConfig {
    /// The provenance log.
    pub fn log_path(&self) -> PathBuf {
        self.state_dir.join("provenance.jsonl")
    }
    /// How the provenance log is rotated.
    pub fn log_rotation(&self) -> crate::provenance::Rotation {
        crate::provenance::Rotation {
            max_bytes: self.log_max_bytes,
            max_age_ms: i64::try_from(self.log_max_age_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            keep: self.log_keep,
        }
    }
    /// The pipeline cap and idle time of the ingest assembler.
    pub fn bounds(&self) -> crate::window::Bounds {
        crate::window::Bounds {
            max_pipelines: self.max_pipelines,
            idle_ms: i64::try_from(self.pipeline_idle_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }
    /// The online Q table checkpoint.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.state_dir.join("policy.json")
    }
    /// While this file exists, nothing is acted on.
    pub fn pause_path(&self) -> PathBuf {
        self.state_dir.join("PAUSE")
    }
}

/// The models the agent decides with. Empty paths mean the shipped models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Q table (`selfheal-qtable` file); a checkpoint in `state_dir` wins over it.
    pub policy: Option<PathBuf>,
    /// Detector (`selfheal-detector` file) the policy was trained with.
    pub detector: Option<PathBuf>,
    /// Calibrated rules, logged beside each decision as the shadow choice.
    pub rules: Option<PathBuf>,
    /// AWS Glue built-in settings (`selfheal-glue-builtins` file), logged
    /// beside each decision as the second shadow (`glue_shadow`).
    pub glue_builtins: Option<PathBuf>,
    /// Scenario whose pipeline shape (worker levels) the policy was trained for.
    pub scenario: Option<PathBuf>,
    /// Exploration rate online; 0 = always the greedy action.
    pub epsilon: f64,
    /// Windows observed after an action before its reward updates Q.
    pub reward_windows: u32,
    /// Learn online from what follows each decision.
    pub learn: bool,
    /// Seed of exploration and of retry jitter.
    pub seed: u64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            policy: None,
            detector: None,
            rules: None,
            glue_builtins: None,
            scenario: None,
            epsilon: 0.0,
            reward_windows: 1,
            learn: true,
            seed: 0,
        }
    }
}

/// Where telemetry comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum SourceConfig {
    /// The built-in simulator, with faults injected by its scenario.
    Simulator {
        /// Pipelines to simulate (`p1`, `p2`, ...).
        #[serde(default = "default_pipelines")]
        pipelines: u32,
        /// Milliseconds of wall time per simulated step.
        #[serde(default = "default_tick_ms")]
        tick_ms: u64,
        /// Seed of the first pipeline's episode; pipeline i uses seed + i.
        #[serde(default)]
        seed: u64,
    },
    /// Replay of a recorded file, to reprocess a past incident.
    File {
        /// NAB-style CSV (`timestamp,value`) or JSON lines of samples.
        path: PathBuf,
        /// Metric the CSV's value column carries.
        #[serde(default = "default_csv_metric")]
        metric: String,
        /// Pipeline name for a CSV (JSON lines carry their own).
        #[serde(default = "default_pipeline")]
        pipeline: String,
        /// `realtime` keeps the recorded spacing (divided by `speed`); `fast` does not wait.
        #[serde(default)]
        pace: Pace,
        /// Speed-up of a realtime replay.
        #[serde(default = "one")]
        speed: f64,
        /// Skip samples before this time (Unix ms or RFC 3339).
        #[serde(default)]
        from: Option<String>,
    },
    /// CloudWatch `GetMetricData` polls (needs the `aws` feature).
    Cloudwatch(CloudWatchConfig),
    /// `POST /ingest` with JSON lines.
    Http {
        /// Environment variable holding the bearer token; unset means no token required.
        #[serde(default)]
        token_env: Option<String>,
        /// Seconds per telemetry window.
        #[serde(default = "default_window_secs")]
        window_secs: u64,
    },
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig::Simulator { pipelines: default_pipelines(), tick_ms: default_tick_ms(), seed: 0 }
    }
}

impl SourceConfig {
    /// The `kind` as written in the file (`simulator`, `file`, `cloudwatch`, `http`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            SourceConfig::Simulator { .. } => "simulator",
            SourceConfig::File { .. } => "file",
            SourceConfig::Http { .. } => "http",
            SourceConfig::Cloudwatch(_) => "cloudwatch",
        }
    }
}

/// Pace of a file replay.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pace {
    /// As fast as the loop decides.
    #[default]
    Fast,
    /// The recorded spacing, divided by `speed`.
    Realtime,
}

/// What applies actions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ActuatorConfig {
    /// The built-in simulator (only with the simulator source).
    #[default]
    Simulator,
    /// Records what it would do and does nothing.
    DryRun,
    /// Runs a program per action kind with the decision as JSON on stdin.
    Command {
        /// Action name → argv. The key `default` serves actions without their own entry.
        commands: BTreeMap<String, Vec<String>>,
    },
    /// AWS Glue API calls (needs the `aws` feature).
    Glue {
        /// One entry per pipeline acted on.
        pipelines: Vec<GluePipeline>,
    },
}

impl ActuatorConfig {
    /// The `kind` as written in the file (`simulator`, `dry-run`, `command`, `glue`).
    pub fn kind_name(&self) -> &'static str {
        match self {
            ActuatorConfig::Simulator => "simulator",
            ActuatorConfig::DryRun => "dry-run",
            ActuatorConfig::Command { .. } => "command",
            ActuatorConfig::Glue { .. } => "glue",
        }
    }
}

/// What to do with an action the confidence gate does not trust.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LowConfidence {
    /// Wait for a human's approval.
    #[default]
    Propose,
    /// Hand the incident to a human.
    Escalate,
}

/// Guardrails, in the order they apply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// observe, recommend or act.
    pub mode: Mode,
    /// Seconds a proposal waits for approval before it expires.
    pub approval_ttl_secs: u64,
    /// Seconds after which a proposal nobody answered is paged as such
    /// ("nobody answered"), once; must be below `approval_ttl_secs`. Default:
    /// 300, or two thirds of the lifetime when that is shorter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_unanswered_secs: Option<u64>,
    /// Act-mode trust thresholds.
    pub confidence: ConfidenceGate,
    /// The watchdog against inaction: pages after this many unhealthy windows
    /// with nothing done, then falls back to the rule policy.
    pub watchdog: WatchdogConfig,
    /// What an untrusted action becomes in act mode.
    pub low_confidence: LowConfidence,
    /// Actions per hour, cooldown, blast radius.
    pub budget: BudgetConfig,
    /// Circuit breaker per downstream endpoint.
    pub breaker: BreakerConfig,
    /// Concurrent calls per downstream endpoint.
    pub bulkhead: u32,
    /// Retries of a failed call.
    pub retry: RetryPolicy,
    /// Timeout of each call, learned from latency.
    pub timeout: TimeoutConfig,
}

impl GuardConfig {
    /// `approval_unanswered_secs` or its default, in ms.
    pub fn unanswered_after_ms(&self) -> u64 {
        let secs = self.approval_unanswered_secs.unwrap_or_else(|| 300.min(self.approval_ttl_secs * 2 / 3).max(1));
        secs * 1000
    }
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            mode: Mode::Act,
            approval_ttl_secs: 900,
            approval_unanswered_secs: None,
            confidence: ConfidenceGate::default(),
            watchdog: WatchdogConfig::default(),
            low_confidence: LowConfidence::default(),
            budget: BudgetConfig::default(),
            breaker: BreakerConfig::default(),
            bulkhead: 4,
            retry: RetryPolicy::default(),
            timeout: TimeoutConfig::default(),
        }
    }
}

fn default_pipelines() -> u32 {
    3
}
fn default_tick_ms() -> u64 {
    250
}
fn default_csv_metric() -> String {
    "pipeline.latency.p95".into()
}
fn default_pipeline() -> String {
    "replay".into()
}
fn one() -> f64 {
    1.0
}
fn default_window_secs() -> u64 {
    60
}
fn default_period() -> u32 {
    60
}
fn default_lag() -> u64 {
    120
}
fn default_poll() -> u64 {
    60
}
fn default_lookback() -> u64 {
    900
}
fn default_namespace() -> String {
    "Selfheal/Pipeline".into()
}
fn default_worker_type() -> String {
    "G.1X".into()
}
fn default_worker_levels() -> Vec<u32> {
    vec![2, 4, 8, 16]
}
fn default_workers() -> u32 {
    4
}
fn default_backpressure_rate() -> u64 {
    1000
}

/// A problem with a configuration, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// TOML syntax or shape (unknown key, wrong type).
    #[error("{origin}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// toml's message, which names the key and line.
        message: String,
    },
    /// Values that parse but make no sense.
    #[error("{origin}: {} problem(s):\n  {}", problems.len(), problems.join("\n  "))]
    Invalid {
        /// The file.
        origin: String,
        /// One line per problem, each starting with its key.
        problems: Vec<String>,
    },
}

impl SidecarConfig {
    /// Parse and validate a file.
    pub fn load(path: &Path) -> Result<SidecarConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        SidecarConfig::from_toml_str(&text, &path.display().to_string())
    }

    /// Parse and validate text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<SidecarConfig, ConfigError> {
        let cfg: SidecarConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_string(), message: e.to_string() })?;
        let problems = cfg.validate();
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigError::Invalid { origin: origin.to_string(), problems })
        }
    }

    /// Every problem, each naming its key: each section's own
    /// [`check`](DaemonConfig::check), then what involves two sections (the
    /// simulator actuator needs the simulator source; the pipeline cap
    /// against the pipelines named). All are reported at once, not the
    /// first. Checks no network and no files except that the paths it names
    /// are not empty.
    pub fn validate(&self) -> Vec<String> {
        let mut p = self.daemon.check();
        p.extend(self.model.check());
        p.extend(self.source.check());
        p.extend(self.actuator.check());
        if matches!(self.actuator, ActuatorConfig::Simulator) && !matches!(self.source, SourceConfig::Simulator { .. })
        {
            p.push("actuator.kind: \"simulator\" needs source.kind = \"simulator\"".into());
        }
        p.extend(self.guard.check());
        if let Some(n) = &self.notify {
            if let Err(e) = n.validate() {
                p.push(e);
            }
        }
        self.validate_bounds(&mut p);
        p.extend(self.fleet.iter().flat_map(crate::fleet::config::FleetConfig::check));
        p
    }
}

/// Collects "key: what" lines for the failed conditions of one section.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn need(&mut self, ok: bool, key: &str, what: impl Into<String>) {
        if !ok {
            self.0.push(format!("{key}: {}", what.into()));
        }
    }
}

impl DaemonConfig {
    /// This section's problems, one `daemon.<key>: what` line each (the
    /// pipeline cap and idle time are checked against the other sections by
    /// [`SidecarConfig::validate`]).
    pub fn check(&self) -> Vec<String> {
        let (d, mut p) = (self, Problems::default());
        p.need(d.checkpoint_every >= 1, "daemon.checkpoint_every", "must be at least 1");
        p.need(d.shutdown_grace_secs <= 600, "daemon.shutdown_grace_secs", "must be at most 600");
        p.need(!d.state_dir.as_os_str().is_empty(), "daemon.state_dir", "must not be empty");
        p.need(
            d.listen.port() == 0 || d.listen != d.control_listen,
            "daemon.control_listen",
            format!("must differ from daemon.listen ({}): control and metrics are separate listeners", d.listen),
        );
        p.need(!d.control_token_env.is_empty(), "daemon.control_token_env", "must name an environment variable");
        if let Some(f) = &d.control_token_file {
            p.need(!f.as_os_str().is_empty(), "daemon.control_token_file", "must name a file");
        }
        p.need(d.max_body_bytes >= 1024, "daemon.max_body_bytes", "must be at least 1024");
        p.need(d.log_max_bytes >= 1, "daemon.log_max_bytes", "must be at least 1");
        p.need(d.log_max_age_secs >= 1, "daemon.log_max_age_secs", "must be at least 1");
        p.need(d.log_keep >= 1, "daemon.log_keep", "must be at least 1");
        p.0
    }
}

impl ModelConfig {
    /// This section's problems, one `model.<key>: what` line each.
    pub fn check(&self) -> Vec<String> {
        let (m, mut p) = (self, Problems::default());
        p.need((0.0..=1.0).contains(&m.epsilon), "model.epsilon", format!("must be within [0, 1], got {}", m.epsilon));
        p.need((1..=100).contains(&m.reward_windows), "model.reward_windows", "must be within 1..=100");
        p.0
    }
}

impl SourceConfig {
    /// This section's problems, one `source.<key>: what` line each.
    pub fn check(&self) -> Vec<String> {
        let mut p = Problems::default();
        let metric_known = |m: &str| selfheal_core::Metric::from_name(m).is_some();
        match self {
            SourceConfig::Simulator { pipelines, tick_ms, .. } => {
                p.need((1..=10_000).contains(pipelines), "source.pipelines", "must be within 1..=10000");
                p.need(*tick_ms >= 1, "source.tick_ms", "must be at least 1");
            }
            SourceConfig::File { path, metric, speed, from, .. } => {
                p.need(!path.as_os_str().is_empty(), "source.path", "must name a file");
                p.need(
                    metric_known(metric),
                    "source.metric",
                    format!("unknown metric {metric:?}; `selfheal config --metrics` lists them"),
                );
                p.need(speed.is_finite() && *speed > 0.0, "source.speed", format!("must be > 0, got {speed}"));
                if let Some(Err(e)) = from.as_deref().map(|f| crate::provenance::parse_time(f, 0)) {
                    p.need(false, "source.from", e);
                }
            }
            SourceConfig::Cloudwatch(c) => {
                p.need(!c.pipelines.is_empty(), "source.pipelines", "must list at least one pipeline");
                p.need(c.period_secs >= 1, "source.period_secs", "must be at least 1");
                p.need(c.poll_secs >= 1, "source.poll_secs", "must be at least 1");
                p.need(!c.namespace.is_empty(), "source.namespace", "must not be empty");
                for (i, w) in c.pipelines.iter().enumerate() {
                    p.need(!w.name.is_empty(), &format!("source.pipelines[{i}].name"), "must not be empty");
                    p.need(!w.job_name.is_empty(), &format!("source.pipelines[{i}].job_name"), "must not be empty");
                }
                for m in c.metrics.iter().flatten() {
                    p.need(
                        metric_known(m),
                        "source.metrics",
                        format!(
                            "unknown metric {m:?}; `selfheal config --metrics` lists the metrics a source can read"
                        ),
                    );
                }
            }
            SourceConfig::Http { token_env, window_secs } => {
                p.need(*window_secs >= 1, "source.window_secs", "must be at least 1");
                if let Some(v) = token_env {
                    p.need(!v.is_empty(), "source.token_env", "must name an environment variable");
                }
            }
        }
        p.0
    }
}

impl ActuatorConfig {
    /// This section's problems, one `actuator.<key>: what` line each (that
    /// the simulator actuator needs the simulator source is checked by
    /// [`SidecarConfig::validate`]).
    pub fn check(&self) -> Vec<String> {
        let mut p = Problems::default();
        match self {
            ActuatorConfig::Glue { pipelines } => {
                p.need(!pipelines.is_empty(), "actuator.pipelines", "must list at least one pipeline");
                for (i, g) in pipelines.iter().enumerate() {
                    let key = |k: &str| format!("actuator.pipelines[{i}].{k}");
                    p.need(!g.job_name.is_empty(), &key("job_name"), "must not be empty");
                    p.need(
                        !g.worker_levels.is_empty() && g.worker_levels.windows(2).all(|w| w[0] < w[1]),
                        &key("worker_levels"),
                        "must be a non-empty ascending list",
                    );
                    p.need(
                        g.table.is_none() || (g.database.is_some() && g.source_table.is_some()),
                        &key("table"),
                        "schema_remap needs database, table and source_table together",
                    );
                }
            }
            ActuatorConfig::Simulator | ActuatorConfig::DryRun => {}
            ActuatorConfig::Command { commands } => {
                p.need(!commands.is_empty(), "actuator.commands", "must map at least one action to a program");
                for (k, argv) in commands {
                    let known = k == "default" || selfheal_core::Action::ALL.iter().any(|a| a.name() == k);
                    p.need(known, &format!("actuator.commands.{k}"), "is not an action name (or `default`)");
                    p.need(
                        !argv.is_empty() && !argv[0].is_empty(),
                        &format!("actuator.commands.{k}"),
                        "must be a non-empty argv list",
                    );
                }
            }
        }
        p.0
    }
}

impl GuardConfig {
    /// This section's problems, one `guard.<key>: what` line each. Where the
    /// guard crate checks its own settings (the watchdog, the breaker, the
    /// learned timeout) its check is called and its bounds are the only ones:
    /// e.g. the timeout factor must be finite and at least 1 (below 1 the
    /// learned timeout ratchets down on a healthy endpoint), and a breaker's
    /// minimum number of calls may exceed its window (the guard crate caps it
    /// at the window size, as resilience4j does).
    pub fn check(&self) -> Vec<String> {
        let (g, mut p) = (self, Problems::default());
        p.need(g.approval_ttl_secs >= 1, "guard.approval_ttl_secs", "must be at least 1");
        if let Some(u) = g.approval_unanswered_secs {
            p.need(
                u >= 1 && u < g.approval_ttl_secs,
                "guard.approval_unanswered_secs",
                format!("must be at least 1 and below guard.approval_ttl_secs ({})", g.approval_ttl_secs),
            );
        }
        p.need(
            g.confidence.min_lead.is_finite() && g.confidence.min_lead >= 0.0,
            "guard.confidence.min_lead",
            "must be finite and >= 0",
        );
        if let Err(e) = g.watchdog.check() {
            p.need(false, "guard.watchdog", e.to_string());
        }
        p.need(g.budget.actions_per_hour >= 1, "guard.budget.actions_per_hour", "must be at least 1");
        p.need(g.budget.blast_radius >= 1, "guard.budget.blast_radius", "must be at least 1");
        // The guard crate's messages start with the section ("breaker: ...").
        if let Err(e) = g.breaker.validate() {
            p.0.push(format!("guard.{}", e.0));
        }
        p.need(g.bulkhead >= 1, "guard.bulkhead", "must be at least 1");
        p.need(g.retry.max_attempts >= 1, "guard.retry.max_attempts", "must be at least 1");
        p.need(g.retry.base_ms <= g.retry.cap_ms, "guard.retry.base_ms", "must not exceed guard.retry.cap_ms");
        if let Err(e) = g.timeout.validate() {
            p.0.push(format!("guard.{}", e.0));
        }
        // Not a bound of the guard crate's: with a 0 ms floor, endpoints
        // answering in under 1 ms would learn a 0 ms timeout and fail every call.
        p.need(g.timeout.min_ms >= 1, "guard.timeout.min_ms", "must be at least 1");
        p.0
    }
}

impl SidecarConfig {
    /// `[daemon] max_pipelines` and `pipeline_idle_secs`, against what the
    /// source and the actuator already name.
    fn validate_bounds(&self, p: &mut Vec<String>) {
        let d = &self.daemon;
        let cap = d.max_pipelines;
        if cap == 0 {
            p.push("daemon.max_pipelines: must be at least 1".into());
        }
        let configured = [
            (
                "source.pipelines",
                match &self.source {
                    SourceConfig::Simulator { pipelines, .. } => *pipelines as usize,
                    SourceConfig::Cloudwatch(c) => c.pipelines.len(),
                    _ => 0,
                },
            ),
            (
                "actuator.pipelines",
                match &self.actuator {
                    ActuatorConfig::Glue { pipelines } => pipelines.len(),
                    _ => 0,
                },
            ),
        ];
        for (key, n) in configured {
            if n > cap {
                p.push(format!(
                    "daemon.max_pipelines: {key} names {n} pipelines, more than the cap of {cap}; raise the cap"
                ));
            }
        }
        if d.pipeline_idle_secs < 60 {
            p.push("daemon.pipeline_idle_secs: must be at least 60".into());
        }
        // Every source kind: a pipeline reporting every period must never look
        // idle (the data clock is read no further than the wall clock, see
        // `crate::window`, so one period plus delivery lag is the most a live
        // pipeline lags it). A file replay's spacing is the file's: not known here.
        let period = match &self.source {
            SourceConfig::Http { window_secs, .. } => Some(("source.window_secs", *window_secs)),
            SourceConfig::Cloudwatch(c) => Some(("source.period_secs", u64::from(c.period_secs))),
            // The simulator's step (`pipeline.step_seconds` of its scenario, 60 s built in).
            SourceConfig::Simulator { .. } => Some(("the simulator's step", 60)),
            SourceConfig::File { .. } => None,
        };
        if let Some((key, secs)) = period {
            if d.pipeline_idle_secs < secs.saturating_mul(2) {
                p.push(format!(
                    "daemon.pipeline_idle_secs: must be at least two windows ({key} = {secs}), \
                     or a pipeline reporting every window could look idle"
                ));
            }
        }
    }
}

/// The complete, commented example printed by `selfheal config --example`.
pub const EXAMPLE: &str = include_str!("sidecar.example.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_validates() {
        let cfg = SidecarConfig::from_toml_str(EXAMPLE, "example").unwrap();
        assert_eq!(cfg.guard.mode, Mode::Act);
        assert!(cfg.notify.is_none(), "no active webhook pointing at a made-up address");
        // Uncommented, the [notify] table parses and validates too.
        let on = EXAMPLE.replace("# [notify]\n# url", "[notify]\nurl");
        assert!(SidecarConfig::from_toml_str(&on, "example").unwrap().notify.is_some());
        // And so does its second channel.
        let both =
            on.replace("# [notify.fallback]\n# kind = \"file\"\n# path", "[notify.fallback]\nkind = \"file\"\npath");
        let n = SidecarConfig::from_toml_str(&both, "example").unwrap().notify.unwrap();
        assert_eq!(n.fallback.map(|f| f.after_secs), Some(300));
    }

    #[test]
    fn example_sets_every_key() {
        // Every key of the serialised defaults appears in the example, so a new
        // key cannot be added without documenting it there.
        let defaults = toml::to_string(&SidecarConfig {
            notify: Some(toml::from_str("url = \"http://x\"\n[fallback]\npath = \"p\"").unwrap()),
            ..SidecarConfig::default()
        })
        .unwrap();
        for line in defaults.lines() {
            if let Some((key, _)) = line.split_once(" = ") {
                assert!(
                    EXAMPLE.lines().any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} ="))),
                    "key {key:?} is not documented in sidecar.example.toml"
                );
            }
        }
    }

    #[test]
    fn empty_file_is_the_default() {
        let cfg = SidecarConfig::from_toml_str("", "empty").unwrap();
        assert_eq!(cfg, SidecarConfig::default());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = SidecarConfig::from_toml_str("[guard]\nmode = \"act\"\nbudjet = 3\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("budjet"), "{e}");
        let e = SidecarConfig::from_toml_str("[source]\nkind = \"simulator\"\npipelinez = 3\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("pipelinez"), "{e}");
    }

    #[test]
    fn bad_values_name_their_keys() {
        let text =
            "[model]\nepsilon = 2.0\n[guard.budget]\nactions_per_hour = 0\n[guard.retry]\nbase_ms = 10\ncap_ms = 1\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        for key in ["model.epsilon", "guard.budget.actions_per_hour", "guard.retry.base_ms"] {
            assert!(e.contains(key), "{key} missing from {e}");
        }
        // The unanswered page comes before the proposal expires.
        let late = "[guard]\napproval_ttl_secs = 60\napproval_unanswered_secs = 60\n";
        let e = SidecarConfig::from_toml_str(late, "x.toml").unwrap_err().to_string();
        assert!(
            e.contains("guard.approval_unanswered_secs") && e.contains("below guard.approval_ttl_secs (60)"),
            "{e}"
        );
        let g = SidecarConfig::from_toml_str("[guard]\napproval_ttl_secs = 60\n", "x.toml").unwrap().guard;
        assert_eq!(g.unanswered_after_ms(), 40_000, "two thirds of a short lifetime");
        assert_eq!(GuardConfig::default().unanswered_after_ms(), 300_000);
        let bad = "[notify]\nurl = \"http://x/\"\npublic_url = \"selfheal.internal\"\n";
        let e = SidecarConfig::from_toml_str(bad, "x.toml").unwrap_err().to_string();
        assert!(e.contains("notify.public_url"), "{e}");
    }

    #[test]
    fn simulator_actuator_needs_simulator_source() {
        let text = "[source]\nkind = \"http\"\n[actuator]\nkind = \"simulator\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("actuator.kind"), "{e}");
    }

    #[test]
    fn unknown_cloudwatch_metric_is_named() {
        let text = "[source]\nkind = \"cloudwatch\"\nmetrics = [\"glue.driver.aggregate.numFailedTasks\", \"pipeline.latency.p99\"]\n\
                    [[source.pipelines]]\nname = \"orders\"\njob_name = \"orders-etl\"\n[actuator]\nkind = \"dry-run\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("source.metrics") && e.contains("pipeline.latency.p99"), "{e}");
        assert!(!e.contains("numFailedTasks"), "a known metric is not an error: {e}");
    }

    #[test]
    fn configured_pipelines_beyond_the_cap_are_refused() {
        let text = "[daemon]\nmax_pipelines = 2\n[source]\nkind = \"simulator\"\npipelines = 3\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("daemon.max_pipelines") && e.contains("3 pipelines"), "{e}");
        let text = "[daemon]\nmax_pipelines = 1\n[source]\nkind = \"cloudwatch\"\n\
                    [[source.pipelines]]\nname = \"a\"\njob_name = \"a\"\n[[source.pipelines]]\nname = \"b\"\njob_name = \"b\"\n\
                    [actuator]\nkind = \"dry-run\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("daemon.max_pipelines: source.pipelines names 2"), "{e}");
        let ok = "[daemon]\nmax_pipelines = 3\n[source]\nkind = \"simulator\"\npipelines = 3\n";
        assert_eq!(SidecarConfig::from_toml_str(ok, "x.toml").unwrap().daemon.bounds().max_pipelines, 3);
        let text = "[daemon]\nmax_pipelines = 0\npipeline_idle_secs = 100\n[source]\nkind = \"http\"\n\
                    window_secs = 60\n[actuator]\nkind = \"dry-run\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("daemon.max_pipelines: must be at least 1"), "{e}");
        assert!(e.contains("daemon.pipeline_idle_secs: must be at least two windows"), "{e}");
        // Every source kind, not only http: the CloudWatch period and the simulator's step too.
        let text = "[daemon]\npipeline_idle_secs = 500\n[source]\nkind = \"cloudwatch\"\nperiod_secs = 300\n\
                    [[source.pipelines]]\nname = \"a\"\njob_name = \"a\"\n[actuator]\nkind = \"dry-run\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("must be at least two windows (source.period_secs = 300)"), "{e}");
        let text = "[daemon]\npipeline_idle_secs = 100\n[source]\nkind = \"simulator\"\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("must be at least two windows (the simulator's step = 60)"), "{e}");
        let ok = "[daemon]\npipeline_idle_secs = 120\n[source]\nkind = \"simulator\"\n";
        assert!(SidecarConfig::from_toml_str(ok, "x.toml").is_ok());
    }

    #[test]
    fn every_problem_is_reported_at_once_with_the_guard_crates_bounds() {
        // Three sections, one problem each: all three come back, not the first.
        let text = "[daemon]\ncheckpoint_every = 0\n[model]\nreward_windows = 0\n[guard.timeout]\nfactor = 0.0\n";
        let Err(ConfigError::Invalid { problems, .. }) = SidecarConfig::from_toml_str(text, "x.toml") else {
            panic!("three problems must not parse");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("daemon.checkpoint_every: "), "{problems:?}");
        assert!(problems[1].starts_with("model.reward_windows: "), "{problems:?}");
        assert!(problems[2].starts_with("guard.timeout: factor must be finite and at least 1"), "{problems:?}");
        // Each section's check sees only its own: the guard section alone.
        let g =
            GuardConfig { timeout: TimeoutConfig { factor: 0.0, ..TimeoutConfig::default() }, ..Default::default() };
        assert_eq!(g.check().len(), 1);
        // The guard crate's bound, not a second one: the config refuses what the guard refuses.
        let below_one = "[guard.timeout]\nfactor = 0.8\n";
        assert!(SidecarConfig::from_toml_str(below_one, "x.toml").is_err());
        assert!(selfheal_guard::LearnedTimeout::new(TimeoutConfig { factor: 0.8, ..TimeoutConfig::default() }).is_err());
        // The breaker's bounds are the guard crate's too (Breaker::new accepts what validate accepts).
        let b = "[guard.breaker]\nfailure_rate_threshold = 0.0\n";
        let e = SidecarConfig::from_toml_str(b, "x.toml").unwrap_err().to_string();
        assert!(e.contains("guard.breaker: failure_rate_threshold must be in (0, 100]"), "{e}");
    }

    #[test]
    fn command_keys_are_actions() {
        let text = "[actuator]\nkind = \"command\"\n[actuator.commands]\nscale_upp = [\"/bin/true\"]\n";
        let e = SidecarConfig::from_toml_str(text, "x.toml").unwrap_err().to_string();
        assert!(e.contains("actuator.commands.scale_upp"), "{e}");
    }
}
