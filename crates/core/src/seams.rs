//! The seams between layers: small traits, sync and pure, so the simulator runs
//! millions of steps without an async runtime. Async I/O (telemetry sources,
//! actuators) lives at the edges and adapts to these.

use crate::{Action, ActionMask, FaultSet, RecordLedger, Telemetry};

/// A discrete agent state, as produced by a [`StateEncoder`].
pub type StateId = u32;

/// What a policy sees when it decides.
#[derive(Clone, Copy, Debug)]
pub struct Observation<'a> {
    /// The latest telemetry window.
    pub telemetry: &'a Telemetry,
    /// The encoded state of that window (and the encoder's memory).
    pub state: StateId,
    /// The actions allowed now.
    pub mask: ActionMask,
    /// Whether the encoder's detector flagged the window (false for encoders
    /// without one). With the SLO it tells a policy's watchdog that the
    /// pipeline is unhealthy.
    pub anomalous: bool,
}

/// Chooses an action.
pub trait Policy {
    /// Short name shown in reports (`noop`, `rules`, `learned`, ...).
    fn name(&self) -> &str;
    /// Start of an episode; `seed` feeds any randomness of the policy.
    fn reset(&mut self, _seed: u64) {}
    /// The action to take now.
    fn act(&mut self, obs: &Observation<'_>) -> Action;
}

/// One step of experience, or `steps` of them summed (an n-step return).
///
/// With `steps = n` the reward is the discounted sum `Σ_{i<n} γⁱ·rᵢ` of the
/// `n` windows after the action and `next_state` is the state `n` windows
/// later, so the learner bootstraps with `γⁿ` (the sidecar's
/// `reward_windows`); `steps = 1` is the ordinary one-step transition.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Transition {
    /// State the action was taken in.
    pub state: StateId,
    /// The action.
    pub action: Action,
    /// Reward observed after it (for `steps > 1`, the discounted sum over the steps).
    pub reward: f64,
    /// Steps between `state` and `next_state`: the learner discounts the
    /// bootstrap by `γ^steps`. 1 for a one-step transition; 0 is read as 1.
    pub steps: u32,
    /// State after it.
    pub next_state: StateId,
    /// Actions allowed in `next_state`.
    pub next_mask: ActionMask,
    /// Whether the episode ended (no bootstrap from `next_state`).
    pub done: bool,
}

/// A policy that learns from transitions.
pub trait Learner: Policy {
    /// Learn from one transition.
    fn update(&mut self, t: &Transition);
}

/// Turns telemetry into a discrete state: the encoding half of a
/// [`StateEncoder`]. Split from the episode memory ([`EpisodeMemory`]) and the
/// wording ([`StateWords`]) so each seam stays a few methods; a caller that
/// needs all of them takes the one bound [`StateEncoder`].
pub trait EncodeState {
    /// Identifier stored in model files (`telemetry-v1`, ...).
    fn id(&self) -> &'static str;
    /// Size of the state space; every [`StateId`] is below it.
    fn num_states(&self) -> usize;
    /// Encode a window into a state and the actions allowed in it.
    fn encode(&mut self, t: &Telemetry) -> (StateId, ActionMask);
    /// What the encoder's own detector said about the window of the last
    /// `encode`, if it has one, so a caller that also reports the detection
    /// need not score the window a second time. Default: none.
    fn last_detection(&self) -> Option<Detection> {
        None
    }
}

/// What an encoder remembers within an episode (attempts so far in an
/// incident), so it is told of every action taken.
pub trait EpisodeMemory {
    /// Forget the episode's memory.
    fn reset(&mut self);
    /// Note the action taken after the last `encode`.
    fn record_action(&mut self, a: Action);
}

/// States in words and their coarser neighbours, for reports and for a
/// tabular policy meeting a state it (almost) never visited.
pub trait StateWords {
    /// The state in words, for reports.
    fn describe(&self, s: StateId) -> String;
    /// States to consult, in order, when `s` was (almost) never visited in
    /// training: the same situation with less detail. Default: none.
    fn fallbacks(&self, _s: StateId) -> Vec<StateId> {
        Vec::new()
    }
}

/// A full state encoder: [`EncodeState`] + [`EpisodeMemory`] + [`StateWords`].
/// Implemented for every type that implements the three; implement those, not
/// this.
pub trait StateEncoder: EncodeState + EpisodeMemory + StateWords {}

impl<T: EncodeState + EpisodeMemory + StateWords + ?Sized> StateEncoder for T {}

/// What happened in one step, beyond telemetry: ground truth for scoring.
/// Policies never see it; the evaluation harness does.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepInfo {
    /// Step index after this step (1-based count of steps taken).
    pub t: u32,
    /// No fault active and the SLO met.
    pub healthy: bool,
    /// The SLO met (whatever the faults).
    pub slo_met: bool,
    /// Faults that started this step.
    pub onsets: FaultSet,
    /// Faults active after this step.
    pub active: FaultSet,
    /// Where every record went, cumulative.
    pub ledger: RecordLedger,
    /// Workers paid for during this step.
    pub workers: u32,
}

/// The outcome of one step.
#[derive(Clone, Copy, Debug)]
pub struct Step {
    /// The window observed after the action.
    pub telemetry: Telemetry,
    /// Whether the episode is over.
    pub done: bool,
    /// Ground truth for scoring.
    pub info: StepInfo,
}

/// Something a policy can act on, step by step.
pub trait Environment {
    /// Start a new episode; the same seed gives the same episode.
    fn reset(&mut self, seed: u64) -> Telemetry;
    /// Start a training episode from an **exploring start**: a state drawn
    /// from those an episode can reach (faults already active, a backlog, a
    /// worker level), so training covers what evaluation meets, rare
    /// combinations and late incident stages included (Sutton & Barto,
    /// *Reinforcement Learning*, 2nd ed., §5.3). The same seed gives the same
    /// start. Default: the ordinary start.
    fn reset_exploring(&mut self, seed: u64) -> Telemetry {
        self.reset(seed)
    }
    /// Apply `action` for one step.
    fn step(&mut self, action: Action) -> Step;
    /// Steps per episode.
    fn horizon(&self) -> u32;
}

/// What a detector says about one telemetry window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Detection {
    /// Anomaly score in [0, 1]; higher is more anomalous.
    pub score: f64,
    /// Whether the score is past the detector's calibrated threshold.
    pub anomalous: bool,
    /// Failure signature: 0 when not anomalous, else 1..=[`Detector::signatures`].
    pub signature: u16,
}

/// Scores telemetry windows and names the failure signature of anomalous ones.
pub trait Detector {
    /// Identifier stored in model files.
    fn id(&self) -> &str;
    /// Number of failure signatures (signature ids run 1..=this).
    fn signatures(&self) -> u16;
    /// Score one window.
    fn detect(&self, t: &Telemetry) -> Detection;
    /// The metrics its features read (a pipeline that never reports one of
    /// them is detected with less evidence: warned about at start).
    fn inputs(&self) -> Vec<crate::Metric> {
        Vec::new()
    }
}
