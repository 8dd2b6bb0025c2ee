//! Scenario files: TOML that names the fault mix, rates, pipeline shape, horizon
//! and evaluation seeds. The format is documented in `simulator/scenarios/README.md`;
//! unknown keys are rejected so a typo never silently falls back to a default.

use selfheal_core::FaultKind;
use serde::Deserialize;
use std::ops::Range;
use std::path::Path;

/// Everything that can be wrong with a scenario file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML did not parse or named an unknown key (the message has the line).
    #[error("scenario {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A key has a value out of its range.
    #[error("scenario {path}: key `{key}`: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// The dotted key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A simulation scenario.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name, shown in reports.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// Steps per episode (one step is one CloudWatch period).
    pub horizon: u32,
    /// Shape and size of the pipeline.
    #[serde(default)]
    pub pipeline: Pipeline,
    /// Which faults arrive, and how often.
    pub faults: Faults,
    /// Held-out evaluation seeds.
    #[serde(default)]
    pub seeds: Seeds,
}

/// Shape and size of the pipeline.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// Records per unit; every flow of the simulator is a whole number of units.
    pub unit_records: u32,
    /// Units arriving at the source per step.
    pub arrivals: u32,
    /// Units the pipeline can process per step at each worker level.
    pub capacity: Vec<u32>,
    /// Workers (executors) paid for at each worker level.
    pub workers: Vec<u32>,
    /// Worker level at the start of an episode.
    pub base_level: u8,
    /// Units the backlog can hold; beyond it, the oldest records expire (lost).
    pub backlog_limit: u32,
    /// Seconds per step (the CloudWatch period).
    pub step_seconds: u32,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            unit_records: 500,
            arrivals: 2,
            capacity: vec![1, 3, 5, 7],
            workers: vec![5, 10, 20, 40],
            base_level: 1,
            backlog_limit: 120,
            step_seconds: 60,
        }
    }
}

/// Fault arrivals.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Probability per step that a new fault arrives.
    pub rate: f64,
    /// Faults that may be active at once (1 or 2). An arrival beyond it is dropped.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u8,
    /// Relative weight of each fault kind; kinds left out never occur.
    pub mix: FaultMix,
}

fn default_max_concurrent() -> u8 {
    2
}

/// Relative weights of the fault kinds.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultMix {
    /// Weight of [`FaultKind::Upstream5xx`].
    #[serde(default)]
    pub upstream_5xx: f64,
    /// Weight of [`FaultKind::NetworkTimeout`].
    #[serde(default)]
    pub network_timeout: f64,
    /// Weight of [`FaultKind::SchemaDrift`].
    #[serde(default)]
    pub schema_drift: f64,
    /// Weight of [`FaultKind::ResourceContention`].
    #[serde(default)]
    pub resource_contention: f64,
    /// Weight of [`FaultKind::MemoryPressure`].
    #[serde(default)]
    pub memory_pressure: f64,
    /// Weight of [`FaultKind::StuckJob`].
    #[serde(default)]
    pub stuck_job: f64,
    /// Weight of [`FaultKind::PoisonRecords`].
    #[serde(default)]
    pub poison_records: f64,
    /// Weight of [`FaultKind::DownstreamOutage`].
    #[serde(default)]
    pub downstream_outage: f64,
    /// Weight of [`FaultKind::Novel`].
    #[serde(default)]
    pub novel: f64,
}

impl FaultMix {
    /// The weight of `k`.
    pub fn weight(&self, k: FaultKind) -> f64 {
        match k {
            FaultKind::Upstream5xx => self.upstream_5xx,
            FaultKind::NetworkTimeout => self.network_timeout,
            FaultKind::SchemaDrift => self.schema_drift,
            FaultKind::ResourceContention => self.resource_contention,
            FaultKind::MemoryPressure => self.memory_pressure,
            FaultKind::StuckJob => self.stuck_job,
            FaultKind::PoisonRecords => self.poison_records,
            FaultKind::DownstreamOutage => self.downstream_outage,
            FaultKind::Novel => self.novel,
        }
    }
}

/// Held-out evaluation seeds: `evaluate` uses `eval_start..eval_start+eval_count`
/// unless told otherwise. Training never uses a seed below 2^32.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seeds {
    /// First evaluation seed.
    pub eval_start: u64,
    /// Number of evaluation seeds.
    pub eval_count: u64,
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds { eval_start: 0, eval_count: 200 }
    }
}

pub use selfheal_core::seeds::TRAIN_SEED_FLOOR;

impl Scenario {
    /// The built-in default scenario (`simulator/scenarios/default.toml`).
    pub fn builtin_default() -> Scenario {
        Scenario::from_toml_str(DEFAULT_TOML, "<builtin default.toml>").expect("the embedded default scenario is valid")
    }

    /// Read and validate a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ScenarioError::Io { path: path.display().to_string(), source })?;
        Scenario::from_toml_str(&text, &path.display().to_string())
    }

    /// Parse and validate scenario text; `origin` names it in errors.
    pub fn from_toml_str(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        s.validate(origin)?;
        Ok(s)
    }

    fn validate(&self, origin: &str) -> Result<(), ScenarioError> {
        let bad = |key: &str, message: String| ScenarioError::Invalid {
            path: origin.to_string(),
            key: key.to_string(),
            message,
        };
        let p = &self.pipeline;
        if self.horizon == 0 || self.horizon > 100_000 {
            return Err(bad("horizon", format!("must be 1..=100000, got {}", self.horizon)));
        }
        if p.unit_records == 0 {
            return Err(bad("pipeline.unit_records", "must be positive".into()));
        }
        if p.arrivals == 0 || p.arrivals > 1000 {
            return Err(bad("pipeline.arrivals", format!("must be 1..=1000, got {}", p.arrivals)));
        }
        if p.capacity.is_empty() || p.capacity.len() > 8 {
            return Err(bad("pipeline.capacity", "needs 1 to 8 worker levels".into()));
        }
        if p.capacity.windows(2).any(|w| w[0] >= w[1]) {
            return Err(bad("pipeline.capacity", format!("must increase strictly, got {:?}", p.capacity)));
        }
        if p.workers.len() != p.capacity.len() {
            return Err(bad(
                "pipeline.workers",
                format!("needs one entry per capacity level ({}), got {}", p.capacity.len(), p.workers.len()),
            ));
        }
        if p.workers.windows(2).any(|w| w[0] >= w[1]) || p.workers.first() == Some(&0) {
            return Err(bad(
                "pipeline.workers",
                format!("must be positive and increase strictly, got {:?}", p.workers),
            ));
        }
        if usize::from(p.base_level) >= p.capacity.len() {
            return Err(bad(
                "pipeline.base_level",
                format!("must name a level below {}, got {}", p.capacity.len(), p.base_level),
            ));
        }
        if p.capacity[usize::from(p.base_level)] <= p.arrivals {
            return Err(bad(
                "pipeline.base_level",
                "capacity at the base level must exceed arrivals, or the backlog never drains".into(),
            ));
        }
        if p.backlog_limit < p.arrivals || p.backlog_limit > 1000 {
            return Err(bad(
                "pipeline.backlog_limit",
                format!("must be between arrivals ({}) and 1000, got {}", p.arrivals, p.backlog_limit),
            ));
        }
        if p.step_seconds == 0 {
            return Err(bad("pipeline.step_seconds", "must be positive".into()));
        }
        let f = &self.faults;
        if !(0.0..=1.0).contains(&f.rate) || !f.rate.is_finite() {
            return Err(bad("faults.rate", format!("must be a probability in [0, 1], got {}", f.rate)));
        }
        if !(1..=2).contains(&f.max_concurrent) {
            return Err(bad("faults.max_concurrent", format!("must be 1 or 2, got {}", f.max_concurrent)));
        }
        for k in FaultKind::ALL {
            let w = f.mix.weight(k);
            if !w.is_finite() || w < 0.0 {
                return Err(bad(&format!("faults.mix.{}", k.name()), format!("must be a finite weight >= 0, got {w}")));
            }
        }
        if f.rate > 0.0 && FaultKind::ALL.iter().all(|k| f.mix.weight(*k) == 0.0) {
            return Err(bad("faults.mix", "every weight is 0 but faults.rate is positive".into()));
        }
        if self.seeds.eval_count == 0 {
            return Err(bad("seeds.eval_count", "must be positive".into()));
        }
        if self.seeds.eval_start.saturating_add(self.seeds.eval_count) > TRAIN_SEED_FLOOR {
            return Err(bad("seeds", "evaluation seeds must stay below 2^32 (training seeds live above)".into()));
        }
        Ok(())
    }

    /// The scenario's evaluation seeds.
    pub fn eval_seeds(&self) -> Range<u64> {
        self.seeds.eval_start..self.seeds.eval_start + self.seeds.eval_count
    }

    /// Probability that a fault of kind `k` arrives in a step (before dropping
    /// arrivals that find the slots full or the kind already active).
    pub fn arrival_probability(&self, k: FaultKind) -> f64 {
        let total: f64 = FaultKind::ALL.iter().map(|k| self.faults.mix.weight(*k)).sum();
        if total == 0.0 {
            0.0
        } else {
            self.faults.rate * self.faults.mix.weight(k) / total
        }
    }
}

/// The shipped default scenario, embedded so the CLI works from any directory.
pub const DEFAULT_TOML: &str = include_str!("../scenarios/default.toml");

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Scenario::from_toml_str(text, "t.toml").unwrap_err().to_string()
    }

    const OK: &str = "name='x'\nhorizon=10\n[faults]\nrate=0.1\n[faults.mix]\nnovel=1\n";

    #[test]
    fn minimal_scenario_takes_defaults() {
        let s = Scenario::from_toml_str(OK, "t.toml").unwrap();
        assert_eq!(s.pipeline, Pipeline::default());
        assert_eq!(s.faults.max_concurrent, 2);
        assert_eq!(s.eval_seeds(), 0..200);
        assert!((s.arrival_probability(FaultKind::Novel) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn builtin_default_parses() {
        let s = Scenario::builtin_default();
        assert_eq!(s.name, "default");
        assert!(FaultKind::ALL.iter().all(|k| s.arrival_probability(*k) > 0.0));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err("name='x'\nhorizon=10\nhorizn=3\n[faults]\nrate=0.1\n[faults.mix]\nnovel=1\n");
        assert!(e.contains("horizn") && e.contains("line 3"), "{e}");
        let e = err("name='x'\nhorizon=10\n[faults]\nrate=0.1\n[faults.mix]\ngremlins=1\n");
        assert!(e.contains("gremlins") && e.contains("line 6"), "{e}");
    }

    #[test]
    fn missing_and_mistyped_keys_are_named() {
        let e = err("name='x'\n[faults]\nrate=0.1\n[faults.mix]\nnovel=1\n");
        assert!(e.contains("horizon"), "{e}");
        let e = err("name='x'\nhorizon='ten'\n[faults]\nrate=0.1\n[faults.mix]\nnovel=1\n");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn out_of_range_values_name_the_key() {
        let e = err(&OK.replace("rate=0.1", "rate=1.5"));
        assert!(e.contains("`faults.rate`"), "{e}");
        let e = err(&OK.replace("novel=1", "novel=-1"));
        assert!(e.contains("`faults.mix.novel`"), "{e}");
        let e = err(&format!("{OK}[pipeline]\nunit_records=500\narrivals=2\ncapacity=[3,1]\nworkers=[1,2]\nbase_level=0\nbacklog_limit=10\nstep_seconds=60\n"));
        assert!(e.contains("`pipeline.capacity`"), "{e}");
        let e = err(&OK.replace("horizon=10", "horizon=0"));
        assert!(e.contains("`horizon`"), "{e}");
    }

    #[test]
    fn empty_file_is_an_error_not_a_default() {
        assert!(err("").contains("missing field"));
    }
}
