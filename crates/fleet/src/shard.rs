//! Sharding: which pipelines this replica should try to lease.
//!
//! Why rendezvous (highest-random-weight) hashing: every replica computes
//! the same owner for a pipeline from the same list of live replicas,
//! without talking to the others; adding a replica moves only the pipelines
//! it now wins (about `1/(n+1)` of the fleet) and removing one moves only
//! its own. The list of live replicas comes from the lease table itself:
//! each replica heartbeats a lease `replica/{id}` ([`HEARTBEAT_PREFIX`]).
//! The shard is advice, the lease is the law: a replica still takes a
//! pipeline's lease before acting, so two replicas that briefly disagree on
//! the live set never both act.

use crate::lease::LeaseRecord;

/// Key prefix of replica heartbeats in the lease table.
pub const HEARTBEAT_PREFIX: &str = "replica/";

/// The heartbeat lease key of replica `id`.
pub fn heartbeat_key(id: &str) -> String {
    format!("{HEARTBEAT_PREFIX}{id}")
}

/// The replicas whose heartbeat is live at `now_ms`, sorted, deduplicated.
pub fn live_replicas(table: &[LeaseRecord], now_ms: i64) -> Vec<String> {
    let mut ids: Vec<String> = table
        .iter()
        .filter(|r| r.live(now_ms))
        .filter_map(|r| r.key.strip_prefix(HEARTBEAT_PREFIX).filter(|id| *id == r.holder).map(str::to_string))
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The replica that owns `pipeline` among `replicas` (`None` if there is none).
pub fn owner<'a>(pipeline: &str, replicas: &'a [String]) -> Option<&'a str> {
    replicas.iter().max_by_key(|r| (weight(pipeline, r), r.as_str())).map(String::as_str)
}

/// The pipelines `me` should lease, in input order: those it owns among the
/// live replicas of `table` plus itself (a replica counts itself live even
/// before its first heartbeat lands).
pub fn my_pipelines<'p>(pipelines: &'p [String], table: &[LeaseRecord], me: &str, now_ms: i64) -> Vec<&'p str> {
    let mut live = live_replicas(table, now_ms);
    if let Err(i) = live.binary_search_by(|r| r.as_str().cmp(me)) {
        live.insert(i, me.to_string());
    }
    pipelines.iter().filter(|p| owner(p, &live) == Some(me)).map(String::as_str).collect()
}

/// The rendezvous weight of (pipeline, replica): FNV-1a 64 over both, with a
/// separator, through the SplitMix64 finaliser. Stable across builds and
/// platforms (unlike `std`'s `DefaultHasher`), which the replicas rely on.
fn weight(pipeline: &str, replica: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in pipeline.bytes().chain([0xff]).chain(replica.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn hb(id: &str, exp: i64) -> LeaseRecord {
        LeaseRecord { key: heartbeat_key(id), holder: id.into(), epoch: 1, expires_at_ms: exp }
    }

    fn pipelines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("pipeline-{i:04}")).collect()
    }

    #[test]
    fn live_replicas_are_the_unexpired_heartbeats() {
        let mut table = vec![hb("b", 100), hb("a", 100), hb("c", 10)];
        table.push(LeaseRecord { key: "pipeline-1".into(), holder: "a".into(), epoch: 1, expires_at_ms: 100 });
        // A heartbeat key held by someone else is not that replica's heartbeat.
        table.push(LeaseRecord { key: heartbeat_key("d"), holder: "a".into(), epoch: 1, expires_at_ms: 100 });
        assert_eq!(live_replicas(&table, 50), vec!["a".to_string(), "b".to_string()]);
    }

    #[test]
    fn every_pipeline_has_exactly_one_owner_and_the_split_is_even() {
        let ps = pipelines(1_000);
        let table = vec![hb("r1", 100), hb("r2", 100), hb("r3", 100)];
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for me in ["r1", "r2", "r3"] {
            let mine = my_pipelines(&ps, &table, me, 0);
            assert!((250..=420).contains(&mine.len()), "{me} owns {} of 1000", mine.len());
            for p in mine {
                *seen.entry(p).or_default() += 1;
            }
        }
        assert_eq!(seen.len(), 1_000);
        assert!(seen.values().all(|n| *n == 1));
    }

    #[test]
    fn a_new_replica_takes_over_part_of_the_fleet_and_only_from_others() {
        let ps = pipelines(600);
        let two = vec![hb("r1", 100), hb("r2", 100)];
        let three = vec![hb("r1", 100), hb("r2", 100), hb("r3", 100)];
        let new = my_pipelines(&ps, &three, "r3", 0);
        assert!((120..=280).contains(&new.len()), "r3 took {} of 600", new.len());
        for me in ["r1", "r2"] {
            let before = my_pipelines(&ps, &two, me, 0);
            let after = my_pipelines(&ps, &three, me, 0);
            // Nothing moves between the old replicas: each only loses pipelines to r3.
            assert!(after.iter().all(|p| before.contains(p)), "{me} gained a pipeline from the other old replica");
            assert!(before.iter().filter(|p| !after.contains(p)).all(|p| new.contains(p)));
        }
        // Before its first heartbeat, r3 already computes its share.
        assert_eq!(my_pipelines(&ps, &two, "r3", 0), new);
    }

    #[test]
    fn a_dead_replica_s_pipelines_move_to_the_living() {
        let ps = pipelines(300);
        let table = vec![hb("r1", 100), hb("r2", 100), hb("r3", 10)];
        let r1 = my_pipelines(&ps, &table, "r1", 50);
        let r2 = my_pipelines(&ps, &table, "r2", 50);
        assert_eq!(r1.len() + r2.len(), 300, "r3's heartbeat expired: r1 and r2 split everything");
        assert!(my_pipelines(&ps, &table, "r1", 5).len() < r1.len(), "while r3 lives it owns a part");
    }

    #[test]
    fn the_weight_is_stable() {
        // Pinned (computed independently): replicas on different builds must agree.
        assert_eq!(weight("p1", "r1"), 15_275_960_563_582_875_052);
        assert_eq!(weight("pipeline-0001", "replica-a"), 12_693_307_232_828_896_468);
        assert_ne!(weight("p1", "r1"), weight("p1r", "1"), "the separator keeps the pair apart");
        assert_eq!(owner("p", &[]), None);
    }
}
