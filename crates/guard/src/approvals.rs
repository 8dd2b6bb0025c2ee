//! The book of proposals waiting for a human.
//!
//! In `recommend` mode, and in `act` mode when the agent is unsure, an action waits
//! for a person. A proposal must not outlive the situation it was made for: past its
//! deadline it can never be approved, even if nobody has swept it yet. And a person
//! clicking twice, or after a colleague, must get a clear answer, not run the action
//! twice; hence a bounded memory of recent decisions.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;

/// How many decided ids are remembered for [`ApprovalError::AlreadyDecided`].
pub const DECIDED_MEMORY: usize = 1000;

/// How a proposal was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// A human approved it.
    Approved,
    /// A human rejected it.
    Rejected,
    /// Nobody decided before its deadline.
    Expired,
}

impl Decision {
    /// "approved", "rejected" or "expired".
    pub fn name(self) -> &'static str {
        match self {
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::Expired => "expired",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a proposal could not be made, approved or rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No such proposal, pending or recently decided.
    #[error("no pending proposal {0:?}")]
    Unknown(String),
    /// Its deadline passed; it can no longer be approved or rejected.
    #[error("proposal {0:?} expired before it was decided")]
    Expired(String),
    /// It was decided already.
    #[error("proposal {id:?} was already {how}")]
    AlreadyDecided {
        /// The decision id.
        id: String,
        /// How it was decided.
        how: Decision,
    },
    /// A proposal with this id is already pending.
    #[error("proposal {0:?} is already pending")]
    AlreadyPending(String),
}

#[derive(Clone, Debug)]
struct Pending<T> {
    expires_at_ms: u64,
    payload: T,
}

/// Pending proposals keyed by decision id, each with a deadline and a payload (what
/// to run if approved).
#[derive(Clone, Debug)]
pub struct Approvals<T> {
    pending: BTreeMap<String, Pending<T>>,
    /// The last [`DECIDED_MEMORY`] decisions, oldest first.
    decided: VecDeque<(String, Decision)>,
}

impl<T> Default for Approvals<T> {
    fn default() -> Self {
        Approvals { pending: BTreeMap::new(), decided: VecDeque::new() }
    }
}

impl<T> Approvals<T> {
    /// An empty book.
    pub fn new() -> Approvals<T> {
        Approvals::default()
    }

    /// Add a proposal that expires `ttl_ms` after `now_ms`. Refused if the id is
    /// pending or was decided recently (ids must not be reused).
    pub fn propose(&mut self, id: String, payload: T, now_ms: u64, ttl_ms: u64) -> Result<(), ApprovalError> {
        if self.pending.contains_key(&id) {
            return Err(ApprovalError::AlreadyPending(id));
        }
        if let Some(how) = self.decision(&id) {
            return Err(ApprovalError::AlreadyDecided { id, how });
        }
        self.pending.insert(id, Pending { expires_at_ms: now_ms.saturating_add(ttl_ms), payload });
        Ok(())
    }

    /// Approve a pending proposal before its deadline; returns its payload to run.
    pub fn approve(&mut self, id: &str, now_ms: u64) -> Result<T, ApprovalError> {
        self.decide(id, now_ms, Decision::Approved)
    }

    /// Reject a pending proposal before its deadline; returns its payload (for the log).
    pub fn reject(&mut self, id: &str, now_ms: u64) -> Result<T, ApprovalError> {
        self.decide(id, now_ms, Decision::Rejected)
    }

    /// Remove and return the proposals whose deadline is at or before `now_ms`, in id order.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(String, T)> {
        let ids: Vec<String> =
            self.pending.iter().filter(|(_, p)| p.expires_at_ms <= now_ms).map(|(id, _)| id.clone()).collect();
        ids.into_iter()
            .map(|id| {
                #[allow(clippy::expect_used)] // the ids were listed from the map just above, under the same &mut self
                let p = self.pending.remove(&id).expect("listed above");
                self.remember(id.clone(), Decision::Expired);
                (id, p.payload)
            })
            .collect()
    }

    /// The pending proposals as (id, expires_at_ms, payload), in id order. Includes
    /// proposals past their deadline that [`Approvals::expire`] has not removed yet.
    pub fn pending(&self) -> impl Iterator<Item = (&str, u64, &T)> {
        self.pending.iter().map(|(id, p)| (id.as_str(), p.expires_at_ms, &p.payload))
    }

    /// How `id` was decided, if it is among the recently decided.
    pub fn decision(&self, id: &str) -> Option<Decision> {
        self.decided.iter().rev().find(|(d, _)| d == id).map(|(_, how)| *how)
    }

    /// An expired proposal stays pending (so its payload is reported once, by
    /// `expire`) but can be neither approved nor rejected.
    fn decide(&mut self, id: &str, now_ms: u64, how: Decision) -> Result<T, ApprovalError> {
        match self.pending.get(id) {
            None => Err(match self.decision(id) {
                Some(how) => ApprovalError::AlreadyDecided { id: id.to_string(), how },
                None => ApprovalError::Unknown(id.to_string()),
            }),
            Some(p) if now_ms >= p.expires_at_ms => Err(ApprovalError::Expired(id.to_string())),
            Some(_) => {
                #[allow(clippy::expect_used)] // matched `Some` just above, under the same &mut self
                let p = self.pending.remove(id).expect("present");
                self.remember(id.to_string(), how);
                Ok(p.payload)
            }
        }
    }

    fn remember(&mut self, id: String, how: Decision) {
        if self.decided.len() == DECIDED_MEMORY {
            self.decided.pop_front();
        }
        self.decided.push_back((id, how));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Approvals<&'static str> {
        let mut a = Approvals::new();
        a.propose("d2".into(), "scale_up p1", 1_000, 60_000).unwrap();
        a.propose("d1".into(), "restart p0", 1_000, 30_000).unwrap();
        a
    }

    #[test]
    fn approve_returns_the_payload_once() {
        let mut a = book();
        assert_eq!(a.approve("d1", 2_000), Ok("restart p0"));
        assert_eq!(
            a.approve("d1", 2_001),
            Err(ApprovalError::AlreadyDecided { id: "d1".into(), how: Decision::Approved })
        );
        assert_eq!(a.reject("d1", 2_001).unwrap_err().to_string(), "proposal \"d1\" was already approved");
        assert_eq!(a.pending().map(|(id, _, _)| id).collect::<Vec<_>>(), ["d2"]);
    }

    #[test]
    fn rejected_is_never_approved() {
        let mut a = book();
        assert_eq!(a.reject("d2", 2_000), Ok("scale_up p1"));
        assert_eq!(
            a.approve("d2", 2_000),
            Err(ApprovalError::AlreadyDecided { id: "d2".into(), how: Decision::Rejected })
        );
    }

    #[test]
    fn expired_is_never_approved_even_before_the_sweep() {
        let mut a = book();
        // d1 expires at 31 000.
        assert_eq!(a.approve("d1", 31_000), Err(ApprovalError::Expired("d1".into())));
        assert_eq!(a.reject("d1", 40_000), Err(ApprovalError::Expired("d1".into())));
        assert_eq!(a.expire(40_000), vec![("d1".to_string(), "restart p0")]);
        assert_eq!(
            a.approve("d1", 40_000),
            Err(ApprovalError::AlreadyDecided { id: "d1".into(), how: Decision::Expired })
        );
        assert_eq!(a.approve("d2", 60_999), Ok("scale_up p1"));
    }

    #[test]
    fn expire_takes_only_the_due_in_id_order() {
        let mut a = book();
        a.propose("d0".into(), "noop", 0, 10).unwrap();
        assert!(a.expire(9).is_empty());
        assert_eq!(a.expire(31_000), vec![("d0".to_string(), "noop"), ("d1".to_string(), "restart p0")]);
        let left: Vec<_> = a.pending().collect();
        assert_eq!(left, vec![("d2", 61_000, &"scale_up p1")]);
    }

    #[test]
    fn unknown_and_reused_ids() {
        let mut a = book();
        assert_eq!(a.approve("nope", 0), Err(ApprovalError::Unknown("nope".into())));
        assert_eq!(a.propose("d1".into(), "again", 0, 1), Err(ApprovalError::AlreadyPending("d1".into())));
        a.approve("d1", 2_000).unwrap();
        assert!(matches!(a.propose("d1".into(), "again", 0, 1), Err(ApprovalError::AlreadyDecided { .. })));
    }

    #[test]
    fn memory_of_decisions_is_bounded() {
        let mut a = Approvals::new();
        for i in 0..DECIDED_MEMORY + 5 {
            a.propose(format!("d{i}"), i, 0, 1_000).unwrap();
            a.reject(&format!("d{i}"), 0).unwrap();
        }
        assert_eq!(a.decided.len(), DECIDED_MEMORY);
        assert_eq!(a.decision("d0"), None, "the oldest are forgotten");
        assert_eq!(a.decision(&format!("d{}", DECIDED_MEMORY + 4)), Some(Decision::Rejected));
        assert_eq!(a.approve("d0", 0), Err(ApprovalError::Unknown("d0".into())));
    }
}
