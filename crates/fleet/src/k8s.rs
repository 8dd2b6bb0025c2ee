//! The lease table as Kubernetes `coordination.k8s.io/v1` Lease objects.
//!
//! Why: on Kubernetes every team already has this API (it is what
//! controller-manager and client-go leader election use), with RBAC and no
//! new service to run. A Lease has no conditional-update expression, so the
//! rules of [`crate::lease`] run client side ([`LeaseRecord::takeable`],
//! [`LeaseRecord::renewable`]) and the write is made safe by optimistic
//! concurrency: a `replace` carries the `metadata.resourceVersion` that was
//! read, and the API server answers 409 Conflict when anyone wrote the
//! object since (a `create` answers 409 AlreadyExists when another replica
//! created it first). Either 409 is a lost race: `Ok(None)`.
//! (<https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/lease-v1/>,
//! <https://kubernetes.io/docs/reference/using-api/api-concepts/#resource-versions>.)
//!
//! Mapping: `spec.holderIdentity` = holder, `spec.leaseTransitions` = epoch,
//! `spec.renewTime + spec.leaseDurationSeconds` = expiry (so a TTL is
//! rounded up to whole seconds), the lease key in the annotation
//! [`KEY_ANNOTATION`] (object names cannot hold every key: see
//! [`object_name`]), and the label `app.kubernetes.io/managed-by=selfheal`
//! for listing. A release sets `renewTime` to the Unix epoch and the
//! duration to 0, and keeps the holder and transitions.
//!
//! RBAC: `get`, `list`, `create`, `update` on `leases` in the namespace.
//!
//! Not tested against an API server here (none runs on the test machine):
//! the mapping below is unit-tested, the decisions are those of
//! [`crate::lease`], tested there and through the DynamoDB backend.

use crate::lease::{Granted, Lease, LeaseError, LeaseRecord, LeaseStore};
use k8s_openapi::api::coordination::v1::{Lease as KubeLease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::time::Duration;

/// The annotation that holds the lease key.
pub const KEY_ANNOTATION: &str = "selfheal.dev/lease-key";
/// The label selecting this crate's leases.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "selfheal");

/// The Lease object name of `key`: `selfheal-{key, lowercased, every byte
/// outside [a-z0-9] as '-', at most 40}-{8 hex digits of a hash of the key}`,
/// a valid DNS-1123 label (≤ 63) that keeps keys like `replica/a` and
/// `replica-a` apart.
pub fn object_name(key: &str) -> String {
    let mut clean: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    clean = clean.trim_matches('-').to_string();
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if clean.is_empty() {
        format!("selfheal-{h:08x}")
    } else {
        format!("selfheal-{clean}-{h:08x}")
    }
}

/// The record a Lease's spec states, for `key`. A missing holder reads as
/// `""`, missing transitions as epoch 0, a missing renew time as expired.
///
/// # Errors
/// A negative duration or transition count.
pub fn record_of(key: &str, spec: &LeaseSpec) -> Result<LeaseRecord, String> {
    let epoch =
        u64::try_from(spec.lease_transitions.unwrap_or(0)).map_err(|_| "negative leaseTransitions".to_string())?;
    let secs = i64::from(
        u32::try_from(spec.lease_duration_seconds.unwrap_or(0))
            .map_err(|_| "negative leaseDurationSeconds".to_string())?,
    );
    let expires_at_ms = match &spec.renew_time {
        Some(MicroTime(t)) if t.as_millisecond() > 0 => t.as_millisecond().saturating_add(secs * 1_000),
        _ => 0,
    };
    Ok(LeaseRecord {
        key: key.to_string(),
        holder: spec.holder_identity.clone().unwrap_or_default(),
        epoch,
        expires_at_ms,
    })
}

/// The spec that states `record`, renewed at `renew_ms` (the duration is
/// the remaining time rounded up to whole seconds; an expiry of 0 is a
/// release). `acquired_ms` is the take time to keep in `acquireTime`.
pub fn spec_of(record: &LeaseRecord, renew_ms: i64, acquired_ms: i64) -> LeaseSpec {
    let micro = |ms: i64| Timestamp::from_millisecond(ms).map(MicroTime).ok();
    let (renew, secs) = if record.expires_at_ms <= 0 {
        (micro(0), 0)
    } else {
        let remaining = (record.expires_at_ms - renew_ms).max(0);
        (micro(renew_ms), i32::try_from((remaining + 999) / 1_000).unwrap_or(i32::MAX))
    };
    LeaseSpec {
        holder_identity: Some(record.holder.clone()),
        lease_duration_seconds: Some(secs),
        lease_transitions: Some(i32::try_from(record.epoch).unwrap_or(i32::MAX)),
        renew_time: renew,
        acquire_time: micro(acquired_ms),
        ..LeaseSpec::default()
    }
}

/// Leases as `coordination.k8s.io/v1` Lease objects in one namespace.
#[derive(Clone)]
pub struct KubeLeases {
    api: Api<KubeLease>,
    namespace: String,
}

impl KubeLeases {
    /// Leases in `namespace`, through `client` (e.g. `kube::Client::try_default()`).
    pub fn new(client: kube::Client, namespace: &str) -> KubeLeases {
        KubeLeases { api: Api::namespaced(client, namespace), namespace: namespace.to_string() }
    }

    fn err(&self, op: &'static str, key: &str, e: &dyn std::fmt::Display) -> LeaseError {
        LeaseError::Store {
            store: format!("kubernetes:{}", self.namespace),
            op,
            key: key.to_string(),
            message: e.to_string(),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<(KubeLease, LeaseRecord)>, LeaseError> {
        let Some(obj) = self.api.get_opt(&object_name(key)).await.map_err(|e| self.err("get", key, &e))? else {
            return Ok(None);
        };
        let rec = record_of(key, obj.spec.as_ref().unwrap_or(&LeaseSpec::default())).map_err(|message| {
            LeaseError::Malformed { store: format!("kubernetes:{}", self.namespace), key: key.to_string(), message }
        })?;
        Ok(Some((obj, rec)))
    }

    /// Write `record` over `existing` (replace with its resourceVersion) or
    /// create it; `Ok(None)` on 409.
    async fn write(
        &self,
        op: &'static str,
        existing: Option<KubeLease>,
        record: &LeaseRecord,
        renew_ms: i64,
        acquired_ms: i64,
    ) -> Result<Option<LeaseRecord>, LeaseError> {
        let name = object_name(&record.key);
        let spec = spec_of(record, renew_ms, acquired_ms);
        #[allow(clippy::expect_used)] // `spec` was built above from `record`; reading it back cannot fail.
        let stored = record_of(&record.key, &spec).expect("a spec this module wrote reads back");
        let metadata = ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(self.namespace.clone()),
            annotations: Some(BTreeMap::from([(KEY_ANNOTATION.to_string(), record.key.clone())])),
            labels: Some(BTreeMap::from([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())])),
            resource_version: existing.as_ref().and_then(|o| o.metadata.resource_version.clone()),
            ..ObjectMeta::default()
        };
        let obj = KubeLease { metadata, spec: Some(spec) };
        let pp = PostParams::default();
        let res = match existing {
            Some(_) => self.api.replace(&name, &pp, &obj).await,
            None => self.api.create(&pp, &obj).await,
        };
        match res {
            Ok(_) => Ok(Some(stored)),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(self.err(op, &record.key, &e)),
        }
    }
}

impl LeaseStore for KubeLeases {
    async fn try_acquire(&self, key: &str, holder: &str, now_ms: i64, ttl: Duration) -> Granted {
        let current = self.read(key).await?;
        let rec = current.as_ref().map(|(_, r)| r);
        if !LeaseRecord::takeable(rec, now_ms) {
            return Ok(None);
        }
        let next = LeaseRecord::taken(rec, key, holder, now_ms, ttl);
        let got = self.write("take", current.map(|(o, _)| o), &next, now_ms, now_ms).await?;
        Ok(got.map(Lease::from))
    }

    async fn renew(&self, lease: &Lease, now_ms: i64, ttl: Duration) -> Granted {
        let Some((obj, rec)) = self.read(lease.key()).await? else { return Ok(None) };
        if !LeaseRecord::renewable(Some(&rec), &lease.record.holder, lease.epoch()) {
            return Ok(None);
        }
        let acquired = obj.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).map_or(now_ms, |t| t.0.as_millisecond());
        let got = self.write("renew", Some(obj), &rec.renewed(now_ms, ttl), now_ms, acquired).await?;
        Ok(got.map(Lease::from))
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let Some((obj, rec)) = self.read(lease.key()).await? else { return Ok(false) };
        if !LeaseRecord::renewable(Some(&rec), &lease.record.holder, lease.epoch()) {
            return Ok(false);
        }
        let acquired = obj.spec.as_ref().and_then(|s| s.acquire_time.as_ref()).map_or(0, |t| t.0.as_millisecond());
        Ok(self.write("release", Some(obj), &rec.released(), 0, acquired).await?.is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, LeaseError> {
        let lp = ListParams::default().labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1));
        let objs = self.api.list(&lp).await.map_err(|e| self.err("list", prefix, &e))?;
        let mut out = Vec::new();
        for o in objs {
            let Some(key) = o.metadata.annotations.as_ref().and_then(|a| a.get(KEY_ANNOTATION)) else { continue };
            if key.starts_with(prefix) {
                // One bad object must not hide the whole table from every
                // replica: it is skipped (and named), the others listed.
                match record_of(key, o.spec.as_ref().unwrap_or(&LeaseSpec::default())) {
                    Ok(rec) => out.push(rec),
                    Err(message) => tracing::warn!(namespace = %self.namespace, key = %key, reason = %message,
                        "malformed Lease object skipped in the list"),
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn object_names_are_dns_labels_and_keep_keys_apart() {
        let keys = ["p1", "replica/a", "replica-a", "Replica/A", "orders-etl.prod/eu-west-1", "///", &"x".repeat(300)];
        let names: Vec<String> = keys.iter().map(|k| object_name(k)).collect();
        for (k, n) in keys.iter().zip(&names) {
            assert!(dns_label(n), "{k:?} -> {n:?}");
        }
        let distinct: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(distinct.len(), names.len(), "{names:?}");
        assert_eq!(object_name("replica/a"), object_name("replica/a"));
        assert!(object_name("replica/a").starts_with("selfheal-replica-a-"));
    }

    #[test]
    fn a_spec_states_the_record_with_the_ttl_rounded_up_to_seconds() {
        let taken = LeaseRecord::taken(None, "p1", "a", 1_700_000_000_000, Duration::from_millis(2_500));
        let spec = spec_of(&taken, 1_700_000_000_000, 1_700_000_000_000);
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!((spec.lease_transitions, spec.lease_duration_seconds), (Some(1), Some(3)));
        let back = record_of("p1", &spec).unwrap();
        assert_eq!(back, LeaseRecord { expires_at_ms: 1_700_000_003_000, ..taken.clone() });
        // The shared rules decide on what was read back.
        assert!(!LeaseRecord::takeable(Some(&back), 1_700_000_003_000));
        assert!(LeaseRecord::takeable(Some(&back), 1_700_000_003_001));
        assert!(LeaseRecord::renewable(Some(&back), "a", 1));
        // A takeover bumps leaseTransitions.
        let over = LeaseRecord::taken(Some(&back), "p1", "b", 1_700_000_004_000, Duration::from_secs(10));
        assert_eq!(spec_of(&over, 1_700_000_004_000, 1_700_000_004_000).lease_transitions, Some(2));
    }

    #[test]
    fn a_released_or_empty_spec_reads_as_takeable_and_bad_numbers_are_refused() {
        let r = LeaseRecord { key: "p1".into(), holder: "a".into(), epoch: 4, expires_at_ms: 9_000_000 }.released();
        let spec = spec_of(&r, 0, 1_000);
        let back = record_of("p1", &spec).unwrap();
        assert_eq!((back.holder.as_str(), back.epoch, back.expires_at_ms), ("a", 4, 0));
        assert!(LeaseRecord::takeable(Some(&back), 1));
        let empty = record_of("p1", &LeaseSpec::default()).unwrap();
        assert_eq!((empty.epoch, empty.expires_at_ms), (0, 0));
        assert_eq!(LeaseRecord::taken(Some(&empty), "p1", "b", 5, Duration::from_secs(1)).epoch, 1);
        let bad = LeaseSpec { lease_transitions: Some(-1), ..LeaseSpec::default() };
        assert!(record_of("p1", &bad).is_err());
        let bad = LeaseSpec { lease_duration_seconds: Some(-5), ..LeaseSpec::default() };
        assert!(record_of("p1", &bad).is_err());
    }
}
