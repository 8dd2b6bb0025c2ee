//! Degenerate series score in time linear in their rows, and runs reproduce.
//!
//! The growth of a forest on near-identical points once hung in rand's float
//! `Uniform` set-up (23 s for the 200 rows of `field-cases/two-level-200.csv`);
//! these tests hold every kind of degenerate input to a generous bound (the
//! release figures are in benches/RESULTS.md).

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::time::parse_stamp;
use selfheal_core::{Checked, Metric, ParamGuard, Telemetry};
use selfheal_detect::benchmark::score_series;
use selfheal_detect::forest::ForestParams;
use selfheal_detect::stream::StreamParams;
use selfheal_detect::telemetry::{DetectorModel, FitParams};
use std::path::Path;
use std::time::{Duration, Instant};

/// Generous: a 100,000-row series takes well under a second in release.
const BOUND: Duration = Duration::from_secs(10);

const ROWS: usize = 100_000;

/// One row a minute from 2026-11-23 00:00 UTC.
fn stamps(n: usize) -> Vec<Option<i64>> {
    let t0 = parse_stamp("2026-11-23 00:00:00").unwrap().unix_ms();
    (0..n).map(|i| Some(t0 + 60_000 * i as i64)).collect()
}

fn timed(values: &[f64]) -> (Vec<f64>, Duration) {
    let t = Instant::now();
    let out = score_series(&Checked::default(), &stamps(values.len()), values);
    (out, t.elapsed())
}

fn check(name: &str, values: &[f64]) -> Vec<f64> {
    let (out, took) = timed(values);
    eprintln!("{name}: {} rows in {took:?}", values.len());
    assert!(took < BOUND, "{name}: {} rows took {took:?}", values.len());
    assert_eq!(out.len(), values.len());
    assert!(out.iter().all(|s| (0.0..=1.0).contains(s)), "{name}: a score outside [0, 1]");
    out
}

#[test]
fn a_constant_series_is_quick_and_quiet() {
    let out = check("constant", &vec![42.0; ROWS]);
    assert!(out.iter().all(|s| *s < 0.1), "a constant series raised {}", out.iter().copied().fold(0.0, f64::max));
}

#[test]
fn a_two_level_series_is_quick() {
    let values: Vec<f64> = (0..ROWS).map(|i| if i % 2 == 0 { 4117.0 } else { 4112.0 }).collect();
    check("two-level", &values);
    // Two levels a few ulps apart: the case that hung the growth.
    let values: Vec<f64> =
        (0..ROWS).map(|i| if i % 2 == 0 { 30.650469916099873 } else { 30.650469916099897 }).collect();
    check("two-level, ulps apart", &values);
    let values: Vec<f64> = (0..ROWS).map(|i| if i % 2 == 0 { 1.0 } else { 1.0 + 2e-8 }).collect();
    check("two-level, 2e-8 apart", &values);
}

#[test]
fn a_short_period_series_is_quick() {
    let values: Vec<f64> = (0..ROWS).map(|i| [3.0, 7.0, 5.0][i % 3]).collect();
    check("period 3", &values);
}

#[test]
fn time_grows_linearly_with_rows() {
    let values: Vec<f64> = (0..4 * 25_000).map(|i| if (i / 7) % 2 == 0 { 10.0 } else { 11.0 }).collect();
    let (_, small) = timed(&values[..25_000]);
    let (_, large) = timed(&values);
    // Four times the rows: allow up to eight times the time (noise, caches).
    assert!(large < small * 8 + Duration::from_millis(50), "25k rows {small:?}, 100k rows {large:?}");
}

#[test]
fn the_two_level_field_case_is_quick() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/field-cases/two-level-200.csv");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (stamps, values): (Vec<Option<i64>>, Vec<f64>) = text
        .lines()
        .skip(1)
        .map(|l| {
            let (t, v) = l.split_once(',').unwrap();
            (parse_stamp(t).map(|s| s.unix_ms()), v.trim().parse::<f64>().unwrap())
        })
        .unzip();
    assert_eq!(values.len(), 200);
    let t = Instant::now();
    let out = score_series(&Checked::default(), &stamps, &values);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(out.iter().all(|s| (0.0..=1.0).contains(s)));
}

#[test]
fn same_input_and_seed_same_scores_another_seed_other_scores() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut values: Vec<f64> =
        (0..5000).map(|i| 50.0 + 10.0 * (i as f64 * 0.02).sin() + rng.gen_range(-1.0..1.0)).collect();
    values[4000] = 90.0;
    let t = stamps(values.len());
    let p = StreamParams::default();
    let checked = p.check().unwrap();
    let a = score_series(&checked, &t, &values);
    assert_eq!(a, score_series(&checked, &t, &values));
    let other = StreamParams { forest: ForestParams { seed: 1, ..p.forest }, ..p }.check().unwrap();
    assert_ne!(a, score_series(&other, &t, &values));
}

/// The pipeline detector's fit on degenerate healthy windows (every metric
/// constant, or flipping between two close levels) is quick too.
#[test]
fn the_pipeline_detector_fits_degenerate_windows_quickly() {
    let window = |i: usize, two_level: bool| {
        let mut t = Telemetry::default();
        let wobble = if two_level && i % 2 == 1 { 1e-8 } else { 0.0 };
        t.set(Metric::RecordsIn, 1000.0);
        t.set(Metric::RecordsRead, 1000.0);
        t.set(Metric::HeapUsage, 0.5 + wobble);
        t.set(Metric::CpuLoad, 0.5 + wobble);
        t.set(Metric::Skewness, 1.2 + wobble);
        t.set(Metric::ElapsedTime, 45_000.0 * (1.0 + wobble));
        t.set(Metric::LatencyP95, 60.0 * (1.0 + wobble));
        t
    };
    let p = FitParams {
        forest: ForestParams { n_trees: 100, sample_size: 256, extension_level: 0, seed: 3 },
        false_alarm_rate: 0.01,
        k_min: 2,
        k_max: 6,
        signature_seed: 4,
    };
    for two_level in [false, true] {
        let healthy: Vec<Telemetry> = (0..20_000).map(|i| window(i, two_level)).collect();
        let mut faulty: Vec<Telemetry> = (0..200).map(|i| window(i, two_level)).collect();
        for (i, t) in faulty.iter_mut().enumerate() {
            t.set(Metric::ErrorsSchema, 500.0 + (i % 7) as f64 * 50.0);
            t.set(Metric::HeapUsage, if i % 2 == 0 { 0.95 } else { 0.5 });
        }
        let t = Instant::now();
        let fitted = DetectorModel::fit("degenerate", &healthy, &faulty, &p.check().unwrap());
        assert!(t.elapsed() < BOUND, "two-level {two_level}: fit took {:?}", t.elapsed());
        eprintln!("pipeline fit, two-level {two_level}: {:?} ({})", t.elapsed(), fitted.is_ok());
    }
}
