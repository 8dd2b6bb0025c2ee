//! The daemon's HTTP face: health, metrics, ingest, approvals, kill switch.
//!
//! Two routers on two listeners, so exposing one does not expose the other:
//! [`metrics_router`] (`/metrics`, `/healthz`, `/readyz`; no credential, may
//! listen on every interface for Prometheus and Kubernetes probes) and
//! [`control_router`] (`/approvals`, `/approvals/{id}`, `/pause`, `/resume`,
//! `/ingest`, and the approvals page `/ui` of [`crate::ui`]; a bearer token,
//! see [`crate::auth`], or for `/ui` the same token in a cookie; loopback by
//! default). Each
//! answers 404 to the other's routes, naming the listener to use. Every
//! control request is logged (target `selfheal::control`) with its route,
//! method, remote address, the caller's token id and the status answered.
//! Control bodies are capped at `[daemon] max_body_bytes` (413 beyond), ingest
//! lines at [`crate::window::MAX_LINE_BYTES`].
//!
//! Handlers never touch the decision core directly: they send a [`Command`]
//! to the daemon's loop and await its answer, so the core stays
//! single-threaded and an approval is answered 2xx only after the loop has
//! made its record durable. Ingest is the exception: it parses and assembles
//! windows in the handler (that is the CPU-heavy part, and it runs on every
//! core) and hands closed windows to the loop through a bounded channel.
//!
//! Ingest is ordered: assembling and handing the closed windows on happen
//! under one async lock ([`Ingest`]'s `order`), so of two concurrent requests
//! for one pipeline the windows of the one assembled first reach the loop
//! first (with the assembler's lock alone, the second could send before the
//! first). Parsing stays outside it. A line of a new pipeline beyond
//! `[daemon] max_pipelines` is refused (see [`crate::window::Bounds`]): the
//! answer is 429 with `Retry-After` only when no line of the body was taken
//! (so a shipper's retry of the whole body adds nothing twice); when some
//! were, it is 422 listing the refused lines, each naming the cap, with
//! `pipeline_cap` set.

use crate::auth::{self, Access, Token};
use crate::window::{assemble, parse_body, Assembler, Bounds, Ingested, Window};
use crate::LockExt;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A proposal as `/approvals` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PendingView {
    /// Decision id.
    pub id: String,
    /// Pipeline.
    pub pipeline: String,
    /// Proposed action.
    pub action: String,
    /// Why it waits.
    pub reason: String,
    /// Expiry, Unix ms.
    pub expires_at_ms: u64,
    /// When it was proposed, Unix ms.
    #[serde(default)]
    pub proposed_ms: i64,
    /// The evidence it was proposed on (window summary, anomaly score,
    /// signature, state in words, the rule policy's choice).
    #[serde(default)]
    pub evidence: serde_json::Value,
}

/// A request to the daemon's loop.
#[derive(Debug)]
pub enum Command {
    /// Render `/metrics`.
    Metrics(oneshot::Sender<String>),
    /// List pending proposals.
    Pending(oneshot::Sender<Vec<PendingView>>),
    /// Approve or reject; the reply is the HTTP status and a message.
    Answer {
        /// Decision id.
        id: String,
        /// Approve (true) or reject.
        approve: bool,
        /// Who (`http`, `cli`).
        by: String,
        /// Status and message.
        reply: oneshot::Sender<(u16, String)>,
    },
    /// Pause all acting.
    Pause {
        /// Why.
        reason: String,
        /// Done.
        reply: oneshot::Sender<(u16, String)>,
    },
    /// Resume acting.
    Resume(oneshot::Sender<(u16, String)>),
    /// What the approvals page shows.
    Ui(oneshot::Sender<crate::ui::UiView>),
}

/// Most windows handed to the decision loop in one message. With the
/// channel's capacity in messages this bounds the windows waiting for a loop
/// that falls behind, so ingest slows down instead of memory growing.
pub const WINDOWS_PER_SEND: usize = 64;

/// The ingest endpoint's state.
pub struct Ingest {
    asm: Mutex<Assembler>,
    tx: mpsc::Sender<Vec<Window>>,
    /// Lines accepted.
    pub accepted: AtomicU64,
    /// Lines rejected.
    pub rejected: AtomicU64,
    /// Held from assembling a body until its windows are handed on: ingest
    /// ordered per pipeline (see the module doc).
    order: tokio::sync::Mutex<()>,
    /// The pipeline cap and eviction counters.
    pub bounds: IngestBounds,
}

/// Counters of the pipeline cap and of eviction at ingest (`/metrics`).
#[derive(Debug, Default)]
pub struct IngestBounds {
    /// Lines refused because they named a new pipeline beyond the cap (also
    /// counted in [`Ingest::rejected`]).
    pub refused_cap: AtomicU64,
    /// Pipelines whose open window was dropped for idleness.
    pub evicted: AtomicU64,
    /// Set when the cap was first hit, cleared when eviction makes room: one
    /// warning per episode, not one per refused request.
    cap_hit: AtomicBool,
}

impl Ingest {
    /// Set the pipeline cap and idle time (`[daemon] max_pipelines`,
    /// `pipeline_idle_secs`).
    pub fn set_bounds(&self, bounds: Bounds) {
        self.asm.locked().set_bounds(bounds);
    }

    /// Pipelines with an open window.
    pub fn live(&self) -> usize {
        self.asm.locked().live()
    }

    /// Drop the open windows of pipelines idle on the data clock (see
    /// [`Assembler::evict_idle`]; `now_ms` is the wall clock, Unix ms), except
    /// those `keep` names; counted and logged. Returns the names evicted.
    pub fn evict_idle(&self, now_ms: i64, keep: &dyn Fn(&str) -> bool) -> Vec<String> {
        let (gone, live, clock) = {
            let mut asm = self.asm.locked();
            let gone = asm.evict_idle(now_ms, keep);
            (gone, asm.live(), asm.clock())
        };
        if !gone.is_empty() {
            self.bounds.evicted.fetch_add(gone.len() as u64, Ordering::Relaxed);
            self.bounds.cap_hit.store(false, Ordering::Relaxed);
            tracing::info!(evicted = gone.len(), live, data_clock_ms = clock, first = %gone[0],
                "idle pipelines evicted from ingest");
        }
        gone
    }
}

impl Ingest {
    /// File events about Glue job `job_name` under pipeline `name` (see
    /// [`Assembler::map_jobs`]).
    pub fn map_jobs(&self, pairs: impl IntoIterator<Item = (String, String)>) {
        self.asm.locked().map_jobs(pairs);
    }

    /// Windows of `period_ms` go to `tx`. Who may post is the control
    /// router's business ([`ControlAuth`]).
    pub fn new(period_ms: i64, tx: mpsc::Sender<Vec<Window>>) -> Ingest {
        Ingest {
            asm: Mutex::new(Assembler::new(period_ms)),
            tx,
            accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            order: tokio::sync::Mutex::new(()),
            bounds: IngestBounds::default(),
        }
    }
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    /// Requests to the loop.
    pub cmd: mpsc::Sender<Command>,
    /// Present when the source is `http`.
    pub ingest: Option<Arc<Ingest>>,
    /// True once the models are loaded and the loop runs.
    pub ready: Arc<AtomicBool>,
    /// A line `/readyz` adds (a fleet replica's leases held); `None`: nothing.
    pub ready_note: Option<Arc<dyn Fn() -> String + Send + Sync>>,
}

/// The tokens the control plane accepts.
#[derive(Clone, Debug, Default)]
pub struct ControlAuth {
    /// `[daemon] control_token_file` / `control_token_env`: every control route.
    pub control: Option<Token>,
    /// `[source] token_env`, kept from before the control token: `/ingest` only.
    pub ingest: Option<Token>,
}

/// Who made a control request: the id of the token it carried (`none` when
/// the control plane has no token). Handlers record it as the `by` of what
/// they do.
#[derive(Clone, Debug)]
pub struct Caller(pub String);

impl Caller {
    /// `claimed` (what the client says it is), qualified by the token that
    /// proves something: `cli (token 1a2b3c4d)`.
    pub fn by(&self, claimed: &str) -> String {
        if self.0 == "none" {
            format!("{claimed} (no token)")
        } else {
            format!("{claimed} (token {})", self.0)
        }
    }
}

/// The metrics listener's router: `/metrics`, `/healthz`, `/readyz`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            text(
                404,
                "not found on the metrics listener (daemon.listen), which serves /metrics, /healthz and /readyz; \
                 /approvals, /pause, /resume and /ingest are on the control listener (daemon.control_listen)",
            )
        })
        .with_state(state)
}

/// The control listener's router: `/approvals`, `/approvals/{id}`, `/pause`,
/// `/resume`, `/ingest`, each behind [`ControlAuth`] and a body limit of
/// `max_body_bytes`. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so the log names the
/// remote address.
///
/// `hosts` are the names the daemon is served under: a request naming
/// another `Host` is refused with 421, one with a foreign `Origin` with 403,
/// and a POST to `/approvals/{id}`, `/pause` or `/resume` without
/// `Content-Type: application/json` with 415 (see [`crate::auth`]).
pub fn control_router(state: AppState, auth: ControlAuth, hosts: auth::AllowedHosts, max_body_bytes: usize) -> Router {
    let ui = Arc::new(crate::ui::UiSecret::random(hosts.https()));
    Router::new()
        .route("/ingest", post(ingest))
        .route("/approvals", get(pending))
        .route("/approvals/{id}", post(answer))
        .route("/pause", post(pause))
        .route("/resume", post(resume))
        .merge(crate::ui::routes(ui.clone()))
        .route_layer(axum::middleware::from_fn_with_state(Arc::new((auth, hosts, ui)), guard))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .fallback(|| async {
            text(
                404,
                "not found on the control listener (daemon.control_listen), which serves /approvals, /pause, \
                 /resume and /ingest; /metrics, /healthz and /readyz are on the metrics listener (daemon.listen)",
            )
        })
        .with_state(state)
}

/// Authenticate, then log the request with its outcome. Runs before the
/// handler reads the body, so a caller without the token cannot make the
/// daemon buffer one.
type GuardState = (ControlAuth, auth::AllowedHosts, Arc<crate::ui::UiSecret>);

async fn guard(State(g): State<Arc<GuardState>>, mut req: Request, next: Next) -> Response {
    let (auth, hosts, ui) = (&g.0, &g.1, &g.2);
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| req.uri().path().to_string(), |m| m.as_str().into());
    let method = req.method().clone();
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map_or_else(|| "-".into(), |c| c.0.to_string());
    if let Some(r) = foreign(req.headers(), hosts) {
        tracing::warn!(target: "selfheal::control", %route, %method, %remote, status = r.status().as_u16(),
            host = ?req.headers().get(header::HOST), origin = ?req.headers().get(header::ORIGIN),
            "control request refused: not addressed to this daemon");
        return r;
    }
    let mut accepted: Vec<&Token> = auth.control.iter().collect();
    if route == "/ingest" {
        accepted.extend(auth.ingest.iter());
    }
    let mut given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    // A browser on the approvals page carries a session cookie, or the
    // token in `?token=` on its first visit (see `crate::ui`).
    let page = route == "/ui" || route.starts_with("/ui/");
    let session = if page && given.is_none() { ui.session(req.headers(), crate::now_ms()) } else { None };
    if page && given.is_none() && session.is_none() {
        given = crate::ui::credential(req.uri().query());
    }
    let verdict = match session {
        Some(id) => Access::Allowed(id),
        None => auth::check(&accepted, given.as_deref()),
    };
    let (token_id, refused) = match verdict {
        Access::Allowed(id) => (id, None),
        Access::Missing if page => (
            "-".to_string(),
            Some(text(401, "the approvals page needs the control token once: open /ui?token=<the control token>")),
        ),
        Access::Missing => (
            "-".to_string(),
            Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "missing bearer token: send `Authorization: Bearer <token>` (the control token)\n",
                )
                    .into_response(),
            ),
        ),
        Access::Wrong(id) => (id, Some(text(403, "wrong bearer token"))),
    };
    let refused = refused.or_else(|| not_json(req.headers(), &route, &method));
    let resp = match refused {
        Some(r) => r,
        None => {
            req.extensions_mut().insert(Caller(token_id.clone()));
            next.run(req).await
        }
    };
    let status = resp.status().as_u16();
    if status == 401 || status == 403 {
        tracing::warn!(target: "selfheal::control", %route, %method, %remote, token_id = %token_id, status,
            "control request refused");
    } else {
        tracing::info!(target: "selfheal::control", %route, %method, %remote, token_id = %token_id, status,
            "control request");
    }
    resp
}

/// The browser defences of the control plane (see [`crate::auth`]): the
/// `Host` must name this daemon (421) and an `Origin` must be this daemon
/// (403); see also [`not_json`]. `None` when the request passes.
fn foreign(h: &header::HeaderMap, hosts: &auth::AllowedHosts) -> Option<Response> {
    // HTTP/2 carries the authority in the URI, HTTP/1.1 in `Host`; hyper
    // exposes the latter only as the header.
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !hosts.allows_host(host) {
        return Some(text(
            421,
            format!(
                "refused: Host {host:?} is not a name this daemon is served under (its control address, localhost,                  127.0.0.1, [::1] on its port, or the host of notify.public_url)"
            ),
        ));
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if !hosts.allows_origin(o) {
            return Some(text(403, format!("refused: a request from another site (Origin {o:?})")));
        }
    }
    None
}

/// A POST to a JSON route without `Content-Type: application/json`: 415.
/// Checked after the token, so a caller without one learns nothing more.
fn not_json(h: &header::HeaderMap, route: &str, method: &axum::http::Method) -> Option<Response> {
    let json_route = matches!(route, "/approvals/{id}" | "/pause" | "/resume");
    if json_route && method == axum::http::Method::POST {
        let ct = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Some(text(
                415,
                format!("{route} takes a JSON body: send `Content-Type: application/json` (got {ct:?})"),
            ));
        }
    }
    None
}

fn text(code: u16, msg: impl Into<String>) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, msg.into() + "\n").into_response()
}

fn loop_gone() -> Response {
    text(503, "the daemon is shutting down")
}

async fn readyz(State(s): State<AppState>) -> Response {
    if s.ready.load(Ordering::Acquire) {
        match &s.ready_note {
            Some(note) => text(200, format!("ready\n{}", note())),
            None => text(200, "ready"),
        }
    } else {
        text(503, "starting")
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.cmd.send(Command::Metrics(tx)).await.is_err() {
        return loop_gone();
    }
    match rx.await {
        Ok(body) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response(),
        Err(_) => loop_gone(),
    }
}

#[derive(Serialize)]
struct IngestAnswer {
    accepted: usize,
    rejected: Vec<RejectedLine>,
    /// The pipeline cap, when lines were refused for it (status 429 if no
    /// line was taken, else 422).
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline_cap: Option<usize>,
}

#[derive(Serialize)]
struct RejectedLine {
    line: usize,
    error: String,
}

async fn ingest(State(s): State<AppState>, body: Bytes) -> Response {
    let Some(ing) = s.ingest.clone() else {
        return text(404, "ingest is off: this daemon's source.kind is not \"http\"");
    };
    // Parse outside the locks (the costly part), assemble and hand on under
    // the order lock, so windows reach the loop in the order they closed.
    let (samples, refused) = parse_body(&body);
    let order = ing.order.lock().await;
    let (Ingested { accepted, windows, rejected, capped }, cap) = {
        let mut asm = ing.asm.locked();
        (assemble(&mut asm, &samples, refused), asm.bounds().max_pipelines)
    };
    // In small batches: the channel bounds batches, not windows, so one batch
    // per body would let a loop that falls behind queue a whole body's windows
    // per slot (a body of full samples closes a window per line).
    let mut windows = windows.into_iter().peekable();
    while windows.peek().is_some() {
        let batch: Vec<Window> = windows.by_ref().take(WINDOWS_PER_SEND).collect();
        if ing.tx.send(batch).await.is_err() {
            return loop_gone();
        }
    }
    drop(order);
    ing.accepted.fetch_add(accepted as u64, Ordering::Relaxed);
    ing.rejected.fetch_add(rejected.len() as u64, Ordering::Relaxed);
    if capped > 0 {
        capped_lines(ing.as_ref(), capped, cap);
    }
    // 429 tells a shipper to send the same body again later: only right when
    // nothing of it was taken, or counts would be added twice. A body partly
    // taken is a 422 that lists the refused lines (naming the cap).
    let code = if capped > 0 && accepted == 0 {
        StatusCode::TOO_MANY_REQUESTS
    } else if rejected.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let pipeline_cap = (capped > 0).then_some(cap);
    let rejected = rejected.into_iter().map(|(line, error)| RejectedLine { line, error }).collect();
    let answer = Json(IngestAnswer { accepted, rejected, pipeline_cap });
    if code == StatusCode::TOO_MANY_REQUESTS {
        // Room is made by eviction, checked about every idle time.
        let idle_s = (ing.asm.locked().bounds().idle_ms / 1000).max(1);
        return (code, [(header::RETRY_AFTER, idle_s.to_string())], answer).into_response();
    }
    (code, answer).into_response()
}

/// Count lines refused for the pipeline cap; warn once per episode of a full cap.
fn capped_lines(ing: &Ingest, capped: usize, cap: usize) {
    ing.bounds.refused_cap.fetch_add(capped as u64, Ordering::Relaxed);
    if !ing.bounds.cap_hit.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            cap,
            refused_lines = capped,
            "ingest: the pipeline cap ([daemon] max_pipelines) is reached; lines of new pipelines are refused \
             with 429 until idle ones are evicted ([daemon] pipeline_idle_secs)"
        );
    }
}

async fn pending(State(s): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.cmd.send(Command::Pending(tx)).await.is_err() {
        return loop_gone();
    }
    match rx.await {
        Ok(list) => Json(list).into_response(),
        Err(_) => loop_gone(),
    }
}

/// Body of `POST /approvals/{id}`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnswerBody {
    /// `approve` or `reject`.
    pub decision: String,
    /// Who answers (default `http`).
    #[serde(default)]
    pub by: Option<String>,
}

async fn answer(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let parsed: AnswerBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return text(400, format!("expected {{\"decision\": \"approve\" | \"reject\"}}: {e}")),
    };
    let approve = match parsed.decision.as_str() {
        "approve" => true,
        "reject" => false,
        other => return text(400, format!("decision must be \"approve\" or \"reject\", not {other:?}")),
    };
    let (tx, rx) = oneshot::channel();
    let by = caller.by(parsed.by.as_deref().unwrap_or("http"));
    if s.cmd.send(Command::Answer { id, approve, by, reply: tx }).await.is_err() {
        return loop_gone();
    }
    match rx.await {
        Ok((code, msg)) => text(code, msg),
        Err(_) => loop_gone(),
    }
}

#[derive(Deserialize, Default)]
struct PauseBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn pause(State(s): State<AppState>, Extension(caller): Extension<Caller>, body: Bytes) -> Response {
    let reason = serde_json::from_slice::<PauseBody>(&body).ok().and_then(|b| b.reason);
    let (tx, rx) = oneshot::channel();
    // Who paused travels with the reason, which every paused decision records.
    let reason = caller.by(&reason.unwrap_or_else(|| "paused over HTTP".into()));
    if s.cmd.send(Command::Pause { reason, reply: tx }).await.is_err() {
        return loop_gone();
    }
    rx.await.map(|(c, m)| text(c, m)).unwrap_or_else(|_| loop_gone())
}

async fn resume(State(s): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.cmd.send(Command::Resume(tx)).await.is_err() {
        return loop_gone();
    }
    rx.await.map(|(c, m)| text(c, m)).unwrap_or_else(|_| loop_gone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ingest_hands_windows_to_the_loop_in_bounded_batches() {
        let (tx, mut rx) = mpsc::channel(1024);
        let (cmd, _cmd_rx) = mpsc::channel(1);
        let ing = Arc::new(Ingest::new(1000, tx));
        let state = AppState { cmd, ingest: Some(ing), ready: Arc::new(AtomicBool::new(true)), ready_note: None };
        // 200 pipelines in two periods: the second body closes 200 windows.
        let body = |ts: i64| -> String {
            (0..200)
                .map(|p| format!("{{\"ts\":{ts},\"pipeline\":\"p{p}\",\"metrics\":{{\"pipeline.latency.p95\":1}}}}\n"))
                .collect()
        };
        for ts in [0, 1000] {
            let r = ingest(State(state.clone()), Bytes::from(body(ts))).await;
            assert_eq!(r.status(), StatusCode::OK);
        }
        let mut sizes = Vec::new();
        while let Ok(batch) = rx.try_recv() {
            sizes.push(batch.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert!(sizes.iter().all(|&n| n <= WINDOWS_PER_SEND), "{sizes:?}");
    }

    /// Regression: with the assembler's lock alone, of two concurrent
    /// requests for one pipeline the later one could hand its window to the
    /// loop first (this test failed 3 runs of 3 on that handler: a request
    /// preempted between assembling and sending was overtaken).
    /// More worker threads than cores make that preemption likely.
    #[tokio::test(flavor = "multi_thread", worker_threads = 8)]
    async fn concurrent_ingest_for_one_pipeline_reaches_the_loop_in_order() {
        // A channel of one slot and a slow reader: senders queue, which is
        // where the old handler let them overtake each other.
        let (tx, mut rx) = mpsc::channel(1);
        let (cmd, _cmd_rx) = mpsc::channel(1);
        let ing = Arc::new(Ingest::new(1000, tx));
        let state = AppState { cmd, ingest: Some(ing), ready: Arc::new(AtomicBool::new(true)), ready_note: None };
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(batch) = rx.recv().await {
                got.extend(batch.into_iter().map(|w: Window| w.ts_ms));
                tokio::task::yield_now().await;
            }
            got
        });
        const N: i64 = 20_000;
        let mut tasks = Vec::new();
        for i in 0..N {
            let state = state.clone();
            // Each body closes the window before it: a window per request.
            let body =
                format!("{{\"ts\":{},\"pipeline\":\"p\",\"metrics\":{{\"pipeline.latency.p95\":{i}}}}}\n", i * 1000);
            tasks.push(tokio::spawn(async move { ingest(State(state), Bytes::from(body)).await.status() }));
        }
        let mut late = 0;
        for t in tasks {
            let code = t.await.unwrap();
            assert!(code == StatusCode::OK || code == StatusCode::UNPROCESSABLE_ENTITY, "{code}");
            late += usize::from(code == StatusCode::UNPROCESSABLE_ENTITY);
        }
        drop(state);
        let got = reader.await.unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "windows out of order: {got:?}");
        assert_eq!(got.len(), N as usize - late - 1, "every accepted sample but the open one closed a window");
    }

    #[tokio::test]
    async fn a_new_pipeline_beyond_the_cap_is_answered_429_naming_the_cap() {
        let (tx, mut rx) = mpsc::channel(64);
        let (cmd, _cmd_rx) = mpsc::channel(1);
        let ing = Arc::new(Ingest::new(1000, tx));
        ing.set_bounds(Bounds { max_pipelines: 2, idle_ms: 5000 });
        let state =
            AppState { cmd, ingest: Some(ing.clone()), ready: Arc::new(AtomicBool::new(true)), ready_note: None };
        let line = |ts: i64, p: &str| format!("{{\"ts\":{ts},\"pipeline\":\"{p}\",\"metrics\":{{}}}}\n");
        let post = |body: String| ingest(State(state.clone()), Bytes::from(body));
        assert_eq!(post(line(0, "a") + &line(0, "b")).await.status(), StatusCode::OK);
        let r = post(line(1000, "a") + &line(1000, "c") + &line(1000, "b")).await;
        // Partly taken: 422, not 429 (a resent body would add `a` and `b` twice).
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["accepted"], 2);
        assert_eq!(v["pipeline_cap"], 2);
        assert_eq!(v["rejected"][0]["line"], 2);
        assert!(v["rejected"][0]["error"].as_str().unwrap().contains("\"c\" is new"), "{v}");
        assert_eq!(ing.bounds.refused_cap.load(Ordering::Relaxed), 1);
        assert_eq!(ing.rejected.load(Ordering::Relaxed), 1);
        // The existing pipelines closed their windows.
        let mut closed = Vec::new();
        while let Ok(b) = rx.try_recv() {
            closed.extend(b.into_iter().map(|w| w.pipeline));
        }
        closed.sort();
        assert_eq!(closed, ["a", "b"]);
        // Nothing taken, some refused for the cap: 429 with Retry-After.
        let r = post(line(1000, "c") + &line(1000, "d")).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()), Some("5"));
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((v["accepted"].as_u64(), v["pipeline_cap"].as_u64()), (Some(0), Some(2)), "{v}");
        assert_eq!(ing.bounds.refused_cap.load(Ordering::Relaxed), 3);
        // `a` goes silent; once idle on the data clock it is evicted, and `c` is admitted.
        assert_eq!(post(line(7000, "b")).await.status(), StatusCode::OK);
        assert_eq!(ing.evict_idle(7000, &|_| false), vec!["a".to_string()]);
        assert_eq!(ing.bounds.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(post(line(7000, "c")).await.status(), StatusCode::OK);
        assert_eq!(ing.live(), 2);
    }
}
