//! The daemon composed by the library ([`selfheal_sidecar::build`]) from a
//! configuration and the shipped models, without the CLI: it binds, decides
//! and stops; a component this build lacks is refused by name.

use selfheal_agent::store::{GlueBuiltinsFile, ModelFile, RulesFile};
use selfheal_detect::telemetry::DetectorModel;
use selfheal_sidecar::build::{self, BuildError, Inputs};
use selfheal_sidecar::config::SidecarConfig;
use selfheal_sim::Scenario;
use std::path::PathBuf;
use std::time::Duration;

fn shipped(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name)
}

/// The shipped models, as the binary loads them when the config names none.
fn inputs(cfg: &SidecarConfig) -> Inputs {
    let policy = ModelFile::load(&shipped("policy.json")).unwrap();
    let text = std::fs::read_to_string(shipped("detector.json")).unwrap();
    Inputs {
        scenario: Scenario::builtin_default(),
        detector: DetectorModel::from_json(&text, "detector.json").unwrap(),
        model: build::starting_model(policy, "policy.json".into(), &cfg.daemon.checkpoint_path(), false).unwrap(),
        rules: RulesFile::load(&shipped("rules.json")).unwrap(),
        glue_builtins: GlueBuiltinsFile::load(&shipped("glue-builtins.json")).unwrap(),
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assemble_builds_a_simulator_daemon_that_decides_and_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[daemon]\nlisten = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\n\
                [source]\nkind = \"simulator\"\npipelines = 2\ntick_ms = 10\nseed = 7\n";
    let mut cfg = SidecarConfig::from_toml_str(text, "t.toml").unwrap();
    cfg.daemon.state_dir = dir.path().to_path_buf();
    let ins = inputs(&cfg);
    let ready = build::assemble(cfg.clone(), ins, None, no_env).await.unwrap();
    assert_ne!(ready.listeners.metrics.local_addr().unwrap().port(), 0, "bound to a real port");
    assert_ne!(ready.listeners.control.local_addr().unwrap().port(), 0);
    assert!(ready.listeners.auth.control.is_none(), "no token configured");
    assert_eq!(ready.daemon.source.name(), "simulator");
    assert_eq!(ready.daemon.actuator.name(), "simulator");
    let stop = tokio::time::sleep(Duration::from_millis(1500));
    let summary = selfheal_sidecar::daemon::run(ready.daemon, ready.listeners, stop).await.unwrap();
    assert!(summary.windows >= 10, "two simulated pipelines at 10 ms a step: {summary:?}");
    // The shutdown saved the table where the next start looks for it, grown from the shipped model.
    let ck = ModelFile::load(&cfg.daemon.checkpoint_path()).unwrap();
    let shipped_id = ModelFile::load(&shipped("policy.json")).unwrap().identity();
    assert_eq!(ck.meta.grown_from.as_deref(), Some(shipped_id.as_str()));
    assert!(cfg.daemon.log_path().exists(), "the provenance log was written");
}

#[tokio::test]
async fn aws_components_are_refused_by_name_without_them_and_validate_sees_the_glue_ladder() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[daemon]\nlisten = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\n\
                [source]\nkind = \"http\"\n[actuator]\nkind = \"glue\"\n\
                [[actuator.pipelines]]\nname = \"orders\"\njob_name = \"orders-etl\"\n\
                worker_levels = [2, 4, 8, 16]\ndefault_workers = 4\n";
    let mut cfg = SidecarConfig::from_toml_str(text, "t.toml").unwrap();
    cfg.daemon.state_dir = dir.path().to_path_buf();
    let ins = inputs(&cfg);
    let ok = build::validate(&cfg, "t.toml", &ins.model.model, &ins.scenario, &ins.detector, no_env).unwrap();
    assert_eq!(ok.worker_levels, vec![2, 4, 8, 16], "the sidecar decides with the actuator's ladder");
    assert_eq!(ok.control, "no token: loopback only");
    let Err(e) = build::assemble(cfg, ins, None, no_env).await else { panic!("a Glue actuator without AWS built") };
    assert!(matches!(e, BuildError::Unsupported(_)), "{e}");
    assert_eq!(e.to_string(), "actuator.kind = \"glue\" needs the `aws` feature; rebuild with default features");
}

#[tokio::test]
async fn an_ingest_token_variable_that_is_not_set_is_named() {
    let text = "[daemon]\nlisten = \"127.0.0.1:0\"\ncontrol_listen = \"127.0.0.1:0\"\n\
                [source]\nkind = \"http\"\ntoken_env = \"SELFHEAL_TEST_INGEST_TOKEN\"\n[actuator]\nkind = \"dry-run\"\n";
    let cfg = SidecarConfig::from_toml_str(text, "t.toml").unwrap();
    let e = build::control_auth(&cfg, no_env).err().unwrap().to_string();
    assert_eq!(e, "source.token_env: names SELFHEAL_TEST_INGEST_TOKEN, which is not set");
    let env = |v: &str| (v == "SELFHEAL_TEST_INGEST_TOKEN").then(|| " s3cret\n".to_string());
    let auth = build::control_auth(&cfg, env).unwrap();
    assert!(auth.ingest.is_some() && auth.control.is_none(), "an ingest-only token, no control token");
}
