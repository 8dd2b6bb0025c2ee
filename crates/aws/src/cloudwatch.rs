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
//! **Discovery.** With `[source] metrics` unset, the source asks CloudWatch
//! what each pipeline publishes before its first poll (and hourly):
//! `ListMetrics`, paged, in `Glue` with `JobName` = its job and in the custom
//! namespace with `Pipeline` = its name. A listed metric is read only if it
//! is known ([`Metric::from_name`]) and listed with exactly the dimensions
//! [`query_for`] would query; nothing else is asked of `GetMetricData` for
//! that pipeline. `ListMetrics` "doesn't return information about metrics if
//! those metrics haven't reported data in the past two weeks", and a new
//! metric may take up to 15 minutes to appear
//! (<https://docs.aws.amazon.com/AmazonCloudWatch/latest/APIReference/API_ListMetrics.html>):
//! hence the hourly rediscovery. A refused `ListMetrics` falls back to every
//! metric. [`CloudWatchSource::published`] tells what was found, with the
//! evidence metrics the pipeline has sources for.
//!
//! **Glue evidence.** With [`CloudWatchSource::with_evidence`], each poll
//! also reads the jobs' runs and the catalog ([`crate::evidence`]) and merges
//! them into the same periods' values before the missing metrics are read
//! from the previous window: a run's counts in the period it completed in
//! (0 in the next, like any count), the catalog drift in the latest period
//! read. Evidence failures never fail the poll.
//!
//! **Pagination and throttling.** `NextToken` pages are followed; a throttled
//! or failed poll backs off with full jitter (capped), then tries again, and
//! the cursor only moves when a poll succeeded.

use crate::errors::AwsFailure;
use crate::evidence::{Evidence, RUN_METRICS};
use aws_sdk_cloudwatch::primitives::DateTime;
use aws_sdk_cloudwatch::types::{Dimension, DimensionFilter, Metric as CwMetric, MetricDataQuery, MetricStat, ScanBy};
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

/// How often the published metrics are discovered again (`ListMetrics`
/// lists what had data in the past two weeks; a job that starts publishing
/// a new metric shows within about 15 minutes).
pub const REDISCOVER_SECS: i64 = 3600;

/// How late a job run's end may be read and still count (in the first period
/// not yet emitted): a throttled `GetJobRuns` delays run evidence by a poll
/// or a few, not by hours.
pub const LATE_RUN_SECS: i64 = 3600;

/// Polls CloudWatch, and Glue for the evidence that is not a metric.
pub struct CloudWatchSource {
    client: Client,
    cfg: CloudWatchConfig,
    /// The metrics read when `[source] metrics` lists them, or when
    /// discovery is not possible (`ListMetrics` refused).
    metrics: Vec<Metric>,
    /// Per pipeline, the CloudWatch metrics `ListMetrics` found it publishing
    /// (`None`: not discovered; the `metrics` above are read).
    discovered: Option<Vec<Vec<Metric>>>,
    /// When the last discovery ran (Unix seconds), if one did.
    discovered_at: Option<i64>,
    /// Job runs and catalog drift, when configured.
    evidence: Option<Evidence>,
    /// Where reading began, Unix seconds: runs that ended before are history.
    origin: i64,
    /// Per pipeline, the start of the next period to emit, Unix seconds.
    cursors: Vec<i64>,
    first: bool,
    last: HashMap<usize, Carry>,
    rng: Xoshiro256PlusPlus,
    failures: u32,
}

/// Fold `v` of `m` into a period's values: counts add up, levels are replaced.
fn merge(values: &mut Vec<(Metric, f64)>, m: Metric, v: f64) {
    match values.iter_mut().find(|(x, _)| *x == m) {
        Some(e) if m.is_count() => e.1 += v,
        Some(e) => e.1 = v,
        None => values.push((m, v)),
    }
}

/// Whether two dimension sets are the same (order aside).
fn same_dimensions(a: &[(String, String)], b: &[(String, String)]) -> bool {
    let (mut a, mut b) = (a.to_vec(), b.to_vec());
    a.sort();
    b.sort();
    a.dedup();
    b.dedup();
    a == b
}

/// The metrics of `listed` ((name, dimensions) from `ListMetrics` in
/// `namespace`) that the source would read for this pipeline: known to
/// [`Metric::from_name`] and listed with exactly the dimensions
/// [`query_for`] queries (anything else would match no datapoint).
pub fn published_among(
    listed: &[(String, Vec<(String, String)>)],
    namespace: &str,
    pipeline: &str,
    job_name: &str,
    custom_namespace: &str,
) -> Vec<Metric> {
    let mut out: Vec<Metric> = listed
        .iter()
        .filter_map(|(name, dims)| {
            let m = Metric::from_name(name).filter(|m| !m.name().starts_with("selfheal."))?;
            let q = query_for(m, pipeline, job_name, custom_namespace);
            (q.namespace == namespace && same_dimensions(&q.dimensions, dims)).then_some(m)
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

impl CloudWatchSource {
    /// A source reading from `now − lookback` on.
    pub fn new(client: Client, cfg: CloudWatchConfig, now_secs: i64, seed: u64) -> CloudWatchSource {
        // Evidence the product derives itself (`selfheal.*`) is not in CloudWatch.
        let metrics = match &cfg.metrics {
            Some(names) => names.iter().filter_map(|n| Metric::from_name(n)).collect(),
            None => Metric::ALL.to_vec(),
        }
        .into_iter()
        .filter(|m| !m.name().starts_with("selfheal."))
        .collect();
        let period = i64::from(cfg.period_secs.max(1));
        let start = now_secs - cfg.lookback_secs as i64;
        let origin = start - start.rem_euclid(period);
        CloudWatchSource {
            client,
            cursors: vec![origin; cfg.pipelines.len()],
            origin,
            first: true,
            last: HashMap::new(),
            metrics,
            discovered: None,
            discovered_at: None,
            evidence: None,
            cfg,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            failures: 0,
        }
    }

    /// Read Glue evidence too (job runs, catalog drift) for the pipelines
    /// `evidence` has sources for.
    pub fn with_evidence(mut self, evidence: Evidence) -> CloudWatchSource {
        self.evidence = Some(evidence);
        self
    }

    /// Failed evidence calls so far, by (pipeline, operation, kind).
    pub fn evidence_failures(&self) -> BTreeMap<(String, &'static str, &'static str), u64> {
        self.evidence.as_ref().map(|e| e.failures().clone()).unwrap_or_default()
    }

    /// What `pipeline` publishes, once discovered: the CloudWatch metrics
    /// `ListMetrics` found (with the dimensions the source queries) and the
    /// evidence metrics it has sources for, in [`Metric::ALL`] order. `None`
    /// before discovery, when `[source] metrics` names the metrics instead,
    /// when discovery was refused, or for a pipeline not watched.
    pub fn published(&self, pipeline: &str) -> Option<Vec<Metric>> {
        let pi = self.cfg.pipelines.iter().position(|p| p.name == pipeline)?;
        let mut out = self.discovered.as_ref()?.get(pi)?.clone();
        if let Some(s) = self.evidence.as_ref().and_then(|e| e.sources(pipeline)) {
            out.extend(s.metrics());
        }
        out.sort();
        out.dedup();
        Some(out)
    }

    /// The metrics read from CloudWatch for pipeline `pi`.
    fn metrics_of(&self, pi: usize) -> &[Metric] {
        match &self.discovered {
            Some(sets) => &sets[pi],
            None => &self.metrics,
        }
    }

    /// Every metric of the namespace with this dimension, paged.
    async fn list(
        &self,
        namespace: &str,
        filters: &[(&str, &str)],
    ) -> Result<Vec<(String, Vec<(String, String)>)>, AwsFailure> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_metrics()
                .namespace(namespace)
                .set_dimensions(Some(
                    filters.iter().map(|(n, v)| DimensionFilter::builder().name(*n).value(*v).build()).collect(),
                ))
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| AwsFailure::from_sdk("ListMetrics", &e))?;
            for m in resp.metrics() {
                let dims = m
                    .dimensions()
                    .iter()
                    .map(|d| (d.name().unwrap_or("").to_string(), d.value().unwrap_or("").to_string()))
                    .collect();
                out.push((m.metric_name().unwrap_or("").to_string(), dims));
            }
            token = resp.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Discover what each pipeline publishes (`ListMetrics` in `Glue` with
    /// `JobName` = its job and in the custom namespace with `Pipeline` = its
    /// name); from then on only those metrics are queried for it. Nothing to
    /// do when `[source] metrics` names the metrics. A refusal (IAM without
    /// `cloudwatch:ListMetrics`) is logged and every metric is queried, as
    /// before discovery existed; a transient failure is returned (the first
    /// poll tries again). The first poll discovers if nobody called this.
    pub async fn discover(&mut self, now_secs: i64) -> Result<(), AwsFailure> {
        if self.cfg.metrics.is_some() {
            self.discovered_at = Some(now_secs);
            return Ok(());
        }
        let mut sets = Vec::with_capacity(self.cfg.pipelines.len());
        let mut failure = None;
        for p in &self.cfg.pipelines {
            let mut found = Vec::new();
            // Glue also publishes each metric per run (`JobRunId = jr_…`):
            // filtering on `JobRunId = ALL` keeps a job that runs every
            // minute to one page instead of one entry per run.
            let glue_filters = [("JobName", p.job_name.as_str()), ("JobRunId", "ALL")];
            let custom_filters = [("Pipeline", p.name.as_str())];
            let lists: [(&str, &[(&str, &str)]); 2] =
                [("Glue", &glue_filters), (self.cfg.namespace.as_str(), &custom_filters)];
            for (ns, filters) in lists {
                if filters[0].1.is_empty() {
                    continue;
                }
                match self.list(ns, filters).await {
                    Ok(listed) => found.extend(published_among(&listed, ns, &p.name, &p.job_name, &self.cfg.namespace)),
                    Err(f) => {
                        failure = Some(f);
                        break;
                    }
                }
            }
            found.sort();
            found.dedup();
            sets.push(found);
        }
        let rediscovery = self.discovered_at.is_some();
        match failure {
            Some(f) if f.kind.retryable() && !rediscovery => return Err(f),
            Some(f) => {
                self.discovered_at = Some(now_secs);
                tracing::warn!(error = %f.message, kind = f.kind.name(), kept = if rediscovery { "the last discovered sets" } else { "every metric" },
                    "ListMetrics failed: cannot discover which metrics the pipelines publish");
                return Ok(());
            }
            None => {}
        }
        for (p, set) in self.cfg.pipelines.iter().zip(&sets) {
            let before = self
                .discovered
                .as_ref()
                .and_then(|d| self.cfg.pipelines.iter().position(|x| x.name == p.name).map(|i| &d[i]));
            if before != Some(set) {
                if set.is_empty() {
                    tracing::warn!(pipeline = %p.name, job = %p.job_name, namespace = %self.cfg.namespace,
                        "ListMetrics found no metric this pipeline publishes (none in the past two weeks); \
                         only Glue evidence is read for it until one appears");
                }
                tracing::debug!(pipeline = %p.name, metrics = ?set.iter().map(|m| m.name()).collect::<Vec<_>>(),
                    "CloudWatch metrics discovered");
            }
        }
        self.discovered = Some(sets);
        self.discovered_at = Some(now_secs);
        Ok(())
    }

    fn queries(&self) -> Vec<(String, usize, Metric, MetricDataQuery)> {
        let mut out = Vec::new();
        for (pi, p) in self.cfg.pipelines.iter().enumerate() {
            for &m in self.metrics_of(pi) {
                let q = query_for(m, &p.name, &p.job_name, &self.cfg.namespace);
                let dims: Vec<Dimension> =
                    q.dimensions.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect();
                let metric =
                    CwMetric::builder().namespace(q.namespace).metric_name(q.name).set_dimensions(Some(dims)).build();
                let stat =
                    MetricStat::builder().metric(metric).period(self.cfg.period_secs as i32).stat(q.stat).build();
                let id = format!("p{pi}m{}", m.index());
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
    /// windows in time order, with the Glue evidence of those periods merged
    /// in (before the missing metrics are read from the previous window).
    pub async fn poll(&mut self, now_secs: i64) -> Result<Vec<Window>, AwsFailure> {
        if self.discovered_at.is_none_or(|t| now_secs - t >= REDISCOVER_SECS) {
            self.discover(now_secs).await?;
        }
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
        let round = std::time::Instant::now();
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
        selfheal_sidecar::metrics::SOURCE_POLL_SECONDS.observe(round.elapsed());
        self.merge_evidence(&mut points, end, period).await;
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

    /// Merge each pipeline's Glue evidence into `points`: run counts into the
    /// period each run ended in (a failed run opens that period's window if
    /// it had no metric: a failed batch run is evidence on its own; a run
    /// that ended well opens none), the catalog drift into the latest period
    /// read (the catalog is read now). Failures are the evidence's to log and
    /// count; metrics go on.
    async fn merge_evidence(&mut self, points: &mut BTreeMap<(i64, usize), Vec<(Metric, f64)>>, end: i64, period: i64) {
        let Some(mut ev) = self.evidence.take() else { return };
        for (pi, p) in self.cfg.pipelines.iter().enumerate() {
            let cursor = self.cursors[pi];
            if cursor >= end {
                continue;
            }
            let floor = self.origin.max(cursor - LATE_RUN_SECS);
            for (at, counts) in ev.runs(&p.name, floor, cursor, end, period).await {
                // A run that ended well (no counts) opens no window of its
                // own: only a failure is evidence enough to emit a period
                // (and move the cursor) that has no metric yet.
                if counts.is_empty() && !points.contains_key(&(at, pi)) {
                    continue;
                }
                let values = points.entry((at, pi)).or_default();
                // A period with a run in it has its run counts, 0 or more.
                for m in RUN_METRICS {
                    merge(values, m, 0.0);
                }
                for (m, v) in counts {
                    merge(values, m, v);
                }
            }
            if let Some(d) = ev.drift(&p.name).await {
                // The catalog is read now: its drift belongs to the latest
                // period read; it opens none (a level carries to the next).
                let latest = points
                    .range((cursor, pi)..(end, pi))
                    .filter(|((_, i), _)| *i == pi)
                    .map(|((t, _), _)| *t)
                    .next_back();
                if let Some(at) = latest {
                    tracing::debug!(pipeline = %p.name, period_start = at, columns = d.columns,
                        source_version = d.source_version.as_deref().unwrap_or("?"), "catalog drift read");
                    merge(points.entry((at, pi)).or_default(), Metric::CatalogDrift, d.columns as f64);
                }
            }
        }
        self.evidence = Some(ev);
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
