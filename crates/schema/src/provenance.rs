//! The sidecar's provenance log records: one line of `provenance.jsonl` each.
//!
//! The sidecar writes these types (`selfheal_sidecar::provenance` re-exports
//! them and keeps the storage: appends, rotation, reading, queries); `report`,
//! `shadow`, `ope` and `selfheal log` read the same types, so a field changed
//! here changes for writer and readers at once. Verdict, outcome status, mode
//! and actions are enums spelled in JSON exactly as the string fields of
//! earlier versions were, so logs written before load unchanged.

use selfheal_agent::Cause;
use selfheal_core::Action;
use selfheal_guard::Mode;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What the guardrails made of a decision, as written in `verdict`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Nothing to do (or observing the previous action's effect).
    Noop,
    /// Observe mode: the action was only logged.
    Observed,
    /// Proposed to a human; waits for approval.
    Proposed,
    /// The same advice is already waiting for an answer.
    Pending,
    /// The guardrails let it run.
    Allowed,
    /// Handed to a human (a page).
    Escalated,
    /// The pipeline's breaker or a pause holds actions back.
    Paused,
    /// A guardrail (rate limit, blast radius, ...) refused it.
    Denied,
    /// The evidence vetoed the policy's remedy (e.g. scaling up a failing job).
    Vetoed,
}

impl Verdict {
    /// Every verdict.
    pub const ALL: [Verdict; 9] = [
        Verdict::Noop,
        Verdict::Observed,
        Verdict::Proposed,
        Verdict::Pending,
        Verdict::Allowed,
        Verdict::Escalated,
        Verdict::Paused,
        Verdict::Denied,
        Verdict::Vetoed,
    ];

    /// The name written in the log (`noop`, `allowed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Noop => "noop",
            Verdict::Observed => "observed",
            Verdict::Proposed => "proposed",
            Verdict::Pending => "pending",
            Verdict::Allowed => "allowed",
            Verdict::Escalated => "escalated",
            Verdict::Paused => "paused",
            Verdict::Denied => "denied",
            Verdict::Vetoed => "vetoed",
        }
    }

    /// The verdict written as `name`, if any.
    pub fn from_name(name: &str) -> Option<Verdict> {
        Verdict::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

/// How a decision ended, as written in an outcome's `status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeStatus {
    /// The action ran and its calls succeeded.
    Succeeded,
    /// The action ran and failed.
    Failed,
    /// A proposal nobody answered in time.
    Expired,
    /// A proposal a human rejected.
    Rejected,
    /// Not run (e.g. superseded, or nothing to do).
    Skipped,
    /// Stopped before it finished (e.g. at shutdown).
    Cancelled,
}

impl OutcomeStatus {
    /// Every status.
    pub const ALL: [OutcomeStatus; 6] = [
        OutcomeStatus::Succeeded,
        OutcomeStatus::Failed,
        OutcomeStatus::Expired,
        OutcomeStatus::Rejected,
        OutcomeStatus::Skipped,
        OutcomeStatus::Cancelled,
    ];

    /// The name written in the log (`succeeded`, `failed`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeStatus::Succeeded => "succeeded",
            OutcomeStatus::Failed => "failed",
            OutcomeStatus::Expired => "expired",
            OutcomeStatus::Rejected => "rejected",
            OutcomeStatus::Skipped => "skipped",
            OutcomeStatus::Cancelled => "cancelled",
        }
    }

    /// The status written as `name`, if any.
    pub fn from_name(name: &str) -> Option<OutcomeStatus> {
        OutcomeStatus::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

macro_rules! named {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
named!(Verdict);
named!(OutcomeStatus);

/// What to tell a human (a page), as carried by an escalation's `raised` record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// The decision id (also the idempotency key).
    pub id: String,
    /// The pipeline concerned.
    pub pipeline: String,
    /// One-line provenance summary.
    pub summary: String,
    /// Structured facts: score, signature, chosen action, verdict, reason, ...
    pub detail: serde_json::Value,
}

/// One line of the provenance log. All records of one decision share its `id`.
///
/// Decisions are most of the lines, so boxing the largest variant would add an
/// allocation to the common record to shrink the rare ones: the size
/// difference is accepted.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// The agent decided something about a pipeline (possibly to do nothing).
    Decision(DecisionRecord),
    /// A human approved or rejected a proposal, or it expired.
    Approval(ApprovalRecord),
    /// One attempt of one call to a downstream endpoint.
    Call(CallRecord),
    /// How the decision ended: succeeded, failed, expired, rejected, skipped, cancelled.
    Outcome(OutcomeRecord),
    /// The reward observed after the decision and the Q update it caused.
    Reward(RewardRecord),
    /// A notification sent to a human, delivered or not.
    Escalation(EscalationRecord),
}

/// The telemetry window a decision was made on, reduced to what a human reads first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowSummary {
    /// Start of the window (its period), Unix ms.
    pub ts_ms: i64,
    /// p95 latency in seconds.
    pub latency_p95_s: f64,
    /// Fraction of failed records or requests, 0..1.
    pub error_ratio: f64,
    /// Backlog / queue depth.
    pub backlog: f64,
    /// Records read in the window.
    pub records_in: f64,
    /// Workers (executors) the job ran with.
    pub workers: f64,
}

/// A decision: what was seen, what the agent and the rules would do, what the guardrails said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    /// Decision id, shared by every later record of this decision.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// The pipeline decided about.
    pub pipeline: String,
    /// The telemetry window.
    pub window: WindowSummary,
    /// Anomaly score, 0..1.
    pub score: f64,
    /// Whether the detector flagged the window.
    pub anomalous: bool,
    /// Failure signature (k-means cluster) of the window.
    pub signature: u16,
    /// Discrete state id.
    pub state: u32,
    /// The state in words.
    pub state_text: String,
    /// Action name → Q value, for every allowed action.
    pub q: Vec<(String, f64)>,
    /// Visit count of the state.
    pub visits: u64,
    /// The chosen action, written as its log name (`noop`, `scale_up`, ...).
    #[serde(with = "action_name_req")]
    pub chosen: Action,
    /// Probability with which the behaviour policy chose it (for off-policy
    /// evaluation); a non-finite value is written `null` and read back as NaN.
    #[serde(deserialize_with = "crate::float::nan")]
    pub probability: f64,
    /// The rule policy's choice in the same situation.
    pub shadow: String,
    /// What AWS Glue's built-ins (`glue-builtins`) would have done, when the
    /// sidecar runs them as a second shadow; absent in older logs.
    /// (An action, not a name, so a decision record stays small.)
    #[serde(default, skip_serializing_if = "Option::is_none", with = "action_name")]
    pub glue_shadow: Option<Action>,
    /// Operating mode: observe, recommend or act.
    pub mode: Mode,
    /// Guardrail verdict.
    pub verdict: Verdict,
    /// Why, in words.
    pub reason: String,
    /// Idempotency key of the action, if one was started or proposed.
    pub idempotency_key: Option<String>,
    /// Why the policy stack chose it: `policy`, `gate_fallback`,
    /// `watchdog_escalate` or `watchdog_fallback` (empty in older logs).
    #[serde(default)]
    pub cause: Cause,
    /// Evidence beyond the detector in the window (job runs that failed and
    /// why, Glue's error categories, the driver heap): `metric=value`, absent
    /// in records of older versions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<String>,
    /// The shared policy version (S3 policy store, `versions/v{n:06}.json`)
    /// whose Q table made the decision; absent for a replica without a
    /// policy store and in records of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
}

/// A human approved or rejected a proposal, or it expired.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Decision id.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// Approved (true) or rejected / expired (false).
    pub approved: bool,
    /// Who answered: "http", "cli" or "expiry".
    pub by: String,
    /// Free text given with the answer.
    pub note: String,
}

/// One attempt of one call to a downstream endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Decision id.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// The endpoint called (e.g. `glue.StartJobRun`).
    pub endpoint: String,
    /// Attempt number, 1-based.
    pub attempt: u32,
    /// Whether the attempt succeeded.
    pub ok: bool,
    /// How long it took.
    pub duration_ms: u64,
    /// The timeout it ran under.
    pub timeout_ms: u64,
    /// The error, if it failed.
    pub error: Option<String>,
    /// Idempotency key sent with the call.
    pub idempotency_key: String,
}

/// How a decision ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// Decision id.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// How it ended.
    pub status: OutcomeStatus,
    /// Details in words.
    pub detail: String,
}

/// The reward observed after a decision and the Q update made with it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardRecord {
    /// Decision id.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// The reward.
    pub reward: f64,
    /// Over how many windows it was observed.
    pub windows: u32,
    /// The state reached.
    pub next_state: u32,
    /// The action whose Q value was updated: the one executed, which is
    /// `noop` for a proposal that did not run (absent in older logs: the
    /// decision's chosen action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Q(state, action) before the update.
    pub q_before: f64,
    /// Q(state, action) after the update.
    pub q_after: f64,
}

/// A notification to a human (a page) and what became of it.
///
/// A page has several records: `raised` (durable, before the first attempt,
/// carrying the page itself so that a restarted daemon can redeliver it), then
/// one per failed attempt, `fallback` when it was also written to the second
/// channel, and finally `delivered` or `permanent_failure`. Logs of older
/// versions have a single record per escalation and no `phase`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EscalationRecord {
    /// Decision id.
    pub id: String,
    /// Wall clock of the daemon, Unix ms.
    pub ts_ms: i64,
    /// Whether it was delivered (true only on the `delivered` record).
    pub delivered: bool,
    /// Delivery attempts made so far (across restarts).
    pub attempts: u32,
    /// Where it went, or why it failed.
    pub detail: String,
    /// Which step of the page's life this record is (absent in older logs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PagePhase>,
    /// The webhook's HTTP status, for an attempt that got an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The page itself, on the `raised` record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<Escalation>,
}

impl EscalationRecord {
    /// A record of `phase` for page `id`.
    pub fn new(id: &str, ts_ms: i64, phase: PagePhase, attempts: u32, detail: String) -> EscalationRecord {
        EscalationRecord {
            id: id.to_owned(),
            ts_ms,
            delivered: phase == PagePhase::Delivered,
            attempts,
            detail,
            phase: Some(phase),
            status: None,
            page: None,
        }
    }
}

/// The steps of a page's life in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PagePhase {
    /// Written before the first attempt: the page is owed to a human.
    Raised,
    /// An attempt failed transiently; it will be retried.
    AttemptFailed,
    /// The page was also written to the second channel.
    Fallback,
    /// The webhook accepted it (2xx). The page's last record.
    Delivered,
    /// The webhook refused it for good (a 4xx other than 408/425/429). The
    /// page's last record on the webhook; it went to the second channel.
    PermanentFailure,
    /// No webhook is configured: the page is only in this log.
    LoggedOnly,
}

impl PagePhase {
    /// The phase in words, as `selfheal log` prints it.
    pub fn name(self) -> &'static str {
        match self {
            PagePhase::Raised => "raised",
            PagePhase::AttemptFailed => "attempt failed",
            PagePhase::Fallback => "written to the fallback channel",
            PagePhase::Delivered => "delivered",
            PagePhase::PermanentFailure => "refused by the webhook (permanent)",
            PagePhase::LoggedOnly => "logged only (no webhook)",
        }
    }
}

impl Record {
    /// The decision id this record belongs to.
    pub fn id(&self) -> &str {
        match self {
            Record::Decision(r) => &r.id,
            Record::Approval(r) => &r.id,
            Record::Call(r) => &r.id,
            Record::Outcome(r) => &r.id,
            Record::Reward(r) => &r.id,
            Record::Escalation(r) => &r.id,
        }
    }

    /// When the record was written, Unix ms (daemon wall clock).
    pub fn ts_ms(&self) -> i64 {
        match self {
            Record::Decision(r) => r.ts_ms,
            Record::Approval(r) => r.ts_ms,
            Record::Call(r) => r.ts_ms,
            Record::Outcome(r) => r.ts_ms,
            Record::Reward(r) => r.ts_ms,
            Record::Escalation(r) => r.ts_ms,
        }
    }

    /// The pipeline, for decision records (other records name it only through their decision).
    pub fn pipeline(&self) -> Option<&str> {
        match self {
            Record::Decision(r) => Some(&r.pipeline),
            _ => None,
        }
    }
}

/// An optional action written as its log name (`noop`, `retry_with_backoff`, ...),
/// the names every other action field of the log uses.
mod action_name {
    use selfheal_core::Action;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &Option<Action>, s: S) -> Result<S::Ok, S::Error> {
        match a {
            Some(a) => s.serialize_str(a.name()),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Action>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(n) => Action::ALL
                .into_iter()
                .find(|a| a.name() == n)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown action {n:?}"))),
        }
    }
}

/// A required action written as its log name.
mod action_name_req {
    use selfheal_core::Action;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &Action, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Action, D::Error> {
        let n = String::deserialize(d)?;
        Action::ALL
            .into_iter()
            .find(|a| a.name() == n)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown action {n:?}")))
    }
}
