//! The sidecar's provenance log (JSON lines, one record per line, tagged by
//! `kind`) joined by decision id for the review. The records are the schema's
//! ([`selfheal_schema::provenance`]), the very types the sidecar writes;
//! unknown kinds and bad lines are skipped and counted, never fatal. Simulated
//! logs are written with the same types, so `selfheal log` reads those too.

use crate::ReportError;
pub use selfheal_schema::provenance::{
    ApprovalRecord, CallRecord, DecisionRecord, EscalationRecord, OutcomeRecord, OutcomeStatus, Record, RewardRecord,
    Verdict, WindowSummary,
};
use std::collections::HashMap;

/// A proposal still waiting for a person (see [`open_proposals`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenProposal<'a> {
    /// The `proposed` decision.
    pub decision: &'a DecisionRecord,
    /// Later windows that waited on it (`pending` decisions naming it).
    pub waits: usize,
}

/// The proposals among `candidates` (records of `records`, e.g. a filtered
/// view of them) still open at `now_ms` (Unix ms): a `proposed` decision
/// with no approval and no outcome recorded in `records`, younger than
/// `ttl_ms` (ms); in the order of `candidates`.
pub fn open_proposals<'a>(
    records: &'a [Record],
    candidates: impl IntoIterator<Item = &'a Record>,
    now_ms: i64,
    ttl_ms: i64,
) -> Vec<OpenProposal<'a>> {
    let closed: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| match r {
            Record::Approval(a) => Some(a.id.as_str()),
            Record::Outcome(o) => Some(o.id.as_str()),
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for rec in candidates {
        let Record::Decision(d) = rec else { continue };
        if d.verdict != "proposed" || closed.contains(d.id.as_str()) || now_ms - d.ts_ms >= ttl_ms {
            continue;
        }
        let named = format!("proposal {} ", d.id);
        let waits = records
            .iter()
            .filter(|r| matches!(r, Record::Decision(x) if x.verdict == "pending" && x.reason.contains(&named)))
            .count();
        out.push(OpenProposal { decision: d, waits });
    }
    out
}

/// A decision with what became of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    /// The decision.
    pub d: DecisionRecord,
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
                    log.decisions.push(Joined {
                        d,
                        outcome: None,
                        outcome_detail: None,
                        reward: None,
                        approved: None,
                        failed_calls: 0,
                        escalation: None,
                    });
                }
                Ok(r) => pending.push(r),
                Err(e) if name.is_empty() => log.skipped.push((i + 1, e.to_string())),
                Err(e) => log.skipped.push((i + 1, format!("in {name}: {e}"))),
            }
        }
    }
    for r in pending {
        let Some(&k) = index.get(r.id()) else {
            log.orphans += 1;
            continue;
        };
        let j = &mut log.decisions[k];
        match r {
            Record::Approval(a) => j.approved = Some(a.approved),
            Record::Call(c) => j.failed_calls += u32::from(!c.ok),
            Record::Outcome(o) => {
                j.outcome = Some(o.status.to_string());
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

    /// A decision line as the sidecar wrote it before the schema crate (chosen,
    /// mode and verdict were strings then; the spelling is unchanged).
    fn decision(id: &str) -> String {
        format!(
            r#"{{"kind":"decision","id":"{id}","ts_ms":1000,"pipeline":"p1","window":{{"ts_ms":0,"latency_p95_s":1.0,"error_ratio":0.1,"backlog":0.0,"records_in":10.0,"workers":2.0}},"score":0.9,"anomalous":true,"signature":1,"state":3,"state_text":"s","q":[["restart",0.5]],"visits":4,"chosen":"restart","probability":0.9,"shadow":"noop","mode":"act","verdict":"allowed","reason":"r","idempotency_key":null}}"#
        ) + "\n"
    }

    fn outcome(id: &str, status: OutcomeStatus) -> Record {
        Record::Outcome(OutcomeRecord { id: id.into(), ts_ms: 2, status, detail: String::new() })
    }

    fn reward(id: &str, reward: f64) -> Record {
        Record::Reward(RewardRecord {
            id: id.into(),
            ts_ms: 3,
            reward,
            windows: 1,
            next_state: 0,
            action: None,
            q_before: 0.0,
            q_after: 0.0,
        })
    }

    /// A decision record with `verdict`, `reason` and `ts_ms`.
    fn decided(id: &str, verdict: &str, reason: &str, ts_ms: i64) -> Record {
        let mut v: serde_json::Value = serde_json::from_str(decision(id).trim()).unwrap();
        v["verdict"] = verdict.into();
        v["reason"] = reason.into();
        v["ts_ms"] = ts_ms.into();
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn open_proposals_are_unanswered_unexpired_proposed_decisions_with_their_waits() {
        let recs = vec![
            decided("open", "proposed", "r", 1_000),
            decided("answered", "proposed", "r", 1_000),
            decided("done", "proposed", "r", 1_000),
            decided("old", "proposed", "r", 0),
            decided("acted", "allowed", "r", 1_000),
            decided("w1", "pending", "proposal open has waited 60 s", 2_000),
            decided("w2", "pending", "proposal open has waited 120 s", 3_000),
            decided("w3", "pending", "proposal opener has waited 1 s", 3_000),
            Record::Approval(
                serde_json::from_value(serde_json::json!({
                    "id": "answered", "ts_ms": 1500, "approved": true, "by": "ops", "note": ""
                }))
                .unwrap(),
            ),
            outcome("done", OutcomeStatus::Succeeded),
        ];
        let open = open_proposals(&recs, &recs, 10_000, 9_500);
        let got: Vec<(&str, usize)> = open.iter().map(|p| (p.decision.id.as_str(), p.waits)).collect();
        assert_eq!(got, [("open", 2)], "'old' is 10 s old with a 9.5 s TTL: expired");
        assert!(open_proposals(&recs, &recs[1..], 10_000, 9_500).is_empty(), "only the candidates are listed");
    }

    #[test]
    fn joins_by_id_and_skips_bad_lines() {
        let text = format!(
            "{}{}not json\n{}{}",
            decision("a-1"),
            line(&outcome("a-1", OutcomeStatus::Failed)),
            line(&reward("a-1", -2.0)),
            line(&reward("zzz", 0.0))
        );
        let log = parse(&text);
        assert_eq!(log.decisions.len(), 1);
        assert_eq!(log.decisions[0].d.chosen, selfheal_core::Action::Restart);
        assert_eq!(log.decisions[0].d.verdict, Verdict::Allowed);
        assert_eq!(log.decisions[0].outcome.as_deref(), Some("failed"));
        assert_eq!(log.decisions[0].reward, Some(-2.0));
        assert_eq!(log.skipped.len(), 1);
        assert_eq!(log.orphans, 1);
    }

    #[test]
    fn joins_across_files_and_names_bad_lines_of_old_ones() {
        let old = format!("{}bad\n", decision("a-1"));
        let new = format!("{}bad\n", line(&outcome("a-1", OutcomeStatus::Succeeded)));
        let log = parse_all(&[("p.000001.jsonl", &old), ("", &new)]);
        assert_eq!(log.decisions.len(), 1);
        assert_eq!(log.decisions[0].outcome.as_deref(), Some("succeeded"));
        assert_eq!(log.orphans, 0);
        assert_eq!(log.skipped.len(), 2);
        assert!(log.skipped[0].1.starts_with("in p.000001.jsonl: "));
        assert_eq!(log.skipped[1].0, 2);
    }

    #[test]
    fn an_old_line_round_trips_with_the_same_spelling() {
        let old = decision("a-1");
        let Ok(Record::Decision(d)) = serde_json::from_str::<Record>(old.trim()) else { panic!("{old}") };
        let again: serde_json::Value = serde_json::from_str(&line(&Record::Decision(d))).unwrap();
        let want: serde_json::Value = serde_json::from_str(old.trim()).unwrap();
        for k in ["chosen", "mode", "verdict", "shadow"] {
            assert_eq!(again[k], want[k], "{k}");
        }
    }
}
