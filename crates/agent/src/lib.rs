//! The agent: from telemetry to a discrete state, from a state to an action, and
//! from outcomes to a better Q table.
//!
//! - [`encoder`], [`detector_encoder`]: telemetry or detector output → state
//!   (the agent never sees the true fault);
//! - [`qlearn`]: tabular Q-learning with ε schedules and action masking;
//! - [`baselines`]: the no-op, random and calibrated rule-based policies;
//! - [`glue_builtins`]: what AWS Glue's own job settings do (retries, timeout,
//!   delay notification, auto scaling), the baseline a Glue user already has;
//! - [`confidence`], [`watchdog`], [`diagnose`], [`supervise`]: the policy
//!   stack around the table (a gate on unsure choices, silence included, a
//!   watchdog that bounds inaction, and the faults Glue's metrics name that
//!   scaling cannot fix), shared by evaluation and the sidecar;
//! - [`store`]: versioned model files, written atomically.
//!
//! The agent knows the core vocabulary only: not the simulator, not AWS.

#![forbid(unsafe_code)]

pub mod baselines;
pub mod confidence;
pub mod detector_encoder;
pub mod diagnose;
pub mod encoder;
pub mod glue_builtins;
pub mod kind;
pub mod qlearn;
pub mod store;
pub mod supervise;
pub mod watchdog;

pub use baselines::{NoOpPolicy, RandomPolicy, RuleThresholds, RulesPolicy};
pub use detector_encoder::DetectorEncoder;
pub use encoder::{DetectorRef, EncoderConfig, TelemetryEncoder};
pub use glue_builtins::{GlueBuiltinsPolicy, GlueSettings, GlueSettingsError, JobShape};
pub use kind::{EncoderKind, UnknownEncoder};
pub use qlearn::{
    deciding_state, epsilon_greedy, EpsilonSchedule, GreedyPolicy, InvalidQParams, QLearner, QParams, QTable,
};
pub use store::{ModelFile, ModelMeta, StoreError};
pub use supervise::{window_unhealthy, Cause, Supervised, Supervisor};
pub use watchdog::{Watchdog, WatchdogConfig};
