//! Calibration of the rule-based baseline: a grid search of its thresholds on
//! training seeds (never the evaluation seeds), keeping the combination with
//! the best mean return. The result is what `evaluate` calls `rules`.
//!
//! It lives beside the episode loop because it is one: every candidate runs
//! the same episodes through [`run_episode`], in parallel over the
//! candidates, each worker with its own environment and encoder.

use crate::{run_episode, Fixed};
use selfheal_agent::{RuleThresholds, RulesPolicy};
use selfheal_core::{Environment, RewardFn, Slo, StateEncoder};

/// The grid searched; `None` switches a rule off. `base_workers` is the
/// pipeline's default worker count (the level scale-ups start from).
pub fn rule_grid(base_workers: f64) -> Vec<RuleThresholds> {
    let mut out = Vec::new();
    for retry in [Some(0.05), Some(0.2), Some(0.5), Some(0.9), None] {
        for cpu in [Some(0.8), Some(0.9), None] {
            for heap in [Some(0.85), Some(0.92), None] {
                for stall in [Some(60_000.0), Some(120_000.0), Some(240_000.0), None] {
                    for backlog in [Some(1.0), Some(2.0), Some(4.0), Some(8.0), None] {
                        for esc in [Some(1), Some(2), Some(3), Some(5), Some(8), None] {
                            out.push(RuleThresholds {
                                retry_error_ratio: retry,
                                scale_up_cpu: cpu,
                                scale_up_heap: heap,
                                restart_stalled_ms: stall,
                                backpressure_backlog_steps: backlog,
                                escalate_after_steps: esc,
                                base_workers,
                            });
                        }
                    }
                }
            }
        }
    }
    out
}

/// The winner of a calibration.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Calibration {
    /// Index of the best candidate.
    pub index: usize,
    /// Its thresholds.
    pub best: RuleThresholds,
    /// Its mean return over the seeds (NEG_INFINITY without candidates or seeds).
    pub mean_return: f64,
}

/// Score every candidate by its mean return over `seeds` and return the best
/// (ties go to the earlier, more eager candidate), or `None` without
/// candidates. `make` builds one worker's environment and encoder; `threads`
/// workers share the candidates; `progress` is called once per candidate.
pub fn calibrate_rules<E, S, R>(
    candidates: &[RuleThresholds],
    seeds: &[u64],
    make: &(dyn Fn() -> (E, S) + Sync),
    reward: &R,
    threads: usize,
    progress: &(dyn Fn() + Sync),
) -> Option<Calibration>
where
    E: Environment,
    S: StateEncoder,
    R: RewardFn + Sync,
{
    let score = |th: &RuleThresholds| {
        let (mut env, mut enc) = make();
        let mut ctl = Fixed(RulesPolicy::new(*th, Slo::default()));
        let total: f64 = seeds.iter().map(|s| run_episode(&mut env, &mut ctl, &mut enc, reward, *s, |_| {}).ret).sum();
        progress();
        total / seeds.len() as f64
    };
    let score = &score;
    let chunk = candidates.len().div_ceil(threads.max(1)).max(1);
    let scores: Vec<f64> = std::thread::scope(|sc| {
        let handles: Vec<_> =
            candidates.chunks(chunk).map(|part| sc.spawn(move || part.iter().map(score).collect::<Vec<_>>())).collect();
        // A worker's panic is re-raised here, as if it had happened on this thread.
        #[allow(clippy::expect_used)]
        let all = handles.into_iter().flat_map(|h| h.join().expect("calibration thread")).collect();
        all
    });
    let (index, mean_return) =
        scores.iter().enumerate().fold((0, f64::NEG_INFINITY), |acc, (i, s)| if *s > acc.1 { (i, *s) } else { acc });
    candidates.get(index).map(|best| Calibration { index, best: *best, mean_return })
}
