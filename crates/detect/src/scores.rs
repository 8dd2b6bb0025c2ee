//! What `selfheal detect` does to one series, as a library: score every row
//! in file order with the streaming detector and render the scores file
//! (`timestamp,value,anomaly_score`, the NAB results layout, the input's
//! timestamp and value text kept as read). The binary only picks files,
//! reports warnings and writes.

use crate::benchmark::score_series;
use crate::stream::StreamParams;
use selfheal_core::Checked;
use selfheal_nab::series::Series;
use std::fmt::Write as _;

/// A row the detector could not score.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ScoreError {
    /// The score is not a number in [0, 1] (values so large that the
    /// arithmetic overflows). Displayed as `LINE: …`, for the caller to prefix
    /// with the file's path.
    #[error("{line}: the detector could not score value {value} (score {score}); values this large are not supported")]
    Unscorable {
        /// 1-based line of the file (the header is line 1).
        line: usize,
        /// The value as written in the file.
        value: String,
        /// The score it got.
        score: f64,
    },
}

/// One anomaly score in [0, 1] per row of `series`, in file order.
pub fn score(params: &Checked<StreamParams>, series: &Series) -> Vec<f64> {
    let stamps: Vec<Option<i64>> = series.stamps.iter().copied().map(Some).collect();
    score_series(params, &stamps, &series.values)
}

/// The scores file of `series`: a header and one `timestamp,value,anomaly_score`
/// line per row; the first row that cannot be scored is an error naming it.
pub fn scores_csv(params: &Checked<StreamParams>, series: &Series) -> Result<String, ScoreError> {
    let scores = score(params, series);
    let mut out = String::with_capacity(series.values.len() * 48);
    out.push_str("timestamp,value,anomaly_score\n");
    for (i, s) in scores.iter().enumerate() {
        if !(0.0..=1.0).contains(s) {
            return Err(ScoreError::Unscorable { line: i + 2, value: series.texts[i].clone(), score: *s });
        }
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{},{},{s}", series.timestamps[i], series.texts[i]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfheal_nab::series::read_series;

    #[test]
    fn every_row_gets_a_score_and_keeps_its_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.csv");
        let mut csv = String::from("timestamp,value\n");
        for i in 0..50 {
            let v = if i == 40 { "900.50".to_string() } else { format!("{}.25", 10 + i % 3) };
            csv.push_str(&format!("2014-04-01 00:{:02}:00,{v}\n", i));
        }
        std::fs::write(&path, csv).unwrap();
        let series = read_series(&path, true).unwrap();
        let text = scores_csv(&Checked::default(), &series).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "timestamp,value,anomaly_score");
        assert_eq!(lines.len(), 51);
        assert!(lines[41].starts_with("2014-04-01 00:40:00,900.50,"), "{}", lines[41]);
        let scores: Vec<f64> = lines[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse().unwrap()).collect();
        assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
        assert_eq!(scores, score(&Checked::default(), &series));
    }
}
