//! `selfheal nab`: the streaming detector scored by the Numenta Anomaly
//! Benchmark's rules, next to NAB's published detectors.

use crate::commands::detect;
use anyhow::{bail, Context, Result};
use selfheal_detect::benchmark::{self, Category};
use selfheal_nab::{file_score, normalize, sweep, LabeledSeries, Profile, PROFILES, START_THRESHOLD};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Output format.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON document.
    Json,
}

/// The category the published per-category scores below are for.
const AWS: &str = "realAWSCloudwatch";

/// NAB's detectors on realAWSCloudwatch only (standard, low-FP, low-FN),
/// computed at their corpus-wide thresholds (config/thresholds.json) and
/// normalised over the category's 30 windows: shared/data/nab/README.md.
const SCOREBOARD: [(&str, [f64; 3]); 15] = [
    ("numenta (HTM)", [73.42, 65.79, 76.72]),
    ("contextOSE (CAD OSE)", [71.52, 67.65, 75.84]),
    ("ARTime", [69.48, 58.96, 75.21]),
    ("numentaTM", [69.60, 57.96, 74.18]),
    ("htmjava", [66.07, 57.78, 70.72]),
    ("knncad", [60.69, 53.07, 64.91]),
    ("earthgeckoSkyline", [58.12, 45.25, 64.30]),
    ("randomCutForest", [57.56, 44.90, 64.69]),
    ("relativeEntropy", [50.02, 43.96, 53.35]),
    ("skyline", [49.29, 42.23, 56.20]),
    ("bayesChangePt", [39.67, 24.10, 50.96]),
    ("twitterADVec", [38.48, 25.49, 45.65]),
    ("windowedGaussian", [31.24, 4.92, 41.94]),
    ("expose", [2.30, 2.80, 15.04]),
    ("null", [0.0, 0.0, 0.0]),
];

/// Score the streaming detector on NAB categories by NAB's rules, next to NAB's published detectors.
///
/// Runs `selfheal detect`'s streaming detector on every CSV file of the chosen
/// categories (default: every category folder present under --data), or reads
/// `selfheal detect` outputs from --scores. Then, for each of NAB's three
/// profiles (standard, reward_low_FP_rate, reward_low_FN_rate):
///
///   - the set: one detection threshold shared by every file of every chosen
///     category, chosen by NAB's downward sweep, normalised over all their
///     windows (null detector 0, perfect 100), as NAB does for its corpus;
///   - each category alone: its score at the set's threshold, and with a
///     threshold re-optimised on it alone;
///   - false alarms: on categories without windows (artificialNoAnomaly),
///     the rows past probation at or above the set's standard threshold, per file.
///
/// Beside ours, the scoreboard's published rows (results/final_results.json:
/// NAB's whole corpus of 58 files at NAB's thresholds, a wider set than the one
/// here), and for realAWSCloudwatch alone the published detectors on its files.
///
/// The data folder holds `<category>/*.csv` and `labels/combined_windows.json`;
/// its default is resolved from the current directory (run from the repository
/// root).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// NAB data folder (with <category>/*.csv and labels/combined_windows.json).
    #[arg(long, default_value = "../shared/data/nab")]
    data: PathBuf,
    /// NAB categories: sub-folders of --data (repeat or separate with commas;
    /// default: every sub-folder holding *.csv files).
    #[arg(long, value_delimiter = ',')]
    category: Vec<String>,
    /// Read scores from this folder instead of running the detector: the output
    /// of `selfheal detect --input <data>/<category> --output DIR/<category>`
    /// (or DIR itself when there is one category), one file per data file.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// Detector parameters (JSON, as for `selfheal detect --model`).
    #[arg(long, conflicts_with = "scores")]
    model: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// One profile's outcome.
#[derive(Serialize)]
struct ProfileScore {
    /// NAB's profile name.
    profile: &'static str,
    /// Normalised score: 0 null detector, 100 perfect (NaN without windows).
    score: f64,
    /// Σ of per-file raw scores at the threshold.
    raw: f64,
    /// The chosen threshold (1.1 = nothing detected is best).
    threshold: f64,
    /// Per-file raw scores, in file order.
    per_file: Vec<f64>,
}

/// One category's outcome.
#[derive(Serialize)]
struct CategoryReport {
    name: String,
    files: usize,
    rows: usize,
    n_windows: usize,
    /// Per profile: normalised over this category's windows at the set's threshold.
    at_set_threshold: Vec<f64>,
    /// Per profile: with a threshold re-optimised on this category alone.
    alone: Vec<ProfileScore>,
}

/// False alarms on a file without windows.
#[derive(Serialize)]
struct FalseAlarms {
    file: String,
    /// Rows past probation at or above the set's standard threshold.
    rows: usize,
}

/// One row of the comparison.
#[derive(Serialize)]
struct Reference {
    detector: String,
    standard: f64,
    reward_low_fp_rate: f64,
    reward_low_fn_rate: f64,
}

#[derive(Serialize)]
struct Report {
    data: String,
    /// `detector` (run now, with its parameters) or the --scores folder.
    source: String,
    categories: Vec<CategoryReport>,
    files: Vec<String>,
    rows: usize,
    /// Windows of the whole set.
    n_windows: usize,
    normalisation: String,
    threshold: String,
    /// The set, one threshold per profile.
    profiles: Vec<ProfileScore>,
    /// Files of window-less categories, at the set's standard threshold.
    false_alarms: Vec<FalseAlarms>,
    /// NAB's published corpus-wide scores (results/final_results.json).
    scoreboard: Vec<Reference>,
    /// NAB's published detectors on realAWSCloudwatch alone (when that is the set).
    aws_scoreboard: Vec<Reference>,
    /// Seconds spent in the detector (None with --scores).
    detect_secs: Option<f64>,
    /// Rows scored per second by the detector, one core (None with --scores).
    rows_per_sec: Option<f64>,
    wall_secs: f64,
}

/// Every sub-folder of `data` holding at least one `*.csv`, sorted.
fn present_categories(data: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(data).with_context(|| format!("cannot list {}", data.display()))? {
        let path = entry?.path();
        if path.is_dir() && !detect::csv_files(&path)?.is_empty() {
            out.push(path.file_name().expect("a listed entry has a name").to_string_lossy().into_owned());
        }
    }
    out.sort();
    Ok(out)
}

/// NAB's published corpus-wide scores, best standard score first.
fn published(data: &Path) -> Result<Vec<Reference>> {
    let path = data.join("results/final_results.json");
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let table: BTreeMap<String, BTreeMap<String, f64>> =
        serde_json::from_str(&text).with_context(|| format!("{}: not NAB's scoreboard", path.display()))?;
    let mut rows: Vec<Reference> = table
        .into_iter()
        .map(|(detector, p)| {
            let get = |k: &str| p.get(k).copied().unwrap_or(f64::NAN);
            Reference {
                standard: get("standard"),
                reward_low_fp_rate: get("reward_low_FP_rate"),
                reward_low_fn_rate: get("reward_low_FN_rate"),
                detector,
            }
        })
        .collect();
    rows.sort_by(|a, b| b.standard.total_cmp(&a.standard));
    Ok(rows)
}

fn profile_score(files: &[(&LabeledSeries, &[f64])], p: &Profile) -> ProfileScore {
    let sw = sweep(files, p);
    ProfileScore { profile: p.name, score: sw.normalized, raw: sw.raw, threshold: sw.threshold, per_file: sw.per_file }
}

pub fn run(a: Args) -> Result<()> {
    let started = Instant::now();
    if !a.data.is_dir() {
        let cwd = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_else(|_| "?".into());
        bail!(
            "NAB data not found at {} (resolved from the current directory {cwd}); run from the repository root, \
             or pass --data PATH to the folder holding <category>/*.csv and labels/combined_windows.json",
            a.data.display()
        );
    }
    let names = if a.category.is_empty() { present_categories(&a.data)? } else { a.category.clone() };
    if names.is_empty() {
        bail!("no category folders with *.csv files under {}", a.data.display());
    }
    let cats: Vec<Category> = names
        .iter()
        .map(|c| {
            Category::load(&a.data, c)
                .with_context(|| format!("cannot load NAB category {c:?} from {}", a.data.display()))
        })
        .collect::<Result<_>>()?;
    let rows: usize = cats.iter().map(Category::rows).sum();

    let (scores, detect_secs, source) = match &a.scores {
        Some(dir) => {
            let one = cats.len() == 1;
            let scores = cats
                .iter()
                .map(|c| {
                    let sub = dir.join(&c.name);
                    selfheal_nab::scores::read_scores(
                        if one && !sub.is_dir() { dir } else { &sub },
                        c.files.iter().map(|(s, _)| s),
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            (scores, None, format!("scores from {}", dir.display()))
        }
        None => {
            let params = detect::load_params(a.model.as_deref())?;
            let t = Instant::now();
            let scores: Vec<Vec<Vec<f64>>> = cats.iter().map(|c| c.score(&params)).collect();
            let secs = t.elapsed().as_secs_f64();
            let which =
                a.model.as_ref().map_or("default parameters".to_owned(), |m| format!("parameters {}", m.display()));
            (scores, Some(secs), format!("streaming detector, {which}"))
        }
    };
    for (c, cs) in cats.iter().zip(&scores) {
        for ((series, _), s) in c.files.iter().zip(cs) {
            if let Some(i) = s.iter().position(|x| !(0.0..=1.0).contains(x)) {
                bail!("{}: row {} has score {}, outside [0, 1]", series.name(), i, s[i]);
            }
        }
    }

    let files: Vec<(&LabeledSeries, &[f64])> = cats
        .iter()
        .zip(&scores)
        .flat_map(|(c, cs)| c.files.iter().zip(cs).map(|((s, _), a)| (s, a.as_slice())))
        .collect();
    let profiles: Vec<ProfileScore> = PROFILES.iter().map(|p| profile_score(&files, p)).collect();
    let categories: Vec<CategoryReport> = cats
        .iter()
        .zip(&scores)
        .map(|(c, cs)| {
            let mine: Vec<(&LabeledSeries, &[f64])> =
                c.files.iter().zip(cs).map(|((s, _), a)| (s, a.as_slice())).collect();
            let at_set_threshold = PROFILES
                .iter()
                .zip(&profiles)
                .map(|(p, set)| {
                    let raw: f64 = mine.iter().map(|(s, a)| file_score(s, a, set.threshold, p)).sum();
                    normalize(raw, c.windows(), p)
                })
                .collect();
            CategoryReport {
                name: c.name.clone(),
                files: c.files.len(),
                rows: c.rows(),
                n_windows: c.windows(),
                at_set_threshold,
                alone: PROFILES.iter().map(|p| profile_score(&mine, p)).collect(),
            }
        })
        .collect();
    let false_alarms = cats
        .iter()
        .zip(&scores)
        .filter(|(c, _)| c.windows() == 0)
        .flat_map(|(c, cs)| benchmark::false_alarms(c, cs, profiles[0].threshold))
        .map(|(file, rows)| FalseAlarms { file, rows })
        .collect();
    let n_windows: usize = cats.iter().map(Category::windows).sum();
    let aws_scoreboard = if names == [AWS] {
        SCOREBOARD
            .iter()
            .map(|&(detector, [s, fp, fn_])| Reference {
                detector: detector.to_owned(),
                standard: s,
                reward_low_fp_rate: fp,
                reward_low_fn_rate: fn_,
            })
            .collect()
    } else {
        Vec::new()
    };
    let report = Report {
        data: a.data.display().to_string(),
        source,
        files: files.iter().map(|(s, _)| s.name().to_owned()).collect(),
        rows,
        n_windows,
        normalisation: format!(
            "the windows of these categories only (N_w = {n_windows}: null = -A_FN*N_w, perfect = A_TP*N_w), \
             not NAB's corpus-wide N_w = 116"
        ),
        threshold: format!(
            "one threshold per profile shared by all {} files of the {} categor{}, optimised on them by NAB's sweep",
            files.len(),
            cats.len(),
            if cats.len() == 1 { "y" } else { "ies" }
        ),
        categories,
        profiles,
        false_alarms,
        scoreboard: published(&a.data)?,
        aws_scoreboard,
        detect_secs,
        rows_per_sec: detect_secs.map(|s| rows as f64 / s.max(1e-9)),
        wall_secs: started.elapsed().as_secs_f64(),
    };
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => print!("{}", table(&report)),
    }
    Ok(())
}

fn threshold(t: f64) -> String {
    if t >= START_THRESHOLD {
        "none".to_owned()
    } else {
        format!("{t:.4}")
    }
}

fn score(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{x:.2}")
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "NAB over {}: {} files, {} rows, {} windows  ({})\nsource: {}\n\n",
        r.categories.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", "),
        r.files.len(),
        r.rows,
        r.n_windows,
        r.data,
        r.source
    );
    out.push_str(&format!("Normalised over {}.\nThreshold: {}.\n\n", r.normalisation, r.threshold));
    out.push_str(&format!("{:<52} {:>9} {:>9} {:>9}\n", "selfheal (this run)", "standard", "low FP", "low FN"));
    let p = |f: &dyn Fn(usize) -> String| (0..3).map(f).collect::<Vec<_>>();
    let row = |name: &str, v: Vec<String>| format!("{name:<52} {:>9} {:>9} {:>9}\n", v[0], v[1], v[2]);
    out.push_str(&row("the set, one threshold", p(&|i| score(r.profiles[i].score))));
    out.push_str(&row("  threshold", p(&|i| threshold(r.profiles[i].threshold))));
    for c in &r.categories {
        if c.n_windows == 0 {
            continue;
        }
        out.push_str(&row(
            &format!("{} ({} windows), set threshold", c.name, c.n_windows),
            p(&|i| score(c.at_set_threshold[i])),
        ));
        out.push_str(&row("  alone, its own threshold", p(&|i| score(c.alone[i].score))));
    }
    if !r.false_alarms.is_empty() {
        let clean = r.false_alarms.iter().filter(|f| f.rows == 0).count();
        out.push_str(&format!(
            "\nFalse alarms after probation at the set's standard threshold ({}), files without windows: \
             {clean} of {} clean\n",
            threshold(r.profiles[0].threshold),
            r.false_alarms.len()
        ));
        for f in &r.false_alarms {
            out.push_str(&format!("  {:<56} {:>6}\n", f.file, f.rows));
        }
    }
    if !r.aws_scoreboard.is_empty() {
        out.push_str(
            "\nPublished detectors on realAWSCloudwatch alone, at NAB's corpus-wide thresholds, normalised over \
             its 30 windows\n(shared/data/nab/README.md); ours uses a threshold optimised on these files.\n",
        );
        out.push_str(&ranking(&r.aws_scoreboard, [r.profiles[0].score, r.profiles[1].score, r.profiles[2].score]));
    }
    if !r.scoreboard.is_empty() {
        out.push_str(
            "\nNAB's scoreboard (results/final_results.json): its whole corpus of 58 files in 7 categories at its \
             published\nthresholds; ours is the set above (a different set of files; see the README of the data).\n",
        );
        out.push_str(&ranking(&r.scoreboard, [r.profiles[0].score, r.profiles[1].score, r.profiles[2].score]));
    }
    match (r.detect_secs, r.rows_per_sec) {
        (Some(secs), Some(rate)) => out.push_str(&format!(
            "\ndetection: {} rows in {secs:.2} s ({rate:.0} rows/s, one core); wall time {:.2} s\n",
            r.rows, r.wall_secs
        )),
        _ => out.push_str(&format!("\nwall time {:.2} s (scores read from files)\n", r.wall_secs)),
    }
    out
}

/// Published rows and ours, by standard score; `=>` marks ours.
fn ranking(published: &[Reference], ours: [f64; 3]) -> String {
    let mut rows: Vec<(&str, [f64; 3], bool)> = published
        .iter()
        .map(|x| (x.detector.as_str(), [x.standard, x.reward_low_fp_rate, x.reward_low_fn_rate], false))
        .collect();
    rows.push(("selfheal (this run)", ours, true));
    // Stable: our row goes below a published one with the same score.
    rows.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]));
    let mut out = format!("   rank  {:<24} {:>9} {:>9} {:>9}\n", "detector", "standard", "low FP", "low FN");
    for (i, (name, s, mine)) in rows.iter().enumerate() {
        let mark = if *mine { "=>" } else { "  " };
        out.push_str(&format!("{mark} {:>4}  {name:<24} {:>9.2} {:>9.2} {:>9.2}\n", i + 1, s[0], s[1], s[2]));
    }
    out
}
