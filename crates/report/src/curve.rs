//! The learning curve CSV that `selfheal train` writes
//! (`episode,episodes,mean_return,mttr_steps,incidents,epsilon`, one row per
//! block of episodes; an empty `mttr_steps` means no incident in the block).

use crate::ReportError;

/// One row of the curve.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CurveRow {
    /// First episode of the block.
    pub episode: f64,
    /// Mean return over the block.
    pub mean_return: f64,
    /// Mean steps to heal (None without incidents).
    pub mttr_steps: Option<f64>,
    /// Mean ε.
    pub epsilon: f64,
}

/// Parse the CSV; columns are found by name, so older or wider files read too.
pub fn parse(text: &str, origin: &str) -> Result<Vec<CurveRow>, ReportError> {
    let bad = |message: String| ReportError::Format { path: origin.to_string(), message };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().ok_or_else(|| bad("empty learning curve".into()))?.split(',').collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.trim()));
    let episode = col(&["episode"]).ok_or_else(|| bad("no `episode` column".into()))?;
    let ret = col(&["mean_return", "return", "ret"]).ok_or_else(|| bad("no `mean_return` column".into()))?;
    let mttr = col(&["mttr_steps", "mttr"]);
    let eps = col(&["epsilon"]);
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let num = |c: usize| -> Result<Option<f64>, ReportError> {
            match f.get(c).map(|s| s.trim()) {
                None | Some("") => Ok(None),
                Some(s) => s.parse().map(Some).map_err(|_| bad(format!("line {}: {s:?} is not a number", i + 2))),
            }
        };
        out.push(CurveRow {
            episode: num(episode)?.unwrap_or(i as f64),
            mean_return: num(ret)?.unwrap_or(f64::NAN),
            mttr_steps: match mttr {
                Some(c) => num(c)?,
                None => None,
            },
            epsilon: match eps {
                Some(c) => num(c)?.unwrap_or(f64::NAN),
                None => f64::NAN,
            },
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_train_format() {
        let rows = super::parse(
            "episode,episodes,mean_return,mttr_steps,incidents,epsilon\n0,100,-4.5,,0,1.0\n100,100,-3,2.5,9,0.9\n",
            "c",
        )
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].mttr_steps, None);
        assert_eq!(rows[1].mttr_steps, Some(2.5));
        assert_eq!(rows[1].epsilon, 0.9);
    }
}
