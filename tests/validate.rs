//! `selfheal validate` checks the models, the scenario and the actuator
//! against each other, as `run` loads them, and names both sides of every
//! mismatch with what to change.

mod common;

use common::selfheal;

fn validate(dir: &std::path::Path, toml: &str) -> (bool, String) {
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, toml).unwrap();
    let out = selfheal(&["validate", "--config", path.to_str().unwrap()]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn glue(levels: &str, default: u32) -> String {
    format!(
        "[source]\nkind = \"http\"\n[actuator]\nkind = \"glue\"\n[[actuator.pipelines]]\nname = \"orders\"\n\
         job_name = \"orders-etl\"\nworker_levels = {levels}\ndefault_workers = {default}\n"
    )
}

#[test]
fn any_four_level_ladder_fits_the_shipped_policy_at_its_base() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = validate(dir.path(), &glue("[2, 4, 8, 16]", 4));
    assert!(ok, "{text}");
    assert!(text.contains("worker levels [2, 4, 8, 16]"), "the sidecar decides with the actuator's ladder: {text}");
}

#[test]
fn a_ladder_of_another_length_or_base_names_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = validate(dir.path(), &glue("[2, 4, 8]", 4));
    assert!(!ok);
    assert!(text.contains("actuator.pipelines \"orders\"") && text.contains("[2, 4, 8]"), "{text}");
    assert!(text.contains("model.policy was trained for 4 levels [5, 10, 20, 40]"), "{text}");
    let (ok, text) = validate(dir.path(), &glue("[2, 4, 8, 16]", 8));
    assert!(!ok && text.contains("default 8 (level 2 of 4)") && text.contains("base level 1"), "{text}");
    let (ok, text) = validate(dir.path(), &glue("[2, 4, 8, 16]", 5));
    assert!(!ok && text.contains("default_workers = 5 is not one of its worker_levels"), "{text}");
}

#[test]
fn a_policy_trained_on_another_shape_needs_its_scenario() {
    let dir = tempfile::tempdir().unwrap();
    // A small policy for a 3-level pipeline.
    let scenario = dir.path().join("small.toml");
    std::fs::write(
        &scenario,
        "name = \"small\"\nhorizon = 60\n[pipeline]\nunit_records = 500\narrivals = 2\ncapacity = [1, 3, 5]\n\
         workers = [2, 4, 8]\nbase_level = 1\nbacklog_limit = 120\nstep_seconds = 60\n[faults]\nrate = 0.05\n\
         [faults.mix]\nstuck_job = 1.0\n",
    )
    .unwrap();
    let policy = dir.path().join("small.json");
    let out = selfheal(&[
        "train",
        "--scenario",
        scenario.to_str().unwrap(),
        "--episodes",
        "200",
        "--encoder",
        "telemetry-v1",
        "--out",
        policy.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = format!("[model]\npolicy = \"{}\"\n", policy.display());
    let (ok, text) = validate(dir.path(), &base);
    assert!(!ok, "the default scenario does not fit a 3-level policy: {text}");
    assert!(text.contains("model.policy") && text.contains("set model.scenario"), "{text}");
    assert!(text.contains("[2, 4, 8]") && text.contains("[5, 10, 20, 40]"), "both ladders named: {text}");
    let (ok, text) = validate(dir.path(), &format!("{base}scenario = \"{}\"\n", scenario.display()));
    assert!(ok, "{text}");
}
