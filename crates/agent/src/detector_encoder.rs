//! Detector output → discrete state (encoders `detector-v1` and `detector-v2`).
//!
//! The analysis layer replaces hand-written symptom rules: the state is the
//! failure signature the detector assigns (0 when the window is not anomalous),
//! a latency bucket, an error bucket, the worker level (the resource the agent
//! controls), whether ingest is throttled, and the incident's history (actions
//! already taken, whether a human was paged).
//!
//! `detector-v2` adds the incident's **age** in three buckets (1–2, 3–9 and 10
//! or more unhealthy windows). Without it a state cannot tell "just started"
//! from "nothing has helped for an hour", so waiting, which is right in the
//! first windows of a transient fault, was learned as right forever: the
//! standard remedy is to put the elapsed time into the state (a partially
//! observed problem made closer to Markov by the history that matters). The encoder holds the detector
//! behind the core `Detector` trait, so the agent still knows nothing of
//! isolation forests or k-means.

use crate::encoder::{action_mask, EncoderConfig};
use selfheal_core::{
    Action, ActionMask, Detection, Detector, EncodeState, EpisodeMemory, Metric, StateId, StateWords, Telemetry,
};
use std::sync::Arc;

const LATENCY_BUCKETS: u32 = 4;
const LATENCY_NAMES: [&str; 4] = ["<=135s", "<=300s", "<=900s", ">900s"];
const ERROR_BUCKETS: u32 = 3;
const ERROR_NAMES: [&str; 3] = ["none", "<5%", ">=5%"];
const AGE_BUCKETS: u32 = 3;
const AGE_NAMES: [&str; 3] = ["<=2", "3-9", ">=10"];

/// Age bucket of an incident `age` windows old (0 = healthy, bucket 0).
pub fn age_bucket(age: u32) -> u32 {
    match age {
        0..=2 => 0,
        3..=9 => 1,
        _ => 2,
    }
}

/// The parts of a `detector-v1` state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DetectorState {
    /// Failure signature, 0 = not anomalous.
    pub signature: u32,
    /// Latency bucket.
    pub latency: u32,
    /// Error bucket.
    pub errors: u32,
    /// Worker level.
    pub level: u32,
    /// CPU saturated (> 0.9): the resource bucket beside the worker level.
    pub cpu_hot: bool,
    /// Ingest throttled.
    pub throttled: bool,
    /// An action was already taken in this incident.
    pub attempted: bool,
    /// A human was paged for this incident.
    pub escalated: bool,
    /// Incident age bucket ([`age_bucket`]); always 0 in `detector-v1`.
    pub age: u32,
}

/// The `detector-v1` state encoder.
#[derive(Clone)]
pub struct DetectorEncoder {
    config: EncoderConfig,
    detector: Arc<dyn Detector + Send + Sync>,
    signatures: u32,
    attempted: bool,
    escalated: bool,
    unhealthy: bool,
    age: u32,
    /// Age buckets in the state (`detector-v2`) or not (`detector-v1`).
    with_age: bool,
    last: Option<Detection>,
}

impl std::fmt::Debug for DetectorEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorEncoder").field("config", &self.config).field("detector", &self.detector.id()).finish()
    }
}

impl DetectorEncoder {
    /// A `detector-v1` encoder over `detector`'s output.
    pub fn new(config: EncoderConfig, detector: Arc<dyn Detector + Send + Sync>) -> DetectorEncoder {
        let signatures = u32::from(detector.signatures());
        DetectorEncoder {
            config,
            detector,
            signatures,
            attempted: false,
            escalated: false,
            unhealthy: false,
            age: 0,
            with_age: false,
            last: None,
        }
    }

    /// A `detector-v2` encoder: `detector-v1` with the incident's age bucket.
    pub fn with_age(config: EncoderConfig, detector: Arc<dyn Detector + Send + Sync>) -> DetectorEncoder {
        DetectorEncoder { with_age: true, ..DetectorEncoder::new(config, detector) }
    }

    fn age_buckets(&self) -> u32 {
        if self.with_age {
            AGE_BUCKETS
        } else {
            1
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    fn levels(&self) -> u32 {
        self.config.worker_levels.len() as u32
    }

    /// Pack parts into a state id.
    pub fn pack(&self, p: DetectorState) -> StateId {
        let mut id = p.signature;
        id = id * LATENCY_BUCKETS + p.latency;
        id = id * ERROR_BUCKETS + p.errors;
        id = id * self.levels() + p.level;
        id = id * 2 + u32::from(p.cpu_hot);
        id = id * 2 + u32::from(p.throttled);
        id = id * 2 + u32::from(p.attempted);
        id = id * 2 + u32::from(p.escalated);
        id * self.age_buckets() + p.age.min(self.age_buckets() - 1)
    }

    /// Unpack a state id.
    pub fn unpack(&self, mut id: StateId) -> DetectorState {
        let age = id % self.age_buckets();
        id /= self.age_buckets();
        let escalated = id % 2 == 1;
        id /= 2;
        let attempted = id % 2 == 1;
        id /= 2;
        let throttled = id % 2 == 1;
        id /= 2;
        let cpu_hot = id % 2 == 1;
        id /= 2;
        let level = id % self.levels();
        id /= self.levels();
        let errors = id % ERROR_BUCKETS;
        id /= ERROR_BUCKETS;
        let latency = id % LATENCY_BUCKETS;
        DetectorState {
            signature: id / LATENCY_BUCKETS,
            latency,
            errors,
            level,
            cpu_hot,
            throttled,
            attempted,
            escalated,
            age,
        }
    }

    /// The nearest worker level; the base level when the count is absent.
    fn level_of(&self, t: &Telemetry) -> u32 {
        self.config.level_of(t)
    }
}

/// Latency bucket of a window.
pub fn latency_bucket(t: &Telemetry) -> u32 {
    match t.get(Metric::LatencyP95) {
        l if l <= 135.0 => 0,
        l if l <= 300.0 => 1,
        l if l <= 900.0 => 2,
        _ => 3,
    }
}

/// Error bucket of a window.
pub fn error_bucket(t: &Telemetry) -> u32 {
    match t.error_ratio() {
        r if r < 0.005 => 0,
        r if r < 0.05 => 1,
        _ => 2,
    }
}

impl EncodeState for DetectorEncoder {
    fn id(&self) -> &'static str {
        if self.with_age {
            "detector-v2"
        } else {
            "detector-v1"
        }
    }

    fn num_states(&self) -> usize {
        (self.signatures as usize + 1)
            * (LATENCY_BUCKETS * ERROR_BUCKETS * self.levels() * 16 * self.age_buckets()) as usize
    }

    fn encode(&mut self, t: &Telemetry) -> (StateId, ActionMask) {
        let d = self.detector.detect(t);
        self.last = Some(d);
        let latency = latency_bucket(t);
        let errors = error_bucket(t);
        let throttled = t.get(Metric::IngestThrottled) > 0.5;
        let cpu_hot = t.get(Metric::CpuLoad) > 0.9;
        self.unhealthy = crate::supervise::window_unhealthy(t, d.anomalous);
        if self.unhealthy {
            self.age = self.age.saturating_add(1);
        } else {
            self.attempted = false;
            self.escalated = false;
            self.age = 0;
        }
        let level = self.level_of(t);
        let state = DetectorState {
            signature: u32::from(d.signature).min(self.signatures),
            latency,
            errors,
            level,
            cpu_hot,
            throttled,
            attempted: self.attempted,
            escalated: self.escalated,
            age: if self.with_age { age_bucket(self.age) } else { 0 },
        };
        (self.pack(state), action_mask(level, self.levels(), throttled, self.escalated))
    }

    fn last_detection(&self) -> Option<Detection> {
        self.last
    }
}

impl EpisodeMemory for DetectorEncoder {
    fn reset(&mut self) {
        self.attempted = false;
        self.escalated = false;
        self.unhealthy = false;
        self.age = 0;
        self.last = None;
    }

    fn record_action(&mut self, a: Action) {
        if self.unhealthy && a != Action::NoOp {
            self.attempted = true;
        }
        if a == Action::Escalate && self.unhealthy {
            self.escalated = true;
        }
    }
}

impl StateWords for DetectorEncoder {
    fn describe(&self, s: StateId) -> String {
        let p = self.unpack(s);
        let age = if self.with_age { format!(" age={}", AGE_NAMES[p.age as usize]) } else { String::new() };
        format!(
            "signature={} latency={} errors={} workers={} cpu_hot={} throttled={} attempted={} escalated={}{age}",
            if p.signature == 0 { "normal".to_string() } else { p.signature.to_string() },
            LATENCY_NAMES[p.latency as usize],
            ERROR_NAMES[p.errors as usize],
            self.config.worker_levels.get(p.level as usize).copied().unwrap_or(0),
            p.cpu_hot,
            p.throttled,
            p.attempted,
            p.escalated,
        )
    }

    fn fallbacks(&self, s: StateId) -> Vec<StateId> {
        let p = self.unpack(s);
        let mut out = Vec::new();
        let mut push = |q: DetectorState| {
            let id = self.pack(q);
            if id != s && !out.contains(&id) {
                out.push(id);
            }
        };
        let mut q = p;
        if q.attempted {
            q.attempted = false;
            push(q);
        }
        if q.escalated {
            q.escalated = false;
            push(q);
        }
        while q.age > 0 {
            q.age -= 1;
            push(q);
        }
        let mut l = q;
        while l.latency > 0 {
            l.latency -= 1;
            push(l);
        }
        let base = u32::from(self.config.base_level);
        if q.level != base {
            let mut b = q;
            b.level = base;
            push(b);
            while b.latency > 0 {
                b.latency -= 1;
                push(b);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_core::Detection;

    struct Fixed(u16);
    impl Detector for Fixed {
        fn id(&self) -> &str {
            "fixed"
        }
        fn signatures(&self) -> u16 {
            5
        }
        fn detect(&self, _t: &Telemetry) -> Detection {
            Detection { score: 0.9, anomalous: self.0 > 0, signature: self.0 }
        }
    }

    fn enc(sig: u16) -> DetectorEncoder {
        DetectorEncoder::new(
            EncoderConfig { worker_levels: vec![5, 10, 20, 40], base_level: 1, detector: None, driver_workers: 0 },
            Arc::new(Fixed(sig)),
        )
    }

    #[test]
    fn pack_round_trips_and_stays_in_bounds() {
        let e = enc(3);
        let p = DetectorState {
            signature: 5,
            latency: 3,
            errors: 2,
            level: 3,
            cpu_hot: true,
            throttled: true,
            attempted: true,
            escalated: true,
            age: 0,
        };
        let id = e.pack(p);
        assert_eq!(e.unpack(id), p);
        assert_eq!(id as usize, e.num_states() - 1, "the last state is the largest id");
        let v2 = DetectorEncoder::with_age(e.config().clone(), Arc::new(Fixed(3)));
        let p2 = DetectorState { age: 2, ..p };
        assert_eq!(v2.unpack(v2.pack(p2)), p2);
        assert_eq!(v2.pack(p2) as usize, v2.num_states() - 1);
        assert_eq!(v2.num_states(), 3 * e.num_states());
    }

    #[test]
    fn v2_counts_the_incidents_age_and_falls_back_to_younger_states() {
        let mut e = DetectorEncoder::with_age(enc(3).config().clone(), Arc::new(Fixed(3)));
        assert_eq!(e.id(), "detector-v2");
        let mut t = Telemetry::default();
        t.set(Metric::Executors, 10.0);
        let ages: Vec<u32> = (0..12)
            .map(|_| {
                let s = e.encode(&t).0;
                e.unpack(s).age
            })
            .collect();
        assert_eq!(ages, [0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2]);
        let (s, _) = e.encode(&t);
        assert!(e.describe(s).ends_with("age=>=10"), "{}", e.describe(s));
        let f = e.fallbacks(s);
        assert_eq!(e.unpack(f[0]).age, 1);
        assert_eq!(e.unpack(f[1]).age, 0);
        e.reset();
        let s = e.encode(&t).0;
        assert_eq!(e.unpack(s).age, 0);
    }

    #[test]
    fn state_carries_the_signature_and_history() {
        let mut e = enc(3);
        let mut t = Telemetry::default();
        t.set(Metric::Executors, 10.0);
        t.set(Metric::LatencyP95, 400.0);
        assert_eq!(e.last_detection(), None);
        let (s, _) = e.encode(&t);
        assert_eq!(e.unpack(s).signature, 3);
        assert_eq!(e.last_detection(), Some(Detection { score: 0.9, anomalous: true, signature: 3 }));
        assert_eq!(e.unpack(s).latency, 2);
        e.record_action(Action::Restart);
        let (s, _) = e.encode(&t);
        assert!(e.unpack(s).attempted);
        assert!(e.describe(s).contains("signature=3"));
        let f = e.fallbacks(s);
        assert_eq!(e.unpack(f[0]), DetectorState { attempted: false, ..e.unpack(s) });
        assert_eq!(e.unpack(s).age, 0, "detector-v1 has no age");
    }
}
