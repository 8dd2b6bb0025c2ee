//! Policy deltas and the merge rule, pure.
//!
//! Why deltas and not whole tables: sidecars of different pipelines learn
//! online from their own windows; shipping their whole tables would make the
//! merge guess what each one changed. A delta says it exactly: per visited
//! (state, action) cell, how many online updates the replica made since its
//! last push (`visits`, Δn) and the Q value it reached (`q`).
//!
//! Merge rule (visit-weighted averaging): for each cell with base value `q₀`,
//! base weight `w₀ = training visits + online visits` and deltas `(Δnᵢ, qᵢ)`,
//!
//! ```text
//! q = (w₀·q₀ + Σ Δnᵢ·qᵢ) / (w₀ + Σ Δnᵢ)        online += Σ Δnᵢ
//! ```
//!
//! A cell no delta touched keeps its value; training visits never change
//! (the confidence gate reads them, and online updates must not talk a
//! state over it; see `selfheal_agent::QTable`). The rule is commutative and
//! associative up to float rounding, so the order of deltas and how they are
//! split between merges do not matter.

use selfheal_agent::store::StateRow;
use selfheal_agent::{ModelFile, QTable};
use selfheal_core::{Action, StateEncoder, StateId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Format tag of a delta file.
pub const DELTA_FORMAT: &str = "selfheal-policy-delta";

/// One replica's online learning since its last push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDelta {
    /// Always [`DELTA_FORMAT`].
    pub format: String,
    /// The replica that learned it.
    pub replica: String,
    /// The policy version the replica was running.
    pub base_version: u64,
    /// Touched states, ascending id.
    pub rows: Vec<DeltaRow>,
}

/// One state's delta.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaRow {
    /// State id.
    pub id: StateId,
    /// The state in words.
    pub desc: String,
    /// Online updates per action since the last push (Δn), in `Action::ALL` order.
    pub visits: Vec<u32>,
    /// The replica's Q per action after those updates.
    pub q: Vec<f64>,
}

/// Why a delta or a merge was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    /// A delta that does not fit the policy or is not well formed.
    #[error("delta of replica {replica:?}: {message}")]
    BadDelta {
        /// Its replica.
        replica: String,
        /// What is wrong.
        message: String,
    },
    /// Models that cannot be folded together (different encoder, detector,
    /// state space or action columns).
    #[error("model {index} does not match model 0: {message}")]
    Mismatch {
        /// Its position in the input (0-based).
        index: usize,
        /// What differs.
        message: String,
    },
    /// No models to merge.
    #[error("no models to merge")]
    Empty,
}

impl PolicyDelta {
    /// The delta from `base` (the table at the last push) to `now`: every
    /// cell whose online count grew. Training visits are ignored.
    ///
    /// # Errors
    /// [`MergeError::BadDelta`] when the tables differ in size or an online
    /// count went down (`now` does not descend from `base`).
    pub fn between(
        replica: &str,
        base_version: u64,
        base: &QTable,
        now: &QTable,
        encoder: &dyn StateEncoder,
    ) -> Result<PolicyDelta, MergeError> {
        let bad = |message: String| MergeError::BadDelta { replica: replica.to_string(), message };
        if base.num_states() != now.num_states() {
            return Err(bad(format!("tables of {} and {} states", base.num_states(), now.num_states())));
        }
        let mut rows = Vec::new();
        for s in now.online_states() {
            let (b, n) = (base.online_visits(s), now.online_visits(s));
            let mut visits = Vec::with_capacity(Action::COUNT);
            for (i, (b, n)) in b.iter().zip(n).enumerate() {
                let d = n.checked_sub(*b).ok_or_else(|| {
                    bad(format!(
                        "state {s} action {i}: online count fell from {b} to {n}; push from the table you last pushed"
                    ))
                })?;
                visits.push(d);
            }
            if visits.iter().any(|d| *d > 0) {
                rows.push(DeltaRow { id: s, desc: encoder.describe(s), visits, q: now.row(s).to_vec() });
            }
        }
        Ok(PolicyDelta { format: DELTA_FORMAT.to_string(), replica: replica.to_string(), base_version, rows })
    }

    /// Online updates it carries (Σ Δn).
    pub fn total_visits(&self) -> u64 {
        self.rows.iter().flat_map(|r| &r.visits).map(|v| u64::from(*v)).sum()
    }

    /// Check it against a policy of `num_states` states.
    ///
    /// # Errors
    /// [`MergeError::BadDelta`] naming the first problem.
    pub fn check(&self, num_states: usize) -> Result<(), MergeError> {
        let bad = |message: String| MergeError::BadDelta { replica: self.replica.clone(), message };
        if self.format != DELTA_FORMAT {
            return Err(bad(format!("format {:?} is not {DELTA_FORMAT:?}", self.format)));
        }
        for r in &self.rows {
            if r.id as usize >= num_states {
                return Err(bad(format!("state {} is out of bounds (num_states = {num_states})", r.id)));
            }
            if r.visits.len() != Action::COUNT || r.q.len() != Action::COUNT {
                return Err(bad(format!(
                    "state {} has {} counts and {} Q values, expected {}",
                    r.id,
                    r.visits.len(),
                    r.q.len(),
                    Action::COUNT
                )));
            }
            if let Some(q) = r.q.iter().find(|q| !q.is_finite()) {
                return Err(bad(format!("state {} has a non-finite Q value {q}", r.id)));
            }
        }
        Ok(())
    }
}

/// Fold `deltas` into `base` by the visit-weighted rule of this module.
/// The result keeps `base`'s meta, encoder and state space; its rows stay
/// sorted by id.
///
/// # Errors
/// [`MergeError::BadDelta`] when any delta fails [`PolicyDelta::check`]
/// (then nothing is folded).
pub fn merge(base: &ModelFile, deltas: &[PolicyDelta]) -> Result<ModelFile, MergeError> {
    for d in deltas {
        d.check(base.num_states)?;
    }
    let mut rows: BTreeMap<StateId, StateRow> = base.states.iter().map(|r| (r.id, r.clone())).collect();
    // Per cell: (Σ Δn, Σ Δn·q).
    let mut sums: BTreeMap<(StateId, usize), (u64, f64)> = BTreeMap::new();
    for d in deltas {
        for r in &d.rows {
            rows.entry(r.id).or_insert_with(|| StateRow {
                id: r.id,
                desc: r.desc.clone(),
                visits: vec![0; Action::COUNT],
                q: vec![0.0; Action::COUNT],
                online: None,
            });
            for (a, (dn, q)) in r.visits.iter().zip(&r.q).enumerate() {
                if *dn > 0 {
                    let e = sums.entry((r.id, a)).or_insert((0, 0.0));
                    e.0 += u64::from(*dn);
                    e.1 += f64::from(*dn) * q;
                }
            }
        }
    }
    for ((s, a), (n, weighted)) in sums {
        #[allow(clippy::expect_used)] // the loop above inserted a row for every state a delta names.
        let row = rows.get_mut(&s).expect("every delta state has a row");
        let online = row.online.get_or_insert_with(|| vec![0; Action::COUNT]);
        let w0 = f64::from(row.visits[a]) + f64::from(online[a]);
        row.q[a] = weighted_mean(w0, row.q[a], n as f64, weighted);
        online[a] = u32::try_from(u64::from(online[a]) + n).unwrap_or(u32::MAX);
    }
    Ok(ModelFile { states: rows.into_values().collect(), ..base.clone() })
}

/// The merge rule of this module for one cell: `(w₀·q₀ + Σ wᵢqᵢ) / (w₀ + Σ wᵢ)`,
/// given `w₀`, `q₀`, `Σ wᵢ` and `Σ wᵢqᵢ`; `q₀` when no weight at all.
fn weighted_mean(w0: f64, q0: f64, n: f64, weighted: f64) -> f64 {
    if w0 + n > 0.0 {
        (w0 * q0 + weighted) / (w0 + n)
    } else {
        q0
    }
}

/// Fold whole trained models (shards of one training run, `selfheal train
/// --shard I/N`) into one by the same visit-weighted rule: per (state,
/// action) cell, `q = Σ nᵢ·qᵢ / Σ nᵢ` over the models' training visits
/// `nᵢ`, and visits (training and online) are summed, saturating at
/// `u32::MAX`. A cell no model visited keeps model 0's value. The result
/// keeps model 0's meta with `episodes` summed.
///
/// # Errors
/// [`MergeError::Empty`] without models; [`MergeError::Mismatch`] when a
/// model's encoder id, encoder configuration (which carries the detector
/// fingerprint), state-space size or action columns differ from model 0's.
pub fn merge_models(models: &[ModelFile]) -> Result<ModelFile, MergeError> {
    let first = models.first().ok_or(MergeError::Empty)?;
    for (index, m) in models.iter().enumerate().skip(1) {
        let mismatch = |message: String| MergeError::Mismatch { index, message };
        if m.encoder.id != first.encoder.id {
            return Err(mismatch(format!("encoder {:?} is not {:?}", m.encoder.id, first.encoder.id)));
        }
        if m.encoder.config.detector != first.encoder.config.detector {
            return Err(mismatch(format!(
                "detector {:?} is not {:?} (fitted on a different detector model)",
                m.encoder.config.detector, first.encoder.config.detector
            )));
        }
        if m.encoder.config != first.encoder.config {
            return Err(mismatch("encoder configuration differs (worker levels or base level)".to_string()));
        }
        if m.num_states != first.num_states || m.actions != first.actions {
            return Err(mismatch(format!(
                "{} states × {} actions is not {} × {}",
                m.num_states,
                m.actions.len(),
                first.num_states,
                first.actions.len()
            )));
        }
    }
    // Per cell: (Σ n, Σ n·q, Σ online); and the first row seen per state.
    let mut rows: BTreeMap<StateId, StateRow> = BTreeMap::new();
    let mut sums: BTreeMap<(StateId, usize), (u64, f64, u64)> = BTreeMap::new();
    for m in models {
        for r in &m.states {
            rows.entry(r.id).or_insert_with(|| r.clone());
            for a in 0..Action::COUNT.min(r.visits.len()).min(r.q.len()) {
                let e = sums.entry((r.id, a)).or_insert((0, 0.0, 0));
                e.0 += u64::from(r.visits[a]);
                e.1 += f64::from(r.visits[a]) * r.q[a];
                e.2 += r.online.as_ref().and_then(|o| o.get(a)).map_or(0, |o| u64::from(*o));
            }
        }
    }
    for ((s, a), (n, weighted, online)) in sums {
        #[allow(clippy::expect_used)] // the loop above inserted a row for every state it summed.
        let row = rows.get_mut(&s).expect("every summed state has a row");
        row.q[a] = weighted_mean(0.0, row.q[a], n as f64, weighted);
        row.visits[a] = u32::try_from(n).unwrap_or(u32::MAX);
        if online > 0 || row.online.is_some() {
            row.online.get_or_insert_with(|| vec![0; Action::COUNT])[a] = u32::try_from(online).unwrap_or(u32::MAX);
        }
    }
    let mut meta = first.meta.clone();
    meta.episodes = models.iter().map(|m| m.meta.episodes).sum();
    Ok(ModelFile { meta, states: rows.into_values().collect(), ..first.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_agent::{EncoderConfig, ModelMeta, QParams, TelemetryEncoder};
    use selfheal_core::EncodeState;

    fn config() -> EncoderConfig {
        EncoderConfig { worker_levels: vec![2, 4, 8], base_level: 1, detector: None, driver_workers: 0 }
    }

    fn encoder() -> TelemetryEncoder {
        TelemetryEncoder::new(config())
    }

    fn base() -> ModelFile {
        let e = encoder();
        let mut t = QTable::new(e.num_states());
        let mut q = vec![0.0; Action::COUNT];
        let mut v = vec![0; Action::COUNT];
        q[0] = 1.0;
        v[0] = 3;
        q[1] = -2.0;
        v[1] = 1;
        t.set_row(5, &q, &v);
        let meta = ModelMeta {
            seed: 1,
            scenario: "unit".into(),
            episodes: 10,
            reward_fn: "v1".into(),
            params: QParams::default(),
            selfheal_version: "test".into(),
            grown_from: None,
        };
        ModelFile::new(meta, &e, config(), &t)
    }

    fn delta(replica: &str, s: StateId, a: usize, dn: u32, q: f64) -> PolicyDelta {
        let mut visits = vec![0; Action::COUNT];
        let mut qs = vec![0.0; Action::COUNT];
        visits[a] = dn;
        qs[a] = q;
        PolicyDelta {
            format: DELTA_FORMAT.into(),
            replica: replica.into(),
            base_version: 1,
            rows: vec![DeltaRow { id: s, desc: format!("s{s}"), visits, q: qs }],
        }
    }

    fn cell(m: &ModelFile, s: StateId, a: usize) -> (f64, u32, u32) {
        let r = m.states.iter().find(|r| r.id == s).expect("row");
        (r.q[a], r.visits[a], r.online.as_ref().map_or(0, |o| o[a]))
    }

    #[test]
    fn the_merge_is_visit_weighted() {
        let b = base();
        // Cell (5,0): q0 = 1, w0 = 3. Deltas: 1 update at q = 5, 2 updates at q = -1.
        let m = merge(&b, &[delta("a", 5, 0, 1, 5.0), delta("b", 5, 0, 2, -1.0)]).unwrap();
        let (q, visits, online) = cell(&m, 5, 0);
        assert!((q - (3.0 * 1.0 + 5.0 - 2.0) / 6.0).abs() < 1e-12, "q = {q}");
        assert_eq!((visits, online), (3, 3), "training visits kept, online += 3");
        // Untouched cells keep their values.
        assert_eq!(cell(&m, 5, 1), (-2.0, 1, 0));
        // A state the base never saw gets the deltas' average.
        let m = merge(&b, &[delta("a", 9, 2, 1, 4.0), delta("b", 9, 2, 3, 0.0)]).unwrap();
        assert_eq!(cell(&m, 9, 2), (1.0, 0, 4));
        assert_eq!(m.states.iter().map(|r| r.id).collect::<Vec<_>>(), vec![5, 9], "rows stay sorted");
    }

    #[test]
    fn shard_models_merge_visit_weighted_and_sum_visits() {
        let a = base();
        let mut b = base();
        // Model b: state 5 action 0 at q = 4 with 1 visit; a new state 9.
        b.states[0].q[0] = 4.0;
        b.states[0].visits[0] = 1;
        b.states.push(StateRow {
            id: 9,
            desc: "s9".into(),
            visits: vec![2; Action::COUNT],
            q: vec![0.5; Action::COUNT],
            online: None,
        });
        let m = merge_models(&[a.clone(), b]).unwrap();
        assert_eq!(cell(&m, 5, 0), ((3.0 * 1.0 + 4.0) / 4.0, 4, 0));
        assert_eq!(cell(&m, 5, 1), (-2.0, 2, 0), "same value, visits summed");
        assert_eq!(cell(&m, 9, 3), (0.5, 2, 0));
        assert_eq!(m.meta.episodes, 20);
        let mut other = base();
        other.encoder.id = "detector-v2".into();
        assert!(matches!(merge_models(&[a.clone(), other]), Err(MergeError::Mismatch { index: 1, .. })));
        let mut wider = base();
        wider.encoder.config.worker_levels.push(16);
        assert!(merge_models(&[a, wider]).unwrap_err().to_string().contains("configuration"));
        assert_eq!(merge_models(&[]), Err(MergeError::Empty));
    }

    #[test]
    fn merging_in_two_steps_equals_merging_at_once() {
        let b = base();
        let ds = [delta("a", 5, 0, 1, 5.0), delta("b", 5, 0, 2, -1.0), delta("c", 5, 0, 4, 2.5)];
        let once = merge(&b, &ds).unwrap();
        let twice = merge(&merge(&b, &ds[..1]).unwrap(), &ds[1..]).unwrap();
        let (q1, _, n1) = cell(&once, 5, 0);
        let (q2, _, n2) = cell(&twice, 5, 0);
        assert_eq!(n1, n2);
        assert!((q1 - q2).abs() < 1e-12, "{q1} vs {q2}");
    }

    #[test]
    fn a_bad_delta_folds_nothing() {
        let b = base();
        let mut nan = delta("a", 5, 0, 1, f64::NAN);
        assert!(
            matches!(merge(&b, &[delta("ok", 5, 0, 1, 1.0), nan.clone()]), Err(MergeError::BadDelta { replica, .. }) if replica == "a")
        );
        nan.rows[0].q[0] = 1.0;
        nan.rows[0].visits.pop();
        assert!(merge(&b, &[nan]).unwrap_err().to_string().contains("counts"));
        let far = delta("z", b.num_states as StateId, 0, 1, 1.0);
        assert!(merge(&b, &[far]).unwrap_err().to_string().contains("out of bounds"));
        let mut wrong = delta("w", 5, 0, 1, 1.0);
        wrong.format = "other".into();
        assert!(merge(&b, &[wrong]).is_err());
    }

    #[test]
    fn between_takes_the_online_growth_only() {
        let e = encoder();
        let mut base = QTable::new(e.num_states());
        let mut online = vec![0; Action::COUNT];
        online[1] = 2;
        base.set_online(7, &online);
        let mut now = base.clone();
        online[1] = 5;
        online[3] = 1;
        now.set_online(7, &online);
        now.set_row(7, &[0.5; Action::COUNT], &[9; Action::COUNT]);
        now.set_online(8, &{
            let mut o = vec![0; Action::COUNT];
            o[0] = 1;
            o
        });
        let d = PolicyDelta::between("r1", 4, &base, &now, &e).unwrap();
        assert_eq!(d.rows.iter().map(|r| r.id).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(d.rows[0].visits[1], 3);
        assert_eq!(d.rows[0].visits[3], 1);
        assert_eq!(d.rows[0].q, vec![0.5; Action::COUNT]);
        assert_eq!(d.total_visits(), 5);
        assert_eq!(d.base_version, 4);
        // Backwards: refused.
        assert!(PolicyDelta::between("r1", 4, &now, &base, &e).is_err());
        // No growth: an empty delta.
        assert!(PolicyDelta::between("r1", 4, &now, &now, &e).unwrap().rows.is_empty());
    }
}
