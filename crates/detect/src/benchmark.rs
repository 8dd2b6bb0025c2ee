//! The streaming detector run over NAB categories and scored by NAB's rules:
//! one threshold over a set of categories, each category alone, false alarms on
//! series without anomalies, and cross-validation of parameter sets across
//! categories (choose on all categories but one, score the one left out).
//!
//! `selfheal nab` prints what this computes; the tests of the detector use it
//! for their acceptance figures.

use crate::stream::{StreamDetector, StreamParams};
use selfheal_core::time::parse_stamp;
use selfheal_core::Checked;
use selfheal_nab::{file_score, load_category, normalize, sweep, LabeledSeries, NabError, Profile};
use std::path::Path;

/// One NAB category: its files, values and row times.
#[derive(Clone, Debug)]
pub struct Category {
    /// Folder name, e.g. `realKnownCause`.
    pub name: String,
    /// Each file with its windows and values.
    pub files: Vec<(LabeledSeries, Vec<f64>)>,
    /// Row times of each file in Unix ms (`None` where a stamp does not parse).
    pub stamps: Vec<Vec<Option<i64>>>,
}

impl Category {
    /// Loads `<root>/<name>/*.csv` with their windows.
    pub fn load(root: &Path, name: &str) -> Result<Category, NabError> {
        let files = load_category(root, name)?;
        let stamps = files
            .iter()
            .map(|(s, _)| s.timestamps().iter().map(|t| parse_stamp(t).map(|p| p.unix_ms())).collect())
            .collect();
        Ok(Category { name: name.to_owned(), files, stamps })
    }

    /// Rows over all files.
    pub fn rows(&self) -> usize {
        self.files.iter().map(|(s, _)| s.len()).sum()
    }

    /// Windows over all files.
    pub fn windows(&self) -> usize {
        self.files.iter().map(|(s, _)| s.windows().len()).sum()
    }

    /// Scores of every file with `params`, in file order.
    pub fn score(&self, params: &Checked<StreamParams>) -> Vec<Vec<f64>> {
        self.files.iter().zip(&self.stamps).map(|((_, values), stamps)| score_series(params, stamps, values)).collect()
    }
}

/// Runs the streaming detector over one series: one score per row.
///
/// # Panics
/// If `stamps` and `values` differ in length.
pub fn score_series(params: &Checked<StreamParams>, stamps: &[Option<i64>], values: &[f64]) -> Vec<f64> {
    assert_eq!(stamps.len(), values.len(), "one time per value");
    let mut d = StreamDetector::new(*params, values.len());
    stamps.iter().zip(values).map(|(t, x)| d.push_at(*t, *x)).collect()
}

/// [`score_series`] with the crate's scorer in place of the flat one
/// ([`StreamDetector::with_reference_scorer`]), for benchmarks.
pub fn score_series_reference(params: &Checked<StreamParams>, stamps: &[Option<i64>], values: &[f64]) -> Vec<f64> {
    assert_eq!(stamps.len(), values.len(), "one time per value");
    let mut d = StreamDetector::with_reference_scorer(*params, values.len());
    stamps.iter().zip(values).map(|(t, x)| d.push_at(*t, *x)).collect()
}

/// NAB's outcome over a set of categories, with one threshold for the set.
#[derive(Clone, Debug, PartialEq)]
pub struct SetScore {
    /// The shared threshold (1.1: nothing detected).
    pub threshold: f64,
    /// Normalised score over every window of the set.
    pub normalized: f64,
    /// Per category: (name, normalised over its own windows at the shared
    /// threshold; NaN without windows).
    pub per_category: Vec<(String, f64)>,
}

/// Scores the categories `cats` (with their `scores`, as [`Category::score`]
/// returns them) under one threshold chosen by NAB's sweep over all of them.
pub fn score_set(cats: &[&Category], scores: &[&Vec<Vec<f64>>], profile: &Profile) -> SetScore {
    let files: Vec<(&LabeledSeries, &[f64])> = cats
        .iter()
        .zip(scores)
        .flat_map(|(c, s)| c.files.iter().zip(s.iter()).map(|((series, _), a)| (series, a.as_slice())))
        .collect();
    let sw = sweep(&files, profile);
    let per_category = cats
        .iter()
        .zip(scores)
        .map(|(c, s)| {
            let raw: f64 =
                c.files.iter().zip(s.iter()).map(|((series, _), a)| file_score(series, a, sw.threshold, profile)).sum();
            (c.name.clone(), if c.windows() == 0 { f64::NAN } else { normalize(raw, c.windows(), profile) })
        })
        .collect();
    SetScore { threshold: sw.threshold, normalized: sw.normalized, per_category }
}

/// Rows past probation scoring at or above `threshold`, per file.
pub fn false_alarms(cat: &Category, scores: &[Vec<f64>], threshold: f64) -> Vec<(String, usize)> {
    cat.files
        .iter()
        .zip(scores)
        .map(|((s, _), a)| (s.name().to_owned(), a[s.probation()..].iter().filter(|x| **x >= threshold).count()))
        .collect()
}

/// One fold of a cross-validation: the parameter set chosen on the other
/// categories, and how it scores on the one left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Fold {
    /// The category left out.
    pub held_out: String,
    /// Index of the chosen parameter set.
    pub chosen: usize,
    /// Its score over the other categories (one threshold).
    pub train_score: f64,
    /// The threshold chosen on the other categories.
    pub train_threshold: f64,
    /// The held-out category scored at `train_threshold`.
    pub held_out_at_train_threshold: f64,
    /// The held-out category with a threshold re-optimised on it alone.
    pub held_out_own_threshold: f64,
}

/// Leave-one-category-out cross-validation over candidate parameter sets.
/// `scores[k][c]` are candidate k's scores of category c. Candidates are
/// compared by their set score (one threshold) over the training categories;
/// the first of equals wins.
pub fn cross_validate(cats: &[&Category], scores: &[Vec<Vec<Vec<f64>>>], profile: &Profile) -> Vec<Fold> {
    (0..cats.len())
        .map(|out| {
            let train: Vec<usize> = (0..cats.len()).filter(|c| *c != out).collect();
            let tc: Vec<&Category> = train.iter().map(|c| cats[*c]).collect();
            let mut best: Option<(usize, SetScore)> = None;
            for (k, s) in scores.iter().enumerate() {
                let ts: Vec<&Vec<Vec<f64>>> = train.iter().map(|c| &s[*c]).collect();
                let r = score_set(&tc, &ts, profile);
                let better = match &best {
                    None => true,
                    Some((_, b)) => r.normalized > b.normalized,
                };
                if better {
                    best = Some((k, r));
                }
            }
            #[allow(clippy::expect_used)] // `scores` holds at least one candidate: none is a caller's bug
            let (chosen, r) = best.expect("at least one candidate");
            let held = cats[out];
            let hs = &scores[chosen][out];
            let raw: f64 =
                held.files.iter().zip(hs).map(|((series, _), a)| file_score(series, a, r.threshold, profile)).sum();
            let own = score_set(&[held], &[hs], profile);
            Fold {
                held_out: held.name.clone(),
                chosen,
                train_score: r.normalized,
                train_threshold: r.threshold,
                held_out_at_train_threshold: normalize(raw, held.windows(), profile),
                held_out_own_threshold: own.normalized,
            }
        })
        .collect()
}
