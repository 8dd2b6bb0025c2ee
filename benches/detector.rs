//! Anomaly scoring: the `extended-isolation-forest` crate's scorer against our
//! flat one (issue 6).
//!
//! Run with `cargo bench --bench detector`; `cargo test --benches` runs each
//! benchmark once as a smoke test. Results are recorded in `benches/RESULTS.md`.
//!
//! Every forest has 100 trees of 256 samples, grown with a fixed seed on 4096
//! standard-normal training points by `ForestRepr::grow`. The crate scores it
//! through `CrateForest::from_repr` (the crate's own `Forest<f64, N>`), ours
//! through `FlatForest::compile`; both score the very same trees. Variants:
//! 4, 8 and 16 dimensions with extension level 0 (axis-parallel splits), and
//! `4d-extended` with extension level 3 (fully oblique splits).
//!
//! - `score/single/{crate,flat}/{variant}`: one point per iteration, cycling
//!   through 1024 pre-generated query points (three in four inliers, one in four
//!   outliers, interleaved pseudo-randomly), so branch prediction sees a
//!   realistic mix rather than one repeated path;
//! - `score/batch/{crate,flat}/{variant}`: 10,000 points per iteration (the
//!   same mix), throughput in points. The crate has no batch call, so its batch
//!   is a loop of `score` calls into a reused output vector; ours is
//!   `FlatForest::score_batch` into a reused vector.
//! - `detect/nab/{crate,flat}` (issue 15): the whole streaming detector of
//!   `selfheal detect` (context features, forest growth, scoring, likelihood)
//!   over every file of every category in `../shared/data/nab`, one core,
//!   throughput in rows; `crate` is the same detector scoring with the crate's
//!   `Forest::score`, `flat` with `FlatForest::score`, in the same run.
//! - `detect/degenerate/{constant,two-level,period-3}`: 100,000-row series
//!   of each kind through the same detector (they once took minutes).

use criterion::measurement::WallTime;
use criterion::{
    black_box, criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_detect::benchmark::{score_series, score_series_reference, Category};
use selfheal_detect::flat::FlatForest;
use selfheal_detect::forest::{CrateForest, ForestParams, ForestRepr};
use std::time::{Duration, Instant};

/// Training points per forest.
const TRAIN: usize = 4096;
/// Query points cycled through by the single-call benchmarks (a power of two).
const QUERIES: usize = 1024;
/// Points per batch iteration.
const BATCH: usize = 10_000;
/// Measurement window of each benchmark (warm-up is 1 s).
const WINDOW: Duration = Duration::from_millis(2500);

/// One forest under test, in both scorers.
struct Case {
    /// `4d`, `4d-extended`, ...
    name: String,
    dims: usize,
    reference: CrateForest,
    flat: FlatForest,
}

/// A standard normal by Box–Muller (the root package has no `rand_distr`).
fn normal(rng: &mut Xoshiro256PlusPlus) -> f64 {
    let u: f64 = 1.0 - rng.gen::<f64>(); // in (0, 1]
    let v: f64 = rng.gen();
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

/// `n` points of `dims` values, one row after another: an inlier (standard
/// normal) with probability 3/4, else an outlier (a standard normal scaled by 5,
/// so most of them lie well outside the training cloud).
fn queries(n: usize, dims: usize, seed: u64) -> Vec<f64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n * dims);
    for _ in 0..n {
        let scale = if rng.gen_bool(0.25) { 5.0 } else { 1.0 };
        for _ in 0..dims {
            out.push(scale * normal(&mut rng));
        }
    }
    out
}

fn case(dims: usize, extension_level: usize) -> Case {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(dims as u64);
    let train: Vec<Vec<f64>> = (0..TRAIN).map(|_| (0..dims).map(|_| normal(&mut rng)).collect()).collect();
    let params = ForestParams { n_trees: 100, sample_size: 256, extension_level, seed: 6 };
    let repr = ForestRepr::grow(&train, &params).expect("forest grows");
    let reference = CrateForest::from_repr(&repr).expect("the crate reads the forest");
    let flat = FlatForest::compile(&repr);
    // Both scorers must be scoring the same forest, or the ratio means nothing.
    for x in queries(64, dims, 1).chunks_exact(dims) {
        let (a, b) = (reference.score(x), flat.score(x));
        assert!((a - b).abs() <= 1e-9, "{dims}d ext {extension_level}: crate {a}, flat {b}");
    }
    let name = if extension_level == 0 { format!("{dims}d") } else { format!("{dims}d-extended") };
    Case { name, dims, reference, flat }
}

fn cases() -> Vec<Case> {
    vec![case(4, 0), case(4, 3), case(8, 0), case(16, 0)]
}

/// A group with short measurement windows, so that the whole run stays well
/// under two minutes.
fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(WINDOW);
    g
}

fn single(c: &mut Criterion) {
    let mut g = group(c, "score/single");
    g.throughput(Throughput::Elements(1));
    for case in &cases() {
        let qs = queries(QUERIES, case.dims, 2);
        let dims = case.dims;
        let mut i = 0;
        g.bench_function(BenchmarkId::new("crate", &case.name), |b| {
            b.iter(|| {
                i = (i + 1) % QUERIES;
                case.reference.score(black_box(&qs[i * dims..(i + 1) * dims]))
            })
        });
        let mut i = 0;
        g.bench_function(BenchmarkId::new("flat", &case.name), |b| {
            b.iter(|| {
                i = (i + 1) % QUERIES;
                case.flat.score(black_box(&qs[i * dims..(i + 1) * dims]))
            })
        });
    }
    g.finish();
}

fn batch(c: &mut Criterion) {
    let mut g = group(c, "score/batch");
    // An iteration takes tens to hundreds of milliseconds: flat sampling with
    // criterion's minimum of 10 samples, and a window stretched where 10
    // iterations would not fit (the crate at 16 dimensions), so criterion has
    // no reason to warn.
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.throughput(Throughput::Elements(BATCH as u64));
    for case in &cases() {
        let qs = queries(BATCH, case.dims, 3);
        let mut out = Vec::with_capacity(BATCH);
        let start = Instant::now();
        out.extend(qs.chunks_exact(case.dims).map(|x| case.reference.score(x)));
        g.measurement_time(WINDOW.max(start.elapsed() * 12));
        g.bench_function(BenchmarkId::new("crate", &case.name), |b| {
            b.iter(|| {
                out.clear();
                out.extend(black_box(&qs).chunks_exact(case.dims).map(|x| case.reference.score(x)));
                black_box(&out);
            })
        });
        g.measurement_time(WINDOW);
        g.bench_function(BenchmarkId::new("flat", &case.name), |b| {
            b.iter(|| {
                case.flat.score_batch(black_box(&qs), &mut out);
                black_box(&out);
            })
        });
    }
    g.finish();
}

/// Every category folder of `../shared/data/nab` (files and row times).
fn nab_corpus() -> Vec<Category> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/nab");
    let mut names: Vec<String> = std::fs::read_dir(&root)
        .expect("NAB data beside the repository")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && std::fs::read_dir(p)
                    .is_ok_and(|d| d.flatten().any(|f| f.path().extension().is_some_and(|x| x == "csv")))
        })
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.iter().map(|n| Category::load(&root, n).expect("a NAB category")).collect()
}

fn detect(c: &mut Criterion) {
    let cats = nab_corpus();
    let series: Vec<(&Vec<Option<i64>>, &Vec<f64>)> =
        cats.iter().flat_map(|c| c.stamps.iter().zip(c.files.iter().map(|(_, v)| v))).collect();
    let rows: usize = series.iter().map(|(_, v)| v.len()).sum();
    let p = selfheal_core::Checked::<selfheal_detect::stream::StreamParams>::default();
    // Both scorers see the same trees: the detector's outputs must agree.
    for (t, v) in series.iter().take(3) {
        let (a, b) = (score_series(&p, t, v), score_series_reference(&p, t, v));
        assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-6), "flat and crate scorers disagree");
    }
    let mut g = c.benchmark_group("detect/nab");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(rows as u64));
    g.bench_function("flat", |b| b.iter(|| series.iter().map(|(t, v)| score_series(&p, t, v).len()).sum::<usize>()));
    g.measurement_time(Duration::from_secs(60));
    g.bench_function("crate", |b| {
        b.iter(|| series.iter().map(|(t, v)| score_series_reference(&p, t, v).len()).sum::<usize>())
    });
    g.finish();

    let mut g = c.benchmark_group("detect/degenerate");
    g.sampling_mode(SamplingMode::Flat);
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    const ROWS: usize = 100_000;
    g.throughput(Throughput::Elements(ROWS as u64));
    let stamps: Vec<Option<i64>> = (0..ROWS).map(|i| Some(60_000 * i as i64)).collect();
    let kinds: [(&str, Vec<f64>); 3] = [
        ("constant", vec![42.0; ROWS]),
        ("two-level", (0..ROWS).map(|i| if i % 2 == 0 { 4117.0 } else { 4112.0 }).collect()),
        ("period-3", (0..ROWS).map(|i| [3.0, 7.0, 5.0][i % 3]).collect()),
    ];
    for (name, values) in &kinds {
        g.bench_function(*name, |b| b.iter(|| score_series(&p, &stamps, values).len()));
    }
    g.finish();
}

criterion_group!(benches, single, batch, detect);
criterion_main!(benches);
