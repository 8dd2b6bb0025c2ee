//! From samples to windows: what every source hands the decision loop.
//!
//! Telemetry arrives as samples (one pipeline, one time, some metrics); the
//! agent decides on windows (one pipeline, one period, every metric). The
//! assembler groups samples by pipeline and period: within a period the latest
//! value of a metric wins (duplicates are harmless), and a window closes when
//! the first sample of a later period arrives.
//!
//! A metric missing from a period is read by its kind ([`Metric::is_count`]):
//! a **count** is 0 for that period, because CloudWatch publishes no datapoint
//! for a count when nothing happened ("Sum" over no events); carrying the last
//! count forward turned one minute of 300 upstream errors into half an hour of
//! them. A **level** (heap, latency, backlog) keeps its last value for up to
//! [`STALE_PERIODS`] periods (push clients and CloudWatch drop points), then
//! becomes absent: stale evidence is not evidence. A metric the pipeline never
//! reported is absent, never 0 (see [`selfheal_core::Telemetry`]). A
//! sample older than its pipeline's open period is late and refused, never
//! reordered silently into the past.
//!
//! Memory is bounded ([`Bounds`]): a new pipeline beyond `max_pipelines` is
//! refused ([`Refused::PipelineCap`]), and [`Assembler::evict_idle`] drops
//! the open window of a pipeline silent for `idle_ms`. Idleness is measured on
//! the **data clock**, the newest sample time seen (see [`Assembler::clock`]),
//! not the wall clock: a replay or a soak that pushes an hour of samples in a
//! minute evicts as the live feed would have, and a daemon whose every pusher
//! has stopped evicts nothing (nothing new arrives to need the room either).
//! One pusher's clock in the future cannot evict everyone else: when
//! evicting, the data clock is read no further than the wall clock
//! (`min(newest sample, now)`, the same as clamping each sample's
//! contribution to the wall time of the sweep). Why the wall clock and not a
//! margin past it (the old hour, or one period): a clock read past the wall
//! clock by `m` evicts a pipeline that reports on time once `m` plus its
//! period plus delivery lag exceeds the idle time, so any margin is a margin
//! one bad sender takes from everyone else; read no further than the wall
//! clock, a live pipeline whose latest period began within `idle_ms` of now
//! stays whatever anyone else sends, which is why `selfheal validate`
//! requires `pipeline_idle_secs` of at least two periods for every source
//! kind. A sender whose clock runs ahead loses nothing either: its own
//! samples still assemble on its own time, and it is never idle while its
//! newest period lies in the wall clock's future. A replay or soak in the
//! past of the wall clock is unaffected (its clock is below the wall clock
//! already: `benches/soak.sh` and `tests/sidecar_bounds.rs` replay 2026-11
//! minutes fast). The
//! limit of this clock: a pusher lagging the newest by more than the idle
//! time (a backfill a day behind, with the 25 h default) sees its pipelines
//! evicted and re-admitted between its samples (the soak showed it with two
//! load threads whose clocks drifted apart; `benches/RESULTS.md`).

use selfheal_core::{Metric, Telemetry};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

/// One pipeline's telemetry over one period: what the agent decides on.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Pipeline name.
    pub pipeline: String,
    /// Start of the period, Unix milliseconds.
    pub ts_ms: i64,
    /// The latest value of every metric.
    pub telemetry: Telemetry,
}

/// One sample as pushed to `POST /ingest` or replayed from JSON lines:
/// `{"ts": 1795402800000, "pipeline": "orders", "metrics": {"pipeline.latency.p95": 42.0}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleLine<'a> {
    /// Unix milliseconds.
    pub ts: i64,
    /// Pipeline name.
    #[serde(borrow)]
    pub pipeline: Cow<'a, str>,
    /// Stage the metrics describe (informational; each metric knows its stage).
    #[serde(default, borrow)]
    pub stage: Option<Cow<'a, str>>,
    /// Metric name → value, names as in `selfheal config --metrics`.
    pub metrics: MetricValues,
    /// Made from an event (a job run's end), not measured: its counts are
    /// added to the open window of the pipeline ([`Assembler::push_event`]).
    #[serde(skip)]
    pub event: bool,
}

/// The metrics of one sample, checked as they are parsed: known names, finite values.
#[derive(Debug, Default)]
pub struct MetricValues(pub Vec<(Metric, f64)>);

impl<'de> Deserialize<'de> for MetricValues {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MetricValues;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of metric name to number")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MetricValues, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(4));
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    let metric = Metric::from_name(&name)
                        .ok_or_else(|| de::Error::custom(format_args!("unknown metric {name:?}")))?;
                    let v: f64 = map.next_value()?;
                    if !v.is_finite() {
                        return Err(de::Error::custom(format_args!("{name}: value {v} is not finite")));
                    }
                    out.push((metric, v));
                }
                Ok(MetricValues(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An EventBridge event as Glue emits it for a job run's end
/// (<https://docs.aws.amazon.com/glue/latest/dg/automating-awsglue-with-cloudwatch-events.html>).
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(rename = "detail-type")]
    detail_type: String,
    time: String,
    detail: EventDetail,
}

#[derive(Debug, Deserialize)]
struct EventDetail {
    #[serde(rename = "jobName")]
    job_name: String,
    state: String,
    #[serde(default)]
    message: String,
}

/// A "Glue Job State Change" event as a sample of the job `detail.jobName`
/// (the assembler files it under the pipeline whose job that is), at the
/// event's `time`, carrying the counts of
/// [`selfheal_core::evidence::run_ended`]: the run's end is evidence like any
/// metric. Other event types are refused by name.
fn parse_event(line: &[u8]) -> Result<SampleLine<'static>, String> {
    let e: Event = serde_json::from_slice(line).map_err(|e| format!("an EventBridge event, but {e}"))?;
    if e.detail_type != "Glue Job State Change" {
        return Err(format!(
            "an EventBridge event of type {:?}: only \"Glue Job State Change\" is understood",
            e.detail_type
        ));
    }
    let ts = crate::provenance::parse_time(&e.time, 0)?;
    let metrics = selfheal_core::evidence::run_ended(&e.detail.state, &e.detail.message)?;
    Ok(SampleLine {
        ts,
        pipeline: Cow::Owned(e.detail.job_name),
        stage: None,
        metrics: MetricValues(metrics),
        event: true,
    })
}

/// Parse one JSON line into a sample: a sample line, or a "Glue Job State
/// Change" EventBridge event (recognised by its `detail-type` key).
pub fn parse_line(line: &[u8]) -> Result<SampleLine<'_>, String> {
    let is_event = line.windows(13).any(|w| w == b"\"detail-type\"");
    let s: SampleLine<'_> =
        if is_event { parse_event(line)? } else { serde_json::from_slice(line).map_err(|e| e.to_string())? };
    if s.pipeline.is_empty() {
        return Err("pipeline must not be empty".into());
    }
    if s.ts < 0 {
        return Err(format!("ts {} is before 1970", s.ts));
    }
    Ok(s)
}

/// Why a sample was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Older than the pipeline's open window.
    #[error("late sample: ts {ts} is before the open window of {pipeline:?}, which starts at {open}")]
    Late {
        /// Pipeline.
        pipeline: String,
        /// The sample's time.
        ts: i64,
        /// Start of the open window.
        open: i64,
    },
    /// A new pipeline while `cap` pipelines are open already.
    #[error(
        "pipeline {pipeline:?} is new and {cap} pipelines are live, the cap ([daemon] max_pipelines): refused until \
         an idle one is evicted ([daemon] pipeline_idle_secs)"
    )]
    PipelineCap {
        /// The new pipeline.
        pipeline: String,
        /// The cap.
        cap: usize,
    },
}

/// Limits on what an [`Assembler`] holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Most pipelines with an open window; a sample of a new one beyond it is
    /// refused ([`Refused::PipelineCap`]).
    pub max_pipelines: usize,
    /// A pipeline whose latest sample is this much older than the data clock
    /// is idle and may be evicted, ms.
    pub idle_ms: i64,
}

impl Default for Bounds {
    /// No limit: a replay file or a fit reads what it was given.
    fn default() -> Self {
        Bounds { max_pipelines: usize::MAX, idle_ms: i64::MAX }
    }
}

/// Periods a level metric may go unreported before it is treated as absent.
pub const STALE_PERIODS: i64 = 5;
/// ... and never less than this (ms): a replay assembled sample by sample
/// (a period of 1 ms) still carries a level through a few missing rows.
pub const STALE_MIN_MS: i64 = 5 * 60_000;

/// One pipeline's open window and what carries into the next period (see
/// the module doc): shared by the push assembler and the CloudWatch source.
#[derive(Clone, Debug)]
pub struct Carry {
    start: i64,
    telemetry: Telemetry,
    /// Start of the period each metric was last reported in.
    seen: [i64; Metric::COUNT],
}

impl Carry {
    /// Nothing known yet; the open period starts at `start` (ms).
    pub fn new(start: i64) -> Carry {
        Carry { start, telemetry: Telemetry::default(), seen: [i64::MIN; Metric::COUNT] }
    }

    /// The open period's telemetry so far.
    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    /// Start of the open period, ms.
    pub fn start(&self) -> i64 {
        self.start
    }

    /// Values reported in the open period (the latest wins).
    pub fn set(&mut self, metrics: &[(Metric, f64)]) {
        for &(m, v) in metrics {
            self.telemetry.set(m, v);
            self.seen[m.index()] = self.start;
        }
    }

    /// Counts added to the open period (levels set): evidence folded in.
    pub fn add(&mut self, metrics: &[(Metric, f64)]) {
        for &(m, v) in metrics {
            let v = if m.is_count() { self.telemetry.value(m).unwrap_or(0.0) + v } else { v };
            self.telemetry.set(m, v);
            self.seen[m.index()] = self.start;
        }
    }

    /// Move to the period starting at `start` (ms): counts of the pipeline
    /// read 0 until reported, levels carry over until stale.
    pub fn roll(&mut self, start: i64, period_ms: i64) {
        for &m in Metric::ALL {
            if !self.telemetry.is_present(m) {
                continue;
            }
            if m.is_count() {
                self.telemetry.set(m, 0.0);
            } else if start - self.seen[m.index()] > (STALE_PERIODS * period_ms).max(STALE_MIN_MS) {
                self.telemetry.clear(m);
            }
        }
        self.start = start;
    }
}

/// Groups samples into windows of `period_ms`, per pipeline.
#[derive(Debug)]
pub struct Assembler {
    period_ms: i64,
    open: HashMap<String, Carry>,
    /// Glue job name → the pipeline that watches it (events name jobs).
    jobs: HashMap<String, String>,
    bounds: Bounds,
    /// The data clock: the newest sample time seen, ms.
    clock: i64,
}

impl Assembler {
    /// Windows of `period_ms` (at least 1), without limits.
    pub fn new(period_ms: i64) -> Assembler {
        Assembler::bounded(period_ms, Bounds::default())
    }

    /// Windows of `period_ms` (at least 1), holding at most `bounds`.
    pub fn bounded(period_ms: i64, bounds: Bounds) -> Assembler {
        Assembler { period_ms: period_ms.max(1), open: HashMap::new(), jobs: HashMap::new(), bounds, clock: i64::MIN }
    }

    /// Change the limits (a pipeline already open beyond a lowered cap stays).
    pub fn set_bounds(&mut self, bounds: Bounds) {
        self.bounds = bounds;
    }

    /// The limits.
    pub fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Pipelines with an open window.
    pub fn live(&self) -> usize {
        self.open.len()
    }

    /// The data clock: the newest sample time seen, Unix ms (`i64::MIN` before
    /// the first sample).
    pub fn clock(&self) -> i64 {
        self.clock
    }

    /// Whether a sample of `pipeline` (an event's Glue job name when `event`)
    /// may be taken: a pipeline already open always may, a new one while
    /// fewer than `max_pipelines` are open.
    pub fn admit(&self, pipeline: &str, event: bool) -> Result<(), Refused> {
        let name = if event { self.jobs.get(pipeline).map_or(pipeline, String::as_str) } else { pipeline };
        if self.open.len() < self.bounds.max_pipelines || self.open.contains_key(name) {
            Ok(())
        } else {
            Err(Refused::PipelineCap { pipeline: name.to_string(), cap: self.bounds.max_pipelines })
        }
    }

    /// Drop the open window of every pipeline idle for `bounds.idle_ms` on
    /// the data clock, read no further than `now_ms` (the wall clock, Unix
    /// ms; see the module doc for why not past it), except those `keep` names (a pipeline the
    /// decision core still needs: an open proposal, an action in flight).
    /// Idle is measured from the start of the pipeline's latest period. What
    /// is dropped is a partial window nobody would close (no later sample is
    /// coming) and levels that went stale after [`STALE_PERIODS`] periods
    /// anyway. Returns the names evicted, sorted.
    pub fn evict_idle(&mut self, now_ms: i64, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        let clock = self.clock.min(now_ms);
        let idle = self.bounds.idle_ms;
        let mut gone: Vec<String> = self
            .open
            .iter()
            .filter(|(name, c)| clock.saturating_sub(c.start) > idle && !keep(name))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.open.remove(name);
        }
        gone.sort();
        gone
    }

    /// File events about Glue job `job` under `pipeline` (the configured
    /// `job_name` → `name` pairs); a job not listed is its own pipeline.
    pub fn map_jobs(&mut self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.jobs.extend(pairs);
    }

    /// Fold an event's counts into its pipeline's open window. An event
    /// neither closes a window nor is refused as late: EventBridge delivers
    /// seconds after the fact and clocks differ, and a run's failure is
    /// evidence whenever it arrives. Counts add up (two failed runs in one
    /// period count 2).
    pub fn push_event(&mut self, job: &str, ts: i64, metrics: &[(Metric, f64)]) {
        let pipeline = self.jobs.get(job).cloned().unwrap_or_else(|| job.to_string());
        let start = ts - ts.rem_euclid(self.period_ms);
        self.clock = self.clock.max(ts);
        self.open.entry(pipeline).or_insert_with(|| Carry::new(start)).add(metrics);
    }

    /// Add a sample; returns the window it closed, if any. A new pipeline
    /// beyond `max_pipelines` is refused ([`Refused::PipelineCap`]).
    pub fn push(&mut self, pipeline: &str, ts: i64, metrics: &[(Metric, f64)]) -> Result<Option<Window>, Refused> {
        let start = ts - ts.rem_euclid(self.period_ms);
        let Some(open) = self.open.get_mut(pipeline) else {
            self.admit(pipeline, false)?;
            self.clock = self.clock.max(ts);
            let mut open = Carry::new(start);
            open.set(metrics);
            self.open.insert(pipeline.to_string(), open);
            return Ok(None);
        };
        if start < open.start {
            return Err(Refused::Late { pipeline: pipeline.to_string(), ts, open: open.start });
        }
        self.clock = self.clock.max(ts);
        let closed = if start > open.start {
            let w = Window { pipeline: pipeline.to_string(), ts_ms: open.start, telemetry: open.telemetry };
            open.roll(start, self.period_ms);
            Some(w)
        } else {
            None
        };
        open.set(metrics);
        Ok(closed)
    }

    /// Close every open window (end of a replay).
    pub fn drain(&mut self) -> Vec<Window> {
        let mut out: Vec<Window> = self
            .open
            .drain()
            .map(|(pipeline, o)| Window { pipeline, ts_ms: o.start, telemetry: o.telemetry })
            .collect();
        out.sort_by(|a, b| (a.ts_ms, &a.pipeline).cmp(&(b.ts_ms, &b.pipeline)));
        out
    }
}

/// Lines of a body: (1-based line number, what it holds).
pub type Numbered<T> = Vec<(usize, T)>;

/// Longest telemetry line read (bytes, without its newline). One sample is a
/// few hundred bytes; a longer line is refused with its number, unparsed, so
/// no single line can make the parser build a huge map.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Parse a body of JSON lines: the samples with their 1-based line numbers,
/// and the lines refused with why. Blank lines are skipped; a bad line is
/// refused alone. Pure parsing, so `/ingest` runs it outside its lock.
pub fn parse_body(body: &[u8]) -> (Numbered<SampleLine<'_>>, Numbered<String>) {
    let mut samples = Vec::with_capacity(body.len() / 80 + 1);
    let mut rejected = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            rejected.push((i + 1, format!("line is {} bytes, longer than the limit of {MAX_LINE_BYTES}", line.len())));
            continue;
        }
        match parse_line(line) {
            Ok(s) => samples.push((i + 1, s)),
            Err(e) => rejected.push((i + 1, e)),
        }
    }
    (samples, rejected)
}

/// What a body of samples did to an assembler.
#[derive(Debug, Default)]
pub struct Ingested {
    /// Samples accepted.
    pub accepted: usize,
    /// Windows closed by them.
    pub windows: Vec<Window>,
    /// 1-based line number and why, for every refused line, in line order.
    pub rejected: Numbered<String>,
    /// How many of `rejected` were refused for the pipeline cap.
    pub capped: usize,
}

/// Push parsed samples into `asm`; lines already refused by parsing are kept
/// in the result, so a bad line is refused alone and the others still land.
pub fn assemble(asm: &mut Assembler, samples: &[(usize, SampleLine<'_>)], refused: Numbered<String>) -> Ingested {
    let mut out = Ingested { rejected: refused, ..Ingested::default() };
    for (line, s) in samples {
        let taken = if s.event {
            asm.admit(&s.pipeline, true).map(|()| asm.push_event(&s.pipeline, s.ts, &s.metrics.0))
        } else {
            asm.push(&s.pipeline, s.ts, &s.metrics.0).map(|w| out.windows.extend(w))
        };
        match taken {
            Ok(()) => out.accepted += 1,
            Err(e) => {
                out.capped += usize::from(matches!(e, Refused::PipelineCap { .. }));
                out.rejected.push((*line, e.to_string()));
            }
        }
    }
    out.rejected.sort_by_key(|r| r.0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAT: Metric = Metric::LatencyP95;

    #[test]
    fn windows_close_on_a_later_period_and_carry_missing_levels() {
        let mut a = Assembler::new(60_000);
        assert_eq!(a.push("p", 0, &[(LAT, 10.0), (Metric::Backlog, 5.0)]), Ok(None));
        assert_eq!(a.push("p", 30_000, &[(LAT, 20.0)]), Ok(None)); // same period: latest wins
        let w = a.push("p", 60_000, &[(LAT, 30.0)]).unwrap().unwrap();
        assert_eq!((w.ts_ms, w.telemetry.get(LAT), w.telemetry.get(Metric::Backlog)), (0, 20.0, 5.0));
        let w = a.push("p", 180_000, &[]).unwrap().unwrap();
        assert_eq!((w.ts_ms, w.telemetry.get(LAT), w.telemetry.get(Metric::Backlog)), (60_000, 30.0, 5.0));
        assert!(!w.telemetry.is_present(Metric::HeapUsage), "never reported: absent, not 0");
    }

    #[test]
    fn a_count_absent_from_a_period_is_zero_and_a_level_goes_stale() {
        let mut a = Assembler::new(60_000);
        a.push("p", 0, &[(Metric::Errors5xx, 300.0), (Metric::HeapUsage, 0.5)]).unwrap();
        let w = a.push("p", 60_000, &[]).unwrap().unwrap();
        assert_eq!(w.telemetry.get(Metric::Errors5xx), 300.0);
        let w = a.push("p", 120_000, &[]).unwrap().unwrap();
        assert_eq!(w.telemetry.value(Metric::Errors5xx), Some(0.0), "no datapoint for a count: nothing happened");
        assert_eq!(w.telemetry.value(Metric::HeapUsage), Some(0.5), "a level carries over");
        // Reported at period 0: still there in period 5, gone in period 6.
        let mut ws = vec![w];
        for i in 3..=7 {
            ws.extend(a.push("p", i * 60_000, &[]).unwrap());
        }
        let at = |k: i64| ws.iter().find(|w| w.ts_ms == k * 60_000).unwrap();
        assert!(at(5).telemetry.is_present(Metric::HeapUsage), "{STALE_PERIODS} periods: still carried");
        assert!(!at(6).telemetry.is_present(Metric::HeapUsage), "unreported for over {STALE_PERIODS} periods: absent");
        assert_eq!(at(6).telemetry.value(Metric::Errors5xx), Some(0.0));
    }

    #[test]
    fn late_samples_are_refused_and_pipelines_are_separate() {
        let mut a = Assembler::new(1000);
        a.push("p", 5000, &[(LAT, 1.0)]).unwrap();
        a.push("q", 1000, &[(LAT, 1.0)]).unwrap();
        assert!(matches!(a.push("p", 3999, &[(LAT, 1.0)]), Err(Refused::Late { open: 5000, .. })));
        assert_eq!(a.push("p", 5999, &[(LAT, 2.0)]), Ok(None)); // duplicate period is fine
        assert_eq!(a.drain().len(), 2);
    }

    #[test]
    fn body_with_bad_lines_keeps_the_good_ones() {
        let body = b"{\"ts\":0,\"pipeline\":\"p\",\"metrics\":{\"pipeline.latency.p95\":1}}\n\
not json\n\
{\"ts\":1000,\"pipeline\":\"p\",\"metrics\":{\"nope\":1}}\n\
\n\
{\"ts\":1000,\"pipeline\":\"p\",\"metrics\":{\"pipeline.latency.p95\":2}}\n\
{\"ts\":1000,\"pipeline\":\"\",\"metrics\":{}}\n";
        let mut a = Assembler::new(1000);
        let (samples, refused) = parse_body(body);
        let r = assemble(&mut a, &samples, refused);
        assert_eq!(r.accepted, 2);
        assert_eq!(r.windows.len(), 1);
        let lines: Vec<usize> = r.rejected.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, vec![2, 3, 6]);
        assert!(r.rejected[1].1.contains("unknown metric \"nope\""), "{:?}", r.rejected);
    }

    #[test]
    fn a_glue_job_state_change_event_is_a_sample_of_its_job() {
        let text = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/field-cases/glue-job-state-change-failed.json"
        ))
        .expect("../shared/field-cases beside the repository");
        let s = parse_line(text.trim_ascii()).unwrap();
        assert_eq!(s.pipeline, "orders-etl");
        assert_eq!(s.ts, 1_795_404_300_000, "2026-11-23T03:25:00Z");
        let m = &s.metrics.0;
        assert!(m.contains(&(Metric::RunsFailed, 1.0)) && m.contains(&(Metric::RunsFailedOom, 1.0)), "{m:?}");
        let other = br#"{"detail-type": "EC2 Instance State-change Notification", "time": "2026-11-23T03:25:00Z", "detail": {"jobName": "x", "state": "FAILED"}}"#;
        assert!(parse_line(other).unwrap_err().contains("only \"Glue Job State Change\""));
        let bad_state = br#"{"detail-type": "Glue Job State Change", "time": "2026-11-23T03:25:00Z", "detail": {"jobName": "x", "state": "MELTED"}}"#;
        assert!(parse_line(bad_state).unwrap_err().contains("MELTED"));
    }

    #[test]
    fn events_fold_into_the_open_window_of_their_jobs_pipeline() {
        let mut a = Assembler::new(60_000);
        a.map_jobs([("orders-etl".to_string(), "orders".to_string())]);
        a.push("orders", 60_000, &[(LAT, 10.0)]).unwrap();
        // Late (an earlier period) and early (a later one): neither refused nor closing.
        a.push_event("orders-etl", 30_000, &[(Metric::RunsFailed, 1.0)]);
        a.push_event("orders-etl", 200_000, &[(Metric::RunsFailed, 1.0), (Metric::RunsFailedOom, 1.0)]);
        let w = a.push("orders", 120_000, &[(LAT, 11.0)]).unwrap().expect("the metric sample closes the window");
        assert_eq!(w.pipeline, "orders");
        assert_eq!(w.telemetry.value(Metric::RunsFailed), Some(2.0), "two failed runs count 2");
        assert_eq!(w.telemetry.value(Metric::RunsFailedOom), Some(1.0));
        assert_eq!(w.telemetry.get(LAT), 10.0);
        assert!(a.drain().iter().all(|w| w.pipeline == "orders"), "no pipeline named after the job");
    }

    #[test]
    fn a_new_pipeline_beyond_the_cap_is_refused_and_the_others_keep_working() {
        let mut a = Assembler::bounded(1000, Bounds { max_pipelines: 2, idle_ms: 10_000 });
        a.map_jobs([("etl".to_string(), "c".to_string())]);
        a.push("a", 0, &[(LAT, 1.0)]).unwrap();
        a.push("b", 0, &[(LAT, 1.0)]).unwrap();
        let e = a.push("c", 0, &[(LAT, 1.0)]).unwrap_err();
        assert_eq!(e, Refused::PipelineCap { pipeline: "c".into(), cap: 2 });
        assert!(e.to_string().contains("max_pipelines"), "{e}");
        // An event of a job filed under a new pipeline is refused alike.
        assert_eq!(a.admit("etl", true), Err(Refused::PipelineCap { pipeline: "c".into(), cap: 2 }));
        assert_eq!(a.live(), 2);
        // The open ones go on closing windows.
        assert_eq!(a.push("a", 1000, &[(LAT, 2.0)]).unwrap().map(|w| w.ts_ms), Some(0));
        // A body: the capped line is counted apart from the others refused.
        let body = b"{\"ts\":2000,\"pipeline\":\"b\",\"metrics\":{}}\n\
{\"ts\":2000,\"pipeline\":\"d\",\"metrics\":{}}\n\
{\"ts\":0,\"pipeline\":\"a\",\"metrics\":{}}\n";
        let (samples, refused) = parse_body(body);
        let r = assemble(&mut a, &samples, refused);
        assert_eq!((r.accepted, r.capped, r.windows.len()), (1, 1, 1));
        assert_eq!(r.rejected.iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 3], "{:?}", r.rejected);
    }

    #[test]
    fn idle_pipelines_are_evicted_on_the_data_clock_and_kept_ones_stay() {
        let mut a = Assembler::bounded(1000, Bounds { max_pipelines: 2, idle_ms: 10_000 });
        a.push("old", 0, &[(LAT, 1.0)]).unwrap();
        a.push("kept", 0, &[(LAT, 1.0)]).unwrap();
        // Wall time says nothing: a replay far in the past evicts by its own clock.
        let wall = 4_000_000_000_000;
        assert!(a.evict_idle(wall, &|_| false).is_empty(), "the data clock has not moved");
        a.push("kept", 9_500, &[(LAT, 1.0)]).unwrap();
        assert!(a.evict_idle(wall, &|_| false).is_empty(), "9.5 s on the data clock: not idle yet");
        a.push("kept", 11_000, &[(LAT, 1.0)]).unwrap();
        assert_eq!(a.clock(), 11_000);
        assert_eq!(a.evict_idle(wall, &|_| false), vec!["old".to_string()]);
        // Room again for a new name.
        assert_eq!(a.push("new", 11_000, &[(LAT, 1.0)]), Ok(None));
        a.push("new", 30_000, &[(LAT, 1.0)]).unwrap();
        assert!(a.evict_idle(wall, &|n| n == "kept").is_empty(), "kept by the caller");
        assert_eq!(a.evict_idle(wall, &|_| false), vec!["kept".to_string()]);
        // A sample from a clock ahead of the wall clock does not make the
        // others idle, not even by one period: the data clock is read no
        // further than the wall clock.
        let mut a = Assembler::bounded(30_000, Bounds { max_pipelines: 10, idle_ms: 60_000 });
        let now = 1_795_402_800_000;
        a.push("b", now - 30_000, &[(LAT, 1.0)]).unwrap();
        a.push("c", now + 1_000, &[(LAT, 1.0)]).unwrap();
        a.push("ahead", now + 3_600_000, &[(LAT, 1.0)]).unwrap();
        assert!(a.evict_idle(now, &|_| false).is_empty(), "an hour ahead");
        a.push("ahead", now + 86_400_000, &[(LAT, 1.0)]).unwrap();
        assert!(a.evict_idle(now + 20_000, &|_| false).is_empty(), "a day ahead, and 20 s of lag");
        // Wall time moving on does evict the silent ones, and not the one ahead.
        assert_eq!(a.evict_idle(now + 45_000, &|_| false), vec!["b".to_string()]);
        assert_eq!(a.evict_idle(now + 61_000, &|_| false), vec!["c".to_string()]);
        assert_eq!(a.live(), 1);
    }

    #[test]
    fn huge_numbers_are_refused() {
        let e = parse_line(b"{\"ts\":0,\"pipeline\":\"p\",\"metrics\":{\"pipeline.latency.p95\":1e999}}").unwrap_err();
        assert!(!e.is_empty());
    }
}
