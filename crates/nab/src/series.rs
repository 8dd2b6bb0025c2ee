//! The one reader of NAB-format CSV files (`timestamp,value`), used by the
//! benchmark loader ([`crate::load_category`]) and `selfheal detect`.
//!
//! Real feeds are messy, so the reader is lenient about what does not change
//! the data (a byte-order mark, spaces around fields, trailing blank lines)
//! and reports rows whose time goes back, repeats or jumps as warnings naming
//! the line; with `strict`, a time going back is an error. What cannot be
//! read at all (a value that is not a finite number, a line that is not a
//! row) is a [`NabError::Csv`] naming the file and the 1-based line (the
//! header is line 1).

use crate::NabError;
use selfheal_core::time::{parse_stamp, Stamp};
use std::path::Path;

/// One NAB series as read from its CSV file.
#[derive(Clone, Debug)]
pub struct Series {
    /// Timestamps as written.
    pub timestamps: Vec<String>,
    /// Values as written (for copying to the output unchanged).
    pub texts: Vec<String>,
    /// The parsed values, all finite.
    pub values: Vec<f64>,
    /// Row times, Unix milliseconds (the stamps read as UTC).
    pub stamps: Vec<i64>,
    /// Rows whose time goes back, repeats or jumps, in file order.
    pub warnings: Vec<TimeWarning>,
}

/// What is odd about a row's time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeIssue {
    /// Earlier than the row before it.
    BackInTime,
    /// Equal to the row before it.
    Duplicate,
    /// More than [`GAP_FACTOR`] times the file's median step after the row before it.
    Gap,
}

/// A step past the latest time so far longer than this many median steps is a gap.
pub const GAP_FACTOR: i64 = 4;

/// One row with an odd time.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeWarning {
    /// 1-based line (the header is line 1).
    pub line: usize,
    /// What is odd.
    pub issue: TimeIssue,
    /// The sentence to print.
    pub message: String,
}

impl Series {
    /// How many rows have `issue`.
    pub fn count(&self, issue: TimeIssue) -> usize {
        self.warnings.iter().filter(|w| w.issue == issue).count()
    }
}

/// Largest accepted magnitude of a value: the detector's deviations and
/// z-scores need headroom below `f64::MAX`.
pub const MAX_ABS_VALUE: f64 = 1e200;

/// Reads `path` as text, naming the line of the first invalid UTF-8 byte.
fn read_text(path: &Path) -> Result<String, NabError> {
    let bytes = std::fs::read(path).map_err(|source| NabError::Io { path: path.to_owned(), source })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = 1 + valid.iter().filter(|&&c| c == b'\n').count();
        NabError::Csv { path: path.to_owned(), line, message: "not UTF-8 text".into() }
    })
}

/// The data lines of `text` after its header, numbered from 2; trailing blank
/// lines at the end of the file are ignored, other blank lines are not.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    let lines: Vec<&str> = text.lines().collect();
    let end = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |i| i + 1);
    lines.into_iter().take(end).enumerate().skip(1).map(|(i, l)| (i + 1, l))
}

/// Reads a NAB CSV file: the header `timestamp,value`, then one
/// `YYYY-MM-DD HH:MM:SS[.fraction],<finite number>` per line, at least one
/// row; `|value| ≤` [`MAX_ABS_VALUE`]. With `strict`, a timestamp earlier than
/// the row before it is an error, else a warning.
///
/// # Errors
/// [`NabError::Io`] when the file cannot be read, [`NabError::Csv`] naming the
/// 1-based line (the header is line 1) for anything else.
pub fn read_series(path: &Path, strict: bool) -> Result<Series, NabError> {
    let text = read_text(path)?;
    let at = |line: usize, message: String| NabError::Csv { path: path.to_owned(), line, message };
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    if text.trim().is_empty() {
        return Err(at(1, "empty file; expected the header \"timestamp,value\" and at least one data row".into()));
    }
    let header = text.lines().next().unwrap_or("");
    let fields: Vec<&str> = header.split(',').map(str::trim).collect();
    if fields != ["timestamp", "value"] {
        let what = if fields.first().is_some_and(|t| parse_stamp(t).is_some()) { "missing" } else { "wrong" };
        return Err(at(1, format!("{what} header: expected \"timestamp,value\", found {header:?}")));
    }
    let mut s = Series {
        timestamps: Vec::new(),
        texts: Vec::new(),
        values: Vec::new(),
        stamps: Vec::new(),
        warnings: Vec::new(),
    };
    let mut previous: Option<Stamp> = None;
    let mut lines = Vec::new();
    for (line, row) in data_lines(text) {
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != 2 {
            return Err(at(line, format!("expected 2 fields (timestamp,value), found {}: {row:?}", fields.len())));
        }
        let (t, v) = (fields[0], fields[1]);
        let stamp = parse_stamp(t)
            .ok_or_else(|| at(line, format!("bad timestamp {t:?}; expected YYYY-MM-DD HH:MM:SS[.fraction]")))?;
        if let Some(p) = previous {
            let before = s.timestamps.last().map_or("", String::as_str);
            if stamp < p && strict {
                return Err(at(
                    line,
                    format!(
                        "timestamp {t:?} is earlier than {before:?} on the line before; with --strict rows must be \
                         in time order"
                    ),
                ));
            } else if stamp < p {
                s.warnings.push(TimeWarning {
                    line,
                    issue: TimeIssue::BackInTime,
                    message: format!(
                        "timestamp {t:?} is earlier than {before:?} on the line before; scored in file order"
                    ),
                });
            } else if stamp == p {
                s.warnings.push(TimeWarning {
                    line,
                    issue: TimeIssue::Duplicate,
                    message: format!("timestamp {t:?} repeats the line before; scored in file order"),
                });
            }
        }
        previous = Some(stamp);
        lines.push(line);
        let value: f64 = v.parse().map_err(|_| at(line, format!("value {v:?} is not a number")))?;
        if value.is_nan() {
            return Err(at(line, format!("value {v:?} is NaN (not a number); every value must be finite")));
        }
        if value.is_infinite() {
            return Err(at(line, format!("value {v:?} is infinite; every value must be finite")));
        }
        if value.abs() > MAX_ABS_VALUE {
            return Err(at(line, format!("value {v:?} is out of range; |value| must be at most {MAX_ABS_VALUE:e}")));
        }
        s.timestamps.push(t.to_owned());
        s.texts.push(v.to_owned());
        s.values.push(value);
        s.stamps.push(stamp.unix_ms());
    }
    if s.values.is_empty() {
        return Err(at(2, "no data rows after the header".into()));
    }
    // Gaps: steps forward longer than GAP_FACTOR median steps.
    let mut steps: Vec<i64> = s.stamps.windows(2).map(|w| w[1] - w[0]).filter(|d| *d > 0).collect();
    if !steps.is_empty() {
        let mid = steps.len() / 2;
        let median = *steps.select_nth_unstable(mid).1;
        // Against the latest time so far, so the row after one that went back
        // is not a gap.
        let mut latest = s.stamps[0];
        for (i, (&t, &line)) in s.stamps.iter().zip(&lines).enumerate().skip(1) {
            let step = t - latest;
            if step > GAP_FACTOR * median {
                s.warnings.push(TimeWarning {
                    line,
                    issue: TimeIssue::Gap,
                    message: format!(
                        "a gap of {:.1} min after {:?} (the median step is {:.1} min); scored in file order",
                        step as f64 / 60_000.0,
                        s.timestamps[i - 1],
                        median as f64 / 60_000.0
                    ),
                });
            }
            latest = latest.max(t);
        }
        s.warnings.sort_by_key(|w| w.line);
    }
    Ok(s)
}
