//! Bounded memory end to end (issue 16 part 3): a real `selfheal run` with
//! the HTTP source, `[daemon] max_pipelines` and `pipeline_idle_secs`, driven
//! over `/ingest`. A new pipeline beyond the cap is answered 429 and counted
//! while the others keep landing; an idle pipeline is evicted on the data
//! clock (sample time, not wall time: this test moves an hour of telemetry in
//! a second) and its room goes to a new name; a pipeline with an open
//! proposal is kept however idle, and goes once the proposal is answered.

mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("selfheal-bounds-").tempdir().unwrap()
}

/// 2026-11-23T03:00:00Z, a minute boundary, in the past of the wall clock.
const T0: i64 = 1_795_402_800_000;

/// A healthy sample of `pipeline` at `ts`.
fn healthy(pipeline: &str, ts: i64) -> String {
    format!(
        r#"{{"ts":{ts},"pipeline":"{pipeline}","metrics":{{"pipeline.latency.p95":40,"pipeline.records.in":1000,"pipeline.records.delivered":1000,"pipeline.errors.upstream5xx":0,"pipeline.backlog.records":0,"glue.ALL.system.cpuSystemLoad":0.5,"glue.ALL.jvm.heap.usage":0.45}}}}"#
    ) + "\n"
}

/// A sample of a pipeline in trouble: upstream 5xx, latency, a backlog.
fn sick(pipeline: &str, ts: i64) -> String {
    format!(
        r#"{{"ts":{ts},"pipeline":"{pipeline}","metrics":{{"pipeline.latency.p95":900,"pipeline.records.in":1000,"pipeline.records.delivered":50,"pipeline.errors.upstream5xx":700,"pipeline.backlog.records":50000,"glue.ALL.system.cpuSystemLoad":0.5,"glue.ALL.jvm.heap.usage":0.45}}}}"#
    ) + "\n"
}

fn gauge(d: &Sidecar, series: &str) -> f64 {
    metric(&d.metrics(), series).unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

#[test]
fn the_pipeline_cap_refuses_new_names_with_429_and_eviction_makes_room_but_keeps_an_open_proposal() {
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = "[daemon]\nmax_pipelines = 3\npipeline_idle_secs = 120\n\
               [source]\nkind = \"http\"\nwindow_secs = 60\n\
               [actuator]\nkind = \"dry-run\"\n\
               [guard]\nmode = \"recommend\"\napproval_ttl_secs = 600\n\
               [guard.confidence]\nmin_visits = 0\nmin_lead = 0.0\n";
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &[] });
    let minute = |k: i64| T0 + k * 60_000;

    // Three pipelines fill the cap; `ill` gets into trouble and a proposal.
    let mut body = String::new();
    for k in 0..4 {
        body += &healthy("steady", minute(k));
        body += &healthy("quiet", minute(k));
        body += &sick("ill", minute(k));
    }
    let r = d.ingest(&body);
    assert_eq!(r.status, 200, "{}", r.body);
    wait_for(Duration::from_secs(10), "a proposal for `ill`", || d.approvals().iter().any(|p| p.2 == "ill"));
    assert_eq!(gauge(&d, r#"selfheal_pipelines{holder="ingest"}"#), 3.0);
    assert_eq!(gauge(&d, "selfheal_pipelines_max"), 3.0);

    // A fourth name is refused naming the cap and the line; the others still
    // land, so the body is answered 422, not 429 (a shipper resends a 429's
    // whole body, which would add `steady`'s counts twice).
    let r = d.ingest(&(healthy("steady", minute(4)) + &healthy("newcomer", minute(4))));
    assert_eq!(r.status, 422, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).expect("JSON answer");
    assert_eq!((v["accepted"].as_u64(), v["pipeline_cap"].as_u64()), (Some(1), Some(3)), "{v}");
    assert_eq!(v["rejected"][0]["line"], 2, "{v}");
    let why = v["rejected"][0]["error"].as_str().unwrap();
    assert!(why.contains("\"newcomer\" is new") && why.contains("max_pipelines"), "{why}");
    let m = d.metrics();
    assert_eq!(metric(&m, r#"selfheal_ingest_refused_total{reason="pipeline_cap"}"#), Some(1.0), "{m}");
    assert_eq!(metric(&m, r#"selfheal_ingest_lines_total{result="rejected"}"#), Some(1.0), "{m}");
    promtool_check(&m);

    // Only `steady` reports for the next ten minutes of telemetry: `quiet` and
    // `ill` fall idle on the data clock. `quiet` is evicted; `ill` waits for
    // a human and is kept.
    let body: String = (5..=14).map(|k| healthy("steady", minute(k))).collect();
    assert_eq!(d.ingest(&body).status, 200);
    wait_for(Duration::from_secs(10), "`quiet` evicted from ingest and the decision core", || {
        let m = d.metrics();
        metric(&m, r#"selfheal_pipelines_evicted_total{holder="ingest"}"#) == Some(1.0)
            && metric(&m, r#"selfheal_pipelines_evicted_total{holder="decide"}"#) == Some(1.0)
    });
    let m = d.metrics();
    assert!(metric(&m, r#"selfheal_anomaly_score{pipeline="quiet"}"#).is_none(), "its state is gone:\n{m}");
    assert!(metric(&m, r#"selfheal_anomaly_score{pipeline="ill"}"#).is_some(), "an open proposal keeps it:\n{m}");
    assert_eq!(metric(&m, r#"selfheal_pipelines{holder="ingest"}"#), Some(2.0), "{m}");

    // The room goes to the newcomer; the cap is full again for the next one.
    let r = d.ingest(&healthy("newcomer", minute(14)));
    assert_eq!(r.status, 200, "{}", r.body);
    let r = d.ingest(&healthy("latecomer", minute(14)));
    assert_eq!(r.status, 429, "nothing taken, refused for the cap: {}", r.body);
    assert!(r.headers.iter().any(|(k, _)| k == "retry-after"), "429 says when to retry: {:?}", r.headers);

    // Answering the proposal releases `ill`, which is then evicted, and the latecomer gets in.
    let ill: Vec<String> = d.approvals().into_iter().filter(|p| p.2 == "ill").map(|p| p.0).collect();
    for id in &ill {
        let out = d.client(&["reject", id]);
        assert!(out.status.success(), "reject {id}: {}", String::from_utf8_lossy(&out.stderr));
    }
    wait_for(Duration::from_secs(10), "`ill` evicted once no proposal holds it", || {
        metric(&d.metrics(), r#"selfheal_pipelines_evicted_total{holder="ingest"}"#) == Some(2.0)
    });
    let r = d.ingest(&healthy("latecomer", minute(15)));
    assert_eq!(r.status, 200, "{}", r.body);
    let text = std::fs::read_to_string(&d.stderr).unwrap();
    assert!(text.contains("idle pipelines evicted"), "eviction is logged:\n{}", d.stderr_tail());
    assert!(text.contains("the pipeline cap ([daemon] max_pipelines) is reached"), "{}", d.stderr_tail());
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
}

/// The soak of `benches/soak.sh`, CI-sized: an hour of sample time with 2,000
/// names rotating through (each live 6 minutes of it), paced so the daemon's
/// eviction sweeps (every 500 ms of wall time) see the hour pass in about ten
/// seconds. The live pipelines stay near what the rotation keeps live, every
/// name that went silent is evicted, nothing is refused, and rotation bounds
/// the provenance log.
#[test]
fn an_hour_of_rotating_names_keeps_pipelines_and_the_log_bounded() {
    const NAMES: i64 = 2000;
    const LIFE_MS: i64 = 360_000;
    const HOUR_MS: i64 = 3_600_000;
    const LINES: i64 = 500;
    const STEP_MS: i64 = 15_000; // about 10 samples per live name per window
    const LOG_MAX: u64 = 65_536;
    let work = tempdir();
    let state = work.path().join("state");
    let cfg = format!(
        "[daemon]\nmax_pipelines = 800\npipeline_idle_secs = 300\nlog_healthy = true\nlog_max_bytes = {LOG_MAX}\n\
         log_keep = 2\n[source]\nkind = \"http\"\nwindow_secs = 60\n[actuator]\nkind = \"dry-run\"\n\
         [guard]\nmode = \"observe\"\n"
    );
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    let (mut g, mut peak, mut t) = (0i64, 0.0f64, 0i64);
    let started = std::time::Instant::now();
    while t <= HOUR_MS + 2 * 60_000 {
        // Live at t: entered (j × HOUR / NAMES <= t), not yet silent (t < that + LIFE).
        let lo = ((t - LIFE_MS) * NAMES + HOUR_MS - 1).div_euclid(HOUR_MS).max(0); // ceil
        let hi = (t * NAMES / HOUR_MS).min(NAMES - 1);
        let count = hi - lo + 1;
        let body: String = (0..LINES)
            .map(|_| {
                g += 1;
                format!(
                    "{{\"ts\":{},\"pipeline\":\"soak-n{}\",\"metrics\":{{\"pipeline.latency.p95\":40}}}}\n",
                    T0 + t,
                    lo + g % count
                )
            })
            .collect();
        let r = d.ingest(&body);
        assert_eq!(r.status, 200, "at {t} ms of sample time: {}", r.body);
        t += STEP_MS;
        std::thread::sleep(Duration::from_millis(40));
        if t % (20 * STEP_MS) == 0 {
            peak = peak.max(gauge(&d, r#"selfheal_pipelines{holder="ingest"}"#));
        }
    }
    std::thread::sleep(Duration::from_millis(1200)); // a last sweep
    let m = d.metrics();
    let evicted = metric(&m, r#"selfheal_pipelines_evicted_total{holder="ingest"}"#).unwrap();
    let live = metric(&m, r#"selfheal_pipelines{holder="ingest"}"#).unwrap();
    eprintln!("{:?} for the hour; peak {peak} live, {evicted} evicted, {live} live at the end", started.elapsed());
    // 200 live + 300 s × 2000 / 3600 s ≈ 167 silent but not yet idle, plus a
    // sweep's lag (at most about 12 requests of 15 s per 500 ms tick: 100
    // names), with slack; without eviction it would reach 2000.
    assert!(peak <= 550.0, "{peak} pipelines live at once:\n{m}");
    assert_eq!(evicted + live, NAMES as f64, "every name is either evicted or still live:\n{m}");
    assert!(evicted >= 1500.0, "only {evicted} evicted:\n{m}");
    assert_eq!(metric(&m, r#"selfheal_ingest_refused_total{reason="pipeline_cap"}"#), Some(0.0));
    assert!(metric(&m, r#"selfheal_pipelines_evicted_total{holder="decide"}"#).unwrap() >= 1500.0, "{m}");
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    let logs: Vec<(String, u64)> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("provenance"))
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
        .collect();
    let total: u64 = logs.iter().map(|l| l.1).sum();
    assert!(logs.len() <= 3, "the live log and 2 kept segments: {logs:?}");
    assert!(total <= 3 * (LOG_MAX + 4096), "{total} bytes of log: {logs:?}");
    assert!(logs.iter().any(|l| l.0 != "provenance.jsonl"), "the log rotated: {logs:?}");
}
