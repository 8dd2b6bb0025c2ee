//! `selfheal train`: Q-learning in the simulator.

use crate::{defaults, wiring};
use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use selfheal_agent::qlearn::{EpsilonSchedule, QParams};
use selfheal_agent::store::{write_atomic, ModelFile, ModelMeta};
use selfheal_agent::QLearner;
use selfheal_core::{ParamGuard, RewardFn};
use selfheal_harness::shard::{Shard, ShardError};
use selfheal_harness::{train, Coverage, CurveWriter, TrainConfig};
use selfheal_sim::Simulator;
use std::path::PathBuf;
use std::time::Instant;

/// Train a policy in the simulator and write the model and its learning curve.
///
/// Episodes use seeds derived from --seed, all at or above 2^32, so they never
/// overlap the held-out evaluation seeds. The same seed gives a byte-identical
/// model file.
///
/// Fan-out: `--shard I/N` trains shard I (0-based) of N. The run's episodes
/// are split between the shards (shard I gets ⌊E/N⌋, plus one when I < E mod N)
/// and shard I draws its episodes' environment seeds from its own stream,
/// `mix(seed, I + 1)`, so no two shards train on the same episode and each
/// shard's model is reproducible alone. Fold the shard models with
/// `selfheal fleet merge`. On an engine the index comes from the environment:
/// give `--shards N` and the index is read from JOB_COMPLETION_INDEX
/// (Kubernetes Indexed Job) or AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job).
#[derive(clap::Args)]
pub struct Args {
    /// Scenario file (TOML); defaults to the shipped default scenario.
    #[arg(long)]
    scenario: Option<PathBuf>,
    /// State encoder: detector-v2 (the detector's failure signatures plus
    /// latency, error and resource buckets and the incident's age; the shipped
    /// policy), detector-v1 (the same without the age) or telemetry-v1
    /// (hand-written symptom rules; the foundation's encoder).
    #[arg(long, default_value = "detector-v2")]
    encoder: selfheal_agent::EncoderKind,
    /// Detector model for detector-v1/v2; defaults to the shipped models/detector.json.
    #[arg(long)]
    detector: Option<PathBuf>,
    /// Episodes to train.
    #[arg(long, default_value_t = 400_000)]
    episodes: u64,
    /// Training seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the model (written atomically). With --shard/--shards,
    /// `{shard}` in it becomes the shard index (for engines that cannot
    /// substitute it, e.g. AWS Batch: `--out /models/shard-{shard}.json`).
    #[arg(long, default_value = "models/policy.json")]
    out: PathBuf,
    /// Where to write the learning curve CSV [default: the model path with .curve.csv].
    #[arg(long)]
    curve: Option<PathBuf>,
    /// Episodes averaged per row of the learning curve [default: episodes / 2000].
    #[arg(long)]
    curve_block: Option<u64>,
    /// Step-size floor α.
    #[arg(long, default_value_t = QParams::default().alpha)]
    alpha: f64,
    /// Exponent ω of the count-based step size n^−ω.
    #[arg(long, default_value_t = QParams::default().alpha_power)]
    alpha_power: f64,
    /// Discount γ.
    #[arg(long, default_value_t = QParams::default().gamma)]
    gamma: f64,
    /// ε at the first episode.
    #[arg(long, default_value_t = QParams::default().epsilon.start)]
    epsilon_start: f64,
    /// ε after the decay.
    #[arg(long, default_value_t = QParams::default().epsilon.end)]
    epsilon_end: f64,
    /// Share of the episodes over which ε decays.
    #[arg(long, default_value_t = 0.7)]
    epsilon_decay: f64,
    /// Share of episodes that start inside an incident (faults from the
    /// scenario's mix already active, a backlog, any worker level), so rare
    /// combinations and late stages are trained on.
    #[arg(long, default_value_t = Coverage::default().exploring_starts)]
    exploring_starts: f64,
    /// In such an episode the behaviour first waits up to this many steps
    /// (drawn uniformly), so old incidents with nothing tried are visited.
    #[arg(long, default_value_t = Coverage::default().idle_prefix)]
    idle_prefix: u32,
    /// Train shard I (0-based) of N: "I/N", e.g. 0/4.
    #[arg(long, value_parser = parse_shard, conflicts_with = "shards")]
    shard: Option<Shard>,
    /// Train one of N shards, the index read from the environment:
    /// JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or
    /// AWS_BATCH_JOB_ARRAY_INDEX (AWS Batch array job), the first one set.
    #[arg(long)]
    shards: Option<u32>,
    /// Worker threads generating episodes [default: the cores available].
    /// The model does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
}

fn shard_of(a: &Args) -> Result<Option<Shard>> {
    if let Some(s) = a.shard {
        return Ok(Some(s));
    }
    let Some(count) = a.shards else { return Ok(None) };
    Ok(Some(Shard::from_env(count, |v| std::env::var(v).ok())?))
}

pub fn run(mut a: Args) -> Result<()> {
    let scenario = defaults::scenario(a.scenario.as_deref())?;
    anyhow::ensure!(a.episodes > 0, "--episodes must be positive");
    if let Some(shard) = shard_of(&a)? {
        let total = a.episodes;
        a.episodes = shard.episodes(total);
        anyhow::ensure!(a.episodes > 0, "shard {}/{} of {total} episodes is empty", shard.index, shard.count);
        a.seed = shard.seed(a.seed);
        if let Some(out) = a.out.to_str().filter(|o| o.contains("{shard}")) {
            a.out = PathBuf::from(out.replace("{shard}", &shard.index.to_string()));
        }
        tracing::info!(
            shard = shard.index,
            shards = shard.count,
            episodes = a.episodes,
            seed = a.seed,
            "training one shard"
        );
    }
    anyhow::ensure!((0.0..=1.0).contains(&a.epsilon_decay), "--epsilon-decay is a share of the episodes, in [0, 1]");
    anyhow::ensure!(
        (0.0..=1.0).contains(&a.exploring_starts),
        "--exploring-starts is a share of the episodes, in [0, 1]"
    );
    let threads = a.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    anyhow::ensure!((1..=256).contains(&threads), "--threads must be in 1..=256");
    let params = QParams {
        alpha: a.alpha,
        alpha_power: a.alpha_power,
        gamma: a.gamma,
        epsilon: EpsilonSchedule {
            start: a.epsilon_start,
            end: a.epsilon_end,
            decay_episodes: (a.episodes as f64 * a.epsilon_decay).round() as u64,
        },
    };
    let params =
        params.check().map_err(|e| anyhow::anyhow!("--{} must be {}", e.param.replace(['_', '.'], "-"), e.bound))?;
    let mut config = wiring::encoder_config(&scenario);
    let detector = defaults::detector(a.detector.as_deref())?;
    if a.encoder.uses_detector() {
        config.detector = Some(wiring::detector_ref(&detector));
    }
    let (enc, _) = wiring::encoder_of(a.encoder, config.clone(), &detector);
    let reward = wiring::reward(&scenario);
    let mut workers = Vec::with_capacity(threads);
    for _ in 0..threads {
        workers.push((Simulator::new(&scenario), wiring::encoder_of(a.encoder, config.clone(), &detector).0));
    }
    let mut learner = QLearner::new(enc.num_states(), params, selfheal_core::seeds::mix(a.seed, 0xA6E7));

    let bar = ProgressBar::new(a.episodes);
    bar.set_style(
        ProgressStyle::with_template("{spinner} train [{bar:30}] {pos}/{len} episodes  {per_sec}  eta {eta}  {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut curve = CurveWriter::new(a.curve_block.unwrap_or(a.episodes.div_ceil(2000)));
    let mut recent = std::collections::VecDeque::with_capacity(500);
    let started = Instant::now();
    let coverage = Coverage { exploring_starts: a.exploring_starts, idle_prefix: a.idle_prefix, ..Coverage::default() };
    let cfg = TrainConfig { episodes: a.episodes, seed: a.seed, coverage };
    train(&mut workers, &reward, &mut learner, cfg, |p| {
        curve.push(p);
        if recent.len() == 500 {
            recent.pop_front();
        }
        recent.push_back(p.ret);
        if p.episode % 250 == 0 {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            bar.set_message(format!("return(last {}) {mean:.1}  ε {:.3}", recent.len(), p.epsilon));
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();

    let meta = ModelMeta {
        seed: a.seed,
        scenario: scenario.name.clone(),
        episodes: a.episodes,
        reward_fn: reward.version().to_string(),
        params: params.into_inner(),
        selfheal_version: env!("CARGO_PKG_VERSION").to_string(),
        grown_from: None,
    };
    let table = learner.into_table();
    let model = ModelFile::new(meta, enc.as_ref(), config, &table);
    model.save(&a.out).with_context(|| format!("writing the model to {}", a.out.display()))?;
    let curve_path = a.curve.unwrap_or_else(|| a.out.with_extension("curve.csv"));
    write_atomic(&curve_path, curve.finish().as_bytes())?;
    eprintln!(
        "trained {} episodes ({} steps) on {threads} threads in {secs:.1} s; {} states visited; model {}; curve {}",
        a.episodes,
        a.episodes * u64::from(scenario.horizon),
        model.states.len(),
        a.out.display(),
        curve_path.display()
    );
    Ok(())
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse().map_err(|e: ShardError| e.to_string())
}
