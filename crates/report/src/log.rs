//! The sidecar's provenance log (JSON lines, one record per line, tagged by
//! `kind`), read leniently: fields this review does not need may be missing, and
//! unknown kinds and bad lines are skipped and counted, never fatal. The same
//! shapes write simulated logs, so those are read by `selfheal log` too.

use crate::ReportError;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The telemetry window of a decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Window {
    /// End of the window, Unix ms.
    pub ts_ms: i64,
    /// p95 latency, s.
    pub latency_p95_s: f64,
    /// Error ratio.
    pub error_ratio: f64,
    /// Backlog.
    pub backlog: f64,
    /// Records read.
    pub records_in: f64,
    /// Workers.
    pub workers: f64,
}

/// A decision record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Decision {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Pipeline.
    pub pipeline: String,
    /// The window.
    pub window: Window,
    /// Anomaly score.
    pub score: f64,
    /// Flagged by the detector.
    pub anomalous: bool,
    /// Failure signature.
    pub signature: u16,
    /// State id.
    pub state: u32,
    /// The state in words.
    pub state_text: String,
    /// Q of every allowed action.
    pub q: Vec<(String, f64)>,
    /// Visits of the deciding state.
    pub visits: u64,
    /// Chosen action.
    pub chosen: String,
    /// Behaviour probability of the chosen action.
    pub probability: Option<f64>,
    /// The rules' choice.
    pub shadow: String,
    /// Mode.
    pub mode: String,
    /// Guardrail verdict.
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// Idempotency key.
    pub idempotency_key: Option<String>,
}

/// An approval record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Approval {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Approved or not.
    pub approved: bool,
    /// Who.
    pub by: String,
    /// Note.
    pub note: String,
}

/// A call attempt record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Call {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Endpoint.
    pub endpoint: String,
    /// Attempt.
    pub attempt: u32,
    /// Succeeded.
    pub ok: bool,
}

/// An outcome record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Outcome {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// succeeded, failed, expired, rejected, skipped or cancelled.
    pub status: String,
    /// Details.
    pub detail: String,
}

/// A reward record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reward {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Reward.
    pub reward: f64,
    /// Windows it was observed over.
    pub windows: u32,
    /// State reached.
    pub next_state: u32,
    /// Q before the update.
    pub q_before: f64,
    /// Q after the update.
    pub q_after: f64,
}

/// An escalation record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Escalation {
    /// Decision id.
    pub id: String,
    /// Unix ms.
    pub ts_ms: i64,
    /// Delivered.
    pub delivered: bool,
    /// Attempts.
    pub attempts: u32,
    /// Detail.
    pub detail: String,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[allow(clippy::large_enum_variant)] // one line at a time; boxing buys nothing
pub enum Record {
    /// A decision.
    Decision(Decision),
    /// An approval.
    Approval(Approval),
    /// A call attempt.
    Call(Call),
    /// An outcome.
    Outcome(Outcome),
    /// A reward.
    Reward(Reward),
    /// An escalation.
    Escalation(Escalation),
}

/// A decision with what became of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Joined {
    /// The decision.
    pub d: Decision,
    /// Outcome status.
    pub outcome: Option<String>,
    /// Outcome detail.
    pub outcome_detail: Option<String>,
    /// Reward observed after it.
    pub reward: Option<f64>,
    /// Approved (true) or rejected/expired (false), if a human was asked.
    pub approved: Option<bool>,
    /// Failed call attempts.
    pub failed_calls: u32,
    /// Escalation delivered (true) or not (false), if one was sent.
    pub escalation: Option<bool>,
}

/// A whole log, joined by decision id, decisions in file order.
#[derive(Clone, Debug, Default)]
pub struct Log {
    /// Decisions and what became of them.
    pub decisions: Vec<Joined>,
    /// Lines skipped: (line number, why).
    pub skipped: Vec<(usize, String)>,
    /// Records whose decision is not in the log.
    pub orphans: u64,
}

/// Parse a log's text.
pub fn parse(text: &str) -> Log {
    parse_all(&[("", text)])
}

/// Parse the texts of a log's files in order (a rotated log's segments, oldest
/// first, then the active file), joined by decision id across files. A skipped
/// line's number counts within its file; a reason is prefixed `in NAME: ` when
/// NAME is not empty.
pub fn parse_all(files: &[(&str, &str)]) -> Log {
    let mut log = Log::default();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut pending: Vec<Record> = Vec::new();
    for (name, text) in files {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(Record::Decision(d)) => {
                    index.insert(d.id.clone(), log.decisions.len());
                    log.decisions.push(Joined { d, ..Joined::default() });
                }
                Ok(r) => pending.push(r),
                Err(e) if name.is_empty() => log.skipped.push((i + 1, e.to_string())),
                Err(e) => log.skipped.push((i + 1, format!("in {name}: {e}"))),
            }
        }
    }
    for r in pending {
        let id = match &r {
            Record::Approval(x) => &x.id,
            Record::Call(x) => &x.id,
            Record::Outcome(x) => &x.id,
            Record::Reward(x) => &x.id,
            Record::Escalation(x) => &x.id,
            Record::Decision(x) => &x.id,
        };
        let Some(&k) = index.get(id) else {
            log.orphans += 1;
            continue;
        };
        let j = &mut log.decisions[k];
        match r {
            Record::Approval(a) => j.approved = Some(a.approved),
            Record::Call(c) => j.failed_calls += u32::from(!c.ok),
            Record::Outcome(o) => {
                j.outcome = Some(o.status);
                j.outcome_detail = Some(o.detail);
            }
            Record::Reward(w) => j.reward = Some(j.reward.unwrap_or(0.0) + w.reward),
            Record::Escalation(e) => j.escalation = Some(e.delivered),
            Record::Decision(_) => {}
        }
    }
    log
}

/// Read a log file.
pub fn read(path: &std::path::Path) -> Result<Log, ReportError> {
    Ok(parse(&crate::read_text(path)?))
}

/// Read a rotated log: `files` in order (the sidecar's `provenance::segments`:
/// rotated segments oldest first, then the active file); `active`'s skipped
/// lines are reported bare, the others' prefixed by their file name.
pub fn read_segments(files: &[std::path::PathBuf], active: &std::path::Path) -> Result<Log, ReportError> {
    if files.is_empty() {
        return read(active); // names the missing file
    }
    let mut texts = Vec::with_capacity(files.len());
    for f in files {
        let name =
            if f == active { String::new() } else { f.file_name().unwrap_or_default().to_string_lossy().into_owned() };
        texts.push((name, crate::read_text(f)?));
    }
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    Ok(parse_all(&refs))
}

/// Serialise one record as a line (with the newline).
pub fn line(r: &Record) -> String {
    #[allow(clippy::expect_used)] // plain structs with string keys: serde_json cannot fail on them
    let mut s = serde_json::to_string(r).expect("records serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_by_id_and_skips_bad_lines() {
        let d = Record::Decision(Decision { id: "a-1".into(), chosen: "restart".into(), ..Decision::default() });
        let o = Record::Outcome(Outcome { id: "a-1".into(), status: "failed".into(), ..Outcome::default() });
        let w = Record::Reward(Reward { id: "a-1".into(), reward: -2.0, ..Reward::default() });
        let orphan = Record::Reward(Reward { id: "zzz".into(), ..Reward::default() });
        let text = format!("{}{}not json\n{}{}", line(&d), line(&o), line(&w), line(&orphan));
        let log = parse(&text);
        assert_eq!(log.decisions.len(), 1);
        assert_eq!(log.decisions[0].outcome.as_deref(), Some("failed"));
        assert_eq!(log.decisions[0].reward, Some(-2.0));
        assert_eq!(log.skipped.len(), 1);
        assert_eq!(log.orphans, 1);
    }

    #[test]
    fn joins_across_files_and_names_bad_lines_of_old_ones() {
        let d = Record::Decision(Decision { id: "a-1".into(), ..Decision::default() });
        let o = Record::Outcome(Outcome { id: "a-1".into(), status: "succeeded".into(), ..Outcome::default() });
        let old = format!("{}bad\n", line(&d));
        let new = format!("{}bad\n", line(&o));
        let log = parse_all(&[("p.000001.jsonl", &old), ("", &new)]);
        assert_eq!(log.decisions.len(), 1);
        assert_eq!(log.decisions[0].outcome.as_deref(), Some("succeeded"));
        assert_eq!(log.orphans, 0);
        assert_eq!(log.skipped.len(), 2);
        assert!(log.skipped[0].1.starts_with("in p.000001.jsonl: "));
        assert_eq!(log.skipped[1].0, 2);
    }
}
