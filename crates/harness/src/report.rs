//! The side-by-side comparison: every policy on the same seeds, with confidence
//! intervals, and the learned policy's return as a share of the oracle's.
//!
//! Definitions (also in the README):
//! - `pct_of_oracle` = 100 × (R − R_noop) / (R_oracle − R_noop), R the mean return
//!   over the same seeds: no-op scores 0 and the oracle 100, whatever the offset
//!   of the reward.
//! - `mttr_steps`: mean over incidents of the steps from onset until the pipeline
//!   is healthy again (no fault, SLO met); an incident open at the end counts
//!   with its time up to the end and is also counted in `unresolved`.
//! - `*_ci95`: 95 % percentile bootstrap over seeds (2,000 resamples, fixed seed),
//!   resampling whole episodes so incidents of one episode stay together.

use crate::episode::EpisodeStats;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::stats::percentile_interval_95;
use selfheal_core::FaultKind;
pub use selfheal_schema::eval::{Comparison, FaultLine, PolicyReport};

fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

const RESAMPLES: usize = 2000;

/// Summarise one policy's episodes (one per seed). `worker_step_usd` prices a
/// worker for one step. `pct_of_oracle` is filled in by [`Comparison::new`].
pub fn aggregate(name: &str, episodes: &[EpisodeStats], worker_step_usd: f64) -> PolicyReport {
    let n = episodes.len();
    let returns: Vec<f64> = episodes.iter().map(|e| e.ret).collect();
    let mttr_of = |idx: &mut dyn Iterator<Item = usize>| {
        let (mut sum, mut count) = (0.0, 0usize);
        for i in idx {
            sum += episodes[i].incident_steps.iter().map(|x| f64::from(*x)).sum::<f64>();
            count += episodes[i].incident_steps.len();
        }
        if count == 0 {
            f64::NAN
        } else {
            sum / count as f64
        }
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(0xB007_5742);
    let mut boot_ret = Vec::with_capacity(RESAMPLES);
    let mut boot_mttr = Vec::with_capacity(RESAMPLES);
    let (mut boot_slo, mut boot_cost, mut boot_lost) =
        (Vec::with_capacity(RESAMPLES), Vec::with_capacity(RESAMPLES), Vec::with_capacity(RESAMPLES));
    if n > 0 {
        for _ in 0..RESAMPLES {
            let idx: Vec<usize> = (0..n).map(|_| rng.gen_range(0..n)).collect();
            boot_ret.push(mean(&idx.iter().map(|i| returns[*i]).collect::<Vec<_>>()));
            boot_mttr.push(mttr_of(&mut idx.iter().copied()));
            let (mut slo, mut steps, mut workers, mut lost) = (0u64, 0u64, 0u64, 0u64);
            for &i in &idx {
                let e = &episodes[i];
                slo += u64::from(e.slo_steps);
                steps += u64::from(e.steps);
                workers += e.worker_steps;
                lost += e.ledger.lost;
            }
            boot_slo.push(slo as f64 / steps.max(1) as f64);
            boot_cost.push(workers as f64 * worker_step_usd / n as f64);
            boot_lost.push(lost as f64);
        }
    }
    let incidents: usize = episodes.iter().map(|e| e.incident_steps.len()).sum();
    let steps: u64 = episodes.iter().map(|e| u64::from(e.steps)).sum();
    PolicyReport {
        name: name.to_string(),
        mean_return: mean(&returns),
        return_ci95: percentile_interval_95(boot_ret),
        pct_of_oracle: f64::NAN,
        mttr_steps: mttr_of(&mut (0..n)),
        mttr_ci95: percentile_interval_95(boot_mttr),
        unresolved: episodes.iter().map(|e| u64::from(e.unresolved)).sum(),
        slo_attainment: episodes.iter().map(|e| u64::from(e.slo_steps)).sum::<u64>() as f64 / steps.max(1) as f64,
        slo_ci95: Some(percentile_interval_95(boot_slo)),
        auto_resolved: if incidents == 0 {
            f64::NAN
        } else {
            episodes.iter().map(|e| f64::from(e.auto_resolved)).sum::<f64>() / incidents as f64
        },
        escalations: episodes.iter().map(|e| u64::from(e.escalations)).sum(),
        records_lost: episodes.iter().map(|e| e.ledger.lost).sum(),
        records_lost_ci95: Some(percentile_interval_95(boot_lost)),
        dead_lettered: episodes.iter().map(|e| e.ledger.dead_lettered).sum(),
        cost: episodes.iter().map(|e| e.worker_steps as f64 * worker_step_usd).sum::<f64>() / n.max(1) as f64,
        cost_ci95: Some(percentile_interval_95(boot_cost)),
        false_actions: episodes.iter().map(|e| u64::from(e.false_actions)).sum(),
        episodes_with_loss: Some(episodes.iter().filter(|e| e.ledger.lost > 0).count() as u64),
        worst_return: Some(returns.iter().copied().fold(f64::NAN, f64::min)),
        incident_p95_steps: Some(percentile_nearest_rank(
            episodes.iter().flat_map(|e| e.incident_steps.iter().map(|x| f64::from(*x))).collect(),
            0.95,
        )),
        longest_idle_streak: Some(u64::from(episodes.iter().map(|e| e.longest_idle_streak).max().unwrap_or(0))),
        watchdog_firings: Some(episodes.iter().map(|e| u64::from(e.watchdog_firings)).sum()),
        by_fault: by_fault(episodes),
    }
}

/// The `q` quantile by the nearest-rank method (NaN for no data).
fn percentile_nearest_rank(mut xs: Vec<f64>, q: f64) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    xs.sort_by(f64::total_cmp);
    let rank = (q * xs.len() as f64).ceil().max(1.0) as usize;
    xs[rank - 1]
}

fn by_fault(episodes: &[EpisodeStats]) -> Vec<FaultLine> {
    FaultKind::ALL
        .iter()
        .filter_map(|k| {
            let (mut n, mut sum, mut open) = (0u64, 0.0, 0u64);
            for e in episodes {
                for (kind, steps) in e.incident_kinds.iter().zip(&e.incident_steps) {
                    if kind == k {
                        n += 1;
                        sum += f64::from(*steps);
                    }
                }
                open += e.open_kinds.iter().filter(|x| *x == k).count() as u64;
            }
            (n > 0).then(|| FaultLine { fault: *k, incidents: n, mttr_steps: sum / n as f64, unresolved: open })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(ret: f64, incidents: &[u32]) -> EpisodeStats {
        EpisodeStats { ret, steps: 10, slo_steps: 5, incident_steps: incidents.to_vec(), ..Default::default() }
    }

    #[test]
    fn pct_of_oracle_is_offset_invariant() {
        for offset in [0.0, -1000.0, 250.0] {
            let mk = |name: &str, r: f64| aggregate(name, &[ep(r + offset, &[])], 0.0);
            let c = Comparison::new("s", 1, vec![mk("noop", -100.0), mk("learned", -30.0), mk("oracle", -20.0)]);
            assert!((c.policy("learned").unwrap().pct_of_oracle - 87.5).abs() < 1e-9);
            assert!(c.policy("noop").unwrap().pct_of_oracle.abs() < 1e-9);
            assert!((c.policy("oracle").unwrap().pct_of_oracle - 100.0).abs() < 1e-9);
        }
    }

    #[test]
    fn mttr_pools_incidents_and_intervals_contain_the_mean() {
        let eps = [ep(-1.0, &[2, 4]), ep(-3.0, &[6]), ep(-2.0, &[]), ep(-5.0, &[1, 1, 1])];
        let r = aggregate("x", &eps, 0.1);
        assert!((r.mttr_steps - 15.0 / 6.0).abs() < 1e-12);
        assert!(r.mttr_ci95[0] <= r.mttr_steps && r.mttr_steps <= r.mttr_ci95[1]);
        assert!(r.return_ci95[0] <= r.mean_return && r.mean_return <= r.return_ci95[1]);
        assert!((r.slo_attainment - 0.5).abs() < 1e-12);
        assert!((r.cost - 0.0).abs() < 1e-12);
    }

    #[test]
    fn tails_count_losses_worst_episode_p95_and_idle_streaks() {
        let mut a = ep(-1.0, &[2, 4]);
        a.ledger.lost = 500;
        a.longest_idle_streak = 7;
        a.watchdog_firings = 2;
        let mut b = ep(-9.0, &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 30]);
        b.longest_idle_streak = 3;
        let r = aggregate("x", &[a, b, ep(-2.0, &[])], 0.0);
        assert_eq!(r.episodes_with_loss, Some(1));
        assert_eq!(r.worst_return, Some(-9.0));
        // 20 incidents: the 19th smallest (nearest rank of 0.95 × 20) is 4.
        assert_eq!(r.incident_p95_steps, Some(4.0));
        assert_eq!(r.longest_idle_streak, Some(7));
        assert_eq!(r.watchdog_firings, Some(2));
        assert!(aggregate("y", &[ep(0.0, &[])], 0.0).incident_p95_steps.is_some_and(f64::is_nan));
    }
}
