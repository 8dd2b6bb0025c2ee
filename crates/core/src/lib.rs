//! The shared vocabulary of selfheal.
//!
//! Every layer of the data flow (source → window → detector → encoder → agent →
//! guardrails → actuator → reward) talks to the next through the types and traits
//! in this crate, so that the same agent runs against the simulator, a replayed
//! file and live AWS. The crate depends on no other crate of the project and does
//! no I/O: it is the one place a reader learns the words the rest of the code uses.

#![forbid(unsafe_code)]

pub mod action;
pub mod evidence;
pub mod fault;
pub mod params;
pub mod reward;
pub mod seams;
pub mod stats;
pub mod telemetry;
pub mod time;

pub use action::{Action, ActionMask};
pub use fault::{FaultKind, FaultSet};
pub use params::{Checked, ParamGuard};
pub use reward::{RewardFn, RewardV1, Slo};
pub use seams::{
    Detection, Detector, EncodeState, Environment, EpisodeMemory, Learner, Observation, Policy, StateEncoder, StateId,
    StateWords, Step, StepInfo, Transition,
};
pub use telemetry::{Metric, RecordLedger, Sample, Stage, Telemetry};

/// Seeds: how one seed becomes many independent streams, and which seeds
/// training may use (evaluation seeds stay below [`seeds::TRAIN_SEED_FLOOR`]).
pub mod seeds {
    /// Training episodes draw their seeds at or above this; held-out
    /// evaluation seeds stay below it, so the two never overlap.
    pub const TRAIN_SEED_FLOOR: u64 = 1 << 32;

    /// Derive an independent seed for `stream` from `seed` (SplitMix64 finaliser).
    pub fn mix(seed: u64, stream: u64) -> u64 {
        let mut z = seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The environment seed of training episode `episode` under training seed `seed`.
    pub fn training_episode(seed: u64, episode: u64) -> u64 {
        TRAIN_SEED_FLOOR | (mix(seed, episode) >> 1)
    }
}
