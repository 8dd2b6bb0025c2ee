//! End-to-end tests of training fan-out and the fleet commands, each run as
//! the real binary: `selfheal train --shard I/N`, `selfheal fleet merge` of
//! shard models, and `selfheal fleet rollout`/`merge --bucket`/`rollback`/
//! `status` against a real local AWS API server (moto; `SELFHEAL_MOTO_SERVER`
//! names it, else `.venv/bin/moto_server`).

mod common;
#[path = "aws_support/moto.rs"]
mod moto;
/// moto's conditional writes are not atomic: racing writers go through this
/// proxy, which hands moto one request at a time (see its module docs).
#[path = "../crates/fleet/tests/support/serial.rs"]
mod serial;

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

fn selfheal(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_selfheal"));
    c.args(args).current_dir(env!("CARGO_MANIFEST_DIR"));
    for v in ["JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX", "AWS_PROFILE", "AWS_ENDPOINT_URL"] {
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
    // `{shard}` in --out becomes the index (AWS Batch substitutes nothing).
    let pattern = p(dir.path(), "s{shard}.json");
    ok(&[&train[..], &["--shards", "2", "--out", &pattern]].concat(), &[("JOB_COMPLETION_INDEX", "1")]);
    assert!(Path::new(&s1).is_file() && !Path::new(&pattern).exists());
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
    let q =
        eval["policies"].as_array().unwrap().iter().find(|p| p["name"] == "learned").expect("the learned policy's row");
    assert!(q["pct_of_oracle"].as_f64().expect("a number").is_finite(), "{q}");

    // A shard trained with another encoder is refused, naming both files.
    let other = p(dir.path(), "telemetry.json");
    // (Its index from the AWS Batch array job's variable.)
    ok(
        &[&train[..], &["--shards", "2", "--encoder", "telemetry-v1", "--out", &other]].concat(),
        &[("AWS_BATCH_JOB_ARRAY_INDEX", "1")],
    );
    assert_eq!(model(Path::new(&other))["meta"]["episodes"], 150, "shard 1 of 2 from AWS_BATCH_JOB_ARRAY_INDEX");
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

/// `fleet` against moto: the environment of the standard AWS chain.
fn aws_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", url.to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ]
}

/// `selfheal fleet SUB --bucket B --prefix P --path-style ARGS...` against moto.
fn fleet(url: &str, sub: &str, args: &[&str]) -> Output {
    let env = aws_env(url);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let base = ["fleet", sub, "--bucket", BUCKET, "--prefix", PREFIX, "--path-style"];
    selfheal(&[&base[..], args].concat(), &env)
}

fn fleet_ok(url: &str, sub: &str, args: &[&str]) -> String {
    let out = fleet(url, sub, args);
    assert!(out.status.success(), "fleet {sub} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

fn fleet_err(url: &str, sub: &str, args: &[&str]) -> String {
    let out = fleet(url, sub, args);
    assert!(!out.status.success(), "fleet {sub} {args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const BUCKET: &str = "selfheal-policies";
const PREFIX: &str = "fleet/prod";

/// moto checks the access key of a request but not its signature.
const AUTH: (&str, &str) = (
    "Authorization",
    "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0",
);

/// An object of the store, read straight from moto (path-style GET).
fn object(m: &moto::Moto, rel: &str) -> Value {
    let r = common::http(&m.addr, "GET", &format!("/{BUCKET}/{PREFIX}/{rel}"), &[AUTH], "").expect("GET object");
    assert_eq!(r.status, 200, "GET {rel}: {}", r.body);
    serde_json::from_str(&r.body).expect("object JSON")
}

#[test]
fn rollout_merge_and_rollback_move_the_policy_in_s3() {
    let dir = tempfile::tempdir().unwrap();
    let m = moto::Moto::start(&dir.path().join("moto.log"));
    let r = common::http(&m.addr, "PUT", &format!("/{BUCKET}"), &[AUTH], "").expect("create bucket");
    assert_eq!(r.status, 200, "{}", r.body);
    let (a, b) = (p(dir.path(), "a.json"), p(dir.path(), "b.json"));
    let train = ["train", "--episodes", "200", "--threads", "1", "--encoder", "telemetry-v1"];
    ok(&[&train[..], &["--seed", "3", "--out", &a]].concat(), &[]);
    ok(&[&train[..], &["--seed", "4", "--out", &b]].concat(), &[]);

    // Nothing there yet: status says so, and so does a rollback.
    assert!(fleet_err(&m.url, "status", &[]).contains("not initialised"));
    assert!(fleet_err(&m.url, "rollback", &[]).contains("not initialised"));

    // The first rollout initialises; the second makes a child of it.
    assert!(fleet_ok(&m.url, "rollout", &[&a]).contains("as version 1"));
    assert!(fleet_ok(&m.url, "rollout", &[&b]).contains("as version 2 (was 1)"));
    let st = fleet_ok(&m.url, "status", &[]);
    assert!(st.contains("current 2 ") && st.contains("versions 1 2\n"), "{st}");
    let v2 = object(&m, "versions/v000002.json");
    assert_eq!(v2["parent"], 1);
    assert_eq!(v2["model"], model(Path::new(&b)), "version 2 holds the rolled-out file");
    assert_eq!(object(&m, "current")["version"], 2);

    // A file that is not a model is refused and changes nothing.
    let junk = p(dir.path(), "junk.json");
    std::fs::write(&junk, "{\"not\": \"a model\"}").unwrap();
    assert!(fleet_err(&m.url, "rollout", &[&junk]).contains("junk.json"));
    assert!(fleet_ok(&m.url, "status", &[]).contains("versions 1 2\n"));

    // A replica's delta on a state version 2 knows: merge folds it into version 3.
    assert!(fleet_ok(&m.url, "merge", &[]).contains("no pending delta; version 2"));
    let row = &v2["model"]["states"][0];
    let (id, visits0) = (row["id"].as_u64().unwrap(), row["visits"][0].as_u64().unwrap());
    let q0 = row["q"][0].as_f64().unwrap();
    let mut dn = vec![0u32; row["visits"].as_array().unwrap().len()];
    dn[0] = 5;
    let delta = serde_json::json!({
        "format": "selfheal-policy-delta", "replica": "r1", "base_version": 2,
        "rows": [{"id": id, "desc": row["desc"], "visits": dn, "q": vec![q0 - 10.0; dn.len()]}],
    });
    let put = format!("/{BUCKET}/{PREFIX}/deltas/r1/0000000000001-000000.json");
    assert_eq!(common::http(&m.addr, "PUT", &put, &[AUTH], &delta.to_string()).unwrap().status, 200);
    let merged = fleet_ok(&m.url, "merge", &[]);
    assert!(merged.contains("merged 1 deltas (5 online updates) into version 3"), "{merged}");
    let v3 = object(&m, "versions/v000003.json");
    assert_eq!(v3["parent"], 2);
    let row3 = v3["model"]["states"].as_array().unwrap().iter().find(|r| r["id"] == id).unwrap();
    assert_eq!(row3["online"][0], 5, "the delta's updates are counted online");
    assert_eq!(row3["visits"][0].as_u64().unwrap(), visits0, "training visits unchanged");
    let w0 = visits0 as f64;
    let want = (w0 * q0 + 5.0 * (q0 - 10.0)) / (w0 + 5.0);
    assert!((row3["q"][0].as_f64().unwrap() - want).abs() < 1e-9, "visit-weighted: {row3} vs {want}");

    // Rollback: to the parent, then to a given version; version 1 has no parent.
    assert!(fleet_ok(&m.url, "rollback", &[]).contains("from version 3 to version 2"));
    assert!(fleet_ok(&m.url, "rollback", &["--to", "1"]).contains("from version 2 to version 1"));
    assert_eq!(object(&m, "current")["version"], 1);
    assert!(fleet_err(&m.url, "rollback", &[]).contains("no parent"));
    assert!(fleet_err(&m.url, "rollback", &["--to", "9"]).contains("policy version 9 does not exist"));
    // Roll forward again: the newer versions stayed readable.
    assert!(fleet_ok(&m.url, "rollback", &["--to", "3"]).contains("to version 3"));
    let st = fleet_ok(&m.url, "status", &[]);
    assert!(st.contains("current 3 ") && st.contains("versions 1 2 3\n"), "{st}");
}

#[test]
fn concurrent_rollouts_chain_one_after_the_other_and_none_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let m = moto::Moto::start(&dir.path().join("moto.log"));
    let url = serial::Serial::start(&m.addr).url;
    let r = common::http(&m.addr, "PUT", &format!("/{BUCKET}"), &[AUTH], "").expect("create bucket");
    assert_eq!(r.status, 200, "{}", r.body);
    let base = p(dir.path(), "base.json");
    let train = ["train", "--episodes", "100", "--threads", "1", "--encoder", "telemetry-v1"];
    ok(&[&train[..], &["--seed", "10", "--out", &base]].concat(), &[]);
    assert!(fleet_ok(&url, "rollout", &[&base]).contains("as version 1"));
    let models: Vec<String> = (0..4)
        .map(|i| {
            let out = p(dir.path(), &format!("m{i}.json"));
            ok(&[&train[..], &["--seed", &(11 + i).to_string(), "--out", &out]].concat(), &[]);
            out
        })
        .collect();
    // Four rollouts at once, through the proxy (linearizable, as S3 is).
    let children: Vec<_> = models
        .iter()
        .map(|m| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_selfheal"));
            c.args(["fleet", "rollout", "--bucket", BUCKET, "--prefix", PREFIX, "--path-style", m]);
            c.env_remove("AWS_PROFILE").envs(aws_env(&url)).stdout(std::process::Stdio::piped());
            c.stderr(std::process::Stdio::piped()).spawn().expect("spawn rollout")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The pointer moved four times (generation 1 at init, +1 a move), and
    // following the parents from the current version back to 1 passes the
    // four models once each: every pointer write was conditional on the
    // pointer it read, so no rollout was overwritten. (A loser's version key
    // stays behind unreferenced, by design: versions may exceed 5.)
    let st = fleet_ok(&url, "status", &[]);
    assert!(st.contains("(pointer generation 5)"), "{st}");
    let mut v = object(&m, "current")["version"].as_u64().unwrap();
    let mut seen = Vec::new();
    while v != 1 {
        let obj = object(&m, &format!("versions/v{v:06}.json"));
        let i = models.iter().position(|f| model(Path::new(f)) == obj["model"]).expect("a rolled-out model");
        seen.push(i);
        v = obj["parent"].as_u64().expect("a parent");
        assert!(seen.len() <= 4, "the chain is longer than the rollouts: {seen:?}");
    }
    seen.sort_unstable();
    assert_eq!(seen, vec![0, 1, 2, 3], "each rollout is one version; none lost, none twice");
}
