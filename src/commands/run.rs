//! `selfheal run`: the sidecar controller, and the small commands around it
//! (`config`, `validate`, `approve`, `reject`, `pause`, `resume`).
//!
//! Arguments and output only: `run` loads the files a configuration names (or
//! the embedded defaults) and hands them to [`build::assemble`], which puts
//! the daemon together in the sidecar crate; the AWS components come from
//! `selfheal-aws` when this build has the `aws` feature. `validate` runs
//! [`build::validate`], the same checks without the network.

use crate::defaults;
use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;
use selfheal_core::Metric;
use selfheal_sidecar::auth;
use selfheal_sidecar::build::{self, AwsComponents, Inputs, StartingModel};
#[cfg(feature = "aws")]
use selfheal_sidecar::config::ActuatorConfig;
use selfheal_sidecar::config::{SidecarConfig, DEFAULT_CONTROL_TOKEN_ENV, EXAMPLE};
use selfheal_sidecar::daemon;
use std::net::SocketAddr;
use std::path::PathBuf;
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

/// The model to start from ([`build::starting_model`]): the configured one
/// (or the shipped one), or the checkpoint in the state directory if it grew
/// from that model (or `resume` says so).
pub fn starting_model(cfg: &SidecarConfig, resume: bool) -> Result<StartingModel> {
    let configured_from =
        cfg.model.policy.as_ref().map_or("shipped models/policy.json".into(), |p| p.display().to_string());
    let configured = defaults::policy(cfg.model.policy.as_deref())?;
    Ok(build::starting_model(configured, configured_from, &cfg.daemon.checkpoint_path(), resume)?)
}

/// The files the daemon is built from, or the embedded defaults.
fn load_inputs(cfg: &SidecarConfig, resume: bool) -> Result<Inputs> {
    let m = &cfg.model;
    Ok(Inputs {
        scenario: defaults::scenario(m.scenario.as_deref())?,
        detector: defaults::detector(m.detector.as_deref())?,
        model: starting_model(cfg, resume)?,
        rules: defaults::rules(m.rules.as_deref())?,
        glue_builtins: defaults::glue_builtins(m.glue_builtins.as_deref())?,
    })
}

/// The AWS components of this build: none without the `aws` feature.
fn aws() -> Option<&'static dyn AwsComponents> {
    #[cfg(feature = "aws")]
    return Some(&selfheal_aws::sidecar::Components);
    #[cfg(not(feature = "aws"))]
    None
}

async fn serve(cfg: SidecarConfig, resume: bool) -> Result<()> {
    let inputs = load_inputs(&cfg, resume)?;
    let log = cfg.daemon.log_path();
    let ready = build::assemble(cfg, inputs, aws(), |v| std::env::var(v).ok()).await?;
    let l = &ready.listeners;
    eprintln!(
        "selfheal sidecar: http://{} (metrics, healthz, readyz); control http://{} (approvals, pause, resume, ingest{}); \
         log {}; stop with Ctrl-C",
        l.metrics.local_addr()?,
        l.control.local_addr()?,
        if l.auth.control.is_some() { "; bearer token" } else { "; no token" },
        log.display()
    );
    let summary = daemon::run(ready.daemon, ready.listeners, shutdown_signal()).await?;
    eprintln!(
        "selfheal sidecar stopped: {} windows, {} actions succeeded, {} failed, {} Q updates",
        summary.windows, summary.succeeded, summary.failed, summary.q_updates
    );
    Ok(())
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
    let name = a.config.display().to_string();
    if let Some((key, path)) = build::missing_paths(&cfg).into_iter().next() {
        bail!("{name}: {key}: {} does not exist", path.display());
    }
    // The models against each other and against the actuator, as `run` loads them.
    let model = defaults::policy(cfg.model.policy.as_deref()).with_context(|| format!("{name}: model.policy"))?;
    let scenario =
        defaults::scenario(cfg.model.scenario.as_deref()).with_context(|| format!("{name}: model.scenario"))?;
    let detector =
        defaults::detector(cfg.model.detector.as_deref()).with_context(|| format!("{name}: model.detector"))?;
    let ok = build::validate(&cfg, &name, &model, &scenario, &detector, |v| std::env::var(v).ok())?;
    if let Some(w) = &ok.warning {
        eprintln!("warning: {w}");
    }
    println!(
        "{name}: ok (mode {}, source {}, actuator {}, worker levels {:?}; control on {}, {})",
        cfg.guard.mode,
        cfg.source.kind_name(),
        cfg.actuator.kind_name(),
        ok.worker_levels,
        cfg.daemon.control_listen,
        ok.control,
    );
    Ok(())
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
    use selfheal_sidecar::build::{checkpoint_of, encoder, learned, sidecar_encoder};

    #[test]
    fn a_checkpoint_of_another_model_is_refused_unless_resumed() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SidecarConfig::default();
        cfg.daemon.state_dir = dir.path().to_path_buf();
        // No checkpoint: the configured (shipped) model.
        let StartingModel { model: m, from, grown_from: grown } = starting_model(&cfg, false).unwrap();
        assert!(from.contains("models/policy.json"));
        assert_eq!(grown, m.identity());
        // A checkpoint that grew from the same model is taken.
        let mut same = m.clone();
        same.meta.grown_from = Some(m.identity());
        same.save(&cfg.daemon.checkpoint_path()).unwrap();
        let from = starting_model(&cfg, false).unwrap().from;
        assert_eq!(from, cfg.daemon.checkpoint_path().display().to_string());
        // One that grew from another model is refused, naming both sides.
        let mut other = m.clone();
        other.meta.grown_from = Some("detector-v1/other/seed=9/episodes=10/states=1".into());
        other.save(&cfg.daemon.checkpoint_path()).unwrap();
        let err = format!("{:#}", starting_model(&cfg, false).unwrap_err());
        assert!(err.contains("detector-v1/other/seed=9") && err.contains(&m.identity()), "{err}");
        assert!(err.contains("--resume-from-checkpoint"), "{err}");
        let grown = starting_model(&cfg, true).unwrap().grown_from;
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
        let StartingModel { model, grown_from: grown, .. } = starting_model(&cfg, false).unwrap();
        let enc_cfg = sidecar_encoder(&model, &scenario, &detector, &cfg.actuator, "t").unwrap();
        assert_eq!(enc_cfg.worker_levels, vec![2, 4, 8, 16]);
        let (_, describe) = encoder(&model.encoder.id, enc_cfg, &detector).unwrap();
        let (enc, _) = learned(&model, &scenario, &detector).unwrap();
        let table = model.table(enc.as_ref()).unwrap();
        checkpoint_of(&model, &grown, describe.as_ref(), &table).save(&cfg.daemon.checkpoint_path()).unwrap();
        // The next start takes the checkpoint and still fits the deployment.
        let StartingModel { model: ck, from, .. } = starting_model(&cfg, false).unwrap();
        assert!(from.ends_with("policy.json") && from.contains(&dir.path().display().to_string()), "{from}");
        let again = sidecar_encoder(&ck, &scenario, &detector, &cfg.actuator, "t");
        assert!(again.is_ok(), "{:#}", again.unwrap_err());
    }
}
