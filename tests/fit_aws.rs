//! `selfheal fit --config … --minutes N` against a real local AWS API server
//! (moto, as in `tests/aws.rs`), through the fault-injecting proxy: the
//! backfill reads the Glue job's metrics with the sidecar's own CloudWatch
//! source, rides out throttling with jittered backoff, and gives up with a
//! clear error after a bounded number of attempts.

mod aws_support;
mod common;

use aws_support::moto::Moto;
use aws_support::proxy::{Fault, Proxy};
use aws_support::world::cw_client;
use common::{bin, now_ms};
use selfheal_aws::aws_sdk_cloudwatch as cw;
use selfheal_aws::cloudwatch::query_for;
use selfheal_core::Metric;
use std::path::Path;
use std::process::Command;

const JOB: &str = "orders-etl";
const METRICS: [Metric; 5] =
    [Metric::FailedTasks, Metric::HeapUsage, Metric::CpuLoad, Metric::ElapsedTime, Metric::RecordsRead];

/// 40 minutes of a Glue job's metrics, ending two minutes ago, straight to moto.
fn publish(moto: &Moto) {
    use cw::primitives::DateTime;
    use cw::types::{Dimension, MetricDatum};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let c = cw_client(&moto.url);
    let now = now_ms() / 1000;
    let end = now - now.rem_euclid(60) - 120;
    let mut data = Vec::new();
    for k in 0..40i64 {
        let wobble = ((k * 37) % 11) as f64 / 10.0 - 0.5;
        for m in METRICS {
            let v = match m {
                Metric::FailedTasks => 0.0,
                Metric::HeapUsage => 0.3 + 0.02 * wobble,
                Metric::CpuLoad => 0.2 + 0.03 * wobble,
                Metric::ElapsedTime => (k as f64 + 1.0) * 60_000.0,
                _ => 1.0e6 * (1.0 + 0.05 * wobble),
            };
            let q = query_for(m, "orders", JOB, "Selfheal/Pipeline");
            let dims = q.dimensions.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect();
            data.push(
                MetricDatum::builder()
                    .metric_name(&q.name)
                    .set_dimensions(Some(dims))
                    .timestamp(DateTime::from_secs(end - 60 * (40 - k)))
                    .value(v)
                    .build(),
            );
        }
    }
    for chunk in data.chunks(500) {
        rt.block_on(c.put_metric_data().namespace("Glue").set_metric_data(Some(chunk.to_vec())).send())
            .unwrap_or_else(|e| panic!("PutMetricData: {e:?}"));
    }
}

fn fit(dir: &Path, proxy: &Proxy) -> (bool, String) {
    let names: Vec<String> = METRICS.iter().map(|m| format!("\"{}\"", m.name())).collect();
    let config = dir.join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nkind = \"cloudwatch\"\nmetrics = [{}]\n[[source.pipelines]]\nname = \"orders\"\n\
             job_name = \"{JOB}\"\n[actuator]\nkind = \"dry-run\"\n[aws]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n",
            names.join(", "),
            proxy.url
        ),
    )
    .unwrap();
    let out = dir.join("detector-orders.json");
    let o = Command::new(bin())
        .args(["fit", "--config", config.to_str().unwrap(), "--pipeline", "orders", "--minutes", "60"])
        .args(["--out", out.to_str().unwrap()])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run selfheal fit");
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn backfill_reads_the_job_from_cloudwatch_and_rides_out_throttling() {
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start(&dir.path().join("moto.log"));
    publish(&moto);
    let proxy = Proxy::start(&moto.addr);
    proxy.inject(Some("GetMetricData"), Fault::Throttle, 2);
    let (ok, text) = fit(dir.path(), &proxy);
    assert!(ok, "{text}\n{}", moto.log_tail());
    assert!(text.contains("windows read: 40"), "{text}");
    assert!(text.contains(&format!("cloudwatch:{JOB} 60 min")), "{text}");
    let fitted: Vec<&str> = METRICS.iter().map(|m| m.name()).collect();
    assert!(text.contains(&format!("metrics present: {}", fitted.join(", "))), "{text}");
    assert!(text.contains("backing off"), "the throttled polls were retried: {text}");
    assert_eq!(proxy.faults_left(), 0);
    assert!(proxy.forwarded("GetMetricData") >= 1);

    // Throttled for good: a bounded number of attempts, then a clear error.
    proxy.inject(Some("GetMetricData"), Fault::Throttle, 100);
    let (ok, text) = fit(dir.path(), &proxy);
    assert!(!ok, "{text}");
    assert!(text.contains("still failing after 6 attempts") && text.contains("throttling"), "{text}");
}
