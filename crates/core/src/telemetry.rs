//! Telemetry: the metric names the whole project speaks, a dense per-step window
//! ([`Telemetry`]) and a sparse point ([`Sample`]) as a source yields it.
//!
//! Names follow AWS Glue's CloudWatch metrics where one exists (namespace `Glue`,
//! including the Glue 4.0 observability metrics `glue.error.*` and
//! `glue.driver.skewness.job`); the rest are the pipeline metrics a CloudWatch
//! custom namespace would carry. A window is a fixed array rather than a map so the
//! simulator can emit millions of them without allocating.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A pipeline stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Reading from the upstream source.
    Ingest,
    /// The Glue job.
    Transform,
    /// Writing to the sink.
    Load,
}

impl Stage {
    /// Every stage, upstream first.
    pub const ALL: [Stage; 3] = [Stage::Ingest, Stage::Transform, Stage::Load];

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Transform => "transform",
            Stage::Load => "load",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

macro_rules! metrics {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $stage:ident; )*) => {
        /// A metric of the pipeline's telemetry. The discriminant is the index into
        /// [`Telemetry`]; the name is the CloudWatch metric name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Metric {
            $( $(#[$doc])* $variant, )*
        }

        impl Metric {
            /// Every metric, in index order.
            pub const ALL: &'static [Metric] = &[$(Metric::$variant),*];

            /// The CloudWatch metric name.
            pub fn name(self) -> &'static str {
                match self { $(Metric::$variant => $name,)* }
            }

            /// The stage whose behaviour the metric reports.
            pub fn stage(self) -> Stage {
                match self { $(Metric::$variant => Stage::$stage,)* }
            }
        }
    };
}

metrics! {
    /// Failed Spark tasks in the period (Glue job metric).
    FailedTasks = "glue.driver.aggregate.numFailedTasks", Transform;
    /// Heap usage of the executors, 0..1.
    HeapUsage = "glue.ALL.jvm.heap.usage", Transform;
    /// CPU system load of the executors, 0..1.
    CpuLoad = "glue.ALL.system.cpuSystemLoad", Transform;
    /// Elapsed time of the current job run, milliseconds.
    ElapsedTime = "glue.driver.aggregate.elapsedTime", Transform;
    /// Records read by the job in the period.
    RecordsRead = "glue.driver.aggregate.recordsRead", Transform;
    /// Executors allocated (the worker count).
    Executors = "glue.driver.ExecutorAllocationManager.executors.numberAllExecutors", Transform;
    /// Job skewness (Glue observability metric): max task time over median.
    Skewness = "glue.driver.skewness.job", Transform;
    /// Errors of every category (Glue observability metric).
    ErrorsAll = "glue.error.ALL", Transform;
    /// Out-of-memory errors (Glue observability error category).
    ErrorsOom = "glue.error.OUT_OF_MEMORY_ERROR", Transform;
    /// End-to-end freshness: p95 seconds from arrival to delivery.
    LatencyP95 = "pipeline.latency.p95", Load;
    /// Upstream answers with HTTP 5xx.
    Errors5xx = "pipeline.errors.upstream5xx", Ingest;
    /// Network timeouts.
    ErrorsTimeout = "pipeline.errors.timeout", Ingest;
    /// Records rejected for a schema mismatch.
    ErrorsSchema = "pipeline.errors.schemaMismatch", Transform;
    /// Records rejected by data-quality checks (malformed, poison).
    ErrorsDataQuality = "pipeline.errors.dataQuality", Transform;
    /// Failed writes to the sink.
    ErrorsSink = "pipeline.errors.sink", Load;
    /// Records that arrived at the source in the period.
    RecordsIn = "pipeline.records.in", Ingest;
    /// Records written to the sink.
    RecordsDelivered = "pipeline.records.delivered", Load;
    /// Records routed to the dead-letter location.
    RecordsDeadLettered = "pipeline.records.deadLettered", Load;
    /// Records that expired from the bounded backlog: lost.
    RecordsLost = "pipeline.records.expired", Ingest;
    /// Records waiting (backlog / queue depth).
    Backlog = "pipeline.backlog.records", Ingest;
    /// 1 while ingest is throttled by backpressure, else 0.
    IngestThrottled = "pipeline.ingest.throttled", Ingest;
    /// Heap usage of the driver, 0..1 (Glue job metric, `Type=gauge`; the
    /// executors' heap is [`Metric::HeapUsage`]). AWS's OOM walkthrough tells
    /// a driver OOM (many small files) from an executor OOM by this metric:
    /// <https://docs.aws.amazon.com/glue/latest/dg/monitor-profile-debug-oom-abnormalities.html>.
    DriverHeapUsage = "glue.driver.jvm.heap.usage", Transform;
    /// Glue job runs that ended `FAILED`, `TIMEOUT` or `ERROR` in the period:
    /// evidence from `GetJobRuns` or a "Glue Job State Change" event, not a
    /// CloudWatch metric (hence the `selfheal.` prefix); see [`crate::evidence`].
    RunsFailed = "selfheal.glue.runsFailed", Transform;
    /// Of them, out of memory (`Container killed by YARN for exceeding memory limits`, `OutOfMemoryError`, …).
    RunsFailedOom = "selfheal.glue.runsFailed.outOfMemory", Transform;
    /// Of them, a schema mismatch (`AnalysisException: cannot resolve …`, …).
    RunsFailedSchema = "selfheal.glue.runsFailed.schemaMismatch", Transform;
    /// Of them, a source or sink unreachable, or a call to it timed out.
    RunsFailedConnection = "selfheal.glue.runsFailed.connection", Transform;
    /// Of them, throttled by a service (`Rate exceeded`, `SlowDown`, …).
    RunsFailedThrottling = "selfheal.glue.runsFailed.throttling", Transform;
    /// Of them, refused by IAM or a resource policy (`AccessDenied`, `not authorized`, …).
    RunsFailedAccess = "selfheal.glue.runsFailed.accessDenied", Transform;
    /// Columns by which the Glue Data Catalog's source table differs from the
    /// table the job reads (added + dropped + retyped; 0 when they agree): a
    /// level read with `GetTable` each poll, evidence of schema drift before
    /// any record is rejected. Not a CloudWatch metric (hence `selfheal.`).
    CatalogDrift = "selfheal.glue.catalogDrift", Transform;
}

impl Metric {
    /// Number of metrics; the width of a [`Telemetry`] window.
    pub const COUNT: usize = Metric::ALL.len();

    /// The metric with this CloudWatch name.
    pub fn from_name(s: &str) -> Option<Metric> {
        Metric::ALL.iter().copied().find(|m| m.name() == s)
    }

    /// Dense index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether the metric counts events in its period (CloudWatch `Sum`),
    /// else it is a level (a gauge, CloudWatch `Average`). The difference
    /// matters when a metric is missing from a period: CloudWatch publishes no
    /// datapoint for a count when nothing happened, so an absent count is 0,
    /// while an absent level is unknown.
    pub fn is_count(self) -> bool {
        use Metric::*;
        matches!(
            self,
            FailedTasks
                | RecordsRead
                | ErrorsAll
                | ErrorsOom
                | Errors5xx
                | ErrorsTimeout
                | ErrorsSchema
                | ErrorsDataQuality
                | ErrorsSink
                | RecordsIn
                | RecordsDelivered
                | RecordsDeadLettered
                | RecordsLost
                | RunsFailed
                | RunsFailedOom
                | RunsFailedSchema
                | RunsFailedConnection
                | RunsFailedThrottling
                | RunsFailedAccess
        )
    }

    /// One bit per metric, for [`Telemetry`]'s presence mask.
    #[inline]
    fn bit(self) -> u64 {
        1u64 << (self as usize)
    }

    /// The error-count metrics whose sum is the pipeline's error count.
    pub const ERROR_CLASSES: [Metric; 5] =
        [Metric::Errors5xx, Metric::ErrorsTimeout, Metric::ErrorsSchema, Metric::ErrorsDataQuality, Metric::ErrorsSink];
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Metric::from_name(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown metric {s:?}")))
    }
}

/// One step's window of pipeline telemetry: a value per [`Metric`], and
/// which of them the pipeline actually reported.
///
/// A metric that was never set is **absent**: [`Telemetry::get`] reads it as
/// 0 (the neutral value for arithmetic), and [`Telemetry::is_present`] tells
/// it from a measured 0. Consumers that would be misled by a 0 (the
/// detector's features, the reward) check presence: a Glue job publishes
/// none of the `pipeline.*` metrics unless its script does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Telemetry {
    values: [f64; Metric::COUNT],
    present: u64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry { values: [0.0; Metric::COUNT], present: 0 }
    }
}

const _: () = assert!(Metric::COUNT <= 64, "the presence mask has 64 bits");

impl Telemetry {
    /// The value of `m` (0 when absent).
    #[inline]
    pub fn get(&self, m: Metric) -> f64 {
        self.values[m as usize]
    }

    /// The value of `m`, if the pipeline reported it.
    #[inline]
    pub fn value(&self, m: Metric) -> Option<f64> {
        self.is_present(m).then(|| self.values[m as usize])
    }

    /// Set the value of `m` (it is present from now on).
    #[inline]
    pub fn set(&mut self, m: Metric, v: f64) {
        self.values[m as usize] = v;
        self.present |= m.bit();
    }

    /// Forget `m`: absent, read as 0.
    #[inline]
    pub fn clear(&mut self, m: Metric) {
        self.values[m as usize] = 0.0;
        self.present &= !m.bit();
    }

    /// Whether the pipeline reported `m`.
    #[inline]
    pub fn is_present(&self, m: Metric) -> bool {
        self.present & m.bit() != 0
    }

    /// Whether every one of `ms` is present.
    pub fn all_present(&self, ms: &[Metric]) -> bool {
        ms.iter().all(|m| self.is_present(*m))
    }

    /// The metrics present, in [`Metric::ALL`] order.
    pub fn present(&self) -> impl Iterator<Item = Metric> + '_ {
        Metric::ALL.iter().copied().filter(|m| self.is_present(*m))
    }

    /// All values, in [`Metric::ALL`] order.
    pub fn values(&self) -> &[f64; Metric::COUNT] {
        &self.values
    }

    /// Sum of the error-class counts.
    pub fn errors(&self) -> f64 {
        Metric::ERROR_CLASSES.iter().map(|m| self.get(*m)).sum()
    }

    /// Share of work that failed: errors / (errors + delivered). 0 when nothing
    /// happened at all (a stall shows in latency, not here).
    pub fn error_ratio(&self) -> f64 {
        let e = self.errors();
        let d = self.get(Metric::RecordsDelivered);
        if e + d <= 0.0 {
            0.0
        } else {
            e / (e + d)
        }
    }
}

impl Serialize for Telemetry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Absent metrics are left out, never written as 0.
        let mut map = s.serialize_map(Some(self.present().count()))?;
        for m in self.present() {
            map.serialize_entry(m.name(), &self.get(m))?;
        }
        map.end()
    }
}

/// One telemetry point as a source yields it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Unix time, milliseconds.
    pub ts: i64,
    /// Pipeline name.
    pub pipeline: String,
    /// Stage the metrics describe.
    pub stage: Stage,
    /// Metric values at `ts`.
    pub metrics: Vec<(Metric, f64)>,
}

/// Where every record went. The invariant `arrived == delivered + queued +
/// dead_lettered + lost` holds after every step; nothing disappears silently.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLedger {
    /// Records that arrived at the source.
    pub arrived: u64,
    /// Records written to the sink.
    pub delivered: u64,
    /// Records waiting in the backlog (source retention or pipeline queue).
    pub queued: u64,
    /// Records routed to the dead-letter location.
    pub dead_lettered: u64,
    /// Records that expired from the bounded backlog.
    pub lost: u64,
}

impl RecordLedger {
    /// Whether every arrived record is accounted for.
    pub fn balanced(&self) -> bool {
        self.arrived == self.delivered + self.queued + self.dead_lettered + self.lost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Metric::ALL.iter().map(|m| m.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Metric::COUNT);
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(Metric::from_name(m.name()), Some(*m));
        }
    }

    #[test]
    fn an_absent_metric_is_told_from_a_measured_zero() {
        let mut t = Telemetry::default();
        assert!(!t.is_present(Metric::LatencyP95) && t.value(Metric::LatencyP95).is_none());
        t.set(Metric::LatencyP95, 0.0);
        assert_eq!(t.value(Metric::LatencyP95), Some(0.0));
        assert!(t.all_present(&[Metric::LatencyP95]) && !t.all_present(&[Metric::LatencyP95, Metric::Backlog]));
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(json, r#"{"pipeline.latency.p95":0.0}"#, "absent metrics are not serialised");
        t.clear(Metric::LatencyP95);
        assert!(!t.is_present(Metric::LatencyP95));
        assert!(Metric::ErrorsOom.is_count() && !Metric::DriverHeapUsage.is_count());
        assert!(!Metric::CatalogDrift.is_count(), "a drift is a level: it carries, it does not add up");
    }

    #[test]
    fn error_ratio_handles_idle_windows() {
        let mut t = Telemetry::default();
        assert_eq!(t.error_ratio(), 0.0);
        t.set(Metric::ErrorsSink, 30.0);
        t.set(Metric::RecordsDelivered, 70.0);
        assert!((t.error_ratio() - 0.3).abs() < 1e-12);
    }
}
