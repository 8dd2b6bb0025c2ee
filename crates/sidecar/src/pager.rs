//! Durable pages: an escalation is owed to a human until the webhook accepts it.
//!
//! A webhook that is rate-limited (Slack answers 429 with `Retry-After: 60`
//! under bursts), down, or unreachable must not lose a page, and neither may a
//! crash of the daemon. So:
//!
//! * a page is appended to the provenance log, fsynced, **before** its first
//!   attempt ([`PagePhase::Raised`], carrying the page itself), and every
//!   failed attempt, the final delivery and any fallback are recorded after;
//! * one delivery task sends the pages in the order they were raised, retrying
//!   the head until the webhook answers 2xx: `Retry-After` (seconds or
//!   HTTP-date) is honoured on any retryable answer that carries it, otherwise
//!   the delay is full-jitter exponential backoff on the consecutive failures,
//!   capped by `notify.cap_ms`. One queue, not one task per page, because the
//!   webhook is one endpoint: when it is rate-limited or down, every page is
//!   held back by the same cause, and hammering it in parallel makes a rate
//!   limit last longer;
//! * at start, [`owed_pages`] reads the log for pages raised and neither
//!   delivered nor refused, and they are sent again first, in order, with the
//!   same `Idempotency-Key` (the decision id). A crash between the webhook's 2xx
//!   and the `delivered` record therefore sends that page a second time: delivery
//!   is at least once, and the key lets a receiver drop the duplicate;
//! * a 4xx other than 408/425/429 is permanent: recorded, counted, and the page
//!   goes to the second channel (`[notify.fallback]`) at once; a page that stays
//!   undelivered for `fallback.after_secs` goes there too, while the webhook is
//!   still retried (the second channel is for a human to see it elsewhere, not
//!   a replacement).
//!
//! [`owed_pages`]: crate::provenance::owed_pages

use crate::notify::{Attempt, Escalation, FallbackConfig, FallbackKind, Notifier};
use crate::now_ms;
use crate::provenance::{EscalationRecord, OwedPage, PagePhase, ProvenanceError, ProvenanceLog, Record};
use crate::LockExt;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Counters of the delivery task, read by `/metrics`.
#[derive(Debug, Default)]
pub struct PagerStats {
    /// Pages raised and not yet accepted by the webhook (nor refused for good).
    pub undelivered: AtomicU64,
    /// Pages the webhook accepted.
    pub delivered: AtomicU64,
    /// Pages the webhook refused for good.
    pub refused: AtomicU64,
    /// Attempts answered 2xx.
    pub attempts_delivered: AtomicU64,
    /// Attempts that failed transiently (to be retried).
    pub attempts_retry: AtomicU64,
    /// Attempts refused for good.
    pub attempts_permanent: AtomicU64,
    /// Pages written to the second channel.
    pub fallback_written: AtomicU64,
    /// Writes to the second channel that failed.
    pub fallback_failed: AtomicU64,
}

/// The running delivery task.
#[derive(Debug)]
pub struct Pager {
    tx: mpsc::UnboundedSender<Owed>,
    stats: Arc<PagerStats>,
    log: Arc<Mutex<ProvenanceLog>>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Owed {
    page: Escalation,
    raised: i64,
    attempts: u32,
    fell_back: bool,
}

impl Pager {
    /// Starts the delivery task; `owed` (from the log) are sent first, in order.
    pub fn start(notifier: Arc<Notifier>, log: Arc<Mutex<ProvenanceLog>>, owed: Vec<OwedPage>) -> Pager {
        let stats = Arc::new(PagerStats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        if !owed.is_empty() {
            tracing::warn!(pages = owed.len(), "pages from an earlier run were never delivered; redelivering them");
        }
        for o in owed {
            stats.undelivered.fetch_add(1, Ordering::Relaxed);
            let _ = tx.send(Owed { page: o.page, raised: o.raised_ms, attempts: o.attempts, fell_back: o.fell_back });
        }
        let worker = Worker { notifier, log: log.clone(), stats: stats.clone(), queue: VecDeque::new(), failures: 0 };
        let task = tokio::spawn(worker.run(rx));
        Pager { tx, stats, log, task }
    }

    /// Records the page durably, then queues it for delivery. When this
    /// returns `Ok`, the page survives a crash.
    pub fn raise(&self, page: Escalation) -> Result<(), ProvenanceError> {
        let ts = now_ms();
        let mut rec = EscalationRecord::new(&page.id, ts, PagePhase::Raised, 0, page.summary.clone());
        rec.page = Some(page.clone());
        self.log.locked().append(&Record::Escalation(rec), true)?;
        self.stats.undelivered.fetch_add(1, Ordering::Relaxed);
        tracing::info!(id = %page.id, pipeline = %page.pipeline, "page raised");
        // The worker lives as long as the pager; were it gone, the page is in the log.
        let _ = self.tx.send(Owed { page, raised: ts, attempts: 0, fell_back: false });
        Ok(())
    }

    /// The counters.
    pub fn stats(&self) -> &PagerStats {
        &self.stats
    }

    /// Pages not yet accepted.
    pub fn undelivered(&self) -> u64 {
        self.stats.undelivered.load(Ordering::Relaxed)
    }

    /// Stops the task (at shutdown). Pages still owed stay in the log and are
    /// redelivered at the next start.
    pub fn stop(self) {
        self.task.abort();
        let left = self.undelivered();
        if left > 0 {
            tracing::warn!(pages = left, "stopping with pages undelivered; the next start redelivers them");
        }
    }
}

/// What a restart owes the people told about a proposal (see
/// [`orphaned_proposals`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Orphan {
    /// The decision id.
    pub id: String,
    /// The closing message to raise.
    pub notice: Escalation,
    /// The proposal was still open when the earlier run stopped: it is void
    /// now, and the caller closes it in the log (an `expired` outcome) after
    /// raising the notice. `false`: it was closed by a record (an approval or
    /// an outcome) whose message was never raised (a crash in between).
    pub void: bool,
}

/// The decision ids closed in the log: by an approval, an outcome, or a
/// raised closing message (`<id>/approved|rejected|expired`). An owed
/// `<id>/proposal` page of one of them is useless (its approve link would
/// 404): the daemon drops it at start.
pub fn closed_proposals(records: &[Record]) -> HashSet<String> {
    let mut closed = HashSet::new();
    for r in records {
        match r {
            Record::Approval(a) => {
                closed.insert(a.id.clone());
            }
            Record::Outcome(o) => {
                closed.insert(o.id.clone());
            }
            Record::Escalation(e) if e.phase == Some(PagePhase::Raised) => {
                if let Some((d, "approved" | "rejected" | "expired")) = e.id.rsplit_once('/') {
                    closed.insert(d.to_string());
                }
            }
            _ => {}
        }
    }
    closed
}

/// Proposals an earlier run told people about whose end nobody was told
/// (no closing message raised): proposals live in the daemon's memory only,
/// so after a restart an open one is void, and the people holding the
/// message must hear so rather than find a 404 behind its link; one closed by
/// a record (approved, rejected, expired) whose message a crash lost gets
/// that message now. Folded proposals count as told: a delivered message
/// lists them (`also_open`). Oldest first.
pub fn orphaned_proposals(records: &[Record], now_ms: i64) -> Vec<Orphan> {
    use crate::notify::Notice;
    // How each closed proposal ended, from its records.
    let mut ended: HashMap<&str, (Notice, String)> = HashMap::new();
    let mut announced: HashSet<&str> = HashSet::new();
    let mut told: Vec<(String, &Escalation)> = Vec::new();
    for r in records {
        match r {
            Record::Approval(a) => {
                let kind = if a.approved { Notice::Approved } else { Notice::Rejected };
                ended.entry(a.id.as_str()).or_insert((kind, format!("{} by {}", a.note, a.by)));
            }
            Record::Outcome(o) => {
                let kind = match o.status.as_str() {
                    "rejected" => Notice::Rejected,
                    _ => Notice::Expired,
                };
                let e = ended.entry(o.id.as_str()).or_insert((kind, String::new()));
                let sep = if e.1.is_empty() { "" } else { "; " };
                e.1 = format!("{}{sep}{}: {}", e.1, o.status, o.detail);
            }
            Record::Escalation(e) if e.phase == Some(PagePhase::Raised) => match (e.id.rsplit_once('/'), &e.page) {
                (Some((_, "proposal")), Some(page)) => {
                    if let Some(id) = page.detail.get("decision_id").and_then(|v| v.as_str()) {
                        told.push((id.to_string(), page));
                    }
                    // The proposals folded into the message were told too.
                    for o in page.detail.get("also_open").and_then(|v| v.as_array()).into_iter().flatten() {
                        if let Some(id) = o.get("id").and_then(|v| v.as_str()) {
                            told.push((id.to_string(), page));
                        }
                    }
                }
                (Some((d, "approved" | "rejected" | "expired")), page) => {
                    announced.insert(d);
                    // Folded proposals whose end that message listed.
                    let ended = page.as_ref().and_then(|p| p.detail.get("ended")).and_then(|v| v.as_array());
                    for o in ended.into_iter().flatten() {
                        if let Some(id) = o.get("id").and_then(|v| v.as_str()) {
                            announced.insert(id);
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    told.into_iter()
        .filter(|(id, _)| !announced.contains(id.as_str()) && seen.insert(id.clone()))
        .map(|(id, page)| {
            let (kind, result, void) = match ended.get(id.as_str()) {
                Some((kind, result)) => (*kind, result.clone(), false),
                None => {
                    (Notice::Expired, "void: the daemon restarted before anyone answered; it will not run".into(), true)
                }
            };
            let mut detail = page.detail.clone();
            if let Some(d) = detail.as_object_mut() {
                d.insert("notice".into(), kind.name().into());
                d.insert("decision_id".into(), id.clone().into());
                d.insert("result".into(), result.clone().into());
                d.insert("at_ms".into(), now_ms.into());
                d.insert("also_open".into(), serde_json::json!([]));
            }
            // A folded proposal's own action, from the message that listed it.
            if let Some(action) = page
                .detail
                .get("also_open")
                .and_then(|v| v.as_array())
                .and_then(|a| a.iter().find(|o| o.get("id").and_then(|v| v.as_str()) == Some(id.as_str())))
                .and_then(|o| o.get("action").cloned())
            {
                if let Some(d) = detail.as_object_mut() {
                    d.insert("action".into(), action);
                }
            }
            let summary = format!("{}: proposal {id} {result}", page.pipeline);
            let notice =
                Escalation { id: format!("{id}/{}", kind.name()), pipeline: page.pipeline.clone(), summary, detail };
            Orphan { id, notice, void }
        })
        .collect()
}

struct Worker {
    notifier: Arc<Notifier>,
    log: Arc<Mutex<ProvenanceLog>>,
    stats: Arc<PagerStats>,
    queue: VecDeque<Owed>,
    /// Consecutive failed attempts against the webhook (the backoff exponent).
    failures: u32,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Owed>) {
        let mut next_at: Option<Instant> = None;
        loop {
            while let Ok(o) = rx.try_recv() {
                self.queue.push_back(o);
            }
            if self.queue.is_empty() {
                match rx.recv().await {
                    Some(o) => self.queue.push_back(o),
                    None => return,
                }
                continue;
            }
            if let Some(at) = next_at {
                if Instant::now() < at {
                    // Wake for the retry, or earlier for a newly raised page
                    // (queued behind the head; also checked for the fallback).
                    tokio::select! {
                        o = rx.recv() => match o {
                            Some(o) => self.queue.push_back(o),
                            None => return,
                        },
                        _ = tokio::time::sleep_until(at) => {}
                    }
                    self.check_fallback().await;
                    continue;
                }
            }
            next_at = self.attempt_head().await;
            self.check_fallback().await;
        }
    }

    /// One attempt at the oldest page; the time of the next attempt, if it failed.
    async fn attempt_head(&mut self) -> Option<Instant> {
        let head = self.queue.front_mut()?;
        head.attempts += 1;
        let outcome = self.notifier.attempt(&head.page).await;
        let (id, attempts) = (head.page.id.clone(), head.attempts);
        match outcome {
            Attempt::Delivered { status } => {
                self.failures = 0;
                self.stats.attempts_delivered.fetch_add(1, Ordering::Relaxed);
                let mut rec = EscalationRecord::new(&id, now_ms(), PagePhase::Delivered, attempts, "delivered".into());
                rec.status = Some(status);
                self.append(rec).await;
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                self.stats.undelivered.fetch_sub(1, Ordering::Relaxed);
                tracing::info!(id = %id, attempts, status, "page delivered");
                self.queue.pop_front();
                None
            }
            Attempt::Retry { status, why, retry_after } => {
                self.failures = self.failures.saturating_add(1);
                self.stats.attempts_retry.fetch_add(1, Ordering::Relaxed);
                let backoff = self.notifier.backoff(self.failures);
                // The receiver said when; earlier is refused, later only delays the page.
                let wait = retry_after.unwrap_or(backoff);
                let mut rec = EscalationRecord::new(
                    &id,
                    now_ms(),
                    PagePhase::AttemptFailed,
                    attempts,
                    format!("{why}; next attempt in {} ms", wait.as_millis()),
                );
                rec.status = status;
                self.append(rec).await;
                tracing::warn!(
                    id = %id, attempts, status, error = %why,
                    retry_after_ms = retry_after.map(|d| d.as_millis() as u64),
                    wait_ms = wait.as_millis() as u64, "page attempt failed; will retry"
                );
                Some(Instant::now() + wait)
            }
            Attempt::Permanent { status, why } => {
                // The webhook works (it answered); the request is what is wrong.
                self.failures = 0;
                self.stats.attempts_permanent.fetch_add(1, Ordering::Relaxed);
                let mut rec = EscalationRecord::new(&id, now_ms(), PagePhase::PermanentFailure, attempts, why.clone());
                rec.status = status;
                self.append(rec).await;
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                self.stats.undelivered.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(id = %id, attempts, status, error = %why, "the webhook refused a page for good");
                if let Some(o) = self.queue.pop_front() {
                    if !o.fell_back {
                        self.fall_back(&o, &format!("the webhook refused it: {why}")).await;
                    }
                }
                None
            }
        }
    }

    /// Writes to the second channel every page undelivered for longer than
    /// `after_secs` that has not gone there yet.
    async fn check_fallback(&mut self) {
        let Some(after) = self.notifier.config().fallback.as_ref().map(|f| f.after_secs) else { return };
        let now = now_ms();
        let due: Vec<usize> = (0..self.queue.len())
            .filter(|&i| {
                let o = &self.queue[i];
                !o.fell_back && now - o.raised >= (after as i64).saturating_mul(1_000)
            })
            .collect();
        for i in due {
            let why = format!("undelivered for {} s or more", after);
            let ok = {
                let o = &self.queue[i];
                self.fall_back(o, &why).await
            };
            // A failed write is tried again at the next check.
            self.queue[i].fell_back = ok;
        }
    }

    /// Writes `o` to the second channel and records it; true if it was written.
    async fn fall_back(&self, o: &Owed, why: &str) -> bool {
        let Some(cfg) = self.notifier.config().fallback.as_ref() else {
            tracing::error!(id = %o.page.id, reason = %why, "no [notify.fallback] configured: the page is only in the provenance log");
            return false;
        };
        // The fallback file is fsynced: off the async workers, like the log.
        let (c, page, reason) = (cfg.clone(), o.page.clone(), why.to_string());
        let written = tokio::task::spawn_blocking(move || write_fallback(&c, &page, &reason))
            .await
            .unwrap_or_else(|join| Err(std::io::Error::other(join)));
        match written {
            Ok(()) => {
                self.stats.fallback_written.fetch_add(1, Ordering::Relaxed);
                let detail = format!("{}: {why}", cfg.path.display());
                self.append(EscalationRecord::new(&o.page.id, now_ms(), PagePhase::Fallback, o.attempts, detail)).await;
                tracing::warn!(id = %o.page.id, path = %cfg.path.display(), reason = %why, "page written to the fallback channel");
                true
            }
            Err(e) => {
                self.stats.fallback_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(id = %o.page.id, path = %cfg.path.display(), error = %e, "cannot write the page to the fallback channel");
                false
            }
        }
    }

    /// Appends `rec` durably on a blocking thread: the `fdatasync` (and the
    /// wait for the log's lock while another writer syncs) must not stall an
    /// async worker that serves the control plane or the daemon loop.
    async fn append(&self, rec: EscalationRecord) {
        let id = rec.id.clone();
        let log = self.log.clone();
        let done = tokio::task::spawn_blocking(move || log.locked().append(&Record::Escalation(rec), true))
            .await
            .map_err(|join| join.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = done {
            // The page stays owed in memory; the log is the daemon's to fail on.
            tracing::error!(id = %id, error = %e, "cannot record a page's delivery");
        }
    }
}

/// Appends `page` as one JSON line to the fallback file and fsyncs it.
fn write_fallback(cfg: &FallbackConfig, page: &Escalation, why: &str) -> std::io::Result<()> {
    match cfg.kind {
        FallbackKind::File => {
            let line = serde_json::json!({
                "event": "selfheal.escalation",
                "ts_ms": now_ms(),
                "id": page.id,
                "pipeline": page.pipeline,
                "summary": page.summary,
                "detail": page.detail,
                "why_here": why,
            });
            let mut text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
            text.push('\n');
            let path: &Path = &cfg.path;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = OpenOptions::new().create(true).append(true).open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_data()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provenance::{ApprovalRecord, OutcomeRecord};

    fn raised(page: Escalation) -> Record {
        let mut rec = EscalationRecord::new(&page.id, 1, PagePhase::Raised, 0, page.summary.clone());
        rec.page = Some(page);
        Record::Escalation(rec)
    }

    fn page(id: &str, notice: &str, detail: serde_json::Value) -> Escalation {
        let mut d = serde_json::json!({ "notice": notice, "decision_id": id, "action": "scale_up" });
        if let (Some(d), serde_json::Value::Object(x)) = (d.as_object_mut(), detail) {
            d.extend(x);
        }
        Escalation { id: format!("{id}/{notice}"), pipeline: "orders".into(), summary: String::new(), detail: d }
    }

    fn outcome(id: &str, status: &str) -> Record {
        let status = crate::provenance::OutcomeStatus::from_name(status).unwrap_or_else(|| panic!("status {status}"));
        Record::Outcome(OutcomeRecord { id: id.into(), ts_ms: 2, status, detail: "d".into() })
    }

    #[test]
    fn an_open_proposal_is_void_and_a_closed_one_gets_its_lost_closing_message() {
        let approval = Record::Approval(ApprovalRecord {
            id: "r-2".into(),
            ts_ms: 2,
            approved: true,
            by: "cli (no token)".into(),
            note: "approved".into(),
        });
        let records = vec![
            // r-1 told, never closed: void.
            raised(page("r-1", "proposal", serde_json::json!({}))),
            // r-2 told and approved, killed before its message was raised.
            raised(page("r-2", "proposal", serde_json::json!({}))),
            approval,
            // r-3 told, expired, and its message raised: nothing owed.
            raised(page("r-3", "proposal", serde_json::json!({}))),
            outcome("r-3", "expired"),
            raised(page("r-3", "expired", serde_json::json!({}))),
        ];
        let o = orphaned_proposals(&records, 9);
        let got: Vec<(&str, &str, bool)> = o.iter().map(|o| (o.id.as_str(), o.notice.id.as_str(), o.void)).collect();
        assert_eq!(got, [("r-1", "r-1/expired", true), ("r-2", "r-2/approved", false)]);
        assert!(o[0].notice.detail["result"].as_str().unwrap().starts_with("void"));
        assert_eq!(o[1].notice.detail["result"], "approved by cli (no token)");
        let closed = closed_proposals(&records);
        assert!(closed.contains("r-2") && closed.contains("r-3") && !closed.contains("r-1"));
        // Once raised (and r-1 closed in the log), nothing more is owed.
        let mut later = records.clone();
        later.push(raised(o[0].notice.clone()));
        later.push(outcome("r-1", "expired"));
        later.push(raised(o[1].notice.clone()));
        assert!(orphaned_proposals(&later, 10).is_empty());
    }

    #[test]
    fn folded_proposals_listed_in_a_message_are_announced_once() {
        let also = serde_json::json!({ "also_open": [{ "id": "r-5", "action": "scale_down" }] });
        let told = vec![raised(page("r-4", "proposal", also))];
        let o = orphaned_proposals(&told, 9);
        let got: Vec<(&str, bool)> = o.iter().map(|o| (o.id.as_str(), o.void)).collect();
        assert_eq!(got, [("r-4", true), ("r-5", true)], "the folded one was told too");
        assert_eq!(o[1].notice.detail["action"], "scale_down", "its own action");
        // A closing message listing r-5 as ended announced it.
        let mut r = told.clone();
        r.push(outcome("r-5", "rejected"));
        r.push(outcome("r-4", "expired"));
        let ended = serde_json::json!({ "ended": [{ "id": "r-5", "action": "scale_down", "result": "rejected" }] });
        r.push(raised(page("r-4", "expired", ended)));
        assert!(orphaned_proposals(&r, 10).is_empty());
    }
}
