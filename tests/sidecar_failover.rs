//! Fail-over of a fleet of real `selfheal run` processes (issue 18): two
//! replicas share a DynamoDB lease table on a local AWS API server (moto,
//! behind a proxy that serialises its requests: moto's conditional writes are
//! not atomic, DynamoDB's are). Each watches the same simulated pipelines and
//! acts through a command that records every idempotency key it applies,
//! append-only, and takes 400 ms. The replica with an action in flight is
//! killed with SIGKILL; the test then checks, from that file and the two
//! provenance logs, that
//!
//! - the survivor holds the dead replica's leases within the lease time
//!   (plus one renewal period), and prints how long that took;
//! - no idempotency key, and no decision, was applied twice;
//! - on every pipeline no two replicas ever acted at the same time, and the
//!   lease epochs of its actions never go back (fencing);
//! - no pipeline went unwatched by its lease holder for longer than the
//!   lease time (plus a renewal period and the half second of buffered log
//!   records a kill -9 may take with it).

mod common;
#[path = "aws_support/moto.rs"]
#[allow(dead_code)]
mod moto;
#[path = "../crates/fleet/tests/support/serial.rs"]
mod serial;

use common::*;
use selfheal_sidecar::provenance::{read_log, Record};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

const LEASE_MS: i64 = 2_000;
const RENEW_MS: i64 = 300;
const MARGIN_MS: i64 = 1_000;
const ACTION_MS: u64 = 400;
const PIPELINES: usize = 6;

fn config(work: &Path, proxy: &str, script: &Path, applied: &Path) -> String {
    let scenario = fault_heavy_scenario(work);
    format!(
        "[daemon]\nlog_healthy = true\n\
         [model]\nscenario = {scenario:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 100\npipelines = {PIPELINES}\nseed = 7\n\
         [actuator]\nkind = \"command\"\n[actuator.commands]\ndefault = [{script:?}, {applied:?}]\n\
         [guard]\nmode = \"act\"\n\
         [guard.confidence]\nmin_visits = 0\nmin_lead = 0.0\n\
         [guard.budget]\nactions_per_hour = 100000\ncooldown_secs = 0\nblast_radius = {PIPELINES}\n\
         [guard.retry]\nmax_attempts = 1\n\
         [guard.timeout]\ninitial_ms = 5000\nmin_ms = 3000\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = {proxy:?}\n\
         [fleet]\nlease_secs = {lease}\nrenew_secs = {renew}\nmargin_secs = {margin}\n\
         [fleet.leases]\nkind = \"dynamodb\"\ntable = \"selfheal-leases\"\ncreate_table = true\n",
        script = script.display().to_string(),
        applied = applied.display().to_string(),
        lease = LEASE_MS as f64 / 1000.0,
        renew = RENEW_MS as f64 / 1000.0,
        margin = MARGIN_MS as f64 / 1000.0,
    )
}

/// One line of the actuator's file: `start|done KEY PIPELINE REPLICA MS`.
#[derive(Clone, Debug)]
struct Applied {
    phase: String,
    key: String,
    pipeline: String,
    replica: String,
    ms: i64,
}

fn applied(path: &Path) -> Vec<Applied> {
    lines(path)
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 5, "a torn or odd line in the actuator's file: {l:?}");
            Applied {
                phase: f[0].into(),
                key: f[1].into(),
                pipeline: f[2].into(),
                replica: f[3].into(),
                ms: f[4].parse().unwrap_or_else(|e| panic!("{l:?}: {e}")),
            }
        })
        .collect()
}

/// Pipeline -> (holder, live) from a replica's /metrics.
fn holders(d: &Sidecar) -> BTreeMap<String, (String, bool)> {
    let Ok(r) = d.get("/metrics") else { return BTreeMap::new() };
    r.body
        .lines()
        .filter_map(|l| l.strip_prefix("selfheal_lease_holder{pipeline=\""))
        .filter_map(|rest| {
            let (p, rest) = rest.split_once("\",holder=\"")?;
            let (h, v) = rest.split_once("\"} ")?;
            Some((p.to_string(), (h.to_string(), v.trim() == "1")))
        })
        .collect()
}

fn held_by(d: &Sidecar, replica: &str) -> Vec<String> {
    holders(d).into_iter().filter(|(_, (h, live))| h == replica && *live).map(|(p, _)| p).collect()
}

#[test]
fn the_standby_takes_over_a_killed_replica_within_the_lease_and_nothing_runs_twice() {
    let work = tempfile::Builder::new().prefix("selfheal-failover-").tempdir().unwrap();
    let moto = moto::Moto::start(&work.path().join("moto.log"));
    let proxy = serial::Serial::start(&moto.addr).url;
    let applied_path = work.path().join("applied.txt");
    let script = act_script(work.path(), ACTION_MS as f64 / 1000.0);
    let cfg = config(work.path(), &proxy, &script, &applied_path);
    let env = replica_env;
    let (state_a, state_b) = (work.path().join("a"), work.path().join("b"));
    let env_a = env("replica-a");
    let mut a =
        Sidecar::start(Start { work: work.path(), state: &state_a, config: Some(&cfg), args: &[], env: &env_a });
    wait_for(Duration::from_secs(20), "replica-a to hold every pipeline's lease", || {
        held_by(&a, "replica-a").len() == PIPELINES
    });
    let env_b = env("replica-b");
    let mut b =
        Sidecar::start(Start { work: work.path(), state: &state_b, config: Some(&cfg), args: &[], env: &env_b });
    // The shard hands replica-b its part: replica-a releases, replica-b takes.
    wait_for(Duration::from_secs(20), "the shard to split the pipelines between the replicas", || {
        let h = held_by(&a, "replica-a").len();
        h > 0 && h < PIPELINES && held_by(&b, "replica-b").len() + h == PIPELINES
    });
    let both_up = now_ms();
    for (d, name) in [(&a, "replica-a"), (&b, "replica-b")] {
        let r = d.get("/readyz").unwrap();
        assert_eq!(r.status, 200);
        let n: usize = r
            .body
            .split_once(&format!("replica {name}: "))
            .and_then(|(_, rest)| rest.split_once(" leases held"))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("/readyz does not name the leases held: {}", r.body));
        assert!((1..PIPELINES).contains(&n), "{name} holds {n} leases: {}", r.body);
        let body = d.metrics();
        let held = metric(&body, &format!("selfheal_leases_held{{replica=\"{name}\"}}"));
        assert!(held.is_some_and(|h| h >= 1.0 && h < PIPELINES as f64), "{body}");
        assert_eq!(metric(&body, "selfheal_fleet_replicas"), Some(2.0));
        promtool_check(&body);
    }

    // Kill the replica that has an action in flight, while it is in flight.
    let mut victim: Option<(String, String, String)> = None; // (replica, pipeline, key)
    let start = Instant::now();
    while victim.is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no action in flight after both replicas were up; applied: {:?}\nA: {}\nB: {}",
            lines(&applied_path),
            a.stderr_tail(),
            b.stderr_tail()
        );
        let recs = applied(&applied_path);
        let done: HashSet<&str> = recs.iter().filter(|r| r.phase == "done").map(|r| r.key.as_str()).collect();
        victim = recs
            .iter()
            .filter(|r| r.phase == "start" && r.ms > both_up && !done.contains(r.key.as_str()))
            .find(|r| now_ms() - r.ms < ACTION_MS as i64 / 2)
            .map(|r| (r.replica.clone(), r.pipeline.clone(), r.key.clone()));
        if victim.is_none() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let (dead, pipeline, in_flight) = victim.unwrap();
    let (killed, survivor, name) =
        if dead == "replica-a" { (&mut a, &b, "replica-b") } else { (&mut b, &a, "replica-a") };
    let dead_held = held_by(survivor, &dead);
    assert!(dead_held.contains(&pipeline), "{dead} acted on {pipeline} without holding it: {dead_held:?}");
    killed.kill9();
    let killed_at = now_ms();
    eprintln!("killed {dead} (kill -9) with {in_flight} in flight on {pipeline}; it held {dead_held:?}");

    // The survivor takes over every pipeline of the dead replica.
    let mut took: BTreeMap<String, i64> = BTreeMap::new();
    let start = Instant::now();
    while took.len() < dead_held.len() {
        assert!(
            start.elapsed() < Duration::from_millis((LEASE_MS + RENEW_MS) as u64 + 5_000),
            "{name} did not take over {dead_held:?} (took {took:?}):\n{}",
            survivor.stderr_tail()
        );
        let now = now_ms();
        for p in held_by(survivor, name) {
            if dead_held.contains(&p) {
                took.entry(p).or_insert(now);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let takeover_ms = took.values().max().unwrap() - killed_at;
    let takeover_p = took[&pipeline] - killed_at;
    eprintln!(
        "takeover: {name} held {pipeline} {takeover_p} ms and all {} of {dead}'s pipelines {takeover_ms} ms after \
         the kill (lease {LEASE_MS} ms, renew {RENEW_MS} ms)",
        dead_held.len()
    );
    // The lease, one renewal period, and the keeper's own calls through the serialising proxy.
    assert!(takeover_ms <= LEASE_MS + RENEW_MS + 1_000, "takeover took {takeover_ms} ms");
    // The survivor acts on the taken pipelines.
    wait_for(Duration::from_secs(30), "the survivor to act on a pipeline it took over", || {
        applied(&applied_path)
            .iter()
            .any(|r| r.replica == name && r.phase == "done" && dead_held.contains(&r.pipeline) && r.ms > killed_at)
    });
    std::thread::sleep(Duration::from_secs(1));
    let ended = now_ms();
    let mut survivor_owned = if name == "replica-a" { a } else { b };
    let st = survivor_owned.terminate(Duration::from_secs(15));
    assert!(st.success(), "the survivor exited with {st}:\n{}", survivor_owned.stderr_tail());
    // The orphaned action of the dead replica has finished by now.
    std::thread::sleep(Duration::from_millis(ACTION_MS + 200));

    // 1. Every key carries its lease epoch. (Decision ids are unique per
    // process, so "no key twice" could never fail across replicas; what can
    // is checked in 2: overlapping runs and epochs going back.)
    let recs = applied(&applied_path);
    let starts: Vec<&Applied> = recs.iter().filter(|r| r.phase == "start").collect();
    for s in &starts {
        let (_, epoch) = s.key.rsplit_once('@').unwrap_or_else(|| panic!("key {} has no @epoch", s.key));
        assert!(epoch.parse::<u64>().is_ok(), "key {}", s.key);
    }
    let by_dead = starts.iter().filter(|s| s.replica == dead).count();
    let by_survivor = starts.iter().filter(|s| s.replica == name).count();
    assert!(by_dead > 0 && by_survivor > 0, "both replicas acted: {dead} {by_dead}, {name} {by_survivor}");

    // 2. Per pipeline, over both replicas' actions: no run overlaps any
    // earlier run of the other replica (the running max end), and no epoch
    // is below an earlier one's (the running max epoch). Runs of one replica
    // may overlap today (the decision core can start a new action while the
    // previous one is in flight: a separate defect, see issue 18's notes).
    let mut per: BTreeMap<&str, Vec<(i64, i64, &str, u64)>> = BTreeMap::new();
    let done_at: HashMap<&str, i64> =
        recs.iter().filter(|r| r.phase == "done").map(|r| (r.key.as_str(), r.ms)).collect();
    for s in &starts {
        let epoch: u64 = s.key.rsplit_once('@').unwrap().1.parse().unwrap();
        let end = *done_at.get(s.key.as_str()).unwrap_or_else(|| {
            let id = s.key.split('/').next().unwrap_or_default();
            let story: Vec<String> = [&state_a, &state_b]
                .iter()
                .flat_map(|st| read_log(&st.join("provenance.jsonl")).map(|l| l.records).unwrap_or_default())
                .filter(|r| r.id() == id)
                .map(|r| format!("{r:?}"))
                .collect();
            panic!("{} never finished; its records: {story:#?}", s.key)
        });
        per.entry(&s.pipeline).or_default().push((s.ms, end, &s.replica, epoch));
    }
    for (p, runs) in &mut per {
        runs.sort();
        // Running max end per replica: a run must start after every earlier
        // run of the other replica ended (not only its neighbour's).
        let mut max_end: BTreeMap<&str, i64> = BTreeMap::new();
        let (mut max_epoch, mut epoch_by) = (0u64, "");
        for &(start, end, r, e) in runs.iter() {
            for (by, until) in max_end.iter().filter(|(by, _)| **by != r) {
                assert!(start >= *until, "{p}: {r} started at {start} while {by}'s action ran until {until}");
            }
            assert!(e >= max_epoch, "{p}: {r} acted under epoch {e} after epoch {max_epoch} ({epoch_by})");
            assert!(
                e > max_epoch || epoch_by.is_empty() || epoch_by == r,
                "{p}: {r} acted under the epoch {e} that {epoch_by} acted under"
            );
            let m = max_end.entry(r).or_insert(end);
            *m = (*m).max(end);
            (max_epoch, epoch_by) = (e, r);
        }
    }
    // The action in flight at the kill ran to its end (its lease had the margin for it).
    assert!(done_at.contains_key(in_flight.as_str()), "{in_flight} never finished");

    // 3. No pipeline unwatched by its lease holder for longer than the lease.
    let mut watched: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for state in [&state_a, &state_b] {
        let log = read_log(&state.join("provenance.jsonl")).expect("read a provenance log");
        for r in &log.records {
            if let Record::Decision(d) = r {
                if !d.reason.starts_with("not the lease holder") {
                    watched.entry(d.pipeline.clone()).or_default().push(d.ts_ms);
                }
            }
        }
    }
    assert_eq!(watched.len(), PIPELINES, "pipelines decided on by a holder: {:?}", watched.keys());
    let mut worst = (String::new(), 0);
    for (p, ts) in &mut watched {
        ts.sort_unstable();
        let inside: Vec<i64> = ts.iter().copied().filter(|t| (both_up..=ended).contains(t)).collect();
        for w in inside.windows(2) {
            if w[1] - w[0] > worst.1 {
                worst = (p.clone(), w[1] - w[0]);
            }
        }
    }
    eprintln!("longest a pipeline went without its lease holder's decision: {} ms ({})", worst.1, worst.0);
    assert!(worst.1 <= LEASE_MS + RENEW_MS + 700, "{} unwatched for {} ms", worst.0, worst.1);
    drop(moto);
}

/// An S3 client against `url` (path-style, plain Content-Length bodies for the proxy).
fn s3_client(url: &str) -> selfheal_sidecar::fleet::lib::aws_sdk_s3::Client {
    use s3::config::{BehaviorVersion, Credentials, Region};
    use selfheal_sidecar::fleet::lib::aws_sdk_s3 as s3;
    let conf = s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "tests"))
        .endpoint_url(url)
        .force_path_style(true)
        .request_checksum_calculation(s3::config::RequestChecksumCalculation::WhenRequired)
        .build();
    s3::Client::from_conf(conf)
}

/// Policy versions named by the decision records of `state` after `since` (Unix ms).
fn versions_after(state: &Path, since: i64) -> Vec<Option<u64>> {
    let Ok(log) = read_log(&state.join("provenance.jsonl")) else { return Vec::new() };
    log.records
        .iter()
        .filter_map(|r| match r {
            Record::Decision(d) if d.ts_ms > since => Some(d.policy_version),
            _ => None,
        })
        .collect()
}

/// The shared policy end to end: a replica swaps in the store's current
/// version, pushes what it learns online as deltas, swaps in the version a
/// merge folds them into, and follows a rollback; its decision records name
/// the version behind each decision.
#[test]
fn a_replica_follows_the_shared_policy_and_pushes_its_deltas() {
    use selfheal_sidecar::fleet::lib::{Merged, PolicyStore};
    let work = tempfile::Builder::new().prefix("selfheal-policy-").tempdir().unwrap();
    let moto = moto::Moto::start(&work.path().join("moto.log"));
    let proxy = serial::Serial::start(&moto.addr).url;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let s3 = s3_client(&proxy);
    rt.block_on(s3.create_bucket().bucket("policies").send()).expect("create the bucket");
    let store = PolicyStore::new(s3, "policies", "fleet/");
    let shipped =
        selfheal_agent::store::ModelFile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/policy.json"))
            .expect("the shipped policy");
    rt.block_on(store.init(shipped)).expect("version 1 in the store");

    let scenario = fault_heavy_scenario(work.path());
    let cfg = format!(
        "[daemon]\nlog_healthy = true\n\
         [model]\nscenario = {scenario:?}\n\
         [source]\nkind = \"simulator\"\ntick_ms = 50\npipelines = 3\nseed = 11\n\
         [actuator]\nkind = \"dry-run\"\n\
         [guard]\nmode = \"act\"\n\
         [guard.confidence]\nmin_visits = 0\nmin_lead = 0.0\n\
         [guard.budget]\nactions_per_hour = 100000\ncooldown_secs = 0\nblast_radius = 3\n\
         [aws]\nregion = \"us-east-1\"\nendpoint_url = {proxy:?}\n\
         [fleet]\nlease_secs = 2.0\nrenew_secs = 0.3\nmargin_secs = 0.5\n\
         [fleet.leases]\nkind = \"dynamodb\"\ntable = \"leases\"\ncreate_table = true\n\
         [fleet.policy_store]\nbucket = \"policies\"\nprefix = \"fleet/\"\npoll_secs = 0.3\npush_deltas_secs = 1.0\n"
    );
    let state = work.path().join("state");
    let env = [
        ("POD_NAME", "replica-p"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &env });
    wait_for(Duration::from_secs(20), "decisions made with policy version 1", || {
        versions_after(&state, 0).contains(&Some(1))
    });
    assert_eq!(metric(&d.metrics(), "selfheal_policy_version"), Some(1.0));

    // The replica's deltas arrive; a merge folds them into version 2, which the replica swaps in.
    let mut merged = None;
    let start = Instant::now();
    while merged.is_none() {
        assert!(start.elapsed() < Duration::from_secs(40), "no delta pushed:\n{}", d.stderr_tail());
        match rt.block_on(store.merge(5)).expect("merge") {
            Merged::Version { version, deltas, visits, .. } => merged = Some((version, deltas, visits)),
            Merged::Nothing { .. } => std::thread::sleep(Duration::from_millis(300)),
        }
    }
    let (v2, deltas, visits) = merged.unwrap();
    eprintln!("merged {deltas} delta(s) of {visits} online updates into version {v2}");
    assert!(v2 >= 2 && deltas >= 1 && visits >= 1);
    let merged_at = now_ms();
    wait_for(Duration::from_secs(10), "decisions made with the merged version", || {
        versions_after(&state, merged_at).contains(&Some(v2))
    });

    // Rollback: back to version 1, and the replica follows.
    let (from, to) = rt.block_on(store.rollback()).expect("rollback");
    assert_eq!((from, to), (v2, 1));
    let rolled_at = now_ms();
    wait_for(Duration::from_secs(10), "decisions made with version 1 again", || {
        versions_after(&state, rolled_at).contains(&Some(1))
    });
    // Once swapped back, no later decision names the rolled-back version.
    std::thread::sleep(Duration::from_millis(1_500));
    let after = versions_after(&state, rolled_at);
    let first = after.iter().position(|v| *v == Some(1)).unwrap();
    assert!(after.len() > first + 5, "too few decisions after the swap back: {after:?}");
    assert!(after[first..].iter().all(|v| *v == Some(1)), "{after:?}");
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit {st}:\n{}", d.stderr_tail());
    drop(moto);
}

/// A replica cut off from its lease store (moto killed) stops on its own: no
/// action starts once less than the margin of its last renewal is left, and
/// the action running then (longer than the margin) is cancelled before the
/// lease lapses, so another replica could take over without overlap.
#[test]
fn a_replica_that_cannot_renew_stops_acting_before_its_lease_lapses() {
    let work = tempfile::Builder::new().prefix("selfheal-cutoff-").tempdir().unwrap();
    let moto = moto::Moto::start(&work.path().join("moto.log"));
    let proxy = serial::Serial::start(&moto.addr).url;
    let applied_path = work.path().join("applied.txt");
    // Longer than the margin: the lease can run low while it runs.
    let script = act_script(work.path(), 2.5);
    let cfg = config(work.path(), &proxy, &script, &applied_path);
    let env = [
        ("POD_NAME", "replica-c"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ];
    let state = work.path().join("state");
    let mut d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(&cfg), args: &[], env: &env });
    wait_for(Duration::from_secs(20), "the replica to hold every lease", || {
        held_by(&d, "replica-c").len() == PIPELINES
    });
    let mut running: Option<Applied> = None;
    wait_for(Duration::from_secs(60), "an action just started", || {
        let recs = applied(&applied_path);
        running = recs
            .iter()
            .filter(|r| r.phase == "start" && now_ms() - r.ms < 300)
            .find(|r| !recs.iter().any(|o| o.phase == "done" && o.key == r.key))
            .cloned();
        running.is_some()
    });
    let running = running.unwrap();
    drop(moto);
    let cut_at = now_ms();
    // Its last renewal was before the cut: every lease lapses by cut_at + LEASE_MS.
    std::thread::sleep(Duration::from_millis(LEASE_MS as u64 + 1_500));
    let log = read_log(&state.join("provenance.jsonl")).expect("read the log");
    let late: Vec<String> = log
        .records
        .iter()
        .filter_map(|r| match r {
            Record::Decision(x) if x.verdict == "allowed" && x.ts_ms + MARGIN_MS >= cut_at + LEASE_MS => {
                Some(format!("{} at {}", x.id, x.ts_ms))
            }
            _ => None,
        })
        .collect();
    assert!(late.is_empty(), "actions allowed with less than the margin of lease left: {late:?}");
    let lost = log.records.iter().any(|r| {
        matches!(r, Record::Decision(x) if x.ts_ms > cut_at + LEASE_MS && x.reason.starts_with("not the lease holder"))
    });
    assert!(lost, "after its leases ran out, the replica still decided as their holder");
    let id = running.key.split('/').next().unwrap();
    let cancelled = log.records.iter().find_map(|r| match r {
        Record::Outcome(o) if o.id == id => Some(o.clone()),
        _ => None,
    });
    let o = cancelled.unwrap_or_else(|| panic!("no outcome for {id} ({}):\n{}", running.key, d.stderr_tail()));
    eprintln!(
        "{} started {} ms before the cut; {:?} {} ms after it: {}",
        running.key,
        cut_at - running.ms,
        o.status,
        o.ts_ms - cut_at,
        o.detail
    );
    assert_eq!(o.status.to_string(), "cancelled", "{o:?}");
    assert!(o.detail.contains("lease ran low"), "{}", o.detail);
    assert!(o.ts_ms < cut_at + LEASE_MS, "cancelled at {} ms after the cut, after the lease lapsed", o.ts_ms - cut_at);
    assert!(
        !applied(&applied_path).iter().any(|r| r.phase == "done" && r.key == running.key),
        "the cancelled command ran to its end"
    );
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "exit {st}:\n{}", d.stderr_tail());
}

/// `text` without ANSI colour sequences (`ESC [ ... m`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn sigterm_mid_action_leaves_the_lease_to_lapse_before_the_standby_acts() {
    let work = tempfile::Builder::new().prefix("selfheal-sigterm-").tempdir().unwrap();
    let moto = moto::Moto::start(&work.path().join("moto.log"));
    let proxy = serial::Serial::start(&moto.addr).url;
    let applied_path = work.path().join("applied.txt");
    // Longer than the margin and than the shutdown wait: SIGTERM aborts it.
    let script = act_script(work.path(), 3.0);
    let cfg = config(work.path(), &proxy, &script, &applied_path).replacen(
        "[daemon]\n",
        "[daemon]\nshutdown_grace_secs = 0\n",
        1,
    );
    let env = replica_env;
    let (state_a, state_b) = (work.path().join("a"), work.path().join("b"));
    let (env_a, env_b) = (env("replica-a"), env("replica-b"));
    let mut a =
        Sidecar::start(Start { work: work.path(), state: &state_a, config: Some(&cfg), args: &[], env: &env_a });
    wait_for(Duration::from_secs(20), "replica-a to hold every pipeline's lease", || {
        held_by(&a, "replica-a").len() == PIPELINES
    });
    let mut b =
        Sidecar::start(Start { work: work.path(), state: &state_b, config: Some(&cfg), args: &[], env: &env_b });
    wait_for(Duration::from_secs(20), "the shard to split the pipelines between the replicas", || {
        let h = held_by(&a, "replica-a").len();
        h > 0 && h < PIPELINES && held_by(&b, "replica-b").len() + h == PIPELINES
    });
    let both_up = now_ms();
    let mut victim: Option<Applied> = None;
    wait_for(Duration::from_secs(60), "an action just started after both replicas were up", || {
        let recs = applied(&applied_path);
        victim = recs
            .iter()
            .filter(|r| r.phase == "start" && r.ms > both_up && now_ms() - r.ms < 300)
            .find(|r| !recs.iter().any(|o| o.phase == "done" && o.key == r.key))
            .cloned();
        victim.is_some()
    });
    let victim = victim.unwrap();
    let (term, standby, standby_name) =
        if victim.replica == "replica-a" { (&mut a, &b, "replica-b") } else { (&mut b, &a, "replica-a") };
    let term_at = now_ms();
    let st = term.terminate(Duration::from_secs(15));
    assert!(st.success(), "{} exited with {st}:\n{}", victim.replica, term.stderr_tail());
    eprintln!("SIGTERM to {} at {term_at} with {} in flight on {}", victim.replica, victim.key, victim.pipeline);

    // The aborted action's lease was left to lapse, not released: its expiry, from the replica's log.
    let text = plain(&std::fs::read_to_string(&term.stderr).unwrap());
    let line = text
        .lines()
        .find(|l| l.contains("lease left to lapse") && l.contains(&format!("pipeline={} ", victim.pipeline)))
        .unwrap_or_else(|| panic!("no 'lease left to lapse' for {} in:\n{}", victim.pipeline, term.stderr_tail()));
    let expires: i64 = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("expires_at_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expires_at_ms in {line:?}"));
    assert!(expires > term_at, "the lease left to lapse expired at {expires}, before the SIGTERM at {term_at}");
    let log = read_log(&term.log_path()).expect("read the terminated replica's log");
    let id = victim.key.split('/').next().unwrap();
    let outcome = log.records.iter().find_map(|r| match r {
        Record::Outcome(o) if o.id == id => Some(o.clone()),
        _ => None,
    });
    let o = outcome.unwrap_or_else(|| panic!("no outcome for {id}:\n{}", term.stderr_tail()));
    assert_eq!(o.status.to_string(), "cancelled", "{o:?}");

    // The standby takes the pipeline, but only after that lease lapsed (seen
    // on its /metrics: the first sight is no earlier than the take).
    let mut took_at = 0;
    wait_for(Duration::from_secs(20), "the standby to take the pipeline of the aborted action", || {
        took_at = now_ms();
        held_by(standby, standby_name).contains(&victim.pipeline)
    });
    eprintln!(
        "{standby_name} held {} {} ms after the SIGTERM; the aborted action's lease lapsed {} ms after it",
        victim.pipeline,
        took_at - term_at,
        expires - term_at
    );
    assert!(
        took_at >= expires,
        "{standby_name} took {} at {took_at}, before its lease lapsed at {expires}",
        victim.pipeline
    );
    // No action of the standby on it started before the lapse (whether one comes
    // at all in a short run depends on the scenario's faults).
    std::thread::sleep(Duration::from_secs(2));
    let early: Vec<String> = applied(&applied_path)
        .iter()
        .filter(|r| r.phase == "start" && r.replica == standby_name && r.pipeline == victim.pipeline)
        .filter(|r| r.ms > term_at && r.ms < expires)
        .map(|r| format!("{} at {}", r.key, r.ms))
        .collect();
    assert!(
        early.is_empty(),
        "{standby_name} acted on {} before the lease lapsed at {expires}: {early:?}",
        victim.pipeline
    );
    // Its lease ran for at least the lease time less a renewal period after the SIGTERM (the keeper renewed it while waiting).
    assert!(
        expires >= term_at + LEASE_MS - RENEW_MS,
        "the lease left to lapse expires {} ms after the SIGTERM: not renewed while the action ran",
        expires - term_at
    );
    drop(moto);
}

/// The command actuator's script: records `start KEY PIPELINE REPLICA MS`,
/// runs for `secs`, then records `done ...`, appending to the file in `$1`.
fn act_script(dir: &Path, secs: f64) -> std::path::PathBuf {
    script(
        dir,
        "act.sh",
        &format!(
            "cat > /dev/null\n\
             echo \"start $SELFHEAL_IDEMPOTENCY_KEY $SELFHEAL_PIPELINE $POD_NAME $(date +%s%3N)\" >> \"$1\"\n\
             sleep {secs}\n\
             echo \"done $SELFHEAL_IDEMPOTENCY_KEY $SELFHEAL_PIPELINE $POD_NAME $(date +%s%3N)\" >> \"$1\"\n"
        ),
    )
}

/// A replica's environment: its id and the local server's test credentials.
fn replica_env(name: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("POD_NAME", name),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
}
