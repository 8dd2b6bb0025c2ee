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
//! table.

use selfheal_detect::benchmark::{cross_validate, false_alarms, score_set, Category};
use selfheal_detect::nab::PROFILES;
use selfheal_detect::stream::StreamParams;
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
        let p: StreamParams = serde_json::from_value(v).expect("parameters");
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
                        selfheal_detect::nab::file_score(series, a, r.threshold, std),
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
