//! Guardrails: whether a decision may run now, and how a call downstream is made.
//!
//! Every guard is sync and pure: it is told the time (`now_ms`, Unix
//! milliseconds) and given its randomness, so each is tested alone, quickly and
//! repeatably. The sidecar applies them in the order the modules are listed:
//!
//! 1. [`mode`]: observe, recommend or act: how much the sidecar may do alone.
//! 2. [`killswitch`]: a pause set by a person stops every action.
//! 3. [`confidence`]: act alone only where the Q table has enough experience and a clear winner.
//! 4. [`budget`]: actions per sliding hour, cooldown per (pipeline, action), blast radius.
//! 5. [`breaker`]: a circuit breaker per downstream endpoint (resilience4j semantics).
//! 6. [`bulkhead`]: a cap on concurrent calls per endpoint.
//! 7. [`retry`]: exponential backoff with full jitter for failed calls.
//! 8. [`timeout`]: a call timeout learned from the endpoint's latencies.
//! 9. [`approvals`]: proposals waiting for a human, with deadlines.

#![forbid(unsafe_code)]

// In the order the sidecar applies them; the blank lines keep rustfmt from sorting them.
pub mod mode;

pub mod killswitch;

/// The confidence gate lives in the policy stack (the evaluation harness uses it
/// too); re-exported here in the order the sidecar applies it.
pub use selfheal_agent::confidence;

pub mod budget;

pub mod breaker;

pub mod bulkhead;

pub mod retry;

pub mod timeout;

pub mod approvals;

pub use approvals::{ApprovalError, Approvals, Decision};
pub use breaker::{Breaker, BreakerConfig, BreakerState, Rejected};
pub use budget::{Budget, BudgetConfig, Denied};
pub use bulkhead::{Bulkhead, BulkheadPermit};
pub use confidence::{Confidence, ConfidenceGate};
pub use killswitch::{KillSwitch, Pause};
pub use mode::{Mode, UnknownMode};
pub use retry::RetryPolicy;
pub use timeout::{LearnedTimeout, TimeoutConfig};

/// A guard's settings are inconsistent; the message names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid config: {0}")]
pub struct InvalidConfig(pub String);

#[cfg(test)]
mod test_util {
    use serde::de::value::{Error, MapDeserializer};
    use serde::de::DeserializeOwned;

    /// Deserialize a config from (field, integer) pairs, as a config file would give them.
    pub fn from_pairs<T: DeserializeOwned>(pairs: &[(&'static str, u64)]) -> Result<T, Error> {
        T::deserialize(MapDeserializer::<_, Error>::new(pairs.iter().copied()))
    }
}
