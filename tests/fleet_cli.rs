//! End-to-end tests of training fan-out: `selfheal train --shard I/N` and
//! `selfheal fleet merge`, each run as the real binary.

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn selfheal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfheal"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for v in ["JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"] {
        c.env_remove(v);
    }
    c.envs(env.iter().copied());
    c.output().expect("run selfheal")
}

fn ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = selfheal(args, env);
    assert!(out.status.success(), "selfheal {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn model(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read model")).expect("model JSON")
}

fn visits(m: &Value) -> u64 {
    m["states"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["visits"].as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum()
}

fn p(dir: &Path, name: &str) -> String {
    dir.join(name).display().to_string()
}

#[test]
fn two_shards_merge_into_a_model_that_evaluates_and_a_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (s0, s1, merged) = (p(dir.path(), "s0.json"), p(dir.path(), "s1.json"), p(dir.path(), "merged.json"));
    let train = ["train", "--episodes", "301", "--seed", "7", "--threads", "1"];
    // Shard 0 by flag; shard 1 by the Kubernetes Indexed Job's environment variable.
    ok(&[&train[..], &["--shard", "0/2", "--out", &s0]].concat(), &[]);
    ok(&[&train[..], &["--shards", "2", "--out", &s1]].concat(), &[("JOB_COMPLETION_INDEX", "1")]);
    let (m0, m1) = (model(Path::new(&s0)), model(Path::new(&s1)));
    assert_eq!(m0["meta"]["episodes"], 151, "shard 0 of 301 episodes takes the odd one");
    assert_eq!(m1["meta"]["episodes"], 150);
    assert_ne!(m0["meta"]["seed"], m1["meta"]["seed"], "shards draw from different seed streams");
    assert_ne!(m0["states"], m1["states"]);

    ok(&["fleet", "merge", "--out", &merged, &s0, &s1], &[]);
    let m = model(Path::new(&merged));
    assert_eq!(visits(&m), visits(&m0) + visits(&m1), "visit counts sum");
    assert!(visits(&m0) > 0 && visits(&m1) > 0);
    assert_eq!(m["meta"]["episodes"], 301);
    let eval: Value = serde_json::from_str(&ok(
        &["evaluate", "--policy", &merged, "--seeds", "200000..200020", "--format", "json"],
        &[],
    ))
    .expect("evaluate prints JSON");
    let q = eval["policies"].as_array().unwrap().iter().find(|p| p["name"] == "q-learning").expect("q-learning row");
    assert!(q["pct_of_oracle"].as_f64().expect("a number").is_finite(), "{q}");

    // A shard trained with another encoder is refused, naming both files.
    let other = p(dir.path(), "telemetry.json");
    ok(&[&train[..], &["--shard", "1/2", "--encoder", "telemetry-v1", "--out", &other]].concat(), &[]);
    let out = selfheal(&["fleet", "merge", "--out", &p(dir.path(), "bad.json"), &s0, &other], &[]);
    assert!(!out.status.success(), "a mismatched encoder must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("encoder") && err.contains("telemetry.json"), "{err}");
    assert!(!dir.path().join("bad.json").exists(), "nothing written on refusal");
}

#[test]
fn a_bad_shard_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let out = p(dir.path(), "m.json");
    let e = selfheal(&["train", "--episodes", "10", "--shard", "2/2", "--out", &out], &[]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("0 <= I < N"));
    let e = selfheal(&["train", "--episodes", "10", "--shards", "2", "--out", &out], &[]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("JOB_COMPLETION_INDEX"));
    let e =
        selfheal(&["train", "--episodes", "10", "--shards", "2", "--out", &out], &[("AWS_BATCH_JOB_ARRAY_INDEX", "x")]);
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("AWS_BATCH_JOB_ARRAY_INDEX"));
    assert!(!dir.path().join("m.json").exists());
}
