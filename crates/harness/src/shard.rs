//! Training fan-out: one shard of a training run's episodes.
//!
//! Why here and not in the CLI: the split and the seed streams decide which
//! episodes a shard trains, so they are part of what makes a merged model
//! reproducible; an engine (a Kubernetes Indexed Job, an AWS Batch array job)
//! only supplies the index.

use std::str::FromStr;

/// Environment variables that carry the shard index on an engine, in order:
/// Kubernetes Indexed Jobs set `JOB_COMPLETION_INDEX`
/// (<https://kubernetes.io/docs/concepts/workloads/controllers/job/#completion-mode>),
/// AWS Batch array jobs `AWS_BATCH_JOB_ARRAY_INDEX`
/// (<https://docs.aws.amazon.com/batch/latest/userguide/array_jobs.html>).
pub const INDEX_VARS: [&str; 2] = ["JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"];

/// Why a shard was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// Not `I/N` with `0 <= I < N`.
    #[error("{0}")]
    Syntax(String),
    /// `--shards N` without an index in the environment.
    #[error("--shards {0} needs the shard index in JOB_COMPLETION_INDEX or AWS_BATCH_JOB_ARRAY_INDEX")]
    NoIndex(u32),
    /// The index variable is not a number below the shard count.
    #[error("{var}={value:?}: {why}")]
    BadIndex {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: String,
    },
}

/// Shard `index` of `count` (0 ≤ index < count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// Episodes of a run of `episodes` that this shard trains.
    pub fn episodes(self, episodes: u64) -> u64 {
        let n = u64::from(self.count);
        episodes / n + u64::from(u64::from(self.index) < episodes % n)
    }

    /// The training seed of this shard under the run's seed.
    pub fn seed(self, seed: u64) -> u64 {
        selfheal_core::seeds::mix(seed, u64::from(self.index) + 1)
    }
}

impl Shard {
    /// Shard `index` of `count`.
    ///
    /// # Errors
    /// [`ShardError::Syntax`] unless `0 <= index < count`.
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 || index >= count {
            return Err(ShardError::Syntax(format!("shard {index}/{count}: need 0 <= I < N")));
        }
        Ok(Shard { index, count })
    }

    /// Shard of `count` whose index an engine put in the environment
    /// ([`INDEX_VARS`], read through `env`).
    ///
    /// # Errors
    /// [`ShardError::NoIndex`] when none is set, [`ShardError::BadIndex`]
    /// when it is not an index below `count`.
    pub fn from_env(count: u32, env: impl Fn(&str) -> Option<String>) -> Result<Shard, ShardError> {
        let (var, value) = INDEX_VARS.iter().find_map(|v| env(v).map(|x| (*v, x))).ok_or(ShardError::NoIndex(count))?;
        let bad = |why: String| ShardError::BadIndex { var, value: value.clone(), why };
        let index = value.trim().parse::<u32>().map_err(|e| bad(format!("not a shard index: {e}")))?;
        Shard::new(index, count).map_err(|e| bad(e.to_string()))
    }
}

impl FromStr for Shard {
    type Err = ShardError;

    /// `"I/N"`, e.g. `"0/4"`; spaces around the numbers are allowed.
    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let (i, n) = s.split_once('/').ok_or_else(|| ShardError::Syntax(format!("{s:?} is not I/N (e.g. 0/4)")))?;
        let parse = |x: &str| x.trim().parse::<u32>().map_err(|e| ShardError::Syntax(format!("{s:?} is not I/N: {e}")));
        Shard::new(parse(i)?, parse(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_every_episode_once_and_differ_by_at_most_one() {
        for episodes in [1u64, 2, 7, 301, 400_000, 400_003] {
            for count in 1u32..=9 {
                let sizes: Vec<u64> = (0..count).map(|index| Shard { index, count }.episodes(episodes)).collect();
                assert_eq!(sizes.iter().sum::<u64>(), episodes, "{episodes} episodes over {count} shards");
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{episodes}/{count}: {sizes:?}");
            }
        }
    }

    #[test]
    fn each_shard_has_its_own_seed_stream_and_keeps_training_seeds_off_the_evaluation_range() {
        let seeds: std::collections::BTreeSet<u64> = (0..64).map(|index| Shard { index, count: 64 }.seed(1)).collect();
        assert_eq!(seeds.len(), 64, "no two shards share a training seed");
        assert!(!seeds.contains(&1), "no shard reuses the run's own stream");
        for s in seeds {
            assert!(selfheal_core::seeds::training_episode(s, 0) >= 1 << 32);
        }
    }

    #[test]
    fn shard_syntax_is_checked() {
        assert_eq!("1/4".parse(), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(" 0 / 1 ".parse(), Ok(Shard { index: 0, count: 1 }));
        for bad in ["4/4", "0/0", "1", "a/2", "-1/2", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_index_comes_from_the_first_engine_variable_set() {
        let env = |v: &str| (v == "AWS_BATCH_JOB_ARRAY_INDEX").then(|| "2".to_string());
        assert_eq!(Shard::from_env(4, env), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(
            Shard::from_env(2, env).unwrap_err().to_string(),
            "AWS_BATCH_JOB_ARRAY_INDEX=\"2\": shard 2/2: need 0 <= I < N"
        );
        assert_eq!(Shard::from_env(4, |_| None), Err(ShardError::NoIndex(4)));
    }
}
