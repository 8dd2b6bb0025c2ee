//! The decision core: a window in, a decision out, and the Q update for the
//! decision before it. Sync and free of I/O (the clock is passed in), so the
//! whole path from sample to decision is tested and benchmarked without a
//! runtime; [`crate::daemon`] does the I/O around it.
//!
//! For each window of a pipeline, in order:
//! 1. **Feedback.** The reward of the previous decision's executed action,
//!    computed from this window with the training reward function, updates Q
//!    (after `reward_windows` windows).
//! 2. **Detection and state.** The detector scores the window; the
//!    pipeline's own encoder turns it into a state and the allowed actions.
//! 3. **Choice.** ε-greedy over the shared Q table (ε may be 0), deciding in a
//!    well-visited fallback state when this one was rarely seen in training;
//!    the rule policy's choice is kept beside it (shadow). The policy stack's
//!    [`Supervisor`] (the same one `evaluate` measures) then gates an unhealthy
//!    window's silence and runs the watchdog: after `guard.watchdog.windows`
//!    unhealthy windows with nothing executed it pages a person once per
//!    incident (the webhook carries the pipeline's recent trail), then falls
//!    back to the rule policy's action. A fallback action is the runbook's, not
//!    the table's, so the confidence gate does not judge it; mode, kill switch
//!    and budget do.
//! 4. **Guardrails**, in order: mode, kill switch, confidence gate, budget.
//!    The breaker, bulkhead, timeout and retries of the call itself are the
//!    executor's ([`crate::actuate`]).
//!
//! Budgets and cooldowns run on telemetry time (the latest window's
//! timestamp), so a replayed incident or the simulated demo (a minute per
//! step) meets the limits it would have met live; proposals expire on wall
//! time, because people answer them.
//!
//! The executed action, not the chosen one, is what the encoder remembers
//! and what Q learns from: a denied or proposed action did not happen, so the
//! pipeline saw a no-op. A failed action teaches nothing and is escalated;
//! so does one whose outcome is still unknown when the next window arrives.

use crate::notify::Escalation;
use crate::provenance::{
    ApprovalRecord, DecisionRecord, OutcomeRecord, OutcomeStatus, Record, RewardRecord, Verdict, WindowSummary,
};
use crate::window::Window;
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_agent::supervise::{Cause, Inputs};
use selfheal_agent::{
    deciding_state, epsilon_greedy, window_unhealthy, GlueBuiltinsPolicy, QLearner, RulesPolicy, Supervisor,
    WatchdogConfig,
};
use selfheal_core::{
    Action, ActionMask, Detector, Metric, Observation, Policy, RewardFn, StateEncoder, StateId, Telemetry, Transition,
};
use selfheal_guard::approvals::{ApprovalError, Approvals};
use selfheal_guard::budget::{Budget, BudgetConfig};
use selfheal_guard::confidence::{Confidence, ConfidenceGate};
use selfheal_guard::killswitch::KillSwitch;
use selfheal_guard::Mode;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Whether this replica may act for a pipeline now: the seam through which
/// the fleet's lease keeper ([`crate::fleet`]) gates the decision core. Read
/// on every window, so it must answer from memory without blocking.
pub trait ActGate: Send + Sync {
    /// `Ok(epoch)` when this replica holds `pipeline`'s lease with more than
    /// the safety margin left at `now_ms` (Unix ms), the lease epoch being the
    /// fencing token every action carries; `Err(why)` otherwise, in words
    /// (`"held by replica-b (epoch 4)"`).
    fn may_act(&self, pipeline: &str, now_ms: i64) -> Result<u64, String>;
}

/// Settings of the decision core (from the config's model and guard sections).
#[derive(Clone, Debug)]
pub struct DecideConfig {
    /// observe, recommend or act.
    pub mode: Mode,
    /// Act-mode trust thresholds.
    pub confidence: ConfidenceGate,
    /// The watchdog against inaction.
    pub watchdog: WatchdogConfig,
    /// Untrusted actions become proposals (true) or escalations (false).
    pub propose_when_unsure: bool,
    /// Proposal lifetime.
    pub approval_ttl_ms: u64,
    /// Budget.
    pub budget: BudgetConfig,
    /// Windows per reward.
    pub reward_windows: u32,
    /// Learn online.
    pub learn: bool,
    /// Exploration.
    pub epsilon: f64,
    /// Log healthy no-op decisions too.
    pub log_healthy: bool,
    /// Seed of exploration.
    pub seed: u64,
}

/// A fresh state encoder for a newly seen pipeline.
pub type EncoderFactory = Arc<dyn Fn() -> Box<dyn StateEncoder + Send> + Send + Sync>;

/// The models a controller decides with.
pub struct Parts {
    /// Makes each pipeline's encoder (encoders remember attempts).
    pub encoder: EncoderFactory,
    /// The encoder's fallbacks and descriptions (stateless use).
    pub describe: Arc<dyn StateEncoder + Send + Sync>,
    /// Scores windows (the encoder's own detector), for the log.
    pub detector: Arc<dyn Detector + Send + Sync>,
    /// The Q table and its learning rule, shared by every pipeline.
    pub learner: QLearner,
    /// The rule policy, logged as the shadow choice.
    pub rules: RulesPolicy,
    /// AWS Glue's built-ins (retries, timeout, delay notification, auto
    /// scaling), logged beside it as a second shadow: what the job's own
    /// settings would have done. `None`: not logged.
    pub glue: Option<GlueBuiltinsPolicy>,
    /// The training reward.
    pub reward: Box<dyn RewardFn + Send>,
}

/// What the daemon must do after a decision.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    /// Nothing.
    Nothing,
    /// Run the action through the executor.
    Act(Order),
    /// Tell a human.
    Escalate(Escalation),
}

/// An action cleared to run.
#[derive(Clone, Debug, PartialEq)]
pub struct Order {
    /// Decision id.
    pub id: String,
    /// Idempotency key.
    pub key: String,
    /// Pipeline.
    pub pipeline: String,
    /// Action.
    pub action: Action,
}

/// Records to log and the plan, from one event.
#[derive(Debug, Default)]
pub struct Output {
    /// Records, each with whether it must be durable before the plan runs.
    pub records: Vec<(Record, bool)>,
    /// What to do.
    pub plan: Option<Plan>,
    /// Messages about proposals for the people who answer them (see
    /// [`crate::notify::Notice`]); delivered like pages, after the records.
    pub notices: Vec<Escalation>,
}

/// A proposal waiting for a human.
#[derive(Clone, Debug)]
pub struct Proposal {
    /// Pipeline.
    pub pipeline: String,
    /// Proposed action.
    pub action: Action,
    /// Why it was not run alone.
    pub reason: String,
    /// When it was proposed, Unix ms (wall time).
    pub proposed_ms: i64,
    /// The fleet's lease epoch it was proposed under (`None`: no fleet). An
    /// approval runs it only under that same epoch: a lease taken over (and
    /// perhaps taken back) since voids it.
    pub epoch: Option<u64>,
    /// What a person needs to decide: the window summary, anomaly score,
    /// signature, state in words, evidence metrics, the rule policy's choice.
    pub evidence: serde_json::Value,
}

/// Which proposal of a pipeline its people were told about, and how many
/// later ones were folded into that message (one message per pipeline and
/// incident, not one per window or action).
#[derive(Clone, Debug)]
struct Told {
    id: String,
    folded: u32,
    /// The unanswered page went out.
    nagged: bool,
    /// Folded proposals that ended while this one was open (`{id, action,
    /// result}`), listed in the next closing message (`detail.ended`): their
    /// ends are announced, still folded.
    ended: Vec<serde_json::Value>,
}

#[derive(Clone)]
struct PendingReward {
    id: Option<String>,
    state: StateId,
    action: Action,
    acc: f64,
    windows: u32,
    /// A window of the wait lacked the reward's inputs: the wait runs its
    /// course (no new action meanwhile) but teaches nothing.
    spoiled: bool,
}

struct Pipeline {
    encoder: Box<dyn StateEncoder + Send>,
    rules: RulesPolicy,
    glue: Option<GlueBuiltinsPolicy>,
    supervisor: Supervisor,
    pending: Option<PendingReward>,
    score: f64,
    /// The last decisions, oldest first: the trail a watchdog page carries.
    trail: std::collections::VecDeque<serde_json::Value>,
    /// Metrics the pipeline has reported at least once.
    seen: [bool; Metric::COUNT],
    /// Windows decided for this pipeline.
    windows: u64,
    /// Start of its latest window, Unix ms: idle is measured from it.
    last_seen_ms: i64,
}

/// Windows after which an expected metric that never arrived is warned about
/// (every metric a Glue job or a push client publishes shows within a few
/// periods; CloudWatch may hold a datapoint back one).
const EXPECT_AFTER: u64 = 3;

/// The metrics a decision record lists as evidence when present and
/// non-zero, beside the job runs' [`selfheal_core::evidence::RUN_METRICS`].
const EVIDENCE: [Metric; 3] = [Metric::CatalogDrift, Metric::ErrorsAll, Metric::ErrorsOom];

/// `metric=value` for each [`EVIDENCE`] metric the window has (non-zero),
/// and the driver's heap once it is critical (the driver-OOM finding's
/// number; below that it is noise on every line).
fn evidence(t: &Telemetry) -> Vec<String> {
    let driver = t
        .value(Metric::DriverHeapUsage)
        .filter(|v| *v >= selfheal_agent::diagnose::HEAP_CRITICAL)
        .map(|v| format!("{}={v}", Metric::DriverHeapUsage.name()));
    selfheal_core::evidence::RUN_METRICS
        .iter()
        .chain(&EVIDENCE)
        .filter_map(|m| t.value(*m).filter(|v| *v != 0.0).map(|v| format!("{}={v}", m.name())))
        .chain(driver)
        .collect()
}

/// Decisions a watchdog page carries.
const TRAIL: usize = 12;

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Windows decided on.
    pub windows: u64,
    /// Decisions by (chosen action, verdict).
    pub decisions: BTreeMap<(Action, Verdict), u64>,
    /// Outcomes by status.
    pub outcomes: BTreeMap<OutcomeStatus, u64>,
    /// Online Q updates.
    pub q_updates: u64,
    /// Sum of rewards observed.
    pub reward_sum: f64,
    /// Rewards observed.
    pub rewards: u64,
    /// Choices the policy stack overrode, by cause ([`Cause::OVERRIDES`]).
    pub overrides: BTreeMap<Cause, u64>,
    /// Per pipeline, the metrics the detector or the reward read that it has
    /// not reported in its first windows (`selfheal_expected_metric_missing`).
    pub missing: BTreeMap<String, Vec<&'static str>>,
    /// Rewards not computed because the window lacked one of their inputs
    /// (those windows taught the table nothing).
    pub rewards_skipped: u64,
    /// Proposals paged as unanswered past `guard.approval_unanswered_secs`.
    pub proposals_unanswered: u64,
}

/// The decision core.
pub struct DecisionCore {
    cfg: DecideConfig,
    parts: Parts,
    pipelines: HashMap<String, Pipeline>,
    budget: Budget,
    approvals: Approvals<Proposal>,
    kill: KillSwitch,
    rng: Xoshiro256PlusPlus,
    run: String,
    seq: u64,
    clock_ms: u64,
    in_flight: std::collections::HashSet<String>,
    updates_since_checkpoint: u64,
    /// The metrics the detector and the reward read.
    expected: Vec<Metric>,
    /// Counters for `/metrics`.
    pub stats: Stats,
    /// Per pipeline, the open proposal its people were told about.
    told: HashMap<String, Told>,
    /// A proposal unanswered this long is paged as such (`guard.approval_unanswered_secs`).
    unanswered_after_ms: Option<u64>,
    /// The fleet's lease gate; `None`: one process, acts for every pipeline.
    gate: Option<Arc<dyn ActGate>>,
    /// The shared policy version the table came from (`None`: a local model).
    policy_version: Option<u64>,
}

/// An action's idempotency key `key`, stamped with the lease epoch when the
/// fleet's gate gave one (`key@epoch`, `selfheal_fleet::FencingToken`).
fn fenced(key: String, pipeline: &str, lease: Option<Result<u64, String>>) -> String {
    match lease {
        Some(Ok(epoch)) => selfheal_fleet::FencingToken { key: pipeline.to_string(), epoch }.idempotency_key(&key),
        _ => key,
    }
}

/// Result of a human's answer to a proposal.
pub type Answer = Result<Output, ApprovalError>;

impl DecisionCore {
    /// A controller; `run` prefixes decision ids and must differ between runs
    /// (the daemon uses its start time), so ids never repeat across restarts.
    pub fn new(cfg: DecideConfig, parts: Parts, run: String) -> DecisionCore {
        let budget = Budget::new(cfg.budget);
        let rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        let mut expected = parts.detector.inputs();
        expected.extend_from_slice(parts.reward.inputs());
        expected.sort();
        expected.dedup();
        DecisionCore {
            expected,
            cfg,
            parts,
            pipelines: HashMap::new(),
            budget,
            approvals: Approvals::new(),
            kill: KillSwitch::default(),
            rng,
            run,
            seq: 0,
            clock_ms: 0,
            in_flight: Default::default(),
            updates_since_checkpoint: 0,
            stats: Stats::default(),
            told: HashMap::new(),
            unanswered_after_ms: None,
            gate: None,
            policy_version: None,
        }
    }

    /// Act only for the pipelines `gate` allows (a fleet replica); stamp
    /// every action's idempotency key with the lease epoch
    /// (`{decision}/{action}@{epoch}`, `selfheal_fleet::FencingToken`). A
    /// window of a pipeline this replica does not hold is still scored and
    /// logged, with the verdict `observed` and the reason "not the lease
    /// holder: ...", and teaches the table nothing (another replica acts on it).
    pub fn set_gate(&mut self, gate: Arc<dyn ActGate>) {
        self.gate = Some(gate);
    }

    /// Replace the Q table with `table`, shared policy version `version`,
    /// between two windows (the caller owns the controller, so no window sees
    /// half of it). Exploration (ε) carries over; pending rewards update the
    /// new table. Every later decision record names `version`.
    ///
    /// # Errors
    /// A message, and the old table kept, when `table` has another number of
    /// states than the running one (another encoder or detector).
    pub fn swap_table(&mut self, table: selfheal_agent::QTable, version: u64) -> Result<(), String> {
        let running = self.parts.learner.table().num_states();
        if table.num_states() != running {
            return Err(format!(
                "policy version {version} has {} states, the running table {running}: another encoder or detector",
                table.num_states()
            ));
        }
        let (params, eps) = (*self.parts.learner.params(), self.parts.learner.epsilon());
        self.parts.learner = QLearner::from_table(table, params, self.cfg.seed ^ version);
        self.parts.learner.set_epsilon(eps);
        self.policy_version = Some(version);
        Ok(())
    }

    /// The shared policy version the table came from, if any.
    pub fn policy_version(&self) -> Option<u64> {
        self.policy_version
    }

    /// Page "nobody answered" for a proposal still open `ms` after it was
    /// proposed (the proposal watchdog); `None` (the default) never does.
    pub fn set_unanswered_after(&mut self, ms: Option<u64>) {
        self.unanswered_after_ms = ms;
    }

    /// What the source discovered `pipeline` publishing (before its first
    /// window): the metrics the detector or the reward read that are not
    /// among them are reported at once (`selfheal_expected_metric_missing`
    /// and a warning) rather than after the first windows; the windows then
    /// keep the list current as they do for any source.
    pub fn expect_published(&mut self, pipeline: &str, published: &[Metric]) {
        let missing: Vec<&'static str> =
            self.expected.iter().filter(|m| !published.contains(m)).map(|m| m.name()).collect();
        if missing.is_empty() {
            self.stats.missing.remove(pipeline);
            return;
        }
        tracing::warn!(pipeline, missing = ?missing,
            "the pipeline does not publish metrics the detector or the reward read: the detector reads them \
             at the healthy baseline and the reward skips windows without its inputs; publish them or fit the \
             detector on this pipeline");
        self.stats.missing.insert(pipeline.to_string(), missing);
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.cfg.mode
    }

    /// The learner (for checkpoints).
    pub fn learner(&self) -> &QLearner {
        &self.parts.learner
    }

    /// Updates since the last call to [`DecisionCore::checkpointed`].
    pub fn updates_since_checkpoint(&self) -> u64 {
        self.updates_since_checkpoint
    }

    /// Note a checkpoint was written.
    pub fn checkpointed(&mut self) {
        self.updates_since_checkpoint = 0;
    }

    /// Last anomaly score per pipeline.
    pub fn scores(&self) -> Vec<(String, f64)> {
        let mut v: Vec<_> = self.pipelines.iter().map(|(k, p)| (k.clone(), p.score)).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The kill switch.
    pub fn kill_switch(&mut self) -> &mut KillSwitch {
        &mut self.kill
    }

    /// Proposals waiting for a human: (id, expires at, proposal).
    pub fn pending(&self) -> Vec<(String, u64, Proposal)> {
        self.approvals.pending().map(|(id, exp, p)| (id.to_string(), exp, p.clone())).collect()
    }

    /// Open proposals and the age of the oldest at `now_ms`, in seconds
    /// (0 with none open).
    pub fn waiting(&self, now_ms: i64) -> (usize, f64) {
        let oldest = self.approvals.pending().map(|(_, _, p)| p.proposed_ms).min();
        let age = oldest.map_or(0.0, |t| (now_ms - t).max(0) as f64 / 1000.0);
        (self.approvals.pending().count(), age)
    }

    /// A notice about proposal `id` of `pipeline` (see [`crate::notify::Notice`]).
    fn notice(
        &self,
        kind: crate::notify::Notice,
        id: &str,
        prop: &Proposal,
        expires_at_ms: u64,
        now_ms: i64,
        extra: serde_json::Value,
    ) -> Escalation {
        let others: Vec<serde_json::Value> = self
            .approvals
            .pending()
            .filter(|(o, _, p)| *o != id && p.pipeline == prop.pipeline)
            .map(|(o, exp, p)| serde_json::json!({ "id": o, "action": p.action.name(), "expires_at_ms": exp }))
            .collect();
        let summary = match kind {
            crate::notify::Notice::Proposal => {
                format!("{}: {} proposed, waiting for a human: {}", prop.pipeline, prop.action, prop.reason)
            }
            crate::notify::Notice::Unanswered => format!(
                "{}: nobody answered proposal {id} ({}) in {} s; it expires at {expires_at_ms} (Unix ms)",
                prop.pipeline,
                prop.action,
                (now_ms - prop.proposed_ms).max(0) / 1000
            ),
            _ => format!("{}: proposal {id} ({}) {}", prop.pipeline, prop.action, kind.name()),
        };
        let mut detail = serde_json::json!({
            "notice": kind.name(),
            "decision_id": id,
            "pipeline": prop.pipeline,
            "action": prop.action.name(),
            "why": prop.reason,
            "evidence": prop.evidence,
            "proposed_ms": prop.proposed_ms,
            "expires_at_ms": expires_at_ms,
            "at_ms": now_ms,
            "also_open": others,
        });
        if let (Some(d), serde_json::Value::Object(x)) = (detail.as_object_mut(), extra) {
            d.extend(x);
        }
        Escalation { id: format!("{id}/{}", kind.name()), pipeline: prop.pipeline.clone(), summary, detail }
    }

    /// A proposal was answered or expired: announce it if its pipeline's
    /// people were told about it, and let the next open one (folded into the
    /// message) inherit the telling.
    fn closed(
        &mut self,
        out: &mut Output,
        kind: crate::notify::Notice,
        id: &str,
        prop: &Proposal,
        now_ms: i64,
        extra: serde_json::Value,
    ) {
        let Some(told) = self.told.get_mut(&prop.pipeline) else { return };
        if told.id != id {
            // A folded proposal: its end waits for the next closing message
            // of the pipeline (one message per incident close, listing them).
            let result = extra.get("result").cloned().unwrap_or_else(|| kind.name().into());
            told.ended.push(serde_json::json!({ "id": id, "action": prop.action.name(), "result": result }));
            told.folded = told.folded.saturating_sub(1);
            return;
        }
        let told = told.clone();
        let expires_at_ms = (prop.proposed_ms.max(0) as u64).saturating_add(self.cfg.approval_ttl_ms);
        let mut e = self.notice(kind, id, prop, expires_at_ms, now_ms, extra);
        if let Some(d) = e.detail.as_object_mut().filter(|_| !told.ended.is_empty()) {
            d.insert("ended".into(), told.ended.clone().into());
        }
        out.notices.push(e);
        let next = self
            .approvals
            .pending()
            .filter(|(_, _, p)| p.pipeline == prop.pipeline)
            .map(|(o, _, _)| o.to_string())
            .next();
        match next {
            Some(next) => {
                self.told.insert(
                    prop.pipeline.clone(),
                    Told { id: next, folded: told.folded.saturating_sub(1), nagged: false, ended: Vec::new() },
                );
            }
            None => {
                self.told.remove(&prop.pipeline);
            }
        }
    }

    fn next_id(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", self.run, self.seq)
    }

    /// Decide on one window.
    pub fn on_window(&mut self, w: &Window, now_ms: i64) -> Output {
        self.stats.windows += 1;
        self.clock_ms = self.clock_ms.max(w.ts_ms.max(0) as u64);
        let mut out = Output::default();
        let factory = self.parts.encoder.clone();
        let rules = self.parts.rules.clone();
        let glue = self.parts.glue.clone();
        let supervisor = Supervisor::new(self.cfg.confidence, self.cfg.watchdog);
        let p = self.pipelines.entry(w.pipeline.clone()).or_insert_with(|| Pipeline {
            encoder: factory(),
            rules,
            glue,
            supervisor,
            pending: None,
            score: 0.0,
            trail: Default::default(),
            seen: [false; Metric::COUNT],
            windows: 0,
            last_seen_ms: w.ts_ms,
        });
        let t = &w.telemetry;
        p.windows += 1;
        p.last_seen_ms = p.last_seen_ms.max(w.ts_ms);
        t.present().for_each(|m| p.seen[m.index()] = true);
        if p.windows >= EXPECT_AFTER {
            let missing: Vec<&'static str> =
                self.expected.iter().filter(|m| !p.seen[m.index()]).map(|m| m.name()).collect();
            let before = self.stats.missing.get(&w.pipeline);
            if p.windows == EXPECT_AFTER && !missing.is_empty() {
                tracing::warn!(pipeline = %w.pipeline, missing = ?missing, windows = p.windows,
                    "expected metrics have not arrived: the detector reads them at the healthy baseline and the \
                     reward skips windows without its inputs; publish them or fit the detector on this pipeline");
            }
            if before.map(Vec::as_slice) != Some(missing.as_slice()) {
                if missing.is_empty() {
                    self.stats.missing.remove(&w.pipeline);
                } else {
                    self.stats.missing.insert(w.pipeline.clone(), missing);
                }
            }
        }
        let (state, mask) = p.encoder.encode(t);
        // A detector-v1 encoder has just scored the window; score it once only.
        let detection = p.encoder.last_detection().unwrap_or_else(|| self.parts.detector.detect(t));
        p.score = detection.score;

        // 1. Feedback for the previous decision. An action still in flight has
        // no known effect yet (it may yet fail): it teaches nothing.
        let unknown = |pend: &PendingReward| pend.id.as_ref().is_some_and(|id| self.in_flight.contains(id));
        // No reward without its inputs: such a window teaches nothing.
        let computable = self.parts.reward.computable(t);
        if let Some(mut pend) = p.pending.take().filter(|pend| !unknown(pend)) {
            if !computable && !pend.spoiled {
                pend.spoiled = true;
                self.stats.rewards_skipped += 1;
            }
            if !pend.spoiled {
                let r = self.parts.reward.reward(pend.action, t);
                pend.acc += self.parts.learner.params().gamma.powi(pend.windows as i32) * r;
            }
            pend.windows += 1;
            if pend.windows < self.cfg.reward_windows {
                p.pending = Some(pend);
            } else if !pend.spoiled {
                let i = pend.action.index();
                let q_before = self.parts.learner.table().row(pend.state)[i];
                self.parts.learner.update_online(&Transition {
                    state: pend.state,
                    action: pend.action,
                    reward: pend.acc,
                    steps: pend.windows,
                    next_state: state,
                    next_mask: mask,
                    done: false,
                });
                let q_after = self.parts.learner.table().row(pend.state)[i];
                self.stats.q_updates += 1;
                self.stats.rewards += 1;
                self.stats.reward_sum += pend.acc;
                self.updates_since_checkpoint += 1;
                if let Some(id) = pend.id {
                    let rec = RewardRecord {
                        id,
                        ts_ms: now_ms,
                        reward: pend.acc,
                        windows: pend.windows,
                        next_state: state,
                        action: Some(pend.action.name().to_string()),
                        q_before,
                        q_after,
                    };
                    out.records.push((Record::Reward(rec), false));
                }
            }
        }
        let settling = p.pending.is_some();

        // 2-3. Choice, with the shadow beside it.
        let table = self.parts.learner.table();
        let deciding = deciding_state(table, self.parts.describe.as_ref(), state);
        let greedy = table.best(deciding, mask);
        let (learned, mut probability) = epsilon_greedy(&mut self.rng, self.cfg.epsilon, greedy, mask);
        let obs = Observation { telemetry: t, state, mask, anomalous: detection.anomalous };
        let shadow = p.rules.act(&obs);
        let glue_shadow = p.glue.as_mut().map(|g| g.act(&obs));
        let mut row = [0.0; Action::COUNT];
        row.copy_from_slice(table.row(deciding));
        let mut visits = [0u32; Action::COUNT];
        visits.copy_from_slice(table.visits(deciding));
        let q: Vec<(String, f64)> = mask.iter().map(|a| (a.name().to_string(), row[a.index()])).collect();
        let state_visits = table.state_visits(deciding);
        let finding = selfheal_agent::diagnose::diagnose(t, window_unhealthy(t, detection.anomalous));
        let choice = if settling {
            selfheal_agent::supervise::Choice { action: learned, cause: Cause::Policy }
        } else {
            p.supervisor.choose(Inputs {
                unhealthy: window_unhealthy(t, detection.anomalous),
                held: t.get(Metric::IngestThrottled) > 0.5,
                learned,
                row: &row,
                visits: &visits,
                mask,
                rules: shadow,
                finding,
            })
        };
        let chosen = choice.action;
        if choice.cause != Cause::Policy {
            // Not the behaviour policy's draw: off-policy evaluation must not
            // weigh it as one.
            probability = 1.0;
            *self.stats.overrides.entry(choice.cause).or_default() += 1;
        }

        // 4. Guardrails, after the fleet's lease gate.
        let lease = self.gate.as_ref().map(|g| g.may_act(&w.pipeline, now_ms));
        let standby = matches!(lease, Some(Err(_)));
        let Guarded { verdict, reason, executed, pending: plan } = if let Some(Err(why)) = &lease {
            let would = if chosen == Action::NoOp { String::new() } else { format!("; would {chosen}") };
            Guarded::nothing(Verdict::Observed, format!("not the lease holder: {why}{would}"))
        } else if settling {
            Guarded::nothing(
                Verdict::Noop,
                format!("observing the previous action for {} windows", self.cfg.reward_windows),
            )
        } else {
            let idle = p.supervisor.watchdog().idle();
            let unhealthy = window_unhealthy(t, detection.anomalous);
            self.guard(
                &w.pipeline,
                choice.cause,
                idle,
                unhealthy,
                finding,
                chosen,
                &row,
                &visits,
                mask,
                &detection,
                state,
                now_ms,
            )
        };
        #[allow(clippy::expect_used)] // inserted at the top of on_window, never removed in it
        let p = self.pipelines.get_mut(&w.pipeline).expect("pipeline exists");
        p.encoder.record_action(executed);
        if !settling {
            p.supervisor.record(executed);
        }
        if p.trail.len() == TRAIL {
            p.trail.pop_front();
        }
        p.trail.push_back(serde_json::json!({
            "ts_ms": w.ts_ms, "score": detection.score, "chosen": chosen.name(), "verdict": verdict,
            "state": self.parts.describe.describe(state),
        }));
        let trail: Vec<serde_json::Value> = p.trail.iter().cloned().collect();
        let logged = detection.anomalous || chosen != Action::NoOp || self.cfg.log_healthy;
        let id = if logged || plan.is_some() { Some(self.next_id()) } else { None };
        if self.cfg.learn && !settling && !standby {
            #[allow(clippy::expect_used)] // inserted at the top of on_window, never removed in it
            let p = self.pipelines.get_mut(&w.pipeline).expect("pipeline exists");
            p.pending =
                Some(PendingReward { id: id.clone(), state, action: executed, acc: 0.0, windows: 0, spoiled: false });
        }
        *self.stats.decisions.entry((chosen, verdict)).or_default() += 1;
        let Some(id) = id else { return out };
        let epoch = lease.as_ref().and_then(|l| l.as_ref().ok().copied());
        let key = fenced(format!("{id}/{}", chosen.name()), &w.pipeline, lease);
        let plan = plan.map(|pl| match pl {
            Pending::Act => {
                self.in_flight.insert(id.clone());
                Plan::Act(Order { id: id.clone(), key: key.clone(), pipeline: w.pipeline.clone(), action: chosen })
            }
            Pending::Propose(reason) => {
                let ttl = self.cfg.approval_ttl_ms;
                let sm = summary(w);
                let evidence_json = serde_json::json!({
                    "window": sm, "score": detection.score, "anomalous": detection.anomalous,
                    "signature": detection.signature, "state": self.parts.describe.describe(state),
                    "metrics": evidence(t), "rules": shadow.name(),
                    "glue_builtins": glue_shadow.map(|a| a.name()),
                });
                let prop = Proposal {
                    pipeline: w.pipeline.clone(),
                    action: chosen,
                    reason,
                    proposed_ms: now_ms,
                    epoch,
                    evidence: evidence_json,
                };
                match self.approvals.propose(id.clone(), prop.clone(), now_ms as u64, ttl) {
                    Err(e) => tracing::error!(id = %id, error = %e, "proposal not recorded"),
                    // One message per pipeline and incident: later proposals
                    // while the told one is open are folded into it (and
                    // listed when it closes).
                    Ok(()) => match self.told.get_mut(&w.pipeline) {
                        Some(told) => told.folded += 1,
                        None => {
                            let exp = now_ms as u64 + ttl;
                            out.notices.push(self.notice(
                                crate::notify::Notice::Proposal,
                                &id,
                                &prop,
                                exp,
                                now_ms,
                                serde_json::json!({}),
                            ));
                            self.told.insert(
                                w.pipeline.clone(),
                                Told { id: id.clone(), folded: 0, nagged: false, ended: Vec::new() },
                            );
                        }
                    },
                }
                Plan::Nothing
            }
            Pending::Escalate(summary) => Plan::Escalate(Escalation {
                id: id.clone(),
                pipeline: w.pipeline.clone(),
                summary,
                detail: serde_json::json!({
                    "score": detection.score, "signature": detection.signature, "chosen": chosen.name(),
                    "shadow": shadow.name(), "glue_shadow": glue_shadow.map(|a| a.name()),
                    "state": self.parts.describe.describe(state),
                    "cause": choice.cause.name(), "trail": trail,
                }),
            }),
        });
        let durable = !matches!(plan, None | Some(Plan::Nothing)) || verdict == Verdict::Proposed;
        let rec = DecisionRecord {
            id,
            ts_ms: now_ms,
            pipeline: w.pipeline.clone(),
            window: summary(w),
            score: detection.score,
            anomalous: detection.anomalous,
            signature: detection.signature,
            state,
            state_text: self.parts.describe.describe(state),
            q,
            visits: state_visits,
            chosen,
            probability,
            shadow: shadow.name().into(),
            glue_shadow,
            mode: self.cfg.mode,
            verdict,
            reason,
            idempotency_key: matches!(plan, Some(Plan::Act(_))).then_some(key),
            cause: choice.cause,
            evidence: evidence(t),
            policy_version: self.policy_version,
        };
        out.records.insert(0, (Record::Decision(rec), durable));
        out.plan = plan.filter(|p| *p != Plan::Nothing);
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn guard(
        &mut self,
        pipeline: &str,
        cause: Cause,
        idle: u32,
        unhealthy: bool,
        finding: Option<selfheal_agent::diagnose::Finding>,
        chosen: Action,
        row: &[f64],
        visits: &[u32],
        mask: ActionMask,
        detection: &selfheal_core::Detection,
        state: StateId,
        now_ms: i64,
    ) -> Guarded {
        let escalation = |why: &str| {
            format!(
                "{pipeline}: {why} (anomaly score {:.2}, signature {}, state: {})",
                detection.score,
                detection.signature,
                self.parts.describe.describe(state)
            )
        };
        let explain = || finding.map_or_else(String::new, |f| f.explain());
        if chosen == Action::NoOp {
            if cause == Cause::EvidenceVeto {
                return Guarded::nothing(
                    Verdict::Vetoed,
                    format!("scaling up (or the remedy again) not run: {}", explain()),
                );
            }
            return Guarded::nothing(Verdict::Noop, "the policy chose no action".into());
        }
        if cause == Cause::Policy {
            // A healthy window: acting needs the table's confidence; an
            // unsure choice is not worth a person's attention either. Nor is
            // it on the first unhealthy window with nothing done: one
            // anomalous window is as often a false alarm (2 % of healthy
            // ones by construction) as an incident, so an unsure proposal
            // waits for a second, as a CloudWatch alarm waits for
            // `DatapointsToAlarm`.
            if let Confidence::Unsure { reason, .. } = self.cfg.confidence.check(row, visits, mask, chosen) {
                if !unhealthy {
                    return Guarded::nothing(Verdict::Noop, format!("healthy window, {chosen} not proposed: {reason}"));
                }
                if idle <= 1 {
                    let why = format!("first unhealthy window, {chosen} not proposed yet: {reason}");
                    return Guarded::nothing(Verdict::Noop, why);
                }
            }
        }
        if self.cfg.mode == Mode::Observe {
            return Guarded::nothing(Verdict::Observed, format!("observe mode: would {chosen}"));
        }
        if chosen == Action::Escalate {
            let (why, reason) = if cause == Cause::EvidenceEscalate {
                let why = format!("Glue's metrics name the fault: {}", explain());
                (why.clone(), why)
            } else if cause == Cause::WatchdogEscalate {
                let why = format!("watchdog: {idle} consecutive unhealthy windows with no action and no page");
                (why.clone(), why)
            } else {
                ("the policy hands this incident to a human".into(), "the policy chose to escalate".into())
            };
            let e = escalation(&why);
            return Guarded::escalated(reason, e);
        }
        if let Some(pause) = self.kill.paused() {
            return Guarded::nothing(Verdict::Paused, format!("kill switch: {}", pause.reason));
        }
        // One open proposal per pipeline and action: the same advice again
        // while a human has not answered adds nothing.
        let waiting = self.approvals.pending().find(|(_, _, p)| p.pipeline == pipeline && p.action == chosen);
        let propose = |why: String| match waiting {
            Some((open, exp, p)) => {
                let wall = now_ms;
                let waited = (wall - p.proposed_ms).max(0) / 1000;
                let left = (exp as i64 - wall).max(0) / 1000;
                let why =
                    format!("{why}; waiting for a human: proposal {open} has waited {waited} s, expires in {left} s");
                Guarded::nothing(Verdict::Pending, why)
            }
            None => Guarded {
                verdict: Verdict::Proposed,
                reason: why.clone(),
                executed: Action::NoOp,
                pending: Some(Pending::Propose(why)),
            },
        };
        if self.cfg.mode == Mode::Recommend {
            return propose("recommend mode: waits for approval".to_string());
        }
        if matches!(cause, Cause::GateFallback | Cause::WatchdogFallback | Cause::EvidenceRemedy) {
            // The runbook's or the evidence's action: the table's confidence
            // does not judge it.
            if let Err(denied) = self.budget.check(self.clock_ms, pipeline, chosen) {
                return Guarded::nothing(Verdict::Denied, denied.to_string());
            }
            self.budget.start(self.clock_ms, pipeline, chosen);
            let why = match cause {
                Cause::GateFallback => {
                    "the policy's silence is unsure in an unhealthy window: the rule policy's action".to_string()
                }
                Cause::EvidenceRemedy => format!("Glue's evidence names the fault and its remedy: {}", explain()),
                _ => "watchdog: still unhealthy with nothing done after a page: the rule policy's action".to_string(),
            };
            return Guarded::allowed(why, chosen);
        }
        let trust = self.cfg.confidence.check(row, visits, mask, chosen);
        if let Confidence::Unsure { reason, .. } = trust {
            let why = format!("low confidence: {reason}");
            return if self.cfg.propose_when_unsure {
                propose(why)
            } else {
                let e = escalation(&why);
                Guarded::escalated(why, e)
            };
        }
        let Confidence::Confident { visits, lead } = trust else { unreachable!() };
        if let Err(denied) = self.budget.check(self.clock_ms, pipeline, chosen) {
            return Guarded::nothing(Verdict::Denied, denied.to_string());
        }
        self.budget.start(self.clock_ms, pipeline, chosen);
        Guarded::allowed(format!("confident: {visits} visits, Q lead {lead:.2}"), chosen)
    }

    /// A human approved (`true`) or rejected a proposal.
    pub fn answer(&mut self, id: &str, approve: bool, by: &str, now_ms: i64) -> Answer {
        let now = now_ms as u64;
        let prop = if approve { self.approvals.approve(id, now)? } else { self.approvals.reject(id, now)? };
        let mut out = Output::default();
        let note = if approve { "approved" } else { "rejected" };
        out.records.push((
            Record::Approval(ApprovalRecord {
                id: id.into(),
                ts_ms: now_ms,
                approved: approve,
                by: by.into(),
                note: note.into(),
            }),
            true,
        ));
        let (kind, then) = if approve {
            (crate::notify::Notice::Approved, "approved")
        } else {
            (crate::notify::Notice::Rejected, "rejected")
        };
        let result = if !approve {
            let why = format!("rejected by {by}; {} never ran", prop.action);
            self.outcome(&mut out, id, OutcomeStatus::Rejected, why.clone(), now_ms);
            why
        } else if let Some(pause) = self.kill.paused() {
            let why = format!("approved, but the kill switch is on ({}); not run", pause.reason);
            self.outcome(&mut out, id, OutcomeStatus::Skipped, why.clone(), now_ms);
            why
        } else if let Err(denied) = self.budget.check(self.clock_ms, &prop.pipeline, prop.action) {
            let why = format!("approved, but {denied}; not run");
            self.outcome(&mut out, id, OutcomeStatus::Skipped, why.clone(), now_ms);
            why
        } else if let Some(why) = self.stale(&prop, now_ms) {
            self.outcome(&mut out, id, OutcomeStatus::Skipped, why.clone(), now_ms);
            why
        } else {
            // The gate agreed just now under the proposal's own epoch (or there is no fleet).
            let lease = prop.epoch.map(Ok);
            self.budget.start(self.clock_ms, &prop.pipeline, prop.action);
            self.in_flight.insert(id.to_string());
            out.plan = Some(Plan::Act(Order {
                id: id.into(),
                key: fenced(format!("{id}/{}", prop.action.name()), &prop.pipeline, lease),
                pipeline: prop.pipeline.clone(),
                action: prop.action,
            }));
            format!("approved by {by}: running {} on {}", prop.action, prop.pipeline)
        };
        let extra = serde_json::json!({ "by": by, "answer": then, "result": result });
        self.closed(&mut out, kind, id, &prop, now_ms, extra);
        Ok(out)
    }

    /// Why an approved proposal may not run under the fleet's lease now
    /// (`None`: it may). The gate is asked once: the epoch it answers must
    /// be the one the proposal was raised under.
    fn stale(&self, prop: &Proposal, now_ms: i64) -> Option<String> {
        let gate = self.gate.as_ref()?;
        match (gate.may_act(&prop.pipeline, now_ms), prop.epoch) {
            (Err(lease), _) => Some(format!(
                "approved, but this replica is not the lease holder of {}: {lease}; not run",
                prop.pipeline
            )),
            (Ok(now), Some(then)) if now == then => None,
            (Ok(now), Some(then)) => Some(format!(
                "approved, but proposed under lease epoch {then} of {} and the lease is at epoch {now} now (taken over \
                 since); proposal void, not run",
                prop.pipeline
            )),
            (Ok(now), None) => Some(format!(
                "approved, but proposed without a lease of {} (now epoch {now}); proposal void, not run",
                prop.pipeline
            )),
        }
    }

    fn outcome(&mut self, out: &mut Output, id: &str, status: OutcomeStatus, detail: String, now_ms: i64) {
        *self.stats.outcomes.entry(status).or_default() += 1;
        out.records.push((Record::Outcome(OutcomeRecord { id: id.into(), ts_ms: now_ms, status, detail }), true));
    }

    /// An action finished. A failure is logged as one, teaches Q nothing, and
    /// is escalated.
    pub fn on_executed(&mut self, order: &Order, ok: bool, detail: String, now_ms: i64) -> Output {
        self.budget.finish(&order.pipeline);
        self.in_flight.remove(&order.id);
        let mut out = Output::default();
        let status = if ok { OutcomeStatus::Succeeded } else { OutcomeStatus::Failed };
        self.outcome(&mut out, &order.id, status, detail.clone(), now_ms);
        if !ok {
            self.forget_pending(order);
            out.plan = Some(Plan::Escalate(Escalation {
                id: order.id.clone(),
                pipeline: order.pipeline.clone(),
                summary: format!("{}: {} failed: {detail}", order.pipeline, order.action),
                detail: serde_json::json!({ "action": order.action.name(), "error": detail }),
            }));
        }
        out
    }

    /// An action cancelled at shutdown.
    pub fn on_cancelled(&mut self, order: &Order, now_ms: i64) -> Output {
        self.budget.finish(&order.pipeline);
        self.in_flight.remove(&order.id);
        self.forget_pending(order);
        let mut out = Output::default();
        self.outcome(
            &mut out,
            &order.id,
            OutcomeStatus::Cancelled,
            "cancelled at shutdown; may not have run".into(),
            now_ms,
        );
        out
    }

    /// An action cancelled while it ran because this replica's lease ran low
    /// (a fleet replica, see [`crate::fleet`]): logged as cancelled, teaches
    /// nothing; the replica that takes the lease over acts next.
    pub fn on_lease_lost(&mut self, order: &Order, why: &str, now_ms: i64) -> Output {
        self.budget.finish(&order.pipeline);
        self.in_flight.remove(&order.id);
        self.forget_pending(order);
        let mut out = Output::default();
        let detail = format!("cancelled: {why}; it may have run in part");
        self.outcome(&mut out, &order.id, OutcomeStatus::Cancelled, detail, now_ms);
        out
    }

    /// Drop the pending reward of `order`'s action: it failed or was
    /// cancelled, so its effect is unknown and it teaches nothing.
    fn forget_pending(&mut self, order: &Order) {
        if let Some(p) = self.pipelines.get_mut(&order.pipeline) {
            if p.pending.as_ref().is_some_and(|pend| pend.id.as_deref() == Some(order.id.as_str())) {
                p.pending = None;
            }
        }
    }

    /// Pipelines the core holds state for.
    pub fn live(&self) -> usize {
        self.pipelines.len()
    }

    /// Whether `pipeline`'s state must be kept whatever its idleness: it has
    /// an open proposal, an action in flight, or the reward of an executed
    /// action still pending (a no-op's pending reward does not count: losing
    /// it loses one update of "do nothing").
    pub fn busy(&self, pipeline: &str) -> bool {
        self.approvals.pending().any(|(_, _, p)| p.pipeline == pipeline)
            || self.budget.in_flight().any(|p| p == pipeline)
            || self.pipelines.get(pipeline).and_then(|p| p.pending.as_ref()).is_some_and(|pend| {
                pend.action != Action::NoOp || pend.id.as_ref().is_some_and(|id| self.in_flight.contains(id))
            })
    }

    /// Forget every pipeline whose latest window started more than `idle_ms`
    /// before the telemetry clock (the newest window seen, read no further
    /// than `now_ms`, the wall clock, Unix ms: one sender's clock ahead
    /// cannot make the others idle; see [`crate::window`]), unless it is [`DecisionCore::busy`]: its encoder, supervisor,
    /// trail, pending no-op reward, score and missing-metric gauge go. A
    /// pipeline that comes back starts afresh, as a new one does. The Q table
    /// is shared and keeps all it learned. Returns the names, sorted.
    pub fn evict_idle(&mut self, idle_ms: i64, now_ms: i64) -> Vec<String> {
        let clock = i64::try_from(self.clock_ms).unwrap_or(i64::MAX).min(now_ms);
        let mut gone: Vec<String> = self
            .pipelines
            .iter()
            .filter(|(name, p)| clock.saturating_sub(p.last_seen_ms) > idle_ms && !self.busy(name))
            .map(|(name, _)| name.clone())
            .collect();
        gone.sort();
        for name in &gone {
            self.pipelines.remove(name);
            self.stats.missing.remove(name);
        }
        gone
    }

    /// Expire proposals past their time.
    pub fn on_tick(&mut self, now_ms: i64) -> Output {
        let mut out = Output::default();
        for (id, prop) in self.approvals.expire(now_ms as u64) {
            out.records.push((
                Record::Approval(ApprovalRecord {
                    id: id.clone(),
                    ts_ms: now_ms,
                    approved: false,
                    by: "expiry".into(),
                    note: "expired before a human answered".into(),
                }),
                true,
            ));
            self.outcome(
                &mut out,
                &id,
                OutcomeStatus::Expired,
                format!("{} on {} never ran", prop.action, prop.pipeline),
                now_ms,
            );
            let extra = serde_json::json!({ "result": format!("expired unanswered; {} never ran", prop.action) });
            self.closed(&mut out, crate::notify::Notice::Expired, &id, &prop, now_ms, extra);
        }
        // The proposal watchdog: a told proposal open past the configured
        // time pages that nobody answered (once per proposal).
        if let Some(after) = self.unanswered_after_ms {
            let due: Vec<(String, u64, Proposal)> = self
                .approvals
                .pending()
                .filter(|(id, _, p)| {
                    now_ms.saturating_sub(p.proposed_ms) >= after as i64
                        && self.told.get(&p.pipeline).is_some_and(|t| t.id == *id && !t.nagged)
                })
                .map(|(id, exp, p)| (id.to_string(), exp, p.clone()))
                .collect();
            for (id, exp, prop) in due {
                let e = self.notice(crate::notify::Notice::Unanswered, &id, &prop, exp, now_ms, serde_json::json!({}));
                tracing::warn!(id = %id, pipeline = %prop.pipeline, waited_ms = now_ms - prop.proposed_ms,
                    "nobody answered the proposal; paging");
                out.notices.push(e);
                self.stats.proposals_unanswered += 1;
                if let Some(t) = self.told.get_mut(&prop.pipeline) {
                    t.nagged = true;
                }
            }
        }
        out
    }
}

enum Pending {
    Act,
    Propose(String),
    Escalate(String),
}

/// What the guardrails made of a choice: the verdict, why, the action that
/// runs (a no-op unless allowed or escalated) and what the daemon still has to do.
struct Guarded {
    verdict: Verdict,
    reason: String,
    executed: Action,
    pending: Option<Pending>,
}

impl Guarded {
    /// Nothing runs and nothing follows.
    fn nothing(verdict: Verdict, reason: String) -> Guarded {
        Guarded { verdict, reason, executed: Action::NoOp, pending: None }
    }
    /// The action runs.
    fn allowed(reason: String, action: Action) -> Guarded {
        Guarded { verdict: Verdict::Allowed, reason, executed: action, pending: Some(Pending::Act) }
    }
    /// A person is paged with `page`.
    fn escalated(reason: String, page: String) -> Guarded {
        Guarded {
            verdict: Verdict::Escalated,
            reason,
            executed: Action::Escalate,
            pending: Some(Pending::Escalate(page)),
        }
    }
}

fn summary(w: &Window) -> WindowSummary {
    let t = &w.telemetry;
    WindowSummary {
        ts_ms: w.ts_ms,
        latency_p95_s: t.get(Metric::LatencyP95),
        error_ratio: t.error_ratio(),
        backlog: t.get(Metric::Backlog),
        records_in: t.get(Metric::RecordsIn),
        workers: t.get(Metric::Executors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::Notice;
    use selfheal_agent::{EncoderConfig, GlueSettings, JobShape, QParams, QTable, RuleThresholds, TelemetryEncoder};
    use selfheal_core::{Detection, EncodeState, RewardV1, Slo, Telemetry};

    /// A detector with a fixed answer: the decision core only reads its output.
    struct Fixed(f64);
    impl Detector for Fixed {
        fn id(&self) -> &str {
            "fixed"
        }
        fn signatures(&self) -> u16 {
            1
        }
        fn detect(&self, _t: &Telemetry) -> Detection {
            Detection { score: self.0, anomalous: self.0 > 0.5, signature: u16::from(self.0 > 0.5) }
        }
    }

    fn encoder() -> TelemetryEncoder {
        TelemetryEncoder::new(EncoderConfig {
            worker_levels: vec![2, 4, 8],
            base_level: 1,
            detector: None,
            driver_workers: 0,
        })
    }

    fn window(ts_ms: i64) -> Window {
        let mut t = Telemetry::default();
        t.set(Metric::Executors, 4.0);
        t.set(Metric::RecordsIn, 1000.0);
        t.set(Metric::LatencyP95, 300.0);
        t.set(Metric::RecordsDelivered, 1000.0);
        Window { pipeline: "p".into(), ts_ms, telemetry: t }
    }

    /// A controller whose table makes `ScaleUp` the choice in the test window's
    /// state, with `visits` visits and a lead of `lead`.
    fn controller(mode: Mode, visits: u32, lead: f64) -> DecisionCore {
        let mut enc = encoder();
        let (s, _) = enc.encode(&window(0).telemetry);
        let mut table = QTable::new(enc.num_states());
        let mut q = [-5.0; Action::COUNT];
        q[Action::ScaleUp.index()] = -5.0 + lead;
        table.set_row(s, &q, &[visits / Action::COUNT as u32; Action::COUNT]);
        let th = RuleThresholds {
            retry_error_ratio: None,
            scale_up_cpu: None,
            scale_up_heap: None,
            restart_stalled_ms: None,
            backpressure_backlog_steps: None,
            escalate_after_steps: None,
            base_workers: 4.0,
        };
        let shared = Arc::new(encoder());
        let parts = Parts {
            encoder: Arc::new(|| Box::new(encoder()) as Box<dyn StateEncoder + Send>),
            describe: shared,
            detector: Arc::new(Fixed(0.9)),
            learner: QLearner::from_table(table, selfheal_core::Checked::<QParams>::default(), 1),
            rules: RulesPolicy::new(th, Slo::default()),
            glue: None,
            reward: Box::new(RewardV1::default()),
        };
        let cfg = DecideConfig {
            mode,
            confidence: ConfidenceGate { min_visits: 30, min_lead: 0.5 },
            watchdog: WatchdogConfig::default(),
            propose_when_unsure: true,
            approval_ttl_ms: 1000,
            budget: BudgetConfig { actions_per_hour: 2, cooldown_secs: 0, blast_radius: 5 },
            reward_windows: 1,
            learn: true,
            epsilon: 0.0,
            log_healthy: false,
            seed: 1,
        };
        DecisionCore::new(cfg, parts, "t".into())
    }

    fn decision(out: &Output) -> &DecisionRecord {
        match &out.records[0].0 {
            Record::Decision(d) => d,
            other => panic!("expected a decision first, got {other:?}"),
        }
    }

    #[test]
    fn confident_act_mode_acts_with_a_durable_record_first() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        let out = c.on_window(&window(0), 0);
        let d = decision(&out);
        assert_eq!((d.chosen.name(), d.verdict), ("scale_up", Verdict::Allowed));
        assert!(out.records[0].1, "an acting decision is durable before the action");
        assert_eq!(d.probability, 1.0);
        let Some(Plan::Act(o)) = &out.plan else { panic!("no action planned") };
        assert_eq!(d.idempotency_key.as_deref(), Some(o.key.as_str()));
    }

    #[test]
    fn an_unsure_action_in_a_healthy_window_is_neither_run_nor_proposed() {
        for mode in [Mode::Act, Mode::Recommend] {
            let mut c = controller(mode, 1000, 0.1);
            c.parts.detector = Arc::new(Fixed(0.1));
            let mut w = window(0);
            w.telemetry.set(Metric::LatencyP95, 30.0);
            let out = c.on_window(&w, 0);
            let d = decision(&out);
            assert_eq!((d.chosen.name(), d.verdict), ("scale_up", Verdict::Noop), "{mode:?}: {d:?}");
            assert!(d.reason.contains("healthy window") && d.reason.contains("lead"), "{}", d.reason);
            assert!(out.plan.is_none() && c.approvals.pending().next().is_none(), "{mode:?}: nothing asked of anyone");
            // The same unsure choice in an unhealthy window waits one
            // window (a lone anomalous window is often a false alarm), then
            // is proposed.
            let mut c = controller(mode, 1000, 0.1);
            let out = c.on_window(&window(60_000), 60_000);
            let d = decision(&out);
            assert_eq!(d.verdict, Verdict::Noop, "{mode:?}: {d:?}");
            assert!(d.reason.contains("first unhealthy window"), "{}", d.reason);
            let out = c.on_window(&window(120_000), 120_000);
            assert_eq!(decision(&out).verdict, Verdict::Proposed, "{mode:?}");
        }
    }

    #[test]
    fn glue_builtins_are_logged_beside_the_rules_as_a_second_shadow() {
        let mut c = controller(Mode::Observe, 1000, 2.0);
        let out = c.on_window(&window(0), 0);
        assert_eq!(decision(&out).glue_shadow, None);
        let line = serde_json::to_string(decision(&out)).unwrap();
        assert!(!line.contains("glue_shadow"), "absent when not run: {line}");
        let mut c = controller(Mode::Observe, 1000, 2.0);
        let s = GlueSettings {
            max_retries: 3,
            timeout_minutes: 10,
            notify_delay_after_minutes: Some(15),
            auto_scaling: true,
            min_workers: 2,
            max_workers: 8,
            scale_in_cpu_load: 0.4,
        };
        let shape = JobShape { worker_levels: vec![2, 4, 8], step_seconds: 60 };
        c.parts.glue = Some(GlueBuiltinsPolicy::new(s, &shape).unwrap());
        let mut w = window(0);
        w.telemetry.set(Metric::ErrorsAll, 1.0);
        let out = c.on_window(&w, 0);
        let d = decision(&out);
        assert_eq!(d.glue_shadow, Some(Action::RetryWithBackoff), "a failed run is retried");
        assert_eq!(d.shadow, "noop", "the rules (all off here) are logged apart");
        let line = serde_json::to_string(d).unwrap();
        assert!(line.contains("\"glue_shadow\":\"retry_with_backoff\""), "{line}");
        let back: DecisionRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back.glue_shadow, Some(Action::RetryWithBackoff));
    }

    #[test]
    fn observe_mode_never_acts() {
        let mut c = controller(Mode::Observe, 1000, 2.0);
        let out = c.on_window(&window(0), 0);
        assert_eq!(decision(&out).verdict, Verdict::Observed);
        assert!(out.plan.is_none());
    }

    #[test]
    fn low_visits_or_small_lead_become_one_proposal() {
        for (visits, lead) in [(10, 2.0), (1000, 0.1)] {
            let mut c = controller(Mode::Act, visits, lead);
            // (The first unhealthy window waits: see the healthy-window test.)
            assert_eq!(decision(&c.on_window(&window(0), 0)).verdict, Verdict::Noop);
            let out = c.on_window(&window(60_000), 1);
            assert_eq!(decision(&out).verdict, Verdict::Proposed, "visits {visits} lead {lead}");
            assert!(out.plan.is_none());
            let again = c.on_window(&window(120_000), 2);
            assert_eq!(decision(&again).verdict, Verdict::Pending, "the same advice is not proposed twice");
            assert_eq!(c.pending().len(), 1);
        }
    }

    /// Make `ScaleDown` the learner's choice in `state` (a lead of 2 over
    /// the rest, 1000 visits each): the next proposal is another action.
    fn prefer_scale_down(c: &mut DecisionCore, state: StateId) {
        let mut t = c.learner().table().clone();
        let mut q = [-5.0; Action::COUNT];
        q[Action::ScaleDown.index()] = -3.0;
        t.set_row(state, &q, &[1000; Action::COUNT]);
        c.parts.learner = QLearner::from_table(t, selfheal_core::Checked::<QParams>::default(), 1);
    }

    /// The kinds of the notices `out` sends, in order.
    fn kinds(out: &Output) -> Vec<Notice> {
        out.notices.iter().map(|n| Notice::of(n).unwrap()).collect()
    }

    #[test]
    fn proposals_are_told_once_per_pipeline_and_their_end_is_announced() {
        let mut c = controller(Mode::Recommend, 1000, 2.0);
        c.set_unanswered_after(Some(300));
        let first = c.on_window(&window(0), 0);
        assert_eq!(kinds(&first), [Notice::Proposal]);
        let id = decision(&first).id.clone();
        let n = &first.notices[0];
        assert_eq!(n.id, format!("{id}/proposal"));
        assert_eq!(n.detail["expires_at_ms"], 1000);
        assert_eq!(n.detail["evidence"]["state"], c.parts.describe.describe(decision(&first).state));
        assert_eq!(n.detail["evidence"]["rules"], "noop");
        // The same advice again waits, saying for how long; nothing is sent.
        let again = c.on_window(&window(60_000), 200);
        assert_eq!(decision(&again).verdict, Verdict::Pending);
        assert!(
            decision(&again).reason.contains(&format!("proposal {id} has waited 0 s")),
            "{}",
            decision(&again).reason
        );
        assert!(again.notices.is_empty());
        // A second proposal of the pipeline (another action) is folded.
        prefer_scale_down(&mut c, decision(&first).state);
        let other = c.on_window(&window(120_000), 250);
        assert_eq!((decision(&other).chosen.name(), decision(&other).verdict), ("scale_down", Verdict::Proposed));
        assert!(other.notices.is_empty(), "folded into the told proposal");
        assert_eq!(c.waiting(1250), (2, 1.25));
        // Unanswered past 300 ms: one page, once.
        assert_eq!(kinds(&c.on_tick(301)), [Notice::Unanswered]);
        assert!(c.on_tick(400).notices.is_empty());
        // The answer is announced, listing what is still open.
        let out = c.answer(&id, false, "test", 500).unwrap();
        assert_eq!(kinds(&out), [Notice::Rejected]);
        assert_eq!(out.notices[0].detail["also_open"][0]["action"], "scale_down");
        // The folded one inherits the telling: its expiry is announced.
        let out = c.on_tick(2000);
        assert_eq!(kinds(&out), [Notice::Expired]);
        assert_eq!(c.waiting(2000), (0, 0.0));
    }

    #[test]
    fn a_folded_proposals_end_is_announced_in_the_next_closing_message() {
        let mut c = controller(Mode::Recommend, 100_000, 2.0);
        let first = c.on_window(&window(0), 0);
        let told = decision(&first).id.clone();
        // A second proposal (another action) is folded into the told one.
        prefer_scale_down(&mut c, decision(&first).state);
        let other = c.on_window(&window(60_000), 10);
        let folded = decision(&other).id.clone();
        assert!(other.notices.is_empty(), "folded");
        // The folded one is answered first: no message of its own...
        let out = c.answer(&folded, false, "ops", 20).unwrap();
        assert!(out.notices.is_empty(), "still folded: {:?}", kinds(&out));
        // ...and its end is listed in the told one's closing message.
        let out = c.answer(&told, true, "ops", 30).unwrap();
        assert_eq!(kinds(&out), [Notice::Approved]);
        let ended = &out.notices[0].detail["ended"];
        assert_eq!(ended[0]["id"], folded.as_str(), "{ended}");
        assert_eq!(ended[0]["action"], "scale_down");
        assert!(ended[0]["result"].as_str().unwrap().contains("rejected"), "{ended}");
    }

    #[test]
    fn kill_switch_pauses_and_budget_denies() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        c.kill_switch().pause("test".into(), 0);
        assert_eq!(decision(&c.on_window(&window(0), 0)).verdict, Verdict::Paused);
        c.kill_switch().resume();
        let mut verdicts = Vec::new();
        for i in 1..=3 {
            let out = c.on_window(&window(i * 60_000), i);
            if let Some(Plan::Act(o)) = &out.plan {
                let done = c.on_executed(o, true, "ok".into(), i);
                assert!(done.plan.is_none());
            }
            verdicts.push(decision(&out).verdict);
        }
        assert_eq!(verdicts, [Verdict::Allowed, Verdict::Allowed, Verdict::Denied], "2 actions per hour");
        // An hour of telemetry time later the budget is back.
        assert_eq!(decision(&c.on_window(&window(3_700_000), 10)).verdict, Verdict::Allowed);
    }

    #[test]
    fn recommend_mode_runs_only_what_is_approved_in_time() {
        let mut c = controller(Mode::Recommend, 1000, 2.0);
        let id = decision(&c.on_window(&window(0), 0)).id.clone();
        let out = c.answer(&id, true, "test", 500).unwrap();
        assert!(matches!(out.plan, Some(Plan::Act(ref o)) if o.action == Action::ScaleUp));
        assert!(c.answer(&id, true, "test", 600).is_err(), "approved once only");
        let late = decision(&c.on_window(&window(60_000), 700)).id.clone();
        let expired = c.on_tick(2000);
        assert!(expired.records.iter().any(|(r, _)| matches!(r, Record::Outcome(o) if o.status == "expired")));
        assert!(c.answer(&late, true, "test", 2001).is_err(), "an expired proposal never runs");
        let rejected = decision(&c.on_window(&window(120_000), 3000)).id.clone();
        let out = c.answer(&rejected, false, "test", 3001).unwrap();
        assert!(out.plan.is_none());
    }

    #[test]
    fn failure_is_escalated_and_teaches_nothing() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        let out = c.on_window(&window(0), 0);
        let Some(Plan::Act(o)) = out.plan.clone() else { panic!("no action") };
        let q_before = c.learner().table().row(decision(&out).state)[Action::ScaleUp.index()];
        let done = c.on_executed(&o, false, "exit 1".into(), 1);
        assert!(matches!(&done.records[0].0, Record::Outcome(r) if r.status == "failed"));
        assert!(matches!(done.plan, Some(Plan::Escalate(_))));
        let next = c.on_window(&window(60_000), 2);
        assert!(!next.records.iter().any(|(r, _)| matches!(r, Record::Reward(_))));
        assert_eq!(c.learner().table().row(decision(&out).state)[Action::ScaleUp.index()], q_before);
    }

    #[test]
    fn an_action_still_in_flight_teaches_nothing() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        assert!(matches!(c.on_window(&window(0), 0).plan, Some(Plan::Act(_))));
        let next = c.on_window(&window(60_000), 1);
        assert!(!next.records.iter().any(|(r, _)| matches!(r, Record::Reward(_))));
        assert_eq!(c.stats.q_updates, 0);
    }

    #[test]
    fn a_succeeded_action_is_rewarded_and_updates_q() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        let out = c.on_window(&window(0), 0);
        let Some(Plan::Act(o)) = out.plan else { panic!("no action") };
        c.on_executed(&o, true, "ok".into(), 1);
        let next = c.on_window(&window(60_000), 2);
        let reward = next.records.iter().find_map(|(r, _)| match r {
            Record::Reward(r) => Some(r.clone()),
            _ => None,
        });
        let r = reward.expect("a reward record for the acting decision");
        assert_eq!(r.id, o.id);
        assert_ne!(r.q_before, r.q_after);
        assert_eq!(c.stats.q_updates, 1);
    }

    #[test]
    fn a_window_without_the_rewards_inputs_teaches_nothing_and_the_gap_is_named() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        let glue_only = |ts| {
            let mut w = window(ts);
            w.telemetry.clear(Metric::RecordsDelivered);
            w
        };
        let out = c.on_window(&glue_only(0), 0);
        let Some(Plan::Act(o)) = out.plan else { panic!("no action") };
        c.on_executed(&o, true, "ok".into(), 1);
        let next = c.on_window(&glue_only(60_000), 2);
        assert!(!next.records.iter().any(|(r, _)| matches!(r, Record::Reward(_))), "no reward without its inputs");
        assert_eq!((c.stats.q_updates, c.stats.rewards_skipped), (0, 1));
        assert!(c.stats.missing.is_empty(), "not judged before {EXPECT_AFTER} windows");
        c.on_window(&glue_only(120_000), 3);
        assert_eq!(c.stats.missing["p"], vec!["pipeline.records.delivered"]);
        let text = crate::metrics::render(&crate::metrics::Snapshot { stats: c.stats.clone(), ..Default::default() });
        assert!(
            text.contains("selfheal_expected_metric_missing{pipeline=\"p\",metric=\"pipeline.records.delivered\"} 1")
        );
        // Once it arrives, the gap closes.
        c.on_window(&window(180_000), 4);
        assert!(c.stats.missing.is_empty());
    }

    #[test]
    fn idle_pipelines_are_evicted_but_one_with_an_open_proposal_is_kept() {
        // Recommend mode: the first window's action becomes a proposal.
        let mut c = controller(Mode::Recommend, 1000, 2.0);
        let named = |name: &str, ts: i64| Window { pipeline: name.into(), ..window(ts) };
        for name in ["asks", "quiet", "busy"] {
            assert_eq!(decision(&c.on_window(&named(name, 0), 0)).verdict, Verdict::Proposed);
        }
        // Only `asks` keeps its proposal open.
        for (id, _, p) in c.pending() {
            if p.pipeline != "asks" {
                c.answer(&id, false, "test", 1).unwrap();
            }
        }
        assert!(c.evict_idle(600_000, 0).is_empty(), "nothing idle yet");
        // Ten minutes later on the telemetry clock only `busy` reported again.
        c.on_window(&named("busy", 660_000), 1);
        assert_eq!(c.live(), 3);
        // The wall clock (second argument) bounds the telemetry clock.
        assert!(c.evict_idle(600_000, 1).is_empty(), "the wall clock is not there yet");
        assert_eq!(c.evict_idle(600_000, 660_000), vec!["quiet".to_string()]);
        assert!(c.busy("asks") && c.scores().iter().any(|(p, _)| p == "asks"), "an open proposal keeps its pipeline");
        assert!(!c.scores().iter().any(|(p, _)| p == "quiet"), "its gauge goes with it");
        // Once the proposal is answered, the idle pipeline goes too.
        let id = c.pending()[0].0.clone();
        c.answer(&id, false, "test", 2).unwrap();
        assert_eq!(c.evict_idle(600_000, 660_001), vec!["asks".to_string()]);
        assert_eq!(c.live(), 1);
        // One sender a day ahead of the wall clock evicts nobody else.
        c.on_window(&named("ahead", 86_400_000), 3);
        c.on_window(&named("busy", 720_000), 4);
        assert!(c.evict_idle(600_000, 720_000).is_empty(), "the clock is read no further than the wall clock");
        assert_eq!(c.live(), 2);
    }

    #[test]
    fn a_discovered_metric_set_names_the_gap_before_the_first_window() {
        let mut c = controller(Mode::Act, 1000, 2.0);
        let all: Vec<Metric> = Metric::ALL.to_vec();
        c.expect_published("p", &all);
        assert!(c.stats.missing.is_empty());
        let without: Vec<Metric> = all.iter().copied().filter(|m| *m != Metric::RecordsDelivered).collect();
        c.expect_published("p", &without);
        assert_eq!(c.stats.missing["p"], vec!["pipeline.records.delivered"]);
    }

    /// A gate that holds `p` at epoch 7 and nothing else.
    struct Gate;
    impl ActGate for Gate {
        fn may_act(&self, pipeline: &str, _now_ms: i64) -> Result<u64, String> {
            if pipeline == "p" {
                Ok(7)
            } else {
                Err("held by replica-b (epoch 3)".into())
            }
        }
    }

    #[test]
    fn a_fleet_replica_acts_only_under_its_lease_and_stamps_the_epoch() {
        let mut c = controller(Mode::Act, 300, 2.0);
        c.set_gate(Arc::new(Gate));
        let out = c.on_window(&window(0), 0);
        let d = decision(&out);
        assert_eq!((d.chosen.name(), d.verdict.as_str()), ("scale_up", "allowed"));
        let Some(Plan::Act(o)) = &out.plan else { panic!("no action: {:?}", out.plan) };
        assert!(o.key.ends_with("/scale_up@7"), "the key carries the epoch: {}", o.key);
        assert_eq!(selfheal_fleet::FencingToken::parse_idempotency_key(&o.key).map(|(_, e)| e), Some(7));
        assert_eq!(d.idempotency_key.as_deref(), Some(o.key.as_str()));

        // Another replica's pipeline: observed, logged, nothing run, nothing learned.
        let mut c = controller(Mode::Act, 300, 2.0);
        c.set_gate(Arc::new(Gate));
        let other = Window { pipeline: "q".into(), ..window(0) };
        let out = c.on_window(&other, 0);
        let d = decision(&out);
        assert_eq!(d.verdict.as_str(), "observed");
        assert!(d.reason.starts_with("not the lease holder: held by replica-b (epoch 3)"), "{}", d.reason);
        assert!(d.reason.ends_with("would scale_up"), "{}", d.reason);
        assert_eq!((out.plan.clone(), d.idempotency_key.clone()), (None, None));
        let before = c.learner().table().clone();
        let _ = c.on_window(&Window { ts_ms: 60_000, ..other.clone() }, 1);
        assert_eq!(c.learner().table(), &before, "a standby's window teaches nothing");
    }

    /// A gate holding `p` at a settable epoch, counting its calls.
    #[derive(Default)]
    struct Epochs {
        epoch: std::sync::atomic::AtomicU64,
        calls: std::sync::atomic::AtomicU64,
    }
    impl ActGate for Epochs {
        fn may_act(&self, _pipeline: &str, _now_ms: i64) -> Result<u64, String> {
            use std::sync::atomic::Ordering::SeqCst;
            self.calls.fetch_add(1, SeqCst);
            Ok(self.epoch.load(SeqCst))
        }
    }

    #[test]
    fn an_approval_runs_only_under_the_lease_epoch_it_was_proposed_under() {
        use std::sync::atomic::Ordering::SeqCst;
        let gate = Arc::new(Epochs::default());
        gate.epoch.store(7, SeqCst);
        let mut c = controller(Mode::Recommend, 1000, 2.0);
        c.set_gate(gate.clone());
        let stale = decision(&c.on_window(&window(0), 0)).id.clone();
        // Taken over and taken back: the lease is ours again, at a newer epoch.
        gate.epoch.store(8, SeqCst);
        let calls = gate.calls.load(SeqCst);
        let out = c.answer(&stale, true, "ops", 10).unwrap();
        assert_eq!(gate.calls.load(SeqCst), calls + 1, "the gate is asked once per answer");
        assert!(out.plan.is_none(), "a stale approval runs nothing: {:?}", out.plan);
        let o = out
            .records
            .iter()
            .find_map(|(r, _)| match r {
                Record::Outcome(o) if o.id == stale => Some(o.clone()),
                _ => None,
            })
            .expect("an outcome for the void proposal");
        assert_eq!(o.status, OutcomeStatus::Skipped);
        assert!(
            o.detail.contains("epoch 7") && o.detail.contains("epoch 8") && o.detail.contains("void"),
            "{}",
            o.detail
        );
        // Proposed and approved under the same epoch: it runs, stamped with it.
        let fresh = decision(&c.on_window(&window(60_000), 20)).id.clone();
        let out = c.answer(&fresh, true, "ops", 30).unwrap();
        let Some(Plan::Act(order)) = &out.plan else { panic!("not run: {:?}", out.records) };
        assert!(order.key.ends_with("@8"), "{}", order.key);
    }

    #[test]
    fn a_policy_swap_is_refused_on_another_shape_and_named_in_every_later_decision() {
        let mut c = controller(Mode::Act, 300, 2.0);
        assert_eq!(decision(&c.on_window(&window(0), 0)).policy_version, None);
        let n = c.learner().table().num_states();
        let err = c.swap_table(QTable::new(n + 1), 4).unwrap_err();
        assert!(err.contains("policy version 4"), "{err}");
        assert_eq!(c.policy_version(), None, "the old table stays");
        // The new version's table: scale_down leads now.
        let mut t = QTable::new(n);
        let (s, _) = encoder().encode(&window(0).telemetry);
        let mut q = [-5.0; Action::COUNT];
        q[Action::ScaleDown.index()] = -3.0;
        t.set_row(s, &q, &[300 / Action::COUNT as u32; Action::COUNT]);
        c.swap_table(t.clone(), 5).unwrap();
        assert_eq!(c.policy_version(), Some(5));
        assert_eq!(c.learner().table().row(s), t.row(s));
        let out = c.on_window(&window(120_000), 2);
        assert_eq!(decision(&out).policy_version, Some(5));
    }
}
