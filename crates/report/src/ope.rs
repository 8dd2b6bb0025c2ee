//! Off-policy evaluation: the value of a candidate policy, estimated from
//! decisions a behaviour policy logged with the probability of each choice.
//!
//! **Episodes.** Decisions are grouped by pipeline, ordered by time (file order
//! on ties), and cut into chunks of `horizon` consecutive decisions; each chunk
//! is one episode (the last, shorter chunk of a pipeline too). The value
//! estimated is the expected discounted return `Σ_t γ^t r_t` of a chunk when the
//! candidate acts from the chunk's first state on, `γ` the candidate's own
//! training discount; `r_t` is the reward record of decision `t` (0 if it has
//! none, counted in `missing_rewards`). A chunk that ends before `horizon`
//! counts as ending there. The log must hold every decision of a pipeline (the
//! sidecar's `log_healthy = true`), else the chunks skip steps.
//!
//! **Estimators** (per-decision, self-normalised: Thomas & Brunskill 2016):
//! with `ρ_t = 1[a_t = π(s_t)] / μ(a_t|s_t)` (π the candidate's greedy choice
//! among the actions allowed in the logged state, μ the logged `probability`)
//! and `w_{i,t} = Π_{k≤t} ρ_{i,k}`, normalised over episodes to `w̃_{i,t}`
//! (`w̃_{i,−1} = 1/n`):
//!
//! - WIS: `Σ_t γ^t Σ_i w̃_{i,t} r_{i,t}`;
//! - DR (weighted doubly robust): `Σ_t γ^t Σ_i [w̃_{i,t} (r_{i,t} − Q̂(s,a)) + w̃_{i,t−1} V̂(s_{i,t})]`,
//!   whose direct model is the candidate's own Q table: `Q̂(s,a)` the row that
//!   decides in `s` (the fallback state's when `s` has too few visits) and
//!   `V̂(s) = Q̂(s, π(s))`. Where every weight has vanished the direct model
//!   carries the rest of the chunk.
//!
//! Both come with 95 % percentile bootstrap intervals over episodes (seeded).

use crate::log::Log;
use crate::policy::PolicyView;
use crate::ReportError;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::stats::percentile_interval_95;
use selfheal_core::{Action, ActionMask};
use serde::Serialize;
use std::collections::BTreeMap;

/// How to estimate.
#[derive(Clone, Copy, Debug)]
pub struct OpeConfig {
    /// Decisions per episode (chunk).
    pub horizon: usize,
    /// Discount; `None` = the candidate's training discount.
    pub gamma: Option<f64>,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
}

impl Default for OpeConfig {
    fn default() -> Self {
        OpeConfig { horizon: 240, gamma: None, resamples: 2000, seed: 0x00FE_5EED }
    }
}

/// A point estimate with its 95 % bootstrap interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimate on the whole log.
    pub value: f64,
    /// 2.5 % and 97.5 % bootstrap percentiles.
    pub ci95: [f64; 2],
}

impl Estimate {
    /// Whether `x` lies in the interval.
    pub fn covers(&self, x: f64) -> bool {
        self.ci95[0] <= x && x <= self.ci95[1]
    }
}

/// The result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct OpeReport {
    /// Episodes (chunks).
    pub episodes: usize,
    /// Decisions used.
    pub decisions: usize,
    /// Decisions per chunk.
    pub horizon: usize,
    /// Discount.
    pub gamma: f64,
    /// Share of decisions where the logged choice is the candidate's.
    pub agreement: f64,
    /// Decisions without a reward record (counted as reward 0).
    pub missing_rewards: usize,
    /// Effective sample size `(Σw)²/Σw²` of the per-decision weights at steps 0, 10, 50.
    pub ess: Vec<(usize, f64)>,
    /// The behaviour policy's own discounted return (on-policy mean of the log).
    pub behaviour: Estimate,
    /// The direct model alone: mean `V̂(s_0)`.
    pub direct: Estimate,
    /// Per-decision weighted importance sampling.
    pub wis: Estimate,
    /// Weighted doubly robust.
    pub dr: Estimate,
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Bootstrap seed.
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
struct Step {
    w: f64,
    r: f64,
    qhat: f64,
    vhat: f64,
}

struct Episode {
    /// Steps up to and including the first whose weight is 0.
    steps: Vec<Step>,
    /// The behaviour's discounted return over the whole chunk.
    ret: f64,
}

/// Estimate `candidate`'s value from `log`.
pub fn estimate(candidate: &PolicyView, log: &Log, cfg: OpeConfig) -> Result<OpeReport, ReportError> {
    let gamma = cfg.gamma.unwrap_or_else(|| candidate.gamma());
    let horizon = cfg.horizon.max(1);
    let mut by_pipeline: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, j) in log.decisions.iter().enumerate() {
        by_pipeline.entry(j.d.pipeline.as_str()).or_default().push(i);
    }
    let (mut episodes, mut decisions, mut agree, mut missing) = (Vec::new(), 0usize, 0usize, 0usize);
    for idx in by_pipeline.values_mut() {
        idx.sort_by_key(|i| (log.decisions[*i].d.ts_ms, *i));
        for chunk in idx.chunks(horizon) {
            let (mut steps, mut w, mut ret, mut disc) = (Vec::new(), 1.0f64, 0.0, 1.0);
            for &i in chunk {
                let j = &log.decisions[i];
                let d = &j.d;
                let chosen = d.chosen;
                let mu = Some(d.probability).filter(|p| *p > 0.0 && *p <= 1.0).ok_or_else(|| {
                    ReportError::Ope(format!(
                        "decision {} has no behaviour probability in (0, 1]; this log cannot be used for off-policy evaluation",
                        d.id
                    ))
                })?;
                let mask = if d.q.is_empty() { candidate.mask(d.state) } else { ActionMask::ALL.intersect_names(&d.q) };
                let pi = candidate.act_masked(d.state, mask);
                let r = j.reward.unwrap_or_else(|| {
                    missing += 1;
                    0.0
                });
                decisions += 1;
                agree += usize::from(pi == chosen);
                ret += disc * r;
                disc *= gamma;
                if w > 0.0 {
                    w *= if pi == chosen { 1.0 / mu } else { 0.0 };
                    steps.push(Step { w, r, qhat: candidate.q(d.state, chosen), vhat: candidate.q(d.state, pi) });
                }
            }
            episodes.push(Episode { steps, ret });
        }
    }
    if episodes.is_empty() {
        return Err(ReportError::Ope("the log holds no decisions".into()));
    }
    let n = episodes.len();
    let all: Vec<usize> = (0..n).collect();
    let point = estimators(&episodes, &all, gamma);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
    let mut boots: [Vec<f64>; 4] = Default::default();
    let mut sample = vec![0usize; n];
    for _ in 0..cfg.resamples {
        for s in sample.iter_mut() {
            *s = rng.gen_range(0..n);
        }
        let e = estimators(&episodes, &sample, gamma);
        for k in 0..4 {
            boots[k].push(e[k]);
        }
    }
    let est = |k: usize| Estimate { value: point[k], ci95: percentile_interval_95(boots[k].clone()) };
    let ess = [0usize, 10, 50]
        .iter()
        .map(|&t| {
            let ws: Vec<f64> = episodes.iter().map(|e| e.steps.get(t).map_or(0.0, |s| s.w)).collect();
            let (s1, s2) = (ws.iter().sum::<f64>(), ws.iter().map(|w| w * w).sum::<f64>());
            (t, if s2 > 0.0 { s1 * s1 / s2 } else { 0.0 })
        })
        .collect();
    Ok(OpeReport {
        episodes: n,
        decisions,
        horizon,
        gamma,
        agreement: agree as f64 / decisions.max(1) as f64,
        missing_rewards: missing,
        ess,
        behaviour: est(0),
        direct: est(1),
        wis: est(2),
        dr: est(3),
        resamples: cfg.resamples,
        seed: cfg.seed,
    })
}

trait MaskNames {
    fn intersect_names(self, q: &[(String, f64)]) -> ActionMask;
}

impl MaskNames for ActionMask {
    /// The actions named in the logged Q list (the allowed ones).
    fn intersect_names(self, q: &[(String, f64)]) -> ActionMask {
        Action::ALL.into_iter().filter(|a| !q.iter().any(|(n, _)| n == a.name())).fold(self, |m, a| m.without(a))
    }
}

/// [behaviour, direct, WIS, DR] over the episodes `idx` (with repeats).
fn estimators(eps: &[Episode], idx: &[usize], gamma: f64) -> [f64; 4] {
    let n = idx.len() as f64;
    let behaviour = idx.iter().map(|i| eps[*i].ret).sum::<f64>() / n;
    let direct = idx.iter().map(|i| eps[*i].steps.first().map_or(0.0, |s| s.vhat)).sum::<f64>() / n;
    let t_max = idx.iter().map(|i| eps[*i].steps.len()).max().unwrap_or(0);
    let (mut wis, mut dr, mut disc) = (0.0, 0.0, 1.0);
    let mut prev_sw = n;
    for t in 0..t_max {
        let (mut sw, mut swr, mut swd, mut swv) = (0.0, 0.0, 0.0, 0.0);
        for &i in idx {
            let steps = &eps[i].steps;
            let Some(s) = steps.get(t) else { continue };
            let w_prev = if t == 0 { 1.0 } else { steps[t - 1].w };
            sw += s.w;
            swr += s.w * s.r;
            swd += s.w * (s.r - s.qhat);
            swv += w_prev * s.vhat;
        }
        if sw > 0.0 {
            wis += disc * swr / sw;
            dr += disc * swd / sw;
        }
        if prev_sw > 0.0 {
            dr += disc * swv / prev_sw;
        }
        prev_sw = sw;
        disc *= gamma;
    }
    [behaviour, direct, wis, dr]
}

/// The report in words.
pub fn text(r: &OpeReport) -> String {
    let mut s = format!(
        "{} decisions in {} episodes of up to {} decisions; γ = {}; the logged choice is the candidate's in {:.1} % of decisions\n",
        r.decisions,
        r.episodes,
        r.horizon,
        r.gamma,
        100.0 * r.agreement
    );
    if r.missing_rewards > 0 {
        s.push_str(&format!("{} decisions have no reward record (counted as 0)\n", r.missing_rewards));
    }
    s.push_str("effective sample size of the weights:");
    for (t, e) in &r.ess {
        s.push_str(&format!(" step {t}: {e:.1}"));
    }
    s.push_str("\n\nestimate                       value   95 % bootstrap interval\n");
    for (name, e) in [
        ("behaviour (logged, on-policy)", &r.behaviour),
        ("direct model (Q table)", &r.direct),
        ("weighted importance sampling", &r.wis),
        ("doubly robust", &r.dr),
    ] {
        s.push_str(&format!("{name:<29} {:>8.3}   [{:.3}, {:.3}]\n", e.value, e.ci95[0], e.ci95[1]));
    }
    s.push_str(&format!(
        "\nvalue = expected discounted return over an episode (γ = {}); intervals: {} resamples of episodes, seed {}\n",
        r.gamma, r.resamples, r.seed
    ));
    s
}

/// An ε-greedy behaviour around a greedy choice, reporting the probability of
/// what it chose (as the sidecar logs it).
#[derive(Clone, Debug)]
pub struct Explorer {
    rng: Xoshiro256PlusPlus,
    /// Exploration probability.
    pub epsilon: f64,
}

impl Explorer {
    /// A seeded explorer.
    pub fn new(epsilon: f64, seed: u64) -> Explorer {
        Explorer { rng: Xoshiro256PlusPlus::seed_from_u64(seed), epsilon }
    }

    /// Reseed (per episode).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    }

    /// Choose: uniformly among `mask` with probability ε, else `greedy`; with the probability of the choice.
    pub fn choose(&mut self, greedy: Action, mask: ActionMask) -> (Action, f64) {
        selfheal_agent::epsilon_greedy(&mut self.rng, self.epsilon, greedy, mask)
    }
}
