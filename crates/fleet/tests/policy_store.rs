//! The S3 policy store against a real local AWS API server (moto):
//! polling with ETags, rollback, and concurrent writers and mergers that
//! never lose or double a delta.

// A test fails loudly on a broken setup (moto, sockets): `expect` is the point here.
#![allow(clippy::expect_used)]

mod common;
mod support;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_agent::{EncoderConfig, ModelFile, ModelMeta, QParams, QTable, TelemetryEncoder};
use selfheal_core::{Action, EncodeState, StateId};
use selfheal_fleet::policy::DELTA_FORMAT;
use selfheal_fleet::{merge, DeltaRow, Fetched, Merged, PolicyDelta, PolicyStore, PolicyStoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const BUCKET: &str = "selfheal-policies";

fn encoder() -> TelemetryEncoder {
    TelemetryEncoder::new(EncoderConfig {
        worker_levels: vec![2, 4, 8],
        base_level: 1,
        detector: None,
        driver_workers: 0,
    })
}

/// A trained-looking model: states 0..20 with training visits.
fn base_model() -> ModelFile {
    let e = encoder();
    let mut t = QTable::new(e.num_states());
    for s in 0..20 {
        let q: Vec<f64> = (0..Action::COUNT).map(|a| -(s as f64) - a as f64 * 0.5).collect();
        t.set_row(s, &q, &[10; Action::COUNT]);
    }
    let meta = ModelMeta {
        seed: 7,
        scenario: "fleet-test".into(),
        episodes: 100,
        reward_fn: "v1".into(),
        params: QParams::default(),
        selfheal_version: "test".into(),
        grown_from: None,
    };
    ModelFile::new(meta, &e, e.config().clone(), &t)
}

/// A random delta of `replica` over states 0..30 (some unseen by the base).
fn random_delta(rng: &mut Xoshiro256PlusPlus, replica: &str) -> PolicyDelta {
    let mut rows = BTreeMap::new();
    for _ in 0..rng.gen_range(1..5) {
        let s: StateId = rng.gen_range(0..30);
        let row = rows.entry(s).or_insert_with(|| DeltaRow {
            id: s,
            desc: format!("s{s}"),
            visits: vec![0; Action::COUNT],
            q: vec![0.0; Action::COUNT],
        });
        let a = rng.gen_range(0..Action::COUNT);
        row.visits[a] += rng.gen_range(1..6);
        row.q[a] = rng.gen_range(-10.0..0.0);
    }
    PolicyDelta {
        format: DELTA_FORMAT.into(),
        replica: replica.into(),
        base_version: 1,
        rows: rows.into_values().collect(),
    }
}

async fn store(moto: &support::Aws) -> PolicyStore {
    let client = support::s3(&moto.url);
    client.create_bucket().bucket(BUCKET).send().await.expect("create bucket");
    at(&client, "fleet/policies").await
}

async fn at(client: &selfheal_fleet::aws_sdk_s3::Client, prefix: &str) -> PolicyStore {
    let s = PolicyStore::new(client.clone(), BUCKET, prefix);
    s.init(base_model()).await.expect("init");
    s
}

fn online(m: &ModelFile) -> BTreeMap<(StateId, usize), u32> {
    m.states
        .iter()
        .flat_map(|r| r.online.iter().flat_map(move |o| o.iter().enumerate().map(move |(a, n)| ((r.id, a), *n))))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_with_the_etag_is_unchanged_until_the_pointer_moves() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let s = store(&moto).await;
    assert!(matches!(s.init(base_model()).await, Err(PolicyStoreError::AlreadyInitialised { .. })));

    let Fetched::Changed { etag: e1, version } = s.fetch_if_changed(None).await.unwrap() else { panic!("first fetch") };
    assert_eq!((version.version, version.parent), (1, None));
    assert_eq!(version.model, base_model());
    assert_eq!(s.fetch_if_changed(Some(&e1)).await.unwrap(), Fetched::Unchanged);

    // Nothing pending: no new version, the pointer does not move.
    assert_eq!(s.merge(5).await.unwrap(), Merged::Nothing { version: 1 });
    assert_eq!(s.fetch_if_changed(Some(&e1)).await.unwrap(), Fetched::Unchanged);

    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let d = random_delta(&mut rng, "r1");
    s.push_delta(&d).await.unwrap();
    let Merged::Version { version: 2, deltas: 1, visits, attempts: 1 } = s.merge(5).await.unwrap() else {
        panic!("merge")
    };
    assert_eq!(visits, d.total_visits());
    let Fetched::Changed { etag: e2, version } = s.fetch_if_changed(Some(&e1)).await.unwrap() else {
        panic!("changed")
    };
    assert_ne!(e1, e2);
    assert_eq!((version.version, version.parent), (2, Some(1)));
    assert_eq!(version.model, merge(&base_model(), &[d]).unwrap());
    assert_eq!(s.fetch_if_changed(Some(&e2)).await.unwrap(), Fetched::Unchanged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_older_version_and_rollout_moves_forward_again() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let s = store(&moto).await;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    for _ in 0..2 {
        s.push_delta(&random_delta(&mut rng, "r1")).await.unwrap();
        s.merge(5).await.unwrap();
    }
    let Fetched::Changed { etag: e3, version: v3 } = s.fetch_if_changed(None).await.unwrap() else { panic!() };
    assert_eq!(v3.version, 3);
    let v2 = s.version(2).await.unwrap();
    assert_ne!(v2.model, v3.model);

    assert_eq!(s.rollback().await.unwrap(), (3, 2));
    let Fetched::Changed { etag: back, version } = s.fetch_if_changed(Some(&e3)).await.unwrap() else { panic!() };
    assert_eq!(version.model, v2.model, "rollback restores version 2's policy");
    assert_eq!(s.rollout(3).await.unwrap(), 2);
    let Fetched::Changed { etag: fwd, version } = s.fetch_if_changed(Some(&back)).await.unwrap() else { panic!() };
    assert_eq!(version.version, 3);
    assert_ne!(fwd, e3, "the pointer's ETag never repeats, even for the same version");
    assert!(matches!(s.rollout(99).await, Err(PolicyStoreError::NoSuchVersion(99))));
    assert_eq!(s.versions().await.unwrap(), vec![1, 2, 3]);

    // A merge after a rollback builds on the rolled-back version.
    s.rollout(2).await.unwrap();
    let d = random_delta(&mut rng, "r2");
    s.push_delta(&d).await.unwrap();
    let Merged::Version { version: 4, .. } = s.merge(5).await.unwrap() else { panic!() };
    let v4 = s.version(4).await.unwrap();
    assert_eq!(v4.parent, Some(2));
    assert_eq!(v4.model, merge(&v2.model, &[d]).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_delta_stops_the_merge_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let s = store(&moto).await;
    let client = support::s3(&moto.url);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
    let good = s.push_delta(&random_delta(&mut rng, "r1")).await.unwrap();
    let mut bad = random_delta(&mut rng, "r2");
    bad.rows[0].id = 10_000_000;
    let bad_key = s.push_delta(&bad).await.unwrap();
    let err = s.merge(5).await.unwrap_err();
    assert!(matches!(&err, PolicyStoreError::BadDelta { key, .. } if key.ends_with(&bad_key)), "{err}");
    assert!(err.to_string().contains("out of bounds"), "{err}");
    let (_, ptr) = s.current().await.unwrap();
    assert_eq!(ptr.version, 1, "nothing merged");
    for k in [good, bad_key] {
        let key = format!("fleet/policies/{k}");
        client.head_object().bucket(BUCKET).key(&key).send().await.unwrap_or_else(|e| panic!("{key} is gone: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_merges_never_lose_or_double_a_delta() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let client = support::s3(&moto.url);
    client.create_bucket().bucket(BUCKET).send().await.expect("create bucket");
    // Several rounds, each under its own prefix: races are a matter of timing,
    // and each round gives them another chance (a pointer written without
    // If-Match fails this test in most runs).
    let mut retried = 0;
    for round in 0..4u64 {
        let prefix = format!("fleet/round{round}");
        let s = Arc::new(at(&client, &prefix).await);
        retried += one_round(&client, s, &prefix, round).await;
    }
    eprintln!("merges that lost a race and retried: {retried}");
}

/// Writers and mergers at once on `s`; checks the outcome; returns how many
/// merges needed more than one try.
async fn one_round(
    client: &selfheal_fleet::aws_sdk_s3::Client,
    s: Arc<PolicyStore>,
    prefix: &str,
    round: u64,
) -> usize {
    const WRITERS: usize = 4;
    const PUSHES: usize = 12;
    const MERGERS: usize = 6;

    // Writers push deltas while mergers merge, all at once, until the writers are done.
    let writing = Arc::new(AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let s = s.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(100 * round + w as u64);
            let mut pushed = Vec::new();
            for _ in 0..PUSHES {
                let d = random_delta(&mut rng, &format!("r{w}"));
                let key = s.push_delta(&d).await.unwrap();
                pushed.push((key, d));
                tokio::task::yield_now().await;
            }
            pushed
        }));
    }
    let mut mergers = Vec::new();
    for _ in 0..MERGERS {
        let s = s.clone();
        let writing = writing.clone();
        mergers.push(tokio::spawn(async move {
            let mut made = Vec::new();
            while writing.load(Ordering::SeqCst) {
                match s.merge(50).await.unwrap() {
                    Merged::Version { version, attempts, .. } => made.push((version, attempts)),
                    Merged::Nothing { .. } => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
                }
            }
            made
        }));
    }
    let mut pushed = Vec::new();
    for w in writers {
        pushed.extend(w.await.unwrap());
    }
    writing.store(false, Ordering::SeqCst);
    let mut made = Vec::new();
    for m in mergers {
        made.extend(m.await.unwrap());
    }
    // Fold whatever is left.
    s.merge(50).await.unwrap();
    assert_eq!(s.merge(50).await.unwrap(), Merged::Nothing { version: s.current().await.unwrap().1.version });
    assert!(made.len() >= 2, "the mergers made {} versions", made.len());

    // Walk the current version's lineage: every pushed delta is folded exactly once.
    let (_, ptr) = s.current().await.unwrap();
    let head = s.version(ptr.version).await.unwrap();
    let mut folded = Vec::new();
    let mut v = head.clone();
    loop {
        folded.extend(v.folded.iter().cloned());
        match v.parent {
            Some(p) => v = s.version(p).await.unwrap(),
            None => break,
        }
    }
    let folded_set: BTreeSet<&String> = folded.iter().collect();
    assert_eq!(folded_set.len(), folded.len(), "a delta folded twice");
    let pushed_keys: BTreeSet<&String> = pushed.iter().map(|(k, _)| k).collect();
    assert_eq!(folded_set, pushed_keys, "every pushed delta is in the lineage");

    // Its visits appear exactly once in the final policy.
    let mut expected: BTreeMap<(StateId, usize), u32> = BTreeMap::new();
    for (_, d) in &pushed {
        for r in &d.rows {
            for (a, n) in r.visits.iter().enumerate().filter(|(_, n)| **n > 0) {
                *expected.entry((r.id, a)).or_default() += n;
            }
        }
    }
    assert_eq!(online(&head.model), expected);
    // And the Q values are those of one merge of every delta (the rule is order-free).
    let all: Vec<PolicyDelta> = pushed.iter().map(|(_, d)| d.clone()).collect();
    let once = merge(&base_model(), &all).unwrap();
    for (a, b) in head.model.states.iter().zip(&once.states) {
        assert_eq!(a.id, b.id);
        for (x, y) in a.q.iter().zip(&b.q) {
            assert!((x - y).abs() < 1e-9, "state {}: {x} vs {y}", a.id);
        }
    }
    // No delta is left behind.
    let left = client.list_objects_v2().bucket(BUCKET).prefix(format!("{prefix}/deltas/")).send().await.unwrap();
    assert_eq!(left.key_count(), Some(0), "{:?}", left.contents());
    made.iter().filter(|(_, attempts)| *attempts > 1).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_planned_on_a_moved_pointer_is_refused_and_its_deltas_stay_pending() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let s = store(&moto).await;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let d1 = random_delta(&mut rng, "r1");
    s.push_delta(&d1).await.unwrap();
    // Two mergers read the same pointer and plan the same fold.
    let a = s.plan_merge().await.unwrap().expect("a delta is pending");
    let b = s.plan_merge().await.unwrap().expect("a delta is pending");
    assert_eq!((a.base, &a.folded), (b.base, &b.folded));
    assert_eq!(s.commit_merge(&a).await.unwrap(), Some(2));
    // b's pointer write carries the ETag it read: refused, so d1 is not folded twice.
    assert_eq!(s.commit_merge(&b).await.unwrap(), None);
    let (_, ptr) = s.current().await.unwrap();
    assert_eq!(ptr.version, 2);
    assert_eq!(s.versions().await.unwrap(), vec![1, 2, 3], "b's version stays behind, unreferenced");
    assert_eq!(s.version(2).await.unwrap().model, merge(&base_model(), std::slice::from_ref(&d1)).unwrap());

    // A delta pushed after a plan is not in it, and survives its commit.
    assert!(s.plan_merge().await.unwrap().is_none(), "d1 is folded: nothing pending");
    let d3 = random_delta(&mut rng, "r3");
    s.push_delta(&d3).await.unwrap();
    let plan = s.plan_merge().await.unwrap().expect("d3 is pending");
    let d2 = random_delta(&mut rng, "r2");
    s.push_delta(&d2).await.unwrap();
    assert_eq!(s.commit_merge(&plan).await.unwrap(), Some(4));
    let Merged::Version { version: 5, deltas: 1, visits, .. } = s.merge(5).await.unwrap() else { panic!("d2 pending") };
    assert_eq!(visits, d2.total_visits());
    let v5 = s.version(5).await.unwrap();
    let once = merge(&base_model(), &[d1, d3, d2]).unwrap();
    assert_eq!(online(&v5.model), online(&once));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_finishes_a_crashed_init_but_never_overwrites_a_policy() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let client = support::s3(&moto.url);
    client.create_bucket().bucket(BUCKET).send().await.unwrap();
    // A first init wrote version 1 and died before the pointer.
    let first = PolicyStore::new(client.clone(), BUCKET, "crashed");
    first.init(base_model()).await.unwrap();
    client.delete_object().bucket(BUCKET).key("crashed/current").send().await.unwrap();
    assert!(matches!(first.current().await, Err(PolicyStoreError::NotInitialised { .. })));
    // The same model: init completes.
    first.init(base_model()).await.unwrap();
    assert_eq!(first.current().await.unwrap().1.version, 1);
    // Another model over a left-over version 1: refused, version 1 kept.
    client.delete_object().bucket(BUCKET).key("crashed/current").send().await.unwrap();
    let mut other = base_model();
    other.meta.seed = 99;
    assert!(matches!(first.init(other).await, Err(PolicyStoreError::AlreadyInitialised { .. })));
    assert_eq!(first.version(1).await.unwrap().model, base_model());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_push_retried_under_its_sequence_is_stored_and_merged_once() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let s = store(&moto).await;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let d = random_delta(&mut rng, "r1");
    let k1 = s.push_delta_as(&d, 0).await.unwrap();
    assert_eq!(k1, s.delta_key("r1", d.base_version, 0));
    assert!(k1.starts_with("deltas/r1/v000001-"), "{k1}");
    // The same push again (its first answer lost, say): the same key, no second object.
    let k2 = s.push_delta_as(&d, 0).await.unwrap();
    assert_eq!(k1, k2);
    let next = random_delta(&mut rng, "r1");
    let k3 = s.push_delta_as(&next, 1).await.unwrap();
    assert_ne!(k3, k1, "the next sequence number is a new key");
    let Merged::Version { deltas, visits, .. } = s.merge(5).await.unwrap() else { panic!("merge") };
    assert_eq!(deltas, 2, "the retried delta is folded once");
    assert_eq!(visits, d.total_visits() + next.total_visits());
    let Fetched::Changed { version, .. } = s.fetch_if_changed(None).await.unwrap() else { panic!("fetch") };
    assert_eq!(version.model, merge(&base_model(), &[d, next]).unwrap());
    // Another handle (a restarted replica with the same id) never reuses a key.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let restarted = PolicyStore::new(support::s3(&moto.url), BUCKET, "fleet/policies");
    assert_ne!(restarted.delta_key("r1", 1, 0), k1);
}
