//! A Glue job as AWS documents it, not as the simulator plays it.
//!
//! One Spark job, `orders-etl`, Glue 4.0 on 4 `G.1X` workers (one driver and
//! three executors), triggered every minute, reading about a million records
//! a minute from the catalog table `sales.orders_crawled` into `sales.orders`.
//! It publishes only what Glue publishes with `--enable-metrics`: namespace
//! `Glue`, dimensions `JobName`, `JobRunId = ALL` and `Type` (`count` for
//! aggregates such as `glue.driver.aggregate.recordsRead`, summed per period;
//! `gauge` for levels such as `glue.ALL.jvm.heap.usage`, averaged), reported
//! as deltas every 30 s ("Monitoring AWS Glue using Amazon CloudWatch
//! metrics", <https://docs.aws.amazon.com/glue/latest/dg/monitoring-awsglue-with-cloudwatch-metrics.html>).
//! No `pipeline.*` metric, no latency, no error categories (Glue 4.0
//! observability is off by default).
//!
//! Job runs: every minute's run ends `SUCCEEDED` or `FAILED` with the
//! `ErrorMessage` Glue writes for its fault (AWS "Debugging OOM exceptions
//! and job abnormalities" and "Troubleshooting AWS Glue" pages). moto starts
//! no runs by itself and never fails one, so the fault proxy adds this
//! world's runs to every `GetJobRuns` answer (the `JobRun` shape of
//! <https://docs.aws.amazon.com/glue/latest/dg/aws-glue-api-jobs-runs.html>);
//! runs the sidecar starts are moto's own.
//!
//! Faults, each healed only by the right thing done on Glue:
//!
//! - **Out of memory** (executors): heap at 0.97, tasks fail, records read
//!   fall to a sixth, runs fail with `java.lang.OutOfMemoryError`. Healed by
//!   a run with more workers than 4.
//! - **Schema drift**: the source table's column `amount` is renamed
//!   `order_amount` (`UpdateTable`); the job's read fails at planning
//!   (`AnalysisException: cannot resolve`), nothing is read. Healed when
//!   `sales.orders` has the source's columns.
//! - **Transient burst**: two minutes of failed tasks (Spark retries them;
//!   the runs succeed), then nothing. Healed by itself.
//!
//! Time: window `k` is the minute `base + 60·k`, `base` six hours ago, so the
//! sidecar (`lag_secs = 0`) may read a window as soon as it is published.

use super::moto::Moto;
use super::proxy::Proxy;
use super::world::{cw_client, glue_client, setup_catalog_and_job, table_input};
use crate::common::{metric, now_ms, Sidecar, Start};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_aws::aws_sdk_cloudwatch as cw;
use selfheal_aws::aws_sdk_glue as glue;
use selfheal_core::Action;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PIPELINE: &str = "orders";
/// The catalog and the job are the closed loop's (`world`): `sales.orders`
/// fed from `sales.orders_crawled` by `orders-etl`.
pub use super::world::{DATABASE, JOB, SOURCE_TABLE, TABLE};
/// Workers of the job as defined (G.1X: one is the driver).
pub const WORKERS: i32 = 4;
/// Healthy minutes published before the sidecar starts (its history).
pub const HISTORY: usize = 30;
const SETTLE: Duration = Duration::from_secs(45);

pub use super::world::{initial_columns, Col};

/// The source's columns after the upstream rename.
pub fn drifted_columns() -> Vec<Col> {
    initial_columns()
        .into_iter()
        .map(|(n, t)| if n == "amount" { ("order_amount".into(), t) } else { (n, t) })
        .collect()
}

/// What is wrong with the job now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    OutOfMemory,
    SchemaDrift,
    /// Minutes of failed tasks left.
    Burst(u32),
}

/// One published minute and what the sidecar did on Glue after deciding it.
#[derive(Clone, Debug)]
pub struct Minute {
    pub window: usize,
    pub fault: Option<Fault>,
    /// Actions seen on Glue after the sidecar decided this window.
    pub applied: Vec<Action>,
}

pub struct GlueWorld {
    pub sidecar: Option<Sidecar>,
    pub proxy: Proxy,
    pub moto: Moto,
    rt: tokio::runtime::Runtime,
    pub glue: glue::Client,
    cw: cw::Client,
    base_s: i64,
    /// Windows published so far (history included).
    pub published: usize,
    /// Windows published before the sidecar started.
    started_at: usize,
    /// This world's job runs, as `GetJobRuns` answers them (JSON).
    runs: Arc<Mutex<Vec<Value>>>,
    runs_seen: HashSet<String>,
    /// `sales.orders`' columns at the last look.
    target: Vec<Col>,
    pub workers: i32,
    pub fault: Option<Fault>,
    /// Rename the source column before the next minute is published.
    drift_next: bool,
    rng: Xoshiro256PlusPlus,
    pub config: PathBuf,
    pub detector: PathBuf,
    pub state: PathBuf,
    pub minutes: Vec<Minute>,
    pub work: tempfile::TempDir,
}

/// The sidecar's configuration, as the README's "watch your Glue job" path
/// writes it: CloudWatch in (metrics discovered with `ListMetrics`), Glue
/// out, the job's own ladder, act mode with the default gate.
pub fn config_text(detector: &str, lookback_secs: i64) -> String {
    format!(
        r#"[daemon]
shutdown_grace_secs = 5

[model]
detector = "{detector}"
seed = 11

[source]
kind = "cloudwatch"
period_secs = 60
lag_secs = 0
poll_secs = 1
lookback_secs = {lookback_secs}
[[source.pipelines]]
name = "{PIPELINE}"
job_name = "{JOB}"

[actuator]
kind = "glue"
[[actuator.pipelines]]
name = "{PIPELINE}"
job_name = "{JOB}"
worker_type = "G.1X"
worker_levels = [2, 4, 8, 16]
default_workers = {WORKERS}
database = "{DATABASE}"
table = "{TABLE}"
source_table = "{SOURCE_TABLE}"

[guard]
mode = "act"
[guard.budget]
actions_per_hour = 1000
cooldown_secs = 0
blast_radius = 5
[guard.retry]
base_ms = 50
cap_ms = 200
"#
    )
}

impl GlueWorld {
    /// moto with the catalog and the job, the proxy adding this world's job
    /// runs to `GetJobRuns`, and [`HISTORY`] healthy minutes published. The
    /// sidecar is not running yet ([`GlueWorld::fit_and_start`]).
    pub fn new(seed: u64) -> GlueWorld {
        let work = tempfile::Builder::new().prefix("selfheal-glue-world-").tempdir().unwrap();
        let moto = Moto::start(&work.path().join("moto.log"));
        let proxy = Proxy::start(&moto.addr);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let glue = glue_client(&moto.url);
        let cw = cw_client(&moto.url);
        rt.block_on(setup_catalog_and_job(&glue, WORKERS));
        let runs: Arc<Mutex<Vec<Value>>> = Arc::new(Mutex::new(Vec::new()));
        let ours = runs.clone();
        proxy.rewrite("GetJobRuns", move |body: &str| {
            let mut v: Value = serde_json::from_str(body).unwrap_or_else(|_| json!({ "JobRuns": [] }));
            let mut all: Vec<Value> = v["JobRuns"].as_array().cloned().unwrap_or_default();
            all.extend(ours.lock().unwrap().iter().cloned());
            // Newest first, as Glue answers.
            all.sort_by(|a, b| {
                b["StartedOn"].as_f64().unwrap_or(0.0).total_cmp(&a["StartedOn"].as_f64().unwrap_or(0.0))
            });
            v["JobRuns"] = Value::Array(all);
            v.to_string()
        });
        let six_hours_ago = now_ms() / 1000 - 6 * 3600;
        let base_s = six_hours_ago - six_hours_ago.rem_euclid(60);
        let state = work.path().join("state");
        let mut w = GlueWorld {
            sidecar: None,
            proxy,
            moto,
            rt,
            glue,
            cw,
            base_s,
            published: 0,
            started_at: 0,
            runs,
            runs_seen: HashSet::new(),
            target: initial_columns(),
            workers: WORKERS,
            fault: None,
            drift_next: false,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            config: work.path().join("sidecar.toml"),
            detector: work.path().join("detector-orders.json"),
            state,
            minutes: Vec::new(),
            work,
        };
        for _ in 0..HISTORY {
            w.publish();
        }
        w
    }

    fn env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.proxy.url.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// `selfheal fit` on the job's history (a CloudWatch backfill and its
    /// job runs), `selfheal validate`, then `selfheal run` from the minute
    /// after the history. Returns what `fit` printed.
    pub fn fit_and_start(&mut self) -> String {
        let now = now_ms() / 1000;
        let lookback = now - (self.base_s + 60 * self.published as i64);
        std::fs::write(&self.config, config_text(self.detector.to_str().unwrap(), lookback)).unwrap();
        let minutes = ((now - self.base_s) / 60 + 2).to_string();
        let cfg = self.config.to_str().unwrap().to_string();
        let out = self.selfheal(&[
            "fit",
            "--config",
            &cfg,
            "--pipeline",
            PIPELINE,
            "--minutes",
            &minutes,
            "--out",
            self.detector.to_str().unwrap(),
        ]);
        let said = self.selfheal(&["validate", "--config", &cfg]);
        assert!(said.contains("ok (mode act"), "validate accepts the fitted detector: {said}");
        let text = std::fs::read_to_string(&self.config).unwrap();
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut env = env;
        env.push(("RUST_LOG", "info,selfheal::decision=info"));
        self.started_at = self.published;
        self.sidecar = Some(Sidecar::start(Start {
            work: self.work.path(),
            state: &self.state,
            config: Some(&text),
            args: &[],
            env: &env,
        }));
        out
    }

    /// Run the binary with this world's AWS environment; its stdout, or a
    /// panic with both streams.
    pub fn selfheal(&self, args: &[&str]) -> String {
        let mut cmd = std::process::Command::new(crate::common::bin());
        cmd.args(args);
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run selfheal");
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "selfheal {args:?} failed ({}):\n{stdout}\n{stderr}", out.status);
        format!("{stdout}{stderr}")
    }

    fn sidecar(&self) -> &Sidecar {
        self.sidecar.as_ref().expect("the sidecar runs")
    }

    /// Publish the next minute: its metrics in namespace `Glue` and its job run.
    fn publish(&mut self) {
        use cw::primitives::DateTime;
        use cw::types::{Dimension, MetricDatum};
        let k = self.published;
        let ts = self.base_s + 60 * k as i64;
        let mut r = |x: f64, spread: f64| x * (1.0 + spread * (2.0 * self.rng.gen::<f64>() - 1.0));
        let executors = f64::from(self.workers - 1);
        // Records a minute, as the job reads them when healthy: ~1 M on 3
        // executors; with more executors the run catches up.
        let mut read = r(1.0e6, 0.03);
        let mut completed = r(400.0, 0.05).round();
        let mut failed = if r(1.0, 1.0) > 1.9 { 1.0 } else { 0.0 };
        let mut heap = r(0.42, 0.08);
        let driver_heap = r(0.22, 0.1);
        let mut cpu = r(0.55, 0.1);
        let mut elapsed = r(45_000.0, 0.06).round();
        let mut run: (&str, Option<&str>) = ("SUCCEEDED", None);
        match self.fault {
            None => {}
            Some(Fault::OutOfMemory) => {
                heap = r(0.97, 0.01);
                read = r(1.6e5, 0.1);
                completed = r(60.0, 0.1).round();
                failed = r(48.0, 0.2).round();
                cpu = r(0.8, 0.05);
                // Killed executors end the run within its minute.
                elapsed = r(50_000.0, 0.03).round();
                run = (
                    "FAILED",
                    Some(
                        "An error occurred while calling o107.pyWriteDynamicFrame. Job aborted due to stage failure: \
                         Task 37 in stage 4.0 failed 4 times, most recent failure: Lost task 37.3 in stage 4.0 \
                         (executor 2): java.lang.OutOfMemoryError: Java heap space",
                    ),
                );
            }
            Some(Fault::SchemaDrift) => {
                read = 0.0;
                completed = r(3.0, 0.3).round();
                failed = r(4.0, 0.25).round();
                heap = r(0.12, 0.1);
                cpu = r(0.08, 0.2);
                elapsed = r(9_000.0, 0.1).round();
                run = (
                    "FAILED",
                    Some(
                        "AnalysisException: cannot resolve '`amount`' given input columns: [orders_crawled.order_id, \
                         orders_crawled.customer_id, orders_crawled.order_amount, orders_crawled.created_at]",
                    ),
                );
            }
            Some(Fault::Burst(_)) => {
                failed = r(70.0, 0.2).round();
                completed = r(430.0, 0.05).round();
                read = r(9.4e5, 0.03);
                elapsed = r(52_000.0, 0.05).round();
            }
        }
        // Glue's metrics of this job: (name, Type, value); bytesRead is
        // published too and known to no feature.
        let data: [(&str, &str, f64); 9] = [
            ("glue.driver.aggregate.recordsRead", "count", read),
            ("glue.driver.aggregate.bytesRead", "count", read * 180.0),
            ("glue.driver.aggregate.numCompletedTasks", "count", completed),
            ("glue.driver.aggregate.numFailedTasks", "count", failed),
            ("glue.driver.aggregate.elapsedTime", "count", elapsed),
            ("glue.ALL.jvm.heap.usage", "gauge", heap.clamp(0.0, 1.0)),
            ("glue.driver.jvm.heap.usage", "gauge", driver_heap),
            ("glue.ALL.system.cpuSystemLoad", "gauge", cpu.clamp(0.0, 1.0)),
            ("glue.driver.ExecutorAllocationManager.executors.numberAllExecutors", "gauge", executors),
        ];
        let datums: Vec<MetricDatum> = data
            .iter()
            .map(|(name, kind, v)| {
                let dims = [("JobName", JOB), ("JobRunId", "ALL"), ("Type", kind)]
                    .iter()
                    .map(|(n, v)| Dimension::builder().name(*n).value(*v).build())
                    .collect();
                MetricDatum::builder()
                    .metric_name(*name)
                    .set_dimensions(Some(dims))
                    .timestamp(DateTime::from_secs(ts))
                    .value(*v)
                    .build()
            })
            .collect();
        let mut job_run = json!({
            "Id": format!("jr_{:064x}", k),
            "Attempt": 0,
            "JobName": JOB,
            "StartedOn": ts as f64 + 2.0,
            "LastModifiedOn": ts as f64 + 2.0 + elapsed / 1000.0,
            "CompletedOn": ts as f64 + 2.0 + elapsed / 1000.0,
            "JobRunState": run.0,
            "ExecutionTime": (elapsed / 1000.0).round() as i64,
            "WorkerType": "G.1X",
            "NumberOfWorkers": self.workers,
            "GlueVersion": "4.0",
        });
        if let Some(msg) = run.1 {
            job_run["ErrorMessage"] = json!(msg);
        }
        {
            let _held = self.proxy.gate();
            self.rt
                .block_on(self.cw.put_metric_data().namespace("Glue").set_metric_data(Some(datums)).send())
                .expect("PutMetricData Glue");
            self.runs.lock().unwrap().push(job_run);
        }
        self.published += 1;
    }

    /// Wait until the sidecar decided every published window and every
    /// allowed action ended.
    pub fn settle(&self) -> String {
        let start = Instant::now();
        let want = self.published - self.started_at;
        loop {
            let body = self.sidecar().metrics();
            let windows = metric(&body, "selfheal_windows_total").unwrap_or(0.0) as usize;
            let allowed = super::world::family_sum(&body, "selfheal_decisions_total", "verdict=\"allowed\"");
            let ended = super::world::family_sum(&body, "selfheal_action_outcomes_total", "");
            if windows >= want && allowed == ended {
                return body;
            }
            if start.elapsed() > SETTLE {
                panic!(
                    "timed out waiting for the sidecar to decide {want} windows (it decided {windows}; {allowed} \
                     allowed, {ended} ended)\n{}",
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the sidecar did on Glue since the last look: runs it started
    /// (`--selfheal-action`; a scale-up must raise the workers) and a remap
    /// of `sales.orders`.
    fn applied_on_glue(&mut self) -> Vec<Action> {
        let mut applied = Vec::new();
        let out = self.rt.block_on(self.glue.get_job_runs().job_name(JOB).send()).expect("GetJobRuns");
        let mut runs: Vec<_> = out.job_runs().to_vec();
        runs.sort_by_key(|r| r.started_on().map(|t| (t.secs(), t.subsec_nanos())));
        for r in runs {
            let id = r.id().unwrap_or_default().to_string();
            if !self.runs_seen.insert(id.clone()) {
                continue;
            }
            let action = r.arguments().and_then(|a| a.get("--selfheal-action")).cloned().unwrap_or_default();
            let a: Action = action.parse().unwrap_or_else(|_| panic!("run {id} names no action: {r:?}"));
            let workers = r.number_of_workers().unwrap_or(self.workers);
            if a == Action::ScaleUp {
                assert!(
                    workers > self.workers,
                    "scale_up run with {workers} workers after {}\n{}",
                    self.workers,
                    self.context()
                );
            }
            self.workers = workers;
            applied.push(a);
        }
        let target = self.columns(TABLE);
        if target != self.target {
            assert_eq!(target, self.columns(SOURCE_TABLE), "{TABLE} was changed, but not to {SOURCE_TABLE}'s columns");
            self.target = target;
            applied.push(Action::SchemaRemap);
        }
        applied
    }

    /// A table's columns.
    pub fn columns(&self, table: &str) -> Vec<Col> {
        let out = self
            .rt
            .block_on(self.glue.get_table().database_name(DATABASE).name(table).send())
            .unwrap_or_else(|e| panic!("GetTable {table}: {e:?}"));
        out.table()
            .and_then(|t| t.storage_descriptor())
            .map(|sd| {
                sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or("").to_string())).collect()
            })
            .unwrap_or_default()
    }

    /// Upstream renames a column of the source table as the next minute
    /// starts: its run is the first to fail.
    pub fn start_drift(&mut self) {
        self.drift_next = true;
        self.fault = Some(Fault::SchemaDrift);
    }

    /// Upstream renamed a column of the source table.
    fn drift_source_table(&self) {
        self.rt
            .block_on(
                self.glue
                    .update_table()
                    .database_name(DATABASE)
                    .table_input(table_input(SOURCE_TABLE, &drifted_columns()))
                    .send(),
            )
            .expect("UpdateTable orders_crawled");
    }

    /// One minute: wait for the sidecar, read Glue, let the fault heal if
    /// the right thing was done, publish the next minute.
    pub fn tick(&mut self) -> Minute {
        self.settle();
        let applied = self.applied_on_glue();
        if let Some(last) = self.minutes.last_mut() {
            last.applied = applied.clone();
        }
        self.fault = match self.fault {
            Some(Fault::OutOfMemory) if self.workers > WORKERS => None,
            Some(Fault::SchemaDrift) if !self.drift_next && self.columns(TABLE) == self.columns(SOURCE_TABLE) => None,
            Some(Fault::Burst(n)) if n <= 1 => None,
            Some(Fault::Burst(n)) => Some(Fault::Burst(n - 1)),
            f => f,
        };
        if std::mem::take(&mut self.drift_next) {
            self.drift_source_table();
        }
        let m = Minute { window: self.published, fault: self.fault, applied: Vec::new() };
        self.publish();
        self.minutes.push(m.clone());
        m
    }

    /// Tick `n` minutes.
    pub fn ticks(&mut self, n: usize) {
        for _ in 0..n {
            self.tick();
        }
    }

    /// Tick until the fault is gone, then `calm` more minutes; panics after `max`.
    pub fn until_healed(&mut self, max: usize, calm: usize) {
        for _ in 0..max {
            self.tick();
            if self.fault.is_none() {
                self.ticks(calm);
                return;
            }
        }
        panic!("{:?} did not heal within {max} minutes\n{}", self.fault, self.context());
    }

    /// Settle and read back what Glue saw after the last minute.
    pub fn finish(&mut self) {
        self.settle();
        let applied = self.applied_on_glue();
        if let Some(last) = self.minutes.last_mut() {
            last.applied = applied;
        }
    }

    /// Every decision that was not a plain no-op, from the provenance log:
    /// (minute, chosen, verdict, reason, evidence).
    pub fn decisions(&self) -> Vec<(usize, String, String, String, Vec<String>)> {
        let Some(sidecar) = &self.sidecar else { return Vec::new() };
        sidecar
            .log()
            .records
            .into_iter()
            .filter_map(|r| match r {
                selfheal_sidecar::provenance::Record::Decision(d)
                    if d.verdict != "noop" || std::env::var("SELFHEAL_GLUE_WORLD_ALL").is_ok() =>
                {
                    Some((
                        ((d.window.ts_ms / 1000 - self.base_s) / 60) as usize,
                        d.chosen.name().to_owned(),
                        d.verdict.to_string(),
                        format!("{} score {:.3} sig {} state {}", d.reason, d.score, d.signature, d.state_text),
                        d.evidence,
                    ))
                }
                _ => None,
            })
            .collect()
    }

    /// The fault of minute `k` (`None` for the history and healthy minutes).
    pub fn fault_at(&self, k: usize) -> Option<Fault> {
        self.minutes.iter().find(|m| m.window == k).and_then(|m| m.fault)
    }

    pub fn context(&self) -> String {
        let minutes: Vec<String> =
            self.minutes.iter().map(|m| format!("{}:{:?}:{:?}", m.window, m.fault, m.applied)).collect();
        let decided: Vec<String> = self
            .decisions()
            .iter()
            .map(|d| format!("minute {}: {} {} [{}] evidence {:?}", d.0, d.1, d.2, d.3, d.4))
            .collect();
        format!(
            "minutes: {minutes:?}\ndecisions:\n{}\n--- sidecar stderr ---\n{}\n--- moto ---\n{}",
            decided.join("\n"),
            self.sidecar.as_ref().map(|s| s.stderr_tail()).unwrap_or_default(),
            self.moto.log_tail()
        )
    }
}
