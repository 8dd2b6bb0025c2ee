//! The closed loop: the simulator plays a Glue-backed pipeline in the test
//! process, publishes each step's telemetry to (local) CloudWatch, the real
//! `selfheal run` polls it, decides and acts on (local) Glue through the
//! fault proxy, and the test reads Glue back to learn which action the
//! simulator should apply next.
//!
//! Time: window `k` is published at `base + k·60 s`, with `base` six hours
//! ago (aligned to the minute), so the source (`lag_secs = 0`) may read a
//! window as soon as it exists and the loop runs as fast as the sidecar
//! decides, not one window a minute. Lockstep: after publishing window `k`
//! the test waits until the sidecar has decided it and every allowed action
//! has ended, then reads Glue, steps the simulator with what was applied and
//! publishes window `k + 1`.

use super::moto::Moto;
use super::proxy::Proxy;
use crate::common::{metric, now_ms, Sidecar, Start};
use selfheal_aws::aws_sdk_cloudwatch as cw;
use selfheal_aws::aws_sdk_glue as glue;
use selfheal_aws::cloudwatch::query_for;
use selfheal_core::{Action, Environment, FaultKind, Metric, Telemetry};
use selfheal_sim::{Scenario, Simulator};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const PIPELINE: &str = "p1";
pub const JOB: &str = "orders-etl";
pub const DATABASE: &str = "sales";
pub const TABLE: &str = "orders";
pub const SOURCE_TABLE: &str = "orders_crawled";
pub const NAMESPACE: &str = "Selfheal/Pipeline";
/// The breaker/bulkhead endpoint of job actions.
pub const JOB_ENDPOINT: &str = "glue:job/orders-etl";

/// A column: name and type.
pub type Col = (String, String);

/// The columns both tables start with.
pub fn initial_columns() -> Vec<Col> {
    [("order_id", "bigint"), ("customer_id", "bigint"), ("amount", "double"), ("created_at", "timestamp")]
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// How long the sidecar may take to decide one window and finish its action.
const SETTLE: Duration = Duration::from_secs(45);

/// Guard settings a test varies.
pub struct Knobs {
    /// `guard.retry.max_attempts`.
    pub max_attempts: u32,
    /// `guard.timeout`: initial, min, max (ms).
    pub timeout_ms: [u64; 3],
    /// More TOML, appended (e.g. `[guard.breaker]`).
    pub extra: String,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs { max_attempts: 5, timeout_ms: [3_000, 2_000, 5_000], extra: String::new() }
    }
}

/// The sidecar's configuration: CloudWatch in, Glue out, no endpoint in the
/// file (the environment's `AWS_ENDPOINT_URL` points the SDK at the proxy).
pub fn config_text(k: &Knobs) -> String {
    let [initial, min, max] = k.timeout_ms;
    format!(
        r#"[daemon]
shutdown_grace_secs = 5

[model]
seed = 11

[source]
kind = "cloudwatch"
period_secs = 60
lag_secs = 0
poll_secs = 1
lookback_secs = 25200
[[source.pipelines]]
name = "{PIPELINE}"
job_name = "{JOB}"

[actuator]
kind = "glue"
[[actuator.pipelines]]
name = "{PIPELINE}"
job_name = "{JOB}"
worker_levels = [5, 10, 20, 40]
default_workers = 10
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
max_attempts = {}
base_ms = 50
cap_ms = 200
[guard.timeout]
initial_ms = {initial}
min_ms = {min}
max_ms = {max}
{}
"#,
        k.max_attempts, k.extra
    )
}

pub fn glue_client(endpoint: &str) -> glue::Client {
    use glue::config::{retry::RetryConfig, BehaviorVersion, Credentials, Region};
    let conf = glue::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    glue::Client::from_conf(conf)
}

pub fn cw_client(endpoint: &str) -> cw::Client {
    use cw::config::{retry::RetryConfig, BehaviorVersion, Credentials, Region};
    let conf = cw::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(endpoint)
        .retry_config(RetryConfig::disabled())
        .build();
    cw::Client::from_conf(conf)
}

pub fn table_input(name: &str, columns: &[Col]) -> glue::types::TableInput {
    use glue::types::{Column, SerDeInfo, StorageDescriptor, TableInput};
    let cols = columns.iter().map(|(n, t)| Column::builder().name(n).r#type(t).build().unwrap()).collect();
    let sd = StorageDescriptor::builder()
        .set_columns(Some(cols))
        .location(format!("s3://selfheal-tests/{name}/"))
        .input_format("org.apache.hadoop.mapred.TextInputFormat")
        .output_format("org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat")
        .serde_info(SerDeInfo::builder().serialization_library("org.openx.data.jsonserde.JsonSerDe").build())
        .build();
    TableInput::builder().name(name).table_type("EXTERNAL_TABLE").storage_descriptor(sd).build().unwrap()
}

async fn setup_glue(c: &glue::Client) {
    setup_catalog_and_job(c, 10).await;
}

/// The database `sales` with `orders` and `orders_crawled` (both with
/// [`initial_columns`]) and the G.1X job `orders-etl` of `workers` workers
/// with `--enable-metrics`.
pub async fn setup_catalog_and_job(c: &glue::Client, workers: i32) {
    use glue::types::{DatabaseInput, JobCommand, WorkerType};
    c.create_database()
        .database_input(DatabaseInput::builder().name(DATABASE).build().unwrap())
        .send()
        .await
        .expect("CreateDatabase");
    for t in [TABLE, SOURCE_TABLE] {
        c.create_table()
            .database_name(DATABASE)
            .table_input(table_input(t, &initial_columns()))
            .send()
            .await
            .unwrap_or_else(|e| panic!("CreateTable {t}: {e:?}"));
    }
    c.create_job()
        .name(JOB)
        .role("arn:aws:iam::123456789012:role/selfheal-tests-glue")
        .command(JobCommand::builder().name("glueetl").script_location("s3://selfheal-tests/orders_etl.py").build())
        .glue_version("4.0")
        .worker_type(WorkerType::G1X)
        .number_of_workers(workers)
        .default_arguments("--enable-metrics", "true")
        .send()
        .await
        .expect("CreateJob");
}

/// A Glue job run as the test reads it.
#[derive(Clone, Debug)]
pub struct Run {
    pub id: String,
    /// `--selfheal-action`.
    pub action: String,
    /// `--selfheal-idempotency-key`.
    pub key: String,
    pub workers: i32,
}

/// One step of the loop.
#[derive(Clone, Debug)]
pub struct Tick {
    /// The window this step published.
    pub window: usize,
    /// What the sidecar applied on Glue (so what the simulator applied).
    pub action: Action,
    /// The simulator's verdict on the published window.
    pub slo_met: bool,
    /// Faults active after the step.
    pub faults: Vec<FaultKind>,
}

/// The sum of a metric family's series whose labels contain `filter`.
pub fn family_sum(body: &str, family: &str, filter: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// Simulator, local AWS, proxy and sidecar, dropped in this order (the
/// processes are killed before their directory goes).
pub struct World {
    pub sidecar: Sidecar,
    pub proxy: Proxy,
    pub moto: Moto,
    rt: tokio::runtime::Runtime,
    /// Straight to moto (not through the proxy): the test's own calls are never faulted or counted.
    pub glue: glue::Client,
    pub cw: cw::Client,
    pub sim: Simulator,
    base_s: i64,
    /// Windows published so far.
    pub published: usize,
    /// The sidecar's configuration file (also what `selfheal rollback` reads).
    pub config: PathBuf,
    pub state: PathBuf,
    runs_seen: HashSet<String>,
    /// Workers of the latest run (the job's 10 before any).
    pub workers: i32,
    columns: Vec<Col>,
    pub history: Vec<Tick>,
    pub work: tempfile::TempDir,
}

impl World {
    /// Moto with the Glue catalog and job, the simulator at `seed` (faults
    /// only where the test injects them), its first window published, and
    /// the sidecar running.
    pub fn new(seed: u64, knobs: &Knobs) -> World {
        let work = tempfile::Builder::new().prefix("selfheal-aws-").tempdir().unwrap();
        let moto = Moto::start(&work.path().join("moto.log"));
        let proxy = Proxy::start(&moto.addr);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let glue = glue_client(&moto.url);
        let cw = cw_client(&moto.url);
        rt.block_on(setup_glue(&glue));
        let mut scenario = Scenario::builtin_default();
        scenario.faults.rate = 0.0;
        let mut sim = Simulator::new(&scenario);
        let first = sim.reset(seed);
        let six_hours_ago = now_ms() / 1000 - 6 * 3600;
        let base_s = six_hours_ago - six_hours_ago.rem_euclid(60);
        let text = config_text(knobs);
        let config = work.path().join("sidecar.toml");
        std::fs::write(&config, &text).unwrap();
        let state = work.path().join("state");
        publish(&rt, &cw, &proxy, base_s, 0, &first);
        let env = [
            ("AWS_ENDPOINT_URL", proxy.url.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("RUST_LOG", "info,selfheal::decision=info"),
        ];
        let sidecar =
            Sidecar::start(Start { work: work.path(), state: &state, config: Some(&text), args: &[], env: &env });
        World {
            sidecar,
            proxy,
            moto,
            rt,
            glue,
            cw,
            sim,
            base_s,
            published: 1,
            config,
            state,
            runs_seen: HashSet::new(),
            workers: 10,
            columns: initial_columns(),
            history: Vec::new(),
            work,
        }
    }

    /// Publish the next window.
    pub fn publish(&mut self, t: &Telemetry) {
        publish(&self.rt, &self.cw, &self.proxy, self.base_s, self.published, t);
        self.published += 1;
    }

    /// What went wrong, for panic messages.
    pub fn context(&self) -> String {
        let mut ops: BTreeMap<String, (usize, u32)> = BTreeMap::new();
        for s in self.proxy.seen() {
            ops.entry(s.op.clone()).or_default().0 += 1;
        }
        for (op, v) in ops.iter_mut() {
            v.1 = self.proxy.forwarded(op);
        }
        format!(
            "simulator steps: {:?}\nproxy (received, forwarded) per operation: {ops:?}\n--- sidecar stderr ---\n{}\n--- moto ---\n{}",
            self.history.iter().map(|t| (t.window, t.action.name(), t.slo_met, &t.faults)).collect::<Vec<_>>(),
            self.sidecar.stderr_tail(),
            self.moto.log_tail()
        )
    }

    /// Wait until the sidecar has decided every published window and every
    /// allowed action has an outcome; the /metrics body then.
    pub fn settle(&self) -> String {
        let start = Instant::now();
        loop {
            let body = self.sidecar.metrics();
            let windows = metric(&body, "selfheal_windows_total").unwrap_or(0.0) as usize;
            assert!(
                windows <= self.published,
                "the sidecar decided {windows} windows, but only {} were published: a window was decided twice\n{}",
                self.published,
                self.context()
            );
            let allowed = family_sum(&body, "selfheal_decisions_total", "verdict=\"allowed\"");
            let ended = family_sum(&body, "selfheal_action_outcomes_total", "");
            if windows == self.published && allowed == ended {
                return body;
            }
            if start.elapsed() > SETTLE {
                panic!(
                    "timed out after {SETTLE:?} waiting for the sidecar to decide window {} (it decided {windows}) \
                     and to finish its actions ({allowed} allowed, {ended} ended)\n{}",
                    self.published - 1,
                    self.context()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Job runs, oldest first.
    pub fn runs(&self) -> Vec<Run> {
        let out = self.rt.block_on(self.glue.get_job_runs().job_name(JOB).send()).expect("GetJobRuns");
        let mut runs: Vec<_> = out.job_runs().to_vec();
        runs.sort_by_key(|r| r.started_on().map(|t| (t.secs(), t.subsec_nanos())));
        runs.iter()
            .map(|r| {
                let arg = |k: &str| r.arguments().and_then(|a| a.get(k)).cloned().unwrap_or_default();
                Run {
                    id: r.id().unwrap_or_default().to_string(),
                    action: arg("--selfheal-action"),
                    key: arg(selfheal_aws::glue::KEY_ARG),
                    workers: r.number_of_workers().unwrap_or(-1),
                }
            })
            .collect()
    }

    /// A table's columns.
    pub fn columns(&self, table: &str) -> Vec<Col> {
        let out = self
            .rt
            .block_on(self.glue.get_table().database_name(DATABASE).name(table).send())
            .unwrap_or_else(|e| panic!("GetTable {table}: {e:?}"));
        let t = out.table().expect("GetTable returned a table");
        t.storage_descriptor()
            .map(|sd| {
                sd.columns().iter().map(|c| (c.name().to_string(), c.r#type().unwrap_or("").to_string())).collect()
            })
            .unwrap_or_default()
    }

    /// Versions Glue keeps of a table.
    pub fn table_versions(&self, table: &str) -> usize {
        let out = self
            .rt
            .block_on(self.glue.get_table_versions().database_name(DATABASE).table_name(table).send())
            .expect("GetTableVersions");
        out.table_versions().len()
    }

    /// The data changed upstream: the crawled table has a new column.
    pub fn drift_source_table(&self) {
        let mut cols = initial_columns();
        cols.push(("currency".into(), "string".into()));
        self.rt
            .block_on(
                self.glue.update_table().database_name(DATABASE).table_input(table_input(SOURCE_TABLE, &cols)).send(),
            )
            .expect("UpdateTable orders_crawled");
    }

    /// What the sidecar applied on Glue since the last look: a new run (its
    /// `--selfheal-action` names the action; a scale must have moved the
    /// workers the right way, any other run must keep them) or a remapped
    /// table. At most one action per window.
    pub fn applied_on_glue(&mut self) -> Action {
        let mut applied = Vec::new();
        for r in self.runs() {
            if !self.runs_seen.insert(r.id.clone()) {
                continue;
            }
            let a: Action = r.action.parse().unwrap_or_else(|_| panic!("run {} names no action: {r:?}", r.id));
            match a {
                Action::ScaleUp => {
                    assert!(r.workers > self.workers, "scale_up run {r:?} after {} workers", self.workers)
                }
                Action::ScaleDown => {
                    assert!(r.workers < self.workers, "scale_down run {r:?} after {} workers", self.workers)
                }
                _ => assert_eq!(r.workers, self.workers, "a {a} run changed the workers: {r:?}"),
            }
            self.workers = r.workers;
            applied.push(a);
        }
        let cols = self.columns(TABLE);
        if cols != self.columns {
            assert_eq!(cols, self.columns(SOURCE_TABLE), "{TABLE} changed, but not to {SOURCE_TABLE}'s columns");
            self.columns = cols;
            applied.push(Action::SchemaRemap);
        }
        assert!(applied.len() <= 1, "more than one action on Glue for one window: {applied:?}\n{}", self.context());
        applied.first().copied().unwrap_or(Action::NoOp)
    }

    /// One step of the loop: wait for the sidecar, read Glue, step the
    /// simulator with what was applied, publish the next window.
    pub fn tick(&mut self) -> Tick {
        self.settle();
        let action = self.applied_on_glue();
        let step = self.sim.step(action);
        self.publish(&step.telemetry);
        let t = Tick {
            window: self.published - 1,
            action,
            slo_met: step.info.slo_met,
            faults: FaultKind::ALL.into_iter().filter(|k| step.info.active.contains(*k)).collect(),
        };
        self.history.push(t.clone());
        t
    }

    /// Tick until `kind` is gone and the SLO has held for `calm` windows in
    /// a row; panics after `max` ticks.
    pub fn tick_until_healed(&mut self, kind: FaultKind, calm: usize, max: usize) {
        let mut good = 0;
        for _ in 0..max {
            let t = self.tick();
            good = if !t.faults.contains(&kind) && t.slo_met { good + 1 } else { 0 };
            if good >= calm {
                return;
            }
        }
        panic!("{kind} did not heal (and stay healthy {calm} windows) within {max} windows\n{}", self.context());
    }
}

/// Window `k` at `base + k·60 s`: every metric where the source reads it
/// (`query_for`), one `PutMetricData` per namespace, polls held back meanwhile.
fn publish(rt: &tokio::runtime::Runtime, c: &cw::Client, proxy: &Proxy, base_s: i64, k: usize, t: &Telemetry) {
    use cw::primitives::DateTime;
    use cw::types::{Dimension, MetricDatum};
    let ts = base_s + 60 * k as i64;
    let mut by_ns: BTreeMap<String, Vec<MetricDatum>> = BTreeMap::new();
    for &m in Metric::ALL {
        let q = query_for(m, PIPELINE, JOB, NAMESPACE);
        let dims = q.dimensions.iter().map(|(n, v)| Dimension::builder().name(n).value(v).build()).collect();
        let d = MetricDatum::builder()
            .metric_name(&q.name)
            .set_dimensions(Some(dims))
            .timestamp(DateTime::from_secs(ts))
            .value(t.get(m))
            .build();
        by_ns.entry(q.namespace).or_default().push(d);
    }
    let _held = proxy.gate();
    for (ns, data) in by_ns {
        rt.block_on(c.put_metric_data().namespace(&ns).set_metric_data(Some(data)).send())
            .unwrap_or_else(|e| panic!("PutMetricData {ns}: {e:?}"));
    }
}
