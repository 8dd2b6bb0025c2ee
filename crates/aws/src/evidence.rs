//! Glue-native evidence for the CloudWatch source: how the job's runs ended
//! and whether the Data Catalog has drifted, read from Glue each poll and
//! merged into the same periods' windows as the metrics.
//!
//! A Glue job publishes only the `Glue` namespace metrics, and between
//! scheduled runs none at all; the most direct evidence of what is wrong is
//! not a metric.
//!
//! **Job runs.** `GetJobRuns` returns a job's runs "in chronological order,
//! with the newest jobs returned first", `MaxResults` 1..=200, paged with
//! `NextToken` (<https://docs.aws.amazon.com/glue/latest/webapi/API_GetJobRuns.html>).
//! A `JobRun` carries `Id`, `JobRunState` (`STARTING`, `RUNNING`, `STOPPING`,
//! `STOPPED`, `SUCCEEDED`, `FAILED`, `ERROR`, `TIMEOUT`, `WAITING`, `EXPIRED`),
//! `ErrorMessage`, `StartedOn`, `CompletedOn` and `LastModifiedOn`
//! (<https://docs.aws.amazon.com/glue/latest/webapi/API_JobRun.html>). A run
//! that ended (`CompletedOn`) inside a period becomes that period's counts via
//! [`selfheal_core::evidence::run_ended`] (a `FAILED` or `ERROR` run counts in
//! `selfheal.glue.runsFailed` and its class, a `TIMEOUT` without class, a
//! `SUCCEEDED` or `STOPPED` one nothing). Each run is counted once: the ids
//! counted are remembered (the last [`SEEN_RUNS`]). Paging stops at the first
//! page that reaches runs started before the range read. A run whose period
//! was already emitted (a throttled `GetJobRuns` delayed it) is not lost: it
//! is counted in the first period not yet emitted, as a late "Glue Job State
//! Change" event is (`selfheal_sidecar::window::Assembler::push_event`).
//!
//! **Catalog drift.** `GetTable` returns the `Table` with its
//! `StorageDescriptor.Columns` and its `VersionId`
//! (<https://docs.aws.amazon.com/glue/latest/webapi/API_GetTable.html>,
//! <https://docs.aws.amazon.com/glue/latest/webapi/API_Table.html>; a
//! `VersionId` "is a string representation of an integer. Each version is
//! incremented by 1", <https://docs.aws.amazon.com/glue/latest/webapi/API_TableVersion.html>).
//! The source table's columns are compared with the job's table's by
//! [`crate::glue::remap`], the mapping a `schema_remap` would apply; the number
//! of columns added, dropped and retyped is the level
//! `selfheal.glue.catalogDrift` (0 when they agree: present, not absent, while
//! the catalog is readable).
//!
//! **Failures.** Evidence is optional and never stops the metrics: a throttled
//! or refused `GetJobRuns`/`GetTable` is logged (a warning the first time per
//! pipeline, call and kind of error, then at debug), counted
//! ([`Evidence::failures`]), and that poll goes on without it.

use crate::errors::{AwsFailure, ErrorKind};
use crate::glue::{remap, Col};
use aws_sdk_glue::types::{JobRun, Table};
use aws_sdk_glue::Client;
use selfheal_core::evidence::run_ended;
use selfheal_core::Metric;
use std::collections::{BTreeMap, HashSet, VecDeque};

/// Run ids remembered as counted, per source: far more than the runs of a
/// lookback, so a run is never counted twice; old ids fall out first.
pub const SEEN_RUNS: usize = 4096;

/// `GetJobRuns` page size (the API allows 1..=200).
const PAGE: i32 = 200;
/// Pages read per job and poll at most: 4,000 runs. A range holding more
/// (a week's backfill of a job that runs every minute) is read only down to
/// there, with a warning.
const MAX_PAGES: usize = 20;

/// The count metrics a job's runs feed.
pub use selfheal_core::evidence::RUN_METRICS;

/// The job's table and the table the data arrives as (e.g. crawled), in one database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogTables {
    /// Glue database.
    pub database: String,
    /// The table the job reads.
    pub table: String,
    /// The table reflecting the data as it arrives now.
    pub source_table: String,
}

/// Where one pipeline's evidence comes from; each part is optional.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvidenceSources {
    /// Pipeline name (as the source names it).
    pub pipeline: String,
    /// The Glue job whose runs are read (none: no run evidence).
    pub job_name: Option<String>,
    /// The tables compared (none: no drift evidence).
    pub tables: Option<CatalogTables>,
}

impl EvidenceSources {
    /// The evidence metrics this pipeline has sources for.
    pub fn metrics(&self) -> Vec<Metric> {
        let mut out = Vec::new();
        if self.job_name.is_some() {
            out.extend(RUN_METRICS);
        }
        if self.tables.is_some() {
            out.push(Metric::CatalogDrift);
        }
        out
    }
}

/// A failed evidence call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pipeline}: {operation}: {message}")]
pub struct EvidenceError {
    /// The pipeline whose evidence was read.
    pub pipeline: String,
    /// The Glue operation.
    pub operation: &'static str,
    /// What kind of failure.
    pub kind: ErrorKind,
    /// What AWS said.
    pub message: String,
}

impl EvidenceError {
    fn new(pipeline: &str, operation: &'static str, f: AwsFailure) -> EvidenceError {
        EvidenceError { pipeline: pipeline.to_string(), operation, kind: f.kind, message: f.message }
    }
}

/// The ids of runs already counted, bounded: the oldest fall out first.
#[derive(Clone, Debug, Default)]
pub struct SeenRuns {
    ids: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl SeenRuns {
    /// Remember at most `cap` ids.
    pub fn new(cap: usize) -> SeenRuns {
        SeenRuns { ids: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    /// Whether `id` was counted.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Remember `id`; false if it was known.
    pub fn insert(&mut self, id: &str) -> bool {
        if !self.ids.insert(id.to_string()) {
            return false;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// A job run as the evidence reads it (the SDK's `JobRun`, times in Unix seconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunView {
    /// Run id.
    pub id: String,
    /// `JobRunState`.
    pub state: String,
    /// `ErrorMessage` ("" when none).
    pub message: String,
    /// `StartedOn`.
    pub started: Option<i64>,
    /// `CompletedOn`.
    pub completed: Option<i64>,
}

impl RunView {
    /// From the SDK's shape.
    pub fn of(r: &JobRun) -> Option<RunView> {
        Some(RunView {
            id: r.id()?.to_string(),
            state: r.job_run_state()?.as_str().to_string(),
            message: r.error_message().unwrap_or("").to_string(),
            started: r.started_on().map(|t| t.secs()),
            completed: r.completed_on().map(|t| t.secs()),
        })
    }
}

/// Counts of one ended run: (period start, counts, run id).
pub type RunCounts = (i64, Vec<(Metric, f64)>, String);

/// Where a period of `period` seconds containing `t` starts.
pub fn period_start(t: i64, period: i64) -> i64 {
    t - t.rem_euclid(period.max(1))
}

/// What ended runs add: (period start, counts, run id) for each run not yet
/// counted that completed before `end`: in its own period when that is at or
/// after `cursor` (not emitted yet), in the cursor's period when it is late
/// (completed before the cursor but not before `floor`, where reading began).
/// Runs that have not ended, or ended at or after `end` (a period not final
/// yet), are left for a later poll. Unknown states are returned apart (id,
/// why), to be logged and remembered.
pub fn ended_runs(
    runs: &[RunView],
    seen: &SeenRuns,
    floor: i64,
    cursor: i64,
    end: i64,
    period: i64,
) -> (Vec<RunCounts>, Vec<(String, String)>) {
    let mut counted = Vec::new();
    let mut unknown = Vec::new();
    for r in runs {
        let Some(done) = r.completed else { continue };
        if done >= end || done < floor || seen.contains(&r.id) {
            continue;
        }
        let at = period_start(done, period).max(cursor);
        match run_ended(&r.state, &r.message) {
            Ok(counts) => counted.push((at, counts, r.id.clone())),
            Err(why) => unknown.push((r.id.clone(), why)),
        }
    }
    (counted, unknown)
}

/// Whether a page reached runs started before `start`: pages come newest
/// first, so later pages hold only older runs.
pub fn page_reaches(runs: &[RunView], start: i64) -> bool {
    runs.iter().any(|r| r.started.is_some_and(|s| s < start))
}

/// The drift between the job's table and the source table: columns added,
/// dropped and retyped (0 when they agree).
pub fn drift(current: &[Col], incoming: &[Col]) -> usize {
    let r = remap(current, incoming);
    r.added.len() + r.dropped.len() + r.retyped.len()
}

fn columns(t: &Table) -> Vec<Col> {
    t.storage_descriptor()
        .map(|sd| {
            sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or("string").to_string())).collect()
        })
        .unwrap_or_default()
}

/// The drift reading of one poll.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drift {
    /// Columns added + dropped + retyped.
    pub columns: usize,
    /// The source table's `VersionId`.
    pub source_version: Option<String>,
}

/// Reads the evidence of every pipeline.
pub struct Evidence {
    client: Client,
    sources: BTreeMap<String, EvidenceSources>,
    seen: SeenRuns,
    failures: BTreeMap<(String, &'static str, &'static str), u64>,
}

impl Evidence {
    /// Evidence from Glue for these pipelines.
    pub fn new(client: Client, sources: Vec<EvidenceSources>) -> Evidence {
        Evidence {
            client,
            sources: sources.into_iter().map(|s| (s.pipeline.clone(), s)).collect(),
            seen: SeenRuns::new(SEEN_RUNS),
            failures: BTreeMap::new(),
        }
    }

    /// The sources of `pipeline`, if any.
    pub fn sources(&self, pipeline: &str) -> Option<&EvidenceSources> {
        self.sources.get(pipeline)
    }

    /// Failed evidence calls so far, by (pipeline, operation, kind of failure).
    pub fn failures(&self) -> &BTreeMap<(String, &'static str, &'static str), u64> {
        &self.failures
    }

    /// Log and count a failure; the poll goes on without this evidence.
    fn failed(&mut self, e: &EvidenceError) {
        let n = self.failures.entry((e.pipeline.clone(), e.operation, e.kind.name())).or_default();
        *n += 1;
        if *n == 1 {
            tracing::warn!(pipeline = %e.pipeline, operation = e.operation, kind = e.kind.name(), error = %e.message,
                failures = *n, "Glue evidence unavailable; the metrics are polled without it");
        } else {
            tracing::debug!(pipeline = %e.pipeline, operation = e.operation, kind = e.kind.name(), error = %e.message,
                failures = *n, "Glue evidence unavailable again");
        }
    }

    /// The counts of `pipeline`'s runs that ended in `[cursor, end)` (late
    /// ones from `[floor, cursor)` land at `cursor`), by period start.
    pub async fn runs(
        &mut self,
        pipeline: &str,
        floor: i64,
        cursor: i64,
        end: i64,
        period: i64,
    ) -> Vec<(i64, Vec<(Metric, f64)>)> {
        let Some(job) = self.sources.get(pipeline).and_then(|s| s.job_name.clone()) else { return Vec::new() };
        let runs = match self.job_runs(pipeline, &job, floor.min(cursor)).await {
            Ok(r) => r,
            Err(e) => {
                self.failed(&e);
                return Vec::new();
            }
        };
        let (counted, unknown) = ended_runs(&runs, &self.seen, floor, cursor, end, period);
        for (id, why) in unknown {
            tracing::warn!(pipeline, job = %job, run = %id, error = %why, "job run in an unknown state: not counted");
            self.seen.insert(&id);
        }
        let mut out = Vec::new();
        for (at, counts, id) in counted {
            if !counts.is_empty() {
                let r = runs.iter().find(|r| r.id == id);
                tracing::info!(pipeline, job = %job, run = %id, state = r.map_or("", |r| r.state.as_str()),
                    completed = r.and_then(|r| r.completed), period_start = at,
                    error = r.map_or("", |r| r.message.as_str()), evidence = ?counts,
                    "Glue job run ended: evidence for its period");
            }
            self.seen.insert(&id);
            out.push((at, counts));
        }
        out
    }

    /// Every run of `job` down to the first page that reaches runs started
    /// before `start` (newest first).
    async fn job_runs(&self, pipeline: &str, job: &str, start: i64) -> Result<Vec<RunView>, EvidenceError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let resp = self
                .client
                .get_job_runs()
                .job_name(job)
                .max_results(PAGE)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| EvidenceError::new(pipeline, "GetJobRuns", AwsFailure::from_sdk("GetJobRuns", &e)))?;
            let page: Vec<RunView> = resp.job_runs().iter().filter_map(RunView::of).collect();
            let done = page_reaches(&page, start);
            out.extend(page);
            token = resp.next_token().filter(|t| !t.is_empty()).map(str::to_string);
            if done || token.is_none() {
                return Ok(out);
            }
        }
        // The cap was hit with older runs left: runs that started before the
        // oldest one read and ended in range are not seen. Say so.
        tracing::warn!(
            pipeline,
            job,
            pages = MAX_PAGES,
            runs = out.len(),
            "GetJobRuns: stopped at the page cap before reaching the range's start; older runs are not read"
        );
        Ok(out)
    }

    /// `pipeline`'s catalog drift now, if it has tables and the catalog answered.
    pub async fn drift(&mut self, pipeline: &str) -> Option<Drift> {
        let t = self.sources.get(pipeline)?.tables.clone()?;
        let read = async {
            let cur = self.table(pipeline, &t.database, &t.table).await?;
            let inc = self.table(pipeline, &t.database, &t.source_table).await?;
            Ok::<_, EvidenceError>((cur, inc))
        };
        let (cur, inc) = match read.await {
            Ok(x) => x,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let n = drift(&columns(&cur), &columns(&inc));
        let d = Drift { columns: n, source_version: inc.version_id().map(str::to_string) };
        if n > 0 {
            tracing::info!(pipeline, database = %t.database, table = %t.table, source_table = %t.source_table,
                source_version = d.source_version.as_deref().unwrap_or("?"),
                table_version = cur.version_id().unwrap_or("?"), columns = n,
                "the source table's schema differs from the job's table: catalog drift");
        } else {
            tracing::debug!(
                pipeline,
                source_version = d.source_version.as_deref().unwrap_or("?"),
                "catalog tables agree"
            );
        }
        Some(d)
    }

    async fn table(&self, pipeline: &str, db: &str, name: &str) -> Result<Table, EvidenceError> {
        let out = self
            .client
            .get_table()
            .database_name(db)
            .name(name)
            .send()
            .await
            .map_err(|e| EvidenceError::new(pipeline, "GetTable", AwsFailure::from_sdk("GetTable", &e)))?;
        out.table().cloned().ok_or_else(|| EvidenceError {
            pipeline: pipeline.to_string(),
            operation: "GetTable",
            kind: ErrorKind::NotFound,
            message: format!("GetTable {db}.{name} returned no table"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, state: &str, msg: &str, started: i64, completed: Option<i64>) -> RunView {
        RunView { id: id.into(), state: state.into(), message: msg.into(), started: Some(started), completed }
    }

    const OOM: &str =
        "An error occurred while calling o107.pyWriteDynamicFrame. java.lang.OutOfMemoryError: Java heap space";

    #[test]
    fn a_failed_run_counts_in_the_period_it_completed() {
        let runs = [
            run("jr_2", "RUNNING", "", 1150, None),
            run("jr_1", "FAILED", OOM, 1000, Some(1130)),
            run("jr_0", "SUCCEEDED", "", 900, Some(1010)),
        ];
        let (c, u) = ended_runs(&runs, &SeenRuns::new(8), 900, 1000, 1200, 60);
        assert!(u.is_empty());
        assert_eq!(c.len(), 2, "the running run waits: {c:?}");
        assert_eq!(c[0], (1080, vec![(Metric::RunsFailed, 1.0), (Metric::RunsFailedOom, 1.0)], "jr_1".into()));
        assert_eq!(c[1], (1000, vec![], "jr_0".into()), "a success counts nothing but is remembered");
    }

    #[test]
    fn a_run_is_counted_once_and_late_runs_land_at_the_cursor() {
        let runs =
            [run("a", "FAILED", "Connection refused", 1000, Some(1030)), run("b", "TIMEOUT", "", 1000, Some(1250))];
        let mut seen = SeenRuns::new(8);
        // Not final yet: b completed at or after the end.
        let (c, _) = ended_runs(&runs, &seen, 900, 1020, 1200, 60);
        assert_eq!(c, vec![(1020, vec![(Metric::RunsFailed, 1.0), (Metric::RunsFailedConnection, 1.0)], "a".into())]);
        seen.insert("a");
        let (c, _) = ended_runs(&runs, &seen, 900, 1200, 1320, 60);
        assert_eq!(c, vec![(1200, vec![(Metric::RunsFailed, 1.0)], "b".into())]);
        // Before the floor (where reading began): history, not evidence.
        let (c, _) = ended_runs(&runs, &SeenRuns::new(8), 1100, 1100, 1320, 60);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn unknown_states_are_set_apart() {
        let (c, u) = ended_runs(&[run("x", "EXPIRED", "", 0, Some(10))], &SeenRuns::new(2), 0, 0, 60, 60);
        assert!(c.is_empty());
        assert_eq!(u[0].0, "x");
        assert!(u[0].1.contains("EXPIRED"));
    }

    #[test]
    fn seen_runs_are_bounded() {
        let mut s = SeenRuns::new(2);
        assert!(s.insert("a") && s.insert("b") && !s.insert("a"));
        assert!(s.insert("c"));
        assert_eq!(s.len(), 2);
        assert!(!s.contains("a") && s.contains("b") && s.contains("c"));
    }

    #[test]
    fn paging_stops_at_runs_older_than_the_range() {
        assert!(!page_reaches(&[run("a", "RUNNING", "", 1000, None)], 900));
        assert!(page_reaches(&[run("a", "RUNNING", "", 1000, None), run("b", "FAILED", "", 800, Some(950))], 900));
    }

    #[test]
    fn drift_counts_added_dropped_and_retyped_columns() {
        let c = |v: &[(&str, &str)]| -> Vec<Col> { v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect() };
        let cur = c(&[("id", "bigint"), ("amount", "double"), ("created_at", "timestamp")]);
        assert_eq!(drift(&cur, &cur), 0);
        // A renamed column is one dropped and one added.
        let renamed = c(&[("id", "bigint"), ("amount_eur", "double"), ("created_at", "timestamp")]);
        assert_eq!(drift(&cur, &renamed), 2);
        let retyped = c(&[("ID", "bigint"), ("amount", "decimal(10,2)"), ("created_at", "timestamp")]);
        assert_eq!(drift(&cur, &retyped), 1);
    }

    #[test]
    fn sources_name_their_evidence_metrics() {
        let mut s = EvidenceSources { pipeline: "p".into(), job_name: None, tables: None };
        assert!(s.metrics().is_empty());
        s.job_name = Some("j".into());
        assert_eq!(s.metrics(), RUN_METRICS.to_vec());
        s.tables = Some(CatalogTables { database: "d".into(), table: "t".into(), source_table: "s".into() });
        assert_eq!(s.metrics().last(), Some(&Metric::CatalogDrift));
    }
}
