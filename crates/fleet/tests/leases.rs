//! The DynamoDB lease table against a real local AWS API server (moto):
//! the conditional writes enforce the rules of `selfheal_fleet::lease`,
//! racing replicas take a lease exactly once per epoch, a deposed holder is
//! fenced, and the table's heartbeats shard the fleet.

// A test fails loudly on a broken setup (moto, sockets): `expect` is the point here.
#![allow(clippy::expect_used)]

mod common;
mod support;

use selfheal_fleet::shard::{heartbeat_key, live_replicas, my_pipelines, HEARTBEAT_PREFIX};
use selfheal_fleet::{DynamoLeases, Fence, LeaseRecord, LeaseStore};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const SEC: Duration = Duration::from_secs(1);

async fn table(moto: &support::Aws, name: &str) -> DynamoLeases {
    let leases = DynamoLeases::new(support::dynamodb(&moto.url), name);
    leases.create_table().await.expect("create the lease table");
    leases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn take_renew_release_follow_the_lease_rules() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let t = table(&moto, "leases").await;

    let a = t.try_acquire("p1", "a", 1_000, 10 * SEC).await.unwrap().expect("a new key is takeable");
    assert_eq!(a.record, LeaseRecord { key: "p1".into(), holder: "a".into(), epoch: 1, expires_at_ms: 11_000 });
    assert_eq!(t.try_acquire("p1", "b", 5_000, 10 * SEC).await.unwrap(), None, "a live lease is not takeable");
    assert_eq!(t.try_acquire("p1", "b", 11_000, 10 * SEC).await.unwrap(), None, "expires_at < now, strictly");

    let a = t.renew(&a, 6_000, 10 * SEC).await.unwrap().expect("the holder renews");
    assert_eq!((a.epoch(), a.expires_at_ms()), (1, 16_000));
    assert!(a.may_act(13_999, 2 * SEC) && !a.may_act(14_000, 2 * SEC));

    // a stops renewing; b takes over after expiry, with the next epoch.
    let b = t.try_acquire("p1", "b", 16_001, 10 * SEC).await.unwrap().expect("an expired lease is takeable");
    assert_eq!((b.record.holder.as_str(), b.epoch(), b.expires_at_ms()), ("b", 2, 26_001));
    assert_eq!(t.renew(&a, 16_002, 10 * SEC).await.unwrap(), None, "the deposed holder cannot renew");
    assert!(!t.release(&a).await.unwrap(), "nor release");

    // An actuator that saw b's token refuses a's.
    let mut fence = Fence::new();
    fence.admit(&b.token()).unwrap();
    let refused = fence.admit(&a.token()).unwrap_err();
    assert_eq!((refused.got, refused.newest), (1, 2));
    assert_eq!(b.token().idempotency_key("p1-000007"), "p1-000007@2");

    // A release keeps the epoch and frees the key at once.
    assert!(t.release(&b).await.unwrap());
    let rec = t.list("").await.unwrap();
    assert_eq!(rec, vec![LeaseRecord { key: "p1".into(), holder: "b".into(), epoch: 2, expires_at_ms: 0 }]);
    let c = t.try_acquire("p1", "c", 17_000, SEC).await.unwrap().expect("a released lease is takeable");
    assert_eq!(c.epoch(), 3);

    // Every answer of the table agrees with the pure rules.
    let stored = t.list("p1").await.unwrap().pop();
    assert!(LeaseRecord::renewable(stored.as_ref(), "c", 3));
    assert!(!LeaseRecord::takeable(stored.as_ref(), 17_500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_replicas_take_each_epoch_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let t = Arc::new(table(&moto, "leases").await);
    for round in 1..=5u64 {
        // Every round starts after the previous lease (1 s) lapsed.
        let now = round as i64 * 100_000;
        let mut tasks = Vec::new();
        for r in 0..8 {
            let t = t.clone();
            tasks.push(tokio::spawn(async move { t.try_acquire("p1", &format!("r{r}"), now, SEC).await.unwrap() }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            if let Some(l) = task.await.unwrap() {
                winners.push(l);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        assert_eq!(winners[0].epoch(), round, "one takeover, one epoch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_in_the_table_shard_the_fleet_and_a_new_replica_takes_part_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let moto = support::start(dir.path());
    let t = table(&moto, "leases").await;
    let pipelines: Vec<String> = (0..60).map(|i| format!("pipeline-{i:02}")).collect();
    let ttl = 10 * SEC;
    let now = 1_000_000;

    for r in ["r1", "r2"] {
        t.try_acquire(&heartbeat_key(r), r, now, ttl).await.unwrap().expect("heartbeat");
    }
    let hb = t.list(HEARTBEAT_PREFIX).await.unwrap();
    assert_eq!(live_replicas(&hb, now), vec!["r1".to_string(), "r2".to_string()]);
    // Each replica leases its shard: no conflict, full cover.
    let mut held = BTreeSet::new();
    for r in ["r1", "r2"] {
        for p in my_pipelines(&pipelines, &hb, r, now) {
            t.try_acquire(p, r, now, ttl).await.unwrap().unwrap_or_else(|| panic!("{r} could not lease its own {p}"));
            assert!(held.insert(p.to_string()));
        }
    }
    assert_eq!(held.len(), 60);

    // r3 joins: its share is a part of the fleet, taken from r1 and r2 once
    // they let go (they release what left their shard on their next tick).
    t.try_acquire(&heartbeat_key("r3"), "r3", now + 1_000, ttl).await.unwrap().expect("r3 heartbeat");
    let hb = t.list(HEARTBEAT_PREFIX).await.unwrap();
    let r3 = my_pipelines(&pipelines, &hb, "r3", now + 1_000);
    assert!((10..=35).contains(&r3.len()), "r3's share: {}", r3.len());
    for p in &r3 {
        assert_eq!(t.try_acquire(p, "r3", now + 1_000, ttl).await.unwrap(), None, "{p} is still held");
    }
    let table_now = t.list("pipeline-").await.unwrap();
    for r in ["r1", "r2"] {
        let mine = my_pipelines(&pipelines, &hb, r, now + 1_000);
        for rec in table_now.iter().filter(|x| x.holder == r && !mine.contains(&x.key.as_str())) {
            let lease = selfheal_fleet::Lease { record: rec.clone() };
            assert!(t.release(&lease).await.unwrap());
        }
    }
    for p in &r3 {
        let l = t.try_acquire(p, "r3", now + 2_000, ttl).await.unwrap().unwrap_or_else(|| panic!("r3 takes {p}"));
        assert_eq!(l.epoch(), 2);
    }

    // r3 dies (no more heartbeats): once its heartbeat and leases lapse, r1
    // and r2 own and take everything again.
    let later = now + 13_000;
    for r in ["r1", "r2"] {
        t.renew(&selfheal_fleet::Lease { record: hb.iter().find(|x| x.holder == r).unwrap().clone() }, later, ttl)
            .await
            .unwrap()
            .expect("renew heartbeat");
    }
    let hb = t.list(HEARTBEAT_PREFIX).await.unwrap();
    assert_eq!(live_replicas(&hb, later), vec!["r1".to_string(), "r2".to_string()]);
    let mut taken = 0;
    for r in ["r1", "r2"] {
        for p in my_pipelines(&pipelines, &hb, r, later).into_iter().filter(|p| r3.contains(p)) {
            let l =
                t.try_acquire(p, r, later, ttl).await.unwrap().unwrap_or_else(|| panic!("{r} takes {p} from dead r3"));
            assert_eq!(l.epoch(), 3);
            taken += 1;
        }
    }
    assert_eq!(taken, r3.len());
}
