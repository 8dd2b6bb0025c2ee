//! Isolation forests, grown reproducibly and exchanged with the
//! `extended-isolation-forest` crate.
//!
//! The crate grows its trees from `rand::thread_rng()`, so two trainings on the
//! same data give different forests and a run cannot be replayed. We therefore
//! grow trees with the crate's own algorithm (sample without replacement;
//! at each node an intercept drawn uniformly within the sample's bounding box, a
//! normal vector of standard-normal coordinates with `N − extension_level − 1` of
//! them zeroed; split on `(x − p)·n ≤ 0`; depth capped at ⌈log2 sample_size⌉) but
//! from a seeded RNG, and write them in the crate's serde representation
//! ([`ForestRepr`]). [`CrateForest`] deserialises that into the crate's
//! `Forest<f64, N>` so the crate's own scorer is the reference every other
//! scorer is tested against, and a forest the crate trained itself converts the
//! other way. The crate fixes the dimension at compile time (`const N`);
//! [`CrateForest`] covers 1 to 16 dimensions.

use extended_isolation_forest::{Forest, ForestOptions};
use rand::seq::{index, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

/// Errors of growing or converting forests.
#[derive(Debug, thiserror::Error)]
pub enum ForestError {
    /// Fewer training points than the sample size, or no dimensions.
    #[error("need at least {needed} training points of at least 1 dimension, got {got}")]
    InsufficientData {
        /// Points needed.
        needed: usize,
        /// Points given.
        got: usize,
    },
    /// The extension level must be below the dimension.
    #[error("extension level {level} must be below the dimension {dims}")]
    ExtensionLevel {
        /// Requested level.
        level: usize,
        /// Dimension.
        dims: usize,
    },
    /// Points of different lengths, or non-finite values.
    #[error("training point {index}: {message}")]
    BadPoint {
        /// Index of the point.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The crate's representation did not convert.
    #[error("forest representation: {0}")]
    Repr(String),
    /// A dimension the crate's const-generic forest is not instantiated for.
    #[error("{0} dimensions: the crate-backed forest supports 1 to 16")]
    Dimension(usize),
}

/// How to grow a forest.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForestParams {
    /// Trees.
    pub n_trees: usize,
    /// Points sampled (without replacement) per tree.
    pub sample_size: usize,
    /// Hyperplane freedom: 0 = axis-parallel (classic isolation forest), up to dims − 1.
    pub extension_level: usize,
    /// Seed of the growth.
    pub seed: u64,
}

impl Default for ForestParams {
    fn default() -> Self {
        ForestParams { n_trees: 100, sample_size: 256, extension_level: 0, seed: 0 }
    }
}

/// A node in the crate's serde representation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum NodeRepr {
    /// External node: how many training samples reached it.
    Ex {
        /// Sample count.
        num_samples: usize,
    },
    /// Internal node: split on `(x − p)·n ≤ 0` (left) or `> 0` (right).
    In {
        /// Left child.
        left: Box<NodeRepr>,
        /// Right child.
        right: Box<NodeRepr>,
        /// Normal vector.
        n: Vec<f64>,
        /// Intercept point.
        p: Vec<f64>,
    },
}

/// A tree in the crate's serde representation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeRepr {
    /// Root node.
    pub root: NodeRepr,
}

/// A forest in the crate's serde representation (`Forest<f64, N>` with the
/// `serde` feature serialises to exactly this).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForestRepr {
    /// Normaliser of path lengths: c(sample_size).
    pub avg_path_length_c: f64,
    /// The trees.
    pub trees: Vec<TreeRepr>,
}

/// Average path length of an unsuccessful search in a BST of `n` points (the
/// crate's `c_factor`, same arithmetic).
pub fn c_factor(n: usize) -> f64 {
    2.0 * ((n as f64 - 1.0).ln() + 0.5772156649) - (2.0 * (n as f64 - 1.0) / n as f64)
}

impl ForestRepr {
    /// Grow a forest on `points` (all of one dimension) with a seeded RNG.
    pub fn grow(points: &[Vec<f64>], params: &ForestParams) -> Result<ForestRepr, ForestError> {
        let dims = points.first().map_or(0, Vec::len);
        if points.len() < params.sample_size || dims == 0 || params.sample_size < 2 {
            return Err(ForestError::InsufficientData { needed: params.sample_size.max(2), got: points.len() });
        }
        if params.extension_level >= dims {
            return Err(ForestError::ExtensionLevel { level: params.extension_level, dims });
        }
        for (index, p) in points.iter().enumerate() {
            if p.len() != dims {
                return Err(ForestError::BadPoint { index, message: format!("{} values, expected {dims}", p.len()) });
            }
            if p.iter().any(|v| !v.is_finite()) {
                return Err(ForestError::BadPoint { index, message: "non-finite value".into() });
            }
        }
        let max_depth = (params.sample_size as f64).log2().ceil() as usize;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(params.seed);
        let trees = (0..params.n_trees)
            .map(|_| {
                let sample: Vec<&[f64]> =
                    points.choose_multiple(&mut rng, params.sample_size).map(Vec::as_slice).collect();
                TreeRepr { root: grow_node(&sample, &mut rng, 0, max_depth, params.extension_level, dims) }
            })
            .collect();
        Ok(ForestRepr { avg_path_length_c: c_factor(params.sample_size), trees })
    }

    /// Dimension of the points it scores.
    pub fn dims(&self) -> usize {
        fn find(n: &NodeRepr) -> Option<usize> {
            match n {
                NodeRepr::Ex { .. } => None,
                NodeRepr::In { n, .. } => Some(n.len()),
            }
        }
        self.trees.iter().find_map(|t| find(&t.root)).unwrap_or(0)
    }

    /// Score a point by walking the trees (a readable reference; see
    /// [`crate::flat::FlatForest`] for the fast one).
    pub fn score(&self, x: &[f64]) -> f64 {
        fn path(n: &NodeRepr, x: &[f64]) -> f64 {
            match n {
                NodeRepr::Ex { num_samples } => {
                    if *num_samples <= 1 {
                        0.0
                    } else {
                        c_factor(*num_samples)
                    }
                }
                NodeRepr::In { left, right, n, p } => {
                    let d = x.iter().zip(p).map(|(x, p)| x - p).zip(n).fold(0.0, |s, (d, n)| s + d * n);
                    1.0 + path(if d <= 0.0 { left } else { right }, x)
                }
            }
        }
        let total: f64 = self.trees.iter().map(|t| path(&t.root, x)).sum();
        2.0_f64.powf(-(total / self.trees.len() as f64) / self.avg_path_length_c)
    }
}

fn grow_node(
    sample: &[&[f64]],
    rng: &mut Xoshiro256PlusPlus,
    depth: usize,
    max_depth: usize,
    extension_level: usize,
    dims: usize,
) -> NodeRepr {
    if depth >= max_depth || sample.len() <= 1 {
        return NodeRepr::Ex { num_samples: sample.len() };
    }
    let mut lo = sample[0].to_vec();
    let mut hi = sample[0].to_vec();
    for s in &sample[1..] {
        for i in 0..dims {
            lo[i] = lo[i].min(s[i]);
            hi[i] = hi[i].max(s[i]);
        }
    }
    // A range a few ulps wide is treated as a point (as before, so forests grown
    // earlier grow again the same); any other range draws exactly what rand
    // 0.8's `Uniform::new(lo, hi)` draws, without its set-up loop.
    let p: Vec<f64> = (0..dims)
        .map(|i| if hi[i] - lo[i] <= 1e-9 * lo[i].abs().max(hi[i].abs()) { lo[i] } else { uniform(rng, lo[i], hi[i]) })
        .collect();
    let mut n: Vec<f64> = (0..dims).map(|_| rng.sample(StandardNormal)).collect();
    for i in index::sample(rng, dims, dims - extension_level - 1) {
        n[i] = 0.0;
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for s in sample {
        let d = s.iter().zip(&p).map(|(x, p)| x - p).zip(&n).fold(0.0, |acc, (d, n)| acc + d * n);
        if d <= 0.0 {
            left.push(*s);
        } else {
            right.push(*s);
        }
    }
    NodeRepr::In {
        left: Box::new(grow_node(&left, rng, depth + 1, max_depth, extension_level, dims)),
        right: Box::new(grow_node(&right, rng, depth + 1, max_depth, extension_level, dims)),
        n,
        p,
    }
}

/// A draw in [low, high) equal, bit for bit and draw for draw, to rand 0.8's
/// `rng.sample(Uniform::new(low, high))` for `f64`.
///
/// rand sets the sampler up by lowering `scale = high − low` one ulp at a time
/// until `scale·max_rand + low < high`; when the range is narrow against
/// |low| that loop runs about |low| / (2·(high − low)) times (rand issue
/// #1299): 23 s for a 200-row two-level series. The condition is monotone in
/// `scale`, so the same largest `scale` is found here by bisection on its bits,
/// in at most 64 steps. Requires finite `low < high`.
pub(crate) fn uniform(rng: &mut Xoshiro256PlusPlus, low: f64, high: f64) -> f64 {
    // (u64::MAX >> 12) as a float in [1, 2), minus 1: the largest value0_1.
    let max_rand = f64::from_bits(0x3FF0_0000_0000_0000 | (u64::MAX >> 12)) - 1.0;
    let fits = |scale: f64| scale * max_rand + low < high;
    let mut scale = high - low;
    if !fits(scale) {
        // Largest bit pattern in [0, scale.bits) that fits; 0.0 always does.
        let (mut ok, mut bad) = (0u64, scale.to_bits());
        while bad - ok > 1 {
            let mid = ok + (bad - ok) / 2;
            if fits(f64::from_bits(mid)) {
                ok = mid;
            } else {
                bad = mid;
            }
        }
        scale = f64::from_bits(ok);
    }
    let value1_2 = f64::from_bits(0x3FF0_0000_0000_0000 | (rng.gen::<u64>() >> 12));
    (value1_2 - 1.0) * scale + low
}

macro_rules! crate_forest {
    ($($d:literal => $v:ident),* $(,)?) => {
        /// The crate's `Forest<f64, N>` for the dimension of a [`ForestRepr`].
        pub enum CrateForest {
            $(
                #[doc = concat!(stringify!($d), " dimensions.")]
                $v(Box<Forest<f64, $d>>),
            )*
        }

        impl CrateForest {
            /// Deserialise a representation into the crate's forest.
            pub fn from_repr(r: &ForestRepr) -> Result<CrateForest, ForestError> {
                let v = serde_json::to_value(r).map_err(|e| ForestError::Repr(e.to_string()))?;
                match r.dims() {
                    $($d => serde_json::from_value(v).map(|f| CrateForest::$v(Box::new(f))),)*
                    other => return Err(ForestError::Dimension(other)),
                }
                .map_err(|e| ForestError::Repr(e.to_string()))
            }

            /// Train with the crate itself (not reproducible: it seeds from
            /// `thread_rng`).
            pub fn train(points: &[Vec<f64>], params: &ForestParams) -> Result<CrateForest, ForestError> {
                let dims = points.first().map_or(0, Vec::len);
                let opts = ForestOptions {
                    n_trees: params.n_trees,
                    sample_size: params.sample_size,
                    max_tree_depth: None,
                    extension_level: params.extension_level,
                };
                fn arrays<const N: usize>(points: &[Vec<f64>]) -> Vec<[f64; N]> {
                    points.iter().map(|p| <[f64; N]>::try_from(p.as_slice()).expect("one dimension")).collect()
                }
                match dims {
                    $($d => Forest::from_slice(&arrays::<$d>(points), &opts).map(|f| CrateForest::$v(Box::new(f))),)*
                    other => return Err(ForestError::Dimension(other)),
                }
                .map_err(|e| ForestError::Repr(format!("{e:?}")))
            }

            /// The crate's score of a point.
            pub fn score(&self, x: &[f64]) -> f64 {
                match self {
                    $(CrateForest::$v(f) => f.score(&<[f64; $d]>::try_from(x).expect("point of the forest's dimension")),)*
                }
            }

            /// The forest in the crate's serde representation.
            pub fn to_repr(&self) -> Result<ForestRepr, ForestError> {
                let v = match self {
                    $(CrateForest::$v(f) => serde_json::to_value(f.as_ref()),)*
                }
                .map_err(|e| ForestError::Repr(e.to_string()))?;
                serde_json::from_value(v).map_err(|e| ForestError::Repr(e.to_string()))
            }
        }
    };
}

crate_forest! {
    1 => D1, 2 => D2, 3 => D3, 4 => D4, 5 => D5, 6 => D6, 7 => D7, 8 => D8,
    9 => D9, 10 => D10, 11 => D11, 12 => D12, 13 => D13, 14 => D14, 15 => D15, 16 => D16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: usize, dims: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n).map(|_| (0..dims).map(|_| rng.sample::<f64, _>(StandardNormal)).collect()).collect()
    }

    #[test]
    fn growth_is_reproducible_and_seed_dependent() {
        let pts = blob(1000, 4, 1);
        let p = ForestParams { n_trees: 20, sample_size: 64, extension_level: 1, seed: 5 };
        let a = ForestRepr::grow(&pts, &p).unwrap();
        assert_eq!(a, ForestRepr::grow(&pts, &p).unwrap());
        assert_ne!(a, ForestRepr::grow(&pts, &ForestParams { seed: 6, ..p }).unwrap());
    }

    #[test]
    fn the_crate_scores_our_forest_exactly_as_we_do() {
        let pts = blob(2000, 3, 2);
        for ext in 0..3 {
            let r =
                ForestRepr::grow(&pts, &ForestParams { n_trees: 50, sample_size: 128, extension_level: ext, seed: 9 })
                    .unwrap();
            let cf = CrateForest::from_repr(&r).unwrap();
            for x in blob(200, 3, 3).iter().chain([vec![8.0, -8.0, 0.0]].iter()) {
                assert_eq!(cf.score(x), r.score(x));
            }
            assert_eq!(cf.to_repr().unwrap(), r, "round trip through the crate");
        }
    }

    #[test]
    fn outliers_score_higher_than_inliers() {
        let pts = blob(3000, 2, 4);
        let r = ForestRepr::grow(&pts, &ForestParams { n_trees: 100, sample_size: 256, extension_level: 1, seed: 1 })
            .unwrap();
        assert!(r.score(&[0.0, 0.0]) < 0.5);
        assert!(r.score(&[6.0, 6.0]) > 0.6);
    }

    #[test]
    fn crate_training_converts_to_our_representation() {
        let pts = blob(1000, 2, 5);
        let cf = CrateForest::train(&pts, &ForestParams { n_trees: 10, sample_size: 64, extension_level: 0, seed: 0 })
            .unwrap();
        let r = cf.to_repr().unwrap();
        assert_eq!(r.trees.len(), 10);
        for x in blob(50, 2, 6) {
            assert_eq!(cf.score(&x), r.score(&x));
        }
    }

    /// Regression: a bounding box a few ulps wide hung the growth (rand's float
    /// `Uniform` set-up loop), seen on ec2_disk_write_bytes_1ef3de.csv.
    #[test]
    fn nearly_equal_bounds_do_not_hang() {
        let pts: Vec<Vec<f64>> =
            (0..64).map(|i| vec![if i % 2 == 0 { 30.650469916099873 } else { 30.650469916099897 }]).collect();
        let r =
            ForestRepr::grow(&pts, &ForestParams { n_trees: 5, sample_size: 32, extension_level: 0, seed: 1 }).unwrap();
        assert_eq!(r.trees.len(), 5);
    }

    /// The bisection draws what rand's `Uniform` draws, on ordinary and narrow ranges.
    #[test]
    fn uniform_equals_rands() {
        use rand::distributions::Uniform;
        let ranges =
            [(0.0, 1.0), (-3.5, 2.25), (1e6, 1e6 + 1.0), (4112.0, 4117.0), (30.0, 30.0 + 1e-6), (-1e-300, 1e-300)];
        for (lo, hi) in ranges {
            let mut a = Xoshiro256PlusPlus::seed_from_u64(3);
            let mut b = a.clone();
            for _ in 0..1000 {
                assert_eq!(uniform(&mut a, lo, hi).to_bits(), b.sample(Uniform::new(lo, hi)).to_bits(), "[{lo}, {hi})");
            }
        }
    }

    /// Regression: two values 1e-8 apart (relative) made rand's set-up loop run
    /// some 5e7 times per node; now the growth is quick.
    #[test]
    fn narrow_ranges_grow_quickly() {
        let pts: Vec<Vec<f64>> = (0..512).map(|i| vec![1.0 + (i % 2) as f64 * 2e-8, 7.0]).collect();
        let started = std::time::Instant::now();
        ForestRepr::grow(&pts, &ForestParams { n_trees: 100, sample_size: 256, extension_level: 0, seed: 1 }).unwrap();
        assert!(started.elapsed().as_secs_f64() < 2.0, "{:?}", started.elapsed());
    }

    #[test]
    fn bad_training_data_is_refused() {
        let p = ForestParams { n_trees: 2, sample_size: 4, extension_level: 0, seed: 0 };
        assert!(matches!(ForestRepr::grow(&blob(3, 2, 0), &p), Err(ForestError::InsufficientData { .. })));
        let mut pts = blob(10, 2, 0);
        pts[7] = vec![1.0, f64::NAN];
        assert!(matches!(ForestRepr::grow(&pts, &p), Err(ForestError::BadPoint { index: 7, .. })));
        assert!(matches!(
            ForestRepr::grow(&blob(10, 2, 0), &ForestParams { extension_level: 2, ..p }),
            Err(ForestError::ExtensionLevel { .. })
        ));
    }
}
