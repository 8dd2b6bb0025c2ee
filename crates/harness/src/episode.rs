//! The episode loop and the incident bookkeeping behind MTTR.

use selfheal_core::{
    Action, Environment, FaultKind, Observation, Policy, RecordLedger, RewardFn, StateEncoder, StateId, StepInfo,
    Telemetry, Transition,
};

/// Something that decides, given the environment (for privileged controllers
/// such as the oracle) and the observation. Learning controllers also learn.
pub trait Controller<E> {
    /// Name in reports.
    fn name(&self) -> &str;
    /// Start of an episode.
    fn reset(&mut self, seed: u64);
    /// The action to take.
    fn decide(&mut self, env: &E, obs: &Observation<'_>) -> Action;
    /// Learn from the transition that followed (default: nothing).
    fn learn(&mut self, _t: &Transition) {}
    /// Whether the last decision was forced by a watchdog (the policy stack's
    /// guard against inaction, [`selfheal_agent::watchdog`]). Default: never.
    fn watchdog_fired(&self) -> bool {
        false
    }
}

/// A [`Policy`] as a controller: it sees only the observation.
#[derive(Clone, Debug)]
pub struct Fixed<P>(pub P);

impl<E, P: Policy> Controller<E> for Fixed<P> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn reset(&mut self, seed: u64) {
        self.0.reset(seed);
    }
    fn decide(&mut self, _env: &E, obs: &Observation<'_>) -> Action {
        self.0.act(obs)
    }
}

/// A [`selfheal_agent::Supervised`] policy as a controller, so the harness
/// counts its watchdog's firings.
impl<E> Controller<E> for selfheal_agent::Supervised {
    fn name(&self) -> &str {
        Policy::name(self)
    }
    fn reset(&mut self, seed: u64) {
        Policy::reset(self, seed);
    }
    fn decide(&mut self, _env: &E, obs: &Observation<'_>) -> Action {
        self.act(obs)
    }
    fn watchdog_fired(&self) -> bool {
        self.last_cause().is_watchdog()
    }
}

/// What one step looked like (for tracing and `simulate`).
#[derive(Clone, Copy, Debug)]
pub struct StepRecord<'a> {
    /// State the action was chosen in.
    pub state: StateId,
    /// The action.
    pub action: Action,
    /// Reward that followed.
    pub reward: f64,
    /// Telemetry after the action.
    pub telemetry: &'a Telemetry,
    /// Ground truth after the action.
    pub info: &'a StepInfo,
}

/// Results of one episode.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EpisodeStats {
    /// Undiscounted return.
    pub ret: f64,
    /// Steps taken.
    pub steps: u32,
    /// Steps that met the SLO.
    pub slo_steps: u32,
    /// Duration (steps from onset to healthy) of every incident, resolved or not.
    pub incident_steps: Vec<u32>,
    /// The fault kind that opened each incident (parallel to `incident_steps`).
    pub incident_kinds: Vec<FaultKind>,
    /// Incidents still open at the end.
    pub unresolved: u32,
    /// The fault kinds of the incidents still open at the end.
    pub open_kinds: Vec<FaultKind>,
    /// Incidents healed without anyone escalating during them.
    pub auto_resolved: u32,
    /// `Escalate` actions taken.
    pub escalations: u32,
    /// Actions other than `NoOp`.
    pub actions: u32,
    /// Remedial actions taken in a healthy window (anything but `NoOp` and
    /// `ScaleDown`, which is cost housekeeping).
    pub false_actions: u32,
    /// Sum over steps of workers paid for.
    pub worker_steps: u64,
    /// Where the records went.
    pub ledger: RecordLedger,
    /// How often each action was taken.
    pub action_counts: [u32; Action::COUNT],
    /// Longest run of consecutive steps in which the pipeline was unhealthy
    /// (an incident open or the SLO missed, by the simulator's ground truth),
    /// the policy chose `NoOp`, nobody had been paged for the incident and no
    /// backpressure held ingest: a pipeline left to burn with nobody on it.
    pub longest_idle_streak: u32,
    /// Decisions forced by the policy's watchdog.
    pub watchdog_firings: u32,
}

struct OpenIncident {
    kind: FaultKind,
    onset: u32,
    escalated: bool,
}

/// How an episode starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// [`Environment::reset`]: the episodes `evaluate` measures.
    Ordinary,
    /// [`Environment::reset_exploring`]: training coverage.
    Exploring,
}

/// Run one episode of `ctl` on `env` with seed `seed`; `observe` sees every step.
pub fn run_episode<E, C, S, R>(
    env: &mut E,
    ctl: &mut C,
    enc: &mut S,
    reward: &R,
    seed: u64,
    observe: impl FnMut(&StepRecord<'_>),
) -> EpisodeStats
where
    E: Environment,
    C: Controller<E> + ?Sized,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    run_episode_from(env, ctl, enc, reward, seed, Start::Ordinary, observe)
}

/// [`run_episode`] with a chosen [`Start`].
pub fn run_episode_from<E, C, S, R>(
    env: &mut E,
    ctl: &mut C,
    enc: &mut S,
    reward: &R,
    seed: u64,
    start: Start,
    mut observe: impl FnMut(&StepRecord<'_>),
) -> EpisodeStats
where
    E: Environment,
    C: Controller<E> + ?Sized,
    S: StateEncoder + ?Sized,
    R: RewardFn + ?Sized,
{
    let mut telemetry = match start {
        Start::Ordinary => env.reset(seed),
        Start::Exploring => env.reset_exploring(seed),
    };
    enc.reset();
    ctl.reset(seed);
    let (mut state, mut mask) = enc.encode(&telemetry);
    let mut stats = EpisodeStats::default();
    let mut open: Vec<OpenIncident> = Vec::new();
    let mut healthy = true;
    let mut idle = 0u32;
    let horizon = env.horizon();
    for _ in 0..horizon {
        let anomalous = enc.last_detection().is_some_and(|d| d.anomalous);
        let action = ctl.decide(env, &Observation { telemetry: &telemetry, state, mask, anomalous });
        stats.watchdog_firings += u32::from(ctl.watchdog_fired());
        let paged = open.iter().any(|i| i.escalated);
        let held = telemetry.get(selfheal_core::Metric::IngestThrottled) > 0.5;
        if !healthy && action == Action::NoOp && !paged && !held {
            idle += 1;
            stats.longest_idle_streak = stats.longest_idle_streak.max(idle);
        } else {
            idle = 0;
        }
        enc.record_action(action);
        let step = env.step(action);
        let r = reward.reward(action, &step.telemetry);
        let (next_state, next_mask) = enc.encode(&step.telemetry);
        // A time limit is a truncation, not a terminal state: keep bootstrapping.
        ctl.learn(&Transition { state, action, reward: r, steps: 1, next_state, next_mask, done: false });

        let info = &step.info;
        stats.ret += r;
        stats.steps += 1;
        stats.worker_steps += u64::from(info.workers);
        stats.action_counts[action.index()] += 1;
        if action != Action::NoOp {
            stats.actions += 1;
            if healthy && action != Action::ScaleDown {
                stats.false_actions += 1;
            }
        }
        if action == Action::Escalate {
            stats.escalations += 1;
            open.iter_mut().for_each(|i| i.escalated = true);
        }
        for kind in info.onsets.iter() {
            open.push(OpenIncident { kind, onset: info.t, escalated: false });
        }
        if info.healthy {
            for i in open.drain(..) {
                stats.incident_steps.push(info.t - i.onset);
                stats.incident_kinds.push(i.kind);
                stats.auto_resolved += u32::from(!i.escalated);
            }
        }
        stats.slo_steps += u32::from(info.slo_met);
        stats.ledger = info.ledger;
        observe(&StepRecord { state, action, reward: r, telemetry: &step.telemetry, info });

        healthy = info.healthy;
        telemetry = step.telemetry;
        state = next_state;
        mask = next_mask;
        if step.done {
            break;
        }
    }
    let end = stats.steps;
    for i in open {
        stats.incident_steps.push(end - i.onset + 1);
        stats.incident_kinds.push(i.kind);
        stats.open_kinds.push(i.kind);
        stats.unresolved += 1;
    }
    stats
}
