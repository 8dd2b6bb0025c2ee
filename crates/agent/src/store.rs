//! Model files: versioned JSON, written atomically, checked on load.
//!
//! A Q table is only meaningful with the encoder that numbered its states, the
//! action order of its columns and the reward it was trained on, so all of these
//! travel in the file and are checked when it is read. Writes go to a temporary
//! file in the same directory, are fsynced, then renamed over the target (and
//! the directory fsynced), so a crash leaves either the old model or the new one,
//! never half of one. Output is deterministic: the same training run gives the
//! same bytes.

use crate::baselines::RuleThresholds;
use crate::encoder::EncoderConfig;
use crate::glue_builtins::GlueSettings;
use crate::qlearn::{QParams, QTable};
use selfheal_core::{Action, Checked, ParamGuard, StateEncoder};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

/// Format tag of a Q-table model file.
pub const QTABLE_FORMAT: &str = "selfheal-qtable";
/// Format tag of a rules file.
pub const RULES_FORMAT: &str = "selfheal-rules";
/// Format tag of a Glue built-ins settings file.
pub const GLUE_BUILTINS_FORMAT: &str = "selfheal-glue-builtins";
/// Current version of every format.
pub const VERSION: u32 = 1;

/// What can go wrong reading or writing a model file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is empty.
    #[error("{path}: the file is empty; expected a {expected} model (was a write interrupted?)")]
    Empty {
        /// The file.
        path: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The JSON did not parse (truncated, corrupt, or not a model file).
    #[error("{path}: not a valid {expected} file: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What was expected.
        expected: &'static str,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A format tag or version this build cannot read.
    #[error("{path}: {message}")]
    Version {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The content does not fit this build (actions, encoder, bounds).
    #[error("{path}: {message}")]
    Mismatch {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Write `bytes` to `path` atomically: temp file + fsync + rename + dir fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let io = |source| StoreError::Io { path: path.display().to_string(), source };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // Persist the rename itself.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Provenance of a trained model. Deliberately holds no wall-clock time, so the
/// same seed gives the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeta {
    /// Training seed.
    pub seed: u64,
    /// Scenario name.
    pub scenario: String,
    /// Episodes trained.
    pub episodes: u64,
    /// Reward function version.
    pub reward_fn: String,
    /// Learning parameters.
    pub params: QParams,
    /// selfheal version that trained it.
    pub selfheal_version: String,
    /// In a sidecar checkpoint: the [`ModelFile::identity`] of the trained
    /// model it grew from by online updates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grown_from: Option<String>,
}

/// The encoder a table was trained with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderSection {
    /// Encoder id (`telemetry-v1`).
    pub id: String,
    /// Its configuration.
    pub config: EncoderConfig,
}

/// One visited state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRow {
    /// State id.
    pub id: u32,
    /// The state in words.
    pub desc: String,
    /// Visits per action.
    pub visits: Vec<u32>,
    /// Q per action.
    pub q: Vec<f64>,
    /// Online (live) updates per action, in a sidecar checkpoint; absent in a
    /// trained model. Never counted as training visits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<Vec<u32>>,
}

/// A Q-table model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// Always [`QTABLE_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Provenance.
    pub meta: ModelMeta,
    /// The encoder.
    pub encoder: EncoderSection,
    /// Column order of `q` and `visits`.
    pub actions: Vec<String>,
    /// Size of the encoder's state space.
    pub num_states: usize,
    /// Visited states (unvisited ones are all zero).
    pub states: Vec<StateRow>,
}

impl ModelFile {
    /// Package a trained table.
    pub fn new(meta: ModelMeta, encoder: &dyn StateEncoder, config: EncoderConfig, table: &QTable) -> ModelFile {
        let mut ids: Vec<selfheal_core::StateId> = table.visited_states().chain(table.online_states()).collect();
        ids.sort_unstable();
        ids.dedup();
        let states = ids
            .into_iter()
            .map(|s| {
                let online = table.online_visits(s);
                StateRow {
                    id: s,
                    desc: encoder.describe(s),
                    visits: table.visits(s).to_vec(),
                    q: table.row(s).to_vec(),
                    online: online.iter().any(|v| *v > 0).then(|| online.to_vec()),
                }
            })
            .collect();
        ModelFile {
            format: QTABLE_FORMAT.to_string(),
            version: VERSION,
            meta,
            encoder: EncoderSection { id: encoder.id().to_string(), config },
            actions: Action::ALL.iter().map(|a| a.name().to_string()).collect(),
            num_states: table.num_states(),
            states,
        }
    }

    /// Serialise (deterministic, pretty).
    pub fn to_json(&self) -> String {
        #[allow(clippy::expect_used)] // plain structs with string keys: serde_json cannot fail on them
        let mut s = serde_json::to_string_pretty(self).expect("model serialises");
        s.push('\n');
        s
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        write_atomic(path, self.to_json().as_bytes())
    }

    /// Read and check a model file.
    pub fn load(path: &Path) -> Result<ModelFile, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        ModelFile::from_json(&text, &path.display().to_string())
    }

    /// Parse and check model JSON; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<ModelFile, StoreError> {
        let path = origin.to_string();
        let value: serde_json::Value = parse(text, origin, "selfheal Q-table")?;
        check_header(&value, QTABLE_FORMAT, origin)?;
        let m: ModelFile = serde_json::from_value(value).map_err(|e| StoreError::Parse {
            path: path.clone(),
            expected: "selfheal Q-table",
            message: e.to_string(),
        })?;
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        if m.actions != names {
            return Err(StoreError::Mismatch {
                path,
                message: format!("action columns {:?} differ from this build's {:?}", m.actions, names),
            });
        }
        let kind: crate::EncoderKind = m.encoder.id.parse().map_err(|_| StoreError::Mismatch {
            path: path.clone(),
            message: format!(
                "encoder {:?} is unknown to this build (it reads {})",
                m.encoder.id,
                crate::EncoderKind::known()
            ),
        })?;
        let uses_detector = kind.uses_detector();
        if uses_detector != m.encoder.config.detector.is_some() {
            return Err(StoreError::Mismatch {
                path,
                message: "a detector-v1 or detector-v2 policy names its detector, and only it does".into(),
            });
        }
        m.params(origin)?;
        for row in &m.states {
            if row.id as usize >= m.num_states {
                return Err(StoreError::Mismatch {
                    path,
                    message: format!("state {} is out of bounds (num_states = {})", row.id, m.num_states),
                });
            }
            if row.q.len() != Action::COUNT || row.visits.len() != Action::COUNT {
                return Err(StoreError::Mismatch {
                    path,
                    message: format!("state {} has {} Q values, expected {}", row.id, row.q.len(), Action::COUNT),
                });
            }
            if let Some(online) = row.online.as_ref().filter(|o| o.len() != Action::COUNT) {
                return Err(StoreError::Mismatch {
                    path,
                    message: format!("state {} has {} online counts, expected {}", row.id, online.len(), Action::COUNT),
                });
            }
        }
        Ok(m)
    }

    /// The learning parameters (`meta.params`), checked; `origin` names the
    /// file in the error. [`ModelFile::load`] already refuses a file whose
    /// parameters break their bounds, so this fails only on a value changed
    /// since.
    ///
    /// # Errors
    /// [`StoreError::Mismatch`] naming `origin`, the parameter and its bound.
    pub fn params(&self, origin: &str) -> Result<Checked<QParams>, StoreError> {
        self.meta.params.check().map_err(|e| StoreError::Mismatch {
            path: origin.to_string(),
            message: format!("meta.params.{e}; retrain, or correct the value"),
        })
    }

    /// The Q table, checked against the encoder that will use it.
    pub fn table(&self, encoder: &dyn StateEncoder) -> Result<QTable, StoreError> {
        if encoder.num_states() != self.num_states {
            return Err(StoreError::Mismatch {
                path: "<model>".into(),
                message: format!(
                    "the model has {} states but its encoder configuration gives {}",
                    self.num_states,
                    encoder.num_states()
                ),
            });
        }
        let mut t = QTable::new(self.num_states);
        for row in &self.states {
            t.set_row(row.id, &row.q, &row.visits);
            if let Some(online) = &row.online {
                t.set_online(row.id, online);
            }
        }
        Ok(t)
    }

    /// What identifies a trained model: encoder, scenario, seed, episodes and
    /// state-space size (`detector-v2/default-train/seed=1/episodes=400000/states=43008`).
    /// A checkpoint names the identity of the model it grew from.
    pub fn identity(&self) -> String {
        format!(
            "{}/{}/seed={}/episodes={}/states={}",
            self.encoder.id, self.meta.scenario, self.meta.seed, self.meta.episodes, self.num_states
        )
    }
}

/// Provenance of calibrated rule thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesMeta {
    /// Scenario the thresholds were calibrated on.
    pub scenario: String,
    /// Training seeds used, `start..end`.
    pub seeds: String,
    /// Threshold combinations tried.
    pub candidates: u64,
    /// Mean return of the chosen thresholds on those seeds.
    pub mean_return: f64,
}

/// A file of calibrated rule thresholds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesFile {
    /// Always [`RULES_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Provenance.
    pub meta: RulesMeta,
    /// The thresholds.
    pub thresholds: RuleThresholds,
}

impl RulesFile {
    /// Package thresholds.
    pub fn new(meta: RulesMeta, thresholds: RuleThresholds) -> RulesFile {
        RulesFile { format: RULES_FORMAT.into(), version: VERSION, meta, thresholds }
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<(), StoreError> {
        #[allow(clippy::expect_used)] // plain structs with string keys: serde_json cannot fail on them
        let mut s = serde_json::to_string_pretty(self).expect("rules serialise");
        s.push('\n');
        write_atomic(path, s.as_bytes())
    }

    /// Read and check a rules file.
    pub fn load(path: &Path) -> Result<RulesFile, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        RulesFile::from_json(&text, &path.display().to_string())
    }

    /// Parse and check rules JSON.
    pub fn from_json(text: &str, origin: &str) -> Result<RulesFile, StoreError> {
        let value = parse(text, origin, "selfheal rules")?;
        check_header(&value, RULES_FORMAT, origin)?;
        serde_json::from_value(value).map_err(|e| StoreError::Parse {
            path: origin.to_string(),
            expected: "selfheal rules",
            message: e.to_string(),
        })
    }
}

/// A file of Glue job settings for the `glue-builtins` baseline
/// (`models/glue-builtins.json`): the settings, and in `why` the reason for
/// each value, so a reviewer reads the choice beside the number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlueBuiltinsFile {
    /// Always [`GLUE_BUILTINS_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Why each value was chosen, by field name (free text, not read by the policy).
    #[serde(default)]
    pub why: std::collections::BTreeMap<String, String>,
    /// The settings.
    pub settings: GlueSettings,
}

impl GlueBuiltinsFile {
    /// Read and check a settings file.
    pub fn load(path: &Path) -> Result<GlueBuiltinsFile, StoreError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| StoreError::Io { path: path.display().to_string(), source })?;
        GlueBuiltinsFile::from_json(&text, &path.display().to_string())
    }

    /// Parse and check settings JSON: format, version, and Glue's ranges.
    pub fn from_json(text: &str, origin: &str) -> Result<GlueBuiltinsFile, StoreError> {
        const WHAT: &str = "selfheal glue-builtins";
        let value = parse(text, origin, WHAT)?;
        check_header(&value, GLUE_BUILTINS_FORMAT, origin)?;
        let f: GlueBuiltinsFile = serde_json::from_value(value).map_err(|e| StoreError::Parse {
            path: origin.to_string(),
            expected: WHAT,
            message: e.to_string(),
        })?;
        f.settings.check().map_err(|e| StoreError::Mismatch { path: origin.to_string(), message: e.to_string() })?;
        Ok(f)
    }
}

fn parse(text: &str, origin: &str, expected: &'static str) -> Result<serde_json::Value, StoreError> {
    if text.trim().is_empty() {
        return Err(StoreError::Empty { path: origin.to_string(), expected });
    }
    serde_json::from_str(text).map_err(|e| StoreError::Parse {
        path: origin.to_string(),
        expected,
        message: e.to_string(),
    })
}

fn check_header(v: &serde_json::Value, format: &str, origin: &str) -> Result<(), StoreError> {
    let found = v.get("format").and_then(|f| f.as_str());
    if found != Some(format) {
        return Err(StoreError::Version {
            path: origin.to_string(),
            message: format!("format is {:?}, expected {format:?}", found.unwrap_or("<missing>")),
        });
    }
    match v.get("version").and_then(|x| x.as_u64()) {
        Some(n) if n == u64::from(VERSION) => Ok(()),
        Some(n) => Err(StoreError::Version {
            path: origin.to_string(),
            message: format!("{format} version {n} cannot be read by this build, which reads version {VERSION}; retrain or use a matching selfheal"),
        }),
        None => Err(StoreError::Version { path: origin.to_string(), message: "missing numeric `version`".into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encoder::TelemetryEncoder;
    use selfheal_core::EncodeState;

    fn sample() -> (ModelFile, TelemetryEncoder) {
        let cfg =
            EncoderConfig { worker_levels: vec![5, 10, 20, 40], base_level: 1, detector: None, driver_workers: 0 };
        let enc = TelemetryEncoder::new(cfg.clone());
        let mut t = QTable::new(enc.num_states());
        t.set_row(42, &[1.0, -2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.125], &[3, 1, 0, 0, 0, 0, 0, 0, 0, 2]);
        let meta = ModelMeta {
            seed: 7,
            scenario: "default".into(),
            episodes: 10,
            reward_fn: "reward-v1".into(),
            params: QParams::default(),
            selfheal_version: "test".into(),
            grown_from: None,
        };
        (ModelFile::new(meta, &enc, cfg, &t), enc)
    }

    #[test]
    fn load_refuses_params_out_of_bounds_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.json");
        let (mut m, _) = sample();
        m.meta.params.alpha_power = 0.3;
        m.save(&path).unwrap();
        let err = ModelFile::load(&path).unwrap_err();
        assert!(matches!(err, StoreError::Mismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.starts_with(&path.display().to_string()), "{text}");
        assert!(text.contains("meta.params.alpha_power must be in (0.5, 1]"), "{text}");
        // A value changed after loading is caught where the learner is built.
        let (mut m, _) = sample();
        m.meta.params.gamma = 1.5;
        let err = m.params("edited.json").unwrap_err().to_string();
        assert_eq!(err, "edited.json: meta.params.gamma must be in [0, 1]; retrain, or correct the value");
        assert_eq!(*sample().0.params("m.json").unwrap(), QParams::default());
    }

    #[test]
    fn save_load_round_trip_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        let (m, enc) = sample();
        m.save(&path).unwrap();
        let back = ModelFile::load(&path).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.table(&enc).unwrap().row(42)[9], 0.125);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn online_updates_are_kept_apart_from_training_visits() {
        use crate::qlearn::QLearner;
        use selfheal_core::{ActionMask, Transition};
        let (m, enc) = sample();
        let mut l = QLearner::from_table(m.table(&enc).unwrap(), m.params("m.json").unwrap(), 0);
        // A state the training never reached, updated 50 times online.
        for _ in 0..50 {
            l.update_online(&Transition {
                state: 7,
                action: Action::Restart,
                reward: -1.0,
                steps: 1,
                next_state: 7,
                next_mask: ActionMask::ALL,
                done: false,
            });
        }
        let t = l.table();
        assert_eq!(t.state_visits(7), 0, "online updates are not training visits");
        assert_eq!(t.online_visits(7)[Action::Restart.index()], 50);
        assert!(t.row(7)[Action::Restart.index()] < -0.5, "but they do move Q");
        let gate = crate::confidence::ConfidenceGate::default();
        let verdict = gate.check(t.row(7), t.visits(7), ActionMask::ALL, t.best(7, ActionMask::ALL));
        assert!(!verdict.is_confident(), "50 online updates do not lift the state over the gate");
        // The checkpoint keeps them apart too.
        let mut meta = m.meta.clone();
        meta.grown_from = Some(m.identity());
        let ck = ModelFile::new(meta, &enc, m.encoder.config.clone(), t);
        let back = ModelFile::from_json(&ck.to_json(), "ck.json").unwrap().table(&enc).unwrap();
        assert_eq!((back.state_visits(7), back.online_visits(7)[Action::Restart.index()]), (0, 50));
        assert_eq!(back.visits(42), m.table(&enc).unwrap().visits(42));
        assert!(ck.meta.grown_from.as_deref().unwrap().starts_with("telemetry-v1/default/seed=7/episodes=10/"));
        // A malformed online array is refused, not a panic.
        let mut v: serde_json::Value = serde_json::from_str(&ck.to_json()).unwrap();
        v["states"][0]["online"] = serde_json::json!([50]);
        let err = ModelFile::from_json(&v.to_string(), "ck.json").unwrap_err().to_string();
        assert!(err.contains("online counts"), "{err}");
    }

    #[test]
    fn corrupt_truncated_empty_and_foreign_files_are_refused_clearly() {
        let (m, _) = sample();
        let json = m.to_json();
        let e = ModelFile::from_json("", "m.json").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = ModelFile::from_json(&json[..json.len() / 2], "m.json").unwrap_err().to_string();
        assert!(e.contains("not a valid") && e.contains("line"), "{e}");
        let e =
            ModelFile::from_json("{\"format\": \"something-else\", \"version\": 1}", "m.json").unwrap_err().to_string();
        assert!(e.contains("format is \"something-else\""), "{e}");
        let e =
            ModelFile::from_json(&json.replace("\"version\": 1", "\"version\": 2"), "m.json").unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("reads version 1"), "{e}");
        let e =
            ModelFile::from_json(&json.replace("\"id\": 42", "\"id\": 99999999"), "m.json").unwrap_err().to_string();
        assert!(e.contains("out of bounds"), "{e}");
        let e = ModelFile::from_json(&json.replace("\"escalate\"", "\"page\""), "m.json").unwrap_err().to_string();
        assert!(e.contains("action columns"), "{e}");
        let e = ModelFile::from_json(&json.replace("0.125", "NaN"), "m.json").unwrap_err().to_string();
        assert!(e.contains("not a valid"), "{e}");
    }

    #[test]
    fn shipped_glue_settings_parse_and_say_why_for_every_value() {
        let text = include_str!("../../../models/glue-builtins.json");
        let f = GlueBuiltinsFile::from_json(text, "glue-builtins.json").unwrap();
        let fields = serde_json::to_value(f.settings).unwrap();
        for key in fields.as_object().unwrap().keys() {
            assert!(f.why.get(key).is_some_and(|w| w.len() > 40), "no reason given for {key}");
        }
        let e =
            GlueBuiltinsFile::from_json(&text.replace("\"timeout_minutes\": 10,", "\"timeout_minutes\": 0,"), "g.json")
                .unwrap_err()
                .to_string();
        assert!(e.contains("g.json") && e.contains("timeout_minutes 0"), "{e}");
        let e = GlueBuiltinsFile::from_json(&text.replace("\"max_retries\": 3", "\"max_retry\": 3"), "g.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_retry"), "{e}");
    }

    #[test]
    fn encoder_with_other_levels_is_refused() {
        let (m, _) = sample();
        let other = TelemetryEncoder::new(EncoderConfig {
            worker_levels: vec![2, 4],
            base_level: 0,
            detector: None,
            driver_workers: 0,
        });
        assert!(m.table(&other).unwrap_err().to_string().contains("states"));
    }
}
