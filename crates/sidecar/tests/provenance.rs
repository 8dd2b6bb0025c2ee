//! The provenance log: round trips, crash recovery, tolerant reading, filters,
//! time parsing and `explain`.

use proptest::prelude::*;
use selfheal_sidecar::provenance::{
    explain, filter, format_utc, one_line, parse_time, read_log, ApprovalRecord, CallRecord, DecisionRecord,
    EscalationRecord, LogFilter, OutcomeRecord, OutcomeStatus, ProvenanceError, ProvenanceLog, Record, RewardRecord,
    Verdict, WindowSummary,
};
use std::fs;
use std::io::Write;

const T0: i64 = 1_795_402_800_000; // 2026-11-23T03:00:00Z

fn decision(id: &str, ts_ms: i64, pipeline: &str, chosen: &str, verdict: &str) -> DecisionRecord {
    DecisionRecord {
        id: id.into(),
        ts_ms,
        pipeline: pipeline.into(),
        window: WindowSummary {
            ts_ms: ts_ms - 1_000,
            latency_p95_s: 12.4,
            error_ratio: 0.032,
            backlog: 1_200.0,
            records_in: 50_000.0,
            workers: 8.0,
        },
        score: 0.81,
        anomalous: true,
        signature: 3,
        state: 17,
        state_text: "signature 3, stage transform, latency high, errors timeout".into(),
        q: vec![("noop".into(), -1.5), (chosen.into(), 1.25), ("restart".into(), 0.5)],
        visits: 412,
        chosen: selfheal_core::Action::ALL
            .into_iter()
            .find(|a| a.name() == chosen)
            .unwrap_or_else(|| panic!("unknown action {chosen}")),
        probability: 0.95,
        shadow: "restart".into(),
        glue_shadow: None,
        mode: selfheal_guard::Mode::Act,
        verdict: Verdict::from_name(verdict).unwrap_or_else(|| panic!("unknown verdict {verdict}")),
        reason: "confident, 412 visits, lead 0.75".into(),
        idempotency_key: Some(format!("{id}-key")),
        cause: Default::default(),
        evidence: vec![],
        policy_version: None,
    }
}

/// One record of every kind for decision `id`, in time order.
fn chain(id: &str, pipeline: &str, chosen: &str, verdict: &str) -> Vec<Record> {
    vec![
        Record::Decision(decision(id, T0, pipeline, chosen, verdict)),
        Record::Approval(ApprovalRecord {
            id: id.into(),
            ts_ms: T0 + 1_000,
            approved: true,
            by: "http".into(),
            note: "looks right".into(),
        }),
        Record::Call(CallRecord {
            id: id.into(),
            ts_ms: T0 + 2_000,
            endpoint: "glue.UpdateJob".into(),
            attempt: 1,
            ok: false,
            duration_ms: 5_000,
            timeout_ms: 5_000,
            error: Some("timed out".into()),
            idempotency_key: format!("{id}-key"),
        }),
        Record::Call(CallRecord {
            id: id.into(),
            ts_ms: T0 + 8_000,
            endpoint: "glue.UpdateJob".into(),
            attempt: 2,
            ok: true,
            duration_ms: 310,
            timeout_ms: 5_000,
            error: None,
            idempotency_key: format!("{id}-key"),
        }),
        Record::Outcome(OutcomeRecord {
            id: id.into(),
            ts_ms: T0 + 8_400,
            status: OutcomeStatus::Succeeded,
            detail: "workers 8 → 12".into(),
        }),
        Record::Escalation(EscalationRecord {
            id: id.into(),
            ts_ms: T0 + 9_000,
            delivered: true,
            attempts: 2,
            detail: "slack".into(),
            phase: None,
            status: None,
            page: None,
        }),
        Record::Reward(RewardRecord {
            id: id.into(),
            ts_ms: T0 + 60_000,
            reward: -0.75,
            windows: 3,
            next_state: 4,
            action: None,
            q_before: 1.25,
            q_after: 1.1,
        }),
    ]
}

#[test]
fn every_record_kind_round_trips_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/provenance.jsonl");
    let records = chain("d-1", "p2", "scale_up", "allowed");
    let mut log = ProvenanceLog::open(&path).unwrap();
    assert_eq!(log.recovered_bytes(), 0);
    for r in &records {
        log.append(r, false).unwrap();
    }
    log.flush(true).unwrap();
    let read = read_log(&path).unwrap();
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(read.records, records);

    let text = fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), records.len());
    let kinds: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["decision", "approval", "call", "call", "outcome", "escalation", "reward"]);
}

#[test]
fn record_accessors() {
    let records = chain("d-9", "p1", "restart", "allowed");
    assert!(records.iter().all(|r| r.id() == "d-9"));
    assert_eq!(records[0].pipeline(), Some("p1"));
    assert_eq!(records[1].pipeline(), None);
    assert_eq!(records[6].ts_ms(), T0 + 60_000);
}

#[test]
fn durable_append_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provenance.jsonl");
    let records = chain("d-1", "p2", "scale_up", "allowed");
    {
        let mut log = ProvenanceLog::open(&path).unwrap();
        log.append(&records[0], true).unwrap();
        // Durable means on disk now, not at drop.
        assert_eq!(read_log(&path).unwrap().records, records[..1]);
        std::mem::forget(log); // like a crash: no flush at drop
    }
    let mut log = ProvenanceLog::open(&path).unwrap();
    assert_eq!(log.recovered_bytes(), 0);
    log.append(&records[1], true).unwrap();
    assert_eq!(read_log(&path).unwrap().records, records[..2]);
}

#[test]
fn torn_last_line_is_truncated_at_open_and_the_next_append_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provenance.jsonl");
    let records = chain("d-1", "p2", "scale_up", "allowed");
    let mut log = ProvenanceLog::open(&path).unwrap();
    log.append(&records[0], true).unwrap();
    drop(log);
    let torn = &serde_json::to_string(&records[1]).unwrap()[..25];
    fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(torn.as_bytes()).unwrap();

    // The reader tolerates and reports the torn line.
    let read = read_log(&path).unwrap();
    assert_eq!(read.records, records[..1]);
    assert_eq!(read.skipped.len(), 1);
    assert_eq!(read.skipped[0].0, 2);
    assert!(read.skipped[0].1.contains("incomplete last line"), "{}", read.skipped[0].1);

    let mut log = ProvenanceLog::open(&path).unwrap();
    assert_eq!(log.recovered_bytes(), 25);
    log.append(&records[2], true).unwrap();
    let read = read_log(&path).unwrap();
    assert!(read.skipped.is_empty(), "{:?}", read.skipped);
    assert_eq!(read.records, vec![records[0].clone(), records[2].clone()]);
}

#[test]
fn a_complete_but_invalid_last_line_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provenance.jsonl");
    fs::write(&path, "not json\n").unwrap();
    let log = ProvenanceLog::open(&path).unwrap();
    assert_eq!(log.recovered_bytes(), 0);
    drop(log);
    assert_eq!(fs::read_to_string(&path).unwrap(), "not json\n");
}

#[test]
fn reader_skips_garbage_mid_file_and_reports_line_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("provenance.jsonl");
    let records = chain("d-1", "p2", "scale_up", "allowed");
    let line = |r: &Record| serde_json::to_string(r).unwrap();
    let text = format!(
        "{}\n{{broken\n\n{}\n{{\"kind\":\"mystery\",\"id\":\"x\"}}\n{}\n",
        line(&records[0]),
        line(&records[1]),
        line(&records[2])
    );
    fs::write(&path, text).unwrap();
    let read = read_log(&path).unwrap();
    assert_eq!(read.records, records[..3]);
    let lines: Vec<usize> = read.skipped.iter().map(|(n, _)| *n).collect();
    assert_eq!(lines, [2, 5]);
    assert!(read.skipped[1].1.contains("mystery"), "{}", read.skipped[1].1);
}

#[test]
fn reading_a_missing_file_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.jsonl");
    let err = read_log(&path).unwrap_err();
    assert!(matches!(err, ProvenanceError::NotFound { .. }));
    assert!(err.to_string().contains("nope.jsonl"), "{err}");
}

fn ids(records: &[&Record]) -> Vec<(String, &'static str)> {
    records
        .iter()
        .map(|r| {
            let kind = match r {
                Record::Decision(_) => "decision",
                Record::Approval(_) => "approval",
                Record::Call(_) => "call",
                Record::Outcome(_) => "outcome",
                Record::Reward(_) => "reward",
                Record::Escalation(_) => "escalation",
            };
            (r.id().to_owned(), kind)
        })
        .collect()
}

#[test]
fn filter_semantics() {
    let mut records = chain("a", "p1", "scale_up", "allowed");
    let mut b = chain("b", "p2", "restart", "denied");
    for r in &mut b {
        // Shift decision b one hour later.
        match r {
            Record::Decision(x) => x.ts_ms += 3_600_000,
            Record::Approval(x) => x.ts_ms += 3_600_000,
            Record::Call(x) => x.ts_ms += 3_600_000,
            Record::Outcome(x) => x.ts_ms += 3_600_000,
            Record::Reward(x) => x.ts_ms += 3_600_000,
            Record::Escalation(x) => x.ts_ms += 3_600_000,
        }
    }
    records.extend(b);
    // An orphan record whose decision is not in the log.
    records.push(Record::Outcome(OutcomeRecord {
        id: "orphan".into(),
        ts_ms: T0,
        status: OutcomeStatus::Failed,
        detail: String::new(),
    }));

    let all = filter(&records, &LogFilter::default());
    assert_eq!(all.len(), records.len());

    let by_pipeline = filter(&records, &LogFilter { pipeline: Some("p2".into()), ..LogFilter::default() });
    assert_eq!(by_pipeline.len(), 7);
    assert!(by_pipeline.iter().all(|r| r.id() == "b"), "non-decision records follow their decision");

    let by_action = filter(&records, &LogFilter { action: Some("scale_up".into()), ..LogFilter::default() });
    assert_eq!(ids(&by_action).len(), 7);
    assert!(by_action.iter().all(|r| r.id() == "a"));

    let by_verdict = filter(&records, &LogFilter { verdict: Some("denied".into()), ..LogFilter::default() });
    assert!(by_verdict.iter().all(|r| r.id() == "b") && by_verdict.len() == 7);

    let none = filter(
        &records,
        &LogFilter { pipeline: Some("p1".into()), verdict: Some("denied".into()), ..LogFilter::default() },
    );
    assert!(none.is_empty());

    let by_id = filter(&records, &LogFilter { id: Some("orphan".into()), ..LogFilter::default() });
    assert_eq!(ids(&by_id), [("orphan".to_owned(), "outcome")]);

    // Time bounds apply to each record's own timestamp: [since, until).
    let window =
        filter(&records, &LogFilter { since_ms: Some(T0 + 1_000), until_ms: Some(T0 + 9_000), ..LogFilter::default() });
    assert_eq!(
        ids(&window),
        [("a".to_owned(), "approval"), ("a".to_owned(), "call"), ("a".to_owned(), "call"), ("a".to_owned(), "outcome")]
    );
    let later = filter(&records, &LogFilter { since_ms: Some(T0 + 3_600_000), ..LogFilter::default() });
    assert!(later.iter().all(|r| r.id() == "b") && later.len() == 7);

    // `matches` directly: a non-decision record without a known decision fails a decision filter.
    let f = LogFilter { pipeline: Some("p1".into()), ..LogFilter::default() };
    assert!(!f.matches(&records[1], None));
    let Record::Decision(d) = &records[0] else { unreachable!() };
    assert!(f.matches(&records[1], Some(d)));
}

#[test]
fn parse_time_forms() {
    let now = T0 + 3_600_000;
    // `date -u -d 2026-11-23T03:00:00Z +%s` prints 1795402800.
    assert_eq!(parse_time("2026-11-23T03:00:00Z", now), Ok(1_795_402_800_000));
    assert_eq!(parse_time(" 2026-11-23T03:00:00.250Z ", now), Ok(1_795_402_800_250));
    assert_eq!(parse_time("2026-11-23T05:00:00+02:00", now), Ok(1_795_402_800_000));
    assert_eq!(parse_time("1970-01-01T00:00:00Z", now), Ok(0));
    assert_eq!(parse_time("2000-02-29T12:00:00Z", now), Ok(951_825_600_000));
    assert_eq!(parse_time("1795402800000", now), Ok(1_795_402_800_000));
    assert_eq!(parse_time("0", now), Ok(0));
    assert_eq!(parse_time("-30s", now), Ok(now - 30_000));
    assert_eq!(parse_time("-15m", now), Ok(now - 900_000));
    assert_eq!(parse_time("-2h", now), Ok(now - 7_200_000));
    assert_eq!(parse_time("-1d", now), Ok(now - 86_400_000));
    for bad in [
        "",
        "yesterday",
        "-15",
        "-m",
        "-1.5h",
        "-15w",
        "2026-11-23",
        "2026-11-23T03:00:00",
        "2026-02-30T00:00:00Z",
        "2026-11-23T03:60:00Z",
        "2026-11-23T03:00:00+25:00",
        "99999999999999999999999",
        "-99999999999999999999d",
    ] {
        let err = parse_time(bad, now).unwrap_err();
        assert!(err.contains("invalid time") && err.contains("-15m"), "{bad:?}: {err}");
    }
}

proptest! {
    #[test]
    fn format_utc_parses_back(ts in 0i64..4_102_444_800_000) {
        let text = format_utc(ts);
        prop_assert_eq!(parse_time(&text, 0), Ok(ts));
    }
}

#[test]
fn format_utc_known_value() {
    assert_eq!(format_utc(T0 + 725_123), "2026-11-23T03:12:05.123Z");
}

#[test]
fn one_line_per_kind() {
    let records = chain("d-42", "p2", "scale_up", "allowed");
    let first = one_line(&records[0]);
    assert_eq!(
        first,
        "03:00:00.000 p2 d-42 anomalous (score 0.81, signature 3) → scale_up \
         [allowed: confident, 412 visits, lead 0.75] (rules: restart)"
    );
    let lines: Vec<String> = records.iter().map(one_line).collect();
    assert!(lines.iter().all(|l| !l.contains('\n') && l.contains("d-42")), "{lines:#?}");
    assert!(lines[1].contains("approved by http: looks right"), "{}", lines[1]);
    assert!(lines[2].contains("glue.UpdateJob attempt 1: failed: timed out"), "{}", lines[2]);
    assert!(lines[4].contains("outcome succeeded"), "{}", lines[4]);
    assert!(lines[5].contains("delivered after 2 attempts"), "{}", lines[5]);
    assert!(lines[6].contains("reward -0.750") && lines[6].contains("1.250 → 1.100"), "{}", lines[6]);
}

#[test]
fn explain_tells_the_whole_chain() {
    let mut records = chain("d-42", "p2", "scale_up", "allowed");
    records.extend(chain("other", "p1", "restart", "denied"));
    let text = explain("d-42", &records).unwrap();
    for fact in [
        "decision d-42 on pipeline p2 at 2026-11-23T03:00:00.000Z (mode act)",
        "latency p95 12.40 s",
        "error ratio 3.2%",
        "backlog 1200",
        "8 workers",
        "anomaly score 0.810",
        "failure signature 3",
        "state 17: signature 3, stage transform",
        "412 times",
        "chosen: scale_up with probability 0.950",
        "rules would have chosen: restart (differs)",
        "guardrails: allowed — confident, 412 visits, lead 0.75",
        "idempotency key: d-42-key",
        "approved via http: looks right",
        "glue.UpdateJob attempt 1: failed: timed out in 5000 ms (timeout 5000 ms",
        "glue.UpdateJob attempt 2: ok in 310 ms",
        "outcome: succeeded: workers 8 → 12",
        "escalation: delivered after 2 attempts",
        "reward: -0.750 over 3 windows, next state 4; Q(state 17, scale_up) 1.2500 → 1.1000",
    ] {
        assert!(text.contains(fact), "missing {fact:?} in:\n{text}");
    }
    assert!(!text.contains("other"), "records of other decisions stay out:\n{text}");
    // A proposal that did not run updated noop's value, and says so.
    let mut proposed = chain("d-43", "p2", "scale_up", "proposed");
    for r in &mut proposed {
        if let Record::Reward(rw) = r {
            rw.action = Some("noop".into());
        }
    }
    let told = explain("d-43", &proposed).unwrap();
    assert!(told.contains("Q(state 17, noop)") && !told.contains("Q(state 17, scale_up)"), "{told}");
    // Q values are ranked best first.
    let scale_up = text.find("scale_up ").unwrap();
    let restart = text.find("restart  ").unwrap();
    let noop = text.find("noop ").unwrap();
    assert!(scale_up < restart && restart < noop, "{text}");
}

#[test]
fn explain_a_decision_without_followers() {
    let records = vec![Record::Decision(decision("d-1", T0, "p1", "restart", "proposed"))];
    let text = explain("d-1", &records).unwrap();
    assert!(text.contains("rules would have chosen: restart (agrees)"), "{text}");
    assert!(text.contains("no outcome recorded yet"), "{text}");
}

#[test]
fn explain_unknown_id_suggests_selfheal_log() {
    let records = chain("d-1", "p1", "restart", "allowed");
    // Records without a decision do not make an id explainable.
    let orphans: Vec<Record> = records[1..].to_vec();
    for (id, recs) in [("nope", &records), ("d-1", &orphans)] {
        let err = explain(id, recs).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("no decision with id") && msg.contains(id) && msg.contains("selfheal log"), "{msg}");
    }
}

/// Lines as the sidecar wrote them before the schema crate (chosen, mode,
/// verdict and status were strings then, `cause`, `evidence` and the reward's
/// `action` absent) still load, with the same meaning, and write back with the
/// same spelling.
#[test]
fn lines_written_by_the_previous_version_still_load() {
    let old = [
        r#"{"kind":"decision","id":"18c2f3a-42","ts_ms":1795402800000,"pipeline":"orders-etl","window":{"ts_ms":1795402799000,"latency_p95_s":12.4,"error_ratio":0.032,"backlog":1200.0,"records_in":50000.0,"workers":8.0},"score":0.81,"anomalous":true,"signature":3,"state":17,"state_text":"s","q":[["noop",-1.5],["scale_up",1.25]],"visits":412,"chosen":"scale_up","probability":0.95,"shadow":"restart","mode":"act","verdict":"allowed","reason":"confident","idempotency_key":"k"}"#,
        r#"{"kind":"outcome","id":"18c2f3a-42","ts_ms":1795402808400,"status":"succeeded","detail":"workers 8 → 12"}"#,
        r#"{"kind":"reward","id":"18c2f3a-42","ts_ms":1795402860000,"reward":1.5,"windows":1,"next_state":2,"q_before":1.25,"q_after":1.3}"#,
    ];
    let recs: Vec<Record> =
        old.iter().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let Record::Decision(d) = &recs[0] else { panic!("{:?}", recs[0]) };
    assert_eq!(d.chosen, selfheal_core::Action::ScaleUp);
    assert_eq!(d.mode, selfheal_guard::Mode::Act);
    assert_eq!(d.verdict, Verdict::Allowed);
    assert_eq!(d.cause, Default::default());
    let Record::Outcome(o) = &recs[1] else { panic!("{:?}", recs[1]) };
    assert_eq!(o.status, OutcomeStatus::Succeeded);
    for (line, rec) in old.iter().zip(&recs) {
        let want: serde_json::Value = serde_json::from_str(line).unwrap();
        let got = serde_json::to_value(rec).unwrap();
        for k in ["kind", "chosen", "mode", "verdict", "status", "shadow"] {
            assert_eq!(got.get(k), want.get(k), "{k} of {line}");
        }
    }
    // A verdict nobody wrote is refused with its name, not read as something else.
    let bad = old[0].replace(r#""verdict":"allowed""#, r#""verdict":"maybe""#);
    let err = serde_json::from_str::<Record>(&bad).unwrap_err().to_string();
    assert!(err.contains("maybe"), "{err}");
}
