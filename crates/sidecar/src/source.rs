//! Telemetry sources: where windows come from.
//!
//! The seam is async and fallible because real sources are (CloudWatch polls
//! time out, throttle and arrive late); a source yields batches of closed
//! [`Window`]s and `None` when it has nothing more to give (end of a replay).
//! Three live here: the simulator (the demo and the tests), file replay (to
//! reprocess a past incident) and HTTP push (whose handler lives in
//! [`crate::http`] and feeds an [`HttpSource`] through a channel).

use crate::window::{parse_line, Assembler, Window};
use crate::BoxFuture;
use crate::LockExt;
use selfheal_core::{Action, Environment, Metric};
use selfheal_sim::{Scenario, Simulator};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Idempotency keys the simulator actuator remembers.
const KEYS_KEPT: usize = 10_000;

/// Why a source failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of a replayed file is malformed.
    #[error("{path}:{line}: {message}")]
    Bad {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Yields telemetry windows.
pub trait TelemetrySource: Send {
    /// Short name for logs (`simulator`, `file`, `http`, `cloudwatch`).
    fn name(&self) -> &str;
    /// The next batch of closed windows; `Ok(None)` when the source is exhausted.
    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<Window>>, SourceError>>;
}

// ---------------------------------------------------------------- simulator

/// One simulated pipeline.
#[derive(Debug)]
struct SimPipeline {
    name: String,
    sim: Simulator,
    seed: u64,
    episode: u64,
    pending: Action,
}

/// Simulated pipelines, shared by the simulator source (which steps them) and
/// the simulator actuator (which sets the action of their next step).
#[derive(Debug)]
pub struct SimFleet {
    pipelines: Vec<SimPipeline>,
    /// Idempotency keys applied, oldest first in `applied_order`; bounded,
    /// because a retry comes within minutes, not after thousands of actions.
    applied: HashSet<String>,
    applied_order: VecDeque<String>,
    stride: u64,
    step: u64,
    start_ms: i64,
    step_ms: i64,
}

impl SimFleet {
    /// `n` pipelines `p1..pn` of `scenario`; pipeline i plays the episodes
    /// seeded `seed + i`, `seed + i + n`, ... Windows are stamped in simulated
    /// time from `start_ms`, one scenario step (a minute by default) apart, so
    /// budgets and cooldowns see the pipeline's own clock.
    pub fn new(scenario: &Scenario, n: u32, seed: u64, start_ms: i64) -> SimFleet {
        let pipelines = (0..n)
            .map(|i| {
                let mut sim = Simulator::new(scenario);
                let seed = seed + u64::from(i);
                sim.reset(seed);
                SimPipeline { name: format!("p{}", i + 1), sim, seed, episode: 0, pending: Action::NoOp }
            })
            .collect();
        let step_ms = i64::from(scenario.pipeline.step_seconds) * 1000;
        SimFleet {
            pipelines,
            applied: HashSet::new(),
            applied_order: VecDeque::new(),
            stride: u64::from(n.max(1)),
            step: 0,
            start_ms,
            step_ms,
        }
    }

    /// Step every pipeline with its pending action; a finished episode starts
    /// the pipeline's next one.
    pub fn tick(&mut self) -> Vec<Window> {
        self.step += 1;
        let ts_ms = self.start_ms + self.step as i64 * self.step_ms;
        let stride = self.stride;
        self.pipelines
            .iter_mut()
            .map(|p| {
                let action = std::mem::replace(&mut p.pending, Action::NoOp);
                let step = p.sim.step(action);
                if step.done {
                    p.episode += 1;
                    p.sim.reset(p.seed + p.episode * stride);
                }
                Window { pipeline: p.name.clone(), ts_ms, telemetry: step.telemetry }
            })
            .collect()
    }

    /// Apply `action` to `pipeline`'s next step, once per idempotency key.
    /// Returns whether it was new (false: that key was applied before).
    pub fn apply(&mut self, pipeline: &str, action: Action, key: &str) -> Result<bool, String> {
        let p = self
            .pipelines
            .iter_mut()
            .find(|p| p.name == pipeline)
            .ok_or_else(|| format!("no simulated pipeline {pipeline:?}"))?;
        if !self.applied.insert(key.to_string()) {
            return Ok(false);
        }
        self.applied_order.push_back(key.to_string());
        if self.applied_order.len() > KEYS_KEPT {
            if let Some(oldest) = self.applied_order.pop_front() {
                self.applied.remove(&oldest);
            }
        }
        p.pending = action;
        Ok(true)
    }

    /// Active faults of a pipeline, for logs and tests.
    pub fn faults(&self, pipeline: &str) -> Option<String> {
        self.pipelines.iter().find(|p| p.name == pipeline).map(|p| format!("{:?}", p.sim.state().slots))
    }
}

/// The simulator as a source: one window per pipeline every `tick`.
pub struct SimSource {
    fleet: Arc<Mutex<SimFleet>>,
    tick: Duration,
    interval: Option<tokio::time::Interval>,
}

impl SimSource {
    /// Step `fleet` every `tick`.
    pub fn new(fleet: Arc<Mutex<SimFleet>>, tick: Duration) -> SimSource {
        SimSource { fleet, tick, interval: None }
    }
}

impl TelemetrySource for SimSource {
    fn name(&self) -> &str {
        "simulator"
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<Window>>, SourceError>> {
        Box::pin(async move {
            let tick = self.tick;
            let interval = self.interval.get_or_insert_with(|| {
                let mut i = tokio::time::interval(tick);
                i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                i
            });
            interval.tick().await;
            let windows = self.fleet.locked().tick();
            Ok(Some(windows))
        })
    }
}

// ---------------------------------------------------------------- file replay

/// How a replay is paced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// No waiting.
    Fast,
    /// The recorded spacing divided by this speed-up.
    Realtime(f64),
}

/// Replays a NAB-style CSV (`timestamp,value`, one metric) or JSON lines of
/// samples (`.jsonl`/`.json`), windows in recorded order, optionally from a
/// point in time on.
pub struct FileSource {
    windows: std::vec::IntoIter<Window>,
    pacing: Pacing,
    last_ts: Option<i64>,
}

impl FileSource {
    /// Read the whole file now, so a malformed line fails the start, not the
    /// middle of an incident. A Glue Job State Change event on a JSON line is
    /// evidence of the pipeline `jobs` maps its job to (job name → pipeline;
    /// an unlisted job is its own pipeline), added to that pipeline's last
    /// window ([`Assembler::push_event`]), never a window of its own.
    pub fn open(
        path: &Path,
        metric: Metric,
        pipeline: &str,
        pacing: Pacing,
        from_ms: Option<i64>,
        jobs: &[(String, String)],
    ) -> Result<FileSource, SourceError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SourceError::Io { path: path.to_path_buf(), source })?;
        let bad = |line: usize, message: String| SourceError::Bad { path: path.to_path_buf(), line, message };
        let jsonl = matches!(path.extension().and_then(|e| e.to_str()), Some("jsonl" | "json" | "ndjson"));
        let mut asm = Assembler::new(1);
        asm.map_jobs(jobs.iter().cloned());
        let mut windows = Vec::new();
        if jsonl {
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let s = parse_line(line.as_bytes()).map_err(|e| bad(i + 1, e))?;
                if from_ms.is_some_and(|f| s.ts < f) {
                    continue;
                }
                if s.event {
                    asm.push_event(&s.pipeline, s.ts, &s.metrics.0);
                    continue;
                }
                windows.extend(asm.push(&s.pipeline, s.ts, &s.metrics.0).map_err(|e| bad(i + 1, e.to_string()))?);
            }
        } else {
            let mut lines = text.lines().enumerate();
            match lines.next() {
                Some((_, "timestamp,value")) => {}
                Some((_, other)) => {
                    return Err(bad(1, format!("expected the header `timestamp,value`, got {other:?}")))
                }
                None => return Err(bad(1, "the file is empty; expected the header `timestamp,value`".into())),
            }
            for (i, line) in lines {
                if line.trim().is_empty() {
                    continue;
                }
                let (stamp, value) =
                    line.split_once(',').ok_or_else(|| bad(i + 1, "expected `timestamp,value`".into()))?;
                let ts = selfheal_core::time::parse_stamp(stamp.trim())
                    .ok_or_else(|| bad(i + 1, format!("bad timestamp {stamp:?}; expected YYYY-MM-DD HH:MM:SS")))?
                    .unix_ms();
                let v: f64 =
                    value.trim().parse().map_err(|_| bad(i + 1, format!("value {value:?} is not a number")))?;
                if !v.is_finite() {
                    return Err(bad(i + 1, format!("value {v} is not finite")));
                }
                if from_ms.is_some_and(|f| ts < f) {
                    continue;
                }
                windows.extend(asm.push(pipeline, ts, &[(metric, v)]).map_err(|e| bad(i + 1, e.to_string()))?);
            }
        }
        windows.extend(asm.drain());
        Ok(FileSource { windows: windows.into_iter(), pacing, last_ts: None })
    }

    /// Windows left to replay.
    pub fn remaining(&self) -> usize {
        self.windows.len()
    }
}

impl TelemetrySource for FileSource {
    fn name(&self) -> &str {
        "file"
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<Window>>, SourceError>> {
        Box::pin(async move {
            let Some(w) = self.windows.next() else { return Ok(None) };
            if let (Pacing::Realtime(speed), Some(last)) = (self.pacing, self.last_ts) {
                let gap = (w.ts_ms - last).max(0) as f64 / speed;
                tokio::time::sleep(Duration::from_secs_f64(gap / 1000.0)).await;
            }
            self.last_ts = Some(w.ts_ms);
            Ok(Some(vec![w]))
        })
    }
}

// ---------------------------------------------------------------- HTTP push

/// Windows pushed over HTTP: the `/ingest` handler assembles them and sends
/// them down the channel this source reads.
pub struct HttpSource {
    rx: mpsc::Receiver<Vec<Window>>,
}

impl HttpSource {
    /// A source and the sender the ingest handler feeds. The channel is
    /// bounded, so a slow decision loop slows ingest down instead of growing
    /// memory.
    pub fn channel(capacity: usize) -> (mpsc::Sender<Vec<Window>>, HttpSource) {
        let (tx, rx) = mpsc::channel(capacity);
        (tx, HttpSource { rx })
    }
}

impl TelemetrySource for HttpSource {
    fn name(&self) -> &str {
        "http"
    }

    fn next(&mut self) -> BoxFuture<'_, Result<Option<Vec<Window>>, SourceError>> {
        Box::pin(async move { Ok(self.rx.recv().await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn fleet_applies_a_key_once() {
        let mut f = SimFleet::new(&Scenario::builtin_default(), 2, 1, 0);
        assert_eq!(f.apply("p2", Action::ScaleUp, "k1"), Ok(true));
        assert_eq!(f.apply("p2", Action::ScaleUp, "k1"), Ok(false));
        assert!(f.apply("p9", Action::ScaleUp, "k2").is_err());
        let w = f.tick();
        assert_eq!(w.iter().map(|w| w.pipeline.as_str()).collect::<Vec<_>>(), ["p1", "p2"]);
        assert_eq!(w[0].ts_ms, 60_000); // one simulated minute per step
        assert_eq!(f.tick()[1].ts_ms, 120_000);
    }

    #[tokio::test]
    async fn a_glue_event_in_a_replay_is_evidence_of_its_pipeline_not_a_window() {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        let event = r#"{"version": "0", "detail-type": "Glue Job State Change", "source": "aws.glue", "time": "2026-11-23T03:00:30Z", "detail": {"jobName": "orders-etl", "state": "FAILED", "jobRunId": "jr_1", "message": "java.lang.OutOfMemoryError: Java heap space"}}"#;
        writeln!(f, r#"{{"ts": 1795402800000, "pipeline": "orders", "metrics": {{"glue.ALL.jvm.heap.usage": 0.97}}}}"#)
            .unwrap();
        writeln!(f, "{event}").unwrap();
        writeln!(f, r#"{{"ts": 1795402860000, "pipeline": "orders", "metrics": {{"glue.ALL.jvm.heap.usage": 0.4}}}}"#)
            .unwrap();
        let jobs = [("orders-etl".to_string(), "orders".to_string())];
        let mut s = FileSource::open(f.path(), Metric::LatencyP95, "x", Pacing::Fast, None, &jobs).unwrap();
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b);
        }
        assert_eq!(got.iter().map(|w| w.pipeline.as_str()).collect::<Vec<_>>(), ["orders", "orders"], "{got:?}");
        assert_eq!(got[0].telemetry.value(Metric::RunsFailedOom), Some(1.0), "the run's failure joins the open window");
        assert_eq!(got[1].telemetry.value(Metric::RunsFailedOom), Some(0.0), "a count absent from a window is 0");
    }

    #[tokio::test]
    async fn csv_replay_from_a_time() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "timestamp,value\n2026-11-23 03:00:00,1\n2026-11-23 03:05:00,2\n2026-11-23 03:10:00,3").unwrap();
        let from = selfheal_core::time::parse_stamp("2026-11-23 03:05:00").unwrap().unix_ms();
        let mut s = FileSource::open(f.path(), Metric::LatencyP95, "x", Pacing::Fast, Some(from), &[]).unwrap();
        let mut got = Vec::new();
        while let Some(b) = s.next().await.unwrap() {
            got.extend(b.into_iter().map(|w| w.telemetry.get(Metric::LatencyP95)));
        }
        assert_eq!(got, vec![2.0, 3.0]);
    }

    #[test]
    fn csv_errors_name_the_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "timestamp,value\n2026-11-23 03:00:00,1\n2026-11-23 03:05:00,nan").unwrap();
        let e = FileSource::open(f.path(), Metric::LatencyP95, "x", Pacing::Fast, None, &[]).err().unwrap().to_string();
        assert!(e.contains(":3:") && e.contains("not finite"), "{e}");
        let e = FileSource::open(Path::new("/nonexistent.csv"), Metric::LatencyP95, "x", Pacing::Fast, None, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent.csv"), "{e}");
    }

    #[test]
    fn jsonl_replay_refuses_out_of_order() {
        let mut f = tempfile::Builder::new().suffix(".jsonl").tempfile().unwrap();
        writeln!(f, "{{\"ts\":2000,\"pipeline\":\"a\",\"metrics\":{{\"pipeline.latency.p95\":1}}}}").unwrap();
        writeln!(f, "{{\"ts\":1000,\"pipeline\":\"a\",\"metrics\":{{\"pipeline.latency.p95\":1}}}}").unwrap();
        let e = FileSource::open(f.path(), Metric::LatencyP95, "x", Pacing::Fast, None, &[]).err().unwrap().to_string();
        assert!(e.contains(":2:") && e.contains("late"), "{e}");
    }
}
