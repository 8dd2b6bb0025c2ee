//! AWS Glue as an actuator: what each recovery action does on Glue.
//!
//! | action | Glue calls |
//! |---|---|
//! | `retry_with_backoff` | after a backoff that doubles with each retry of the incident (full jitter, 1 s base, 60 s cap), `StartJobRun` with the current workers |
//! | `scale_up` / `scale_down` | the next worker level of `worker_levels` from the latest run's workers: `UpdateJob` (the job's default, where the server supports it) and `StartJobRun` with `NumberOfWorkers`/`WorkerType` (the next run) |
//! | `schema_remap` | `GetTable` of the job's table and of the source table, the column mapping computed, `UpdateTable`; Glue keeps the previous version (`GetTableVersions`), which `selfheal rollback` restores |
//! | `restart` | `GetJobRuns`, `BatchStopJobRun` of the running runs, `StartJobRun` |
//! | `backpressure` | `StartJobRun` with `--max-records-per-second` = the configured rate |
//! | `reschedule` | `StartJobRun` of a fresh run (fresh executors, away from the contended ones) |
//! | `quarantine` | `StartJobRun` with `--dead-letter-path` (and `--quarantine-bad-records true`) |
//! | `noop`, `escalate` | nothing on Glue (escalation is the notifier's) |
//!
//! Every run this actuator starts carries `--selfheal-idempotency-key` among
//! its arguments, and a start first looks for a run with that key
//! (`GetJobRuns`): Glue's `StartJobRun` takes no client token, so this is
//! what keeps a retried call (one that timed out after Glue had started the
//! run) from starting a second run; a retried scale that finds its run
//! reports it rather than stepping another level from it. The same read
//! fences a fleet replica: a run started under a newer lease epoch than the
//! key's (`{decision}/{action}@{epoch}`) means another replica holds the
//! pipeline now, and no run is started.
//!
//! Every run started passes its `NumberOfWorkers` explicitly (the latest
//! run's, unless the action changes it): the job's default is only updated
//! where `UpdateJob` works, so a restart after a scale up must not fall back
//! to it and silently undo the scale.

use crate::errors::AwsFailure;
use aws_sdk_glue::types::{Column, JobRunState, JobUpdate, StorageDescriptor, Table, TableInput, WorkerType};
pub use aws_sdk_glue::Client;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::Action;
use selfheal_sidecar::actuate::{ActError, ActionCall, Actuator};
use selfheal_sidecar::config::GluePipeline;
use selfheal_sidecar::BoxFuture;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Argument naming the idempotency key of the decision that started a run.
pub const KEY_ARG: &str = "--selfheal-idempotency-key";

/// The IAM actions this module, the CloudWatch source and its Glue evidence
/// call; the shipped policy (`crates/aws/iam-policy.json`) must grant exactly these.
pub const IAM_ACTIONS: [&str; 10] = [
    "cloudwatch:GetMetricData",
    "cloudwatch:ListMetrics",
    "glue:BatchStopJobRun",
    "glue:GetJob",
    "glue:GetJobRuns",
    "glue:GetTable",
    "glue:GetTableVersions",
    "glue:StartJobRun",
    "glue:UpdateJob",
    "glue:UpdateTable",
];

/// A column: name and type.
pub type Col = (String, String);

/// What a schema remap changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Remap {
    /// The new columns, in the incoming order.
    pub columns: Vec<Col>,
    /// Columns that are new.
    pub added: Vec<String>,
    /// Columns that are gone.
    pub dropped: Vec<String>,
    /// Columns whose type changed: (name, old, new).
    pub retyped: Vec<(String, String, String)>,
}

impl Remap {
    /// Whether anything changes.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.dropped.is_empty() && self.retyped.is_empty()
    }
}

/// The column mapping from the table's schema to the incoming one: columns
/// match by name, case-insensitively (Glue lower-cases names); the incoming
/// schema's order and types win.
pub fn remap(current: &[Col], incoming: &[Col]) -> Remap {
    let key = |s: &str| s.to_ascii_lowercase();
    let old: HashMap<String, &Col> = current.iter().map(|c| (key(&c.0), c)).collect();
    let new: HashMap<String, &Col> = incoming.iter().map(|c| (key(&c.0), c)).collect();
    let mut r = Remap { columns: incoming.to_vec(), added: vec![], dropped: vec![], retyped: vec![] };
    for c in incoming {
        match old.get(&key(&c.0)) {
            None => r.added.push(c.0.clone()),
            Some(o) if !o.1.eq_ignore_ascii_case(&c.1) => r.retyped.push((c.0.clone(), o.1.clone(), c.1.clone())),
            Some(_) => {}
        }
    }
    r.dropped = current.iter().filter(|c| !new.contains_key(&key(&c.0))).map(|c| c.0.clone()).collect();
    r
}

fn columns_of(t: &Table) -> Vec<Col> {
    t.storage_descriptor()
        .map(|sd| {
            sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or("string").to_string())).collect()
        })
        .unwrap_or_default()
}

/// A `TableInput` that recreates `t` with `columns` (or its own).
fn table_input(t: &Table, columns: Option<&[Col]>) -> Result<TableInput, ActError> {
    let sd = t.storage_descriptor();
    let cols: Vec<Column> = match columns {
        Some(cs) => cs
            .iter()
            .map(|(n, ty)| Column::builder().name(n).r#type(ty).build())
            .collect::<Result<_, _>>()
            .map_err(|e| ActError::Failed(format!("column: {e}")))?,
        None => sd.map(|s| s.columns().to_vec()).unwrap_or_default(),
    };
    let new_sd = StorageDescriptor::builder()
        .set_columns(Some(cols))
        .set_location(sd.and_then(|s| s.location()).map(str::to_string))
        .set_input_format(sd.and_then(|s| s.input_format()).map(str::to_string))
        .set_output_format(sd.and_then(|s| s.output_format()).map(str::to_string))
        .set_serde_info(sd.and_then(|s| s.serde_info()).cloned())
        .set_parameters(sd.and_then(|s| s.parameters()).cloned())
        .build();
    TableInput::builder()
        .name(t.name())
        .set_table_type(t.table_type().map(str::to_string))
        .set_parameters(t.parameters().cloned())
        .set_partition_keys(Some(t.partition_keys().to_vec()))
        .storage_descriptor(new_sd)
        .build()
        .map_err(|e| ActError::Failed(format!("table input: {e}")))
}

/// Applies actions on AWS Glue.
pub struct GlueActuator {
    client: Client,
    pipelines: HashMap<String, GluePipeline>,
    retries: Mutex<HashMap<String, (u32, i64)>>,
    rng: Mutex<Xoshiro256PlusPlus>,
}

impl GlueActuator {
    /// An actuator for these pipelines.
    pub fn new(client: Client, pipelines: Vec<GluePipeline>, seed: u64) -> GlueActuator {
        GlueActuator {
            client,
            pipelines: pipelines.into_iter().map(|p| (p.name.clone(), p)).collect(),
            retries: Mutex::new(HashMap::new()),
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
        }
    }

    fn pipeline(&self, name: &str) -> Result<&GluePipeline, ActError> {
        self.pipelines
            .get(name)
            .ok_or_else(|| ActError::Failed(format!("no [[actuator.pipelines]] entry named {name:?}")))
    }

    /// Runs of the job, newest first (one page).
    async fn runs(&self, job: &str) -> Result<Vec<aws_sdk_glue::types::JobRun>, ActError> {
        let out = self
            .client
            .get_job_runs()
            .job_name(job)
            .max_results(50)
            .send()
            .await
            .map_err(|e| AwsFailure::from_sdk("GetJobRuns", &e))?;
        let mut runs = out.job_runs().to_vec();
        runs.sort_by_key(|r| std::cmp::Reverse(r.started_on().map(|t| (t.secs(), t.subsec_nanos()))));
        Ok(runs)
    }

    fn current_workers(p: &GluePipeline, runs: &[aws_sdk_glue::types::JobRun]) -> u32 {
        runs.iter().find_map(|r| r.number_of_workers()).map_or(p.default_workers, |n| n.max(0) as u32)
    }

    /// Start a run unless one with this key exists; returns what happened.
    async fn start(
        &self,
        p: &GluePipeline,
        call: &ActionCall,
        workers: Option<u32>,
        args: &[(&str, String)],
        runs: &[aws_sdk_glue::types::JobRun],
    ) -> Result<String, ActError> {
        if let Some(r) = Self::started_by(call, runs) {
            return Ok(format!("run {} already started for this decision", r.id().unwrap_or("?")));
        }
        if let Some((r, newer)) = newer_epoch(&call.idempotency_key, runs) {
            return Err(ActError::Failed(format!(
                "fenced: run {} of {} was started under lease epoch {newer}, newer than this decision's ({}); \
                 another replica holds the pipeline now",
                r.id().unwrap_or("?"),
                p.job_name,
                call.idempotency_key
            )));
        }
        let mut req = self
            .client
            .start_job_run()
            .job_name(&p.job_name)
            .arguments(KEY_ARG, &call.idempotency_key)
            .arguments("--selfheal-action", call.action.name());
        for (k, v) in args {
            req = req.arguments(*k, v);
        }
        if let Some(n) = workers {
            req = req.number_of_workers(n as i32).worker_type(WorkerType::from(p.worker_type.as_str()));
        }
        let out = req.send().await.map_err(|e| AwsFailure::from_sdk("StartJobRun", &e))?;
        let id = out.job_run_id().unwrap_or("?");
        Ok(match workers {
            Some(n) => format!("started run {id} of {} with {n} {} workers", p.job_name, p.worker_type),
            None => format!("started run {id} of {}", p.job_name),
        })
    }

    /// A run of the job that is still alive and not this decision's own:
    /// while it lives, `StartJobRun` fails with
    /// `ConcurrentRunsExceededException` (a job's `MaxConcurrentRuns` is 1
    /// by default, <https://docs.aws.amazon.com/glue/latest/webapi/API_ExecutionProperty.html>),
    /// so the actuator looks before it starts one.
    fn active_run<'r>(
        call: &ActionCall,
        runs: &'r [aws_sdk_glue::types::JobRun],
    ) -> Option<&'r aws_sdk_glue::types::JobRun> {
        runs.iter().filter(|r| r.arguments().and_then(|a| a.get(KEY_ARG)) != Some(&call.idempotency_key)).find(|r| {
            matches!(
                r.job_run_state(),
                Some(JobRunState::Running | JobRunState::Starting | JobRunState::Waiting | JobRunState::Stopping)
            )
        })
    }

    /// `Failed` (not retried) when another run is alive: say which, and what
    /// will start a new one.
    fn refuse_if_active(
        p: &GluePipeline,
        call: &ActionCall,
        runs: &[aws_sdk_glue::types::JobRun],
    ) -> Result<(), ActError> {
        match Self::active_run(call, runs) {
            Some(r) if Self::started_by(call, runs).is_none() => Err(ActError::Failed(format!(
                "{} cannot start a run for {}: run {} is {} and the job allows no second run at once \
                 (MaxConcurrentRuns); wait for it to end, or restart (which stops it first)",
                p.job_name,
                call.action,
                r.id().unwrap_or("?"),
                r.job_run_state().map_or("alive", |s| s.as_str())
            ))),
            _ => Ok(()),
        }
    }

    /// The run this decision already started, if any (a retried attempt whose
    /// first `StartJobRun` timed out after Glue had started the run).
    fn started_by<'r>(
        call: &ActionCall,
        runs: &'r [aws_sdk_glue::types::JobRun],
    ) -> Option<&'r aws_sdk_glue::types::JobRun> {
        runs.iter().find(|r| r.arguments().and_then(|a| a.get(KEY_ARG)) == Some(&call.idempotency_key))
    }

    async fn scale(&self, p: &GluePipeline, call: &ActionCall, up: bool) -> Result<String, ActError> {
        let runs = self.runs(&p.job_name).await?;
        // A retry of a scale that already started its run: the latest run is
        // that run, so stepping from its workers would scale twice.
        if let Some(r) = Self::started_by(call, &runs) {
            let n = r.number_of_workers().unwrap_or(0);
            return Ok(format!("run {} with {n} workers already started for this decision", r.id().unwrap_or("?")));
        }
        Self::refuse_if_active(p, call, &runs)?;
        let now = Self::current_workers(p, &runs);
        let next = if up {
            p.worker_levels.iter().copied().find(|&l| l > now)
        } else {
            p.worker_levels.iter().rev().copied().find(|&l| l < now)
        };
        let Some(next) = next else {
            return Err(ActError::Failed(format!(
                "{} has {now} workers, already at the {} of {:?}",
                p.job_name,
                if up { "top" } else { "bottom" },
                p.worker_levels
            )));
        };
        let job_default = self.update_job_workers(p, next).await;
        let started = self.start(p, call, Some(next), &[], &runs).await?;
        Ok(format!("{now} → {next} workers: {started}; job default: {job_default}"))
    }

    /// Best effort: make `next` the job's default too. Not every
    /// AWS-compatible server implements `UpdateJob`; the per-run override
    /// above is what scales the next run either way.
    async fn update_job_workers(&self, p: &GluePipeline, next: u32) -> String {
        let job = match self.client.get_job().job_name(&p.job_name).send().await {
            Ok(j) => j,
            Err(e) => return format!("not updated ({})", AwsFailure::from_sdk("GetJob", &e).message),
        };
        let Some(job) = job.job() else { return "not updated (GetJob returned no job)".into() };
        let update = JobUpdate::builder()
            .set_role(job.role().map(str::to_string))
            .set_command(job.command().cloned())
            .set_default_arguments(job.default_arguments().cloned())
            .number_of_workers(next as i32)
            .worker_type(WorkerType::from(p.worker_type.as_str()))
            .build();
        match self.client.update_job().job_name(&p.job_name).job_update(update).send().await {
            Ok(_) => "updated".into(),
            Err(e) => format!("not updated ({})", AwsFailure::from_sdk("UpdateJob", &e).message),
        }
    }

    async fn schema_remap(&self, p: &GluePipeline) -> Result<String, ActError> {
        let (Some(db), Some(table), Some(source)) = (&p.database, &p.table, &p.source_table) else {
            return Err(ActError::Failed(format!(
                "pipeline {:?} has no database/table/source_table configured for schema_remap",
                p.name
            )));
        };
        let get = |name: String| {
            let c = self.client.clone();
            let db = db.clone();
            async move {
                c.get_table()
                    .database_name(db)
                    .name(name)
                    .send()
                    .await
                    .map_err(|e| ActError::from(AwsFailure::from_sdk("GetTable", &e)))
            }
        };
        let current = get(table.clone()).await?;
        let incoming = get(source.clone()).await?;
        let (Some(cur), Some(inc)) = (current.table(), incoming.table()) else {
            return Err(ActError::Failed("GetTable returned no table".into()));
        };
        let r = remap(&columns_of(cur), &columns_of(inc));
        if r.is_empty() {
            return Ok(format!("{db}.{table} already matches {db}.{source}; nothing to remap"));
        }
        let input = table_input(cur, Some(&r.columns))?;
        self.client
            .update_table()
            .database_name(db)
            .table_input(input)
            .send()
            .await
            .map_err(|e| AwsFailure::from_sdk("UpdateTable", &e))?;
        Ok(format!(
            "{db}.{table} remapped to {db}.{source}: added {:?}, dropped {:?}, retyped {:?} (previous version kept: `selfheal rollback`)",
            r.added, r.dropped, r.retyped
        ))
    }

    async fn restart(&self, p: &GluePipeline, call: &ActionCall) -> Result<String, ActError> {
        let runs = self.runs(&p.job_name).await?;
        let running: Vec<String> = runs
            .iter()
            .filter(|r| {
                matches!(r.job_run_state(), Some(JobRunState::Running | JobRunState::Starting | JobRunState::Waiting))
            })
            .filter(|r| r.arguments().and_then(|a| a.get(KEY_ARG)) != Some(&call.idempotency_key))
            .filter_map(|r| r.id().map(str::to_string))
            .collect();
        if !running.is_empty() {
            self.client
                .batch_stop_job_run()
                .job_name(&p.job_name)
                .set_job_run_ids(Some(running.clone()))
                .send()
                .await
                .map_err(|e| AwsFailure::from_sdk("BatchStopJobRun", &e))?;
        }
        let workers = Self::current_workers(p, &runs);
        let started = self.start(p, call, Some(workers), &[], &runs).await?;
        Ok(format!("stopped {running:?}; {started}"))
    }

    /// The backoff before a retry: doubles with each retry of the pipeline's
    /// incident (retries more than 30 min apart start a new incident).
    fn retry_backoff(&self, pipeline: &str) -> Duration {
        let now = selfheal_sidecar::now_ms();
        let mut retries = self.retries.lock().expect("retries lock");
        let e = retries.entry(pipeline.to_string()).or_insert((0, now));
        if now - e.1 > 30 * 60_000 {
            e.0 = 0;
        }
        let retry = e.0;
        e.0 += 1;
        e.1 = now;
        Duration::from_millis(crate::BACKOFF.delay_ms(retry, &mut *self.rng.lock().expect("rng lock")))
    }
}

/// Restore the previous version of a table (undo a schema remap).
pub async fn rollback(client: &Client, database: &str, table: &str) -> Result<String, ActError> {
    let out = client
        .get_table_versions()
        .database_name(database)
        .table_name(table)
        .send()
        .await
        .map_err(|e| AwsFailure::from_sdk("GetTableVersions", &e))?;
    let mut versions: Vec<_> = out
        .table_versions()
        .iter()
        .filter_map(|v| Some((v.version_id()?.parse::<u64>().ok()?, v.table()?.clone())))
        .collect();
    versions.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    let [(now_id, _), (prev_id, prev), ..] = versions.as_slice() else {
        return Err(ActError::Failed(format!("{database}.{table} has no previous version to roll back to")));
    };
    let input = table_input(prev, None)?;
    client
        .update_table()
        .database_name(database)
        .table_input(input)
        .send()
        .await
        .map_err(|e| AwsFailure::from_sdk("UpdateTable", &e))?;
    Ok(format!("{database}.{table}: version {prev_id} restored over version {now_id} (columns {:?})", columns_of(prev)))
}

impl Actuator for GlueActuator {
    fn name(&self) -> &str {
        "glue"
    }

    fn endpoint(&self, pipeline: &str, action: Action) -> String {
        match (action, self.pipelines.get(pipeline)) {
            (Action::SchemaRemap, Some(p)) => format!("glue:table/{}", p.database.as_deref().unwrap_or("?")),
            (_, Some(p)) => format!("glue:job/{}", p.job_name),
            (_, None) => "glue".into(),
        }
    }

    fn delay(&self, call: &ActionCall) -> Duration {
        if call.action == Action::RetryWithBackoff && call.attempt == 1 {
            self.retry_backoff(&call.pipeline)
        } else {
            Duration::ZERO
        }
    }

    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>> {
        Box::pin(async move {
            let p = self.pipeline(&call.pipeline)?;
            match call.action {
                Action::NoOp | Action::Escalate => Ok("nothing to do on Glue".into()),
                Action::ScaleUp => self.scale(p, call, true).await,
                Action::ScaleDown => self.scale(p, call, false).await,
                Action::SchemaRemap => self.schema_remap(p).await,
                Action::Restart => self.restart(p, call).await,
                Action::RetryWithBackoff | Action::Reschedule => {
                    let runs = self.runs(&p.job_name).await?;
                    Self::refuse_if_active(p, call, &runs)?;
                    let workers = Self::current_workers(p, &runs);
                    self.start(p, call, Some(workers), &[], &runs).await
                }
                Action::Backpressure => {
                    let runs = self.runs(&p.job_name).await?;
                    Self::refuse_if_active(p, call, &runs)?;
                    let rate = p.backpressure_records_per_second.to_string();
                    let workers = Self::current_workers(p, &runs);
                    self.start(p, call, Some(workers), &[("--max-records-per-second", rate)], &runs).await
                }
                Action::Quarantine => {
                    let runs = self.runs(&p.job_name).await?;
                    Self::refuse_if_active(p, call, &runs)?;
                    let mut args = vec![("--quarantine-bad-records", "true".to_string())];
                    if let Some(d) = &p.dead_letter_path {
                        args.push(("--dead-letter-path", d.clone()));
                    }
                    let workers = Self::current_workers(p, &runs);
                    self.start(p, call, Some(workers), &args, &runs).await
                }
            }
        })
    }
}

/// The lease epoch a fleet replica puts at the end of an idempotency key
/// (`{decision}/{action}@{epoch}`); `None` for a single process's key.
fn epoch_of(key: &str) -> Option<u64> {
    key.rsplit_once('@').and_then(|(_, e)| e.parse().ok())
}

/// The fence at Glue, across processes: a run of the job started under a
/// newer lease epoch than `key`'s means another replica took the pipeline
/// over since this decision was made, so this one must not start a run.
/// Glue has no conditional `StartJobRun`; the runs' own arguments
/// (`GetJobRuns`, newest 50) carry the epochs. Keys without an epoch (one
/// process, no `[fleet]`) are never fenced.
fn newer_epoch<'r>(
    key: &str,
    runs: &'r [aws_sdk_glue::types::JobRun],
) -> Option<(&'r aws_sdk_glue::types::JobRun, u64)> {
    let ours = epoch_of(key)?;
    runs.iter()
        .filter_map(|r| Some((r, epoch_of(r.arguments()?.get(KEY_ARG)?)?)))
        .filter(|(_, e)| *e > ours)
        .max_by_key(|(_, e)| *e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_started_under_a_newer_epoch_fences_older_keys_only() {
        let run = |id: &str, key: &str| aws_sdk_glue::types::JobRun::builder().id(id).arguments(KEY_ARG, key).build();
        let runs = vec![run("jr_1", "a-1/scale_up@3"), run("jr_2", "b-7/restart@5"), run("jr_3", "c-2/retry")];
        let (r, e) = newer_epoch("a-9/scale_up@4", &runs).expect("epoch 5 is newer than 4");
        assert_eq!((r.id(), e), (Some("jr_2"), 5));
        assert!(newer_epoch("a-9/scale_up@5", &runs).is_none(), "the same epoch is the holder's own");
        assert!(newer_epoch("a-9/scale_up@6", &runs).is_none());
        assert!(newer_epoch("a-9/scale_up", &runs).is_none(), "a single process's key is never fenced");
        assert_eq!(epoch_of("x/y@12"), Some(12));
        assert_eq!(epoch_of("x/y"), None);
    }

    fn cols(v: &[(&str, &str)]) -> Vec<Col> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn remap_adds_drops_and_retypes_by_name() {
        let cur = cols(&[("id", "bigint"), ("amount", "int"), ("legacy", "string")]);
        let inc = cols(&[("ID", "bigint"), ("amount", "double"), ("currency", "string")]);
        let r = remap(&cur, &inc);
        assert_eq!(r.columns, inc);
        assert_eq!(r.added, vec!["currency"]);
        assert_eq!(r.dropped, vec!["legacy"]);
        assert_eq!(r.retyped, vec![("amount".into(), "int".into(), "double".into())]);
        assert!(remap(&cur, &cur).is_empty());
    }
}
