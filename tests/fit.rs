//! `selfheal fit` on the history of a Glue job that publishes only the `Glue`
//! namespace's job metrics: against the shipped (simulator-fitted) baseline
//! the job's ordinary minutes already sit far out (45-minute runs where the
//! simulator's last under one, heap and CPU at other levels), so a deviation
//! at the job's own scale disappears in them (on this job the shipped detector
//! even misses an OOM minute); against its own baseline it shows. The file records the metric set
//! and what was excluded; the sidecar's `validate` refuses the detector for a
//! pipeline that publishes another metric set.

mod common;

use common::selfheal;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::Detector;
use selfheal_core::{Metric, Telemetry};
use selfheal_detect::telemetry::{DetectorModel, TelemetryDetector};
use std::fmt::Write as _;
use std::path::Path;

/// The Glue job metrics of the history, as `selfheal config --metrics` names them.
const GLUE: [Metric; 6] = [
    Metric::RecordsRead,
    Metric::HeapUsage,
    Metric::CpuLoad,
    Metric::FailedTasks,
    Metric::ElapsedTime,
    Metric::Executors,
];

/// One minute of a healthy run, `minute` minutes in: a million records a
/// minute on 10 executors, heap and CPU around their levels.
fn minute(rng: &mut Xoshiro256PlusPlus, minute: u32) -> Telemetry {
    let mut t = Telemetry::default();
    t.set(Metric::RecordsRead, 1.0e6 * (1.0 + rng.gen_range(-0.05..0.05)));
    t.set(Metric::HeapUsage, 0.25 + rng.gen_range(-0.03..0.03));
    t.set(Metric::CpuLoad, 0.15 + rng.gen_range(-0.03..0.03));
    t.set(Metric::FailedTasks, 0.0);
    t.set(Metric::ElapsedTime, f64::from(minute) * 60_000.0 + rng.gen_range(0.0..1000.0));
    t.set(Metric::Executors, 10.0);
    t
}

fn sample(ts: i64, t: &Telemetry) -> String {
    let metrics: Vec<String> =
        GLUE.iter().filter_map(|m| t.value(*m).map(|v| format!("\"{}\":{v}", m.name()))).collect();
    format!("{{\"ts\":{ts},\"pipeline\":\"orders\",\"metrics\":{{{}}}}}\n", metrics.join(","))
}

/// Four 45-minute runs an hour apart; the third runs out of memory in its
/// 30th minute (from the 28th heap is full, tasks fail) and Glue reports it FAILED.
fn history(dir: &Path) -> std::path::PathBuf {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(14);
    let start: i64 = 1_795_400_000_000;
    let mut text = String::new();
    for run in 0..4i64 {
        let run_start = start + run * 3_600_000;
        let last = if run == 2 { 30 } else { 45 };
        for m in 1..=last {
            let ts = run_start + i64::from(m) * 60_000;
            let mut t = minute(&mut rng, m);
            if run == 2 && m >= 28 {
                t.set(Metric::HeapUsage, 0.97);
                t.set(Metric::FailedTasks, 40.0);
            }
            text.push_str(&sample(ts, &t));
        }
        if run == 2 {
            let ts = run_start + 30 * 60_000 + 20_000;
            let secs = ts / 1000;
            let time = format_utc(secs);
            writeln!(
                text,
                "{{\"version\":\"0\",\"id\":\"e-1\",\"detail-type\":\"Glue Job State Change\",\"source\":\"aws.glue\",\
                 \"account\":\"123456789012\",\"time\":\"{time}\",\"region\":\"eu-west-1\",\"resources\":[],\
                 \"detail\":{{\"jobName\":\"orders-etl\",\"severity\":\"ERROR\",\"state\":\"FAILED\",\
                 \"jobRunId\":\"jr_1\",\"message\":\"Container killed by YARN for exceeding memory limits\"}}}}"
            )
            .unwrap();
        }
    }
    let path = dir.join("orders.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

/// `YYYY-MM-DDTHH:MM:SSZ` of Unix seconds (civil-from-days, proleptic Gregorian).
fn format_utc(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn fit(dir: &Path, history: &Path, out: &str) -> (bool, String, std::path::PathBuf) {
    let out = dir.join(out);
    let o = selfheal(&[
        "fit",
        "--history",
        history.to_str().unwrap(),
        "--pipeline",
        "orders",
        "--job",
        "orders-etl",
        "--out",
        out.to_str().unwrap(),
    ]);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text, out)
}

/// The detector inputs the history has, in `Metric::ALL` order.
const FITTED: &str = "glue.driver.aggregate.numFailedTasks, glue.ALL.jvm.heap.usage, glue.ALL.system.cpuSystemLoad, \
                      glue.driver.aggregate.elapsedTime, glue.driver.aggregate.recordsRead";

#[test]
fn fit_on_a_glue_only_history_moves_the_baseline_to_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let h = history(dir.path());
    let (ok, text, out) = fit(dir.path(), &h, "d1.json");
    assert!(ok, "{text}");
    // 3 × 45 + 30 minutes; the failed run's last minute and the one before it
    // are excluded by its event, the sick minute before those as an outlier.
    assert!(text.contains("windows read: 165"), "{text}");
    assert!(text.contains("excluded: 2 at or before a failed run's end, 1 as outliers"), "{text}");
    assert!(text.contains("healthy windows used: 162"), "{text}");
    assert!(text.contains(&format!("metrics present: {FITTED}")), "{text}");
    assert!(text.contains("lacks: glue.driver.skewness.job, pipeline.latency.p95"), "{text}");
    assert!(text.contains("threshold: "), "{text}");

    let json = std::fs::read_to_string(&out).unwrap();
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let b = &v["meta"]["baseline"];
    assert_eq!(b["pipeline"], "orders");
    assert_eq!(b["source"], format!("history:{}", h.display()));
    assert_eq!(
        b["metrics"].as_array().unwrap().iter().map(|m| m.as_str().unwrap()).collect::<Vec<_>>().join(", "),
        FITTED
    );
    assert_eq!(b["excluded"], serde_json::json!({"failed_runs": 2, "outliers": 1, "empty": 0}));
    let shipped =
        DetectorModel::from_json(&std::fs::read_to_string("models/detector.json").unwrap(), "shipped").unwrap();
    assert_eq!(b["base_fingerprint"], shipped.fingerprint());

    // Same input, same file.
    let (ok, text, again) = fit(dir.path(), &h, "d2.json");
    assert!(ok, "{text}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap(), "deterministic");

    // On a new run of the job: neither flags its ordinary minutes, but a
    // memory leak at the job's scale (heap 0.25 → 0.6, ordinary for the
    // simulator) shows only against the job's own baseline; an OOM shows to both.
    let fitted = TelemetryDetector::new(DetectorModel::from_json(&json, "d1.json").unwrap());
    let before = TelemetryDetector::new(shipped);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let run: Vec<Telemetry> = (1..=45).map(|m| minute(&mut rng, m)).collect();
    let flagged = |d: &TelemetryDetector, ws: &[Telemetry]| ws.iter().filter(|t| d.detect(t).anomalous).count();
    let false_alarms = flagged(&fitted, &run);
    assert!(false_alarms <= 3, "the fitted detector flags {false_alarms}/45 healthy minutes");
    let leak: Vec<Telemetry> = run
        .iter()
        .map(|t| {
            let mut t = *t;
            t.set(Metric::HeapUsage, 0.6 + rng.gen_range(-0.03..0.03));
            t
        })
        .collect();
    let (b, a) = (flagged(&before, &leak), flagged(&fitted, &leak));
    assert!(b <= 5 && a >= 40, "leak minutes flagged: shipped {b}/45, fitted {a}/45");
    let mut oom = minute(&mut rng, 20);
    oom.set(Metric::HeapUsage, 0.97);
    oom.set(Metric::FailedTasks, 40.0);
    assert!(
        fitted.detect(&oom).anomalous,
        "an OOM minute is anomalous: {:?} / shipped {:?}",
        fitted.detect(&oom),
        before.detect(&oom)
    );
}

fn validate(dir: &Path, detector: &Path, metrics: &[Metric]) -> (bool, String) {
    let names: Vec<String> = metrics.iter().map(|m| format!("\"{}\"", m.name())).collect();
    let toml = format!(
        "[model]\ndetector = \"{}\"\n[source]\nkind = \"cloudwatch\"\nmetrics = [{}]\n[[source.pipelines]]\n\
         name = \"orders\"\njob_name = \"orders-etl\"\n[actuator]\nkind = \"dry-run\"\n",
        detector.display(),
        names.join(", ")
    );
    let path = dir.join("sidecar.toml");
    std::fs::write(&path, toml).unwrap();
    let o = selfheal(&["validate", "--config", path.to_str().unwrap()]);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn validate_refuses_a_detector_fitted_for_another_metric_set() {
    let dir = tempfile::tempdir().unwrap();
    let h = history(dir.path());
    let (ok, text, detector) = fit(dir.path(), &h, "detector-orders.json");
    assert!(ok, "{text}");
    // The job's metrics: executors are no detector input and do not matter.
    let (ok, text) = validate(dir.path(), &detector, &GLUE);
    assert!(ok, "{text}");
    // A pipeline that also publishes latency, and not the CPU.
    let other = [Metric::RecordsRead, Metric::HeapUsage, Metric::FailedTasks, Metric::ElapsedTime, Metric::LatencyP95];
    let (ok, text) = validate(dir.path(), &detector, &other);
    assert!(!ok, "{text}");
    assert!(text.contains("source.metrics") && text.contains("fitted for pipeline \"orders\""), "{text}");
    assert!(text.contains(&format!("with metrics {{{FITTED}}}")), "{text}");
    assert!(text.contains("pipeline \"orders\" publishes {glue.driver.aggregate.numFailedTasks"), "{text}");
    assert!(text.contains("missing: glue.ALL.system.cpuSystemLoad; extra: pipeline.latency.p95"), "{text}");
    assert!(text.contains("selfheal fit"), "{text}");
}

#[test]
fn a_short_history_is_refused_with_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let h = history(dir.path());
    let short: String = std::fs::read_to_string(&h).unwrap().lines().take(15).map(|l| format!("{l}\n")).collect();
    std::fs::write(&h, short).unwrap();
    let (ok, text, out) = fit(dir.path(), &h, "short.json");
    assert!(!ok && !out.exists(), "{text}");
    assert!(text.contains("only 15 healthy windows in the history of 15 windows"), "{text}");
    assert!(text.contains("needs at least 20") && text.contains("give a longer history"), "{text}");
}
