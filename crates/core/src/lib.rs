//! The shared vocabulary of selfheal.
//!
//! Every layer of the data flow (source → window → detector → encoder → agent →
//! guardrails → actuator → reward) talks to the next through the types and traits
//! in this crate, so that the same agent runs against the simulator, a replayed
//! file and live AWS. The crate depends on no other crate of the project and does
//! no I/O: it is the one place a reader learns the words the rest of the code uses.

#![forbid(unsafe_code)]

pub mod action;
pub mod fault;
pub mod reward;
pub mod seams;
pub mod telemetry;

pub use action::{Action, ActionMask};
pub use fault::{FaultKind, FaultSet};
pub use reward::{RewardFn, RewardV1, Slo};
pub use seams::{
    Environment, Learner, Observation, Policy, StateEncoder, StateId, Step, StepInfo, Transition,
};
pub use telemetry::{Metric, RecordLedger, Sample, Stage, Telemetry};
