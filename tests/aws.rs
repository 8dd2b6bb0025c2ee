//! End-to-end tests of the AWS side (issue 8), against a real local AWS API
//! server: moto's standalone server, started per test from `.venv` (which
//! `tests/run.sh` creates), never a mock inside the code.
//!
//! Each test closes the loop for real (`aws_support::world`): the simulator
//! plays a Glue-backed pipeline and publishes its telemetry to CloudWatch
//! with `PutMetricData`; the real `selfheal run`, pointed at AWS only by
//! `AWS_ENDPOINT_URL` in its environment, polls `GetMetricData`, decides, and
//! acts on Glue through a fault-injecting proxy; the test reads Glue back
//! (`GetJobRuns`, `GetTable`) and steps the simulator with what was applied.
//!
//! 1. The loop heals a schema drift (`UpdateTable`) and memory pressure
//!    (`StartJobRun` with 20 workers instead of 10), the provenance log and
//!    `selfheal explain` tell each chain, and `selfheal rollback` restores
//!    the table.
//! 2. Throttling and 5xx from Glue are retried with jittered backoff until the
//!    action succeeds; throttled CloudWatch polls back off and lose no window.
//! 3. A burst of failures opens the breaker of the Glue job endpoint, later
//!    calls are short-circuited, and after the wait a trial call closes it.
//! 4. A `StartJobRun` whose answer comes after the timeout is retried without
//!    starting a second run: one run per idempotency key.

mod aws_support;
mod common;

use aws_support::proxy::Fault;
use aws_support::world::*;
use common::{calls, decisions, metric, outcomes};
use selfheal_core::{Action, FaultKind};
use selfheal_sidecar::provenance::{CallRecord, DecisionRecord, OutcomeRecord, Record};
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

/// The simulator's seed: fixed, so every run meets the same noise and the
/// same fault endings.
const SEED: u64 = 3;

/// One decision and what followed it in the provenance log.
struct Chain<'a> {
    decision: &'a DecisionRecord,
    calls: Vec<&'a CallRecord>,
    outcome: Option<&'a OutcomeRecord>,
    rewarded: bool,
}

fn chain<'a>(recs: &'a [Record], d: &'a DecisionRecord) -> Chain<'a> {
    Chain {
        decision: d,
        calls: calls(recs).into_iter().filter(|c| c.id == d.id).collect(),
        outcome: outcomes(recs).into_iter().find(|o| o.id == d.id),
        rewarded: recs.iter().any(|r| matches!(r, Record::Reward(x) if x.id == d.id)),
    }
}

/// The allowed decisions that chose `action`, with their chains.
fn acted<'a>(recs: &'a [Record], action: Action) -> Vec<Chain<'a>> {
    decisions(recs)
        .into_iter()
        .filter(|d| d.verdict == "allowed" && d.chosen == action)
        .map(|d| chain(recs, d))
        .collect()
}

/// Stop the sidecar (SIGTERM: the log is synced) and read its provenance log.
fn stop_and_read(w: &mut World) -> Vec<Record> {
    let st = w.sidecar.terminate(Duration::from_secs(20));
    assert!(st.success(), "selfheal run exited with {st}\n{}", w.context());
    let read = w.sidecar.log();
    assert!(read.skipped.is_empty(), "unreadable provenance lines: {:?}", read.skipped);
    read.records
}

fn run_selfheal(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_selfheal")).args(args).envs(env.iter().copied()).output().unwrap();
    assert!(
        out.status.success(),
        "selfheal {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn breaker(body: &str, state: &str) -> Option<f64> {
    metric(body, &format!("selfheal_breaker_state{{endpoint=\"{JOB_ENDPOINT}\",state=\"{state}\"}}"))
}

// ------------------------------------------------------------------ 1. the loop, closed for real

#[test]
fn closed_loop_heals_schema_drift_and_memory_pressure_on_glue_and_rolls_back() {
    let mut w = World::new(SEED, &Knobs::default());
    for _ in 0..3 {
        w.tick();
    }

    // The data changed upstream: the crawled table has a new column, and the
    // transform rejects records until the job's table is remapped.
    assert!(w.sim.inject(FaultKind::SchemaDrift));
    w.drift_source_table();
    w.tick_until_healed(FaultKind::SchemaDrift, 2, 12);
    let crawled = w.columns(SOURCE_TABLE);
    assert_eq!(w.columns(TABLE), crawled, "UpdateTable gave {TABLE} the columns of {SOURCE_TABLE}");
    assert!(crawled.iter().any(|c| c.0 == "currency"));
    assert!(w.table_versions(TABLE) >= 2, "Glue keeps the version before the remap");

    // Executors run out of heap: the next run needs more workers.
    assert!(w.sim.inject(FaultKind::MemoryPressure));
    w.tick_until_healed(FaultKind::MemoryPressure, 2, 12);
    assert!(w.sim.state().faults().is_empty(), "every fault healed: {:?}", w.sim.state());
    let runs = w.runs();
    let scaled = runs.iter().find(|r| r.action == "scale_up").unwrap_or_else(|| panic!("no scale_up run: {runs:?}"));
    assert_eq!(scaled.workers, 20, "scale_up starts the next run with the next level (10 → 20): {runs:?}");
    let applied: Vec<Action> = w.history.iter().map(|t| t.action).filter(|a| *a != Action::NoOp).collect();
    assert!(
        applied.starts_with(&[Action::SchemaRemap, Action::ScaleUp]),
        "the simulator applied what Glue shows, remap then scale: {applied:?}\n{}",
        w.context()
    );

    let body = w.settle();
    common::promtool_check(&body);
    let succeeded = metric(&body, r#"selfheal_action_outcomes_total{status="succeeded"}"#).unwrap_or(0.0);
    assert!(succeeded >= 2.0, "{body}");
    // Every GetMetricData round that gave these windows was timed.
    let polls = metric(&body, "selfheal_source_poll_seconds_count").unwrap_or(0.0);
    let inf = metric(&body, r#"selfheal_source_poll_seconds_bucket{le="+Inf"}"#);
    assert!(polls >= 1.0 && inf == Some(polls), "{body}");
    let recs = stop_and_read(&mut w);

    // Each healing decision: anomalous, allowed, its calls, succeeded, rewarded.
    for (action, endpoint, says) in [
        (Action::SchemaRemap, "glue:table/sales", "remapped to sales.orders_crawled"),
        (Action::ScaleUp, JOB_ENDPOINT, "10 → 20 workers"),
    ] {
        let chains = acted(&recs, action);
        let c = chains.first().unwrap_or_else(|| panic!("no allowed {action} decision in the log\n{}", w.context()));
        assert!(c.decision.anomalous, "the detector flagged the window {action} was chosen on: {:?}", c.decision);
        assert!(!c.calls.is_empty() && c.calls.iter().all(|k| k.endpoint == endpoint), "{:?}", c.calls);
        assert!(c.calls.last().unwrap().ok);
        let o = c.outcome.unwrap_or_else(|| panic!("no outcome for {}", c.decision.id));
        assert_eq!(o.status, "succeeded", "{o:?}");
        assert!(o.detail.contains(says), "{action} outcome: {}", o.detail);
        assert!(c.rewarded, "no reward for {}", c.decision.id);
        let key = c.decision.idempotency_key.clone().unwrap();
        if action == Action::ScaleUp {
            assert_eq!(scaled.key, key, "the run carries the decision's idempotency key");
        }

        let log = w.state.join("provenance.jsonl");
        let story = run_selfheal(&["explain", &c.decision.id, "--log", log.to_str().unwrap()], &[]);
        for needle in [action.name(), "anomalous", "allowed", endpoint, "succeeded", says, "reward"] {
            assert!(
                story.contains(needle),
                "`selfheal explain {}` does not mention {needle:?}:\n{story}",
                c.decision.id
            );
        }
    }

    // Undo the remap: the previous version of the table comes back.
    let cfg = w.config.to_str().unwrap().to_string();
    let said = run_selfheal(
        &["rollback", "--config", &cfg, "--pipeline", PIPELINE],
        &[
            ("AWS_ENDPOINT_URL", w.moto.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
        ],
    );
    assert!(said.contains("restored"), "{said}");
    assert_eq!(w.columns(TABLE), initial_columns(), "rollback restored the columns before the remap");
}

// ------------------------------------------------------------------ 2. throttling and 5xx

#[test]
fn glue_throttling_and_5xx_are_retried_with_jitter_and_throttled_polls_back_off() {
    let mut w = World::new(SEED, &Knobs { max_attempts: 6, ..Knobs::default() });
    w.tick();

    // CloudWatch throttles two polls: the source backs off and reads on, and
    // no window is lost or decided twice (`settle` checks the count).
    w.proxy.inject(Some("GetMetricData"), Fault::Throttle, 2);
    for _ in 0..2 {
        w.tick();
    }
    w.settle();
    assert_eq!(w.proxy.faults_left(), 0, "both polls were throttled");
    let throttled = w.proxy.seen().iter().filter(|s| s.op == "GetMetricData" && s.fault.is_some()).count();
    assert_eq!(throttled, 2);
    let stderr = std::fs::read_to_string(&w.sidecar.stderr).unwrap();
    assert!(
        stderr.contains("CloudWatch poll failed; backing off") && stderr.contains("throttling"),
        "the throttled polls are logged as such:\n{stderr}"
    );

    // Glue answers the scale-up's StartJobRun with 2 × 503, then 2 × throttling.
    w.proxy.inject(Some("StartJobRun"), Fault::Status(503), 2);
    w.proxy.inject(Some("StartJobRun"), Fault::Throttle, 2);
    assert!(w.sim.inject(FaultKind::MemoryPressure));
    w.tick_until_healed(FaultKind::MemoryPressure, 2, 10);
    assert_eq!(w.proxy.faults_left(), 0);
    assert_eq!(w.proxy.received("StartJobRun"), 5, "4 refused, the 5th forwarded");
    assert_eq!(w.proxy.forwarded("StartJobRun"), 1);
    assert_eq!(w.runs().len(), 1, "one run for the one decision: {:?}", w.runs());

    let recs = stop_and_read(&mut w);
    let chains = acted(&recs, Action::ScaleUp);
    let c = chains.first().unwrap_or_else(|| panic!("no allowed scale_up\n{}", w.context()));
    let attempts: Vec<(u32, bool)> = c.calls.iter().map(|k| (k.attempt, k.ok)).collect();
    assert_eq!(attempts, [(1, false), (2, false), (3, false), (4, false), (5, true)], "{:?}", c.calls);
    for (k, kind) in c.calls[..4].iter().zip(["server", "server", "throttling", "throttling"]) {
        let e = k.error.as_deref().unwrap_or("");
        assert!(e.contains("StartJobRun") && e.contains(kind), "attempt {}: {e}", k.attempt);
        assert_eq!(k.idempotency_key, c.calls[4].idempotency_key, "every attempt carries the decision's key");
    }
    let o = c.outcome.expect("an outcome");
    assert_eq!(o.status, "succeeded");
    assert!(o.detail.contains("after 5 attempt(s)"), "{}", o.detail);

    // Full jitter: retry n waits a random time in [0, min(200, 50·2ⁿ)] ms.
    let waits: Vec<i64> = c.calls.windows(2).map(|p| p[1].ts_ms - p[0].ts_ms - p[0].duration_ms as i64).collect();
    for (n, wait) in waits.iter().enumerate() {
        let bound = (50i64 << (n + 1)).min(200);
        assert!((0..=bound + 100).contains(wait), "retry {} waited {wait} ms (bound {bound} ms): {waits:?}", n + 1);
    }
    let mut distinct = waits.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert!(distinct.len() >= 2, "jittered waits differ: {waits:?}");
}

// ------------------------------------------------------------------ 3. the breaker

#[test]
fn a_burst_of_glue_failures_opens_the_breaker_which_short_circuits_then_recovers() {
    let knobs = Knobs {
        max_attempts: 3,
        extra: "[guard.breaker]\nsliding_window_size = 4\nminimum_number_of_calls = 2\n\
                failure_rate_threshold = 50.0\nwait_duration_in_open_ms = 3000\npermitted_calls_in_half_open = 1\n"
            .into(),
        ..Knobs::default()
    };
    let mut w = World::new(SEED, &knobs);
    w.tick();

    w.proxy.inject(Some("StartJobRun"), Fault::Status(500), 2);
    assert!(w.sim.inject(FaultKind::MemoryPressure));
    w.tick();
    // The scale-up fails twice (2 of 2 calls: the breaker opens), and its
    // third attempt is refused by the open breaker.
    let body = w.settle();
    assert_eq!(breaker(&body, "open"), Some(1.0), "the breaker of {JOB_ENDPOINT} is open:\n{body}");
    assert_eq!(metric(&body, r#"selfheal_action_outcomes_total{status="failed"}"#), Some(1.0), "{body}");
    let started = w.proxy.received("StartJobRun");
    assert_eq!(started, 2);

    // While it is open, actions on the job are short-circuited: nothing reaches Glue.
    let mut ticks = 0;
    while metric(&w.settle(), &format!("selfheal_breaker_rejected_total{{endpoint=\"{JOB_ENDPOINT}\"}}")).unwrap_or(0.0)
        < 2.0
    {
        w.tick();
        ticks += 1;
        assert!(ticks < 8, "no call was short-circuited by the open breaker\n{}", w.context());
    }
    assert_eq!(w.proxy.received("StartJobRun"), started, "short-circuited calls never reach Glue");

    // After the wait, a trial call goes through, succeeds, and closes it.
    w.tick_until_healed(FaultKind::MemoryPressure, 2, 15);
    let body = w.settle();
    assert_eq!(breaker(&body, "closed"), Some(0.0), "the breaker closed again:\n{body}");
    let recs = stop_and_read(&mut w);

    let on_job: Vec<&CallRecord> = calls(&recs).into_iter().filter(|c| c.endpoint == JOB_ENDPOINT).collect();
    let first_ok = on_job.iter().position(|c| c.ok).expect("a call on the job succeeded in the end");
    let before = &on_job[..first_ok];
    assert!(before.len() >= 4, "{before:?}");
    for c in &before[..2] {
        let e = c.error.as_deref().unwrap_or("");
        assert!(e.contains("StartJobRun") && e.contains("(server)"), "attempt {} of {}: {e}", c.attempt, c.id);
    }
    let rejected = before.iter().filter(|c| c.error.as_deref().unwrap_or("").starts_with("circuit breaker")).count();
    assert!(rejected >= 2, "calls refused by the open breaker: {before:?}");
    let by_id: BTreeMap<&str, &str> = outcomes(&recs).into_iter().map(|o| (o.id.as_str(), o.status.as_str())).collect();
    assert_eq!(by_id.get(before[0].id.as_str()), Some(&"failed"), "the first action failed");
    assert_eq!(by_id.get(on_job[first_ok].id.as_str()), Some(&"succeeded"), "the trial call's action succeeded");
    // Half-open only after the wait (less a few ms of clock rounding).
    let opened = before[1].ts_ms + before[1].duration_ms as i64;
    let trial = on_job[first_ok].ts_ms;
    assert!(
        trial - opened >= 2_990,
        "the trial call came {} ms after the breaker opened, before its 3 s wait",
        trial - opened
    );
}

// ------------------------------------------------------------------ 4. no action applied twice

#[test]
fn a_start_job_run_answered_after_the_timeout_is_not_applied_twice() {
    let mut w = World::new(SEED, &Knobs { max_attempts: 4, timeout_ms: [2_000, 1_500, 2_000], ..Knobs::default() });
    w.tick();

    // Glue starts the run, but its answer comes 3.5 s later: after the 2 s timeout.
    w.proxy.inject(Some("StartJobRun"), Fault::Slow(Duration::from_millis(3_500)), 1);
    assert!(w.sim.inject(FaultKind::MemoryPressure));
    w.tick_until_healed(FaultKind::MemoryPressure, 2, 10);

    let runs = w.runs();
    let forwarded = w.proxy.forwarded("StartJobRun") as usize;
    assert_eq!(forwarded, runs.len(), "every StartJobRun that reached Glue is one run: {runs:?}");
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &runs {
        *per_key.entry(r.key.as_str()).or_default() += 1;
    }
    assert!(per_key.values().all(|n| *n == 1), "one run per idempotency key: {per_key:?}");
    assert_eq!(runs[0].workers, 20, "scaled once, not twice: {runs:?}");

    let recs = stop_and_read(&mut w);
    let chains = acted(&recs, Action::ScaleUp);
    let c = chains.first().unwrap_or_else(|| panic!("no allowed scale_up\n{}", w.context()));
    let attempts: Vec<(u32, bool)> = c.calls.iter().map(|k| (k.attempt, k.ok)).collect();
    assert_eq!(attempts, [(1, false), (2, true)], "{:?}", c.calls);
    assert!(c.calls[0].error.as_deref().unwrap_or("").contains("timed out after 2000 ms"), "{:?}", c.calls[0]);
    let o = c.outcome.expect("an outcome");
    assert_eq!(o.status, "succeeded");
    assert!(o.detail.contains("already started for this decision"), "{}", o.detail);
    assert_eq!(per_key.get(c.decision.idempotency_key.as_deref().unwrap()), Some(&1));
}

// ------------------------------------------------------------------ 5. a run still running
// Field case "starting a run while one is running": a job's MaxConcurrentRuns
// is 1 by default, and moto (like Glue) answers a second StartJobRun with
// ConcurrentRunsExceededException while the first lives. moto's state manager
// holds the run in STARTING (manual progression).

#[test]
fn a_run_still_running_is_named_at_once_never_retried_as_throttling() {
    use selfheal_aws::errors::{AwsFailure, ErrorKind};
    use selfheal_aws::glue::GlueActuator;
    use selfheal_sidecar::actuate::{ActError, ActionCall, Actuator};
    use selfheal_sidecar::config::GluePipeline;
    let dir = tempfile::tempdir().unwrap();
    let moto = aws_support::moto::Moto::start(&dir.path().join("moto.log"));
    let hold = r#"{"model_name": "glue::job_run", "transition": {"progression": "manual", "times": 1000}}"#;
    let r = common::http(&moto.addr, "POST", "/moto-api/state-manager/set-transition", &[], hold).unwrap();
    assert!(r.status / 100 == 2, "set-transition: {} {}", r.status, r.body);
    let glue = glue_client(&moto.url);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use selfheal_aws::aws_sdk_glue::types::{ExecutionProperty, JobCommand};
        glue.create_job()
            .name("orders-etl")
            .role("arn:aws:iam::123456789012:role/glue")
            .command(JobCommand::builder().name("glueetl").script_location("s3://bucket/orders.py").build())
            .execution_property(ExecutionProperty::builder().max_concurrent_runs(1).build())
            .send()
            .await
            .expect("CreateJob");
        let first = glue.start_job_run().job_name("orders-etl").send().await.expect("first StartJobRun");
        let first = first.job_run_id().unwrap().to_string();
        // The error itself is told apart from throttling, and not retried.
        let e = glue.start_job_run().job_name("orders-etl").send().await.expect_err("a second run while one lives");
        let f = AwsFailure::from_sdk("StartJobRun", &e);
        assert_eq!(f.kind, ErrorKind::RunInProgress, "{}", f.message);
        assert!(!f.kind.retryable() && !f.message.contains("throttling"), "{}", f.message);
        // The actuator looks at the runs first and says why at once.
        let p = GluePipeline {
            name: "orders".into(),
            job_name: "orders-etl".into(),
            worker_type: "G.1X".into(),
            worker_levels: vec![2, 4, 8, 16],
            default_workers: 4,
            database: None,
            table: None,
            source_table: None,
            dead_letter_path: None,
            backpressure_records_per_second: 1000,
        };
        let act = GlueActuator::new(glue.clone(), vec![p], 1);
        let call = |action| ActionCall {
            id: "d1".into(),
            idempotency_key: format!("d1/{action}"),
            pipeline: "orders".into(),
            action,
            attempt: 1,
        };
        for action in [Action::RetryWithBackoff, Action::Reschedule, Action::Quarantine] {
            match act.apply(&call(action)).await {
                Err(ActError::Failed(m)) => {
                    assert!(m.contains(&first) && m.contains("MaxConcurrentRuns") && m.contains("restart"), "{m}")
                }
                other => panic!("{action}: expected a failure naming the running run, got {other:?}"),
            }
        }
        let runs = glue.get_job_runs().job_name("orders-etl").send().await.unwrap();
        assert_eq!(runs.job_runs().len(), 1, "no second StartJobRun was sent");
    });
}
