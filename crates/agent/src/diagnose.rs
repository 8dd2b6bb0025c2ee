//! Findings: faults that Glue's own metrics name outright, and what they rule out.
//!
//! A tabular policy sees a window through a handful of buckets; two Glue
//! failures look like "memory pressure" there and are made worse by its usual
//! answer, more workers:
//!
//! - **Driver out of memory.** A job reading very many small files exhausts the
//!   *driver's* heap (`glue.driver.jvm.heap.usage`) while the executors idle.
//!   More workers add tasks for the driver to track; AWS's OOM walkthrough
//!   fixes it by grouping the input files (`groupFiles`/`groupSize`), not by
//!   scaling ("Debugging OOM exceptions and job abnormalities",
//!   <https://docs.aws.amazon.com/glue/latest/dg/monitor-profile-debug-oom-abnormalities.html>).
//! - **One executor doing all the reading.** A JDBC read through a single
//!   connection runs in one task on one executor
//!   (`glue.driver.ExecutorAllocationManager.executors.numberAllExecutors` = 1)
//!   until it runs out of memory; added workers get no partition to read.
//!   The fix is a partitioned read (`hashfield`/`hashpartitions`), a code
//!   change: a person's job (same page, "executor OOM").
//!
//! A failed job run (see `selfheal_core::evidence`) says more: a schema
//! mismatch is no case for more workers, an access refusal no case for any
//! action but a page.
//!
//! Two findings name their own remedy, the one AWS documents:
//!
//! - **Executors out of memory on a job with several executors**: a job run
//!   *failed* with an out-of-memory error (the run's `ErrorMessage`, not a
//!   task-level error Spark may retry through). The run as sized cannot
//!   finish; AWS's capacity-planning guide answers memory exhaustion spread
//!   over executors with more or larger workers ("Monitoring for DPU capacity
//!   planning", <https://docs.aws.amazon.com/glue/latest/dg/monitor-debug-capacity.html>):
//!   the next run with more capacity, [`Action::ScaleUp`].
//!
//! - **Catalog drift while the job fails**: the source table's columns
//!   differ from the job's table's (`GetTable` of both,
//!   `selfheal.glue.catalogDrift`) and the job fails the way drift makes it
//!   fail (a run failed on a schema mismatch, schema errors, or nothing
//!   read in an unhealthy window). The job reads data its table does not describe; the fix is the
//!   table remapped to the source's columns, [`Action::SchemaRemap`] (what a
//!   Glue crawler does by default, "updates the schema in the Data Catalog
//!   to match the data source being crawled",
//!   <https://docs.aws.amazon.com/glue/latest/dg/crawler-schema-changes-prevent.html>).
//!   A drift on a healthy job is no incident; a failed schema-mismatch run
//!   without drift has nothing a remap could copy: a person decides.
//!
//! Every other finding vetoes scaling up (never applied alone against it)
//! and, once the evidence is strong (heap near full, or an out-of-memory
//! error), escalates once per incident with the explanation. Pure: a
//! function of one window. The simulator publishes neither the driver heap,
//! a single executor, job-run states nor the catalog, so a policy's
//! evaluation is unchanged by this step. (A full executor heap with failing
//! tasks, without a failed run, names no remedy here: tried as one, it cost
//! the learned policy 0.9 of return and 0.2 steps of MTTR on seeds
//! 100000..101000, paging at the top worker level where it used to restart.)

use selfheal_core::{Action, Metric, Telemetry};

/// Driver heap above the executors' by this much: the driver is the side
/// running out of memory (the executors idle while it tracks tasks).
pub const DRIVER_LEAD: f64 = 0.2;
/// Heap share at which an out-of-memory failure is imminent: escalate.
pub const HEAP_CRITICAL: f64 = 0.8;

/// A fault the window's Glue metrics name, against which scaling up cannot help.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Finding {
    /// The driver, not the executors, is running out of memory.
    DriverMemory {
        /// `glue.driver.jvm.heap.usage`, 0..1.
        driver_heap: f64,
        /// `glue.ALL.jvm.heap.usage`, 0..1 (0 when absent).
        executor_heap: f64,
    },
    /// One active executor, under memory pressure or failing with OOM.
    SingleExecutor {
        /// Active executors.
        executors: f64,
        /// Executor heap, 0..1 (0 when absent).
        heap: f64,
        /// `glue.error.OUT_OF_MEMORY_ERROR` in the period (0 when absent).
        oom_errors: f64,
    },
    /// A job run failed on a schema mismatch: a remap's business, not
    /// more workers'.
    SchemaMismatch,
    /// A job run was refused by IAM or a resource policy: no action of the
    /// agent grants a permission; a person must.
    AccessDenied,
    /// The source table's columns differ from the job's table's while the
    /// job fails: the table needs the source's columns.
    CatalogDrift {
        /// Columns added, dropped or retyped (`selfheal.glue.catalogDrift`).
        columns: f64,
    },
    /// A job run failed out of memory while several executors shared the
    /// work: the next run needs more capacity.
    ExecutorMemory {
        /// Active executors (0 when absent).
        executors: f64,
        /// Executor heap, 0..1 (0 when absent).
        heap: f64,
    },
}

impl Finding {
    /// Whether the evidence is strong enough to page a person now.
    pub fn escalate(&self) -> bool {
        match *self {
            Finding::DriverMemory { driver_heap, .. } => driver_heap >= HEAP_CRITICAL,
            Finding::SingleExecutor { heap, oom_errors, .. } => oom_errors > 0.0 || heap >= HEAP_CRITICAL,
            Finding::SchemaMismatch | Finding::ExecutorMemory { .. } | Finding::CatalogDrift { .. } => false,
            Finding::AccessDenied => true,
        }
    }

    /// The action the evidence names as the fix, if the agent can take it
    /// (see the module doc); `None` = scaling is vetoed and a person decides.
    pub fn remedy(&self) -> Option<Action> {
        match self {
            Finding::ExecutorMemory { .. } => Some(Action::ScaleUp),
            Finding::CatalogDrift { .. } => Some(Action::SchemaRemap),
            _ => None,
        }
    }

    /// Stable name (provenance, pages).
    pub fn name(&self) -> &'static str {
        match self {
            Finding::DriverMemory { .. } => "driver_memory",
            Finding::SingleExecutor { .. } => "single_executor",
            Finding::SchemaMismatch => "schema_mismatch",
            Finding::AccessDenied => "access_denied",
            Finding::ExecutorMemory { .. } => "executor_memory",
            Finding::CatalogDrift { .. } => "catalog_drift",
        }
    }

    /// Why scaling up will not help, and what will: one sentence for a page.
    pub fn explain(&self) -> String {
        match *self {
            Finding::DriverMemory { driver_heap, executor_heap } => format!(
                "the driver is running out of memory (driver heap {:.0} %, executors {:.0} %): more workers add tasks \
                 for the driver to track and will not help; group the input files (groupFiles/groupSize) or give \
                 the driver a larger worker type",
                100.0 * driver_heap,
                100.0 * executor_heap
            ),
            Finding::SingleExecutor { executors, heap, oom_errors } => format!(
                "one executor does all the work ({executors:.0} active, heap {:.0} %, {oom_errors:.0} out-of-memory \
                 errors): added workers get nothing to read and will not help; partition the read \
                 (hashfield/hashpartitions) or raise the executor's memory",
                100.0 * heap
            ),
            Finding::SchemaMismatch => "a job run failed on a schema mismatch: more workers read the same mismatched \
                                        data and will not help; remap the schema"
                .into(),
            Finding::AccessDenied => "a job run was refused by IAM or a resource policy: no retry, restart or scaling \
                                      will help; a person must grant the permission"
                .into(),
            Finding::CatalogDrift { columns } => format!(
                "the source table's columns differ from the job's table's ({columns:.0} added, dropped or retyped) \
                 while the job fails: more workers read the same mismatched data; remap the table to the source's \
                 columns"
            ),
            Finding::ExecutorMemory { executors, heap } => format!(
                "a job run failed out of memory with {executors:.0} executors sharing the work (heap {:.0} %): the \
                 next run needs more capacity (more workers)",
                100.0 * heap
            ),
        }
    }
}

/// What the window's Glue metrics and evidence say outright, if anything
/// (see the module doc); `unhealthy` is the policy stack's verdict on the
/// window (`crate::supervise::window_unhealthy`).
pub fn diagnose(t: &Telemetry, unhealthy: bool) -> Option<Finding> {
    let runs = |m: Metric| t.value(m).unwrap_or(0.0) > 0.0;
    if runs(Metric::RunsFailedAccess) {
        return Some(Finding::AccessDenied);
    }
    // Both heaps measured: an absent executor heap is no evidence that the
    // executors idle.
    if let (Some(driver_heap), Some(executor_heap)) = (t.value(Metric::DriverHeapUsage), t.value(Metric::HeapUsage)) {
        if driver_heap >= executor_heap + DRIVER_LEAD {
            return Some(Finding::DriverMemory { driver_heap, executor_heap });
        }
    }
    // Exactly one active executor (0 is a job between runs). A job sized to
    // one executor (2 G.1X workers: a driver and one executor) looks the
    // same; there, too, scaling needs a person's say.
    if let Some(executors) = t.value(Metric::Executors).filter(|e| (0.5..1.5).contains(e)) {
        let heap = t.value(Metric::HeapUsage).unwrap_or(0.0);
        let oom_errors = t.value(Metric::ErrorsOom).unwrap_or(0.0) + t.value(Metric::RunsFailedOom).unwrap_or(0.0);
        if oom_errors > 0.0 || heap >= 0.5 {
            return Some(Finding::SingleExecutor { executors, heap, oom_errors });
        }
    }
    // Drift with the job failing the way drift makes it fail: a run failed
    // on a schema mismatch, schema errors, or nothing read in an unhealthy
    // window. A table that differs from its source by design (a curated
    // subset) is no drift to "fix" on any other failure.
    if let Some(columns) = t.value(Metric::CatalogDrift).filter(|c| *c > 0.0) {
        let nothing_read = unhealthy && t.value(Metric::RecordsRead).is_some_and(|r| r <= 0.0);
        if runs(Metric::RunsFailedSchema) || runs(Metric::ErrorsSchema) || nothing_read {
            return Some(Finding::CatalogDrift { columns });
        }
    }
    if runs(Metric::RunsFailedSchema) {
        return Some(Finding::SchemaMismatch);
    }
    // A run failed out of memory and the work was spread (or the executor
    // count is not published): more capacity is the documented answer.
    // The executors' heap must be measured and high: a failed run's message
    // alone does not say whether the driver or an executor ran out.
    if runs(Metric::RunsFailedOom) {
        let executors = t.value(Metric::Executors);
        let heap = t.value(Metric::HeapUsage).filter(|h| *h >= HEAP_CRITICAL);
        if let (true, Some(heap)) = (executors.is_none_or(|e| e >= 1.5), heap) {
            return Some(Finding::ExecutorMemory { executors: executors.unwrap_or(0.0), heap });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glue(heap: f64, executors: f64) -> Telemetry {
        let mut t = Telemetry::default();
        t.set(Metric::HeapUsage, heap);
        t.set(Metric::Executors, executors);
        t
    }

    #[test]
    fn a_busy_driver_with_idle_executors_is_a_driver_finding() {
        let mut t = glue(0.03, 9.0);
        assert_eq!(diagnose(&t, false), None, "no driver metric, no driver finding");
        let mut no_executor_heap = Telemetry::default();
        no_executor_heap.set(Metric::DriverHeapUsage, 0.9);
        assert_eq!(diagnose(&no_executor_heap, false), None, "an absent executor heap is not an idle one");
        t.set(Metric::DriverHeapUsage, 0.3);
        let f = diagnose(&t, false).expect("driver heap well above the executors'");
        assert!(!f.escalate(), "0.30: not yet critical");
        t.set(Metric::DriverHeapUsage, 0.9);
        let f = diagnose(&t, false).unwrap();
        assert!(f.escalate() && f.explain().contains("driver") && f.explain().contains("groupFiles"));
        // A driver as busy as its executors is no finding.
        let mut even = glue(0.7, 9.0);
        even.set(Metric::DriverHeapUsage, 0.75);
        assert_eq!(diagnose(&even, false), None);
    }

    #[test]
    fn failed_runs_name_what_scaling_cannot_fix() {
        let mut t = glue(0.5, 9.0);
        t.set(Metric::RunsFailedSchema, 1.0);
        let f = diagnose(&t, false).unwrap();
        assert_eq!(f, Finding::SchemaMismatch);
        assert!(!f.escalate(), "the policy remaps; no page needed");
        t.set(Metric::RunsFailedAccess, 1.0);
        let f = diagnose(&t, false).unwrap();
        assert!(f == Finding::AccessDenied && f.escalate() && f.explain().contains("permission"));
    }

    #[test]
    fn a_run_failed_out_of_memory_on_several_executors_names_more_capacity() {
        let mut t = glue(0.95, 3.0);
        assert_eq!(diagnose(&t, false), None, "a full heap alone names no remedy: the policy decides");
        t.set(Metric::RunsFailedOom, 1.0);
        let f = diagnose(&t, false).unwrap();
        assert_eq!(f, Finding::ExecutorMemory { executors: 3.0, heap: 0.95 });
        assert_eq!(f.remedy(), Some(Action::ScaleUp));
        assert!(!f.escalate() && f.explain().contains("more capacity"));
        // One executor: the single-reader finding, whose fix is no scale-up.
        let mut one = glue(0.95, 1.0);
        one.set(Metric::RunsFailedOom, 1.0);
        let f = diagnose(&one, false).unwrap();
        assert!(matches!(f, Finding::SingleExecutor { .. }) && f.remedy().is_none());
        // The driver's heap, not the executors': grouping files, no scale-up.
        let mut driver = glue(0.2, 3.0);
        driver.set(Metric::DriverHeapUsage, 0.97);
        driver.set(Metric::RunsFailedOom, 1.0);
        assert!(diagnose(&driver, false).unwrap().remedy().is_none());
        // The executors' heap unknown or low: whose memory ran out is not
        // known, no remedy (the driver's would be made worse by scaling).
        let mut bare = Telemetry::default();
        bare.set(Metric::RunsFailedOom, 1.0);
        assert_eq!(diagnose(&bare, false), None);
        bare.set(Metric::HeapUsage, 0.5);
        assert_eq!(diagnose(&bare, false), None);
        bare.set(Metric::HeapUsage, 0.9);
        assert_eq!(diagnose(&bare, false).unwrap().remedy(), Some(Action::ScaleUp), "executors unknown, heap full");
    }

    #[test]
    fn catalog_drift_on_a_failing_job_names_a_remap_and_only_then() {
        let mut t = glue(0.4, 3.0);
        t.set(Metric::CatalogDrift, 0.0);
        assert_eq!(diagnose(&t, true), None, "no drift, no remap");
        t.set(Metric::CatalogDrift, 2.0);
        assert_eq!(diagnose(&t, false), None, "a drift on a healthy job is no incident");
        t.set(Metric::RecordsRead, 5e5);
        assert_eq!(diagnose(&t, true), None, "unhealthy but reading: not the drift's doing");
        let mut oom = t;
        oom.set(Metric::HeapUsage, 0.97);
        oom.set(Metric::RunsFailed, 1.0);
        oom.set(Metric::RunsFailedOom, 1.0);
        assert_eq!(diagnose(&oom, true).unwrap().remedy(), Some(Action::ScaleUp), "a curated table's OOM is scaled");
        t.set(Metric::RecordsRead, 0.0);
        let f = diagnose(&t, true).expect("drift, unhealthy, nothing read");
        assert_eq!(f, Finding::CatalogDrift { columns: 2.0 });
        assert_eq!(f.remedy(), Some(Action::SchemaRemap));
        t.set(Metric::RecordsRead, 5e5);
        t.set(Metric::RunsFailed, 1.0);
        t.set(Metric::RunsFailedSchema, 1.0);
        assert_eq!(diagnose(&t, false).unwrap().remedy(), Some(Action::SchemaRemap), "a schema failure is enough");
        // A schema-mismatch failure without drift: nothing to copy, no remedy.
        t.set(Metric::CatalogDrift, 0.0);
        assert!(diagnose(&t, true).is_some_and(|f| f == Finding::SchemaMismatch && f.remedy().is_none()));
    }

    #[test]
    fn one_executor_out_of_memory_is_a_single_executor_finding() {
        assert_eq!(diagnose(&glue(0.5, 9.0), false), None, "many executors: scaling may help");
        assert_eq!(diagnose(&glue(0.3, 1.0), false), None, "one idle executor: nothing to say");
        assert_eq!(diagnose(&glue(0.9, 0.0), false), None, "no executor: between runs");
        let f = diagnose(&glue(0.55, 1.0), false).unwrap();
        assert!(!f.escalate());
        let mut t = glue(0.6, 1.0);
        t.set(Metric::ErrorsOom, 1.0);
        let f = diagnose(&t, false).unwrap();
        assert!(f.escalate() && f.explain().contains("one executor"));
    }
}
