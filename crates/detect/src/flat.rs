//! A forest compiled for single-point scoring.
//!
//! The crate's trees are boxed nodes, each carrying full-length normal and
//! intercept vectors: scoring one point chases a pointer per level and does a
//! dense dot product even where most coordinates of the normal are zero. Here
//! every tree lives in one array, depth-first, so the left child is the next
//! node and only the right child's index is stored; a split keeps only the
//! non-zero coordinates of its normal; and a leaf stores its whole path length
//! (depth plus the c-factor of its sample count), so a tree walk is a handful of
//! compares and one add. Axis-parallel splits (extension level 0, and any split
//! whose normal has one non-zero coordinate) reduce to a single compare.
//!
//! Results equal the crate's to the last bit in practice: the split test keeps the
//! crate's arithmetic `Σ (x_i − p_i)·n_i` over the same coordinates in the same
//! order (zero terms cannot change a non-zero sum's sign), and leaf values are
//! accumulated in the crate's order. The differential test checks 1e-9.

use crate::forest::{c_factor, ForestRepr, NodeRepr};

const LEAF: u8 = 0;
const LE: u8 = 1; // one coordinate, n > 0: left iff x ≤ p
const GE: u8 = 2; // one coordinate, n < 0: left iff x ≥ p
const DOT: u8 = 3; // several coordinates: left iff Σ (x_i − p_i)·n_i ≤ 0
const ZERO: u8 = 4; // no non-zero coordinate: always left

#[derive(Clone, Copy, Debug, Default)]
struct Node {
    kind: u8,
    /// Coordinate (LE/GE) or number of coefficients (DOT).
    dim: u16,
    /// Right child (internal) or start of coefficients (DOT uses `coef`).
    right: u32,
    /// Threshold p (LE/GE) or path length (leaf).
    value: f64,
    /// Start of the coefficients of a DOT split.
    coef: u32,
}

/// A forest in a flat layout.
#[derive(Clone, Debug)]
pub struct FlatForest {
    dims: usize,
    c: f64,
    roots: Vec<u32>,
    nodes: Vec<Node>,
    /// (coordinate, n, p) of DOT splits.
    coefs: Vec<(u32, f64, f64)>,
}

impl FlatForest {
    /// Compile a forest.
    pub fn compile(f: &ForestRepr) -> FlatForest {
        let mut out = FlatForest {
            dims: f.dims(),
            c: f.avg_path_length_c,
            roots: Vec::new(),
            nodes: Vec::new(),
            coefs: Vec::new(),
        };
        for t in &f.trees {
            out.roots.push(out.nodes.len() as u32);
            out.push(&t.root, 0);
        }
        out
    }

    fn push(&mut self, n: &NodeRepr, depth: u32) {
        let at = self.nodes.len();
        self.nodes.push(Node::default());
        match n {
            NodeRepr::Ex { num_samples } => {
                // The crate adds 1.0 per level on the way back up: same order here.
                let mut v = if *num_samples <= 1 { 0.0 } else { c_factor(*num_samples) };
                for _ in 0..depth {
                    v += 1.0;
                }
                self.nodes[at] = Node { kind: LEAF, value: v, ..Node::default() };
            }
            NodeRepr::In { left, right, n, p } => {
                let nz: Vec<usize> = (0..n.len()).filter(|i| n[*i] != 0.0).collect();
                let node = match nz.as_slice() {
                    [] => Node { kind: ZERO, ..Node::default() },
                    [i] => Node {
                        kind: if n[*i] > 0.0 { LE } else { GE },
                        dim: *i as u16,
                        value: p[*i],
                        ..Node::default()
                    },
                    many => {
                        let coef = self.coefs.len() as u32;
                        self.coefs.extend(many.iter().map(|i| (*i as u32, n[*i], p[*i])));
                        Node { kind: DOT, dim: many.len() as u16, coef, ..Node::default() }
                    }
                };
                self.nodes[at] = node;
                self.push(left, depth + 1);
                let r = self.nodes.len() as u32;
                self.nodes[at].right = r;
                self.push(right, depth + 1);
            }
        }
    }

    /// Dimension of the points it scores.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Nodes over all trees.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Path length of `x` in the tree rooted at `root`.
    #[inline]
    fn path(&self, root: u32, x: &[f64]) -> f64 {
        let mut i = root as usize;
        loop {
            let n = &self.nodes[i];
            let left = match n.kind {
                LEAF => return n.value,
                LE => x[usize::from(n.dim)] - n.value <= 0.0,
                GE => x[usize::from(n.dim)] - n.value >= 0.0,
                DOT => {
                    let cs = &self.coefs[n.coef as usize..n.coef as usize + usize::from(n.dim)];
                    cs.iter().fold(0.0, |s, (d, w, p)| s + (x[*d as usize] - p) * w) <= 0.0
                }
                _ => true,
            };
            i = if left { i + 1 } else { n.right as usize };
        }
    }

    /// The anomaly score of one point, in (0, 1]; near 1 is anomalous.
    ///
    /// # Panics
    /// If `x` is shorter than [`FlatForest::dims`].
    pub fn score(&self, x: &[f64]) -> f64 {
        assert!(x.len() >= self.dims, "point has {} values, the forest scores {}", x.len(), self.dims);
        let total: f64 = self.roots.iter().map(|r| self.path(*r, x)).sum();
        2.0_f64.powf(-(total / self.roots.len() as f64) / self.c)
    }

    /// Scores of many points (rows of `dims` values), written into `out`.
    pub fn score_batch(&self, points: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(points.chunks_exact(self.dims.max(1)).map(|x| self.score(x)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::{CrateForest, ForestParams};
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    fn points(n: usize, dims: usize, seed: u64, spread: f64) -> Vec<Vec<f64>> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        (0..n).map(|_| (0..dims).map(|_| rng.gen_range(-spread..spread)).collect()).collect()
    }

    /// The differential test of the issue: on 10k random points the flat scorer
    /// equals the crate's `Forest::score` to 1e-9, for several dimensions and
    /// extension levels.
    #[test]
    fn flat_scores_equal_the_crates_on_10k_points() {
        for (dims, ext) in [(1, 0), (4, 0), (4, 3), (8, 2), (16, 0), (16, 15)] {
            let train = points(3000, dims, dims as u64, 1.0);
            let repr = ForestRepr::grow(
                &train,
                &ForestParams { n_trees: 100, sample_size: 256, extension_level: ext, seed: 11 },
            )
            .unwrap();
            let reference = CrateForest::from_repr(&repr).unwrap();
            let flat = FlatForest::compile(&repr);
            let mut worst: f64 = 0.0;
            for x in points(10_000, dims, 99, 2.0) {
                worst = worst.max((flat.score(&x) - reference.score(&x)).abs());
            }
            assert!(worst <= 1e-9, "dims {dims} ext {ext}: max difference {worst}");
        }
    }

    #[test]
    fn flat_scores_a_forest_the_crate_trained() {
        let train = points(2000, 3, 1, 1.0);
        let cf =
            CrateForest::train(&train, &ForestParams { n_trees: 30, sample_size: 128, extension_level: 2, seed: 0 })
                .unwrap();
        let flat = FlatForest::compile(&cf.to_repr().unwrap());
        for x in points(1000, 3, 2, 2.0) {
            assert!((flat.score(&x) - cf.score(&x)).abs() <= 1e-9);
        }
    }

    #[test]
    fn batch_equals_single() {
        let train = points(600, 2, 3, 1.0);
        let flat = FlatForest::compile(
            &ForestRepr::grow(&train, &ForestParams { n_trees: 10, sample_size: 64, extension_level: 1, seed: 1 })
                .unwrap(),
        );
        let xs: Vec<f64> = points(50, 2, 4, 2.0).concat();
        let mut out = Vec::new();
        flat.score_batch(&xs, &mut out);
        assert_eq!(out.len(), 50);
        for (i, x) in xs.chunks(2).enumerate() {
            assert_eq!(out[i], flat.score(x));
        }
    }
}
