//! A forest compiled for single-point scoring.
//!
//! The crate's trees are boxed nodes, each carrying full-length normal and
//! intercept vectors: scoring one point chases a pointer per level and does a
//! dense dot product even where most coordinates of the normal are zero. A
//! forest of 100 trees of 256 samples has some 40,000 nodes, and a single call
//! visits about 800 of them, so what decides the speed is how many cache lines
//! those visits touch and how many branches they mispredict. Here:
//!
//! - each tree is laid out breadth-first with the two children of a node side
//!   by side, so the hot top levels of a tree share a few cache lines and the
//!   child is `first_child + went_right`, with no branch on the direction;
//! - a node is 12 bytes in two parallel arrays: a `u32` (first child, and a tag
//!   saying which coordinate, or a full dot product) and an `f64` (the
//!   intercept), so the forest fits in a core's L2 cache; a leaf is a split that
//!   sends every point to itself, and its whole path length (depth plus the
//!   c-factor of its sample count) waits in a side table;
//! - eight trees are walked in lock-step for the forest's depth, with no test
//!   for having arrived, so eight chains of dependent loads overlap;
//! - a split keeps only the non-zero coordinates of its normal; axis-parallel
//!   splits (extension level 0, and any split whose normal has one non-zero
//!   coordinate) are a single subtraction and compare.
//!
//! A split on one coordinate with n < 0 is stored with its children swapped
//! and threshold next_down(p), so every such split is the same `x ≤ t` test.
//!
//! Results equal the crate's: the split test is the crate's `Σ (x_i − p_i)·n_i
//! ≤ 0` over the same coordinates in the same order (zero terms cannot change a
//! non-zero sum's sign), and leaf values are accumulated in the crate's order.
//! Points must be finite (the detectors reject anything else before scoring).
//! The differential test checks 1e-9.

use crate::forest::{c_factor, ForestRepr, NodeRepr};
use std::collections::VecDeque;

/// Tags below this: one coordinate; the first child iff x ≤ value.
const LE_END: u32 = 120;
/// Several coordinates: a dot product over `dots[value bits]`.
const DOT: u32 = 253;
/// Trees walked in lock-step.
const LANES: usize = 8;

/// One node: 16 bytes, one cache line holds four.
#[derive(Clone, Copy, Debug)]
struct Node {
    /// Threshold of `x[tag] ≤ value` (+∞ for leaves and "always left"), or
    /// the index of a dot product's coefficients in its bits.
    value: f64,
    /// Index of the first child (the node itself for a leaf).
    child: u32,
    /// The coordinate tested, or [`DOT`].
    tag: u32,
}

/// A forest in a flat layout.
#[derive(Clone, Debug)]
pub struct FlatForest {
    dims: usize,
    c: f64,
    /// Root of every tree, padded with a zero-length leaf to a multiple of
    /// [`LANES`] (adding 0.0 to the sum changes nothing).
    roots: Vec<u32>,
    trees: usize,
    nodes: Vec<Node>,
    /// (start, len) into `coefs` for each DOT split.
    dots: Vec<(u32, u32)>,
    /// (coordinate, n, p) of DOT splits.
    coefs: Vec<(u32, f64, f64)>,
    /// Path length of each leaf (0 for splits).
    leaf_len: Vec<f64>,
    /// Deepest leaf: every walk ends within this many steps.
    depth: u32,
}

impl FlatForest {
    /// Compile a forest.
    ///
    /// # Panics
    /// If a forest has 120 or more dimensions or 4 billion nodes.
    pub fn compile(f: &ForestRepr) -> FlatForest {
        let dims = f.dims();
        assert!(dims < LE_END as usize, "the flat scorer handles fewer than {LE_END} dimensions");
        let mut out = FlatForest {
            dims,
            c: f.avg_path_length_c,
            roots: Vec::new(),
            trees: f.trees.len(),
            nodes: Vec::new(),
            dots: Vec::new(),
            coefs: Vec::new(),
            leaf_len: Vec::new(),
            depth: 0,
        };
        for t in &f.trees {
            let root = out.alloc(1);
            out.roots.push(root as u32);
            let mut queue: VecDeque<(&NodeRepr, usize, u32)> = VecDeque::from([(&t.root, root, 0)]);
            while let Some((node, at, depth)) = queue.pop_front() {
                match node {
                    NodeRepr::Ex { num_samples } => {
                        // The crate adds 1.0 per level on the way back up: same order here.
                        let mut v = if *num_samples <= 1 { 0.0 } else { c_factor(*num_samples) };
                        for _ in 0..depth {
                            v += 1.0;
                        }
                        // A leaf is a split that always goes "left" to itself, so
                        // walks can run a fixed number of steps without checking.
                        out.nodes[at] = Node { value: f64::INFINITY, child: at as u32, tag: 0 };
                        out.leaf_len[at] = v;
                        out.depth = out.depth.max(depth);
                    }
                    NodeRepr::In { left, right, n, p } => {
                        let children = out.alloc(2);
                        let nz: Vec<usize> = (0..n.len()).filter(|i| n[*i] != 0.0).collect();
                        let (tag, value, swap) = match nz.as_slice() {
                            // No non-zero coordinate: (x − p)·0 = 0 ≤ 0, always left.
                            [] => (0, f64::INFINITY, false),
                            // n > 0: left iff x − p ≤ 0 ⟺ x ≤ p (finite x).
                            [i] if n[*i] > 0.0 => (*i as u32, p[*i], false),
                            // n < 0: left iff x − p ≥ 0 ⟺ x > next_down(p); with the
                            // children swapped this is the same test as n > 0, so no
                            // per-node sign (a branch that mispredicted half the time).
                            [i] => (*i as u32, next_down(p[*i]), true),
                            many => {
                                let start = out.coefs.len() as u32;
                                out.coefs.extend(many.iter().map(|i| (*i as u32, n[*i], p[*i])));
                                out.dots.push((start, many.len() as u32));
                                (DOT, f64::from_bits(out.dots.len() as u64 - 1), false)
                            }
                        };
                        out.nodes[at] = Node { value, child: children as u32, tag };
                        let (first, second) = if swap { (right, left) } else { (left, right) };
                        queue.push_back((first, children, depth + 1));
                        queue.push_back((second, children + 1, depth + 1));
                    }
                }
            }
        }
        while !out.roots.len().is_multiple_of(LANES) {
            let pad = out.alloc(1);
            out.nodes[pad] = Node { value: f64::INFINITY, child: pad as u32, tag: 0 };
            out.roots.push(pad as u32);
        }
        out
    }

    fn alloc(&mut self, n: usize) -> usize {
        let at = self.nodes.len();
        assert!(at + n <= u32::MAX as usize, "forest too large for the flat layout");
        self.nodes.resize(at + n, Node { value: f64::INFINITY, child: 0, tag: 0 });
        self.leaf_len.resize(at + n, 0.0);
        at
    }

    /// Dimension of the points it scores.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Nodes over all trees (the padding leaves included).
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// One step from node `i`: the child `x` goes to (a leaf steps to itself).
    // The negated comparisons are the point: NaN goes right, as in the crate.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    #[inline(always)]
    fn step(&self, i: usize, x: &[f64]) -> usize {
        let n = self.nodes[i];
        let right = if n.tag < LE_END {
            !(x[n.tag as usize] <= n.value)
        } else {
            let (start, len) = self.dots[n.value.to_bits() as usize];
            let cs = &self.coefs[start as usize..(start + len) as usize];
            !(cs.iter().fold(0.0, |s, (d, w, p)| s + (x[*d as usize] - p) * w) <= 0.0)
        };
        n.child as usize + usize::from(right)
    }

    /// One step of a forest with axis-parallel splits only: one load, one
    /// compare, no branch.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    #[inline(always)]
    fn step_axis(&self, i: usize, x: &[f64]) -> usize {
        let n = self.nodes[i];
        n.child as usize + usize::from(!(x[n.tag as usize] <= n.value))
    }

    /// Sum of the path lengths of `x` over all trees. Eight trees are walked
    /// in lock-step for a fixed number of steps, so the eight chains of
    /// dependent loads overlap instead of waiting on each other.
    fn total_path(&self, x: &[f64]) -> f64 {
        if self.dots.is_empty() {
            self.walk(x, Self::step_axis)
        } else {
            self.walk(x, Self::step)
        }
    }

    #[inline(always)]
    fn walk(&self, x: &[f64], step: impl Fn(&Self, usize, &[f64]) -> usize) -> f64 {
        let mut total = 0.0;
        for chunk in self.roots.chunks_exact(LANES) {
            let mut at = [0usize; LANES];
            for (a, r) in at.iter_mut().zip(chunk) {
                *a = *r as usize;
            }
            for _ in 0..self.depth {
                for a in at.iter_mut() {
                    *a = step(self, *a, x);
                }
            }
            // Sum in tree order, as the crate does (padding adds 0.0).
            for a in at {
                total += self.leaf_len[a];
            }
        }
        total
    }

    /// The anomaly score of one point, in (0, 1]; near 1 is anomalous.
    ///
    /// # Panics
    /// If `x` is shorter than [`FlatForest::dims`].
    pub fn score(&self, x: &[f64]) -> f64 {
        assert!(x.len() >= self.dims, "point has {} values, the forest scores {}", x.len(), self.dims);
        debug_assert!(x.iter().all(|v| v.is_finite()), "scores need finite points");
        let total = self.total_path(&x[..self.dims.max(1).min(x.len())]);
        2.0_f64.powf(-(total / self.trees as f64) / self.c)
    }

    /// Scores of many points (rows of `dims` values), written into `out`.
    pub fn score_batch(&self, points: &[f64], out: &mut Vec<f64>) {
        out.clear();
        out.extend(points.chunks_exact(self.dims.max(1)).map(|x| self.score(x)));
    }
}

/// The largest f64 below `p` (f64::next_down, which needs Rust 1.86).
fn next_down(p: f64) -> f64 {
    if p == 0.0 {
        -f64::from_bits(1)
    } else if p > 0.0 {
        f64::from_bits(p.to_bits() - 1)
    } else {
        f64::from_bits(p.to_bits() + 1)
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
