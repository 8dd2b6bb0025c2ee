//! Detector output → discrete state (encoder `detector-v1`).
//!
//! The analysis layer replaces hand-written symptom rules: the state is the
//! failure signature the detector assigns (0 when the window is not anomalous),
//! a latency bucket, an error bucket, the worker level (the resource the agent
//! controls), whether ingest is throttled, and the incident's history (actions
//! already taken, whether a human was paged). The encoder holds the detector
//! behind the core `Detector` trait, so the agent still knows nothing of
//! isolation forests or k-means.

use crate::encoder::{action_mask, EncoderConfig};
use selfheal_core::{Action, ActionMask, Detection, Detector, Metric, StateEncoder, StateId, Telemetry};
use std::sync::Arc;

const LATENCY_BUCKETS: u32 = 4;
const LATENCY_NAMES: [&str; 4] = ["<=135s", "<=300s", "<=900s", ">900s"];
const ERROR_BUCKETS: u32 = 3;
const ERROR_NAMES: [&str; 3] = ["none", "<5%", ">=5%"];

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
    last: Option<Detection>,
}

impl std::fmt::Debug for DetectorEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorEncoder").field("config", &self.config).field("detector", &self.detector.id()).finish()
    }
}

impl DetectorEncoder {
    /// An encoder over `detector`'s output.
    pub fn new(config: EncoderConfig, detector: Arc<dyn Detector + Send + Sync>) -> DetectorEncoder {
        let signatures = u32::from(detector.signatures());
        DetectorEncoder {
            config,
            detector,
            signatures,
            attempted: false,
            escalated: false,
            unhealthy: false,
            last: None,
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
        id * 2 + u32::from(p.escalated)
    }

    /// Unpack a state id.
    pub fn unpack(&self, mut id: StateId) -> DetectorState {
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
        }
    }

    fn level_of(&self, t: &Telemetry) -> u32 {
        let e = t.get(Metric::Executors);
        let d = |w: &u32| (f64::from(*w) - e).abs();
        (0..self.config.worker_levels.len())
            .min_by(|a, b| d(&self.config.worker_levels[*a]).total_cmp(&d(&self.config.worker_levels[*b])))
            .unwrap_or(0) as u32
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

impl StateEncoder for DetectorEncoder {
    fn id(&self) -> &'static str {
        "detector-v1"
    }

    fn num_states(&self) -> usize {
        (self.signatures as usize + 1) * (LATENCY_BUCKETS * ERROR_BUCKETS * self.levels() * 16) as usize
    }

    fn reset(&mut self) {
        self.attempted = false;
        self.escalated = false;
        self.unhealthy = false;
        self.last = None;
    }

    fn encode(&mut self, t: &Telemetry) -> (StateId, ActionMask) {
        let d = self.detector.detect(t);
        self.last = Some(d);
        let latency = latency_bucket(t);
        let errors = error_bucket(t);
        let throttled = t.get(Metric::IngestThrottled) > 0.5;
        let cpu_hot = t.get(Metric::CpuLoad) > 0.9;
        self.unhealthy = d.anomalous || latency > 0 || errors > 1 || throttled || cpu_hot;
        if !self.unhealthy {
            self.attempted = false;
            self.escalated = false;
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
        };
        (self.pack(state), action_mask(level, self.levels(), throttled, self.escalated))
    }

    fn record_action(&mut self, a: Action) {
        if self.unhealthy && a != Action::NoOp {
            self.attempted = true;
        }
        if a == Action::Escalate && self.unhealthy {
            self.escalated = true;
        }
    }

    fn describe(&self, s: StateId) -> String {
        let p = self.unpack(s);
        format!(
            "signature={} latency={} errors={} workers={} cpu_hot={} throttled={} attempted={} escalated={}",
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

    fn last_detection(&self) -> Option<Detection> {
        self.last
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
            EncoderConfig { worker_levels: vec![5, 10, 20, 40], base_level: 1, detector: None },
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
        };
        let id = e.pack(p);
        assert_eq!(e.unpack(id), p);
        assert_eq!(id as usize, e.num_states() - 1, "the last state is the largest id");
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
    }
}
