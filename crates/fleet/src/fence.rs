//! Fencing: an actuator refuses an action from a replica whose lease was
//! taken over.
//!
//! Why: a replica can lose its lease while one of its actions is on the way
//! (a long GC pause, a partition, a slow API call). The lease's epoch grows on
//! every takeover, so an action stamped with an epoch older than one the
//! actuator has already seen for the same key comes from a deposed holder and
//! is refused. The token travels inside the action's idempotency key, so
//! actuators that already pass an idempotency key through (the Glue
//! actuator's client token, the command actuator's environment) carry it
//! without a new field.
//!
//! Idempotency key format: `{decision_id}@{epoch}`, e.g. `p1-000042@7`. The
//! key (pipeline) is not repeated: the decision id already names it, and the
//! [`Fence`] is keyed by the lease key the caller passes.

use std::collections::HashMap;

/// The lease epoch behind an action: `key` (pipeline) and `epoch`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FencingToken {
    /// The lease key (pipeline id).
    pub key: String,
    /// The lease epoch the acting replica holds.
    pub epoch: u64,
}

impl FencingToken {
    /// The idempotency key of decision `decision_id` under this token:
    /// `{decision_id}@{epoch}`.
    pub fn idempotency_key(&self, decision_id: &str) -> String {
        format!("{decision_id}@{}", self.epoch)
    }

    /// Split an idempotency key into `(decision_id, epoch)`; `None` when it
    /// has no `@EPOCH` suffix (an action from a replica without leases).
    pub fn parse_idempotency_key(idempotency_key: &str) -> Option<(&str, u64)> {
        let (decision, epoch) = idempotency_key.rsplit_once('@')?;
        if decision.is_empty() || epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((decision, epoch.parse().ok()?))
    }
}

/// An action refused by the fence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fenced: {key:?} acts under epoch {got}, but epoch {newest} was already seen (the lease was taken over)")]
pub struct Fenced {
    /// The lease key.
    pub key: String,
    /// The action's epoch.
    pub got: u64,
    /// The newest epoch seen for the key.
    pub newest: u64,
}

/// The newest epoch an actuator has seen per key. Pure and in memory: an
/// actuator keeps one for its lifetime (the provider's own idempotency
/// window covers a restart).
#[derive(Clone, Debug, Default)]
pub struct Fence {
    newest: HashMap<String, u64>,
}

impl Fence {
    /// An empty fence.
    pub fn new() -> Fence {
        Fence::default()
    }

    /// Admit `token` if its epoch is at least the newest seen for its key,
    /// and remember it; refuse an older one with [`Fenced`].
    pub fn admit(&mut self, token: &FencingToken) -> Result<(), Fenced> {
        let newest = self.newest.entry(token.key.clone()).or_insert(0);
        if token.epoch < *newest {
            return Err(Fenced { key: token.key.clone(), got: token.epoch, newest: *newest });
        }
        *newest = token.epoch;
        Ok(())
    }

    /// The newest epoch seen for `key`.
    pub fn newest(&self, key: &str) -> Option<u64> {
        self.newest.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(key: &str, epoch: u64) -> FencingToken {
        FencingToken { key: key.into(), epoch }
    }

    #[test]
    fn idempotency_key_round_trips() {
        let k = t("p1", 7).idempotency_key("p1-000042");
        assert_eq!(k, "p1-000042@7");
        assert_eq!(FencingToken::parse_idempotency_key(&k), Some(("p1-000042", 7)));
        // A decision id that itself holds '@' keeps it.
        assert_eq!(FencingToken::parse_idempotency_key("a@b@12"), Some(("a@b", 12)));
        for bad in ["p1-000042", "p1@", "@3", "p1@-3", "p1@x", "p1@99999999999999999999999"] {
            assert_eq!(FencingToken::parse_idempotency_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_fence_refuses_an_older_epoch_per_key() {
        let mut f = Fence::new();
        assert_eq!(f.admit(&t("p1", 2)), Ok(()));
        assert_eq!(f.admit(&t("p1", 2)), Ok(()), "the same holder acts again");
        assert_eq!(f.admit(&t("p1", 3)), Ok(()), "a takeover");
        assert_eq!(f.admit(&t("p1", 2)), Err(Fenced { key: "p1".into(), got: 2, newest: 3 }));
        assert_eq!(f.newest("p1"), Some(3), "a refusal does not lower the newest epoch");
        assert_eq!(f.admit(&t("p2", 1)), Ok(()), "keys are fenced apart");
        assert_eq!(f.newest("p3"), None);
    }
}
