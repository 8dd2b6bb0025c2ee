//! The field cases of `../shared/field-cases` (small inputs made from public
//! reports of Glue jobs in production), replayed through `selfheal run` as
//! their README describes: the `file` source at `pace = "fast"`, the
//! `dry-run` actuator, act mode, `log_healthy = true`, the shipped models.
//! Each asserts what a user would want, read from the provenance log.

mod common;

use common::decisions;
use selfheal_sidecar::provenance::{read_log, DecisionRecord};
use std::path::Path;
use std::time::Duration;

/// The shared field-case directory (never copied into the repository).
fn case(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/field-cases").join(name);
    assert!(p.exists(), "{} is missing: the tests read ../shared beside the repository", p.display());
    p.canonicalize().unwrap().display().to_string()
}

/// Replay `file` to its end (the daemon stops when a `fast` file source is
/// exhausted) and return every decision and the daemon's stderr.
fn replay(file: &str) -> (Vec<DecisionRecord>, String) {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let config = work.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"file\"\npath = \"{}\"\npace = \"fast\"\n\n[actuator]\nkind = \"dry-run\"\n\n\
             [guard]\nmode = \"act\"\n\n[daemon]\nlog_healthy = true\nlisten = \"127.0.0.1:0\"\n",
            case(file)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::bin())
        .args(["run", "--config"])
        .arg(&config)
        .arg("--state-dir")
        .arg(&state)
        .env("NO_COLOR", "1")
        .current_dir(work.path())
        .output()
        .expect("run selfheal");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "selfheal run failed:\n{stderr}");
    let log = read_log(&state.join("provenance.jsonl")).expect("a provenance log");
    (decisions(&log.records).into_iter().cloned().collect(), stderr)
}

/// No scale-up ran; one escalation says why scaling will not help.
fn assert_escalated_not_scaled(ds: &[DecisionRecord], words: &str) {
    let scaled: Vec<_> =
        ds.iter().filter(|d| d.chosen.name() == "scale_up" && d.verdict == "allowed").map(|d| d.ts_ms).collect();
    assert!(scaled.is_empty(), "scale_up applied alone at {scaled:?}");
    let paged: Vec<_> = ds.iter().filter(|d| d.verdict == "escalated").collect();
    assert!(!paged.is_empty(), "no escalation; verdicts: {:?}", ds.iter().map(|d| &d.verdict).collect::<Vec<_>>());
    let first = paged[0];
    assert!(first.reason.contains(words) && first.reason.contains("will not help"), "reason: {}", first.reason);
}

#[test]
fn driver_oom_is_escalated_with_the_driver_heap_never_scaled() {
    // 21 rows, one a minute: 20 windows close, the last drains at the end.
    let (ds, stderr) = replay("driver-oom.jsonl");
    assert_eq!(ds.len(), 21, "one decision per window");
    assert_escalated_not_scaled(&ds, "the driver is running out of memory");
    // The driver heap is read: the page comes by the time it reaches 0.8
    // (rows 15.. carry 0.30, 0.52, 0.68, 0.81, 0.90, 0.97).
    let paged = ds.iter().find(|d| d.verdict == "escalated").unwrap();
    let onset = ds[15].window.ts_ms;
    let late = (paged.window.ts_ms - onset) / 60_000;
    assert!((0..=3).contains(&late), "paged {late} min after onset");
    assert!(!stderr.contains("unknown metric"), "the driver heap metric is read: {stderr}");
}

#[test]
fn single_reader_executor_oom_is_escalated_never_scaled() {
    let (ds, _) = replay("executor-oom-single-reader.jsonl");
    assert_eq!(ds.len(), 25);
    assert_escalated_not_scaled(&ds, "one executor does all the work");
    // Paged once the heap is near full or the OOM error shows (rows 20..
    // carry one executor; the OOM error metric is 1 from row 22).
    let paged = ds.iter().position(|d| d.verdict == "escalated").unwrap();
    assert!((20..=22).contains(&paged), "paged at row {paged}");
}

#[test]
fn a_count_that_stops_reporting_is_zero_not_carried() {
    let (ds, _) = replay("count-stops-reporting.jsonl");
    assert_eq!(ds.len(), 40);
    // One minute of 300 upstream errors, then the count is simply absent.
    let burst = ds.iter().position(|d| d.window.error_ratio > 0.1).expect("the burst window");
    for d in &ds[burst + 1..] {
        assert!(d.window.error_ratio < 0.01, "error ratio {} carried to {}", d.window.error_ratio, d.ts_ms);
    }
    let acting_late = ds[burst + 3..].iter().filter(|d| d.chosen.name() != "noop").count();
    assert_eq!(acting_late, 0, "nothing to do once the burst is over");
}

#[test]
fn a_glue_job_state_change_event_on_ingest_reaches_the_decision_as_evidence() {
    use common::{Sidecar, Start};
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // The pipeline "orders" runs the Glue job "orders-etl" (the name the event
    // carries); observe mode: nothing is called on AWS.
    let cfg = "[source]\nkind = \"http\"\nwindow_secs = 60\n\
               [actuator]\nkind = \"glue\"\n[[actuator.pipelines]]\nname = \"orders\"\njob_name = \"orders-etl\"\n\
               worker_levels = [2, 4, 8, 16]\ndefault_workers = 4\n\
               [aws]\nregion = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
               [guard]\nmode = \"observe\"\n[daemon]\nlog_healthy = true\n";
    let env = [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &env });
    let sample = |ts: i64| {
        format!(
            r#"{{"ts": {ts}, "pipeline": "orders", "metrics": {{"glue.ALL.jvm.heap.usage": 0.5, "glue.driver.ExecutorAllocationManager.executors.numberAllExecutors": 4}}}}"#
        )
    };
    let event = std::fs::read_to_string(case("glue-job-state-change-failed.json")).unwrap();
    // Samples at 03:24Z and 03:25Z, the event at 03:25Z (folded into the open
    // 03:25 window), then 03:26Z (closes 03:25).
    let body =
        [sample(1_795_404_240_000), sample(1_795_404_300_000), event.trim().to_string(), sample(1_795_404_360_000)]
            .join("\n");
    let r = d.ingest(&body);
    assert_eq!(r.status, 200, "the event is accepted: {}", r.body);
    common::wait_for(Duration::from_secs(20), "two windows decided", || decisions(&d.log().records).len() >= 2);
    d.terminate(Duration::from_secs(20));
    let log = d.log();
    let ds = decisions(&log.records);
    let names: Vec<_> = ds.iter().map(|x| (x.pipeline.clone(), x.window.ts_ms, x.evidence.clone())).collect();
    assert!(ds.iter().all(|x| x.pipeline == "orders"), "the event is filed under the job's pipeline: {names:?}");
    let failed = ds.iter().find(|x| x.window.ts_ms == 1_795_404_300_000).expect("the 03:25 window was decided");
    assert!(
        failed.evidence.iter().any(|e| e == "selfheal.glue.runsFailed.outOfMemory=1"),
        "evidence: {:?}",
        failed.evidence
    );
    let before = ds.iter().find(|x| x.window.ts_ms == 1_795_404_240_000).unwrap();
    assert!(before.evidence.is_empty(), "no evidence before the run failed: {:?}", before.evidence);
}

/// `stuck-only.toml`: the detector never flags a hung job. Fitting says so
/// per fault kind, keeps the figures in the file, and `--strict` refuses.
#[test]
fn fitting_on_a_fault_the_detector_cannot_see_warns_and_strict_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("detector.json");
    let scenario = case("stuck-only.toml");
    let run = |strict: bool| {
        let mut args = vec!["fit-detector", "--scenario", &scenario, "--out", out.to_str().unwrap()];
        if strict {
            args.push("--strict");
        }
        common::selfheal(&args)
    };
    let o = run(false);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let line = stderr.lines().find(|l| l.trim_start().starts_with("stuck_job")).expect("a stuck_job coverage line");
    assert!(line.contains(" 0 of ") && line.contains("(0.0%)"), "{line}");
    assert!(stderr.contains("warning: the detector flags 0 of") && stderr.contains("stuck_job"), "{stderr}");
    let model: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let cov = &model["meta"]["coverage"];
    assert_eq!(cov[0]["kind"], "stuck_job", "{cov}");
    assert_eq!(cov[0]["flagged"], 0);
    assert!(cov[0]["windows"].as_u64().unwrap() > 1000, "{cov}");
    std::fs::remove_file(&out).unwrap();
    let o = run(true);
    assert!(!o.status.success(), "--strict must fail");
    assert!(String::from_utf8_lossy(&o.stderr).contains("blind to stuck_job"));
    assert!(!out.exists(), "nothing written under --strict");
}
