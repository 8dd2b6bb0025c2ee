//! Glue-native evidence in the CloudWatch source (issue 14), against a real
//! local AWS API server (moto, started per test; never a mock in the code),
//! through the fault-injecting proxy.
//!
//! moto's job runs never fail, so the proxy rewrites the `GetJobRuns` answer
//! the source reads: the run ended `FAILED` with the message a real Glue OOM
//! writes, at a chosen `CompletedOn`. The tests drive `CloudWatchSource`
//! directly with a clock of their own (periods in the recent past, metrics
//! published with those timestamps), so no test waits for a period to pass.
//!
//! 1. A failed run is evidence in the window of the period it completed in
//!    (`selfheal.glue.runsFailed.outOfMemory = 1`), 0 in the next, counted
//!    once; discovery lists what the job publishes and only that is queried.
//! 2. A renamed column in the source table is catalog drift (0 before).
//! 3. A throttled `GetJobRuns` does not stop the metrics; the run is counted
//!    late, once.

mod aws_support;
mod common;

use aws_support::moto::Moto;
use aws_support::proxy::{Fault, Proxy};
use aws_support::world::{
    cw_client, glue_client, initial_columns, setup_catalog_and_job, table_input, Col, DATABASE, JOB, NAMESPACE,
    PIPELINE, SOURCE_TABLE, TABLE,
};
use selfheal_aws::aws_sdk_cloudwatch as cw;
use selfheal_aws::aws_sdk_glue as glue;
use selfheal_aws::cloudwatch::{query_for, CloudWatchSource};
use selfheal_aws::evidence::{CatalogTables, Evidence, EvidenceSources, RUN_METRICS};
use selfheal_core::Metric;
use selfheal_sidecar::config::{CloudWatchConfig, WatchedPipeline};
use selfheal_sidecar::window::Window;
use std::collections::BTreeSet;

const PERIOD: i64 = 60;
/// What a Glue job that ran out of heap writes in `ErrorMessage`.
const OOM: &str =
    "An error occurred while calling o107.pyWriteDynamicFrame. java.lang.OutOfMemoryError: Java heap space";
/// The only metrics the job publishes.
const PUBLISHED: [Metric; 3] = [Metric::FailedTasks, Metric::HeapUsage, Metric::ElapsedTime];

struct Aws {
    _dir: tempfile::TempDir,
    _moto: Moto,
    proxy: Proxy,
    glue: glue::Client,
    cw: cw::Client,
    /// Start of the first period the tests use (recent past, aligned).
    t0: i64,
}

impl Aws {
    /// moto behind the proxy; the catalog and job of
    /// [`setup_catalog_and_job`] (the job's table and the source table with
    /// the same columns), and the job's 3 metrics published for 6 periods
    /// from `t0`.
    async fn start() -> Aws {
        let dir = tempfile::tempdir().unwrap();
        let moto = Moto::start(&dir.path().join("moto.log"));
        let proxy = Proxy::start(&moto.addr);
        let (glue, cw) = (glue_client(&proxy.url), cw_client(&proxy.url));
        setup_catalog_and_job(&glue, 10).await;
        let now = common::now_ms() / 1000;
        let t0 = now - 1800 - (now - 1800).rem_euclid(PERIOD);
        let aws = Aws { _dir: dir, _moto: moto, proxy, glue, cw, t0 };
        for k in 0..6 {
            aws.publish(t0 + k * PERIOD + 5, k as f64).await;
        }
        aws
    }

    /// The job's 3 metrics at `ts`, where the source reads them.
    async fn publish(&self, ts: i64, v: f64) {
        use cw::primitives::DateTime;
        use cw::types::{Dimension, MetricDatum};
        let data = PUBLISHED
            .iter()
            .map(|&m| {
                let q = query_for(m, PIPELINE, JOB, NAMESPACE);
                assert_eq!(q.namespace, "Glue");
                let dims = q.dimensions.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect();
                MetricDatum::builder()
                    .metric_name(&q.name)
                    .set_dimensions(Some(dims))
                    .timestamp(DateTime::from_secs(ts))
                    .value(v)
                    .build()
            })
            .collect();
        self.cw.put_metric_data().namespace("Glue").set_metric_data(Some(data)).send().await.expect("PutMetricData");
    }

    /// A source over p1 (period 60 s, no lag) whose clock starts at `t0`.
    fn source(&self, tables: bool) -> CloudWatchSource {
        let cfg = CloudWatchConfig {
            pipelines: vec![WatchedPipeline { name: PIPELINE.into(), job_name: JOB.into() }],
            period_secs: PERIOD as u32,
            lag_secs: 0,
            poll_secs: 60,
            lookback_secs: 0,
            namespace: NAMESPACE.into(),
            metrics: None,
        };
        let tables = tables.then(|| CatalogTables {
            database: DATABASE.into(),
            table: TABLE.into(),
            source_table: SOURCE_TABLE.into(),
        });
        let ev = Evidence::new(
            self.glue.clone(),
            vec![EvidenceSources { pipeline: PIPELINE.into(), job_name: Some(JOB.into()), tables }],
        );
        CloudWatchSource::new(self.cw.clone(), cfg, self.t0, 7).with_evidence(ev)
    }

    /// Start a run of the job, and make every `GetJobRuns` answer say it
    /// ended FAILED with `message` at `completed` (moto's runs never fail).
    async fn failed_run(&self, completed: i64, message: &'static str) -> String {
        let id = self.glue.start_job_run().job_name(JOB).send().await.expect("StartJobRun");
        let id = id.job_run_id().unwrap().to_string();
        self.proxy.rewrite("GetJobRuns", move |body| {
            let mut v: serde_json::Value = serde_json::from_str(body).expect("GetJobRuns answer is JSON");
            for r in v["JobRuns"].as_array_mut().expect("JobRuns") {
                r["JobRunState"] = "FAILED".into();
                r["ErrorMessage"] = message.into();
                r["StartedOn"] = ((completed - 40) as f64).into();
                r["CompletedOn"] = (completed as f64).into();
            }
            v.to_string()
        });
        id
    }
}

fn at(ws: &[Window], ts: i64) -> &Window {
    ws.iter().find(|w| w.ts_ms == ts * 1000).unwrap_or_else(|| {
        panic!("no window at {ts}; windows at {:?}", ws.iter().map(|w| w.ts_ms / 1000).collect::<Vec<_>>())
    })
}

/// The metric names the `GetMetricData` requests asked for.
fn queried(proxy: &Proxy) -> BTreeSet<String> {
    proxy
        .seen()
        .iter()
        .filter(|s| s.op == "GetMetricData")
        .flat_map(|s| {
            s.body
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(k, _)| k.ends_with(".MetricName"))
                .map(|(_, v)| v.replace("%2E", "."))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn a_failed_run_is_evidence_in_the_period_it_completed_and_only_published_metrics_are_queried() {
    let aws = Aws::start().await;
    let t0 = aws.t0;
    let run = aws.failed_run(t0 + PERIOD + 10, OOM).await;
    let mut src = aws.source(true);

    src.discover(t0).await.expect("ListMetrics");
    let mut expected: Vec<Metric> = PUBLISHED.to_vec();
    expected.extend(RUN_METRICS);
    expected.push(Metric::CatalogDrift);
    expected.sort();
    assert_eq!(src.published(PIPELINE), Some(expected), "the job's 3 metrics and the evidence it has sources for");
    assert!(aws.proxy.received("ListMetrics") >= 2, "Glue and the custom namespace are listed");

    let ws = src.poll(t0 + 4 * PERIOD).await.expect("poll");
    let failed = at(&ws, t0 + PERIOD);
    assert_eq!(failed.telemetry.value(Metric::RunsFailedOom), Some(1.0), "run {run}: {:?}", failed.telemetry);
    assert_eq!(failed.telemetry.value(Metric::RunsFailed), Some(1.0));
    assert_eq!(failed.telemetry.value(Metric::RunsFailedSchema), Some(0.0), "one class only");
    assert_eq!(failed.telemetry.value(Metric::FailedTasks), Some(1.0), "metrics and evidence in one window");
    let next = at(&ws, t0 + 2 * PERIOD);
    assert_eq!(next.telemetry.value(Metric::RunsFailedOom), Some(0.0), "a count absent from a period is 0");
    assert_eq!(at(&ws, t0).telemetry.value(Metric::RunsFailedOom), None, "before the run: no run evidence yet");

    // Read again on the next poll: counted once.
    let ws = src.poll(t0 + 5 * PERIOD).await.expect("second poll");
    assert_eq!(at(&ws, t0 + 4 * PERIOD).telemetry.value(Metric::RunsFailed), Some(0.0));

    // Only what the job publishes was asked for.
    let names: BTreeSet<String> = PUBLISHED.iter().map(|m| m.name().to_string()).collect();
    assert_eq!(queried(&aws.proxy), names, "GetMetricData asked for other metrics than the published ones");
    assert!(aws.proxy.forwarded("GetJobRuns") >= 2);
}

#[tokio::test]
async fn a_renamed_source_column_is_catalog_drift() {
    let aws = Aws::start().await;
    let t0 = aws.t0;
    let mut src = aws.source(true);
    let ws = src.poll(t0 + 2 * PERIOD).await.expect("poll");
    assert_eq!(ws.last().unwrap().telemetry.value(Metric::CatalogDrift), Some(0.0), "tables agree: 0, not absent");

    let renamed: Vec<Col> = initial_columns()
        .into_iter()
        .map(|(n, t)| if n == "amount" { ("amount_eur".to_string(), t) } else { (n, t) })
        .collect();
    aws.glue
        .update_table()
        .database_name(DATABASE)
        .table_input(table_input(SOURCE_TABLE, &renamed))
        .send()
        .await
        .expect("UpdateTable");
    let ws = src.poll(t0 + 3 * PERIOD).await.expect("poll after the drift");
    let w = at(&ws, t0 + 2 * PERIOD);
    assert_eq!(w.telemetry.value(Metric::CatalogDrift), Some(2.0), "amount dropped, amount_eur added");
    assert!(aws.proxy.forwarded("GetTable") >= 4, "both tables read each poll");
}

#[tokio::test]
async fn a_throttled_get_job_runs_does_not_stop_the_metrics_and_the_run_counts_late_once() {
    let aws = Aws::start().await;
    let t0 = aws.t0;
    aws.failed_run(t0 + PERIOD + 10, OOM).await;
    let mut src = aws.source(false);
    aws.proxy.inject(Some("GetJobRuns"), Fault::Throttle, 1);

    let ws = src.poll(t0 + 2 * PERIOD).await.expect("the metrics are polled without the evidence");
    assert_eq!(ws.len(), 2, "both periods' metrics");
    assert!(ws.iter().all(|w| w.telemetry.is_present(Metric::HeapUsage)));
    assert!(ws.iter().all(|w| !w.telemetry.is_present(Metric::RunsFailed)), "no run evidence this poll");
    let failures = src.evidence_failures();
    assert_eq!(failures.get(&(PIPELINE.to_string(), "GetJobRuns", "throttling")), Some(&1), "{failures:?}");
    assert_eq!(aws.proxy.faults_left(), 0);

    // The next poll reads the run: its period is gone, so it lands in the
    // first one not emitted yet.
    let ws = src.poll(t0 + 3 * PERIOD).await.expect("poll");
    let w = at(&ws, t0 + 2 * PERIOD);
    assert_eq!(w.telemetry.value(Metric::RunsFailedOom), Some(1.0), "{:?}", w.telemetry);
    let ws = src.poll(t0 + 4 * PERIOD).await.expect("poll");
    assert_eq!(at(&ws, t0 + 3 * PERIOD).telemetry.value(Metric::RunsFailedOom), Some(0.0), "once");
    assert!(at(&ws, t0 + 3 * PERIOD).telemetry.value(Metric::CatalogDrift).is_none(), "no tables: no drift");
}
