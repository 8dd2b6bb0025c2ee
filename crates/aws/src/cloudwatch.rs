//! CloudWatch as a telemetry source: `GetMetricData` polls, turned into windows.
//!
//! **Mapping.** The detector's features are named after CloudWatch metrics
//! already (`selfheal config --metrics`): a `glue.*` metric is read from the
//! `Glue` namespace with the dimensions Glue job metrics carry
//! (`JobName` = the pipeline's job, `JobRunId` = `ALL`, `Type` = `count` or
//! `gauge`); a `pipeline.*` metric from the configured custom namespace with
//! the dimension `Pipeline` = the pipeline's name. Counts are read as the
//! period's `Sum`, gauges as its `Average`. Glue 4.0's observability metrics
//! carry one more dimension, `ObservabilityGroup` (`job_performance` for
//! `glue.driver.skewness.job`, `error` for the `glue.error.*` classes), and
//! `glue.driver.aggregate.elapsedTime` is published as `Type=count` with the
//! `Sum` statistic; a query without the exact dimension set matches no
//! datapoint at all. Sources: "Monitoring AWS Glue using Amazon CloudWatch
//! metrics" (<https://docs.aws.amazon.com/glue/latest/dg/monitoring-awsglue-with-cloudwatch-metrics.html>)
//! and "Monitoring with AWS Glue Observability metrics"
//! (<https://docs.aws.amazon.com/glue/latest/dg/monitor-observability.html>).
//!
//! **Late, duplicate and missing data.** CloudWatch publishes a period's
//! datapoint late and may revise it, so a poll reads only periods that ended
//! at least `lag_secs` ago, aligned to the period. Each pipeline has a cursor
//! just past the last period it emitted: a period is emitted once, so a point
//! seen by two polls is not decided on twice, and data that arrives later
//! than the lag is still read, as long as nothing newer was emitted before it.
//! A metric missing from a period is read as the window assembler reads it
//! ([`selfheal_sidecar::window::Carry`]): a count is 0 (CloudWatch has no
//! datapoint for a count when nothing happened), a level keeps its last value
//! until stale, a metric never seen is absent; a period with no datapoint at
//! all for a pipeline is skipped, not invented.
//!
//! **Pagination and throttling.** `NextToken` pages are followed; a throttled
//! or failed poll backs off with full jitter (capped), then tries again, and
//! the cursor only moves when a poll succeeded.

use crate::errors::AwsFailure;
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, Metric as CwMetric, MetricDataQuery, MetricStat, ScanBy};
pub use aws_sdk_cloudwatch::Client;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::Metric;
use selfheal_sidecar::config::CloudWatchConfig;
use selfheal_sidecar::source::{SourceError, TelemetrySource};
use selfheal_sidecar::window::{Carry, Window};
use selfheal_sidecar::BoxFuture;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Where and how one metric is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricQuery {
    /// Namespace.
    pub namespace: String,
    /// Metric name.
    pub name: String,
    /// Dimensions (name, value).
    pub dimensions: Vec<(String, String)>,
    /// Statistic.
    pub stat: &'static str,
}

/// The documented mapping of a feature onto CloudWatch.
pub fn query_for(m: Metric, pipeline: &str, job_name: &str, namespace: &str) -> MetricQuery {
    // elapsedTime is a level for the windows but Glue publishes it as a
    // count: `Type=count`, statistic `Sum`.
    let count = m.is_count() || m == Metric::ElapsedTime;
    let stat = if count { "Sum" } else { "Average" };
    if m.name().starts_with("glue.") {
        let kind = if count { "count" } else { "gauge" };
        let mut dimensions =
            vec![("JobName".into(), job_name.into()), ("JobRunId".into(), "ALL".into()), ("Type".into(), kind.into())];
        match m {
            Metric::Skewness => dimensions.push(("ObservabilityGroup".into(), "job_performance".into())),
            Metric::ErrorsAll | Metric::ErrorsOom => dimensions.push(("ObservabilityGroup".into(), "error".into())),
            _ => {}
        }
        MetricQuery { namespace: "Glue".into(), name: m.name().into(), dimensions, stat }
    } else {
        MetricQuery {
            namespace: namespace.into(),
            name: m.name().into(),
            dimensions: vec![("Pipeline".into(), pipeline.into())],
            stat,
        }
    }
}

/// Polls CloudWatch.
pub struct CloudWatchSource {
    client: Client,
    cfg: CloudWatchConfig,
    metrics: Vec<Metric>,
    /// Per pipeline, the start of the next period to emit, Unix seconds.
    cursors: Vec<i64>,
    first: bool,
    last: HashMap<usize, Carry>,
    rng: Xoshiro256PlusPlus,
    failures: u32,
}

impl CloudWatchSource {
    /// A source reading from `now − lookback` on.
    pub fn new(client: Client, cfg: CloudWatchConfig, now_secs: i64, seed: u64) -> CloudWatchSource {
        let metrics = match &cfg.metrics {
            Some(names) => names.iter().filter_map(|n| Metric::from_name(n)).collect(),
            // Evidence the product derives itself (`selfheal.*`) is not in CloudWatch.
            None => Metric::ALL.iter().copied().filter(|m| !m.name().starts_with("selfheal.")).collect(),
        };
        let period = i64::from(cfg.period_secs.max(1));
        let start = now_secs - cfg.lookback_secs as i64;
        CloudWatchSource {
            client,
            cursors: vec![start - start.rem_euclid(period); cfg.pipelines.len()],
            first: true,
            last: HashMap::new(),
            metrics,
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            failures: 0,
        }
    }

    fn queries(&self) -> Vec<(String, usize, Metric, MetricDataQuery)> {
        let mut out = Vec::new();
        for (pi, p) in self.cfg.pipelines.iter().enumerate() {
            for (mi, &m) in self.metrics.iter().enumerate() {
                let q = query_for(m, &p.name, &p.job_name, &self.cfg.namespace);
                let dims: Vec<Dimension> =
                    q.dimensions.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect();
                let metric =
                    CwMetric::builder().namespace(q.namespace).metric_name(q.name).set_dimensions(Some(dims)).build();
                let stat =
                    MetricStat::builder().metric(metric).period(self.cfg.period_secs as i32).stat(q.stat).build();
                let id = format!("p{pi}m{mi}");
                out.push((
                    id.clone(),
                    pi,
                    m,
                    MetricDataQuery::builder().id(id).metric_stat(stat).return_data(true).build(),
                ));
            }
        }
        out
    }

    /// One poll: every period from each pipeline's cursor to now − lag, as
    /// windows in time order.
    pub async fn poll(&mut self, now_secs: i64) -> Result<Vec<Window>, AwsFailure> {
        let period = i64::from(self.cfg.period_secs.max(1));
        let mut end = now_secs - self.cfg.lag_secs as i64;
        end -= end.rem_euclid(period);
        let start = self.cursors.iter().copied().min().unwrap_or(end);
        if end <= start {
            return Ok(Vec::new());
        }
        let queries = self.queries();
        let by_id: BTreeMap<&str, (usize, Metric)> =
            queries.iter().map(|(id, p, m, _)| (id.as_str(), (*p, *m))).collect();
        // pipeline → period start → metric values
        let mut points: BTreeMap<(i64, usize), Vec<(Metric, f64)>> = BTreeMap::new();
        // GetMetricData takes at most 500 queries per call.
        for chunk in queries.chunks(500) {
            let mut token: Option<String> = None;
            loop {
                let resp = self
                    .client
                    .get_metric_data()
                    .start_time(DateTime::from_secs(start))
                    .end_time(DateTime::from_secs(end))
                    .scan_by(ScanBy::TimestampAscending)
                    .set_metric_data_queries(Some(chunk.iter().map(|(_, _, _, q)| q.clone()).collect()))
                    .set_next_token(token.clone())
                    .send()
                    .await
                    .map_err(|e| AwsFailure::from_sdk("GetMetricData", &e))?;
                for r in resp.metric_data_results() {
                    let Some(&(pi, m)) = r.id().and_then(|id| by_id.get(id)) else { continue };
                    for (ts, v) in r.timestamps().iter().zip(r.values()) {
                        let t = ts.secs();
                        if t < self.cursors[pi] || t >= end || !v.is_finite() {
                            continue;
                        }
                        points.entry((t - t.rem_euclid(period), pi)).or_default().push((m, *v));
                    }
                }
                token = resp.next_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        // Periods older than the lag are final: each becomes a window now,
        // its missing metrics read from the pipeline's previous window by kind.
        let mut windows = Vec::new();
        for ((t, pi), values) in points {
            let carry = self.last.entry(pi).or_insert_with(|| Carry::new(t * 1000));
            carry.roll(t * 1000, period * 1000);
            carry.set(&values);
            windows.push(Window {
                pipeline: self.cfg.pipelines[pi].name.clone(),
                ts_ms: t * 1000,
                telemetry: *carry.telemetry(),
            });
            self.cursors[pi] = t + period;
        }
        Ok(windows)
    }

    fn backoff(&mut self) -> Duration {
        Duration::from_millis(crate::BACKOFF.delay_ms(self.failures, &mut self.rng))
    }
}

impl TelemetrySource for CloudWatchSource {
    fn name(&self) -> &str {
        "cloudwatch"
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<Window>>, SourceError>> {
        Box::pin(async move {
            loop {
                if !self.first {
                    tokio::time::sleep(Duration::from_secs(self.cfg.poll_secs)).await;
                }
                self.first = false;
                match self.poll(selfheal_sidecar::now_ms() / 1000).await {
                    Ok(ws) => {
                        self.failures = 0;
                        if !ws.is_empty() {
                            return Ok(Some(ws));
                        }
                    }
                    Err(f) => {
                        self.failures += 1;
                        let wait = self.backoff();
                        tracing::warn!(error = %f.message, kind = f.kind.name(), wait_ms = wait.as_millis() as u64,
                            "CloudWatch poll failed; backing off");
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glue_metrics_use_glue_dimensions_and_pipeline_metrics_the_custom_namespace() {
        let q = query_for(Metric::FailedTasks, "orders", "orders-etl", "Selfheal/Pipeline");
        assert_eq!(q.namespace, "Glue");
        assert_eq!(q.stat, "Sum");
        assert!(q.dimensions.contains(&("JobName".into(), "orders-etl".into())));
        assert!(q.dimensions.contains(&("Type".into(), "count".into())));
        let q = query_for(Metric::HeapUsage, "orders", "orders-etl", "Selfheal/Pipeline");
        assert_eq!((q.stat, q.dimensions[2].1.as_str()), ("Average", "gauge"));
        let q = query_for(Metric::Skewness, "orders", "orders-etl", "Selfheal/Pipeline");
        assert!(q.dimensions.contains(&("ObservabilityGroup".into(), "job_performance".into())));
        let q = query_for(Metric::ErrorsOom, "orders", "orders-etl", "Selfheal/Pipeline");
        assert!(q.dimensions.contains(&("ObservabilityGroup".into(), "error".into())));
        assert_eq!(q.stat, "Sum");
        let q = query_for(Metric::ElapsedTime, "orders", "orders-etl", "Selfheal/Pipeline");
        assert_eq!((q.stat, q.dimensions[2].1.as_str()), ("Sum", "count"));
        let q = query_for(Metric::DriverHeapUsage, "orders", "orders-etl", "Selfheal/Pipeline");
        assert_eq!((q.namespace.as_str(), q.stat, q.dimensions.len()), ("Glue", "Average", 3));
        let q = query_for(Metric::LatencyP95, "orders", "orders-etl", "Selfheal/Pipeline");
        assert_eq!(q.namespace, "Selfheal/Pipeline");
        assert_eq!(q.dimensions, vec![("Pipeline".to_string(), "orders".to_string())]);
    }
}
