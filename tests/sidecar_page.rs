//! Durable escalations ("pages") against the real daemon and real local HTTP
//! webhooks: the field case `escalation-under-rate-limit.jsonl` (a webhook
//! answering 429 with `Retry-After` must not lose the page), a kill -9 with a
//! page owed, a webhook that refuses a page for good, and the
//! `selfheal_pages_undelivered` gauge.
//!
//! Pages come from actions that fail (a `command` actuator exiting 1 on a
//! fault-heavy simulated pipeline): each failed action is escalated.
//! Backoff settings are short so that the tests take seconds.

mod common;

use common::*;
use selfheal_sidecar::provenance::{EscalationRecord, PagePhase, Record};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The daemon's config: actions that always fail, each escalated to `url`.
fn config(work: &Path, url: &str, backoff: (u64, u64), fallback: Option<(&Path, u64)>) -> String {
    let scenario = fault_heavy_scenario(work);
    let sh = script(work, "act.sh", "cat > /dev/null\necho 'nope' >&2\nexit 1\n");
    let mut cfg = format!(
        "[model]\nscenario = {:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 2\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}]\n\
         [guard]\nmode = \"act\"\n\
         [guard.confidence]\nmin_visits = 0\nmin_lead = 0.0\n\
         [guard.budget]\nactions_per_hour = 6\ncooldown_secs = 0\nblast_radius = 10\n\
         [guard.breaker]\nfailure_rate_threshold = 100.0\nsliding_window_size = 100\nminimum_number_of_calls = 100\n\
         [guard.retry]\nmax_attempts = 1\nbase_ms = 10\ncap_ms = 20\n\
         [notify]\nurl = {url:?}\nformat = \"generic\"\ntimeout_ms = 2000\nbase_ms = {}\ncap_ms = {}\n",
        scenario.display(),
        sh.display(),
        backoff.0,
        backoff.1,
    );
    if let Some((path, after)) = fallback {
        cfg.push_str(&format!(
            "[notify.fallback]\nkind = \"file\"\npath = {:?}\nafter_secs = {after}\n",
            path.display()
        ));
    }
    cfg
}

fn pages(recs: &[Record]) -> Vec<&EscalationRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Escalation(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Ids of pages raised, in order.
fn raised(recs: &[Record]) -> Vec<String> {
    pages(recs).into_iter().filter(|e| e.phase == Some(PagePhase::Raised)).map(|e| e.id.clone()).collect()
}

fn phases_of<'a>(recs: &'a [Record], id: &str) -> Vec<&'a EscalationRecord> {
    pages(recs).into_iter().filter(|e| e.id == id).collect()
}

fn undelivered(d: &Sidecar) -> f64 {
    metric(&d.metrics(), "selfheal_pages_undelivered").expect("selfheal_pages_undelivered in /metrics")
}

#[test]
fn a_rate_limited_webhook_gets_the_page_once_after_retry_after_and_loses_nothing() {
    // The field case: Slack-style 429 with Retry-After (2 s here, 60 s in the
    // report) for the first 3 requests, then 200.
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/field-cases/escalation-under-rate-limit.jsonl");
    assert!(case.exists(), "{} is missing: the tests read ../shared beside the repository", case.display());
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let hook = Hook::start(Arc::new(|n| if n < 3 { (429, Some("2".into())) } else { (200, None) }));
    let cfg = config(work.path(), &hook.url, (10, 50), None);
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "the first 429", || !hook.hits().is_empty());
    let first = hook.hits()[0].key.clone();
    assert!(undelivered(&d) >= 1.0, "a page answered 429 is undelivered");
    wait_for(Duration::from_secs(30), "the first page accepted", || hook.accepted(&first) == 1);
    let body = d.metrics();
    promtool_check(&body);
    assert!(metric(&body, r#"selfheal_page_delivery_attempts_total{outcome="retry"}"#).unwrap() >= 3.0, "{body}");
    std::thread::sleep(Duration::from_millis(500));
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let hits = hook.hits();
    // Retry-After was honoured: nothing came sooner than 2 s after a 429.
    for w in hits.windows(2) {
        if w[0].status == 429 {
            let gap = w[1].at.duration_since(w[0].at);
            assert!(gap >= Duration::from_millis(1_900), "a request {gap:?} after a 429 with Retry-After: 2");
        }
    }
    let mine: Vec<&Hit> = hits.iter().filter(|h| h.key == first).collect();
    assert_eq!(mine.iter().map(|h| h.status).collect::<Vec<_>>(), [429, 429, 429, 200], "{mine:?}");
    assert!(mine[3].at.duration_since(mine[0].at) >= Duration::from_secs(6), "three Retry-After: 2 waits");
    assert!(mine.iter().all(|h| h.body.contains(&first)), "each attempt carries the page");
    // Every page accepted at most once; the log says delivered exactly where the hook said 200.
    let log = d.log();
    for id in raised(&log.records) {
        assert!(hook.accepted(&id) <= 1, "{id} delivered twice");
        let recs = phases_of(&log.records, &id);
        let delivered = recs.iter().filter(|e| e.phase == Some(PagePhase::Delivered)).count();
        assert_eq!(delivered, hook.accepted(&id), "{id}: {recs:?}");
        assert!(recs.iter().all(|e| e.phase != Some(PagePhase::PermanentFailure)), "{recs:?}");
    }
    let recs = phases_of(&log.records, &first);
    assert_eq!(recs[0].phase, Some(PagePhase::Raised), "written before the first attempt: {recs:?}");
    assert!(recs[0].page.is_some());
    let failed: Vec<_> = recs.iter().filter(|e| e.phase == Some(PagePhase::AttemptFailed)).collect();
    assert_eq!(failed.len(), 3, "{recs:?}");
    assert!(failed.iter().all(|e| e.status == Some(429) && !e.delivered));
    let last = recs.last().unwrap();
    assert_eq!(
        (last.phase, last.delivered, last.attempts, last.status),
        (Some(PagePhase::Delivered), true, 4, Some(200))
    );
}

#[test]
fn a_page_owed_at_kill_9_is_delivered_once_after_restart_with_the_same_key() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let fallback = work.path().join("pages-fallback.jsonl");
    let status = Arc::new(AtomicU16::new(503));
    let answer = status.clone();
    let hook = Hook::start(Arc::new(move |_| (answer.load(Ordering::SeqCst), None)));
    let cfg = config(work.path(), &hook.url, (50, 200), Some((&fallback, 1)));
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "a page retried after 503s", || hook.hits().len() >= 3);
    // Undelivered for over a second: also in the fallback file, still retried.
    wait_for(Duration::from_secs(10), "the fallback file", || !lines(&fallback).is_empty());
    assert!(undelivered(&d) >= 1.0);
    d.kill9();
    // A request the dead daemon sent may still be in a receiver thread: let it land (as a 503).
    std::thread::sleep(Duration::from_millis(300));

    let before = d.log();
    let owed: Vec<String> = raised(&before.records)
        .into_iter()
        .filter(|id| !phases_of(&before.records, id).iter().any(|e| e.delivered))
        .collect();
    let tried: Vec<String> = hook.hits().iter().map(|h| h.key.clone()).collect();
    assert!(!owed.is_empty() && owed.contains(&tried[0]), "the page tried first is owed: {owed:?}");
    assert!(hook.hits().iter().all(|h| h.status == 503));
    let fell_back = lines(&fallback).len();
    let first_fallback: serde_json::Value = serde_json::from_str(&lines(&fallback)[0]).unwrap();
    assert_eq!(first_fallback["id"], tried[0].as_str(), "the oldest page went to the fallback file");

    status.store(200, Ordering::SeqCst);
    let n_before = hook.hits().len();
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(20), "every owed page accepted", || owed.iter().all(|id| hook.accepted(id) >= 1));
    wait_for(Duration::from_secs(10), "no page undelivered", || undelivered(&d) == 0.0);
    std::thread::sleep(Duration::from_millis(500));
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let hits = hook.hits();
    let after: Vec<&Hit> = hits[n_before..].iter().collect();
    // Owed pages first, in the order raised, each exactly once, with the key of before.
    let firsts: Vec<&str> = after.iter().take(owed.len()).map(|h| h.key.as_str()).collect();
    assert_eq!(
        firsts,
        owed.iter().map(String::as_str).collect::<Vec<_>>(),
        "requests after the restart: {:?}",
        after.iter().map(|h| (&h.key, h.status)).collect::<Vec<_>>()
    );
    for id in &owed {
        assert_eq!(hook.accepted(id), 1, "{id} accepted {} times", hook.accepted(id));
        assert!(tried.contains(id) || !hits[..n_before].iter().any(|h| &h.key == id));
        let h = after.iter().find(|h| &h.key == id).unwrap();
        let v: serde_json::Value = serde_json::from_str(&h.body).unwrap();
        assert_eq!(v["id"], id.as_str(), "the body names the page its key names");
    }
    let log = d.log();
    assert!(log.skipped.iter().all(|(_, why)| why.contains("incomplete last line")), "{:?}", log.skipped);
    for id in &owed {
        let recs = phases_of(&log.records, id);
        assert_eq!(recs.iter().filter(|e| e.phase == Some(PagePhase::Raised)).count(), 1, "raised once: {recs:?}");
        assert_eq!(recs.iter().filter(|e| e.delivered).count(), 1, "{recs:?}");
        assert!(recs.iter().filter(|e| e.phase == Some(PagePhase::Fallback)).count() <= 1, "{recs:?}");
    }
    // A page that went to the fallback before the kill did not go there again.
    let again =
        lines(&fallback)[fell_back..].iter().filter(|l| l.contains(&format!("\"id\":\"{}\"", tried[0]))).count();
    assert_eq!(again, 0, "written to the fallback twice");
}

#[test]
fn a_page_the_webhook_refuses_for_good_lands_in_the_fallback_file() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let fallback = work.path().join("out").join("pages.jsonl");
    let hook = Hook::start(Arc::new(|_| (400, None)));
    // An hour's patience: only the permanent failure can put it in the file now.
    let cfg = config(work.path(), &hook.url, (10, 50), Some((&fallback, 3_600)));
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "a page in the fallback file", || !lines(&fallback).is_empty());
    let body = d.metrics();
    promtool_check(&body);
    assert!(metric(&body, r#"selfheal_page_delivery_attempts_total{outcome="permanent"}"#).unwrap() >= 1.0, "{body}");
    assert_eq!(metric(&body, r#"selfheal_page_delivery_attempts_total{outcome="retry"}"#), Some(0.0), "{body}");
    assert!(metric(&body, r#"selfheal_page_fallback_total{result="written"}"#).unwrap() >= 1.0, "{body}");
    assert!(metric(&body, r#"selfheal_escalations_total{delivered="false"}"#).unwrap() >= 1.0, "{body}");
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    let page: serde_json::Value = serde_json::from_str(&lines(&fallback)[0]).unwrap();
    let id = page["id"].as_str().unwrap().to_string();
    assert!(page["summary"].as_str().is_some_and(|s| !s.is_empty()), "{page}");
    assert!(page["why_here"].as_str().unwrap().contains("400"), "{page}");
    assert_eq!(hook.hits().iter().filter(|h| h.key == id).count(), 1, "a 400 is not retried");
    let log = d.log();
    let recs = phases_of(&log.records, &id);
    let phases: Vec<_> = recs.iter().map(|e| e.phase.unwrap()).collect();
    assert_eq!(phases, [PagePhase::Raised, PagePhase::PermanentFailure, PagePhase::Fallback], "{recs:?}");
    assert_eq!(recs[1].status, Some(400));
    // Refused pages are settled: nothing is owed to redeliver.
    assert!(selfheal_sidecar::provenance::owed_pages(&log.records).iter().all(|o| o.page.id != id));
}

#[test]
fn the_undelivered_gauge_rises_while_the_webhook_fails_and_returns_to_zero() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let status = Arc::new(AtomicU16::new(503));
    let answer = status.clone();
    let hook = Hook::start(Arc::new(move |_| (answer.load(Ordering::SeqCst), None)));
    let cfg = config(work.path(), &hook.url, (20, 100), None);
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    wait_for(Duration::from_secs(30), "a page undelivered", || undelivered(&d) >= 1.0);
    let body = d.metrics();
    promtool_check(&body);
    status.store(200, Ordering::SeqCst);
    wait_for(Duration::from_secs(10), "the gauge back at 0", || undelivered(&d) == 0.0);
    let body = d.metrics();
    assert!(metric(&body, r#"selfheal_page_delivery_attempts_total{outcome="delivered"}"#).unwrap() >= 1.0, "{body}");
    promtool_check(&body);
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
}

#[test]
fn validate_checks_the_fallback_keys() {
    let work = tempfile::tempdir().unwrap();
    let cases = [
        ("empty-path.toml", "path = \"\"\n", "notify.fallback.path"),
        ("a-dir.toml", &format!("path = {:?}\n", work.path().display()) as &str, "notify.fallback.path"),
        ("sns.toml", "kind = \"sns\"\npath = \"x\"\n", "sns"),
        ("typo.toml", "path = \"x\"\nafter_sec = 3\n", "after_sec"),
    ];
    for (name, table, key) in cases {
        let p = work.path().join(name);
        std::fs::write(&p, format!("[notify]\nurl = \"http://127.0.0.1:9/hook\"\n[notify.fallback]\n{table}")).unwrap();
        let out = selfheal(&["validate", "--config", p.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} validated");
        assert!(err.contains(key), "{name}: the error does not name {key}: {err}");
    }
    let ok = work.path().join("ok.toml");
    let fb = work.path().join("pages.jsonl");
    std::fs::write(
        &ok,
        format!(
            "[notify]\nurl = \"http://127.0.0.1:9/hook\"\n[notify.fallback]\nkind = \"file\"\npath = {:?}\n",
            fb.display()
        ),
    )
    .unwrap();
    let out = selfheal(&["validate", "--config", ok.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
