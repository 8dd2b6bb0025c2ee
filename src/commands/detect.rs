//! `selfheal detect`: streaming anomaly scores for NAB-format CSV files.
//!
//! Real feeds are messy, so rows whose time goes back, repeats or jumps are
//! scored in file order with a warning naming the line (and a count per file
//! at the end); `--strict` refuses a row whose time goes back, as before. What
//! cannot be scored at all (a value that is not a finite number, a line that
//! is not a row) is an error naming the file and line.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use selfheal_agent::store::write_atomic;
use selfheal_core::{Checked, ParamGuard};
use selfheal_detect::scores::scores_csv;
use selfheal_detect::stream::StreamParams;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Score NAB-format time series with the streaming detector: an anomaly score in [0, 1] per row
///
/// Input: a CSV file with the header `timestamp,value` and one row per line,
/// `YYYY-MM-DD HH:MM:SS[.fraction],<number>`. Rows are scored in file order.
/// A timestamp earlier than the row before it, a repeated timestamp, and a gap
/// (a step more than four times the file's median step) are each reported as a
/// warning naming the line, with a count per file at the end; --strict makes a
/// timestamp that goes back an error instead. Output:
/// `timestamp,value,anomaly_score`, one row per input row in the same order,
/// timestamps and values copied as written, written atomically.
///
/// With a directory as --input, every `*.csv` in it (sorted by name, not
/// recursive) is scored into a file of the same name in the --output directory,
/// which is created if needed. Every file is checked before any is scored: if
/// one is bad, the command fails listing each bad file with its first bad line,
/// and writes nothing.
///
/// Errors (with file and line): a missing or wrong header, an empty file or no
/// data rows, a wrong number of fields, a bad timestamp, a non-numeric value,
/// NaN, infinity, a magnitude above 1e200, and with --strict a timestamp out of
/// order.
///
/// How the detector works (crates/detect/src/stream.rs, which says what was
/// taken from NAB's detectors and why). Each file is scored on its own, as a
/// stream: a row's score depends on that row and the rows before it only, and
/// the same input and seed always give the same output. One parameter set for
/// every series, chosen by cross-validation across NAB categories.
///
///   1. Context: each value becomes a scale-free vector: z-scores against a
///      rolling median and inter-quartile range (which follow level shifts), a
///      step, and, where the probation shows a daily cycle, the residual from a
///      time-of-day profile.
///   2. Probation: the first 15 % of the rows (at most 750, NAB's
///      probationary period) train an isolation forest (seeded) and are
///      scored 0.
///   3. Calibrate: the forest's raw scores, averaged over a few rows, are
///      turned into a log-likelihood under the recent distribution of raw
///      scores (HTM's anomaly likelihood), in [0, 1]; a value beyond the range
///      seen so far scores 1.
///   4. One event, one report: after a high score, the next rows (a share of
///      the probation) report 0 (CAD OSE's rest period).
///
/// --model overrides the parameters with a JSON file; `selfheal detect
/// --print-params` prints the defaults in that format.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// A NAB CSV file, or a directory whose *.csv files are all scored.
    #[arg(long, required_unless_present = "print_params")]
    input: Option<PathBuf>,
    /// The output CSV file, or the output directory when --input is a directory.
    #[arg(long, required_unless_present = "print_params")]
    output: Option<PathBuf>,
    /// Detector parameters: a JSON file of every field --print-params shows
    /// (unknown fields are an error); defaults to the built-in parameters.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Print the detector parameters as JSON (the defaults, or --model's) and exit.
    #[arg(long, conflicts_with_all = ["input", "output"])]
    print_params: bool,
    /// Refuse a file with a timestamp earlier than the row before it (the
    /// default scores it in file order with a warning).
    #[arg(long)]
    strict: bool,
}

/// Warnings printed per file before the rest are only counted.
const SHOWN_WARNINGS: usize = 10;

pub fn run(a: Args) -> Result<()> {
    let params = load_params(a.model.as_deref())?;
    if a.print_params {
        println!("{}", serde_json::to_string_pretty(&*params)?);
        return Ok(());
    }
    let (Some(input), Some(output)) = (a.input, a.output) else {
        bail!("--input and --output are both required");
    };
    let started = Instant::now();
    let meta = std::fs::metadata(&input).with_context(|| format!("cannot read --input {}", input.display()))?;
    let (files, rows) = if meta.is_dir() {
        detect_dir(&input, &output, &params, a.strict)?
    } else {
        detect_file(&input, &output, &params, a.strict)?
    };
    let secs = started.elapsed().as_secs_f64();
    println!(
        "scored {files} file{} ({rows} rows) in {secs:.2} s ({:.0} rows/s) -> {}",
        if files == 1 { "" } else { "s" },
        rows as f64 / secs.max(1e-9),
        output.display()
    );
    Ok(())
}

/// Reads the detector parameters from `path` (JSON `StreamParams`), or the
/// defaults, and checks they are usable.
pub fn load_params(path: Option<&Path>) -> Result<Checked<StreamParams>> {
    let Some(path) = path else { return Ok(Checked::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --model {}", path.display()))?;
    let params: StreamParams = serde_json::from_str(&text).with_context(|| {
        format!("{}: not a detector parameter file (see `selfheal detect --print-params`)", path.display())
    })?;
    params.check().with_context(|| format!("{}: bad detector parameters", path.display()))
}

use selfheal_nab::series::{read_series, Series, TimeIssue};

/// Prints the first warnings of `path` and a count per kind to stderr.
fn report_warnings(series: &Series, path: &Path) {
    if series.warnings.is_empty() {
        return;
    }
    for w in series.warnings.iter().take(SHOWN_WARNINGS) {
        eprintln!("warning: {}:{}: {}", path.display(), w.line, w.message);
    }
    if series.warnings.len() > SHOWN_WARNINGS {
        eprintln!("warning: {}: {} more such rows not shown", path.display(), series.warnings.len() - SHOWN_WARNINGS);
    }
    eprintln!(
        "warning: {}: {} row{} back in time, {} duplicate timestamp{}, {} gap{}; all scored in file order",
        path.display(),
        series.count(TimeIssue::BackInTime),
        plural(series.count(TimeIssue::BackInTime)),
        series.count(TimeIssue::Duplicate),
        plural(series.count(TimeIssue::Duplicate)),
        series.count(TimeIssue::Gap),
        plural(series.count(TimeIssue::Gap)),
    );
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// The scores file of `series` read from `path`; an unscorable row is an
/// error naming `path:line`.
fn render(path: &Path, series: &Series, params: &Checked<StreamParams>) -> Result<String> {
    scores_csv(params, series).map_err(|e| anyhow::anyhow!("{}:{e}", path.display()))
}

/// `true` if `a` and `b` name the same existing file or directory.
fn same_path(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn detect_file(input: &Path, output: &Path, params: &Checked<StreamParams>, strict: bool) -> Result<(usize, usize)> {
    if output.is_dir() {
        bail!("--output {} is a directory; with a file as --input, --output must be a file", output.display());
    }
    if same_path(input, output) {
        bail!("--output {} is the input file; choose another path", output.display());
    }
    let series = read_series(input, strict)?;
    report_warnings(&series, input);
    let text = render(input, &series, params)?;
    write_atomic(output, text.as_bytes()).with_context(|| format!("cannot write {}", output.display()))?;
    Ok((1, series.values.len()))
}

/// The `*.csv` files directly in `dir`, sorted by name.
pub fn csv_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let path = entry.with_context(|| format!("cannot list {}", dir.display()))?.path();
        if path.extension().is_some_and(|e| e == "csv") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn detect_dir(input: &Path, output: &Path, params: &Checked<StreamParams>, strict: bool) -> Result<(usize, usize)> {
    if output.exists() && !output.is_dir() {
        bail!("--output {} is a file; with a directory as --input, --output must be a directory", output.display());
    }
    if same_path(input, output) {
        bail!("--output {} is the input directory; the scores would overwrite the data", output.display());
    }
    let files = csv_files(input)?;
    if files.is_empty() {
        bail!("no *.csv files in {}", input.display());
    }
    // Check every file first, so a bad one means nothing is written.
    let bad: Vec<String> =
        files.iter().filter_map(|f| read_series(f, strict).err()).map(|e| format!("  {e:#}")).collect();
    if !bad.is_empty() {
        bail!(
            "{} of {} files in {} are bad; nothing written:\n{}",
            bad.len(),
            files.len(),
            input.display(),
            bad.join("\n")
        );
    }
    std::fs::create_dir_all(output).with_context(|| format!("cannot create {}", output.display()))?;
    let bar = ProgressBar::new(files.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("detect [{bar:30}] {pos}/{len} files  eta {eta}  {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    let mut rows = 0;
    for f in &files {
        let name = f.file_name().expect("a listed file has a name");
        bar.set_message(name.to_string_lossy().into_owned());
        let series = read_series(f, strict)?;
        bar.suspend(|| report_warnings(&series, f));
        let text = render(f, &series, params)?;
        let out = output.join(name);
        write_atomic(&out, text.as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
        rows += series.values.len();
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((files.len(), rows))
}
