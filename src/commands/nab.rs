//! `selfheal nab`: the streaming detector scored by the Numenta Anomaly
//! Benchmark's rules, next to NAB's published detectors.

use crate::commands::detect;
use anyhow::{bail, Context, Result};
use selfheal_detect::nab::{load_category, sweep, LabeledSeries, PROFILES, START_THRESHOLD};
use serde::Serialize;
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

/// The category the published reference scores below are for.
const REFERENCE_CATEGORY: &str = "realAWSCloudwatch";

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

/// Score the streaming detector on a NAB category by NAB's rules and compare it
/// with NAB's published detectors.
///
/// Runs `selfheal detect`'s streaming detector on every CSV file of the
/// category (or reads `selfheal detect` outputs from --scores), then, for each
/// of NAB's three profiles (standard, reward_low_FP_rate, reward_low_FN_rate),
/// chooses one detection threshold shared by all files by NAB's downward sweep
/// and prints the normalised score (null detector 0, perfect 100).
///
/// Two differences from NAB's official scoreboard, both stated in the output:
/// the normalisation counts only the category's windows (N_w = 30 for
/// realAWSCloudwatch, not the corpus's 116), and our threshold is re-optimised
/// on the category's files, whereas the published detectors listed next to it
/// are scored on the same files at the thresholds NAB optimised over the whole
/// corpus. Both are computed with the same rules (shared/data/nab/README.md).
///
/// The data folder holds `<category>/*.csv` and `labels/combined_windows.json`;
/// its default is resolved from the current directory (run from the repository
/// root).
#[derive(clap::Args)]
pub struct Args {
    /// NAB data folder (with <category>/*.csv and labels/combined_windows.json).
    #[arg(long, default_value = "../shared/data/nab")]
    data: PathBuf,
    /// NAB category: a sub-folder of --data.
    #[arg(long, default_value = REFERENCE_CATEGORY)]
    category: String,
    /// Read scores from this folder instead of running the detector: the output
    /// of `selfheal detect --input <data>/<category> --output DIR`, one file per
    /// data file with the same name and timestamps.
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
    /// Normalised score: 0 null detector, 100 perfect.
    score: f64,
    /// Σ of per-file raw scores at the threshold.
    raw: f64,
    /// The chosen threshold (1.1 = nothing detected is best).
    threshold: f64,
    /// Per-file raw scores, in file order.
    per_file: Vec<f64>,
}

/// One row of the comparison.
#[derive(Serialize)]
struct Reference {
    detector: &'static str,
    standard: f64,
    reward_low_fp_rate: f64,
    reward_low_fn_rate: f64,
}

#[derive(Serialize)]
struct Report {
    category: String,
    data: String,
    /// `detector` (run now, with its parameters) or the --scores folder.
    source: String,
    files: Vec<String>,
    rows: usize,
    n_windows: usize,
    normalisation: String,
    threshold: String,
    profiles: Vec<ProfileScore>,
    /// Published detectors on the same files (at corpus thresholds); empty for
    /// other categories.
    scoreboard: Vec<Reference>,
    /// Seconds spent in the detector (None with --scores).
    detect_secs: Option<f64>,
    /// Rows scored per second by the detector (None with --scores).
    rows_per_sec: Option<f64>,
    wall_secs: f64,
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
    let corpus = load_category(&a.data, &a.category)
        .with_context(|| format!("cannot load NAB category {:?} from {}", a.category, a.data.display()))?;
    let rows: usize = corpus.iter().map(|(s, _)| s.len()).sum();

    let (scores, detect_secs, source) = match &a.scores {
        Some(dir) => (read_scores(dir, &corpus)?, None, format!("scores from {}", dir.display())),
        None => {
            let params = detect::load_params(a.model.as_deref())?;
            let t = Instant::now();
            let scores: Vec<Vec<f64>> = corpus.iter().map(|(_, values)| detect::score(&params, values)).collect();
            let secs = t.elapsed().as_secs_f64();
            let which =
                a.model.as_ref().map_or("default parameters".to_owned(), |m| format!("parameters {}", m.display()));
            (scores, Some(secs), format!("streaming detector, {which}"))
        }
    };
    for ((series, _), s) in corpus.iter().zip(&scores) {
        if let Some(i) = s.iter().position(|x| !(0.0..=1.0).contains(x)) {
            bail!("{}: row {} has score {}, outside [0, 1]", series.name(), i, s[i]);
        }
    }

    let files: Vec<(&LabeledSeries, &[f64])> =
        corpus.iter().zip(&scores).map(|((s, _), a)| (s, a.as_slice())).collect();
    let profiles: Vec<ProfileScore> = PROFILES
        .iter()
        .map(|p| {
            let sw = sweep(&files, p);
            ProfileScore {
                profile: p.name,
                score: sw.normalized,
                raw: sw.raw,
                threshold: sw.threshold,
                per_file: sw.per_file,
            }
        })
        .collect();
    let n_windows: usize = corpus.iter().map(|(s, _)| s.windows().len()).sum();
    let scoreboard = if a.category == REFERENCE_CATEGORY {
        SCOREBOARD
            .iter()
            .map(|&(detector, [s, fp, fn_])| Reference {
                detector,
                standard: s,
                reward_low_fp_rate: fp,
                reward_low_fn_rate: fn_,
            })
            .collect()
    } else {
        Vec::new()
    };
    let report = Report {
        category: a.category.clone(),
        data: a.data.display().to_string(),
        source,
        files: corpus.iter().map(|(s, _)| s.name().to_owned()).collect(),
        rows,
        n_windows,
        normalisation: format!(
            "{} windows only (N_w = {n_windows}: null = -A_FN*N_w, perfect = A_TP*N_w), not NAB's corpus-wide N_w = 116",
            a.category
        ),
        threshold: format!(
            "one threshold per profile shared by all {} files, re-optimised on these files; the scoreboard's \
             detectors use NAB's corpus-wide thresholds",
            corpus.len()
        ),
        profiles,
        scoreboard,
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

/// Reads `selfheal detect` outputs for every file of `corpus` from `dir`.
fn read_scores(dir: &Path, corpus: &[(LabeledSeries, Vec<f64>)]) -> Result<Vec<Vec<f64>>> {
    if !dir.is_dir() {
        bail!("--scores {} is not a directory", dir.display());
    }
    corpus
        .iter()
        .map(|(series, _)| {
            let file = series.name().rsplit('/').next().unwrap_or(series.name());
            let path = dir.join(file);
            if !path.is_file() {
                bail!(
                    "{}: missing; make the scores with `selfheal detect --input <data>/<category> --output {}`",
                    path.display(),
                    dir.display()
                );
            }
            read_score_file(&path, series)
        })
        .collect()
}

/// One `timestamp,value,anomaly_score` file whose timestamps must be those of `series`.
fn read_score_file(path: &Path, series: &LabeledSeries) -> Result<Vec<f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let at = |line: usize, msg: String| anyhow::anyhow!("{}:{line}: {msg}", path.display());
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    if header.trim() != "timestamp,value,anomaly_score" {
        return Err(at(1, format!("expected the header \"timestamp,value,anomaly_score\", found {header:?}")));
    }
    let expected = series.timestamps();
    let mut scores = Vec::with_capacity(expected.len());
    for (k, row) in lines.enumerate() {
        let line = k + 2;
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != 3 {
            return Err(at(line, format!("expected 3 fields, found {}: {row:?}", fields.len())));
        }
        match expected.get(k) {
            Some(t) if t == fields[0] => {}
            Some(t) => return Err(at(line, format!("timestamp {:?}, but the data file has {t:?} here", fields[0]))),
            None => return Err(at(line, format!("more rows than the data file's {}", expected.len()))),
        }
        let s: f64 = fields[2].parse().map_err(|_| at(line, format!("score {:?} is not a number", fields[2])))?;
        if !(0.0..=1.0).contains(&s) {
            return Err(at(line, format!("score {s} is outside [0, 1]")));
        }
        scores.push(s);
    }
    if scores.len() != expected.len() {
        bail!("{}: {} rows, but the data file has {}", path.display(), scores.len(), expected.len());
    }
    Ok(scores)
}

fn threshold(t: f64) -> String {
    if t >= START_THRESHOLD {
        "none".to_owned()
    } else {
        format!("{t:.4}")
    }
}

fn table(r: &Report) -> String {
    let mut out = format!(
        "NAB {}: {} files, {} rows, {} windows  ({})\nsource: {}\n\n",
        r.category,
        r.files.len(),
        r.rows,
        r.n_windows,
        r.data,
        r.source
    );
    out.push_str(&format!("Normalised over the {}.\n", r.normalisation));
    out.push_str(&format!("Threshold: {}.\n\n", r.threshold));
    let ours = "selfheal (this run)";
    let mut rows: Vec<(&str, [f64; 3], bool)> = r
        .scoreboard
        .iter()
        .map(|x| (x.detector, [x.standard, x.reward_low_fp_rate, x.reward_low_fn_rate], false))
        .collect();
    rows.push((ours, [r.profiles[0].score, r.profiles[1].score, r.profiles[2].score], true));
    // Stable: our row goes below a published one with the same score.
    rows.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]));
    out.push_str(&format!("   rank  {:<24} {:>9} {:>9} {:>9}\n", "detector", "standard", "low FP", "low FN"));
    for (i, (name, s, mine)) in rows.iter().enumerate() {
        let mark = if *mine { "=>" } else { "  " };
        out.push_str(&format!("{mark} {:>4}  {name:<24} {:>9.2} {:>9.2} {:>9.2}\n", i + 1, s[0], s[1], s[2]));
    }
    out.push_str(&format!(
        "         {:<24} {:>9} {:>9} {:>9}\n",
        "our threshold",
        threshold(r.profiles[0].threshold),
        threshold(r.profiles[1].threshold),
        threshold(r.profiles[2].threshold)
    ));
    out.push_str("(sorted by the standard score; => marks this run)\n");
    if r.scoreboard.is_empty() {
        out.push_str(&format!(
            "\n(no published per-category scores for {}; the reference is realAWSCloudwatch)\n",
            r.category
        ));
    } else {
        out.push_str(
            "\nPublished rows: NAB's results on these files at NAB's corpus-wide thresholds, normalised over \
             these windows\n(shared/data/nab/README.md); ours uses thresholds re-optimised on these files.\n",
        );
    }
    match (r.detect_secs, r.rows_per_sec) {
        (Some(secs), Some(rate)) => out.push_str(&format!(
            "\ndetection: {} rows in {secs:.2} s ({rate:.0} rows/s); wall time {:.2} s\n",
            r.rows, r.wall_secs
        )),
        _ => out.push_str(&format!("\nwall time {:.2} s (scores read from files)\n", r.wall_secs)),
    }
    out
}
