//! End-to-end test of the watchdog against inaction in the sidecar: the real
//! `selfheal run`, a simulated pipeline with a fault that needs action
//! (schema drift never ends by itself), and a policy that is confidently idle
//! everywhere. Nothing but the watchdog can page anyone here, so the page the
//! webhook receives, the `watchdog_escalate` counter in /metrics and the
//! decision record in the provenance log are the watchdog's, and the noop
//! decisions before it show the policy really left the pipeline idle.

mod common;

use common::*;
use selfheal_agent::Cause;
use selfheal_sidecar::provenance::{DecisionRecord, Record};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `[guard.watchdog] windows`: small, so it fires within a second of the fault.
const WINDOWS: usize = 3;
/// Simulated time between two windows of a pipeline (the scenario's step).
const STEP_MS: i64 = 60_000;
const WATCHDOG_ESCALATE: &str = r#"selfheal_policy_overrides_total{cause="watchdog_escalate"}"#;
const GATE_FALLBACK: &str = r#"selfheal_policy_overrides_total{cause="gate_fallback"}"#;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("selfheal-e2e-watchdog-").tempdir().unwrap()
}

/// The shipped policy rewritten to be confidently idle: every state of its
/// encoder (the visited ones and the rest, so no state falls back to an
/// unvisited row whose silence the confidence gate would not trust) has Q 0 for
/// `noop`, -100 for every other action, and 1000 visits of each.
fn idle_policy(dir: &Path) -> PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/policy.json");
    let text = std::fs::read_to_string(&shipped).unwrap_or_else(|e| panic!("read {}: {e}", shipped.display()));
    let mut model: Value = serde_json::from_str(&text).expect("the shipped policy is JSON");
    let actions: Vec<String> = model["actions"]
        .as_array()
        .expect("an `actions` list")
        .iter()
        .map(|a| a.as_str().expect("action names").to_string())
        .collect();
    let noop = actions.iter().position(|a| a == "noop").expect("a noop column");
    let q: Vec<f64> = (0..actions.len()).map(|i| if i == noop { 0.0 } else { -100.0 }).collect();
    let visits = vec![1000u32; actions.len()];
    let num_states = model["num_states"].as_u64().expect("num_states") as usize;
    let mut desc = vec![String::new(); num_states];
    for row in model["states"].as_array().expect("a `states` list") {
        let id = row["id"].as_u64().expect("a state id") as usize;
        desc[id] = row["desc"].as_str().unwrap_or_default().to_string();
    }
    let rows: Vec<Value> = desc
        .into_iter()
        .enumerate()
        .map(|(id, desc)| serde_json::json!({ "id": id, "desc": desc, "visits": visits, "q": q }))
        .collect();
    model["states"] = Value::Array(rows);
    let path = dir.join("idle-policy.json");
    std::fs::write(&path, serde_json::to_string(&model).unwrap()).unwrap();
    // The daemon must accept it as a model file.
    selfheal_agent::store::ModelFile::load(&path).unwrap_or_else(|e| panic!("the idle policy does not load: {e}"));
    path
}

/// Schema drift only: it stalls the pipeline, never ends by itself, and only a
/// schema remap (or a person) fixes it. A long horizon keeps the episode (and
/// so the fault) from being reset under the test.
fn drift_scenario(dir: &Path) -> PathBuf {
    let path = dir.join("schema-drift.toml");
    std::fs::write(
        &path,
        r#"name = "schema-drift"
description = "Schema drift arrives soon and stays until it is remapped"
horizon = 100000

[faults]
rate = 0.5
max_concurrent = 1

[faults.mix]
schema_drift = 1.0
"#,
    )
    .unwrap();
    path
}

/// Generic-format webhook bodies received so far, parsed.
fn received(hook: &Receiver) -> Vec<Value> {
    hook.got.lock().unwrap().iter().filter_map(|(_, _, _, body)| serde_json::from_str(body).ok()).collect()
}

fn is_watchdog_page(v: &Value) -> bool {
    v["detail"]["cause"] == "watchdog_escalate"
}

#[test]
fn a_policy_left_idle_on_a_faulty_pipeline_is_escalated_by_the_watchdog() {
    let started = Instant::now();
    let work = tempdir();
    let state = work.path().join("state");
    let policy = idle_policy(work.path());
    let scenario = drift_scenario(work.path());
    let hook = Receiver::start("/hook");
    let cfg = format!(
        "[daemon]\nlog_healthy = true\n\
         [model]\npolicy = {:?}\nscenario = {:?}\nlearn = false\n\
         [source]\nkind = \"simulator\"\ntick_ms = 50\npipelines = 2\n\
         [actuator]\nkind = \"simulator\"\n\
         [guard]\nmode = \"act\"\n\
         [guard.watchdog]\nwindows = {WINDOWS}\n\
         [notify]\nurl = {:?}\nformat = \"generic\"\ntimeout_ms = 3000\nmax_attempts = 2\nbase_ms = 10\ncap_ms = 20\n",
        policy.display(),
        scenario.display(),
        hook.url
    );
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });

    // Wait (bounded) for a watchdog page at the webhook and its counter in /metrics.
    let timeout = Duration::from_secs(60);
    let wait = Instant::now();
    let (page, body) = loop {
        let body = d.metrics();
        let fired = metric(&body, WATCHDOG_ESCALATE).unwrap_or(0.0);
        if let Some(page) = received(&hook).into_iter().find(is_watchdog_page) {
            if fired >= 1.0 {
                break (page, body);
            }
        }
        if wait.elapsed() > timeout {
            let bodies: Vec<String> = hook.got.lock().unwrap().iter().map(|r| r.3.clone()).collect();
            panic!(
                "timed out after {timeout:?} waiting for a watchdog escalation at the webhook and \
                 {WATCHDOG_ESCALATE} >= 1 in /metrics (it is {fired}); the webhook got {} request(s): {bodies:#?}\n\
                 --- /metrics ---\n{body}\n--- daemon stderr (tail) ---\n{}",
                bodies.len(),
                d.stderr_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let fired_after = wait.elapsed();
    let fired = metric(&body, WATCHDOG_ESCALATE).unwrap();
    // The idle table's silence was trusted everywhere: no override but the watchdog's.
    assert_eq!(metric(&body, GATE_FALLBACK), Some(0.0), "the confidence gate overrode the idle policy:\n{body}");

    // (1) The webhook got the page: the pipeline, the cause and the trail.
    let id = page["id"].as_str().expect("the page names its decision").to_string();
    let pipeline = page["pipeline"].as_str().expect("the page names its pipeline").to_string();
    assert_eq!(page["event"], "selfheal.escalation", "{page:#}");
    let summary = page["summary"].as_str().unwrap_or_default();
    assert!(
        summary.contains("watchdog") && summary.contains(&pipeline),
        "the page's summary names neither the watchdog nor {pipeline}: {summary}"
    );
    let trail = page["detail"]["trail"].as_array().unwrap_or_else(|| panic!("the page has no trail: {page:#}"));
    assert!(trail.len() >= WINDOWS, "the trail has {} entries, fewer than {WINDOWS}: {page:#}", trail.len());
    let (before, last) = trail.split_at(trail.len() - 1);
    assert_eq!(last[0]["chosen"], "escalate", "the trail ends with the page itself: {page:#}");
    for t in &before[before.len() - (WINDOWS - 1)..] {
        assert!(t["chosen"] == "noop" && t["verdict"] == "noop", "not idle before the page: {page:#}");
    }
    {
        let got = hook.got.lock().unwrap();
        let (method, path, _, _) = got
            .iter()
            .find(|(_, _, h, _)| h.iter().any(|(k, v)| k == "idempotency-key" && *v == id))
            .unwrap_or_else(|| panic!("no request with Idempotency-Key {id} at the webhook"));
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/hook"));
    }

    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit status {st} after SIGTERM:\n{}", d.stderr_tail());

    // (3) The provenance log has the watchdog's decision and its delivered escalation.
    let log = d.log();
    assert!(log.skipped.is_empty(), "bad lines after a clean shutdown: {:?}", log.skipped);
    let recs = &log.records;
    let all = decisions(recs);
    let dec = all.iter().find(|r| r.id == id).unwrap_or_else(|| panic!("no decision record {id} in the log"));
    assert_eq!(dec.pipeline, pipeline);
    assert_eq!(dec.cause, Cause::WatchdogEscalate, "{dec:?}");
    assert_eq!((dec.chosen.name(), dec.verdict.as_str(), dec.mode.name()), ("escalate", "escalated", "act"));
    assert!(dec.reason.starts_with("watchdog:"), "reason: {}", dec.reason);
    assert!(dec.reason.contains(&format!("{WINDOWS} consecutive unhealthy windows")), "reason: {}", dec.reason);
    let raw = std::fs::read_to_string(d.log_path()).unwrap();
    let line = raw.lines().find(|l| l.contains(&format!("\"id\":\"{id}\"")) && l.contains("\"kind\":\"decision\""));
    let line = line.unwrap_or_else(|| panic!("no raw decision line for {id}"));
    assert!(line.contains(r#""cause":"watchdog_escalate""#), "{line}");
    assert!(
        recs.iter().any(|r| matches!(r, Record::Escalation(e) if e.id == id && e.delivered)),
        "no delivered escalation record for {id}"
    );
    let in_log = all.iter().filter(|r| r.cause == Cause::WatchdogEscalate).count();
    assert!(in_log as f64 >= fired, "/metrics counted {fired} watchdog escalations, the log has {in_log}");
    for r in all.iter().filter(|r| r.cause == Cause::WatchdogEscalate) {
        assert_eq!((r.chosen.name(), r.verdict.as_str()), ("escalate", "escalated"), "{r:?}");
        assert!(r.reason.starts_with("watchdog:"), "{r:?}");
    }

    // Until the first watchdog page, nothing but the policy's noop was decided
    // on any pipeline.
    let first_page = all.iter().position(|r| r.cause.is_watchdog()).expect("the page is in the log");
    for r in &all[..first_page] {
        assert_eq!(
            (r.chosen.name(), r.verdict.as_str(), r.cause),
            ("noop", "noop", Cause::Policy),
            "{} decided {} ({}, {:?}) before any watchdog page",
            r.pipeline,
            r.chosen,
            r.verdict,
            r.cause
        );
    }

    // (4) Before the pipeline's first watchdog page the policy was idle: every
    // decision of that pipeline was its own noop (every window is logged:
    // log_healthy), the last WINDOWS - 1 of them on the consecutive windows
    // just before the page, where the rule policy would have acted.
    let mine: Vec<&DecisionRecord> = all.iter().copied().filter(|r| r.pipeline == pipeline).collect();
    let first = mine.iter().position(|r| r.cause == Cause::WatchdogEscalate).expect("the page is in the log");
    let idle = &mine[..first];
    let trail = mine.iter().map(|r| format!("{} {} {} {:?}", r.window.ts_ms, r.chosen, r.verdict, r.cause));
    let trail: Vec<String> = trail.collect();
    assert!(idle.len() >= WINDOWS - 1, "only {} decisions before the first page: {trail:#?}", idle.len());
    for r in idle {
        assert_eq!(
            (r.chosen.name(), r.verdict.as_str(), r.cause),
            ("noop", "noop", Cause::Policy),
            "a decision before the first watchdog page was not the policy's noop: {trail:#?}"
        );
    }
    let page_ts = mine[first].window.ts_ms;
    let streak = &idle[idle.len() - (WINDOWS - 1)..];
    for (k, r) in streak.iter().rev().enumerate() {
        assert_eq!(r.window.ts_ms, page_ts - (k as i64 + 1) * STEP_MS, "windows before the page: {trail:#?}");
    }
    assert!(
        streak.iter().any(|r| r.shadow != "noop"),
        "the rule policy would not have acted either before the page, so the pipeline did not need action: {trail:#?}"
    );
    eprintln!(
        "watchdog page {id} on {pipeline} {fired_after:?} after the start; {} decision(s) of {pipeline} before it; \
         {} watchdog page(s) in the log; test took {:?}",
        idle.len(),
        in_log,
        started.elapsed()
    );
}
