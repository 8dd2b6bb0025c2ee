//! From flows of records to CloudWatch-style telemetry, with measurement noise.
//!
//! Each fault leaves a signature: an error class (5xx, timeouts, schema
//! mismatches, data-quality rejects, sink failures), a resource symptom (heap,
//! CPU, skew) or a stall (nothing read while the run's elapsed time grows).
//! Noise is bounded and drawn in a fixed amount per step, so two policies run on
//! the same seed see the same noise, and the SLO verdict (which the reward reads)
//! never flips on noise: latency moves in 30 s steps and its noise is ±4 %.

use crate::model::{poison_errors, sink_errors, slot_kind, timeout_errors, Flows, Model, State};
use rand::Rng;
use selfheal_core::{FaultKind, Metric, Telemetry};

/// Uniform draws consumed per rendered step (fixed, for common random numbers).
pub const DRAWS: usize = 12;

/// Round a non-negative count. Same result as `f64::round` for x ≥ 0, but an
/// integer conversion instead of an out-of-line libm call on baseline x86-64
/// (15 % of a simulator step before this).
#[inline]
fn round_count(x: f64) -> f64 {
    debug_assert!(x >= 0.0);
    (x + 0.5) as u64 as f64
}

#[inline]
fn jitter(u: f64, rel: f64) -> f64 {
    1.0 + rel * (2.0 * u - 1.0)
}

/// Render one step's telemetry. `stuck_steps` is how long the current run has
/// hung (0 when not stuck); `u` are [`DRAWS`] uniforms in [0, 1).
pub fn render(model: &Model, s: &State, f: &Flows, stuck_steps: u32, u: &[f64; DRAWS]) -> Telemetry {
    let unit = f64::from(model.unit_records);
    let cap = f64::from(model.capacity[usize::from(s.level)]);
    let util = if cap > 0.0 { f64::from(f.read) / cap } else { 0.0 };
    let mut t = Telemetry::default();

    let (mut failed_tasks, mut job_errors, mut oom) = (0.0, 0.0, 0.0);
    let (mut e5xx, mut etimeout, mut eschema, mut edq, mut esink) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut heap = 0.40 + 0.15 * util;
    let mut cpu = 0.20 + 0.45 * util;
    let mut skew = 1.2;
    for &code in &s.slots {
        match slot_kind(code) {
            Some(FaultKind::Upstream5xx) => {
                e5xx += unit * f64::from(model.arrivals) * 0.5;
                failed_tasks += 2.0;
                job_errors += 1.0;
            }
            Some(FaultKind::NetworkTimeout) => {
                etimeout += timeout_errors(f.delivered, unit);
                failed_tasks += 1.0;
                job_errors += 1.0;
            }
            Some(FaultKind::SchemaDrift) => {
                eschema += unit * f64::from(f.schema_rejected.max(1));
                failed_tasks += 4.0;
                job_errors += 1.0;
            }
            Some(FaultKind::ResourceContention) => cpu = 0.96,
            Some(FaultKind::MemoryPressure) => {
                heap = 0.95;
                failed_tasks += 20.0;
                job_errors += 3.0;
                oom = 3.0;
            }
            Some(FaultKind::StuckJob) => cpu = cpu.min(0.04),
            Some(FaultKind::PoisonRecords) => {
                edq += poison_errors(unit);
                failed_tasks += 8.0;
                job_errors += 1.0;
            }
            Some(FaultKind::DownstreamOutage) => {
                esink += sink_errors(f.sink_attempted, unit);
                job_errors += 1.0;
            }
            Some(FaultKind::Novel) => {
                skew = 6.0;
                cpu = cpu.min(0.30);
            }
            None => {}
        }
    }
    // Background noise: a healthy pipeline sees the odd failed request.
    if f.delivered > 0 {
        e5xx += (u[0] * unit * 0.004).floor();
    }

    t.set(Metric::FailedTasks, round_count(failed_tasks * jitter(u[1], 0.3)));
    t.set(Metric::HeapUsage, (heap + 0.03 * (2.0 * u[2] - 1.0)).clamp(0.0, 1.0));
    t.set(Metric::CpuLoad, (cpu + 0.04 * (2.0 * u[3] - 1.0)).clamp(0.0, 1.0));
    let step_ms = 60_000.0;
    // A hung run keeps counting; every other run finishes within the period.
    let elapsed = if stuck_steps > 0 { f64::from(stuck_steps + 1) * step_ms } else { 45_000.0 * jitter(u[4], 0.1) };
    t.set(Metric::ElapsedTime, round_count(elapsed));
    t.set(Metric::RecordsRead, f64::from(f.read) * unit);
    t.set(Metric::Executors, f64::from(model.workers[usize::from(s.level)]));
    t.set(Metric::Skewness, skew * jitter(u[5], 0.15));
    t.set(Metric::ErrorsAll, job_errors);
    t.set(Metric::ErrorsOom, oom);
    t.set(Metric::LatencyP95, f.latency_s * jitter(u[6], 0.04));
    t.set(Metric::Errors5xx, round_count(e5xx * jitter(u[7], 0.2)));
    t.set(Metric::ErrorsTimeout, round_count(etimeout * jitter(u[8], 0.2)));
    t.set(Metric::ErrorsSchema, round_count(eschema * jitter(u[9], 0.2)));
    t.set(Metric::ErrorsDataQuality, round_count(edq * jitter(u[10], 0.2)));
    t.set(Metric::ErrorsSink, round_count(esink * jitter(u[11], 0.2)));
    t.set(Metric::RecordsIn, f64::from(f.arrived) * unit);
    t.set(Metric::RecordsDelivered, f64::from(f.delivered) * unit);
    t.set(Metric::RecordsDeadLettered, f64::from(f.dead_lettered) * unit);
    t.set(Metric::RecordsLost, f64::from(f.lost) * unit);
    t.set(Metric::Backlog, f64::from(f.backlog) * unit);
    t.set(Metric::IngestThrottled, if s.throttled() { 1.0 } else { 0.0 });
    t
}

/// Uniforms in [0, 1) from any RNG, [`DRAWS`] at a time.
#[inline]
pub fn draws(rng: &mut impl Rng) -> [f64; DRAWS] {
    let mut u = [0.0; DRAWS];
    for x in &mut u {
        *x = rng.gen::<f64>();
    }
    u
}
