//! Training: Q-learning episodes on training seeds, with a learning curve;
//! exploring starts for coverage, episodes generated on every core.

use crate::episode::{run_episode_from, Controller, EpisodeStats, Start};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_agent::{epsilon_greedy, QLearner, QParams, QTable};
use selfheal_core::seeds::{mix, training_episode};
use selfheal_core::{Action, Environment, Learner, Observation, RewardFn, StateEncoder, Transition};
use serde::Serialize;

/// How to train.
#[derive(Clone, Copy, Debug)]
pub struct TrainConfig {
    /// Episodes to run.
    pub episodes: u64,
    /// Training seed: exploration and the episodes' environment seeds derive from it.
    pub seed: u64,
    /// Exploring starts and rounds.
    pub coverage: Coverage,
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

/// How episodes are generated: exploring starts and rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Coverage {
    /// Share of episodes that start from [`Environment::reset_exploring`].
    pub exploring_starts: f64,
    /// In an exploring episode, the behaviour waits (`NoOp`) for a number of
    /// steps drawn uniformly from `0..=idle_prefix`, so the states of late
    /// incident stages (an old incident, nothing tried yet) are visited and
    /// learned from (Q-learning is off-policy: the waiting steps teach too).
    pub idle_prefix: u32,
    /// Episodes per round: they are generated in parallel from the table as it
    /// stood at the round's start, then learned from in episode order, so the
    /// model is the same whatever the number of threads.
    pub round: u64,
}

impl Default for Coverage {
    fn default() -> Self {
        Coverage { exploring_starts: 0.5, idle_prefix: 15, round: 32 }
    }
}

/// One generated episode: its transitions and its curve point.
struct Generated {
    transitions: Vec<Transition>,
    point: CurvePoint,
}

/// The behaviour while generating: ε-greedy over a table frozen for the
/// round, with its own RNG per episode, and an optional waiting prefix.
struct Behaviour<'a> {
    table: &'a QTable,
    epsilon: f64,
    rng: Xoshiro256PlusPlus,
    wait: u32,
    transitions: Vec<Transition>,
}

impl<E> Controller<E> for Behaviour<'_> {
    fn name(&self) -> &str {
        "learned"
    }
    fn reset(&mut self, _seed: u64) {}
    fn decide(&mut self, _env: &E, obs: &Observation<'_>) -> Action {
        if self.wait > 0 {
            self.wait -= 1;
            return Action::NoOp;
        }
        epsilon_greedy(&mut self.rng, self.epsilon, self.table.best(obs.state, obs.mask), obs.mask).0
    }
    fn learn(&mut self, t: &Transition) {
        self.transitions.push(*t);
    }
}

#[allow(clippy::too_many_arguments)]
fn generate<E, S, R>(
    env: &mut E,
    enc: &mut S,
    reward: &R,
    table: &QTable,
    params: &QParams,
    cfg: &TrainConfig,
    episode: u64,
) -> Generated
where
    E: Environment,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    let seed = training_episode(cfg.seed, episode);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(mix(cfg.seed ^ 0xBE4A_7105, episode));
    let exploring = rng.gen::<f64>() < cfg.coverage.exploring_starts;
    let wait = if exploring { rng.gen_range(0..=cfg.coverage.idle_prefix) } else { 0 };
    let epsilon = params.epsilon.at(episode);
    let mut b = Behaviour { table, epsilon, rng, wait, transitions: Vec::with_capacity(env.horizon() as usize) };
    let start = if exploring { Start::Exploring } else { Start::Ordinary };
    let stats: EpisodeStats = run_episode_from(env, &mut b, enc, reward, seed, start, |_| {});
    let n = stats.incident_steps.len();
    let mttr =
        if n == 0 { f64::NAN } else { stats.incident_steps.iter().map(|x| f64::from(*x)).sum::<f64>() / n as f64 };
    Generated {
        transitions: b.transitions,
        point: CurvePoint { episode, seed, ret: stats.ret, mttr_steps: mttr, incidents: n, epsilon },
    }
}

/// Train `learner` for `cfg.episodes` episodes with one worker per
/// `(environment, encoder)` pair in `workers` (one thread each);
/// `on_episode` sees each curve point in episode order.
///
/// Episodes are generated in rounds of [`Coverage::round`]: every episode of
/// a round acts ε-greedily on the table as it stood at the round's start
/// (each with its own RNG, derived from the training seed and its index), and
/// the learner then applies their transitions in episode order. The model
/// therefore depends on the seed and the round size only, never on the
/// number of threads or their timing; the lag of at most one round is what
/// parallel actor-learner schemes accept (Mnih et al., "Asynchronous Methods
/// for Deep Reinforcement Learning", 2016), here made deterministic.
pub fn train<E, S, R>(
    workers: &mut [(E, Box<S>)],
    reward: &R,
    learner: &mut QLearner,
    cfg: TrainConfig,
    mut on_episode: impl FnMut(&CurvePoint),
) where
    E: Environment + Send,
    S: StateEncoder + Send + ?Sized,
    R: RewardFn + Sync + ?Sized,
{
    assert!(!workers.is_empty(), "training needs at least one worker");
    let round = cfg.coverage.round.max(1);
    let params = *learner.params();
    let mut first = 0;
    while first < cfg.episodes {
        let last = (first + round).min(cfg.episodes);
        learner.begin_episode(first);
        let table = learner.table();
        let n = workers.len() as u64;
        let mut generated: Vec<Generated> = std::thread::scope(|scope| {
            let handles: Vec<_> = workers
                .iter_mut()
                .enumerate()
                .map(|(w, (env, enc))| {
                    let cfg = &cfg;
                    let params = &params;
                    scope.spawn(move || {
                        (first + w as u64..last)
                            .step_by(n as usize)
                            .map(|e| generate(env, enc.as_mut(), reward, table, params, cfg, e))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // A worker's panic is re-raised here, as if it had happened on this thread.
            #[allow(clippy::expect_used)]
            let all = handles.into_iter().flat_map(|h| h.join().expect("a training worker panicked")).collect();
            all
        });
        generated.sort_by_key(|g| g.point.episode);
        for g in generated {
            learner.begin_episode(g.point.episode);
            for t in &g.transitions {
                learner.update(t);
            }
            on_episode(&g.point);
        }
        first = last;
    }
}
