//! Proposals pushed to people (issue 19), against the real daemon and a real
//! local webhook receiver: a proposal reaches the webhook once per pipeline and
//! incident (later proposals of the same pipeline are folded into it) with its
//! decision id, evidence, expiry and how to answer (the CLI command and the
//! URL); an answered proposal and an expired one are announced; a proposal
//! left unanswered past `guard.approval_unanswered_secs` is paged as such; and
//! `/metrics` shows how many wait and for how long.

mod common;

use common::*;
use selfheal_sidecar::provenance::{PagePhase, Record};
use std::collections::HashMap;
use std::time::Duration;

/// One message the hook got: its Idempotency-Key and JSON body.
#[derive(Clone, Debug)]
struct Msg {
    key: String,
    body: serde_json::Value,
}

/// Every message the hook got, in arrival order.
fn messages(hook: &Hook) -> Vec<Msg> {
    hook.hits().into_iter().map(|h| Msg { body: h.json(), key: h.key }).collect()
}

/// Messages the hook got whose event is `selfheal.proposal.<notice>`.
fn notices(hook: &Hook, notice: &str) -> Vec<Msg> {
    let event = format!("selfheal.proposal.{notice}");
    messages(hook).into_iter().filter(|m| m.body["event"] == event.as_str()).collect()
}

#[test]
fn proposals_reach_the_webhook_once_per_incident_with_how_to_answer_and_their_end_is_announced() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let hook = Hook::ok();
    // Recommend mode: every action the policy chooses waits for a person;
    // one pipeline, so every proposal after the first is the same pipeline's.
    let cfg = format!(
        "[source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 1\n\
         [guard]\nmode = \"recommend\"\napproval_ttl_secs = 4\napproval_unanswered_secs = 2\n\
         [guard.budget]\nactions_per_hour = 1000\ncooldown_secs = 0\nblast_radius = 10\n\
         [notify]\nurl = {:?}\nformat = \"generic\"\nbase_ms = 10\ncap_ms = 50\n",
        hook.url
    );
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });

    // 1. The first proposal arrives with what a person needs to decide.
    wait_for(Duration::from_secs(30), "a proposal message", || !notices(&hook, "proposal").is_empty());
    let first = notices(&hook, "proposal")[0].clone();
    let id = first.body["detail"]["decision_id"].as_str().expect("decision id").to_string();
    // Answer at once (before the unanswered page, due 2 s after it was proposed).
    let out = d.client(&["approve", &id]);
    assert!(out.status.success(), "selfheal approve {id}: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(first.key, format!("{id}/proposal"), "its own Idempotency-Key");
    let det = &first.body["detail"];
    assert_eq!(det["pipeline"], first.body["pipeline"]);
    assert!(det["action"].as_str().is_some_and(|a| !a.is_empty()), "{det}");
    assert!(det["why"].as_str().unwrap().contains("recommend mode"), "{det}");
    let ev = &det["evidence"];
    for k in ["window", "score", "signature", "state", "rules"] {
        assert!(!ev[k].is_null(), "evidence.{k} missing: {ev}");
    }
    let proposed = det["proposed_ms"].as_i64().unwrap();
    assert_eq!(det["expires_at_ms"].as_i64().unwrap(), proposed + 4000, "expiry = proposed + approval_ttl_secs");
    let ans = &det["answer"];
    assert_eq!(ans["approve"].as_str().unwrap(), format!("selfheal approve {id} --addr {}", d.control));
    assert_eq!(ans["reject"].as_str().unwrap(), format!("selfheal reject {id} --addr {}", d.control));
    assert_eq!(ans["url"].as_str().unwrap(), format!("http://{}/ui", d.control));
    // The readable text has it all in one read.
    let text = first.body["text"].as_str().unwrap();
    for needle in [id.as_str(), "Why it waits", "Evidence: anomaly score", "Rule policy would", "Expires: 20", "/ui"] {
        assert!(text.contains(needle), "{needle:?} not in {text}");
    }
    assert!(text.contains(&format!("selfheal approve {id} --addr {}", d.control)), "{text}");

    // 2. The answer is announced.
    wait_for(Duration::from_secs(20), "the approval announced", || {
        notices(&hook, "approved").iter().any(|h| h.key == format!("{id}/approved"))
    });
    let approved = notices(&hook, "approved").into_iter().find(|h| h.key == format!("{id}/approved")).unwrap();
    assert!(approved.body["detail"]["by"].as_str().unwrap().starts_with("cli"), "{:?}", approved.body);
    assert!(approved.body["text"].as_str().unwrap().contains("approved"), "{:?}", approved.body);

    // 3. Nobody answers the next ones: "nobody answered", then expiry, both announced.
    // (Under load the approval above may itself come after its 2 s: look
    // at a proposal nobody answered.)
    let other = |h: &Msg| h.body["detail"]["decision_id"] != id.as_str();
    wait_for(Duration::from_secs(30), "an unanswered page", || notices(&hook, "unanswered").iter().any(other));
    let nag = notices(&hook, "unanswered").into_iter().find(other).unwrap();
    assert!(nag.body["text"].as_str().unwrap().starts_with("Nobody answered"), "{:?}", nag.body);
    let nagged = nag.body["detail"]["decision_id"].as_str().unwrap().to_string();
    assert_eq!(nag.key, format!("{nagged}/unanswered"));
    let nags = notices(&hook, "unanswered");
    assert_eq!(nags.iter().filter(|h| h.key == nag.key).count(), 1, "paged once");
    let nag_at = nag.body["detail"]["at_ms"].as_i64().unwrap();
    let nag_proposed = nag.body["detail"]["proposed_ms"].as_i64().unwrap();
    assert!(nag_at - nag_proposed >= 2000, "paged {} ms after it was proposed, before 2 s", nag_at - nag_proposed);
    wait_for(Duration::from_secs(30), "an expiry announced", || {
        notices(&hook, "expired").iter().any(|h| h.key == format!("{nagged}/expired"))
    });
    let body = d.metrics();
    promtool_check(&body);
    assert!(metric(&body, "selfheal_proposals_unanswered_total").unwrap() >= 1.0, "{body}");
    let age = metric(&body, "selfheal_proposal_oldest_age_seconds").expect("oldest age in /metrics");
    let open = metric(&body, "selfheal_proposals_pending").unwrap();
    assert!((0.0..=4.5).contains(&age), "the oldest open proposal is younger than its 4 s lifetime: {age}");
    assert_eq!(open == 0.0, age == 0.0, "age 0 exactly when none is open: {open} open, age {age}");
    std::thread::sleep(Duration::from_millis(300));
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());

    // 4. Once per incident: many proposals and waits, few messages; never two
    // proposal messages for the pipeline while the told one is open.
    let log = d.log();
    let decided = decisions(&log.records);
    let proposed = decided.iter().filter(|x| x.verdict == "proposed").count();
    let pending = decided.iter().filter(|x| x.verdict == "pending").count();
    let told = notices(&hook, "proposal").len();
    assert!(pending > 0, "later windows wait on the open proposal");
    assert!(told < proposed + pending, "{told} messages for {proposed} proposals and {pending} waits");
    let mut open_told = false;
    for h in messages(&hook) {
        match h.body["event"].as_str().unwrap_or("") {
            "selfheal.proposal.proposal" => {
                assert!(!open_told, "a second proposal message while one is open: {:?}", h.body);
                open_told = true;
            }
            // The closing message; a folded proposal may inherit the telling
            // and be closed in turn without a message of its own.
            "selfheal.proposal.approved" | "selfheal.proposal.rejected" | "selfheal.proposal.expired" => {
                open_told = !h.body["detail"]["also_open"].as_array().unwrap().is_empty();
            }
            _ => {}
        }
    }
    assert!(pending > 0 && proposed > told, "bursts were folded: {proposed} proposals, {told} messages");
    // Every message was delivered once and is in the log as a page.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for h in messages(&hook) {
        *seen.entry(h.key).or_default() += 1;
    }
    assert!(seen.values().all(|&n| n == 1), "a message delivered twice: {seen:?}");
    let delivered: Vec<&str> = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Escalation(e) if e.phase == Some(PagePhase::Delivered) => Some(e.id.as_str()),
            _ => None,
        })
        .collect();
    assert!(delivered.contains(&format!("{id}/proposal").as_str()), "{delivered:?}");
    // `selfheal log` shows what the pipeline waits for and for how long.
    let out = selfheal(&["log", "--log", log_path(&state).to_str().unwrap(), "--verdict", "pending"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("waiting for a human: proposal") && text.contains("has waited"), "{text}");
}

fn log_path(state: &std::path::Path) -> std::path::PathBuf {
    state.join("provenance.jsonl")
}

#[test]
fn a_proposal_told_before_a_kill_9_is_announced_void_after_the_restart_once() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let hook = Hook::ok();
    let cfg = format!(
        "[source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 1\n\
         [guard]\nmode = \"recommend\"\napproval_ttl_secs = 600\n\
         [notify]\nurl = {:?}\nformat = \"generic\"\nbase_ms = 10\ncap_ms = 50\n",
        hook.url
    );
    let start = || Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
    let mut d = start();
    wait_for(Duration::from_secs(30), "a proposal message", || !notices(&hook, "proposal").is_empty());
    let id = notices(&hook, "proposal")[0].body["detail"]["decision_id"].as_str().unwrap().to_string();
    d.kill9();
    // `selfheal log --waiting` takes the proposal lifetime from --config
    // (guard.approval_ttl_secs) when given: with 2 s the proposal no longer waits.
    let log = log_path(&state);
    let waits = |extra: &[&str]| {
        let mut a = vec!["log", "--log", log.to_str().unwrap(), "--waiting"];
        a.extend_from_slice(extra);
        let out = selfheal(&a);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).contains(&format!("({id};"))
    };
    let (long, short) = (work.path().join("long.toml"), work.path().join("short.toml"));
    std::fs::write(&long, &cfg).unwrap();
    std::fs::write(&short, cfg.replace("approval_ttl_secs = 600", "approval_ttl_secs = 2")).unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(waits(&[]) && waits(&["--config", long.to_str().unwrap()]), "open, within 600 s and the default");
    assert!(!waits(&["--config", short.to_str().unwrap()]), "expired after the config's 2 s");
    assert!(waits(&["--config", short.to_str().unwrap(), "--ttl-secs", "600"]), "--ttl-secs wins");
    let void = |hook: &Hook| notices(hook, "expired").into_iter().filter(|h| h.key == format!("{id}/expired")).count();
    assert_eq!(void(&hook), 0);

    let mut d = start();
    wait_for(Duration::from_secs(30), "the void proposal announced", || void(&hook) == 1);
    let msg = notices(&hook, "expired").into_iter().find(|h| h.key == format!("{id}/expired")).unwrap();
    assert!(msg.body["text"].as_str().unwrap().contains("restarted"), "{:?}", msg.body);
    let out = d.client(&["approve", &id]);
    assert!(!out.status.success(), "a proposal of the earlier run cannot be approved");
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    assert!(outcomes(&d.log().records).iter().any(|o| o.id == id && o.status == "expired"), "closed in the log");

    // A second restart does not say it again.
    let mut d = start();
    std::thread::sleep(Duration::from_secs(2));
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    assert_eq!(void(&hook), 1, "announced once");
}
