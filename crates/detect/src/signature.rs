//! Failure signatures: anomalous windows grouped by k-means (`linfa-clustering`).
//!
//! Features are standardised (mean 0, deviation 1 over the anomalous windows) so
//! no metric dominates by its units. k is chosen by the mean silhouette
//! coefficient (how much closer each window is to its own cluster than to the
//! next one, −1..1), computed on a fixed subsample, over a range of k: the
//! highest silhouette wins, and ties go to the smaller k. The silhouette of every
//! k tried is kept in the model file so the choice can be reviewed. The RNG of
//! k-means is a seeded field of its parameters, as linfa intends, so the same
//! windows and seed give the same signatures.

use linfa::traits::Fit;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::{Xoshiro256Plus, Xoshiro256PlusPlus};
use serde::{Deserialize, Serialize};

/// Errors of fitting signatures.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// Not enough windows to cluster.
    #[error("need at least {needed} anomalous windows to find signatures, got {got}")]
    TooFew {
        /// Needed.
        needed: usize,
        /// Given.
        got: usize,
    },
    /// k-means failed.
    #[error("k-means: {0}")]
    KMeans(String),
}

/// Fitted failure signatures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signatures {
    /// Per-feature mean used for standardising.
    pub mean: Vec<f64>,
    /// Per-feature deviation used for standardising.
    pub scale: Vec<f64>,
    /// Cluster centres in standardised units, one per signature.
    pub centroids: Vec<Vec<f64>>,
    /// (k, mean silhouette) for every k tried.
    pub silhouette: Vec<(usize, f64)>,
}

impl Signatures {
    /// Cluster `points` (feature vectors of anomalous windows) for k in `ks`.
    pub fn fit(
        points: &[Vec<f64>],
        ks: std::ops::RangeInclusive<usize>,
        seed: u64,
    ) -> Result<Signatures, SignatureError> {
        let needed = (*ks.end()).max(2) * 5;
        if points.len() < needed {
            return Err(SignatureError::TooFew { needed, got: points.len() });
        }
        let dims = points[0].len();
        let n = points.len() as f64;
        let mean: Vec<f64> = (0..dims).map(|j| points.iter().map(|p| p[j]).sum::<f64>() / n).collect();
        let scale: Vec<f64> = (0..dims)
            .map(|j| (points.iter().map(|p| (p[j] - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6))
            .collect();
        let z: Vec<Vec<f64>> =
            points.iter().map(|p| p.iter().enumerate().map(|(j, v)| (v - mean[j]) / scale[j]).collect()).collect();
        let data = Array2::from_shape_fn((z.len(), dims), |(i, j)| z[i][j]);
        let dataset = DatasetBase::from(data);
        // Silhouettes on a fixed subsample keep the O(n²) cost bounded.
        let mut idx: Vec<usize> = (0..z.len()).collect();
        idx.shuffle(&mut Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5111));
        idx.truncate(1500);
        let mut best: Option<(f64, Vec<Vec<f64>>)> = None;
        let mut silhouette = Vec::new();
        for k in ks {
            let model = KMeans::params_with_rng(k, Xoshiro256Plus::seed_from_u64(seed.wrapping_add(k as u64)))
                .n_runs(4)
                .max_n_iterations(200)
                .tolerance(1e-6)
                .fit(&dataset)
                .map_err(|e| SignatureError::KMeans(e.to_string()))?;
            let centroids: Vec<Vec<f64>> = model.centroids().outer_iter().map(|r| r.to_vec()).collect();
            let s = mean_silhouette(&z, &idx, &centroids);
            silhouette.push((k, s));
            if best.as_ref().is_none_or(|(b, _)| s > *b + 1e-9) {
                best = Some((s, centroids));
            }
        }
        #[allow(clippy::expect_used)] // `ks` is non-empty: an empty range is a caller's bug
        let (_, centroids) = best.expect("at least one k");
        Ok(Signatures { mean, scale, centroids, silhouette })
    }

    /// Number of signatures.
    pub fn len(&self) -> usize {
        self.centroids.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.centroids.is_empty()
    }

    /// The signature (0-based) of a feature vector: its nearest centre.
    pub fn assign(&self, x: &[f64]) -> usize {
        let mut best = (0, f64::INFINITY);
        for (c, centre) in self.centroids.iter().enumerate() {
            let d: f64 =
                centre.iter().enumerate().map(|(j, m)| ((x[j] - self.mean[j]) / self.scale[j] - m).powi(2)).sum();
            if d < best.1 {
                best = (c, d);
            }
        }
        best.0
    }
}

fn nearest(x: &[f64], centroids: &[Vec<f64>]) -> usize {
    let d = |c: &Vec<f64>| c.iter().zip(x).map(|(a, b)| (a - b).powi(2)).sum::<f64>();
    (0..centroids.len()).min_by(|a, b| d(&centroids[*a]).total_cmp(&d(&centroids[*b]))).unwrap_or(0)
}

/// Mean silhouette of the points at `idx`, clustered by nearest centre.
fn mean_silhouette(z: &[Vec<f64>], idx: &[usize], centroids: &[Vec<f64>]) -> f64 {
    let k = centroids.len();
    let labels: Vec<usize> = idx.iter().map(|i| nearest(&z[*i], centroids)).collect();
    let dist = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
    let mut total = 0.0;
    for (a, &i) in idx.iter().enumerate() {
        let mut sum = vec![0.0; k];
        let mut count = vec![0usize; k];
        for (b, &j) in idx.iter().enumerate() {
            if a != b {
                sum[labels[b]] += dist(&z[i], &z[j]);
                count[labels[b]] += 1;
            }
        }
        let own = labels[a];
        if count[own] == 0 {
            continue; // a singleton scores 0
        }
        let ai = sum[own] / count[own] as f64;
        let bi = (0..k)
            .filter(|c| *c != own && count[*c] > 0)
            .map(|c| sum[c] / count[c] as f64)
            .fold(f64::INFINITY, f64::min);
        if bi.is_finite() {
            total += (bi - ai) / ai.max(bi).max(1e-12);
        }
    }
    total / idx.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    fn blobs(centres: &[[f64; 2]], per: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        centres
            .iter()
            .flat_map(|c| {
                (0..per)
                    .map(|_| vec![c[0] + rng.gen_range(-0.3..0.3), c[1] + rng.gen_range(-0.3..0.3)])
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn finds_the_number_of_well_separated_groups() {
        let pts = blobs(&[[0.0, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]], 60, 1);
        let s = Signatures::fit(&pts, 2..=8, 3).unwrap();
        assert_eq!(s.len(), 4, "silhouettes {:?}", s.silhouette);
        assert_ne!(s.assign(&[0.1, 0.0]), s.assign(&[5.0, 5.1]));
        assert_eq!(s.assign(&[0.1, 0.0]), s.assign(&[-0.2, 0.2]));
    }

    #[test]
    fn same_points_same_seed_same_signatures() {
        let pts = blobs(&[[0.0, 0.0], [3.0, 1.0], [1.0, 4.0]], 40, 2);
        assert_eq!(Signatures::fit(&pts, 2..=5, 9).unwrap(), Signatures::fit(&pts, 2..=5, 9).unwrap());
    }

    #[test]
    fn too_few_points_is_an_error() {
        let pts = blobs(&[[0.0, 0.0]], 5, 3);
        assert!(matches!(Signatures::fit(&pts, 2..=4, 0), Err(SignatureError::TooFew { .. })));
    }
}
