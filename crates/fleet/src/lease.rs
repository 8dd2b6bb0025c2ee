//! Leases: who may act for a pipeline, and with which epoch.
//!
//! Why a lease and not a lock: a replica that dies (kill -9, node loss) must
//! lose its right to act by itself, after a bounded time, without anyone
//! noticing the death. A lease is a record `(key, holder, epoch, expires_at)`
//! in a store every replica can reach with a conditional write (DynamoDB,
//! a Kubernetes `coordination.k8s.io/v1` Lease). The rules below are the
//! same for every store; [`LeaseRecord::takeable`] and
//! [`LeaseRecord::renewable`] state them as pure functions that the
//! Kubernetes backend applies client side and that the DynamoDB backend's
//! `ConditionExpression` mirrors server side:
//!
//! - **take**: the key has no record, or its record expired
//!   (`expires_at < now`). The epoch becomes the old epoch + 1 (1 for a new
//!   key), so every takeover is visible to the actuators (fencing, see
//!   [`crate::fence`]).
//! - **renew**: the record's holder is me and its epoch is the one I took;
//!   the epoch is kept and `expires_at` moves to `now + ttl`.
//! - **release**: same condition as renew; `expires_at` becomes 0 and the
//!   record stays (deleting it would reset the epoch to 0 and let a stale
//!   replica's token pass the fence again).
//! - **act**: a holder acts only while `now + margin < expires_at`
//!   ([`Lease::may_act`]), the margin covering clock skew between replicas
//!   and the duration of one action, so it stops before anyone else can start.
//!
//! Times are Unix epoch milliseconds (`i64`), passed in by the caller: the
//! store never reads a clock, which keeps tests exact.

use std::future::Future;
use std::time::Duration;

/// A lease record as stored: the state every backend reads and writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// What is leased: a pipeline id, or `replica/{id}` for a heartbeat.
    pub key: String,
    /// The replica that holds (or last held) it.
    pub holder: String,
    /// Takeovers so far: 1 after the first take, +1 on every take.
    pub epoch: u64,
    /// When the lease lapses, Unix epoch ms; 0 after a release.
    pub expires_at_ms: i64,
}

impl LeaseRecord {
    /// May anyone take `current` at `now_ms`? Yes when there is no record or
    /// it expired strictly before now (DynamoDB: `attribute_not_exists(pk) OR expires_at < :now`).
    pub fn takeable(current: Option<&LeaseRecord>, now_ms: i64) -> bool {
        match current {
            None => true,
            Some(r) => r.expires_at_ms < now_ms,
        }
    }

    /// May `holder`, who took epoch `epoch`, renew or release `current`?
    /// Yes when the record still names it and that epoch (DynamoDB:
    /// `holder = :me AND epoch = :epoch`). An expired lease nobody took
    /// is still renewable: the epoch proves no one else acted meanwhile.
    pub fn renewable(current: Option<&LeaseRecord>, holder: &str, epoch: u64) -> bool {
        current.is_some_and(|r| r.holder == holder && r.epoch == epoch)
    }

    /// The record after `holder` takes `key` at `now_ms` for `ttl`: epoch bumped.
    pub fn taken(current: Option<&LeaseRecord>, key: &str, holder: &str, now_ms: i64, ttl: Duration) -> LeaseRecord {
        LeaseRecord {
            key: key.to_string(),
            holder: holder.to_string(),
            epoch: current.map_or(0, |r| r.epoch) + 1,
            expires_at_ms: now_ms.saturating_add(ttl_ms(ttl)),
        }
    }

    /// The record after a renewal at `now_ms` for `ttl`: same holder and epoch.
    pub fn renewed(&self, now_ms: i64, ttl: Duration) -> LeaseRecord {
        LeaseRecord { expires_at_ms: now_ms.saturating_add(ttl_ms(ttl)), ..self.clone() }
    }

    /// The record after a release: same holder and epoch, expired.
    pub fn released(&self) -> LeaseRecord {
        LeaseRecord { expires_at_ms: 0, ..self.clone() }
    }

    /// Is it live (held) at `now_ms`?
    pub fn live(&self, now_ms: i64) -> bool {
        self.expires_at_ms >= now_ms
    }
}

/// A TTL in ms, saturating.
pub(crate) fn ttl_ms(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

/// A lease this replica holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The record as written by the last take or renewal.
    pub record: LeaseRecord,
}

impl Lease {
    /// The key.
    pub fn key(&self) -> &str {
        &self.record.key
    }

    /// The epoch: the fencing token's number.
    pub fn epoch(&self) -> u64 {
        self.record.epoch
    }

    /// Expiry, Unix epoch ms.
    pub fn expires_at_ms(&self) -> i64 {
        self.record.expires_at_ms
    }

    /// May the holder still start an action at `now_ms`? Only while the
    /// remaining time exceeds `margin` (clock skew between replicas plus
    /// the longest action), so a holder that cannot renew stops acting
    /// before the lease lapses and another replica may take it.
    pub fn may_act(&self, now_ms: i64, margin: Duration) -> bool {
        now_ms.saturating_add(ttl_ms(margin)) < self.record.expires_at_ms
    }

    /// The token that travels with every action taken under this lease.
    pub fn token(&self) -> crate::FencingToken {
        crate::FencingToken { key: self.record.key.clone(), epoch: self.record.epoch }
    }
}

impl From<LeaseRecord> for Lease {
    /// The lease a won take or renewal holds: the record the store wrote.
    fn from(record: LeaseRecord) -> Lease {
        Lease { record }
    }
}

/// The answer of a take or a renewal: `Ok(Some(lease))` when this replica
/// won the conditional write, `Ok(None)` when someone else holds the key
/// (or won the race), `Err` when the store failed.
pub type Granted = Result<Option<Lease>, LeaseError>;

/// Why a lease store call failed (not "someone else holds it": that is `Ok(None)`).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The store could not be reached or refused the call.
    #[error("lease store {store}: {op} {key:?} failed: {message}")]
    Store {
        /// `dynamodb:TABLE` or `kubernetes:NAMESPACE`.
        store: String,
        /// The operation.
        op: &'static str,
        /// The key.
        key: String,
        /// The service's message.
        message: String,
    },
    /// A stored record is not one this crate wrote.
    #[error("lease store {store}: record {key:?} is malformed: {message}")]
    Malformed {
        /// The store.
        store: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// A store of leases. Every call is one conditional write or read; none
/// retries on contention (losing a race is an answer, `Ok(None)` / `Ok(false)`).
///
/// The methods return `Send` futures so a tokio daemon can spawn them.
pub trait LeaseStore: Send + Sync {
    /// Take `key` for `holder` until `now_ms + ttl` if [`LeaseRecord::takeable`];
    /// `Ok(None)` when someone holds it (or won the race to take it).
    fn try_acquire(&self, key: &str, holder: &str, now_ms: i64, ttl: Duration) -> impl Future<Output = Granted> + Send;

    /// Extend `lease` to `now_ms + ttl` if still [`LeaseRecord::renewable`];
    /// `Ok(None)` when it was taken over (stop acting at once).
    fn renew(&self, lease: &Lease, now_ms: i64, ttl: Duration) -> impl Future<Output = Granted> + Send;

    /// Give `lease` up (expire it, keep its epoch); `Ok(false)` when it was
    /// no longer ours.
    fn release(&self, lease: &Lease) -> impl Future<Output = Result<bool, LeaseError>> + Send;

    /// Every record whose key starts with `prefix` (live or not), ordered by key:
    /// the lease table that [`crate::shard`] reads.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<LeaseRecord>, LeaseError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, epoch: u64, exp: i64) -> LeaseRecord {
        LeaseRecord { key: "p1".into(), holder: holder.into(), epoch, expires_at_ms: exp }
    }

    #[test]
    fn a_new_key_is_takeable_and_starts_at_epoch_one() {
        assert!(LeaseRecord::takeable(None, 1_000));
        let r = LeaseRecord::taken(None, "p1", "a", 1_000, Duration::from_secs(10));
        assert_eq!(r, rec("a", 1, 11_000));
    }

    #[test]
    fn a_live_lease_is_not_takeable_until_it_expires() {
        let r = rec("a", 3, 5_000);
        assert!(!LeaseRecord::takeable(Some(&r), 4_999));
        assert!(!LeaseRecord::takeable(Some(&r), 5_000), "expires_at < now, strictly");
        assert!(LeaseRecord::takeable(Some(&r), 5_001));
        let t = LeaseRecord::taken(Some(&r), "p1", "b", 5_001, Duration::from_millis(500));
        assert_eq!(t, rec("b", 4, 5_501), "every takeover bumps the epoch");
        // Even the same holder taking again bumps it: its old process may still be acting.
        assert_eq!(LeaseRecord::taken(Some(&r), "p1", "a", 6_000, Duration::ZERO).epoch, 4);
    }

    #[test]
    fn only_the_holder_of_the_same_epoch_renews() {
        let r = rec("a", 3, 5_000);
        assert!(LeaseRecord::renewable(Some(&r), "a", 3));
        assert!(!LeaseRecord::renewable(Some(&r), "a", 2), "an older epoch of the same holder");
        assert!(!LeaseRecord::renewable(Some(&r), "b", 3));
        assert!(!LeaseRecord::renewable(None, "a", 3));
        let n = r.renewed(9_000, Duration::from_secs(1));
        assert_eq!(n, rec("a", 3, 10_000));
    }

    #[test]
    fn a_released_lease_keeps_its_epoch_and_is_takeable_at_once() {
        let r = rec("a", 7, 50_000).released();
        assert_eq!(r.epoch, 7);
        assert!(LeaseRecord::takeable(Some(&r), 1));
        assert_eq!(LeaseRecord::taken(Some(&r), "p1", "b", 1, Duration::from_secs(1)).epoch, 8);
    }

    #[test]
    fn may_act_stops_a_margin_before_expiry() {
        let l = Lease { record: rec("a", 1, 10_000) };
        let m = Duration::from_secs(2);
        assert!(l.may_act(7_999, m));
        assert!(!l.may_act(8_000, m), "remaining 2 s is not more than the 2 s margin");
        assert!(!l.may_act(12_000, m));
        assert!(l.may_act(9_999, Duration::ZERO));
        assert!(!l.may_act(10_000, Duration::ZERO));
        // A margin longer than the lease: never act.
        assert!(!Lease { record: rec("a", 1, 1_000) }.may_act(0, Duration::from_secs(5)));
    }
}
