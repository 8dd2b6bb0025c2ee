//! Crash safety of the sidecar: `kill -9` the real daemon at random moments,
//! 20 times, restarting it on the same state directory each time, while a
//! human (a thread here) approves every proposal it makes. After every crash
//! and restart: the Q-table checkpoint loads, every approval acknowledged with
//! a 2xx is in the provenance log, no action was applied twice, and no
//! decision id was ever reused.

mod common;

use common::*;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_sidecar::provenance::{read_log, Record};
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const KILLS: usize = 20;

/// Approve every proposal `addr` lists until `stop`; push each id answered 2xx.
fn approver(addr: String, token: String, stop: Arc<AtomicBool>, acked: Arc<Mutex<Vec<String>>>) {
    let auth = format!("Bearer {token}");
    let mut tried = HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
        let Ok(r) = http(&addr, "GET", "/approvals", &[("Authorization", &auth)], "") else { continue };
        let Ok(list) = serde_json::from_str::<serde_json::Value>(&r.body) else { continue };
        for p in list.as_array().into_iter().flatten() {
            let id = p["id"].as_str().unwrap_or_default().to_string();
            if !tried.insert(id.clone()) {
                continue;
            }
            let path = format!("/approvals/{id}");
            let body = r#"{"decision":"approve","by":"kill-test"}"#;
            if let Ok(r) =
                http(&addr, "POST", &path, &[("Content-Type", "application/json"), ("Authorization", &auth)], body)
            {
                if (200..300).contains(&r.status) {
                    acked.lock().unwrap().push(id);
                }
            }
        }
    }
}

/// What must hold whenever no daemon runs (after a kill) or one has just started.
fn check(state: &Path, side: &Path, acked: &[String], torn: &mut usize) {
    let checkpoint = state.join("policy.json");
    if checkpoint.exists() {
        if let Err(e) = selfheal_agent::store::ModelFile::load(&checkpoint) {
            panic!("the checkpoint does not load after a crash: {e}");
        }
    }
    let log = state.join("provenance.jsonl");
    let read = if log.exists() { read_log(&log).expect("read the log") } else { Default::default() };
    let total_lines = std::fs::read(&log).map(|b| b.split(|&c| c == b'\n').count()).unwrap_or(0);
    for (line, why) in &read.skipped {
        // Only a torn last line is tolerated: a crash can only damage the tail.
        assert_eq!(*line, total_lines, "a bad line {line} in the middle of the log: {why}");
        assert!(why.contains("incomplete last line"), "line {line}: {why}");
        *torn += 1;
    }
    let approved: HashSet<&str> = read
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Approval(a) if a.approved => Some(a.id.as_str()),
            _ => None,
        })
        .collect();
    for id in acked {
        assert!(approved.contains(id.as_str()), "approval of {id} was acknowledged 2xx but is not in the log");
    }
    let applied = lines(side);
    let distinct: HashSet<&String> = applied.iter().collect();
    assert_eq!(distinct.len(), applied.len(), "an action was applied twice: {applied:?}");
    // Every applied key is the key of an approved proposal.
    let keys: HashSet<String> = read
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Decision(d) if approved.contains(d.id.as_str()) => Some(format!("{}/{}", d.id, d.chosen)),
            _ => None,
        })
        .collect();
    for k in &applied {
        assert!(keys.contains(k), "applied {k}, which no logged approval covers");
    }
    let ids: Vec<&str> = decisions(&read.records).into_iter().map(|d| d.id.as_str()).collect();
    let unique: HashSet<&str> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "a decision id was reused across restarts");
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_approval_and_applies_nothing_twice() {
    let began = Instant::now();
    let work = tempfile::Builder::new().prefix("selfheal-kill-").tempdir().unwrap();
    let state = work.path().join("state");
    let side = work.path().join("applied.txt");
    let sh = script(work.path(), "act.sh", "cat > /dev/null\necho \"$SELFHEAL_IDEMPOTENCY_KEY\" >> \"$1\"\n");
    let cfg = format!(
        "[daemon]\ncheckpoint_every = 10\n\
         [source]\nkind = \"simulator\"\ntick_ms = 20\npipelines = 3\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{:?}, {:?}]\n\
         [guard]\nmode = \"recommend\"\napproval_ttl_secs = 30\n\
         [guard.budget]\nactions_per_hour = 100000\ncooldown_secs = 0\nblast_radius = 10\n",
        sh.display(),
        side.display()
    );
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(20261123);
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut torn = 0;
    let mut resumed = 0;
    for run in 0..=KILLS {
        let had_checkpoint = state.join("policy.json").exists();
        let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &[] });
        // Ready (start waited for /readyz 200), and on the checkpoint of the runs before.
        let text = std::fs::read_to_string(&d.stderr).unwrap_or_default();
        let loaded = text.lines().find(|l| l.contains("Q table loaded")).unwrap_or_default();
        if had_checkpoint {
            assert!(loaded.contains("policy.json"), "run {run} did not resume from the checkpoint: {loaded:?}");
            resumed += 1;
        }
        check(&state, &side, &acked.lock().unwrap(), &mut torn);
        if run == KILLS {
            // The last run ends cleanly.
            std::thread::sleep(Duration::from_millis(500));
            let st = d.terminate(Duration::from_secs(15));
            assert!(st.success(), "{st}:\n{}", d.stderr_tail());
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let t = {
            let (addr, token, stop, acked) = (d.control.clone(), d.token.clone(), stop.clone(), acked.clone());
            std::thread::spawn(move || approver(addr, token, stop, acked))
        };
        std::thread::sleep(Duration::from_millis(rng.gen_range(300..=1500)));
        d.kill9();
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        check(&state, &side, &acked.lock().unwrap(), &mut torn);
    }
    check(&state, &side, &acked.lock().unwrap(), &mut torn);
    let acked = acked.lock().unwrap().len();
    let applied = lines(&side).len();
    eprintln!(
        "{KILLS} kills in {:?}: {acked} approvals acknowledged, {applied} actions applied, \
         {resumed} restarts from a checkpoint, {torn} torn last lines seen",
        began.elapsed()
    );
    assert!(acked >= KILLS, "only {acked} approvals acknowledged: the test approved too little to mean much");
    assert!(applied > 0, "no action ran");
    assert!(resumed >= KILLS - 2, "only {resumed} restarts found a checkpoint");
    assert!(state.join("policy.json").exists());
}
