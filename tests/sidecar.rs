//! End-to-end tests of the sidecar (issue 7): each starts the real
//! `selfheal run` as a process, talks to it over HTTP and the CLI, stops it
//! with a signal, and reads what it wrote (the provenance log, the Q-table
//! checkpoint, /metrics). Fast simulator ticks keep each test to seconds; one
//! test runs the true no-config default.

mod common;

use common::*;
use selfheal_guard::Mode;
use selfheal_sidecar::provenance::Record;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const SUCCEEDED: &str = r#"selfheal_action_outcomes_total{status="succeeded"}"#;
const FAILED: &str = r#"selfheal_action_outcomes_total{status="failed"}"#;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("selfheal-e2e-").tempdir().unwrap()
}

/// Confidence gate off, so act mode acts on whatever the policy chooses.
const GATE_OFF: &str = "[guard.confidence]\nmin_visits = 0\nmin_lead = 0.0\n";

fn succeeded_count(d: &Sidecar) -> f64 {
    metric(&d.metrics(), SUCCEEDED).unwrap_or(0.0)
}

fn assert_ok(out: &std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_fails(out: &std::process::Output, what: &str) -> String {
    assert!(!out.status.success(), "{what} should fail, but printed:\n{}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The checkpoint exists and loads as a model file.
fn assert_checkpoint_loads(state: &Path) {
    let path = state.join("policy.json");
    assert!(path.exists(), "no Q-table checkpoint at {}", path.display());
    let m = selfheal_agent::store::ModelFile::load(&path)
        .unwrap_or_else(|e| panic!("checkpoint {} does not load: {e}", path.display()));
    assert!(!m.encoder.id.is_empty());
}

/// Ids with a `succeeded` outcome, each checked to be an allowed decision with an ok call.
fn succeeded_ids(recs: &[Record]) -> Vec<String> {
    let allowed: HashSet<&str> =
        decisions(recs).into_iter().filter(|d| d.verdict == "allowed").map(|d| d.id.as_str()).collect();
    let ok_calls: HashSet<&str> = calls(recs).into_iter().filter(|c| c.ok).map(|c| c.id.as_str()).collect();
    let ids: Vec<String> =
        outcomes(recs).into_iter().filter(|o| o.status == "succeeded").map(|o| o.id.clone()).collect();
    for id in &ids {
        assert!(allowed.contains(id.as_str()), "{id} succeeded without an allowed decision");
        assert!(ok_calls.contains(id.as_str()), "{id} succeeded without an ok call record");
    }
    ids
}

// ------------------------------------------------------------------ 1. live healing

/// The true default: no config at all (only --state-dir and --listen), the
/// built-in simulator at 250 ms a step, act mode, the shipped models.
#[test]
fn no_config_run_heals_simulated_faults_and_stops_cleanly_on_sigterm() {
    let work = tempdir();
    let state = work.path().join("state");
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: None, args: &[], env: &[] });
    wait_for(Duration::from_secs(60), "a succeeded action in /metrics (default 250 ms tick)", || {
        succeeded_count(&d) > 0.0
    });
    let body = d.metrics();
    assert!(metric(&body, "selfheal_windows_total").unwrap() > 0.0);
    let asked = Instant::now();
    let st = d.terminate(Duration::from_secs(10 + 5));
    assert!(st.success(), "exit status {st} after SIGTERM:\n{}", d.stderr_tail());
    assert!(asked.elapsed() < Duration::from_secs(10), "shutdown took {:?}, past the 10 s grace", asked.elapsed());
    let log = d.log();
    assert!(log.skipped.is_empty(), "bad lines after a clean shutdown: {:?}", log.skipped);
    let ok = succeeded_ids(&log.records);
    assert!(!ok.is_empty(), "no succeeded outcome in the log, though /metrics counted one");
    assert!(decisions(&log.records).iter().all(|d| d.mode == Mode::Act));
    // Glue's built-ins run as a second shadow by default, on every decision.
    assert!(decisions(&log.records).iter().all(|d| d.glue_shadow.is_some()), "a decision without glue_shadow");
    assert_checkpoint_loads(&state);
    assert!(std::fs::read_to_string(&d.stderr).unwrap().contains("selfheal sidecar stopped"));
}

/// The same demo at a 20 ms tick, then what a human does with its log:
/// promtool on /metrics, `selfheal explain` and `selfheal log` filters.
#[test]
fn fast_demo_heals_then_explain_and_log_tell_the_story() {
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = "[source]\nkind = \"simulator\"\ntick_ms = 20\n";
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &[] });
    // Wait for a success on p1 (the log filter below asks for p1).
    wait_for(Duration::from_secs(45), "an allowed action on p1 that succeeded", || {
        let recs = d.log().records;
        let p1: HashSet<String> = decisions(&recs)
            .into_iter()
            .filter(|d| d.pipeline == "p1" && d.verdict == "allowed")
            .map(|d| d.id.clone())
            .collect();
        outcomes(&recs).iter().any(|o| o.status == "succeeded" && p1.contains(&o.id))
    });
    let body = d.metrics();
    assert!(metric(&body, SUCCEEDED).unwrap() > 0.0, "{body}");
    assert_eq!(metric(&body, r#"selfheal_breaker_state{endpoint="simulator",state="closed"}"#), Some(0.0), "{body}");
    // Every window decided is timed in both stages; the simulated source does not poll.
    let windows = metric(&body, "selfheal_windows_total").unwrap();
    for stage in ["decide", "logged"] {
        let count = metric(&body, &format!("selfheal_decision_seconds_count{{stage=\"{stage}\"}}")).unwrap();
        let inf = metric(&body, &format!("selfheal_decision_seconds_bucket{{stage=\"{stage}\",le=\"+Inf\"}}"));
        assert!(count > 0.0 && count <= windows && inf == Some(count), "{stage}: {count} of {windows}:\n{body}");
    }
    assert_eq!(metric(&body, "selfheal_source_poll_seconds_count"), Some(0.0), "{body}");
    promtool_check(&body);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit status {st}:\n{}", d.stderr_tail());
    assert_checkpoint_loads(&state);

    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let ok: HashSet<String> = succeeded_ids(recs).into_iter().collect();
    // An action still in flight when its pipeline's next window arrives teaches
    // nothing (no reward record), so prefer a decision whose reward was logged.
    let rewarded: HashSet<&str> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Reward(r) => Some(r.id.as_str()),
            _ => None,
        })
        .collect();
    let candidates: Vec<_> = decisions(recs)
        .into_iter()
        .filter(|d| d.pipeline == "p1" && d.verdict == "allowed" && ok.contains(&d.id))
        .collect();
    let dec = *candidates
        .iter()
        .find(|d| rewarded.contains(d.id.as_str()))
        .or(candidates.first())
        .expect("an allowed, succeeded decision on p1");
    let has_reward = rewarded.contains(dec.id.as_str());
    let log_path = d.log_path();
    let log_arg = log_path.to_str().unwrap();

    // 11a. explain prints the chain.
    let text = assert_ok(&selfheal(&["explain", &dec.id, "--log", log_arg]), "selfheal explain");
    for want in [
        format!("decision {} on pipeline p1", dec.id),
        "window starting".into(),
        "anomaly score".into(),
        format!("state {}:", dec.state),
        "Q values, best first".into(),
        format!("  {:<20}", dec.chosen),
        "← chosen".into(),
        format!("chosen: {}", dec.chosen),
        "rules would have chosen:".into(),
        "guardrails: allowed".into(),
        "call: simulator attempt 1: ok".into(),
        "outcome: succeeded".into(),
    ] {
        assert!(text.contains(&want), "explain lacks {want:?}:\n{text}");
    }
    assert_eq!(text.contains("reward:"), has_reward, "the reward and Q update, if logged, are told:\n{text}");
    let err = assert_fails(&selfheal(&["explain", "no-such-id", "--log", log_arg]), "explain of an unknown id");
    assert!(err.contains("no decision with id"), "{err}");

    // 11b. log filters by verdict and pipeline.
    let json = assert_ok(
        &selfheal(&["log", "--log", log_arg, "--verdict", "allowed", "--pipeline", "p1", "--json"]),
        "selfheal log --json",
    );
    let got: Vec<Record> = json.lines().map(|l| serde_json::from_str(l).expect("a record per line")).collect();
    let want_ids: HashSet<&str> = decisions(recs)
        .into_iter()
        .filter(|d| d.pipeline == "p1" && d.verdict == "allowed")
        .map(|d| d.id.as_str())
        .collect();
    let got_ids: HashSet<&str> = decisions(&got).into_iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got_ids, want_ids, "log --verdict allowed --pipeline p1 lists other decisions");
    assert!(got.iter().all(|r| want_ids.contains(r.id())), "a record of another decision slipped through");
    let want_n = recs.iter().filter(|r| want_ids.contains(r.id())).count();
    assert_eq!(got.len(), want_n, "records of the filtered decisions are missing");
    assert!(
        got.iter().any(|r| matches!(r, Record::Outcome(o) if o.status == "succeeded")),
        "the filtered decisions' outcomes should follow them"
    );
    let text = assert_ok(
        &selfheal(&["log", "--log", log_arg, "--verdict", "allowed", "--pipeline", "p1"]),
        "selfheal log (text)",
    );
    assert_eq!(text.lines().count(), got.len());
    assert!(text.contains(&dec.id) && !text.contains(" p2 ") && !text.contains(" p3 "), "{text}");
}

/// A tiny `log_max_bytes` rotates the provenance log many times; `explain`
/// finds a decision in the oldest segment and `log` lists every segment's records.
#[test]
fn a_rotated_log_is_read_across_its_segments() {
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = "[daemon]\nlog_healthy = true\nlog_max_bytes = 4096\nlog_keep = 1000\n\
               [source]\nkind = \"simulator\"\ntick_ms = 20\n";
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &[] });
    let segs = |state: &Path| selfheal_sidecar::provenance::segments(&state.join("provenance.jsonl")).unwrap();
    wait_for(Duration::from_secs(45), "four rotated segments", || segs(&state).len() >= 5);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit status {st}:\n{}", d.stderr_tail());

    let files = segs(&state);
    let names: Vec<String> = files.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names[0], "provenance.000001.jsonl", "{names:?}");
    assert_eq!(names.last().unwrap(), "provenance.jsonl", "{names:?}");
    let mut per_file = 0;
    for f in &files[..files.len() - 1] {
        let len = std::fs::metadata(f).unwrap().len();
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.ends_with('\n'), "{} ends mid-record", f.display());
        // Rotated at the first record boundary at or past 4096 bytes.
        let last_line = text.trim_end().rsplit('\n').next().unwrap().len() as u64 + 1;
        assert!(len >= 4096 && len - last_line < 4096, "{}: {len} bytes", f.display());
        per_file += text.lines().count();
    }
    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let active = std::fs::read_to_string(files.last().unwrap()).unwrap().lines().count();
    assert_eq!(log.records.len(), per_file + active, "read_log misses a segment's records");

    // explain: a decision whose record lives in the oldest segment.
    let oldest = std::fs::read_to_string(&files[0]).unwrap();
    let first: Record = serde_json::from_str(oldest.lines().next().unwrap()).unwrap();
    let Record::Decision(dec) = first else { panic!("the log does not start with a decision: {first:?}") };
    let log_path = d.log_path();
    let log_arg = log_path.to_str().unwrap();
    let text = assert_ok(&selfheal(&["explain", &dec.id, "--log", log_arg]), "selfheal explain (oldest segment)");
    assert!(text.contains(&format!("decision {} on pipeline {}", dec.id, dec.pipeline)), "{text}");

    // log: every record of every segment, in order.
    let json = assert_ok(&selfheal(&["log", "--log", log_arg, "--json"]), "selfheal log --json");
    let got: Vec<Record> = json.lines().map(|l| serde_json::from_str(l).expect("a record per line")).collect();
    assert_eq!(got, log.records, "selfheal log does not list every segment's records in order");
    // shadow (the review readers) counts decisions from every segment, too.
    let n = decisions(&log.records).len();
    let out = assert_ok(&selfheal(&["shadow", "--log", log_arg, "--json"]), "selfheal shadow --json");
    let v: Value = serde_json::from_str(&out).expect("shadow --json prints JSON");
    assert_eq!(v["decisions"].as_u64(), Some(n as u64), "shadow does not count all {n} decisions:\n{out}");
}

// ------------------------------------------------------------------ 2. recommend mode

#[test]
fn recommend_mode_runs_only_approved_proposals_and_never_expired_ones() {
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = "[source]\nkind = \"simulator\"\ntick_ms = 20\n\
               [guard]\napproval_ttl_secs = 2\n\
               [guard.budget]\nactions_per_hour = 1000\ncooldown_secs = 0\nblast_radius = 10\n";
    let mut d = Sidecar::start(Start {
        work: work.path(),
        state: &state,
        config: Some(cfg),
        args: &["--mode", "recommend"],
        env: &[],
    });
    // Proposals appear; some expire before anyone answers; nothing has run.
    wait_for(Duration::from_secs(30), "a proposal in GET /approvals", || !d.approvals().is_empty());
    wait_for(Duration::from_secs(30), "an expired proposal", || {
        outcomes(&d.log().records).iter().any(|o| o.status == "expired")
    });
    let before = d.log().records;
    assert!(calls(&before).is_empty(), "calls before any approval: {:?}", calls(&before));
    assert!(outcomes(&before).iter().all(|o| o.status == "expired"), "{:?}", outcomes(&before));
    assert!(decisions(&before).iter().all(|d| d.mode == Mode::Recommend && d.verdict != "allowed"));
    assert!(decisions(&before).iter().any(|d| d.verdict == "proposed"));
    assert_eq!(metric(&d.metrics(), SUCCEEDED), None, "an action succeeded before any approval");

    // A fresh proposal (at least 1.5 s of its 2 s left) not answered yet.
    let mut used: HashSet<String> = HashSet::new();
    let mut fresh = |d: &Sidecar| {
        let mut pick = None;
        wait_for(Duration::from_secs(20), "a fresh proposal", || {
            let now = now_ms();
            pick = d
                .approvals()
                .into_iter()
                .filter(|p| p.1 - now >= 1500 && !used.contains(&p.0))
                .max_by_key(|p| p.1)
                .map(|p| p.0);
            pick.is_some()
        });
        let id = pick.unwrap();
        used.insert(id.clone());
        id
    };
    let by_cli = fresh(&d);
    let out = assert_ok(&d.client(&["approve", &by_cli]), "selfheal approve");
    assert!(out.contains("approved: running"), "{out}");
    let by_http = fresh(&d);
    let r = d.post(&format!("/approvals/{by_http}"), r#"{"decision":"approve"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let rejected = fresh(&d);
    let out = assert_ok(&d.client(&["reject", &rejected]), "selfheal reject");
    assert!(out.contains("rejected"), "{out}");
    // Answering twice is refused.
    let r = d.post(&format!("/approvals/{rejected}"), r#"{"decision":"approve"}"#);
    assert_eq!(r.status, 409, "{}", r.body);

    // Let others expire, then try to approve an expired one.
    let start = now_ms();
    let mut expired = String::new();
    wait_for(Duration::from_secs(20), "a proposal made after the answers to expire", || {
        let recs = d.log().records;
        let late: HashSet<&str> =
            decisions(&recs).into_iter().filter(|d| d.ts_ms > start).map(|d| d.id.as_str()).collect();
        match outcomes(&recs).into_iter().find(|o| o.status == "expired" && late.contains(o.id.as_str())) {
            Some(o) => {
                expired = o.id.clone();
                true
            }
            None => false,
        }
    });
    let r = d.post(&format!("/approvals/{expired}"), r#"{"decision":"approve"}"#);
    assert_eq!(r.status, 409, "approving expired {expired}: {}", r.body);
    assert!(r.body.contains("expired"), "{}", r.body);
    let err = assert_fails(&d.client(&["approve", &expired]), "selfheal approve of an expired proposal");
    assert!(err.contains("409"), "{err}");
    let r = d.post("/approvals/no-such-id", r#"{"decision":"approve"}"#);
    assert_eq!(r.status, 404, "{}", r.body);

    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let status = outcome_of(recs);
    let called: HashSet<&str> = calls(recs).into_iter().map(|c| c.id.as_str()).collect();
    // Who answered: what the client says, and the id of the token it proved.
    let tok = format!("(token {})", selfheal_sidecar::auth::token_id(common::TEST_TOKEN));
    for (id, by) in [(&by_cli, format!("cli {tok}")), (&by_http, format!("http {tok}"))] {
        assert!(
            recs.iter().any(|r| matches!(r, Record::Approval(a) if &a.id == id && a.approved && a.by == by)),
            "no approval record by {by} for {id}"
        );
        assert!(called.contains(id.as_str()), "approved {id} has no call record");
        assert_eq!(status.get(id).map(String::as_str), Some("succeeded"), "approved {id}");
        let dec = decisions(recs).into_iter().find(|d| &d.id == id).expect("its decision");
        assert_eq!((dec.verdict.as_str(), dec.mode.name()), ("proposed", "recommend"));
    }
    assert!(recs
        .iter()
        .any(|r| matches!(r, Record::Approval(a) if a.id == rejected && !a.approved && a.by == format!("cli {tok}"))));
    assert_eq!(status.get(&rejected).map(String::as_str), Some("rejected"));
    // Nothing but the two approved proposals ever ran.
    let expected: HashSet<&str> = [by_cli.as_str(), by_http.as_str()].into();
    assert_eq!(called, expected, "calls of proposals nobody approved");
    let expired_ids: Vec<&String> = status.iter().filter(|(_, s)| *s == "expired").map(|(id, _)| id).collect();
    assert!(expired_ids.len() >= 2, "{expired_ids:?}");
    assert!(expired_ids.contains(&&expired));
    assert!(recs.iter().any(|r| matches!(r, Record::Approval(a) if a.id == expired && a.by == "expiry")));
    assert!(outcomes(recs).iter().filter(|o| o.status == "succeeded").count() == 2, "{:?}", outcomes(recs));
}

// ------------------------------------------------------------------ 3. budget, cooldown, kill switch

/// Keys of the side-effect file, each mapped to its decision's wall time, and
/// the log read after the file (a decision is durable before its action runs,
/// so every key read has its decision in a log read later).
fn applied_at(side: &Path, d: &Sidecar) -> (Vec<(String, i64)>, Vec<Record>) {
    let applied = lines(side);
    let recs = d.log().records;
    let by_key: HashMap<&str, i64> =
        decisions(&recs).into_iter().filter_map(|d| d.idempotency_key.as_deref().map(|k| (k, d.ts_ms))).collect();
    let at = applied
        .into_iter()
        .map(|k| {
            let t = *by_key.get(k.as_str()).unwrap_or_else(|| panic!("applied key {k} has no decision in the log"));
            (k, t)
        })
        .collect();
    (at, recs)
}

fn allowed_after(recs: &[Record], t: i64) -> Vec<String> {
    decisions(recs).into_iter().filter(|d| d.ts_ms > t && d.verdict == "allowed").map(|d| d.id.clone()).collect()
}

#[test]
fn budget_cooldown_and_kill_switch_hold() {
    let work = tempdir();
    let state = work.path().join("state");
    let scenario = fault_heavy_scenario(work.path());
    let side = work.path().join("applied.txt");
    let sh = script(work.path(), "act.sh", "cat > /dev/null\necho \"$SELFHEAL_IDEMPOTENCY_KEY\" >> \"$1\"\n");
    let cfg = format!(
        "[model]\nscenario = {:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 3\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}, {:?}]\n\
         [guard]\nmode = \"act\"\n{GATE_OFF}\
         [guard.budget]\nactions_per_hour = 3\ncooldown_secs = 600\nblast_radius = 3\n",
        scenario.display(),
        sh.display(),
        side.display()
    );
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "4 actions and denials by budget and by cooldown", || {
        let recs = d.log().records;
        let denied: Vec<String> =
            decisions(&recs).into_iter().filter(|d| d.verdict == "denied").map(|d| d.reason.clone()).collect();
        lines(&side).len() >= 4
            && denied.iter().any(|r| r.starts_with("budget:"))
            && denied.iter().any(|r| r.starts_with("cooldown:"))
    });

    // Pause from the CLI: nothing is allowed after the acknowledgement.
    let out = assert_ok(&d.client(&["pause", "--reason", "e2e pause"]), "selfheal pause");
    assert!(out.contains("paused"), "{out}");
    let t1 = now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(metric(&d.metrics(), "selfheal_paused"), Some(1.0));
    let (applied, recs) = applied_at(&side, &d);
    assert_eq!(allowed_after(&recs, t1), Vec::<String>::new(), "allowed while paused");
    assert!(
        decisions(&recs).iter().any(|d| d.ts_ms > t1 && d.verdict == "paused" && d.reason.contains("e2e pause")),
        "no paused decision after the pause"
    );
    for (k, t) in applied {
        assert!(t <= t1, "action {k} decided at {t}, after the pause at {t1}");
    }

    // Resume over HTTP: actions run again.
    let r = d.post("/resume", "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let t2 = now_ms();
    wait_for(Duration::from_secs(15), "an action after the resume", || {
        applied_at(&side, &d).0.iter().any(|(_, t)| *t > t2)
    });

    // The pause file pauses too, and resume is refused while it exists.
    std::fs::write(state.join("PAUSE"), "maintenance\n").unwrap();
    wait_for(Duration::from_secs(5), "the pause file to pause", || {
        metric(&d.metrics(), "selfheal_paused") == Some(1.0)
    });
    let t3 = now_ms();
    let err = assert_fails(&d.client(&["resume"]), "selfheal resume while the pause file exists");
    assert!(err.contains("409"), "{err}");
    let r = d.post("/resume", "{}");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("PAUSE"), "{}", r.body);
    std::thread::sleep(Duration::from_millis(1200));
    let (applied, recs) = applied_at(&side, &d);
    assert_eq!(allowed_after(&recs, t3), Vec::<String>::new(), "allowed while the pause file exists");
    assert!(decisions(&recs).iter().any(|d| d.ts_ms > t3 && d.verdict == "paused" && d.reason.contains("pause file")));
    for (k, t) in applied {
        assert!(t <= t3, "action {k} decided at {t}, after the pause file at {t3}");
    }

    // Remove it, resume: actions run again.
    std::fs::remove_file(state.join("PAUSE")).unwrap();
    assert_ok(&d.client(&["resume"]), "selfheal resume");
    let t4 = now_ms();
    wait_for(Duration::from_secs(15), "an action after the second resume", || {
        applied_at(&side, &d).0.iter().any(|(_, t)| *t > t4)
    });
    assert_eq!(metric(&d.metrics(), "selfheal_paused"), Some(0.0));

    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let allowed: Vec<_> = decisions(recs).into_iter().filter(|d| d.verdict == "allowed").collect();
    assert!(allowed.len() >= 6, "only {} allowed decisions", allowed.len());
    // The hourly cap, on telemetry time: at most 3 starts in any hour.
    let mut ts: Vec<i64> = allowed.iter().map(|d| d.window.ts_ms).collect();
    ts.sort();
    for (i, t) in ts.iter().enumerate() {
        let in_hour = ts[i..].iter().take_while(|u| **u - t < 3_600_000).count();
        assert!(in_hour <= 3, "{in_hour} actions allowed within an hour of telemetry time from {t}: {ts:?}");
    }
    // The cooldown: the same action on the same pipeline at least 600 s apart.
    let mut last: HashMap<(&str, &str), i64> = HashMap::new();
    for d in &allowed {
        if let Some(prev) = last.insert((d.pipeline.as_str(), d.chosen.name()), d.window.ts_ms) {
            assert!(
                d.window.ts_ms - prev >= 600_000,
                "{} on {} allowed {} ms of telemetry time after the last",
                d.chosen,
                d.pipeline,
                d.window.ts_ms - prev
            );
        }
    }
    // Every allowed action ran exactly once, and nothing else ran.
    let applied = lines(&side);
    let distinct: HashSet<&String> = applied.iter().collect();
    assert_eq!(distinct.len(), applied.len(), "an action was applied twice");
    let keys: HashSet<String> = allowed.iter().map(|d| d.idempotency_key.clone().expect("a key")).collect();
    assert_eq!(distinct, keys.iter().collect(), "applied keys differ from allowed decisions");
    let status = outcome_of(recs);
    assert!(allowed.iter().all(|d| status.get(&d.id).map(String::as_str) == Some("succeeded")));
}

// ------------------------------------------------------------------ 4. breaker

#[test]
fn breaker_opens_short_circuits_half_opens_and_recovers() {
    let work = tempdir();
    let state = work.path().join("state");
    let scenario = fault_heavy_scenario(work.path());
    let dir = work.path();
    let flag = dir.join("FAIL");
    std::fs::write(&flag, "").unwrap();
    let sh = script(
        dir,
        "act.sh",
        "cat > /dev/null\necho \"$SELFHEAL_IDEMPOTENCY_KEY\" >> \"$1/invocations.txt\"\n\
         if [ -e \"$1/FAIL\" ]; then echo 'failing on purpose' >&2; exit 1; fi\necho applied\n",
    );
    let cfg = format!(
        "[model]\nscenario = {:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 40\npipelines = 2\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}, {:?}]\n\
         [guard]\nmode = \"act\"\nbulkhead = 8\n{GATE_OFF}\
         [guard.budget]\nactions_per_hour = 100000\ncooldown_secs = 120\nblast_radius = 10\n\
         [guard.breaker]\nsliding_window_size = 4\nminimum_number_of_calls = 2\n\
         wait_duration_in_open_ms = 1500\npermitted_calls_in_half_open = 1\n\
         [guard.retry]\nmax_attempts = 1\n",
        scenario.display(),
        sh.display(),
        dir.display()
    );
    let mut d = Sidecar::start(Start { work: dir, state: &state, config: Some(&cfg), args: &[], env: &[] });
    let open = r#"selfheal_breaker_state{endpoint="command:default",state="open"}"#;
    let closed = r#"selfheal_breaker_state{endpoint="command:default",state="closed"}"#;
    let rejected = r#"selfheal_breaker_rejected_total{endpoint="command:default"}"#;
    wait_for(Duration::from_secs(20), "the breaker to open", || metric(&d.metrics(), open) == Some(1.0));
    let body = d.metrics();
    promtool_check(&body);
    // Stay failing long enough for a half-open trial that fails and re-opens it.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(metric(&d.metrics(), rejected).unwrap_or(0.0) > 0.0, "no call was short-circuited");
    std::fs::remove_file(&flag).unwrap();
    let t_fix = now_ms();
    wait_for(Duration::from_secs(15), "the breaker to close again", || metric(&d.metrics(), closed) == Some(0.0));
    wait_for(Duration::from_secs(15), "a succeeded action after recovery", || succeeded_count(&d) > 0.0);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let all = calls(recs);
    let short = |c: &&selfheal_sidecar::provenance::CallRecord| {
        c.error.as_deref().is_some_and(|e| e.contains("circuit breaker"))
    };
    assert!(all.iter().all(|c| c.endpoint == "command:default" && c.attempt == 1));
    assert!(!all.iter().any(|c| c.error.as_deref().is_some_and(|e| e.contains("bulkhead"))));
    let ran: Vec<_> = all.iter().filter(|c| !short(c)).collect();
    let skipped: Vec<_> = all.iter().filter(|c| short(c)).collect();
    assert!(!skipped.is_empty(), "no short-circuited call in the log");
    // The command ran exactly for the calls the breaker let through.
    let invoked = lines(&dir.join("invocations.txt"));
    assert_eq!(invoked.len(), ran.len(), "command invocations vs calls let through");
    let invoked: HashSet<&String> = invoked.iter().collect();
    for c in &skipped {
        assert!(!invoked.contains(&c.idempotency_key), "short-circuited {} ran the command", c.id);
    }
    // Half-open: after the first rejection, a trial call reaches the failing
    // command (while the flag is still there) and is followed by rejections again.
    let first_reject = all.iter().position(short).unwrap();
    let trial = all[first_reject..]
        .iter()
        .position(|c| !short(c) && !c.ok && c.ts_ms < t_fix)
        .map(|i| i + first_reject)
        .expect("a half-open trial call while the endpoint still failed");
    assert!(all[trial].error.as_deref().unwrap().contains("exit 1"), "{:?}", all[trial]);
    assert!(all[trial..].iter().any(short), "the failed trial did not re-open the breaker");
    // Recovery: successful calls after the fix, and their outcomes.
    assert!(all.iter().any(|c| c.ok && c.ts_ms > t_fix), "no ok call after the fix");
    let status = outcome_of(recs);
    for c in &skipped {
        assert_eq!(status.get(&c.id).map(String::as_str), Some("failed"), "short-circuited {}", c.id);
    }
    assert!(status.values().any(|s| s == "succeeded"));
}

// ------------------------------------------------------------------ 5. timeout + retry, applied once

#[test]
fn an_action_retried_after_a_timeout_is_applied_once() {
    let work = tempdir();
    let state = work.path().join("state");
    let scenario = fault_heavy_scenario(work.path());
    let dir = work.path();
    let sh = script(
        dir,
        "act.sh",
        r#"input=$(cat)
key="$SELFHEAL_IDEMPOTENCY_KEY"
echo "$key" >> "$1/invocations.txt"
if grep -qxF -- "$key" "$1/applied.txt" 2>/dev/null; then echo "already applied"; exit 0; fi
echo "$key" >> "$1/applied.txt"
case "$input" in *'"attempt":1}'*) sleep 5 ;; esac
echo applied
"#,
    );
    let cfg = format!(
        "[model]\nscenario = {:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 50\npipelines = 1\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}, {:?}]\n\
         [guard]\nmode = \"act\"\n{GATE_OFF}\
         [guard.budget]\nactions_per_hour = 2\ncooldown_secs = 0\nblast_radius = 1\n\
         [guard.breaker]\nfailure_rate_threshold = 100.0\n\
         [guard.retry]\nmax_attempts = 3\nbase_ms = 50\ncap_ms = 100\n\
         [guard.timeout]\ninitial_ms = 1000\nmin_ms = 1000\nmax_ms = 1000\n",
        scenario.display(),
        sh.display(),
        dir.display()
    );
    let mut d = Sidecar::start(Start { work: dir, state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "3 succeeded actions", || succeeded_count(&d) >= 3.0);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let applied = lines(&dir.join("applied.txt"));
    let distinct: HashSet<&String> = applied.iter().collect();
    assert_eq!(distinct.len(), applied.len(), "a key was applied twice: {applied:?}");
    let allowed: Vec<_> = decisions(recs).into_iter().filter(|d| d.verdict == "allowed").collect();
    assert!(allowed.len() >= 3);
    let status = outcome_of(recs);
    let mut by_id: BTreeMap<&str, Vec<&selfheal_sidecar::provenance::CallRecord>> = BTreeMap::new();
    for c in calls(recs) {
        by_id.entry(c.id.as_str()).or_default().push(c);
    }
    for dec in &allowed {
        let key = dec.idempotency_key.as_deref().expect("an allowed decision has a key");
        assert_eq!(applied.iter().filter(|k| *k == key).count(), 1, "{key} not applied exactly once");
        assert_eq!(status.get(&dec.id).map(String::as_str), Some("succeeded"), "{}", dec.id);
        let mut cs = by_id.remove(dec.id.as_str()).expect("call records");
        cs.sort_by_key(|c| c.attempt);
        assert_eq!(cs.len(), 2, "{}: {cs:?}", dec.id);
        assert!(cs.iter().all(|c| c.idempotency_key == key), "every attempt carries the same key");
        assert_eq!((cs[0].attempt, cs[0].ok), (1, false));
        assert!(cs[0].error.as_deref().unwrap().contains("timed out after 1000 ms"), "{:?}", cs[0]);
        assert_eq!((cs[1].attempt, cs[1].ok), (2, true));
        let detail = outcomes(recs).into_iter().find(|o| o.id == dec.id).unwrap().detail.clone();
        assert!(detail.contains("applied after 2 attempt(s)"), "{detail}");
    }
    assert!(by_id.is_empty(), "calls without an allowed decision: {by_id:?}");
    assert_eq!(distinct.len(), allowed.len());
    assert_eq!(lines(&dir.join("invocations.txt")).len(), 2 * allowed.len(), "one timed-out and one retried run each");
}

// ------------------------------------------------------------------ 6 + 8. failures, escalations, webhook

struct FailRun {
    exit: i32,
    max_attempts: u32,
    format: &'static str,
}

fn failing_run(run: &FailRun) {
    let work = tempdir();
    let state = work.path().join("state");
    let scenario = fault_heavy_scenario(work.path());
    let hook = Receiver::start("/hook");
    let sh = script(work.path(), "act.sh", &format!("cat > /dev/null\necho 'nope' >&2\nexit {}\n", run.exit));
    let cfg = format!(
        "[model]\nscenario = {:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 2\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}]\n\
         [guard]\nmode = \"act\"\n{GATE_OFF}\
         [guard.budget]\nactions_per_hour = 6\ncooldown_secs = 0\nblast_radius = 10\n\
         [guard.breaker]\nfailure_rate_threshold = 100.0\nsliding_window_size = 100\nminimum_number_of_calls = 100\n\
         [guard.retry]\nmax_attempts = {}\nbase_ms = 10\ncap_ms = 20\n\
         [notify]\nurl = {:?}\nformat = {:?}\ntimeout_ms = 3000\nmax_attempts = 2\nbase_ms = 10\ncap_ms = 20\n",
        scenario.display(),
        sh.display(),
        run.max_attempts,
        hook.url,
        run.format
    );
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "4 failed actions and 4 delivered escalations", || {
        let m = d.metrics();
        metric(&m, FAILED).unwrap_or(0.0) >= 4.0
            && metric(&m, r#"selfheal_escalations_total{delivered="true"}"#).unwrap_or(0.0) >= 4.0
    });
    let body = d.metrics();
    assert_eq!(metric(&body, SUCCEEDED), None, "a failing command counted as a success:\n{body}");
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let log = d.log();
    assert!(log.skipped.is_empty(), "{:?}", log.skipped);
    let recs = &log.records;
    let status = outcome_of(recs);
    assert!(!status.values().any(|s| s == "succeeded"), "a failed action logged as a success");
    let escalated: HashMap<&str, bool> = recs
        .iter()
        .filter_map(|r| match r {
            Record::Escalation(e) => Some((e.id.as_str(), e.delivered)),
            _ => None,
        })
        .collect();
    let allowed: Vec<_> = decisions(recs).into_iter().filter(|d| d.verdict == "allowed").collect();
    assert!(allowed.len() >= 4);
    let cs = calls(recs);
    for dec in &allowed {
        // Actions still in flight at shutdown end as cancelled; every other one as failed.
        let s = status.get(&dec.id).map(String::as_str);
        if s == Some("cancelled") {
            continue;
        }
        assert_eq!(s, Some("failed"), "{}", dec.id);
        assert_eq!(
            escalated.get(dec.id.as_str()),
            Some(&true),
            "{} failed without a delivered escalation: {:#?}",
            dec.id,
            recs.iter().filter(|r| r.id() == dec.id).map(selfheal_sidecar::provenance::one_line).collect::<Vec<_>>()
        );
        let mine: Vec<_> = cs.iter().filter(|c| c.id == dec.id).collect();
        assert_eq!(mine.len() as u32, run.max_attempts, "{}: {mine:?}", dec.id);
        for c in &mine {
            assert!(!c.ok);
            assert!(c.error.as_deref().unwrap().contains(&format!("exit {}", run.exit)), "{c:?}");
        }
        let detail = &outcomes(recs).into_iter().find(|o| o.id == dec.id).unwrap().detail;
        assert!(detail.contains(&format!("failed after {} attempt(s)", run.max_attempts)), "{detail}");
    }

    // 8. The receiver got each delivered escalation, with its id as Idempotency-Key.
    let got = hook.got.lock().unwrap().clone();
    let delivered: Vec<&str> = escalated.iter().filter(|(_, ok)| **ok).map(|(id, _)| *id).collect();
    assert!(delivered.len() >= 4);
    for id in delivered {
        let post = got
            .iter()
            .find(|(_, _, h, _)| h.iter().any(|(k, v)| k == "idempotency-key" && v == id))
            .unwrap_or_else(|| panic!("the webhook never got escalation {id}; it got {got:?}"));
        let (method, path, headers, body) = post;
        assert_eq!((method.as_str(), path.as_str()), ("POST", "/hook"));
        assert!(headers.iter().any(|(k, v)| k == "content-type" && v.contains("application/json")), "{headers:?}");
        assert!(body.contains(id), "body of {id} does not name it: {body}");
        let v: Value = serde_json::from_str(body).expect("JSON body");
        match run.format {
            "generic" => {
                assert_eq!(v["event"], "selfheal.escalation", "{v}");
                assert_eq!(v["id"], id, "{v}");
            }
            _ => assert!(v["text"].as_str().unwrap().contains(id), "{v}"),
        }
    }
}

#[test]
fn a_failed_action_is_never_a_success_and_escalates_to_a_generic_webhook() {
    failing_run(&FailRun { exit: 1, max_attempts: 1, format: "generic" });
}

#[test]
fn transient_failures_are_retried_then_fail_and_escalate_to_a_slack_webhook() {
    failing_run(&FailRun { exit: 75, max_attempts: 2, format: "slack" });
}

// ------------------------------------------------------------------ 7. ingest

fn sample(ts: i64, latency: f64) -> String {
    format!(
        r#"{{"ts": {ts}, "pipeline": "orders", "metrics": {{"pipeline.latency.p95": {latency}, "pipeline.backlog.records": 3}}}}"#
    )
}

#[test]
fn ingest_names_malformed_lines_and_lands_the_valid_ones() {
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = "[source]\nkind = \"http\"\ntoken_env = \"SELFHEAL_E2E_TOKEN\"\nwindow_secs = 60\n\
               [actuator]\nkind = \"dry-run\"\n";
    let mut d = Sidecar::start(Start {
        work: work.path(),
        state: &state,
        config: Some(cfg),
        args: &[],
        env: &[("SELFHEAL_E2E_TOKEN", "s3cret-token")],
    });
    let t0 = 1_795_402_800_000i64; // 2026-11-23T03:00:00Z, a minute boundary
    assert_eq!(metric(&d.metrics(), "selfheal_windows_total"), Some(0.0));
    let body = [
        sample(t0, 10.0),                                                          // 1 ok
        sample(t0 + 60_000, 11.0),                                                 // 2 ok: closes window t0
        "{\"ts\": 1795402860000, \"pipeline\": \"orders\", \"metrics\": {".into(), // 3 bad JSON
        format!(r#"{{"ts": {}, "pipeline": "orders", "metrics": {{"no.such.metric": 1}}}}"#, t0 + 90_000), // 4
        sample(t0 + 120_000, 12.0),                                                // 5 ok: closes t0+60
        sample(t0 + 30_000, 13.0),                                                 // 6 late
        String::new(),                                                             // 7 blank: skipped
        sample(t0 + 180_000, 14.0),                                                // 8 ok: closes t0+120
    ]
    .join("\n");
    // /ingest is on the control listener; the legacy `[source] token_env`
    // token still opens it, and only it.
    let post = |headers: &[(&str, &str)]| http(&d.control, "POST", "/ingest", headers, &body).unwrap();
    let r = post(&[]);
    assert_eq!(r.status, 401, "no token: {}", r.body);
    let r = post(&[("Authorization", "Bearer wrong")]);
    assert_eq!(r.status, 403, "wrong token: {}", r.body);
    let r = http(&d.addr, "POST", "/ingest", &[("Authorization", "Bearer s3cret-token")], &body).unwrap();
    assert_eq!(r.status, 404, "not on the metrics listener: {}", r.body);
    let r = http(&d.control, "POST", "/pause", &[("Authorization", "Bearer s3cret-token")], "{}").unwrap();
    assert_eq!(r.status, 403, "the ingest-only token cannot pause: {}", r.body);
    assert_eq!(metric(&d.metrics(), r#"selfheal_ingest_lines_total{result="accepted"}"#), Some(0.0));

    let r = post(&[("Authorization", "Bearer s3cret-token")]);
    assert_eq!(r.status, 422, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON answer");
    assert_eq!(v["accepted"], 4, "{v}");
    let rejected: Vec<(u64, String)> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["error"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(rejected.iter().map(|r| r.0).collect::<Vec<_>>(), [3, 4, 6], "{v}");
    assert!(rejected[1].1.contains("unknown metric \"no.such.metric\""), "{v}");
    assert!(rejected[2].1.contains("late"), "{v}");

    wait_for(Duration::from_secs(10), "3 windows decided", || {
        metric(&d.metrics(), "selfheal_windows_total") == Some(3.0)
    });
    let m = d.metrics();
    assert_eq!(metric(&m, r#"selfheal_ingest_lines_total{result="accepted"}"#), Some(4.0), "{m}");
    assert_eq!(metric(&m, r#"selfheal_ingest_lines_total{result="rejected"}"#), Some(3.0), "{m}");
    assert!(metric(&m, r#"selfheal_anomaly_score{pipeline="orders"}"#).is_some(), "{m}");
    promtool_check(&m);

    // A clean body answers 200 and lands too.
    // The control token opens /ingest too.
    let r = d.ingest(&sample(t0 + 240_000, 9.0));
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!((v["accepted"].as_u64(), v["rejected"].as_array().map(Vec::len)), (Some(1), Some(0)), "{v}");
    wait_for(Duration::from_secs(10), "the 4th window", || metric(&d.metrics(), "selfheal_windows_total") == Some(4.0));
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
}

// ------------------------------------------------------------------ 10. config

#[test]
fn example_config_validates_and_bad_configs_name_the_key() {
    let work = tempdir();
    let example = assert_ok(&selfheal(&["config", "--example"]), "selfheal config --example");
    let path = work.path().join("sidecar.toml");
    std::fs::write(&path, &example).unwrap();
    let out = assert_ok(&selfheal(&["validate", "--config", path.to_str().unwrap()]), "validate the example");
    assert!(out.contains("ok"), "{out}");

    let cases: [(&str, &str, &[&str]); 5] = [
        ("unknown-key.toml", "[guard]\nmode = \"act\"\nbudjet = 3\n", &["budjet"]),
        ("unknown-nested.toml", "[guard.breaker]\nsliding_window = 4\n", &["sliding_window"]),
        ("bad-value.toml", "[guard.budget]\nactions_per_hour = 0\n", &["guard.budget.actions_per_hour"]),
        (
            "bad-values.toml",
            "[model]\nepsilon = 2.0\n[source]\nkind = \"simulator\"\ntick_ms = 0\n",
            &["model.epsilon", "source.tick_ms"],
        ),
        (
            "bad-rotation.toml",
            "[daemon]\nlog_keep = 0\nlog_max_bytes = 0\n",
            &["daemon.log_keep", "daemon.log_max_bytes"],
        ),
    ];
    for (name, text, keys) in cases {
        let p = work.path().join(name);
        std::fs::write(&p, text).unwrap();
        let err = assert_fails(&selfheal(&["validate", "--config", p.to_str().unwrap()]), name);
        for key in keys {
            assert!(err.contains(key), "{name}: the error does not name {key}:\n{err}");
        }
    }
    // The example with one key misspelt fails, naming it; `run` refuses it too.
    let typo = example.replacen("cooldown_secs = 300", "cooldown_sec = 300", 1);
    assert_ne!(typo, example, "the example no longer sets cooldown_secs = 300");
    let p = work.path().join("typo.toml");
    std::fs::write(&p, typo).unwrap();
    let err = assert_fails(&selfheal(&["validate", "--config", p.to_str().unwrap()]), "validate with a typo");
    assert!(err.contains("cooldown_sec"), "{err}");
    let state = work.path().join("state");
    let err = assert_fails(
        &selfheal(&["run", "--config", p.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]),
        "run with a typo",
    );
    assert!(err.contains("cooldown_sec"), "{err}");
    assert!(!state.join("provenance.jsonl").exists(), "run started despite a bad config");
}
