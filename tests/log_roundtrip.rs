//! A log written by a real `selfheal run` is read by `report`, `shadow` and
//! `ope`: the writer and the readers share the schema's record types, and
//! this test holds them to it end to end (issue 17).

mod common;

use common::*;
use selfheal_sidecar::provenance::Record;
use serde_json::Value;
use std::time::Duration;

#[test]
fn report_shadow_and_ope_read_a_log_written_by_selfheal_run() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    // Every window logged (`log_healthy`), as off-policy evaluation needs.
    let cfg = "[daemon]\nlog_healthy = true\n[source]\nkind = \"simulator\"\ntick_ms = 20\n";
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(60), "50 decisions and an outcome in the log", || {
        let recs = d.log().records;
        decisions(&recs).len() >= 50 && !outcomes(&recs).is_empty()
    });
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit status {st}:\n{}", d.stderr_tail());

    let log = d.log();
    assert!(log.skipped.is_empty(), "bad lines after a clean shutdown: {:?}", log.skipped);
    let n = decisions(&log.records).len();
    let pipelines: std::collections::BTreeSet<&str> =
        decisions(&log.records).iter().map(|d| d.pipeline.as_str()).collect();
    let differ = decisions(&log.records).iter().filter(|d| !d.shadow.is_empty() && d.shadow != d.chosen.name()).count();
    let n_outcomes = log.records.iter().filter(|r| matches!(r, Record::Outcome(_))).count();
    assert!(n >= 50, "{n} decisions");
    let path = d.log_path();
    let log_arg = path.to_str().unwrap();

    // shadow: counts every decision, and the differing ones, from the log.
    let out = assert_ok(&selfheal(&["shadow", "--log", log_arg, "--json"]), "selfheal shadow --json");
    let v: Value = serde_json::from_str(&out).expect("shadow --json prints JSON");
    assert_eq!(v["decisions"].as_u64(), Some(n as u64), "{out}");
    assert_eq!(v["differed"].as_u64(), Some(differ as u64), "{out}");

    // report: its live section summarises the same decisions.
    let dir = work.path().join("report");
    let args = ["report", "--log", log_arg, "--seeds", "0..2", "--out", dir.to_str().unwrap()];
    assert_ok(&selfheal(&args), "selfheal report --log");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let live = format!("{n} decisions on {} pipelines", pipelines.len());
    assert!(md.contains("## Live behaviour") && md.contains(&live), "report.md lacks {live:?}:\n{md}");
    let outcome_lines: u64 = md
        .lines()
        .filter_map(|l| l.strip_prefix("- outcome "))
        .map(|l| l.rsplit(": ").next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(outcome_lines > 0 && outcome_lines as usize <= n_outcomes, "{outcome_lines} outcomes of {n_outcomes}");

    // ope: finite estimates over the decisions of the log.
    let args = ["ope", "--log", log_arg, "--horizon", "10", "--resamples", "200", "--json"];
    let out = assert_ok(&selfheal(&args), "selfheal ope --json");
    let r: Value = serde_json::from_str(&out).expect("ope --json prints JSON");
    for k in ["wis", "dr", "behaviour", "direct"] {
        let x = r[k]["value"].as_f64().unwrap_or_else(|| panic!("{k} has no value: {out}"));
        assert!(x.is_finite(), "{k} = {x}: {out}");
    }
}

/// Run a finished command's output check: success, stdout as text.
fn assert_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("utf-8 output")
}
