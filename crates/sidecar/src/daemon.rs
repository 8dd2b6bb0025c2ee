//! The async shell around the decision core: one loop owns the
//! [`DecisionCore`] and the provenance log, and everything else talks to it
//! through channels: the source task sends windows, the HTTP handlers send
//! commands, spawned action and escalation tasks send what became of them.
//!
//! Durability and restarts: a decision that will act is appended durably
//! before its action starts, an approval before its 2xx answer, and every
//! outcome durably; nothing is replayed at start, so an action acknowledged
//! before a crash is never applied a second time by the next run. The Q table
//! is checkpointed atomically every `checkpoint_every` updates and at
//! shutdown. Shutdown is bounded: in-flight actions and escalation deliveries
//! get `shutdown_grace_secs` to finish, then they are cancelled and logged as
//! such, the Q table is saved, and the log is synced.
//!
//! Escalations (pages) are the exception to "nothing is replayed": a page is
//! owed to a human until the webhook accepts it, so it is logged durably before
//! delivery and a page left undelivered by a crash or a shutdown is sent again
//! at the next start (see [`crate::pager`]). Messages about proposals (the
//! proposal, its answer or expiry, "nobody answered") take the same path: a
//! proposal nobody hears of waits its lifetime for nobody. The loop adds how
//! to answer (the CLI command with this daemon's control address, the `/ui`
//! URL) before raising them.

use crate::actuate::{ActionCall, Actuator, CallGuards, Executed, Executor};
use crate::config::SidecarConfig;
use crate::decide::{DecisionCore, Order, Output, Plan};
use crate::http::{control_router, metrics_router, AppState, Command, ControlAuth, Ingest, PendingView};
use crate::metrics::{render, PageCounts, PipelineCounts, Snapshot};
use crate::notify::{Escalation, Notifier};
use crate::now_ms;
use crate::pager::Pager;
use crate::provenance::{
    one_line, owed_pages, read_log, EscalationRecord, OutcomeRecord, OutcomeStatus, PagePhase, ProvenanceError,
    ProvenanceLog, Record, Verdict,
};
use crate::source::TelemetrySource;
use crate::window::Window;
use crate::LockExt;
use selfheal_agent::QTable;
use selfheal_guard::approvals::ApprovalError;
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Saves the Q table (atomically); the binary knows the model file format.
pub type Checkpoint = Arc<dyn Fn(&QTable) -> Result<(), String> + Send + Sync>;

/// Everything the daemon runs with.
pub struct Daemon {
    /// Configuration.
    pub cfg: SidecarConfig,
    /// The decision core.
    pub controller: DecisionCore,
    /// Telemetry.
    pub source: Box<dyn TelemetrySource>,
    /// Applies actions.
    pub actuator: Arc<dyn Actuator>,
    /// The ingest endpoint, when the source is HTTP.
    pub ingest: Option<Arc<Ingest>>,
    /// Saves the Q table.
    pub checkpoint: Checkpoint,
    /// A fleet replica's leases and shared policy (`[fleet]`); `None`: one
    /// process that acts for every pipeline.
    pub fleet: Option<crate::fleet::Fleet>,
}

/// The daemon's two listeners (see [`crate::http`]) and who may use the
/// control one.
pub struct Listeners {
    /// `/metrics`, `/healthz`, `/readyz` (`[daemon] listen`).
    pub metrics: TcpListener,
    /// The control plane (`[daemon] control_listen`).
    pub control: TcpListener,
    /// The tokens the control plane accepts.
    pub auth: ControlAuth,
    /// Largest control request body.
    pub max_body_bytes: usize,
}

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The provenance log.
    #[error(transparent)]
    Log(#[from] ProvenanceError),
    /// The webhook.
    #[error("notify: {0}")]
    Notify(String),
    /// Guard settings.
    #[error("guard: {0}")]
    Guard(String),
    /// HTTP.
    #[error("http server: {0}")]
    Http(std::io::Error),
    /// The control plane would be open to other hosts.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// What a run did, for the caller's last log line.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Windows decided on.
    pub windows: u64,
    /// Actions that succeeded.
    pub succeeded: u64,
    /// Actions that failed.
    pub failed: u64,
    /// Q updates.
    pub q_updates: u64,
}

enum Done {
    Executed(Order, Executed),
}

struct Shell {
    ctl: DecisionCore,
    log: Arc<Mutex<ProvenanceLog>>,
    exec: Arc<Executor>,
    /// Delivers pages durably; none without a `[notify]` webhook.
    pager: Option<Pager>,
    tasks: JoinSet<()>,
    in_flight: HashMap<String, Order>,
    done_tx: mpsc::Sender<Done>,
    /// Pages only logged, for want of a webhook.
    logged_only: u64,
    checkpoint: Checkpoint,
    checkpoint_every: u64,
    /// The pipeline cap and idle time (`[daemon] max_pipelines`, `pipeline_idle_secs`).
    bounds: crate::window::Bounds,
    /// Pipelines evicted from the decision core.
    decide_evicted: u64,
    /// Recent decisions that did something and outcomes, for `/ui`.
    recent: std::collections::VecDeque<String>,
    /// Where people answer: the control plane's address for the CLI and
    /// its base URL for the page (`notify.public_url` or `http://<control>`).
    answer_addr: String,
    answer_url: String,
    /// The fleet's tasks and lease gate, for a replica.
    fleet: Option<crate::fleet::Running>,
    /// How to cancel each in-flight action (lease lost mid-action).
    aborts: HashMap<String, tokio::task::AbortHandle>,
}

/// Lines of recent decisions and outcomes `/ui` shows.
const RECENT: usize = 30;

impl Shell {
    /// Forget idle pipelines: the decision core's, then ingest's open windows,
    /// keeping any the core still needs (see [`DecisionCore::busy`]).
    fn evict_idle(&mut self, ingest: Option<&Ingest>, now: i64) {
        let gone = self.ctl.evict_idle(self.bounds.idle_ms, now);
        if let Some(f) = &self.fleet {
            f.forget(&gone);
        }
        if let Some(first) = gone.first() {
            self.decide_evicted += gone.len() as u64;
            tracing::info!(evicted = gone.len(), live = self.ctl.live(), %first,
                "idle pipelines evicted from the decision core");
        }
        if let Some(ing) = ingest {
            let ctl = &self.ctl;
            ing.evict_idle(now, &|p| ctl.busy(p));
        }
    }

    fn pipeline_counts(&self, ingest: Option<&Ingest>) -> PipelineCounts {
        PipelineCounts {
            cap: self.bounds.max_pipelines,
            ingest_live: ingest.map_or(0, Ingest::live),
            decide_live: self.ctl.live(),
            refused_cap: ingest.map_or(0, |i| i.bounds.refused_cap.load(Ordering::Relaxed)),
            ingest_evicted: ingest.map_or(0, |i| i.bounds.evicted.load(Ordering::Relaxed)),
            decide_evicted: self.decide_evicted,
        }
    }

    fn write(&mut self, out: &Output) -> Result<(), ProvenanceError> {
        let mut log = self.log.locked();
        for (rec, durable) in &out.records {
            log.append(rec, *durable)?;
            let shown = match rec {
                Record::Decision(d) => !matches!(d.verdict, Verdict::Noop | Verdict::Pending | Verdict::Observed),
                Record::Outcome(_) | Record::Approval(_) => true,
                _ => false,
            };
            if shown {
                if self.recent.len() == RECENT {
                    self.recent.pop_front();
                }
                self.recent.push_back(one_line(rec));
            }
            match rec {
                Record::Decision(d) if matches!(d.verdict, Verdict::Noop | Verdict::Pending) => {
                    tracing::debug!(target: "selfheal::decision", id = %d.id, "{}", one_line(rec))
                }
                Record::Decision(d) => tracing::info!(
                    target: "selfheal::decision",
                    id = %d.id, pipeline = %d.pipeline, action = %d.chosen, verdict = %d.verdict, score = d.score,
                    "{}", one_line(rec)
                ),
                Record::Reward(_) | Record::Call(_) => {
                    tracing::debug!(target: "selfheal::decision", id = %rec.id(), "{}", one_line(rec))
                }
                _ => tracing::info!(target: "selfheal::decision", id = %rec.id(), "{}", one_line(rec)),
            }
        }
        Ok(())
    }

    /// Send the notices, log the records, then carry out the plan.
    ///
    /// The notices are raised first: a raised page is durable, and a crash
    /// between raising and writing the records that close a proposal then
    /// leaves a message about a proposal the log still shows open (announced
    /// once more as void at the next start), never a closed proposal whose
    /// closing message is lost. [`crate::pager::orphaned_proposals`] also
    /// re-raises a closing message a crash lost the other way.
    fn handle(&mut self, mut out: Output) -> Result<(), ProvenanceError> {
        for n in std::mem::take(&mut out.notices) {
            self.notify(n)?;
        }
        self.write(&out)?;
        match out.plan {
            None | Some(Plan::Nothing) => {}
            Some(Plan::Act(order)) => self.start(order),
            Some(Plan::Escalate(e)) => self.escalate(e)?,
        }
        Ok(())
    }

    /// A message about a proposal, with how to answer it, on the pages'
    /// durable path; only logged to the console without a webhook (the
    /// proposal itself is in the provenance log and on `/ui`).
    fn notify(&mut self, mut n: Escalation) -> Result<(), ProvenanceError> {
        let id = n.detail.get("decision_id").and_then(|v| v.as_str()).unwrap_or_default().to_string();
        if let Some(d) = n.detail.as_object_mut() {
            let addr = &self.answer_addr;
            d.insert(
                "answer".into(),
                serde_json::json!({
                    "approve": format!("selfheal approve {id} --addr {addr}"),
                    "reject": format!("selfheal reject {id} --addr {addr}"),
                    "token": "the CLI reads the control token from --token-file or SELFHEAL_CONTROL_TOKEN",
                    "url": format!("{}/ui", self.answer_url),
                    "api": format!("POST {}/approvals/{id} {{\"decision\": \"approve\" | \"reject\"}}", self.answer_url),
                }),
            );
        }
        match &self.pager {
            Some(p) => p.raise(n),
            None => {
                tracing::info!(id = %n.id, pipeline = %n.pipeline, "{} (no [notify] webhook configured)", n.summary);
                Ok(())
            }
        }
    }

    fn start(&mut self, order: Order) {
        let exec = self.exec.clone();
        let done = self.done_tx.clone();
        self.in_flight.insert(order.id.clone(), order.clone());
        if let Some(f) = &self.fleet {
            f.busy(&order.pipeline, true);
        }
        let id = order.id.clone();
        let abort = self.tasks.spawn(async move {
            let call = ActionCall {
                id: order.id.clone(),
                idempotency_key: order.key.clone(),
                pipeline: order.pipeline.clone(),
                action: order.action,
                attempt: 1,
            };
            let result = exec.execute(call).await;
            let _ = done.send(Done::Executed(order, result)).await;
        });
        self.aborts.insert(id, abort);
    }

    /// An action left the in-flight set: its pipeline's lease may be released
    /// once no other action of ours runs on it.
    fn landed(&mut self, order: &Order) {
        self.aborts.remove(&order.id);
        if let Some(f) = &self.fleet {
            if !self.in_flight.values().any(|o| o.pipeline == order.pipeline) {
                f.busy(&order.pipeline, false);
            }
        }
    }

    /// A replica cancels its actions still running on a pipeline whose lease
    /// has less than half the margin left (see [`crate::fleet`]): they must
    /// stop before another replica may start.
    fn fence_in_flight(&mut self, now: i64) -> Result<(), ProvenanceError> {
        let Some(f) = &self.fleet else { return Ok(()) };
        let lost: Vec<Order> =
            self.in_flight.values().filter(|o| !f.gate.may_continue(&o.pipeline, now)).cloned().collect();
        for order in lost {
            if let Some(h) = self.aborts.get(&order.id) {
                h.abort();
            }
            self.in_flight.remove(&order.id);
            self.landed(&order);
            if let Some(f) = &self.fleet {
                f.abandon(&order.pipeline);
            }
            tracing::warn!(id = %order.id, pipeline = %order.pipeline, action = %order.action,
                "lease about to lapse mid-action: action cancelled");
            let out = self.ctl.on_lease_lost(&order, "the lease ran low while it ran (not renewed)", now);
            self.write(&out)?;
        }
        Ok(())
    }

    fn escalate(&mut self, e: Escalation) -> Result<(), ProvenanceError> {
        let Some(pager) = &self.pager else {
            self.logged_only += 1;
            let detail = format!("no [notify] webhook configured; logged only: {}", e.summary);
            let mut rec = EscalationRecord::new(&e.id, now_ms(), PagePhase::LoggedOnly, 0, detail);
            rec.page = Some(e.clone());
            tracing::warn!(id = %e.id, pipeline = %e.pipeline, "escalation (no webhook configured): {}", e.summary);
            return self.log.locked().append(&Record::Escalation(rec), true);
        };
        pager.raise(e)
    }

    fn finished(&mut self, done: Done) -> Result<(), ProvenanceError> {
        match done {
            Done::Executed(order, r) => {
                if self.in_flight.remove(&order.id).is_none() {
                    // Cancelled for a lease lost mid-action: already logged.
                    return Ok(());
                }
                self.landed(&order);
                let detail = format!(
                    "{} after {} attempt(s): {}",
                    if r.ok { "applied" } else { "failed" },
                    r.attempts,
                    r.detail
                );
                let out = self.ctl.on_executed(&order, r.ok, detail, now_ms());
                self.handle(out)
            }
        }
    }

    fn command(
        &mut self,
        cmd: Command,
        ingest: Option<&Ingest>,
        pause_file: &std::path::Path,
    ) -> Result<(), ProvenanceError> {
        match cmd {
            Command::Metrics(reply) => {
                let (acc, rej) = ingest
                    .map(|i| (i.accepted.load(Ordering::Relaxed), i.rejected.load(Ordering::Relaxed)))
                    .unwrap_or((0, 0));
                let mut snap = Snapshot {
                    stats: self.ctl.stats.clone(),
                    breakers: self.exec.breaker_states(),
                    scores: self.ctl.scores(),
                    ingest_accepted: acc,
                    ingest_rejected: rej,
                    proposals_pending: self.ctl.pending().len(),
                    proposals_oldest_age_seconds: self.ctl.waiting(now_ms()).1,
                    paused: self.ctl.kill_switch().paused().is_some(),
                    escalations_delivered: 0,
                    escalations_failed: self.logged_only,
                    pages: Default::default(),
                    pipelines: self.pipeline_counts(ingest),
                };
                if let Some(p) = &self.pager {
                    snap.pages = PageCounts::of(p.stats());
                    snap.escalations_delivered = snap.pages.delivered;
                    snap.escalations_failed += snap.pages.refused;
                }
                let mut text = render(&snap);
                if let Some(f) = &self.fleet {
                    text.push_str(&f.render(self.ctl.policy_version()));
                }
                let _ = reply.send(text);
            }
            Command::Pending(reply) => {
                let list = self.ctl.pending().into_iter().map(|(id, exp, p)| pending_view(id, exp, p)).collect();
                let _ = reply.send(list);
            }
            Command::Ui(reply) => {
                let view = crate::ui::UiView {
                    pending: self.ctl.pending().into_iter().map(|(id, exp, p)| pending_view(id, exp, p)).collect(),
                    recent: self.recent.iter().cloned().collect(),
                    paused: self.ctl.kill_switch().paused().map(|p| p.reason.clone()),
                    now_ms: now_ms(),
                };
                let _ = reply.send(view);
            }
            Command::Answer { id, approve, by, reply } => match self.ctl.answer(&id, approve, &by, now_ms()) {
                Ok(out) => {
                    // The approval record is durable before the answer goes out.
                    self.write(&Output { records: out.records.clone(), ..Output::default() })?;
                    let msg = match &out.plan {
                        Some(Plan::Act(o)) => format!("approved: running {} on {} ({id})", o.action, o.pipeline),
                        _ => out
                            .records
                            .iter()
                            .find_map(|(r, _)| match r {
                                Record::Outcome(o) => Some(format!("{}: {}", o.status, o.detail)),
                                _ => None,
                            })
                            .unwrap_or_else(|| "recorded".into()),
                    };
                    let _ = reply.send((200, msg));
                    self.handle(Output { records: Vec::new(), plan: out.plan, notices: out.notices })?;
                }
                Err(e) => {
                    let code = match e {
                        ApprovalError::Unknown(_) => 404,
                        _ => 409,
                    };
                    let _ = reply.send((code, e.to_string()));
                }
            },
            Command::Pause { reason, reply } => {
                let now = now_ms() as u64;
                if self.ctl.kill_switch().pause(reason.clone(), now) {
                    tracing::warn!(reason = %reason, "kill switch on: all acting paused");
                }
                // An earlier pause stays in force with its own reason.
                let on = self.ctl.kill_switch().paused().map(|p| p.reason.clone()).unwrap_or(reason);
                let _ = reply.send((200, format!("paused: {on}")));
            }
            Command::Resume(reply) => {
                if pause_file.exists() {
                    let msg = format!("the pause file {} exists; remove it, then resume", pause_file.display());
                    let _ = reply.send((409, msg));
                } else {
                    self.ctl.kill_switch().resume();
                    tracing::warn!("kill switch off: acting resumed");
                    let _ = reply.send((200, "resumed".into()));
                }
            }
        }
        Ok(())
    }

    fn save(&mut self) {
        match (self.checkpoint)(self.ctl.learner().table()) {
            Ok(()) => self.ctl.checkpointed(),
            Err(e) => tracing::error!(error = %e, "checkpoint failed; will retry"),
        }
    }
}

fn pending_view(id: String, exp: u64, p: crate::decide::Proposal) -> PendingView {
    PendingView {
        id,
        pipeline: p.pipeline,
        action: p.action.name().into(),
        reason: p.reason,
        expires_at_ms: exp,
        proposed_ms: p.proposed_ms,
        evidence: p.evidence,
    }
}

/// Flushes and `fdatasync`s the log on a blocking thread, so no async worker
/// waits on the disk with the lock held.
async fn sync_log(log: &Arc<Mutex<ProvenanceLog>>) -> Result<(), ProvenanceError> {
    let path = log.locked().path().to_owned();
    let log = log.clone();
    match tokio::task::spawn_blocking(move || log.locked().flush(true)).await {
        Ok(r) => r,
        // The flush panicked (the lock stays usable: see `LockExt`), or the
        // runtime is shutting down: say so as an I/O error of the log.
        Err(e) => {
            Err(ProvenanceError::Io { path, source: std::io::Error::other(format!("log sync task failed: {e}")) })
        }
    }
}

/// The next policy version to swap in; never, without a policy store.
async fn next_swap(rx: &mut Option<mpsc::Receiver<crate::fleet::Swap>>) -> Option<crate::fleet::Swap> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Keeps the first fatal error; later ones of the shutdown are logged only.
fn keep_first(fatal: &mut Option<ProvenanceError>, r: Result<(), ProvenanceError>) {
    if let Err(e) = r {
        match fatal {
            None => *fatal = Some(e),
            Some(_) => tracing::warn!(error = %e, "provenance log write failed again during shutdown"),
        }
    }
}

/// Run until `shutdown` resolves (or a replayed source is exhausted).
pub async fn run(d: Daemon, listeners: Listeners, shutdown: impl Future<Output = ()>) -> Result<Summary, DaemonError> {
    let Daemon { cfg, mut controller, mut source, mut actuator, ingest, checkpoint, fleet } = d;
    let mut fleet = fleet.map(crate::fleet::Fleet::start);
    let mut swaps = fleet.as_mut().and_then(|f| f.swaps.take());
    if let Some(f) = &fleet {
        controller.set_gate(Arc::new(f.gate.clone()));
        actuator = Arc::new(crate::actuate::FencedActuator::new(actuator));
    }
    controller.set_unanswered_after(Some(cfg.guard.unanswered_after_ms()));
    let Listeners { metrics: listener, control, auth, max_body_bytes } = listeners;
    // Checked where the address is known for sure (the caller checks the
    // configured one earlier, for a quick error before the models load).
    if auth.control.is_none() {
        let addr = control.local_addr().map_err(DaemonError::Http)?;
        let daemon = crate::config::DaemonConfig { control_listen: addr, ..cfg.daemon.clone() };
        crate::auth::check_exposure(&daemon, None)?;
    }
    std::fs::create_dir_all(&cfg.daemon.state_dir)
        .map_err(|e| DaemonError::Log(ProvenanceError::Io { path: cfg.daemon.state_dir.clone(), source: e }))?;
    let log = Arc::new(Mutex::new(ProvenanceLog::open_rotating(&cfg.daemon.log_path(), cfg.daemon.log_rotation())?));
    if let Some(ing) = &ingest {
        ing.set_bounds(cfg.daemon.bounds());
    }
    let g = &cfg.guard;
    let guards = CallGuards { breaker: g.breaker, bulkhead: g.bulkhead, retry: g.retry, timeout: g.timeout };
    let exec = Arc::new(
        Executor::new(actuator, guards, cfg.model.seed, log.clone()).map_err(|e| DaemonError::Guard(e.to_string()))?,
    );
    let pager = match &cfg.notify {
        Some(n) => {
            let notifier =
                Arc::new(Notifier::new(n.clone(), cfg.model.seed).map_err(|e| DaemonError::Notify(e.to_string()))?);
            // Pages an earlier run raised and never got accepted are still
            // owed, except a proposal message for a proposal closed or void
            // by now (its approve link would 404; its end is announced).
            let records = read_log(&cfg.daemon.log_path())?.records;
            let orphans = crate::pager::orphaned_proposals(&records, now_ms());
            let closed = crate::pager::closed_proposals(&records);
            let mut owed = owed_pages(&records);
            let before = owed.len();
            owed.retain(|o| match o.page.id.strip_suffix("/proposal") {
                Some(id) => !closed.contains(id) && !orphans.iter().any(|x| x.id == id),
                None => true,
            });
            if owed.len() < before {
                tracing::info!(
                    dropped = before - owed.len(),
                    "owed proposal messages dropped: those proposals are closed or void"
                );
            }
            let pager = Pager::start(notifier, log.clone(), owed);
            // Proposals told about before a restart whose end nobody was told:
            // say it now. Raise first (the Raised record is durable), then
            // close a void one in the log: a crash in between raises it again
            // on the next start, which the webhook's idempotency key absorbs,
            // where the other order could lose the message.
            for o in orphans {
                tracing::warn!(id = %o.id, pipeline = %o.notice.pipeline, void = o.void,
                    "a proposal of an earlier run ended unannounced; announcing it");
                pager.raise(o.notice)?;
                if o.void {
                    let rec = OutcomeRecord {
                        id: o.id.clone(),
                        ts_ms: now_ms(),
                        status: crate::provenance::OutcomeStatus::Expired,
                        detail: "void: the daemon restarted before anyone answered; never ran".into(),
                    };
                    log.locked().append(&Record::Outcome(rec), true)?;
                }
            }
            Some(pager)
        }
        None => None,
    };
    let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
    let (cmd_tx, mut cmd_rx) = mpsc::channel::<Command>(256);
    let (win_tx, mut win_rx) = mpsc::channel::<Vec<Window>>(256);
    let ready = Arc::new(AtomicBool::new(false));
    let ready_note = fleet.as_ref().map(|f| {
        let gate = f.gate.clone();
        let replica = f.replica.clone();
        Arc::new(move || crate::fleet::ready_line(&replica, &gate)) as Arc<dyn Fn() -> String + Send + Sync>
    });
    let state = AppState { cmd: cmd_tx, ingest: ingest.clone(), ready: ready.clone(), ready_note };
    let answer_addr = control.local_addr().map_err(DaemonError::Http)?.to_string();
    let answer_url = cfg
        .notify
        .as_ref()
        .and_then(|n| n.public_url.clone())
        .map(|u| u.trim_end_matches('/').to_string())
        .unwrap_or_else(|| format!("http://{answer_addr}"));
    let hosts = crate::auth::AllowedHosts::new(
        control.local_addr().map_err(DaemonError::Http)?,
        cfg.notify.as_ref().and_then(|n| n.public_url.as_deref()),
    );
    let control_app = control_router(state.clone(), auth, hosts, max_body_bytes)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let app = metrics_router(state);
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let mut control_stopped = http_stopped.clone();
    let mut http_stopped = http_stopped;
    let server = tokio::spawn(async move {
        let metrics = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = http_stopped.changed().await;
        });
        let control = axum::serve(control, control_app).with_graceful_shutdown(async move {
            let _ = control_stopped.changed().await;
        });
        let (m, c) = tokio::join!(metrics.into_future(), control.into_future());
        m.and(c)
    });
    let source_name = source.name().to_string();
    let reader = tokio::spawn(async move {
        loop {
            match source.next().await {
                Ok(Some(ws)) => {
                    if win_tx.send(ws).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(source = %source.name(), error = %e, "telemetry source failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    });
    let mut sh = Shell {
        ctl: controller,
        log,
        exec,
        pager,
        tasks: JoinSet::new(),
        in_flight: HashMap::new(),
        done_tx,
        logged_only: 0,
        checkpoint,
        checkpoint_every: cfg.daemon.checkpoint_every,
        bounds: cfg.daemon.bounds(),
        decide_evicted: 0,
        recent: Default::default(),
        answer_addr,
        answer_url,
        fleet,
        aborts: HashMap::new(),
    };
    let pause_file = cfg.daemon.pause_path();
    ready.store(true, Ordering::Release);
    tracing::info!(
        source = %source_name, actuator = %sh.exec.actuator_name(), mode = %sh.ctl.mode().name(),
        log = %cfg.daemon.log_path().display(), "selfheal sidecar running"
    );
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tokio::pin!(shutdown);
    let mut source_open = true;
    // A provenance write error (a full or read-only disk) is fatal: the loop
    // ends through the bounded shutdown below, which still drains in-flight
    // actions and saves the checkpoint, and the error is returned at the end.
    let mut fatal: Option<ProvenanceError> = None;
    loop {
        let step: Result<(), ProvenanceError> = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            Some(done) = done_rx.recv() => sh.finished(done),
            Some(cmd) = cmd_rx.recv() => sh.command(cmd, ingest.as_deref(), &pause_file),
            Some(swap) = next_swap(&mut swaps) => {
                let v = swap.version;
                let old_version = sh.ctl.policy_version();
                let old = sh.fleet.is_some().then(|| sh.ctl.learner().table().clone());
                match sh.ctl.swap_table(swap.table, v) {
                    Ok(()) => {
                        tracing::info!(version = v, "shared policy version swapped in");
                        if let (Some(f), Some(old)) = (&mut sh.fleet, old) {
                            f.swapped(old_version, old, v, sh.ctl.learner().table()).await;
                        }
                    }
                    Err(why) => tracing::error!(version = v, reason = %why,
                        "shared policy version refused; keeping the running table"),
                }
                Ok(())
            }
            ws = win_rx.recv(), if source_open => match ws {
                Some(ws) => ws.iter().try_for_each(|w| {
                    if let Some(f) = &sh.fleet {
                        f.watch(&w.pipeline);
                    }
                    let t0 = std::time::Instant::now();
                    let out = sh.ctl.on_window(w, now_ms());
                    crate::metrics::DECISION_SECONDS.observe(t0.elapsed());
                    sh.handle(out)?;
                    crate::metrics::DECISION_LOGGED_SECONDS.observe(t0.elapsed());
                    Ok(())
                }),
                None => {
                    tracing::info!(source = %source_name, "telemetry source exhausted; finishing");
                    source_open = false;
                    Ok(())
                }
            },
            _ = tick.tick() => {
                // A JoinSet keeps finished tasks until they are joined: reap them,
                // or a long run grows by one entry per action.
                while sh.tasks.try_join_next().is_some() {}
                let now = now_ms();
                let out = sh.ctl.on_tick(now);
                let handled = sh.handle(out).and_then(|()| sh.fence_in_flight(now));
                if let Some(f) = &mut sh.fleet {
                    f.snapshot(sh.ctl.policy_version(), sh.ctl.learner().table());
                }
                sh.evict_idle(ingest.as_deref(), now);
                if pause_file.exists() && sh.ctl.kill_switch().paused().is_none() {
                    let why = format!("pause file {} exists", pause_file.display());
                    tracing::warn!(reason = %why, "kill switch on: all acting paused");
                    sh.ctl.kill_switch().pause(why, now as u64);
                }
                let synced = match handled {
                    Ok(()) => sync_log(&sh.log).await,
                    Err(e) => Err(e),
                };
                if sh.ctl.updates_since_checkpoint() >= sh.checkpoint_every {
                    sh.save();
                }
                if synced.is_ok() && !source_open && sh.in_flight.is_empty() {
                    break;
                }
                synced
            }
        };
        if let Err(e) = step {
            tracing::error!(error = %e, "provenance log write failed; shutting down");
            fatal = Some(e);
            break;
        }
    }

    // Bounded shutdown.
    ready.store(false, Ordering::Release);
    reader.abort();
    let grace = Duration::from_secs(cfg.daemon.shutdown_grace_secs);
    // A replica waits for its actions at least half the margin (the longest
    // an action may run once its lease stops being renewed), the keeper
    // still renewing; one whose lease runs low meanwhile is cancelled.
    let wait = sh.fleet.as_ref().map_or(grace, |f| grace.max(f.gate.margin() / 2));
    let deadline = tokio::time::Instant::now() + wait;
    while !sh.in_flight.is_empty() && tokio::time::Instant::now() < deadline {
        let slice = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
        match tokio::time::timeout_at(slice, done_rx.recv()).await {
            Ok(Some(done)) => keep_first(&mut fatal, sh.finished(done)),
            Ok(None) => break,
            Err(_) => keep_first(&mut fatal, sh.fence_in_flight(now_ms())),
        }
    }
    // Pages being delivered (including those of actions failing now) get what
    // is left of the grace; any still owed then stay in the log for the next start.
    while sh.pager.as_ref().is_some_and(|p| p.undelivered() > 0) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left: Vec<Order> = sh.in_flight.drain().map(|(_, o)| o).collect();
    for order in &left {
        // Aborted below: its lease is left to lapse, never released.
        if let Some(f) = &sh.fleet {
            f.abandon(&order.pipeline);
        }
        let out = sh.ctl.on_cancelled(order, now_ms());
        keep_first(&mut fatal, sh.write(&out));
    }
    if let Some(p) = sh.pager.take() {
        p.stop();
    }
    sh.tasks.abort_all();
    // In-flight actions are done or cancelled: give back the leases of
    // pipelines none was aborted on (the others lapse).
    if let Some(f) = sh.fleet.take() {
        f.stop(Duration::from_secs(2)).await;
    }
    sh.save();
    keep_first(&mut fatal, sync_log(&sh.log).await);
    let _ = stop_http.send(true);
    if let Ok(Err(e)) = server.await {
        return Err(DaemonError::Http(e));
    }
    if let Some(e) = fatal {
        return Err(DaemonError::Log(e));
    }
    let st = &sh.ctl.stats;
    Ok(Summary {
        windows: st.windows,
        succeeded: st.outcomes.get(&OutcomeStatus::Succeeded).copied().unwrap_or(0),
        failed: st.outcomes.get(&OutcomeStatus::Failed).copied().unwrap_or(0),
        q_updates: st.q_updates,
    })
}
