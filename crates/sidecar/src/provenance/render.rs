//! Rendering: records as text, one line each for `selfheal log` and the
//! daemon's console, and a decision's whole story for `selfheal explain`.

use super::query::{clock, format_utc};
use super::{CallRecord, EscalationRecord, PagePhase, ProvenanceError, Record, Verdict};
use std::fmt::Write as _;

/// One human-readable line per record, for `selfheal log` and the daemon's console, e.g.
/// `03:12:05.123 p2 d-42 anomalous (score 0.81, signature 3) → scale_up [allowed: confident, 412 visits]`.
pub fn one_line(rec: &Record) -> String {
    let at = clock(rec.ts_ms());
    match rec {
        Record::Decision(d) => {
            let health = if d.anomalous { "anomalous" } else { "normal" };
            let mut line = format!(
                "{at} {} {} {health} (score {:.2}, signature {}) → {} [{}: {}]",
                d.pipeline, d.id, d.score, d.signature, d.chosen, d.verdict, d.reason
            );
            if d.shadow != d.chosen.name() {
                let _ = write!(line, " (rules: {})", d.shadow);
            }
            line
        }
        Record::Approval(a) => {
            let what = match (a.approved, a.by.as_str()) {
                (false, "expiry") => "expired unapproved".to_owned(),
                (true, by) => format!("approved by {by}"),
                (false, by) => format!("rejected by {by}"),
            };
            with_note(format!("{at} {} {what}", a.id), &a.note)
        }
        Record::Call(c) => format!("{at} {} call {}", c.id, describe_call(c)),
        Record::Outcome(o) => with_note(format!("{at} {} outcome {}", o.id, o.status), &o.detail),
        Record::Reward(r) => format!(
            "{at} {} reward {:.3} over {} windows → state {}; Q {:.3} → {:.3}",
            r.id, r.reward, r.windows, r.next_state, r.q_before, r.q_after
        ),
        Record::Escalation(e) => with_note(format!("{at} {} escalation {}", e.id, describe_escalation(e)), &e.detail),
    }
}

fn with_note(mut line: String, note: &str) -> String {
    if !note.is_empty() {
        let _ = write!(line, ": {note}");
    }
    line
}

fn describe_call(c: &CallRecord) -> String {
    let result = match (&c.ok, &c.error) {
        (true, _) => "ok".to_owned(),
        (false, Some(err)) => format!("failed: {err}"),
        (false, None) => "failed".to_owned(),
    };
    format!(
        "{} attempt {}: {result} in {} ms (timeout {} ms, idempotency key {})",
        c.endpoint, c.attempt, c.duration_ms, c.timeout_ms, c.idempotency_key
    )
}

fn describe_escalation(e: &EscalationRecord) -> String {
    let plural = if e.attempts == 1 { "" } else { "s" };
    let status = e.status.map(|s| format!(" (HTTP {s})")).unwrap_or_default();
    match e.phase {
        Some(PagePhase::Raised) => "raised, to be delivered".to_owned(),
        Some(phase) => format!("{}{status} after {} attempt{plural}", phase.name(), e.attempts),
        None => {
            let state = if e.delivered { "delivered" } else { "NOT delivered" };
            format!("{state} after {} attempt{plural}", e.attempts)
        }
    }
}

/// Tells the story of decision `id` in plain words: the window, the detector's
/// verdict, the state, the ranked Q values, the choice and what the rules would have
/// done, the guardrails, then every later record (approvals, call attempts, outcome,
/// escalations, reward and Q update) in time order.
pub fn explain(id: &str, records: &[Record]) -> Result<String, ProvenanceError> {
    let d = records
        .iter()
        .find_map(|r| match r {
            Record::Decision(d) if d.id == id => Some(d),
            _ => None,
        })
        .ok_or_else(|| ProvenanceError::UnknownId(id.to_owned()))?;
    let w = &d.window;
    let mut out = String::new();
    // Writing to a String cannot fail; the results are ignored.
    let _ = writeln!(out, "decision {} on pipeline {} at {} (mode {})", d.id, d.pipeline, format_utc(d.ts_ms), d.mode);
    let _ = writeln!(
        out,
        "window starting {}: latency p95 {:.2} s, error ratio {:.1}%, backlog {:.0}, {:.0} workers, {:.0} records in",
        format_utc(w.ts_ms),
        w.latency_p95_s,
        w.error_ratio * 100.0,
        w.backlog,
        w.workers,
        w.records_in
    );
    let health = if d.anomalous { "anomalous" } else { "not anomalous" };
    let _ = writeln!(out, "detector: {health}, anomaly score {:.3}, failure signature {}", d.score, d.signature);
    let _ = writeln!(out, "state {}: {}", d.state, d.state_text);
    let mut ranked: Vec<&(String, f64)> = d.q.iter().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let _ = writeln!(out, "Q values, best first (state visited {} times):", d.visits);
    for (action, q) in ranked {
        let mark = if *action == d.chosen.name() { "  ← chosen" } else { "" };
        let _ = writeln!(out, "  {action:<20} {q:>10.4}{mark}");
    }
    let _ = writeln!(out, "chosen: {} with probability {:.3}", d.chosen, d.probability);
    let agreement = if d.shadow == d.chosen.name() { "agrees" } else { "differs" };
    let _ = writeln!(out, "rules would have chosen: {} ({agreement})", d.shadow);
    if let Some(g) = &d.glue_shadow {
        let agreement = if *g == d.chosen { "agrees" } else { "differs" };
        let _ = writeln!(out, "Glue's built-ins would have chosen: {} ({agreement})", g.name());
    }
    let _ = writeln!(out, "guardrails: {} — {}", d.verdict, d.reason);
    if let Some(key) = &d.idempotency_key {
        let _ = writeln!(out, "idempotency key: {key}");
    }

    let mut later: Vec<&Record> =
        records.iter().filter(|r| r.id() == id && !matches!(r, Record::Decision(_))).collect();
    later.sort_by_key(|r| r.ts_ms());
    if later.is_empty() {
        let _ = writeln!(out, "nothing recorded after the decision (no approval, call, outcome or reward yet)");
    }
    let mut has_outcome = false;
    for rec in later {
        let at = format_utc(rec.ts_ms());
        match rec {
            Record::Decision(_) => {}
            Record::Approval(a) => {
                let what = match (a.approved, a.by.as_str()) {
                    (false, "expiry") => "the proposal expired without approval".to_owned(),
                    (true, by) => format!("approved via {by}"),
                    (false, by) => format!("rejected via {by}"),
                };
                let _ = writeln!(out, "{at} approval: {}", with_note(what, &a.note));
            }
            Record::Call(c) => {
                let _ = writeln!(out, "{at} call: {}", describe_call(c));
            }
            Record::Outcome(o) => {
                has_outcome = true;
                let _ = writeln!(out, "{at} outcome: {}", with_note(o.status.to_string(), &o.detail));
            }
            Record::Escalation(e) => {
                let _ = writeln!(out, "{at} escalation: {}", with_note(describe_escalation(e), &e.detail));
            }
            Record::Reward(r) => {
                let _ = writeln!(
                    out,
                    "{at} reward: {:.3} over {} windows, next state {}; Q(state {}, {}) {:.4} → {:.4}",
                    r.reward,
                    r.windows,
                    r.next_state,
                    d.state,
                    r.action.as_deref().unwrap_or(d.chosen.name()),
                    r.q_before,
                    r.q_after
                );
            }
        }
    }
    if !has_outcome && !matches!(d.verdict, Verdict::Noop | Verdict::Observed) {
        let _ = writeln!(out, "no outcome recorded yet");
    }
    Ok(out)
}
