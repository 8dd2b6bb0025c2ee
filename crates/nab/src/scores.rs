//! Reading a detector's scores back for NAB scoring: one
//! `timestamp,value,anomaly_score` file per data file, as NAB's own results
//! files (`results/<detector>/<category>/<detector>_<file>.csv`) and
//! `selfheal detect --output DIR` write them.
//!
//! Why strict: a score file is matched to its data file row by row; a missing
//! row or a shifted timestamp would score every later window against the
//! wrong labels without any error.

use crate::{LabeledSeries, NabError};
use std::path::Path;

/// The scores of every series in `corpus`, each read from the file of the
/// same name in `dir`, in `corpus` order; each in [0, 1], one per row.
///
/// # Errors
/// [`NabError::Corpus`] when `dir` is not a directory or a file is missing
/// (saying how to make it); [`NabError::Io`] when a file does not read;
/// [`NabError::Csv`] for a wrong header, a row of other than 3 fields, a
/// timestamp that differs from the data file's row, a score that is not a
/// number in [0, 1], or a row count that differs from the data file's.
pub fn read_scores<'a>(
    dir: &Path,
    corpus: impl IntoIterator<Item = &'a LabeledSeries>,
) -> Result<Vec<Vec<f64>>, NabError> {
    if !dir.is_dir() {
        return Err(NabError::Corpus { path: dir.to_path_buf(), message: "--scores is not a directory".into() });
    }
    corpus
        .into_iter()
        .map(|series| {
            let file = series.name().rsplit('/').next().unwrap_or(series.name());
            let path = dir.join(file);
            if !path.is_file() {
                return Err(NabError::Corpus {
                    path,
                    message: format!(
                        "missing; make the scores with `selfheal detect --input <data>/<category> --output {}`",
                        dir.display()
                    ),
                });
            }
            read_score_file(&path, series)
        })
        .collect()
}

/// One `timestamp,value,anomaly_score` file whose timestamps must be those of `series`.
///
/// # Errors
/// As [`read_scores`].
pub fn read_score_file(path: &Path, series: &LabeledSeries) -> Result<Vec<f64>, NabError> {
    let text = std::fs::read_to_string(path).map_err(|source| NabError::Io { path: path.to_path_buf(), source })?;
    let at = |line: usize, message: String| NabError::Csv { path: path.to_path_buf(), line, message };
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
        return Err(at(scores.len() + 2, format!("{} rows, but the data file has {}", scores.len(), expected.len())));
    }
    Ok(scores)
}
