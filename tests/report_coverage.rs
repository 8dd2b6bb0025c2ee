//! `selfheal report` shows the detector's coverage (issue 16 part 5): the
//! share of each fault kind's windows the detector flags, as `fit-detector`
//! wrote it into the detector file, with a warning for a kind never flagged.

use selfheal_detect::telemetry::DetectorModel;
use std::process::Command;

#[test]
fn the_report_shows_the_detector_files_coverage_and_warns_of_a_blind_kind() {
    let dir = tempfile::tempdir().unwrap();
    // The shipped detector with the figures fit-detector records.
    let root = env!("CARGO_MANIFEST_DIR");
    let mut det: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/models/detector.json")).unwrap()).unwrap();
    det["meta"]["coverage"] = serde_json::json!([
        {"kind": "schema_drift", "windows": 120, "flagged": 90},
        {"kind": "stuck_job", "windows": 300, "flagged": 0},
    ]);
    let path = dir.path().join("detector.json");
    std::fs::write(&path, serde_json::to_string(&det).unwrap()).unwrap();
    // The file is a new detector (its fingerprint covers the figures): pair
    // the shipped table with it, as a policy trained on it would be.
    let fingerprint = DetectorModel::from_json(&std::fs::read_to_string(&path).unwrap(), "d").unwrap().fingerprint();
    let mut policy: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{root}/models/policy.json")).unwrap()).unwrap();
    policy["encoder"]["config"]["detector"]["fingerprint"] = fingerprint.into();
    let policy_path = dir.path().join("policy.json");
    std::fs::write(&policy_path, serde_json::to_string(&policy).unwrap()).unwrap();
    let out = dir.path().join("r");
    let run = Command::new(env!("CARGO_BIN_EXE_selfheal"))
        .args(["report", "--seeds", "0..20", "--out", out.to_str().unwrap()])
        .args(["--detector", path.to_str().unwrap(), "--policy", policy_path.to_str().unwrap()])
        .current_dir(root)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("warning: the detector flags none of the 300 stuck_job windows"), "{stderr}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("id=\"coverage-table\""), "no coverage table");
    assert!(html.contains(
        "<tr data-kind=\"schema_drift\"><td class=\"l\">schema_drift</td><td>120</td><td>90</td><td>75.0 %</td>"
    ));
    assert!(html.contains("class=\"warn\"") && html.contains("none of the 300 stuck_job windows"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## Detector coverage") && md.contains("| stuck_job | 300 | 0 | 0.0 % |"), "{md}");
}
