//! Training: Q-learning episodes on training seeds, with a learning curve.

use crate::episode::{run_episode, Controller, EpisodeStats};
use selfheal_agent::QLearner;
use selfheal_core::seeds::training_episode;
use selfheal_core::{Action, Environment, Learner, Observation, Policy, RewardFn, StateEncoder, Transition};
use serde::Serialize;

/// How to train.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Episodes to run.
    pub episodes: u64,
    /// Training seed: exploration and the episodes' environment seeds derive from it.
    pub seed: u64,
}

/// One point of the learning curve.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Episode index.
    pub episode: u64,
    /// Environment seed of the episode.
    pub seed: u64,
    /// Return (with exploration).
    pub ret: f64,
    /// Mean steps to heal over the episode's incidents (NaN without incidents).
    pub mttr_steps: f64,
    /// Incidents in the episode.
    pub incidents: usize,
    /// ε during the episode.
    pub epsilon: f64,
}

/// Averages curve points over blocks of episodes, so a learning curve of a
/// million episodes stays a file a person can open (and plot).
#[derive(Clone, Debug)]
pub struct CurveWriter {
    block: u64,
    csv: String,
    first: u64,
    n: u64,
    ret: f64,
    mttr_sum: f64,
    incidents: usize,
    epsilon: f64,
}

impl CurveWriter {
    /// CSV header of the rows.
    pub const CSV_HEADER: &'static str = "episode,episodes,mean_return,mttr_steps,incidents,epsilon";

    /// A writer averaging over `block` episodes.
    pub fn new(block: u64) -> CurveWriter {
        let mut csv = String::from(Self::CSV_HEADER);
        csv.push('\n');
        CurveWriter { block: block.max(1), csv, first: 0, n: 0, ret: 0.0, mttr_sum: 0.0, incidents: 0, epsilon: 0.0 }
    }

    /// Add one episode.
    pub fn push(&mut self, p: &CurvePoint) {
        if self.n == 0 {
            self.first = p.episode;
        }
        self.n += 1;
        self.ret += p.ret;
        if p.incidents > 0 {
            self.mttr_sum += p.mttr_steps * p.incidents as f64;
            self.incidents += p.incidents;
        }
        self.epsilon += p.epsilon;
        if self.n == self.block {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.n == 0 {
            return;
        }
        let n = self.n as f64;
        let mttr =
            if self.incidents == 0 { String::new() } else { format!("{:.4}", self.mttr_sum / self.incidents as f64) };
        self.csv.push_str(&format!(
            "{},{},{:.4},{},{},{:.5}\n",
            self.first,
            self.n,
            self.ret / n,
            mttr,
            self.incidents,
            self.epsilon / n
        ));
        *self = CurveWriter { csv: std::mem::take(&mut self.csv), ..CurveWriter::new(self.block) };
    }

    /// The CSV text, with any partial last block.
    pub fn finish(mut self) -> String {
        self.flush();
        self.csv
    }
}

struct Learning<'a>(&'a mut QLearner);

impl<E> Controller<E> for Learning<'_> {
    fn name(&self) -> &str {
        "learned"
    }
    fn reset(&mut self, _seed: u64) {}
    fn decide(&mut self, _env: &E, obs: &Observation<'_>) -> Action {
        self.0.act(obs)
    }
    fn learn(&mut self, t: &Transition) {
        self.0.update(t);
    }
}

/// Train `learner` for `cfg.episodes` episodes; `on_episode` sees each curve point.
pub fn train<E, S, R>(
    env: &mut E,
    enc: &mut S,
    reward: &R,
    learner: &mut QLearner,
    cfg: TrainConfig,
    mut on_episode: impl FnMut(&CurvePoint),
) where
    E: Environment,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    for episode in 0..cfg.episodes {
        learner.begin_episode(episode);
        let seed = training_episode(cfg.seed, episode);
        let epsilon = learner.epsilon();
        let stats: EpisodeStats = run_episode(env, &mut Learning(learner), enc, reward, seed, |_| {});
        let n = stats.incident_steps.len();
        let mttr =
            if n == 0 { f64::NAN } else { stats.incident_steps.iter().map(|x| f64::from(*x)).sum::<f64>() / n as f64 };
        on_episode(&CurvePoint { episode, seed, ret: stats.ret, mttr_steps: mttr, incidents: n, epsilon });
    }
}
