//! The pipeline simulator: where the agent is trained and every policy is measured.
//!
//! The simulator is an exact, small Markov decision process dressed in realistic
//! telemetry. Its hidden state ([`model::State`]: active faults, whether a human
//! is engaged, worker level, backlog) evolves by [`model::Model::transition`], the
//! single definition of the dynamics; [`Simulator`] samples it, and [`Oracle`]
//! solves it by backward induction. Because both read the same function, the
//! oracle is optimal by construction, and a test checks the reward the simulator
//! reports from noisy telemetry equals the one the oracle plans with.
//!
//! Layout, following one step: [`scenario`] (what to simulate) → [`model`]
//! (dynamics and flows of records) → [`render`] (flows to CloudWatch-style
//! telemetry with noise) → [`sim`] (the `Environment`) → [`oracle`].

#![forbid(unsafe_code)]

pub mod model;
pub mod oracle;
pub mod render;
pub mod scenario;
pub mod sim;

pub use model::{FaultEffects, Model};
pub use oracle::Oracle;
pub use scenario::{Scenario, ScenarioError};
pub use sim::Simulator;
