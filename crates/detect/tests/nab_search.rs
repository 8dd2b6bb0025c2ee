//! Parameter search by cross-validation over NAB categories (ignored: minutes
//! of work; run by hand).
//!
//! `NAB_GRID` is a JSON list of partial parameter sets, each merged onto the
//! defaults (e.g. `[{}, {"average": 5}, {"context": {"window": 500}}]`):
//!
//! ```sh
//! NAB_GRID='[{}, {"average": 5}]' cargo test --release -p selfheal-detect \
//!     --test nab_search -- --ignored --nocapture
//! ```
//!
//! It prints, per candidate, the score over the four labelled categories
//! together (one threshold), each category at that threshold and alone, and
//! the false alarms on artificialNoAnomaly; then the leave-one-category-out
//! table over those candidates.
//!
//! `nested_search` is the procedure the defaults come from, run once per fold
//! so that the category left out plays no part in choosing: 120 random
//! parameter sets (seeded), then coordinate descent from the best of them
//! (every value of one parameter at a time, kept if the score over the
//! training categories rises; two passes). Folds: each category left out in
//! turn, then all four (the defaults).
//!
//! ```sh
//! cargo test --release -p selfheal-detect --test nab_search nested -- --ignored --nocapture
//! ```

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::ParamGuard;
use selfheal_detect::benchmark::{cross_validate, false_alarms, score_set, Category};
use selfheal_detect::stream::StreamParams;
use selfheal_nab::PROFILES;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

const LABELLED: [&str; 4] = ["artificialWithAnomaly", "realAWSCloudwatch", "realKnownCause", "realTraffic"];

fn merge(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

#[test]
#[ignore]
fn search() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nab");
    let grid: Vec<serde_json::Value> =
        serde_json::from_str(&std::env::var("NAB_GRID").unwrap_or_else(|_| "[{}]".into())).expect("NAB_GRID");
    let cats: Vec<Category> = LABELLED.iter().map(|c| Category::load(&root, c).unwrap()).collect();
    let quiet = Category::load(&root, "artificialNoAnomaly").unwrap();
    let refs: Vec<&Category> = cats.iter().collect();
    let std = &PROFILES[0];
    let mut all = Vec::new();
    for (k, over) in grid.iter().enumerate() {
        let mut v = serde_json::to_value(StreamParams::default()).unwrap();
        merge(&mut v, over);
        let p = serde_json::from_value::<StreamParams>(v).expect("parameters").check().expect("parameters in bounds");
        let t = Instant::now();
        let scores: Vec<Vec<Vec<f64>>> = cats.iter().map(|c| c.score(&p)).collect();
        let qs = quiet.score(&p);
        let secs = t.elapsed().as_secs_f64();
        let r = score_set(&refs, &scores.iter().collect::<Vec<_>>(), std);
        let own: Vec<f64> = cats.iter().zip(&scores).map(|(c, s)| score_set(&[c], &[s], std).normalized).collect();
        let fa = false_alarms(&quiet, &qs, r.threshold);
        let clean = fa.iter().filter(|(_, n)| *n == 0).count();
        println!(
            "#{k} {over}\n    together {:.2} @ {:.4} | at joint: {} | alone: {} | quiet clean {clean}/5 {:?} | {secs:.1} s",
            r.normalized,
            r.threshold,
            r.per_category.iter().map(|(_, s)| format!("{s:.1}")).collect::<Vec<_>>().join(" "),
            own.iter().map(|s| format!("{s:.1}")).collect::<Vec<_>>().join(" "),
            fa.iter().map(|(_, n)| *n).collect::<Vec<_>>()
        );
        if let Ok(detail) = std::env::var("NAB_DETAIL") {
            for (c, s) in cats.iter().zip(&scores) {
                if c.name != detail {
                    continue;
                }
                for ((series, _), a) in c.files.iter().zip(s) {
                    let p = series.probation();
                    let fps: Vec<usize> = (p..a.len())
                        .filter(|i| a[*i] >= r.threshold && !series.windows().iter().any(|(l, r)| l <= i && i <= r))
                        .collect();
                    let hits: Vec<String> = series
                        .windows()
                        .iter()
                        .map(|(l, rr)| match (*l..=*rr).find(|i| a[*i] >= r.threshold) {
                            Some(i) => format!("[{l},{rr}]@{i}"),
                            None => {
                                format!("[{l},{rr}] MISS max {:.3}", a[*l..=*rr].iter().copied().fold(0.0, f64::max))
                            }
                        })
                        .collect();
                    println!(
                        "      {} n={} p={} score {:.2}: {} | FP {} {:?}",
                        series.name(),
                        series.len(),
                        p,
                        selfheal_nab::file_score(series, a, r.threshold, std),
                        hits.join(" "),
                        fps.len(),
                        &fps[..fps.len().min(12)]
                    );
                }
            }
        }
        all.push(scores);
    }
    if grid.len() > 1 {
        for f in cross_validate(&refs, &all, std) {
            println!(
                "CV held out {:<22} chose #{:<3} train {:.2} @ {:.4}  held-out {:.2} (own threshold {:.2})",
                f.held_out,
                f.chosen,
                f.train_score,
                f.train_threshold,
                f.held_out_at_train_threshold,
                f.held_out_own_threshold
            );
        }
    }
}

/// The values each parameter may take in the search.
fn space() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        ("context.window", json!([96, 144, 200, 288, 400, 576])),
        ("context.shingle", json!([1, 2, 3])),
        ("context.season_bins", json!([0, 12, 24, 48])),
        ("context.season_strength", json!([0.15, 0.2, 0.3, 0.5])),
        ("context.season_weight", json!([0.05, 0.1, 0.2])),
        ("average", json!([5, 10, 15, 20, 25, 30, 40])),
        ("history", json!([1000, 1500, 2000, 3000, 4000, 8640])),
        ("sd_floor", json!([0.001, 0.003, 0.006, 0.01, 0.03])),
        ("spatial_tolerance", json!([0.0, 0.01, 0.02, 0.03, 0.05, 0.1])),
        ("rest", json!([0.0, 0.05, 0.1, 0.15, 0.2, 0.3])),
        ("rest_level", json!([0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7])),
        ("forest.sample_size", json!([64, 128, 256])),
    ]
    .into_iter()
    .map(|(k, v)| (k, v.as_array().unwrap().clone()))
    .collect()
}

fn set(v: &mut Value, path: &str, x: Value) {
    let mut at = v;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        at = &mut at[*p];
    }
    at[parts[parts.len() - 1]] = x;
}

/// Scores of every labelled category for a parameter set, cached by its JSON.
struct Cache<'a> {
    cats: &'a [Category],
    scores: HashMap<String, Vec<Vec<Vec<f64>>>>,
}

impl Cache<'_> {
    fn get(&mut self, v: &Value) -> &Vec<Vec<Vec<f64>>> {
        let key = v.to_string();
        let cats = self.cats;
        self.scores.entry(key).or_insert_with(|| {
            // The values are candidate parameter sets built by this test.
            #[allow(clippy::expect_used)]
            let p = serde_json::from_value::<StreamParams>(v.clone())
                .expect("parameters")
                .check()
                .expect("parameters in bounds");
            cats.iter().map(|c| c.score(&p)).collect()
        })
    }

    /// The set score over the categories `train` (one threshold).
    fn score(&mut self, v: &Value, train: &[usize]) -> (f64, f64) {
        let cats = self.cats;
        let s = self.get(v);
        let tc: Vec<&Category> = train.iter().map(|c| &cats[*c]).collect();
        let ts: Vec<&Vec<Vec<f64>>> = train.iter().map(|c| &s[*c]).collect();
        let r = score_set(&tc, &ts, &PROFILES[0]);
        (r.normalized, r.threshold)
    }
}

#[test]
#[ignore]
fn nested_search() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/nab");
    let cats: Vec<Category> = LABELLED.iter().map(|c| Category::load(&root, c).unwrap()).collect();
    let space = space();
    let base = serde_json::to_value(StreamParams::default()).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(15);
    let random: Vec<Value> = (0..120)
        .map(|_| {
            let mut v = base.clone();
            for (path, values) in &space {
                set(&mut v, path, values.choose(&mut rng).unwrap().clone());
            }
            v
        })
        .collect();
    let mut cache = Cache { cats: &cats, scores: HashMap::new() };
    let t = Instant::now();
    for v in &random {
        cache.get(v);
    }
    eprintln!("120 random sets scored in {:.0} s", t.elapsed().as_secs_f64());
    let folds: Vec<Option<usize>> = (0..cats.len()).map(Some).chain([None]).collect();
    for out in folds {
        let train: Vec<usize> = (0..cats.len()).filter(|c| Some(*c) != out).collect();
        let mut best = random[0].clone();
        let mut best_score = cache.score(&best, &train).0;
        for v in &random[1..] {
            let s = cache.score(v, &train).0;
            if s > best_score {
                (best, best_score) = (v.clone(), s);
            }
        }
        let from_random = best_score;
        for _pass in 0..2 {
            let mut improved = false;
            for (path, values) in &space {
                for x in values {
                    let mut v = best.clone();
                    set(&mut v, path, x.clone());
                    let s = cache.score(&v, &train).0;
                    if s > best_score + 1e-9 {
                        (best, best_score, improved) = (v, s, true);
                    }
                }
            }
            if !improved {
                break;
            }
        }
        let (train_score, threshold) = cache.score(&best, &train);
        let name = out.map_or("(none: all four)".to_owned(), |c| cats[c].name.clone());
        match out {
            Some(c) => {
                let s = cache.get(&best)[c].clone();
                let at = score_set(&[&cats[c]], &[&s], &PROFILES[0]);
                let raw: f64 = cats[c]
                    .files
                    .iter()
                    .zip(&s)
                    .map(|((series, _), a)| selfheal_nab::file_score(series, a, threshold, &PROFILES[0]))
                    .sum();
                let held = selfheal_nab::normalize(raw, cats[c].windows(), &PROFILES[0]);
                println!(
                    "NESTED held out {name:<22} train {train_score:.2} (random best {from_random:.2}) @ {threshold:.4}  \
                     held-out {held:.2} (own threshold {:.2})\n    {best}",
                    at.normalized
                );
            }
            None => println!(
                "NESTED {name} train {train_score:.2} (random best {from_random:.2}) @ {threshold:.4}\n    {best}"
            ),
        }
    }
}
