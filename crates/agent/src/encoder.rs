//! Telemetry → discrete state (encoder `telemetry-v1`).
//!
//! A state is what an on-call engineer would write on a sticky note: which
//! symptoms show (error classes, resource pressure, a stall, skew), how deep the
//! backlog is, how many workers run, whether ingest is throttled, how many
//! actions this incident has already had and whether a human is on it. The
//! encoder reads telemetry only; the simulator's true fault is never an input.
//! The analysis layer (detector + failure signatures) later replaces the symptom
//! part with a learned signature, behind the same [`StateEncoder`] trait.

use selfheal_core::{Action, ActionMask, EncodeState, EpisodeMemory, Metric, StateId, StateWords, Telemetry};
use serde::{Deserialize, Serialize};

/// Symptoms, one bit each, in this order.
pub const SYMPTOMS: [&str; 9] = [
    "upstream_5xx",
    "timeouts",
    "schema_errors",
    "data_quality_errors",
    "sink_errors",
    "memory",
    "cpu",
    "stalled",
    "skew",
];
const BACKLOG_BUCKETS: u32 = 5;
const ATTEMPT_BUCKETS: u32 = 2;
const BACKLOG_NAMES: [&str; 5] = ["empty", "<=1.5 steps", "<=4.5 steps", "<=15 steps", ">15 steps"];

/// What the encoder must know about the deployment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Worker counts of the allowed worker levels, ascending.
    pub worker_levels: Vec<u32>,
    /// Index of the normal worker level.
    pub base_level: u8,
    /// For `detector-v1`: the detector whose signatures number the states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detector: Option<DetectorRef>,
    /// Workers that run no executor. On Glue's `G.*` worker types each
    /// worker runs one executor except the one that runs the driver, so a
    /// job of `NumberOfWorkers = n` reports
    /// `glue.driver.ExecutorAllocationManager.executors.numberAllExecutors`
    /// = n − 1 ("Monitoring for DPU capacity planning": maximum executors =
    /// workers − 1, <https://docs.aws.amazon.com/glue/latest/dg/monitor-debug-capacity.html>);
    /// the simulator reports the workers themselves (0). The sidecar sets 1
    /// for a Glue actuator.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub driver_workers: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl EncoderConfig {
    /// The worker level (index into `worker_levels`) nearest to the
    /// window's executors plus [`EncoderConfig::driver_workers`]; ties go to
    /// the higher level; the base level when the count is absent.
    pub fn level_of(&self, t: &Telemetry) -> u32 {
        let Some(e) = t.value(Metric::Executors) else { return u32::from(self.base_level) };
        let workers = e + f64::from(self.driver_workers);
        let d = |i: usize| (f64::from(self.worker_levels[i]) - workers).abs();
        let mut best = 0;
        for i in 1..self.worker_levels.len() {
            if d(i) <= d(best) {
                best = i;
            }
        }
        best as u32
    }
}

/// Which detector a `detector-v1` policy was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorRef {
    /// Fingerprint of the detector model file.
    pub fingerprint: String,
    /// Its number of failure signatures.
    pub signatures: u16,
}

/// The actions that can apply: no scaling past the worker levels, no second
/// backpressure while throttled, no second page while a human is on it.
pub fn action_mask(level: u32, levels: u32, throttled: bool, escalated: bool) -> ActionMask {
    let mut mask = ActionMask::ALL;
    if level + 1 >= levels {
        mask = mask.without(Action::ScaleUp);
    }
    if level == 0 {
        mask = mask.without(Action::ScaleDown);
    }
    if throttled {
        mask = mask.without(Action::Backpressure);
    }
    if escalated {
        mask = mask.without(Action::Escalate);
    }
    mask
}

/// The `telemetry-v1` state encoder.
#[derive(Clone, Debug)]
pub struct TelemetryEncoder {
    config: EncoderConfig,
    attempts: u32,
    escalated: bool,
    unhealthy: bool,
}

/// The parts of a state, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateParts {
    /// Symptom bits ([`SYMPTOMS`]).
    pub symptoms: u32,
    /// Backlog bucket.
    pub backlog: u32,
    /// Worker level.
    pub level: u32,
    /// Ingest throttled.
    pub throttled: bool,
    /// Actions already taken in this incident (capped).
    pub attempts: u32,
    /// A human has been paged for this incident.
    pub escalated: bool,
}

impl TelemetryEncoder {
    /// An encoder for a deployment.
    pub fn new(config: EncoderConfig) -> TelemetryEncoder {
        TelemetryEncoder { config, attempts: 0, escalated: false, unhealthy: false }
    }

    /// Its configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    fn levels(&self) -> u32 {
        self.config.worker_levels.len() as u32
    }

    /// The symptom bits of a window.
    pub fn symptoms(t: &Telemetry) -> u32 {
        let arrived = t.get(Metric::RecordsIn).max(1.0);
        let flags = [
            t.get(Metric::Errors5xx) > 0.05 * arrived,
            t.get(Metric::ErrorsTimeout) > 0.02 * arrived,
            t.get(Metric::ErrorsSchema) > 0.0,
            t.get(Metric::ErrorsDataQuality) > 0.0,
            t.get(Metric::ErrorsSink) > 0.0,
            t.get(Metric::ErrorsOom) > 0.0 || t.get(Metric::HeapUsage) > 0.9,
            t.get(Metric::CpuLoad) > 0.9,
            // Nothing read, no error, and a run older than a period: hung, not
            // merely restarted or deferred this step.
            t.get(Metric::RecordsRead) == 0.0 && t.errors() == 0.0 && t.get(Metric::ElapsedTime) > 90_000.0,
            t.get(Metric::Skewness) > 3.0,
        ];
        flags.iter().enumerate().fold(0, |acc, (i, f)| acc | (u32::from(*f) << i))
    }

    /// Backlog depth in steps of arrivals, bucketed.
    pub fn backlog_bucket(t: &Telemetry) -> u32 {
        let steps = t.get(Metric::Backlog) / t.get(Metric::RecordsIn).max(1.0);
        match steps {
            s if s <= 0.0 => 0,
            s if s <= 1.5 => 1,
            s if s <= 4.5 => 2,
            s if s <= 15.0 => 3,
            _ => 4,
        }
    }

    /// The worker level whose count is nearest the executors in the window;
    /// the base level when the window has no executor count (absent is not
    /// "below normal", which would invite a scale-up).
    pub fn level_of(&self, t: &Telemetry) -> u32 {
        self.config.level_of(t)
    }

    /// Pack parts into a state id.
    pub fn pack(&self, p: StateParts) -> StateId {
        let mut id = p.symptoms;
        id = id * BACKLOG_BUCKETS + p.backlog;
        id = id * self.levels() + p.level;
        id = id * 2 + u32::from(p.throttled);
        id = id * ATTEMPT_BUCKETS + p.attempts;
        id * 2 + u32::from(p.escalated)
    }

    /// Unpack a state id.
    pub fn unpack(&self, mut id: StateId) -> StateParts {
        let escalated = id % 2 == 1;
        id /= 2;
        let attempts = id % ATTEMPT_BUCKETS;
        id /= ATTEMPT_BUCKETS;
        let throttled = id % 2 == 1;
        id /= 2;
        let level = id % self.levels();
        id /= self.levels();
        let backlog = id % BACKLOG_BUCKETS;
        StateParts { symptoms: id / BACKLOG_BUCKETS, backlog, level, throttled, attempts, escalated }
    }
}

impl EncodeState for TelemetryEncoder {
    fn id(&self) -> &'static str {
        "telemetry-v1"
    }

    fn num_states(&self) -> usize {
        (1usize << SYMPTOMS.len())
            * BACKLOG_BUCKETS as usize
            * self.levels() as usize
            * 2
            * ATTEMPT_BUCKETS as usize
            * 2
    }

    fn encode(&mut self, t: &Telemetry) -> (StateId, ActionMask) {
        let symptoms = Self::symptoms(t);
        let backlog = Self::backlog_bucket(t);
        let throttled = t.get(Metric::IngestThrottled) > 0.5;
        self.unhealthy = symptoms != 0 || backlog >= 2 || throttled;
        if !self.unhealthy {
            self.attempts = 0;
            self.escalated = false;
        }
        let level = self.level_of(t);
        let parts = StateParts {
            symptoms,
            backlog,
            level,
            throttled,
            attempts: self.attempts.min(ATTEMPT_BUCKETS - 1),
            escalated: self.escalated,
        };
        (self.pack(parts), action_mask(level, self.levels(), throttled, self.escalated))
    }
}

impl EpisodeMemory for TelemetryEncoder {
    fn reset(&mut self) {
        self.attempts = 0;
        self.escalated = false;
        self.unhealthy = false;
    }

    fn record_action(&mut self, a: Action) {
        if self.unhealthy && a != Action::NoOp {
            self.attempts += 1;
        }
        if a == Action::Escalate && self.unhealthy {
            self.escalated = true;
        }
    }
}

impl StateWords for TelemetryEncoder {
    fn describe(&self, s: StateId) -> String {
        let p = self.unpack(s);
        let symptoms: Vec<&str> =
            SYMPTOMS.iter().enumerate().filter(|(i, _)| p.symptoms & (1 << i) != 0).map(|(_, n)| *n).collect();
        format!(
            "symptoms={} backlog={} workers={} throttled={} attempts={}{} escalated={}",
            if symptoms.is_empty() { "none".to_string() } else { symptoms.join("+") },
            BACKLOG_NAMES[p.backlog as usize],
            self.config.worker_levels.get(p.level as usize).copied().unwrap_or(0),
            p.throttled,
            p.attempts,
            if p.attempts + 1 == ATTEMPT_BUCKETS { "+" } else { "" },
            p.escalated,
        )
    }

    // Less history (fewer attempts, no escalation), then a shallower backlog,
    // then the normal worker level: a tabular policy has no other way to
    // generalise, and "do nothing" in an unseen state is how incidents turn into
    // lost records.
    fn fallbacks(&self, s: StateId) -> Vec<StateId> {
        let p = self.unpack(s);
        let mut out = Vec::new();
        let mut q = p;
        let push = |q: StateParts, out: &mut Vec<StateId>| {
            let id = self.pack(q);
            if id != s && !out.contains(&id) {
                out.push(id);
            }
        };
        while q.attempts > 0 {
            q.attempts -= 1;
            push(q, &mut out);
        }
        if q.escalated {
            q.escalated = false;
            push(q, &mut out);
        }
        let mut b = q;
        while b.backlog > 1 {
            b.backlog -= 1;
            push(b, &mut out);
        }
        let base = u32::from(self.config.base_level);
        if q.level != base {
            let mut l = q;
            l.level = base;
            push(l, &mut out);
            while l.backlog > 1 {
                l.backlog -= 1;
                push(l, &mut out);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc() -> TelemetryEncoder {
        TelemetryEncoder::new(EncoderConfig {
            worker_levels: vec![5, 10, 20, 40],
            base_level: 1,
            detector: None,
            driver_workers: 0,
        })
    }

    fn healthy() -> Telemetry {
        let mut t = Telemetry::default();
        t.set(Metric::RecordsIn, 1000.0);
        t.set(Metric::RecordsRead, 1000.0);
        t.set(Metric::RecordsDelivered, 1000.0);
        t.set(Metric::Executors, 10.0);
        t.set(Metric::HeapUsage, 0.5);
        t.set(Metric::CpuLoad, 0.5);
        t.set(Metric::Skewness, 1.2);
        t
    }

    #[test]
    fn pack_round_trips_every_part() {
        let e = enc();
        let p =
            StateParts { symptoms: 0b1_0010_0001, backlog: 3, level: 2, throttled: true, attempts: 1, escalated: true };
        let id = e.pack(p);
        assert!((id as usize) < e.num_states());
        assert_eq!(e.unpack(id), p);
    }

    #[test]
    fn healthy_window_has_no_symptoms_and_masks_nothing_useful() {
        let mut e = enc();
        let (s, mask) = e.encode(&healthy());
        assert_eq!(e.unpack(s).symptoms, 0);
        assert_eq!(e.unpack(s).level, 1);
        assert_eq!(mask, ActionMask::ALL);
    }

    #[test]
    fn attempts_count_within_an_incident_and_reset_after() {
        let mut e = enc();
        let mut sick = healthy();
        sick.set(Metric::ErrorsSchema, 500.0);
        e.encode(&sick);
        e.record_action(Action::RetryWithBackoff);
        e.record_action(Action::Escalate);
        let (s, mask) = e.encode(&sick);
        assert_eq!(e.unpack(s).attempts, 1, "capped at the last bucket");
        assert!(e.unpack(s).escalated && !mask.allows(Action::Escalate));
        let (s, _) = e.encode(&healthy());
        assert_eq!((e.unpack(s).attempts, e.unpack(s).escalated), (0, false));
    }

    #[test]
    fn a_glue_jobs_executors_read_as_its_workers_less_the_driver() {
        let glue = EncoderConfig { worker_levels: vec![2, 4, 8, 16], base_level: 1, detector: None, driver_workers: 1 };
        let at = |cfg: &EncoderConfig, executors: f64| {
            let mut t = Telemetry::default();
            t.set(Metric::Executors, executors);
            cfg.level_of(&t)
        };
        // 4 G.1X workers: a driver and 3 executors, the base level.
        assert_eq!(at(&glue, 3.0), 1);
        assert_eq!(at(&glue, 7.0), 2);
        assert_eq!(at(&glue, 1.0), 0);
        assert_eq!(glue.level_of(&Telemetry::default()), 1, "absent: the base level, not below it");
        // Counted as workers (the simulator), 3 sits between 2 and 4: the higher.
        let sim = EncoderConfig { driver_workers: 0, ..glue };
        assert_eq!(at(&sim, 3.0), 1);
        assert_eq!(at(&sim, 2.0), 0);
    }

    #[test]
    fn fallbacks_drop_history_then_backlog_then_workers() {
        let e = enc();
        let p = StateParts { symptoms: 0b100, backlog: 3, level: 3, throttled: false, attempts: 1, escalated: true };
        let f: Vec<StateParts> = e.fallbacks(e.pack(p)).into_iter().map(|s| e.unpack(s)).collect();
        assert_eq!(f[0], StateParts { attempts: 0, ..p });
        assert_eq!(f[1], StateParts { attempts: 0, escalated: false, ..p });
        assert!(f.iter().all(|q| q.symptoms == p.symptoms && q.throttled == p.throttled));
        assert_eq!(f.last().unwrap().level, 1);
    }

    #[test]
    fn scale_limits_are_masked() {
        let mut e = enc();
        let mut t = healthy();
        t.set(Metric::Executors, 40.0);
        assert!(!e.encode(&t).1.allows(Action::ScaleUp));
        t.set(Metric::Executors, 5.0);
        assert!(!e.encode(&t).1.allows(Action::ScaleDown));
    }
}
