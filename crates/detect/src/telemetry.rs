//! The pipeline detector: an isolation forest over [`TelemetryFeatures`] of
//! healthy windows, a threshold calibrated to a target false-alarm rate, and
//! failure signatures over the anomalous windows.
//!
//! Before the forest sees a window, each feature is robustly scaled against the
//! healthy baseline (median and MAD, floored) and squashed, and one feature
//! across all metrics is added: the largest scaled deviation. Without it an
//! axis-parallel forest over 13 features isolates a fault that shows on a single
//! metric (a hot partition's skew) only in the few splits that happen to cut that
//! metric, and scores it like a healthy outlier; with it, one cut suffices.
//!
//! Model files hold the forest in a sparse form (only the non-zero coordinates
//! of each split's normal, with its intercept), which scores exactly like the
//! dense form the crate serialises (a zero coordinate contributes nothing) at a
//! fraction of the size. Reading and writing files is the caller's business: this
//! module turns models into JSON text and back, and checks what it reads.
//!
//! **Rebaselining** ([`DetectorModel::rebaseline`], issue 14). The forest is
//! grown on the simulator's telemetry, but a real Glue job publishes fewer
//! metrics at its own scale (an hour-long run, a million records a minute),
//! so its ordinary windows sit hundreds of deviations from the simulator's
//! median and the forest flags nearly all of them. The forest only ever sees
//! *scaled* features (robust z-scores, squashed), so moving the baseline
//! (median, scale) to the pipeline's own healthy history, and the threshold to
//! the scores of those windows, puts the job's normal where the forest's
//! normal is while keeping what the forest learned about the *shape* of a
//! fault (one metric far off, several at once). The forest and the signatures
//! are kept, so a policy trained on the base detector's signatures still
//! applies: such a detector pairs with policies by its base's fingerprint
//! ([`DetectorModel::policy_fingerprint`]). The history has no simulator
//! labels, so healthy windows are chosen by what the pipeline says about
//! itself: windows at and just before a failed run's end are dropped, then
//! windows far (|z| > [`OUTLIER_Z`]) from a first robust estimate.

use crate::features::{squash, TelemetryFeatures, TELEMETRY_FEATURES, TELEMETRY_FEATURE_INPUTS};
use crate::flat::FlatForest;
use crate::forest::{ForestError, ForestParams, ForestRepr, NodeRepr, TreeRepr};
use crate::signature::{SignatureError, Signatures};
use selfheal_core::{Checked, ParamGuard};
use selfheal_core::{Detection, Detector, Metric, Telemetry};
use serde::{Deserialize, Serialize};

/// Format tag of detector model files.
pub const DETECTOR_FORMAT: &str = "selfheal-detector";
/// Current version.
pub const DETECTOR_VERSION: u32 = 1;

/// Features the signatures cluster on: everything but latency and backlog,
/// which grow with an incident's age rather than tell its kind (they enter the
/// agent's state as buckets instead).
pub const SIGNATURE_FEATURES: [usize; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12];

/// Errors of fitting or reading a detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    /// Growing the forest failed.
    #[error(transparent)]
    Forest(#[from] ForestError),
    /// Fitting signatures failed.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The history has too few healthy windows to rebaseline on.
    #[error(
        "only {healthy} healthy windows in the history of {read} windows; rebaselining needs at least {needed} \
         ({failed_runs} excluded at or before a failed run's end, {outliers} excluded as outliers (|z| > {OUTLIER_Z} on \
         some metric), {empty} with none of the detector's metrics); give a longer history"
    )]
    TooFewHealthy {
        /// Healthy windows left.
        healthy: usize,
        /// Healthy windows needed ([`MIN_HEALTHY_WINDOWS`]).
        needed: usize,
        /// Windows read.
        read: usize,
        /// Excluded around failed runs.
        failed_runs: usize,
        /// Excluded as outliers.
        outliers: usize,
        /// Excluded for carrying no detector input.
        empty: usize,
    },
    /// A rebaselining parameter is out of range.
    #[error("{0}")]
    Params(String),
    /// The file is not a readable detector model.
    #[error("{origin}: {message}")]
    File {
        /// Where it came from.
        origin: String,
        /// What is wrong.
        message: String,
    },
}

/// A split or leaf in sparse form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SparseNode {
    /// Leaf with its sample count.
    Leaf(usize),
    /// Split: `(coordinate, n, p)` of the non-zero coordinates, and children.
    Split(Vec<(usize, f64, f64)>, Box<SparseNode>, Box<SparseNode>),
}

/// A forest in sparse form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SparseForest {
    /// Dimension of the points.
    pub dims: usize,
    /// Path-length normaliser c(sample_size).
    pub c: f64,
    /// Trees.
    pub trees: Vec<SparseNode>,
}

impl SparseForest {
    /// From the crate's representation.
    pub fn from_repr(r: &ForestRepr) -> SparseForest {
        fn node(n: &NodeRepr) -> SparseNode {
            match n {
                NodeRepr::Ex { num_samples } => SparseNode::Leaf(*num_samples),
                NodeRepr::In { left, right, n, p } => SparseNode::Split(
                    (0..n.len()).filter(|i| n[*i] != 0.0).map(|i| (i, n[i], p[i])).collect(),
                    Box::new(node(left)),
                    Box::new(node(right)),
                ),
            }
        }
        SparseForest { dims: r.dims(), c: r.avg_path_length_c, trees: r.trees.iter().map(|t| node(&t.root)).collect() }
    }

    /// Into the crate's representation (zero coordinates get intercept 0, which
    /// cannot change a score).
    pub fn to_repr(&self) -> ForestRepr {
        fn node(n: &SparseNode, dims: usize) -> NodeRepr {
            match n {
                SparseNode::Leaf(s) => NodeRepr::Ex { num_samples: *s },
                SparseNode::Split(nz, l, r) => {
                    let (mut nv, mut pv) = (vec![0.0; dims], vec![0.0; dims]);
                    for (i, n, p) in nz {
                        nv[*i] = *n;
                        pv[*i] = *p;
                    }
                    NodeRepr::In { left: Box::new(node(l, dims)), right: Box::new(node(r, dims)), n: nv, p: pv }
                }
            }
        }
        ForestRepr {
            avg_path_length_c: self.c,
            trees: self.trees.iter().map(|t| TreeRepr { root: node(t, self.dims) }).collect(),
        }
    }
}

/// Provenance of a detector model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorMeta {
    /// Scenario its windows came from.
    pub scenario: String,
    /// Healthy windows the forest was grown on.
    pub healthy_windows: usize,
    /// Anomalous windows the signatures were fitted on.
    pub anomalous_windows: usize,
    /// Target false-alarm rate on healthy windows.
    pub false_alarm_rate: f64,
    /// Forest parameters (including the seed).
    pub forest: ForestParams,
    /// Seed of the signatures' k-means.
    pub signature_seed: u64,
    /// Set when the baseline (median, scale, threshold) was re-estimated on
    /// one pipeline's own history ([`DetectorModel::rebaseline`]); absent in
    /// a detector fitted on the simulator (and in files older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<Baseline>,
    /// Per labelled fault kind, how many of its windows the detector flags
    /// (`selfheal fit-detector`): a kind it never flags is a fault this
    /// detector cannot see. Empty in files older than it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub coverage: Vec<Coverage>,
}

/// How many windows of one fault kind a detector flags.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Coverage {
    /// Fault kind (`FaultKind::name`).
    pub kind: String,
    /// Windows in which the kind was active.
    pub windows: usize,
    /// Of those, the windows flagged anomalous.
    pub flagged: usize,
}

impl Coverage {
    /// Flagged share, 0..1 (0 for a kind without windows).
    pub fn share(&self) -> f64 {
        if self.windows == 0 {
            0.0
        } else {
            self.flagged as f64 / self.windows as f64
        }
    }
}

/// Where a rebaselined detector's baseline came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// The history, e.g. `history:runs.jsonl` or `cloudwatch:orders-etl 1440 min`.
    pub source: String,
    /// The pipeline whose history it is.
    pub pipeline: String,
    /// Windows of the pipeline read.
    pub windows: usize,
    /// Healthy windows the baseline and threshold were estimated on.
    pub healthy_windows: usize,
    /// Windows excluded, by reason.
    pub excluded: Excluded,
    /// Names of the detector's input metrics present in the history, in
    /// [`Metric::ALL`] order: the metric set this detector is fitted for.
    pub metrics: Vec<String>,
    /// [`DetectorModel::policy_fingerprint`] of the detector rebaselined
    /// (its forest and signatures are this one's).
    pub base_fingerprint: String,
}

/// Windows of a history left out of a baseline, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Excluded {
    /// In, or just before, a window where a Glue job run ended failed
    /// (`selfheal.glue.runsFailed*` > 0 there or in the next window).
    pub failed_runs: usize,
    /// Some present feature more than [`OUTLIER_Z`] robust deviations from
    /// the first estimate.
    pub outliers: usize,
    /// None of the detector's input metrics present (between batch runs).
    pub empty: usize,
}

/// How to rebaseline a detector.
#[derive(Clone, Debug)]
pub struct RebaselineParams {
    /// Share of the pipeline's healthy windows allowed over the threshold, in (0, 0.5).
    pub false_alarm_rate: f64,
    /// Where the history came from (recorded in [`Baseline::source`]).
    pub source: String,
    /// The pipeline (recorded in [`Baseline::pipeline`]).
    pub pipeline: String,
}

/// Fewest healthy windows a baseline is estimated on: a median and MAD of
/// fewer are one noisy minute away from another, and the threshold (a tail
/// quantile) would rest on one or two windows.
pub const MIN_HEALTHY_WINDOWS: usize = 20;

/// Robust z-score beyond which a history window is an outlier, not part of the
/// baseline: far enough that ordinary noise (|z| < 4 for any sensible
/// distribution) never crosses it, near enough that an incident's minutes do.
pub const OUTLIER_Z: f64 = 6.0;

/// A detector model file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorModel {
    /// Always [`DETECTOR_FORMAT`].
    pub format: String,
    /// Format version.
    pub version: u32,
    /// Provenance.
    pub meta: DetectorMeta,
    /// Feature names, in order.
    pub features: Vec<String>,
    /// Healthy median of each feature.
    pub median: Vec<f64>,
    /// Healthy robust scale of each feature (1.4826 MAD, floored).
    pub scale: Vec<f64>,
    /// Score at or above which a window is anomalous.
    pub threshold: f64,
    /// Indices of the features signatures cluster on.
    pub signature_features: Vec<usize>,
    /// The signatures.
    pub signatures: Signatures,
    /// The forest.
    pub forest: SparseForest,
}

/// How to fit a detector.
#[derive(Clone, Copy, Debug)]
pub struct FitParams {
    /// Forest growth.
    pub forest: ForestParams,
    /// Share of healthy windows allowed over the threshold.
    pub false_alarm_rate: f64,
    /// Range of k tried for the signatures.
    pub k_min: usize,
    /// Range of k tried for the signatures.
    pub k_max: usize,
    /// k-means seed.
    pub signature_seed: u64,
}

/// A detector-fit parameter out of its bounds: the parameter's name and the
/// bound (the CLI flag of the same name with dashes).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{param} must be {bound}")]
pub struct InvalidFitParams {
    /// The parameter, e.g. `false_alarm_rate`.
    pub param: &'static str,
    /// The bound it breaks, e.g. `in (0, 0.5)`.
    pub bound: &'static str,
}

impl ParamGuard for FitParams {
    type Error = InvalidFitParams;

    /// Check the bounds a fit needs: a false-alarm rate in (0, 0.5) (a
    /// threshold at or past the median flags half the healthy windows),
    /// `2 <= k_min <= k_max` (silhouette needs two clusters), a forest of at
    /// least one tree over samples of at least two windows.
    ///
    /// # Errors
    /// The first parameter out of its bounds, naming it and the bound.
    fn validate(&self) -> Result<(), InvalidFitParams> {
        let checks = [
            (self.false_alarm_rate > 0.0 && self.false_alarm_rate < 0.5, "false_alarm_rate", "in (0, 0.5)"),
            (self.k_min >= 2, "k_min", ">= 2"),
            (self.k_min <= self.k_max, "k_max", ">= k_min"),
            (self.forest.n_trees >= 1, "forest.n_trees", ">= 1"),
            (self.forest.sample_size >= 2, "forest.sample_size", ">= 2"),
        ];
        match checks.into_iter().find(|(ok, _, _)| !ok) {
            Some((_, param, bound)) => Err(InvalidFitParams { param, bound }),
            None => Ok(()),
        }
    }
}

/// Floor of a feature's robust scale: features are O(1) (ratios, logs), so a
/// deviation of 0.02 is the smallest that counts as one unit.
pub const SCALE_FLOOR: f64 = 0.02;

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn median(v: Vec<f64>) -> f64 {
    quantile(v, 0.5)
}

/// The forest's input for features `x`: scaled, squashed deviations plus their maximum.
pub fn scaled(x: &[f64], median: &[f64], scale: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::with_capacity(x.len() + 1);
    let mut top: f64 = 0.0;
    for i in 0..x.len() {
        // Bounded, so an extreme value (or a tiny scale) stays a finite,
        // very large deviation rather than an infinity the forest cannot rank.
        // (A NaN feature, from a nonsense input such as a negative elapsed
        // time, is no evidence either way: the baseline.)
        let z = ((x[i] - median[i]) / scale[i]).clamp(-1e12, 1e12);
        let z = if z.is_nan() { 0.0 } else { z };
        top = top.max(z.abs());
        out.push(squash(z));
    }
    out.push(squash(top));
    out
}

/// The features of `t`, a feature with an absent input read at the healthy
/// baseline `median` (z = 0): a metric the pipeline does not publish is no
/// evidence either way, where reading it as 0 put an ordinary Glue window
/// hundreds of deviations from a baseline that had it.
pub fn impute(t: &Telemetry, median: &[f64]) -> [f64; TelemetryFeatures::DIMS] {
    let mut raw = TelemetryFeatures::extract(t);
    for (j, present) in TelemetryFeatures::present(t).into_iter().enumerate() {
        if !present {
            raw[j] = median[j];
        }
    }
    raw
}

/// Median and robust scale (1.4826 MAD, floored at [`SCALE_FLOOR`]) of each
/// feature over the rows that have its inputs; a feature no row has sits at
/// 0 with the floor scale.
fn robust_baseline(
    raw: &[[f64; TelemetryFeatures::DIMS]],
    has: &[[bool; TelemetryFeatures::DIMS]],
) -> (Vec<f64>, Vec<f64>) {
    let column = |j: usize| -> Vec<f64> { raw.iter().zip(has).filter(|(_, h)| h[j]).map(|(x, _)| x[j]).collect() };
    let med: Vec<f64> = (0..TelemetryFeatures::DIMS)
        .map(|j| {
            let c = column(j);
            if c.is_empty() {
                0.0
            } else {
                median(c)
            }
        })
        .collect();
    let scale: Vec<f64> = (0..TelemetryFeatures::DIMS)
        .map(|j| {
            let dev: Vec<f64> = column(j).iter().map(|x| (x - med[j]).abs()).collect();
            if dev.is_empty() {
                SCALE_FLOOR
            } else {
                (1.4826 * median(dev)).max(SCALE_FLOOR)
            }
        })
        .collect();
    (med, scale)
}

/// The least scale of a pipeline's count features (`ln(1 + count)`, e.g.
/// failed tasks) in a rebaseline: ln 2, so one stray failed task on a job
/// whose median is none moves the feature by one scale unit, not by the 35
/// units [`SCALE_FLOOR`] would make of it (Spark retries the odd task on a
/// healthy job: a Glue job publishes a few). 48 failed tasks are still 5.6.
pub const COUNT_SCALE_FLOOR: f64 = std::f64::consts::LN_2;

/// [`COUNT_SCALE_FLOOR`] on the features that read one count alone.
fn floor_counts(scale: &mut [f64]) {
    for (j, inputs) in TELEMETRY_FEATURE_INPUTS.iter().enumerate() {
        if let [m] = inputs {
            if m.is_count() {
                scale[j] = scale[j].max(COUNT_SCALE_FLOOR);
            }
        }
    }
}

/// The score strictly above the `1 − rate` quantile of `scores` (ties with
/// the quantile are healthy). `scores` must not be empty.
fn threshold_at(mut scores: Vec<f64>, rate: f64) -> f64 {
    scores.sort_by(|a, b| a.total_cmp(b));
    let at = ((1.0 - rate) * (scores.len() - 1) as f64).ceil() as usize;
    scores[at.min(scores.len() - 1)] + 1e-12
}

/// Whether a window carries evidence of a failed Glue job run.
fn run_failed(t: &Telemetry) -> bool {
    selfheal_core::evidence::RUN_METRICS.iter().any(|m| t.get(*m) > 0.0)
}

impl DetectorModel {
    /// The fingerprint a policy trained on this detector's signatures
    /// records: the base's for a rebaselined detector (same forest, same
    /// signatures, so the same states), else [`DetectorModel::fingerprint`].
    pub fn policy_fingerprint(&self) -> String {
        match &self.meta.baseline {
            Some(b) => b.base_fingerprint.clone(),
            None => self.fingerprint(),
        }
    }

    /// This detector with its baseline moved to one pipeline's own history
    /// (see the module doc): `history` is the pipeline's windows in time
    /// order, unlabelled.
    ///
    /// 1. Windows with a failed run's evidence (a `selfheal.glue.runsFailed*`
    ///    count above 0) in them or in the next window are excluded, and so are
    ///    windows with none of the detector's input metrics.
    /// 2. A first median and scale over the rest; windows with any present
    ///    feature more than [`OUTLIER_Z`] scales from it are excluded, and the
    ///    median and scale estimated again (once) over what is left. Each
    ///    feature's estimate uses only the windows that have its inputs.
    /// 3. The threshold is the `1 − false_alarm_rate` quantile of the
    ///    unchanged forest's scores of those healthy windows.
    ///
    /// Forest and signatures are kept; `meta.baseline` records the history,
    /// what was excluded, the metric set (the detector's inputs present in
    /// the history) and the base's [`DetectorModel::policy_fingerprint`].
    /// Deterministic: the same history gives the same model.
    ///
    /// # Errors
    /// [`DetectorError::TooFewHealthy`] with fewer than
    /// [`MIN_HEALTHY_WINDOWS`] healthy windows; [`DetectorError::Params`]
    /// for a false-alarm rate outside (0, 0.5).
    pub fn rebaseline(&self, history: &[Telemetry], p: &RebaselineParams) -> Result<DetectorModel, DetectorError> {
        if !(p.false_alarm_rate > 0.0 && p.false_alarm_rate < 0.5) {
            return Err(DetectorError::Params(format!(
                "the false-alarm rate must be in (0, 0.5), got {}",
                p.false_alarm_rate
            )));
        }
        let inputs = TelemetryFeatures::inputs();
        let mut excluded = Excluded::default();
        let mut kept: Vec<&Telemetry> = Vec::with_capacity(history.len());
        for (i, t) in history.iter().enumerate() {
            if run_failed(t) || history.get(i + 1).is_some_and(run_failed) {
                excluded.failed_runs += 1;
            } else if !inputs.iter().any(|m| t.is_present(*m)) {
                excluded.empty += 1;
            } else {
                kept.push(t);
            }
        }
        let raw: Vec<[f64; TelemetryFeatures::DIMS]> = kept.iter().map(|t| TelemetryFeatures::extract(t)).collect();
        let has: Vec<[bool; TelemetryFeatures::DIMS]> = kept.iter().map(|t| TelemetryFeatures::present(t)).collect();
        let (med0, mut scale0) = robust_baseline(&raw, &has);
        floor_counts(&mut scale0);
        let inlier: Vec<bool> = raw
            .iter()
            .zip(&has)
            .map(|(x, h)| {
                (0..TelemetryFeatures::DIMS).all(|j| !h[j] || ((x[j] - med0[j]) / scale0[j]).abs() <= OUTLIER_Z)
            })
            .collect();
        excluded.outliers = inlier.iter().filter(|ok| !**ok).count();
        fn pick<T: Copy>(v: &[T], keep: &[bool]) -> Vec<T> {
            v.iter().zip(keep).filter(|(_, ok)| **ok).map(|(x, _)| *x).collect()
        }
        let (raw, has) = (pick(&raw, &inlier), pick(&has, &inlier));
        let healthy: Vec<&Telemetry> = pick(&kept, &inlier);
        if healthy.len() < MIN_HEALTHY_WINDOWS {
            return Err(DetectorError::TooFewHealthy {
                healthy: healthy.len(),
                needed: MIN_HEALTHY_WINDOWS,
                read: history.len(),
                failed_runs: excluded.failed_runs,
                outliers: excluded.outliers,
                empty: excluded.empty,
            });
        }
        // Features the history never has keep the base's baseline: they are
        // imputed at its median, so they stay neutral whatever it is.
        let (mut med, mut scale) = robust_baseline(&raw, &has);
        floor_counts(&mut scale);
        for j in 0..TelemetryFeatures::DIMS {
            if !has.iter().any(|h| h[j]) {
                med[j] = self.median[j];
                scale[j] = self.scale[j];
            }
        }
        let flat = FlatForest::compile(&self.forest.to_repr());
        let scores: Vec<f64> = healthy.iter().map(|t| flat.score(&scaled(&impute(t, &med), &med, &scale))).collect();
        let threshold = threshold_at(scores, p.false_alarm_rate);
        let metrics: Vec<String> =
            inputs.iter().filter(|m| history.iter().any(|t| t.is_present(**m))).map(|m| m.name().to_string()).collect();
        let mut out = self.clone();
        out.meta.false_alarm_rate = p.false_alarm_rate;
        out.meta.baseline = Some(Baseline {
            source: p.source.clone(),
            pipeline: p.pipeline.clone(),
            windows: history.len(),
            healthy_windows: healthy.len(),
            excluded,
            metrics,
            base_fingerprint: self.policy_fingerprint(),
        });
        out.median = med;
        out.scale = scale;
        out.threshold = threshold;
        Ok(out)
    }

    /// Fit on healthy windows, then find signatures among the `candidates`
    /// (windows of faulty runs) that the forest flags.
    pub fn fit(
        scenario: &str,
        healthy: &[Telemetry],
        candidates: &[Telemetry],
        p: &Checked<FitParams>,
    ) -> Result<DetectorModel, DetectorError> {
        let raw: Vec<[f64; TelemetryFeatures::DIMS]> = healthy.iter().map(TelemetryFeatures::extract).collect();
        if raw.is_empty() {
            return Err(DetectorError::Forest(ForestError::InsufficientData { needed: p.forest.sample_size, got: 0 }));
        }
        let has: Vec<[bool; TelemetryFeatures::DIMS]> = healthy.iter().map(TelemetryFeatures::present).collect();
        let (med, scale) = robust_baseline(&raw, &has);
        let to_vec = |t: &Telemetry| scaled(&impute(t, &med), &med, &scale);
        let train: Vec<Vec<f64>> = healthy.iter().map(to_vec).collect();
        let repr = ForestRepr::grow(&train, &p.forest)?;
        let flat = FlatForest::compile(&repr);
        let threshold = threshold_at(train.iter().map(|x| flat.score(x)).collect(), p.false_alarm_rate);
        let anomalous: Vec<Vec<f64>> = candidates
            .iter()
            .map(to_vec)
            .filter(|x| flat.score(x) >= threshold)
            .map(|x| SIGNATURE_FEATURES.iter().map(|i| x[*i]).collect())
            .collect();
        let signatures = Signatures::fit(&anomalous, p.k_min..=p.k_max, p.signature_seed)?;
        Ok(DetectorModel {
            format: DETECTOR_FORMAT.into(),
            version: DETECTOR_VERSION,
            meta: DetectorMeta {
                scenario: scenario.into(),
                healthy_windows: healthy.len(),
                anomalous_windows: anomalous.len(),
                false_alarm_rate: p.false_alarm_rate,
                forest: p.forest,
                signature_seed: p.signature_seed,
                baseline: None,
                coverage: Vec::new(),
            },
            features: TELEMETRY_FEATURES.iter().map(|s| s.to_string()).collect(),
            median: med,
            scale,
            threshold,
            signature_features: SIGNATURE_FEATURES.to_vec(),
            signatures,
            forest: SparseForest::from_repr(&repr),
        })
    }

    /// Serialise (deterministic).
    pub fn to_json(&self) -> String {
        #[allow(clippy::expect_used)] // plain structs with string keys: serde_json cannot fail on them
        let mut s = serde_json::to_string(self).expect("detector serialises");
        s.push('\n');
        s
    }

    /// Parse and check; `origin` names the source in errors.
    pub fn from_json(text: &str, origin: &str) -> Result<DetectorModel, DetectorError> {
        let bad = |message: String| DetectorError::File { origin: origin.into(), message };
        if text.trim().is_empty() {
            return Err(bad("the file is empty; expected a selfheal detector model".into()));
        }
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| bad(format!("not a valid selfheal detector file: {e}")))?;
        let format = v.get("format").and_then(|f| f.as_str());
        if format != Some(DETECTOR_FORMAT) {
            return Err(bad(format!("format is {:?}, expected {DETECTOR_FORMAT:?}", format.unwrap_or("<missing>"))));
        }
        match v.get("version").and_then(|x| x.as_u64()) {
            Some(n) if n == u64::from(DETECTOR_VERSION) => {}
            Some(n) => {
                return Err(bad(format!(
                    "{DETECTOR_FORMAT} version {n} cannot be read by this build, which reads version {DETECTOR_VERSION}"
                )))
            }
            None => return Err(bad("missing numeric `version`".into())),
        }
        let m: DetectorModel =
            serde_json::from_value(v).map_err(|e| bad(format!("not a valid selfheal detector file: {e}")))?;
        if m.features != TELEMETRY_FEATURES {
            return Err(bad(format!("features {:?} differ from this build's {:?}", m.features, TELEMETRY_FEATURES)));
        }
        if m.median.len() != TelemetryFeatures::DIMS
            || m.scale.len() != TelemetryFeatures::DIMS
            || m.scale.iter().any(|s| !s.is_finite() || *s <= 0.0)
            || m.median.iter().any(|x| !x.is_finite())
        {
            return Err(bad("the healthy baseline (median, scale) does not match the features".into()));
        }
        if m.forest.dims != TelemetryFeatures::DIMS + 1 || m.forest.trees.is_empty() {
            return Err(bad(format!("forest of {} dimensions and {} trees", m.forest.dims, m.forest.trees.len())));
        }
        let k = m.signatures.centroids.len();
        if k == 0 || m.signatures.centroids.iter().any(|c| c.len() != m.signature_features.len()) {
            return Err(bad("signature centroids do not match the signature features".into()));
        }
        if m.signature_features.iter().any(|i| *i >= TelemetryFeatures::DIMS) {
            return Err(bad("a signature feature index is out of range".into()));
        }
        let sig = &m.signatures;
        if sig.mean.len() != m.signature_features.len() || sig.scale.len() != m.signature_features.len() {
            return Err(bad("signature mean and scale do not match the signature features".into()));
        }
        let mut nodes: Vec<&SparseNode> = m.forest.trees.iter().collect();
        while let Some(node) = nodes.pop() {
            if let SparseNode::Split(nz, l, r) = node {
                if let Some((i, _, _)) = nz.iter().find(|(i, _, _)| *i >= m.forest.dims) {
                    return Err(bad(format!("a split on coordinate {i} of a forest of {} dimensions", m.forest.dims)));
                }
                nodes.push(l);
                nodes.push(r);
            }
        }
        Ok(m)
    }

    /// A fingerprint of the model (FNV-1a of its JSON), recorded by policies
    /// trained on its signatures so a policy is never paired with another detector.
    pub fn fingerprint(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in self.to_json().bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{h:016x}")
    }
}

/// A ready-to-run detector.
#[derive(Clone, Debug)]
pub struct TelemetryDetector {
    model: DetectorModel,
    flat: FlatForest,
}

impl TelemetryDetector {
    /// Compile a model.
    pub fn new(model: DetectorModel) -> TelemetryDetector {
        let flat = FlatForest::compile(&model.forest.to_repr());
        TelemetryDetector { model, flat }
    }

    /// The model.
    pub fn model(&self) -> &DetectorModel {
        &self.model
    }
}

impl Detector for TelemetryDetector {
    fn id(&self) -> &str {
        "iforest-telemetry-v1"
    }

    fn signatures(&self) -> u16 {
        self.model.signatures.len() as u16
    }

    fn inputs(&self) -> Vec<Metric> {
        TelemetryFeatures::inputs()
    }

    fn detect(&self, t: &Telemetry) -> Detection {
        let x = scaled(&impute(t, &self.model.median), &self.model.median, &self.model.scale);
        let score = self.flat.score(&x);
        let anomalous = score >= self.model.threshold;
        let signature = if anomalous {
            let s: Vec<f64> = self.model.signature_features.iter().map(|i| x[*i]).collect();
            self.model.signatures.assign(&s) as u16 + 1
        } else {
            0
        };
        Detection { score, anomalous, signature }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::CrateForest;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn window(rng: &mut Xoshiro256PlusPlus, fault: u8) -> Telemetry {
        let mut t = Telemetry::default();
        t.set(Metric::RecordsIn, 1000.0);
        t.set(Metric::RecordsRead, 1000.0);
        t.set(Metric::HeapUsage, 0.5 + rng.gen_range(-0.05..0.05));
        t.set(Metric::CpuLoad, 0.5 + rng.gen_range(-0.05..0.05));
        t.set(Metric::Skewness, 1.2 + rng.gen_range(-0.1..0.1));
        t.set(Metric::ElapsedTime, 45_000.0 + rng.gen_range(-4000.0..4000.0));
        t.set(Metric::LatencyP95, 60.0 + rng.gen_range(-2.0..2.0));
        // Like the simulator's faults, each shows on a few metrics at once.
        match fault {
            1 => {
                t.set(Metric::ErrorsSchema, 1000.0 + rng.gen_range(0.0..100.0));
                t.set(Metric::RecordsRead, 0.0);
            }
            2 => {
                t.set(Metric::HeapUsage, 0.95 + rng.gen_range(-0.02..0.02));
                t.set(Metric::FailedTasks, 20.0 + rng.gen_range(-3.0..3.0));
            }
            3 => {
                t.set(Metric::Skewness, 6.0 + rng.gen_range(-1.0..1.0));
                t.set(Metric::CpuLoad, 0.3 + rng.gen_range(-0.03..0.03));
            }
            _ => {}
        }
        t
    }

    fn fitted() -> DetectorModel {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let healthy: Vec<Telemetry> = (0..2000).map(|_| window(&mut rng, 0)).collect();
        let faulty: Vec<Telemetry> = (0..600).map(|i| window(&mut rng, 1 + (i % 3) as u8)).collect();
        let p = FitParams {
            forest: ForestParams { n_trees: 50, sample_size: 128, extension_level: 0, seed: 3 },
            false_alarm_rate: 0.01,
            k_min: 2,
            k_max: 6,
            signature_seed: 4,
        };
        DetectorModel::fit("test", &healthy, &faulty, &p.check().unwrap()).unwrap()
    }

    #[test]
    fn flags_faults_and_tells_them_apart() {
        let m = fitted();
        assert_eq!(m.signatures.len(), 3, "silhouettes {:?}", m.signatures.silhouette);
        let d = TelemetryDetector::new(m);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let healthy = (0..500).filter(|_| d.detect(&window(&mut rng, 0)).anomalous).count();
        assert!(healthy <= 25, "{healthy} false alarms in 500 healthy windows");
        let sig = |f| d.detect(&window(&mut Xoshiro256PlusPlus::seed_from_u64(f as u64 + 10), f));
        let (a, b, c) = (sig(1), sig(2), sig(3));
        assert!(a.anomalous && b.anomalous && c.anomalous);
        assert!(a.signature != b.signature && b.signature != c.signature && a.signature != c.signature);
    }

    #[test]
    fn json_round_trip_scores_identically_and_sparse_equals_dense() {
        let m = fitted();
        let back = DetectorModel::from_json(&m.to_json(), "m.json").unwrap();
        assert_eq!(back, m);
        let dense = CrateForest::from_repr(&m.forest.to_repr()).unwrap();
        let d = TelemetryDetector::new(back);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        for f in 0..4 {
            let t = window(&mut rng, f);
            let x = scaled(&TelemetryFeatures::extract(&t), &d.model().median, &d.model().scale);
            assert!((d.detect(&t).score - dense.score(&x)).abs() < 1e-9);
        }
    }

    #[test]
    fn an_absent_metric_is_neutral_not_zero() {
        let d = TelemetryDetector::new(fitted());
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
        // A healthy window without latency (a Glue job publishes none): read
        // as 0, its log-latency sat far below the baseline of ~60 s.
        let full = window(&mut rng, 0);
        let mut partial = full;
        partial.clear(Metric::LatencyP95);
        let zero = {
            let mut z = full;
            z.set(Metric::LatencyP95, 0.0);
            z
        };
        let x = impute(&partial, &d.model().median);
        assert_eq!(x[10], d.model().median[10], "the latency feature sits at the baseline");
        assert!(!d.detect(&partial).anomalous, "absent is not evidence");
        assert!(d.detect(&zero).score > d.detect(&partial).score, "a measured 0 is");
        // A fault still shows through the metrics that are there.
        let mut oom = window(&mut rng, 2);
        oom.clear(Metric::LatencyP95);
        assert!(d.detect(&oom).anomalous);
    }

    /// `window`, from a pipeline at 1000× the scale: a million records a
    /// period, runs a thousand times longer, errors and failed tasks to
    /// match, and its own resource levels (heap +0.3, CPU −0.3).
    fn big(rng: &mut Xoshiro256PlusPlus, fault: u8) -> Telemetry {
        let mut t = window(rng, fault);
        t.set(Metric::HeapUsage, (t.get(Metric::HeapUsage) + 0.3).min(0.99));
        t.set(Metric::CpuLoad, (t.get(Metric::CpuLoad) - 0.3).max(0.0));
        for m in [
            Metric::RecordsIn,
            Metric::RecordsRead,
            Metric::ElapsedTime,
            Metric::LatencyP95,
            Metric::ErrorsSchema,
            Metric::FailedTasks,
        ] {
            if let Some(v) = t.value(m) {
                t.set(m, v * 1000.0);
            }
        }
        t
    }

    fn params(rate: f64) -> RebaselineParams {
        RebaselineParams { false_alarm_rate: rate, source: "history:test".into(), pipeline: "orders".into() }
    }

    #[test]
    fn a_stray_failed_task_on_a_job_that_usually_has_none_is_no_outlier() {
        let base = fitted();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
        // One window in twenty has a failed task Spark retried.
        let history: Vec<Telemetry> = (0..400)
            .map(|i| {
                let mut t = big(&mut rng, 0);
                t.set(Metric::FailedTasks, if i % 20 == 0 { 1.0 } else { 0.0 });
                t
            })
            .collect();
        let fitted = base.rebaseline(&history, &params(0.02)).unwrap();
        assert_eq!(fitted.meta.baseline.as_ref().unwrap().excluded.outliers, 0, "a stray task is no outlier");
        let d = TelemetryDetector::new(fitted);
        let flagged = |tasks: f64, rng: &mut Xoshiro256PlusPlus| {
            (0..200)
                .filter(|_| {
                    let mut t = big(rng, 0);
                    t.set(Metric::FailedTasks, tasks);
                    d.detect(&t).anomalous
                })
                .count()
        };
        // (How often a lone failed task alarms is the base forest's: it
        // grew on windows without any, so it isolates the first one fast.)
        let failing = flagged(48.0, &mut rng);
        assert!(failing >= 150, "{failing} of 200 windows with 48 failed tasks flagged (169 at this seed)");
    }

    #[test]
    fn rebaseline_moves_the_baseline_to_a_pipeline_at_1000x_the_scale() {
        let base = fitted();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(20);
        let history: Vec<Telemetry> = (0..400).map(|_| big(&mut rng, 0)).collect();
        let fresh: Vec<Telemetry> = (0..500).map(|_| big(&mut rng, 0)).collect();
        let before = TelemetryDetector::new(base.clone());
        let flagged = fresh.iter().filter(|t| before.detect(t).anomalous).count();
        assert!(flagged >= 490, "the simulator's baseline flags the big pipeline's healthy windows: {flagged}/500");

        let m = base.rebaseline(&history, &params(0.02)).unwrap();
        assert_eq!((&m.forest, &m.signatures), (&base.forest, &base.signatures), "forest and signatures kept");
        let after = TelemetryDetector::new(m.clone());
        let in_sample = history.iter().filter(|t| after.detect(t).anomalous).count();
        assert!(in_sample <= 8, "the threshold holds the 2% target on the history: {in_sample}/400");
        // On new windows the rate is noisier (the tail of the forest's scores
        // is flat, so a 2% quantile of 400 windows moves with the sample).
        let false_alarms = fresh.iter().filter(|t| after.detect(t).anomalous).count();
        assert!(false_alarms <= 35, "{false_alarms} false alarms in 500 healthy windows of the pipeline");
        for f in 1..4 {
            let faults: Vec<Telemetry> = (0..50).map(|_| big(&mut rng, f)).collect();
            let caught = faults.iter().filter(|t| after.detect(t).anomalous).count();
            assert!(caught >= 48, "fault {f}: {caught}/50 flagged after rebaselining");
        }
        let b = m.meta.baseline.as_ref().unwrap();
        assert_eq!((b.windows, b.healthy_windows, b.excluded), (400, 400, Excluded::default()));
        assert_eq!((b.pipeline.as_str(), b.source.as_str()), ("orders", "history:test"));
        let inputs: Vec<String> = TelemetryFeatures::inputs()
            .into_iter()
            .filter(|m| history[0].is_present(*m))
            .map(|m| m.name().to_string())
            .collect();
        assert_eq!(b.metrics, inputs, "the metric set is the detector's inputs the history has");
        assert!(!b.metrics.contains(&Metric::FailedTasks.name().to_string()), "never published, not in the set");
        // Same history, same model.
        assert_eq!(base.rebaseline(&history, &params(0.02)).unwrap().to_json(), m.to_json());
    }

    #[test]
    fn a_rebaselined_detector_pairs_with_its_base_policy() {
        let base = fitted();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
        let history: Vec<Telemetry> = (0..100).map(|_| big(&mut rng, 0)).collect();
        let m = base.rebaseline(&history, &params(0.02)).unwrap();
        assert_ne!(m.fingerprint(), base.fingerprint(), "another file");
        assert_eq!(m.policy_fingerprint(), base.fingerprint());
        assert_eq!(m.meta.baseline.as_ref().unwrap().base_fingerprint, base.fingerprint());
        // Rebaselining again still names the detector the policies know.
        let again = m.rebaseline(&history[..50], &params(0.05)).unwrap();
        assert_eq!(again.policy_fingerprint(), base.fingerprint());
        assert_eq!(base.policy_fingerprint(), base.fingerprint());
    }

    #[test]
    fn windows_of_failed_runs_and_outliers_are_excluded() {
        let base = fitted();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(22);
        let mut history: Vec<Telemetry> = (0..100).map(|_| big(&mut rng, 0)).collect();
        // A run that failed out of memory: its last two windows look like it.
        for i in [49, 50] {
            history[i] = big(&mut rng, 2);
        }
        history[50].set(Metric::RunsFailed, 1.0);
        history[50].set(Metric::RunsFailedOom, 1.0);
        // A failed run at the very end: no next window.
        history[99].set(Metric::RunsFailed, 1.0);
        // An incident no run's end reported: outliers; and a quiet window between runs.
        for i in [10, 30, 70] {
            history[i] = big(&mut rng, 3);
        }
        history[80] = Telemetry::default();
        let m = base.rebaseline(&history, &params(0.02)).unwrap();
        let b = m.meta.baseline.unwrap();
        assert_eq!(b.excluded, Excluded { failed_runs: 4, outliers: 3, empty: 1 }, "49, 50 and 98, 99");
        assert_eq!((b.windows, b.healthy_windows), (100, 92));
        // The OOM windows did not move the heap baseline.
        assert!((m.median[5] - 0.8).abs() < 0.02, "heap median {}", m.median[5]);
    }

    #[test]
    fn too_few_healthy_windows_is_a_clear_error() {
        let base = fitted();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
        let mut history: Vec<Telemetry> = (0..25).map(|_| big(&mut rng, 0)).collect();
        for i in [3, 12, 20] {
            history[i].set(Metric::RunsFailed, 1.0);
        }
        let err = base.rebaseline(&history, &params(0.02)).unwrap_err();
        assert!(
            matches!(err, DetectorError::TooFewHealthy { healthy: 19, needed: 20, read: 25, failed_runs: 6, .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(text.contains("only 19 healthy windows") && text.contains("at least 20"), "{text}");
        assert!(text.contains("6 excluded at or before a failed run's end"), "{text}");
        let err = base.rebaseline(&history, &params(0.7)).unwrap_err().to_string();
        assert!(err.contains("(0, 0.5)"), "{err}");
    }

    #[test]
    fn detector_files_without_a_baseline_still_parse() {
        let base = fitted();
        let json = base.to_json();
        assert!(!json.contains("baseline"), "a simulator-fitted detector writes no baseline key (same fingerprint)");
        assert_eq!(DetectorModel::from_json(&json, "old.json").unwrap().meta.baseline, None);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(24);
        let history: Vec<Telemetry> = (0..40).map(|_| big(&mut rng, 0)).collect();
        let m = base.rebaseline(&history, &params(0.02)).unwrap();
        assert_eq!(DetectorModel::from_json(&m.to_json(), "new.json").unwrap(), m);
    }

    #[test]
    fn bad_files_are_refused_clearly() {
        let json = fitted().to_json();
        let err = |text: &str| DetectorModel::from_json(text, "d.json").unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert!(err(&json[..json.len() / 2]).contains("not a valid"));
        assert!(err(&json.replacen("\"version\":1", "\"version\":7", 1)).contains("version 7"));
        assert!(err("{\"format\":\"selfheal-qtable\",\"version\":1}").contains("format is"));
        assert!(err(&json.replacen("heap_usage", "heap", 1)).contains("features"));
    }

    #[test]
    fn fit_params_check_names_each_bound() {
        let ok = FitParams {
            forest: ForestParams { n_trees: 50, sample_size: 128, extension_level: 0, seed: 3 },
            false_alarm_rate: 0.02,
            k_min: 2,
            k_max: 2,
            signature_seed: 3,
        };
        assert_eq!(ok.validate(), Ok(()));
        type Case = (fn(&mut FitParams), &'static str, &'static str);
        let cases: [Case; 8] = [
            (|p| p.false_alarm_rate = 0.0, "false_alarm_rate", "in (0, 0.5)"),
            (|p| p.false_alarm_rate = 0.5, "false_alarm_rate", "in (0, 0.5)"),
            (|p| p.false_alarm_rate = f64::NAN, "false_alarm_rate", "in (0, 0.5)"),
            (|p| p.k_min = 1, "k_min", ">= 2"),
            (|p| p.k_min = 3, "k_max", ">= k_min"),
            (|p| p.forest.n_trees = 0, "forest.n_trees", ">= 1"),
            (|p| p.forest.sample_size = 1, "forest.sample_size", ">= 2"),
            (|p| p.forest.sample_size = 0, "forest.sample_size", ">= 2"),
        ];
        for (set, param, bound) in cases {
            let mut p = ok;
            set(&mut p);
            assert_eq!(p.validate(), Err(InvalidFitParams { param, bound }), "{p:?}");
        }
        let mut bad = ok;
        bad.k_min = 0;
        assert_eq!(bad.validate().unwrap_err().to_string(), "k_min must be >= 2");
    }
}
