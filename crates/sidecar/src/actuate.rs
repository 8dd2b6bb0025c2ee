//! Actuators, and how every call to one is made.
//!
//! An [`Actuator`] applies one action to one pipeline; it is async and
//! fallible, and says whether a failure is worth a retry. The [`Executor`]
//! wraps every call with the guardrails of a downstream call, per endpoint:
//! a circuit breaker and a bulkhead, a timeout learned from observed latency,
//! capped retries with full-jitter backoff, and one idempotency key per
//! decision that every attempt carries, so an attempt that timed out after
//! applying is not applied again by the retry. The result is an honest
//! [`Executed`]: a call that failed or ran out of attempts is a failure, never
//! a success.
//!
//! Crates considered: `tower` (timeout, retry, concurrency-limit layers),
//! `backon` (retries), `failsafe` (breaker) and `governor` (rate limits). Each
//! covers one piece with its own vocabulary, none a learned timeout, and
//! tower's breaker-less stack would still need resilience4j semantics written
//! by hand; the guards in `selfheal-guard` are ~100 lines each, sync, and
//! tested with an injected clock, which a tower stack is not. So the sidecar
//! composes those here, in one readable loop.

use crate::provenance::{CallRecord, ProvenanceLog, Record};
use crate::source::SimFleet;
use crate::LockExt;
use crate::{now_ms, BoxFuture};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use selfheal_core::Action;
use selfheal_guard::breaker::{Breaker, BreakerConfig, BreakerState};
use selfheal_guard::bulkhead::Bulkhead;
use selfheal_guard::retry::RetryPolicy;
use selfheal_guard::timeout::{LearnedTimeout, TimeoutConfig};
use selfheal_guard::InvalidConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// One call to apply an action: what the actuator is told.
#[derive(Clone, Debug, Serialize)]
pub struct ActionCall {
    /// Decision id (provenance).
    pub id: String,
    /// The same for every attempt of this decision: apply at most once per key.
    pub idempotency_key: String,
    /// Pipeline to act on.
    pub pipeline: String,
    /// The action.
    pub action: Action,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// Why an actuator call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// Worth another attempt (a 5xx, throttling, a temporary failure).
    #[error("transient: {0}")]
    Transient(String),
    /// Not worth another attempt (refused, invalid, not found).
    #[error("failed: {0}")]
    Failed(String),
}

/// Applies actions to pipelines.
pub trait Actuator: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &str;
    /// The downstream endpoint a call goes to: breakers and bulkheads are per endpoint.
    fn endpoint(&self, pipeline: &str, action: Action) -> String;
    /// Apply the action; `Ok` carries a short description of what was done.
    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>>;
    /// A wait the action itself calls for before it runs (the backoff of a
    /// `retry_with_backoff`), outside the call's timeout. Default: none.
    fn delay(&self, _call: &ActionCall) -> Duration {
        Duration::ZERO
    }
}

/// Applies actions to the built-in simulator.
pub struct SimActuator(pub Arc<Mutex<SimFleet>>);

impl Actuator for SimActuator {
    fn name(&self) -> &str {
        "simulator"
    }
    fn endpoint(&self, _pipeline: &str, _action: Action) -> String {
        "simulator".into()
    }
    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>> {
        Box::pin(async move {
            let mut fleet = self.0.locked();
            match fleet.apply(&call.pipeline, call.action, &call.idempotency_key) {
                Ok(true) => Ok(format!("{} set for the next step", call.action)),
                Ok(false) => Ok("already applied (same idempotency key)".into()),
                Err(e) => Err(ActError::Failed(e)),
            }
        })
    }
}

/// Records what it would do, does nothing.
pub struct DryRun;

impl Actuator for DryRun {
    fn name(&self) -> &str {
        "dry-run"
    }
    fn endpoint(&self, _pipeline: &str, _action: Action) -> String {
        "dry-run".into()
    }
    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>> {
        Box::pin(async move { Ok(format!("dry run: would {} on {}", call.action, call.pipeline)) })
    }
}

/// Runs a configured program per action kind. The call arrives as JSON on
/// stdin (and `SELFHEAL_IDEMPOTENCY_KEY` in the environment). Exit 0 means
/// applied, 75 (`EX_TEMPFAIL`) a transient failure, anything else a failure.
/// A call that outlives its timeout is killed (the future is dropped, and the
/// child with it), so it cannot finish behind the retry's back.
pub struct CommandActuator {
    commands: BTreeMap<String, Vec<String>>,
}

/// Exit code that asks for a retry.
pub const EX_TEMPFAIL: i32 = 75;

impl CommandActuator {
    /// Action name (or `default`) → argv.
    pub fn new(commands: BTreeMap<String, Vec<String>>) -> CommandActuator {
        CommandActuator { commands }
    }

    fn argv(&self, action: Action) -> Option<&Vec<String>> {
        self.commands.get(action.name()).or_else(|| self.commands.get("default"))
    }
}

impl Actuator for CommandActuator {
    fn name(&self) -> &str {
        "command"
    }
    fn endpoint(&self, _pipeline: &str, action: Action) -> String {
        match self.commands.get(action.name()) {
            Some(_) => format!("command:{}", action.name()),
            None => "command:default".into(),
        }
    }
    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>> {
        Box::pin(async move {
            let argv = self
                .argv(call.action)
                .ok_or_else(|| ActError::Failed(format!("no command configured for {} (nor default)", call.action)))?;
            let mut child = tokio::process::Command::new(PathBuf::from(&argv[0]))
                .args(&argv[1..])
                .env("SELFHEAL_IDEMPOTENCY_KEY", &call.idempotency_key)
                .env("SELFHEAL_ACTION", call.action.name())
                .env("SELFHEAL_PIPELINE", &call.pipeline)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| ActError::Failed(format!("cannot start {}: {e}", argv[0])))?;
            let body =
                serde_json::to_vec(call).map_err(|e| ActError::Failed(format!("cannot encode the call: {e}")))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A program that does not read its stdin is allowed.
                let _ = stdin.write_all(&body).await;
            }
            let out = child.wait_with_output().await.map_err(|e| ActError::Transient(format!("{}: {e}", argv[0])))?;
            let tail = |b: &[u8]| String::from_utf8_lossy(b).trim().chars().rev().take(300).collect::<String>();
            let say = |b: &[u8]| tail(b).chars().rev().collect::<String>();
            match out.status.code() {
                Some(0) => Ok(say(&out.stdout)),
                Some(EX_TEMPFAIL) => Err(ActError::Transient(format!("exit 75: {}", say(&out.stderr)))),
                Some(c) => Err(ActError::Failed(format!("exit {c}: {}", say(&out.stderr)))),
                None => Err(ActError::Transient("killed by a signal".into())),
            }
        })
    }
}

/// An actuator behind a fence: refuses an action whose idempotency key
/// carries a lease epoch older than the newest this process has seen for the
/// same pipeline (`selfheal_fleet::Fence`), so a replica's action decided
/// under a lease that was since taken over, and taken back, cannot run.
///
/// It is only built for a fleet replica, so a key without an `@epoch`
/// suffix is refused too (an action that bypassed the lease gate). The
/// fence is in process: it covers the simulator, command and dry-run
/// actuators of this replica. A command actuator's program receives the key
/// in `SELFHEAL_IDEMPOTENCY_KEY` and can fence across replicas itself with
/// `FencingToken::parse_idempotency_key`. The Glue actuator puts the key in
/// the job run's arguments (`--selfheal-idempotency-key`). Glue itself has
/// no conditional `StartJobRun`, so the Glue actuator fences across
/// replicas by reading the job's runs (`GetJobRuns`) first and refusing to
/// start one when a run carries a newer epoch; between that read and the
/// start, the lease's margin is what keeps a deposed holder from acting.
pub struct FencedActuator {
    inner: Arc<dyn Actuator>,
    fence: Mutex<selfheal_fleet::Fence>,
}

impl FencedActuator {
    /// `inner` behind a fresh fence.
    pub fn new(inner: Arc<dyn Actuator>) -> FencedActuator {
        FencedActuator { inner, fence: Mutex::new(selfheal_fleet::Fence::new()) }
    }
}

impl Actuator for FencedActuator {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn endpoint(&self, pipeline: &str, action: Action) -> String {
        self.inner.endpoint(pipeline, action)
    }
    fn delay(&self, call: &ActionCall) -> Duration {
        self.inner.delay(call)
    }
    fn apply<'a>(&'a self, call: &'a ActionCall) -> BoxFuture<'a, Result<String, ActError>> {
        let Some((_, epoch)) = selfheal_fleet::FencingToken::parse_idempotency_key(&call.idempotency_key) else {
            tracing::warn!(id = %call.id, pipeline = %call.pipeline, key = %call.idempotency_key,
                "action refused by the fence: no lease epoch in its key");
            let why = format!(
                "fenced: idempotency key {:?} carries no lease epoch (`@EPOCH`); a fleet replica acts only under a lease",
                call.idempotency_key
            );
            return Box::pin(async move { Err(ActError::Failed(why)) });
        };
        let token = selfheal_fleet::FencingToken { key: call.pipeline.clone(), epoch };
        if let Err(fenced) = self.fence.locked().admit(&token) {
            tracing::warn!(id = %call.id, pipeline = %call.pipeline, epoch, newest = fenced.newest,
                "action refused by the fence");
            return Box::pin(async move { Err(ActError::Failed(fenced.to_string())) });
        }
        self.inner.apply(call)
    }
}

/// The guards of one downstream endpoint.
struct Endpoint {
    breaker: Mutex<Breaker>,
    bulkhead: Bulkhead,
    timeout: Mutex<LearnedTimeout>,
}

/// How an action ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Executed {
    /// Applied.
    pub ok: bool,
    /// Attempts made (calls that reached the actuator or were refused by a guard).
    pub attempts: u32,
    /// What the actuator said, or why it failed.
    pub detail: String,
}

/// Guard settings of downstream calls.
#[derive(Clone, Debug)]
pub struct CallGuards {
    /// Breaker per endpoint.
    pub breaker: BreakerConfig,
    /// Concurrent calls per endpoint.
    pub bulkhead: u32,
    /// Retries.
    pub retry: RetryPolicy,
    /// Learned timeouts.
    pub timeout: TimeoutConfig,
}

/// Makes every call to an actuator through its endpoint's guards.
pub struct Executor {
    actuator: Arc<dyn Actuator>,
    guards: CallGuards,
    /// A closed breaker and an untrained timeout, built (and so checked)
    /// once in [`Executor::new`]; each new endpoint starts from a copy.
    fresh: (Breaker, LearnedTimeout),
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    rng: Mutex<Xoshiro256PlusPlus>,
    log: Arc<Mutex<ProvenanceLog>>,
}

impl Executor {
    /// An executor over `actuator`; call records go to `log`.
    pub fn new(
        actuator: Arc<dyn Actuator>,
        guards: CallGuards,
        seed: u64,
        log: Arc<Mutex<ProvenanceLog>>,
    ) -> Result<Executor, InvalidConfig> {
        // Built once here, so every endpoint's guards below are copies of checked ones.
        let fresh = (Breaker::new(guards.breaker)?, LearnedTimeout::new(guards.timeout)?);
        Ok(Executor {
            actuator,
            guards,
            fresh,
            endpoints: Mutex::new(HashMap::new()),
            rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)),
            log,
        })
    }

    /// The actuator's name.
    pub fn actuator_name(&self) -> &str {
        self.actuator.name()
    }

    fn endpoint(&self, name: &str) -> Arc<Endpoint> {
        let mut eps = self.endpoints.locked();
        eps.entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    breaker: Mutex::new(self.fresh.0.clone()),
                    bulkhead: Bulkhead::new(self.guards.bulkhead),
                    timeout: Mutex::new(self.fresh.1.clone()),
                })
            })
            .clone()
    }

    /// Breaker state of every endpoint seen so far, for `/metrics`.
    pub fn breaker_states(&self) -> Vec<(String, BreakerState, u64)> {
        let eps = self.endpoints.locked();
        let mut v: Vec<_> = eps
            .iter()
            .map(|(n, e)| {
                let b = e.breaker.locked();
                (n.clone(), b.state(), b.rejected_total())
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Append a call record (fsynced when the call failed) on a blocking
    /// thread: actions run on the runtime's workers, and a write, let alone
    /// an fdatasync, under the log's std mutex must not stall them. Awaited,
    /// so one action's records keep their order.
    async fn record(&self, rec: CallRecord) {
        let ok = rec.ok;
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || log.locked().append(&Record::Call(rec), !ok)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "cannot write a call record to the provenance log"),
            Err(e) => tracing::error!(error = %e, "the call record's writer did not finish"),
        }
    }

    /// Apply `call` with retries; every attempt is logged as a call record.
    pub async fn execute(&self, mut call: ActionCall) -> Executed {
        let name = self.actuator.endpoint(&call.pipeline, call.action);
        let ep = self.endpoint(&name);
        let retry = self.guards.retry;
        let mut last = String::new();
        for attempt in 1..=retry.max_attempts.max(1) {
            call.attempt = attempt;
            let own = self.actuator.delay(&call);
            if !own.is_zero() {
                tokio::time::sleep(own).await;
            }
            if attempt > 1 {
                let delay = retry.delay_ms(attempt - 1, &mut *self.rng.locked());
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let timeout_ms = ep.timeout.locked().current_ms();
            let mut rec = CallRecord {
                id: call.id.clone(),
                ts_ms: now_ms(),
                endpoint: name.clone(),
                attempt,
                ok: false,
                duration_ms: 0,
                timeout_ms,
                error: None,
                idempotency_key: call.idempotency_key.clone(),
            };
            let Some(_permit) = ep.bulkhead.try_enter() else {
                last = format!("bulkhead full: {} calls in flight to {name}", ep.bulkhead.in_use());
                rec.error = Some(last.clone());
                self.record(rec).await;
                continue;
            };
            let admitted = ep.breaker.locked().try_acquire(now_ms() as u64);
            if let Err(rejected) = admitted {
                last = format!("circuit breaker: {rejected}");
                rec.error = Some(last.clone());
                self.record(rec).await;
                continue;
            }
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_millis(timeout_ms), self.actuator.apply(&call)).await;
            let took = started.elapsed().as_millis() as u64;
            rec.duration_ms = took;
            let now = now_ms() as u64;
            let (retryable, error) = match result {
                Ok(Ok(detail)) => {
                    ep.breaker.locked().on_success(now, took);
                    ep.timeout.locked().observe(took);
                    rec.ok = true;
                    self.record(rec).await;
                    return Executed { ok: true, attempts: attempt, detail };
                }
                Ok(Err(ActError::Transient(e))) => (true, e),
                Ok(Err(ActError::Failed(e))) => (false, e),
                Err(_) => (true, format!("timed out after {timeout_ms} ms")),
            };
            ep.breaker.locked().on_failure(now, took);
            last = error.clone();
            rec.error = Some(error);
            self.record(rec).await;
            if !retryable {
                break;
            }
        }
        Executed { ok: false, attempts: call.attempt, detail: last }
    }
}
