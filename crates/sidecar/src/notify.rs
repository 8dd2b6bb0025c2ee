//! Escalation reaches a human: a webhook notifier.
//!
//! When the agent chooses `escalate`, or the guardrails refuse an action that
//! something must still be done about, the sidecar does not act and a person has to.
//! A line in a log nobody is watching is not an escalation, so the notifier posts it
//! to a webhook (a Slack incoming webhook, or any HTTP endpoint taking JSON).
//!
//! This module makes one attempt at a time ([`Notifier::attempt`]) and classifies
//! the answer; the durable redelivery loop around it (a page is kept in the
//! provenance log until the webhook accepts it, across restarts) is
//! [`crate::pager`]. The classification follows RFC 9110: 2xx is delivered;
//! 408, 425, 429, 5xx, timeouts and connection errors are transient and retried
//! (a `Retry-After` in seconds or as an HTTP-date is honoured, because a
//! rate-limited webhook such as Slack's drops what comes earlier); any other 4xx
//! means the request itself is wrong and will never succeed, so it is a
//! permanent failure that goes to the second channel at once. Every attempt
//! carries the decision id as `Idempotency-Key`, so a receiver that saw an
//! attempt whose answer got lost can drop the duplicate.
//!
//! The backoff RNG is seeded, like every random stream in selfheal, so a run can be
//! replayed.

use crate::LockExt;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Errors building a [`Notifier`].
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The configuration is invalid (the message names the key).
    #[error("{0}")]
    Config(String),
    /// The HTTP client could not be built.
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The body format the webhook expects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{"text": "..."}`, as Slack incoming webhooks take it.
    #[default]
    Slack,
    /// `{"event": "selfheal.escalation", "id", "pipeline", "summary", "detail"}`.
    Generic,
}

/// The `[notify]` table of the sidecar configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where escalations are POSTed (http:// or https://).
    pub url: String,
    /// Body format.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Timeout of one attempt, connecting included.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// No longer used: a page is retried until the webhook accepts it (see
    /// [`crate::pager`]); accepted so that older configuration files still load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Backoff base: the delay before retry n is uniform in [0, min(cap, base·2^(n-1))].
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// Backoff cap (5 minutes by default: a page is retried for as long as it
    /// takes, and a webhook that is down for an hour is asked a dozen times an hour).
    #[serde(default = "default_cap_ms")]
    pub cap_ms: u64,
    /// The second channel, used when the webhook keeps failing or refuses a page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackConfig>,
    /// Where people reach the control plane, for the answer links of proposal
    /// messages (e.g. `https://selfheal.example.com` behind a proxy); default
    /// `http://<daemon.control_listen>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

/// Kinds of second channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackKind {
    /// Append the page as one JSON line to a local file, fsynced (for a log
    /// shipper, a mounted volume an on-call tool watches, or a test).
    /// An SNS topic is future work: it needs the AWS SDK, which only
    /// `selfheal-aws` may link.
    #[default]
    File,
}

/// The `[notify.fallback]` table: where a page also goes when the webhook
/// has failed for `after_secs`, or refused it outright (a 4xx other than
/// 408/425/429). The webhook keeps being retried meanwhile.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// The channel kind.
    #[serde(default)]
    pub kind: FallbackKind,
    /// The file pages are appended to (kind `file`).
    pub path: std::path::PathBuf,
    /// Seconds a page may stay undelivered before it is also written here.
    #[serde(default = "default_fallback_after_secs")]
    pub after_secs: u64,
}

fn default_fallback_after_secs() -> u64 {
    300
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_base_ms() -> u64 {
    500
}
fn default_cap_ms() -> u64 {
    300_000
}

impl WebhookConfig {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            format: WebhookFormat::default(),
            timeout_ms: default_timeout_ms(),
            max_attempts: None,
            base_ms: default_base_ms(),
            cap_ms: default_cap_ms(),
            fallback: None,
            public_url: None,
        }
    }

    /// Checks the values; the error names the offending key (`notify.url`, ...).
    pub fn validate(&self) -> Result<(), String> {
        let url =
            reqwest::Url::parse(&self.url).map_err(|e| format!("notify.url: {:?} is not a URL: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("notify.url: must be an http:// or https:// URL, got {:?}", self.url));
        }
        if url.host_str().unwrap_or("").is_empty() {
            return Err(format!("notify.url: {:?} has no host", self.url));
        }
        if self.timeout_ms == 0 {
            return Err("notify.timeout_ms: must be at least 1".to_owned());
        }
        if self.base_ms > self.cap_ms {
            return Err(format!("notify.base_ms: must not exceed notify.cap_ms ({})", self.cap_ms));
        }
        if self.cap_ms == 0 {
            return Err("notify.cap_ms: must be at least 1".to_owned());
        }
        if let Some(u) = &self.public_url {
            let ok = reqwest::Url::parse(u).is_ok_and(|p| matches!(p.scheme(), "http" | "https"));
            if !ok {
                return Err(format!("notify.public_url: must be an http:// or https:// URL, got {u:?}"));
            }
        }
        if let Some(f) = &self.fallback {
            if f.path.as_os_str().is_empty() {
                return Err("notify.fallback.path: must name a file".to_owned());
            }
            if f.path.is_dir() {
                return Err(format!("notify.fallback.path: {} is a directory", f.path.display()));
            }
        }
        Ok(())
    }
}

/// What to tell the human: declared with the provenance records it rides in.
pub use selfheal_schema::provenance::Escalation;

/// Which message about a proposal an [`Escalation`] is (its
/// `detail.notice`); absent, the page is an escalation.
///
/// Proposals ride the same durable path as escalations ([`crate::pager`]):
/// a proposal nobody hears of waits its whole lifetime for nobody, so it is
/// as owed to a human as a page. Each message has its own id,
/// `<decision id>/<notice>` (also its `Idempotency-Key`), so the proposal,
/// its answer and its "nobody answered" page are three deliveries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A new proposal: the evidence, the action, why it waits, how to answer.
    Proposal,
    /// It was approved.
    Approved,
    /// It was rejected.
    Rejected,
    /// It expired unanswered.
    Expired,
    /// It is still unanswered past `guard.approval_unanswered_secs`.
    Unanswered,
}

impl Notice {
    /// `proposal`, `approved`, `rejected`, `expired`, `unanswered`.
    pub fn name(self) -> &'static str {
        match self {
            Notice::Proposal => "proposal",
            Notice::Approved => "approved",
            Notice::Rejected => "rejected",
            Notice::Expired => "expired",
            Notice::Unanswered => "unanswered",
        }
    }

    /// The notice a page is, from its `detail.notice`.
    pub fn of(e: &Escalation) -> Option<Notice> {
        let name = e.detail.get("notice")?.as_str()?;
        [Notice::Proposal, Notice::Approved, Notice::Rejected, Notice::Expired, Notice::Unanswered]
            .into_iter()
            .find(|n| n.name() == name)
    }
}

/// A window summary (the `window` of a proposal's evidence) in words:
/// `latency p95 59.9 s, error ratio 1.00, backlog 0, records in 1000, workers 10`.
pub fn window_words(w: &serde_json::Value) -> String {
    let f = |k: &str| w.get(k).and_then(serde_json::Value::as_f64);
    let mut parts = Vec::new();
    if let Some(v) = f("latency_p95_s") {
        parts.push(format!("latency p95 {v:.1} s"));
    }
    if let Some(v) = f("error_ratio") {
        parts.push(format!("error ratio {v:.2}"));
    }
    for (k, name) in [("backlog", "backlog"), ("records_in", "records in"), ("workers", "workers")] {
        if let Some(v) = f(k) {
            parts.push(format!("{name} {v}"));
        }
    }
    parts.join(", ")
}

/// Escapes text for a Slack message: `&`, `<` and `>` become `&amp;`,
/// `&lt;`, `&gt;`, so that a pipeline name such as `<!channel>` or
/// `<https://evil|Approve here>` stays text instead of becoming a ping or a
/// link (<https://api.slack.com/reference/surfaces/formatting#escaping>).
pub fn slack_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            c => o.push(c),
        }
    }
    o
}

/// The text of a proposal message: one read has what a person needs. With
/// `slack`, every interpolated field is [`slack_escape`]d (the generic
/// format's consumers get the plain text).
fn proposal_text(kind: Notice, e: &Escalation, slack: bool) -> String {
    let q = |x: &str| if slack { slack_escape(x) } else { x.to_string() };
    let d = &e.detail;
    let s = |k: &str| q(d.get(k).and_then(|v| v.as_str()).unwrap_or("?"));
    let id = s("decision_id");
    let ev = d.get("evidence").cloned().unwrap_or_default();
    let evs = |k: &str| {
        q(&match ev.get(k) {
            Some(serde_json::Value::Number(n)) if k == "score" => format!("{:.2}", n.as_f64().unwrap_or(f64::NAN)),
            Some(v) => v.to_string(),
            None => "?".into(),
        })
    };
    let pipeline = q(&e.pipeline);
    let expires = d
        .get("expires_at_ms")
        .and_then(|v| v.as_i64())
        .map(crate::provenance::format_utc)
        .unwrap_or_else(|| "?".into());
    let answer = d.get("answer").cloned().unwrap_or_default();
    let how = |k: &str| q(answer.get(k).and_then(|v| v.as_str()).unwrap_or("?"));
    let also: Vec<String> = d
        .get("also_open")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|o| format!("{} ({})", q(o["id"].as_str().unwrap_or("?")), q(o["action"].as_str().unwrap_or("?"))))
                .collect()
        })
        .unwrap_or_default();
    let mut also =
        if also.is_empty() { String::new() } else { format!("\nAlso open on this pipeline: {}.", also.join(", ")) };
    // Folded proposals that ended meanwhile (see `DecisionCore`'s closing notices).
    let ended: Vec<String> = d
        .get("ended")
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .map(|o| {
                    let f = |k: &str| q(o[k].as_str().unwrap_or("?"));
                    format!("{} ({}): {}", f("id"), f("action"), f("result"))
                })
                .collect()
        })
        .unwrap_or_default();
    if !ended.is_empty() {
        also.push_str(&format!("\nAlso ended on this pipeline: {}.", ended.join("; ")));
    }
    match kind {
        Notice::Proposal | Notice::Unanswered => {
            let head = if kind == Notice::Proposal {
                format!(
                    "selfheal proposes *{}* on pipeline *{}* (decision `{id}`) and waits for a human.",
                    s("action"),
                    pipeline
                )
            } else {
                format!(
                    "Nobody answered: selfheal still waits to run *{}* on pipeline *{}* (decision `{id}`).",
                    s("action"),
                    pipeline
                )
            };
            format!(
                "{head}\nWhy it waits: {}\nEvidence: anomaly score {}, signature {}, state: {}; window {}; metrics {}\n\
                 Rule policy would: {}\nExpires: {expires} (then it does not run).\n\
                 Answer: `{}` or `{}`, or open {}{also}",
                s("why"),
                evs("score"),
                evs("signature"),
                q(ev.get("state").and_then(|v| v.as_str()).unwrap_or("?")),
                q(&window_words(&ev["window"])),
                evs("metrics"),
                q(ev.get("rules").and_then(|v| v.as_str()).unwrap_or("?")),
                how("approve"),
                how("reject"),
                how("url"),
            )
        }
        _ => format!(
            "selfheal proposal `{id}` ({} on pipeline *{}*) {}: {}{also}",
            s("action"),
            pipeline,
            kind.name(),
            s("result"),
        ),
    }
}

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The webhook answered 2xx.
    Delivered {
        /// The status.
        status: u16,
    },
    /// A transient failure: try again later.
    Retry {
        /// The HTTP status, if there was an answer.
        status: Option<u16>,
        /// What went wrong, in words.
        why: String,
        /// The receiver's `Retry-After`, if it gave one (capped at [`MAX_RETRY_AFTER`]).
        retry_after: Option<Duration>,
    },
    /// The webhook refused the page (a 4xx other than 408, 425, 429): retrying
    /// the same request cannot help.
    Permanent {
        /// The HTTP status.
        status: Option<u16>,
        /// What went wrong, in words.
        why: String,
    },
}

/// The longest `Retry-After` honoured: a page must not wait longer than this
/// for a receiver that asks for more (the second channel has taken it by then).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3_600);

/// Posts escalations to the configured webhook, one attempt at a time.
#[derive(Debug)]
pub struct Notifier {
    cfg: WebhookConfig,
    client: reqwest::Client,
    rng: Mutex<Xoshiro256PlusPlus>,
}

impl Notifier {
    /// Validates `cfg` and builds the HTTP client; `seed` seeds the backoff jitter.
    pub fn new(cfg: WebhookConfig, seed: u64) -> Result<Notifier, NotifyError> {
        cfg.validate().map_err(NotifyError::Config)?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let client = reqwest::Client::builder().timeout(timeout).connect_timeout(timeout).build()?;
        Ok(Notifier { cfg, client, rng: Mutex::new(Xoshiro256PlusPlus::seed_from_u64(seed)) })
    }

    /// The configuration in use.
    pub fn config(&self) -> &WebhookConfig {
        &self.cfg
    }

    /// Posts `e` once and classifies the answer. Never fails: the outcome, good
    /// or bad, is the returned [`Attempt`].
    pub async fn attempt(&self, e: &Escalation) -> Attempt {
        let body = self.body(e);
        let result = self.client.post(&self.cfg.url).header("Idempotency-Key", e.id.as_str()).json(&body).send().await;
        match result {
            Ok(resp) => classify(resp.status(), resp.headers().get(reqwest::header::RETRY_AFTER), SystemTime::now()),
            // A request that could not even be built will not build next time either.
            Err(err) if err.is_builder() => Attempt::Permanent { status: None, why: error_chain(&err) },
            Err(err) => Attempt::Retry { status: None, why: error_chain(&err), retry_after: None },
        }
    }

    /// Full jitter: uniform in [0, min(cap, base·2^(failures-1))], `failures` ≥ 1
    /// being the consecutive failures so far.
    pub fn backoff(&self, failures: u32) -> Duration {
        Duration::from_millis(self.backoff_ms(failures.max(1)))
    }

    fn backoff_ms(&self, attempt: u32) -> u64 {
        let ceiling = self.cfg.base_ms.saturating_mul(2u64.saturating_pow(attempt - 1)).min(self.cfg.cap_ms);
        let mut rng = self.rng.locked();
        rng.gen_range(0..=ceiling)
    }

    fn body(&self, e: &Escalation) -> serde_json::Value {
        if let Some(kind) = Notice::of(e) {
            return match self.cfg.format {
                WebhookFormat::Slack => serde_json::json!({ "text": proposal_text(kind, e, true) }),
                WebhookFormat::Generic => serde_json::json!({
                    "event": format!("selfheal.proposal.{}", kind.name()),
                    "id": e.id,
                    "pipeline": e.pipeline,
                    "summary": e.summary,
                    "text": proposal_text(kind, e, false),
                    "detail": e.detail,
                }),
            };
        }
        match self.cfg.format {
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "selfheal escalation on pipeline *{}* (decision `{}`)\n{}\nRun `selfheal explain {}` for the full provenance.",
                    slack_escape(&e.pipeline), slack_escape(&e.id), slack_escape(&e.summary), slack_escape(&e.id)
                )
            }),
            WebhookFormat::Generic => serde_json::json!({
                "event": "selfheal.escalation",
                "id": e.id,
                "pipeline": e.pipeline,
                "summary": e.summary,
                "detail": e.detail,
            }),
        }
    }
}

/// Classifies an answer (see the module doc); `now` dates a `Retry-After` given as an HTTP-date.
pub fn classify(status: StatusCode, retry_after: Option<&reqwest::header::HeaderValue>, now: SystemTime) -> Attempt {
    let code = status.as_u16();
    if status.is_success() {
        return Attempt::Delivered { status: code };
    }
    let why = format!("webhook answered HTTP {status}");
    let transient = matches!(code, 408 | 425 | 429);
    if status.is_client_error() && !transient {
        return Attempt::Permanent { status: Some(code), why };
    }
    let retry_after = retry_after.and_then(|v| v.to_str().ok()).and_then(|v| parse_retry_after(v, now));
    Attempt::Retry { status: Some(code), why, retry_after }
}

/// A `Retry-After` value: delay-seconds or an HTTP-date (RFC 9110 §10.2.3),
/// as a delay from `now`, capped at [`MAX_RETRY_AFTER`]. A date in the past is
/// a zero delay; anything unparseable is ignored (the backoff applies).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// An error with its causes, e.g. `error sending request ...: tcp connect error: Connection refused`.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proposal_reads_in_one_message_in_both_formats() {
        let e = Escalation {
            id: "r-7/proposal".into(),
            pipeline: "orders".into(),
            summary: "orders: scale_up proposed".into(),
            detail: serde_json::json!({
                "notice": "proposal", "decision_id": "r-7", "pipeline": "orders", "action": "scale_up",
                "why": "low confidence: 3 visits < 30",
                "evidence": { "score": 0.8123, "signature": 2, "state": "latency=>600s workers=4", "rules": "restart",
                              "window": { "latency_p95_s": 712.04, "error_ratio": 0.0, "workers": 4.0 },
                              "metrics": ["glue.driver.aggregate.numFailedTasks=3"] },
                "proposed_ms": 1_795_989_600_000u64, "expires_at_ms": 1_795_990_500_000u64,
                "also_open": [{ "id": "r-9", "action": "retry_with_backoff" }],
                "answer": { "approve": "selfheal approve r-7 --addr 127.0.0.1:9478",
                            "reject": "selfheal reject r-7 --addr 127.0.0.1:9478", "url": "http://127.0.0.1:9478/ui" },
            }),
        };
        assert_eq!(Notice::of(&e), Some(Notice::Proposal));
        let n = Notifier::new(WebhookConfig::new("http://127.0.0.1:1/"), 1).unwrap();
        let text = n.body(&e)["text"].as_str().unwrap().to_string();
        for needle in [
            "*scale_up* on pipeline *orders* (decision `r-7`)",
            "Why it waits: low confidence: 3 visits &lt; 30",
            "anomaly score 0.81, signature 2, state: latency=&gt;600s workers=4",
            "latency p95 712.0 s, error ratio 0.00, workers 4",
            "Rule policy would: restart",
            "Expires: 2026-11-29T",
            "`selfheal approve r-7 --addr 127.0.0.1:9478`",
            "http://127.0.0.1:9478/ui",
            "Also open on this pipeline: r-9 (retry_with_backoff)",
        ] {
            assert!(text.contains(needle), "{needle:?} not in:\n{text}");
        }
        let g = Notifier::new(WebhookConfig { format: WebhookFormat::Generic, ..WebhookConfig::new("http://x/") }, 1)
            .unwrap()
            .body(&e);
        assert_eq!((g["event"].as_str(), g["id"].as_str()), (Some("selfheal.proposal.proposal"), Some("r-7/proposal")));
        assert_eq!(g["detail"]["evidence"]["signature"], 2);
        // An escalation is not a notice and keeps its format.
        let plain = Escalation { detail: serde_json::json!({}), ..e };
        assert_eq!(Notice::of(&plain), None);
        assert!(n.body(&plain)["text"].as_str().unwrap().starts_with("selfheal escalation"));
    }

    #[test]
    fn slack_text_escapes_every_interpolated_field() {
        let nasty = "<!channel> & <https://evil.example|Approve here>";
        let e = Escalation {
            id: "r-1/approved".into(),
            pipeline: nasty.into(),
            summary: nasty.into(),
            detail: serde_json::json!({
                "notice": "approved", "decision_id": "r-1", "action": "scale_up",
                "result": format!("approved by {nasty}"),
                "also_open": [{ "id": nasty, "action": nasty }],
                "ended": [{ "id": "r-2", "action": "scale_down", "result": nasty }],
            }),
        };
        let n = Notifier::new(WebhookConfig::new("http://127.0.0.1:1/"), 1).unwrap();
        let text = n.body(&e)["text"].as_str().unwrap().to_string();
        assert!(!text.contains('<') && !text.contains('>'), "no Slack control sequence survives:\n{text}");
        assert!(text.contains("&lt;!channel&gt; &amp; &lt;https://evil.example|Approve here&gt;"), "{text}");
        assert!(text.contains("Also ended on this pipeline: r-2 (scale_down): &lt;!channel&gt;"), "{text}");
        let p = Escalation {
            id: "r-1/proposal".into(),
            detail: serde_json::json!({
                "notice": "proposal", "decision_id": nasty, "action": nasty, "why": nasty,
                "evidence": { "state": nasty, "rules": nasty, "metrics": [nasty], "signature": nasty },
                "answer": { "approve": nasty, "reject": nasty, "url": nasty },
            }),
            ..e.clone()
        };
        let text = n.body(&p)["text"].as_str().unwrap().to_string();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        let plain = Escalation { detail: serde_json::json!({}), ..e.clone() };
        let text = n.body(&plain)["text"].as_str().unwrap().to_string();
        assert!(!text.contains('<') && !text.contains('>'), "{text}");
        // The generic format carries the plain text (its consumer escapes for its own medium).
        let g = Notifier::new(WebhookConfig { format: WebhookFormat::Generic, ..WebhookConfig::new("http://x/") }, 1)
            .unwrap()
            .body(&e);
        assert!(g["text"].as_str().unwrap().contains(nasty));
    }

    #[test]
    fn defaults_and_validation() {
        let cfg: WebhookConfig = serde_json::from_str(r#"{"url": "https://hooks.example.com/x"}"#).unwrap();
        assert_eq!(cfg, WebhookConfig::new("https://hooks.example.com/x"));
        assert_eq!(
            (cfg.format, cfg.timeout_ms, cfg.max_attempts, cfg.base_ms, cfg.cap_ms, cfg.fallback.clone()),
            (WebhookFormat::Slack, 5_000, None, 500, 300_000, None)
        );
        assert!(cfg.validate().is_ok());
        for bad in ["ftp://x/y", "not a url", "file:///etc/passwd"] {
            let err = WebhookConfig::new(bad).validate().unwrap_err();
            assert!(err.starts_with("notify.url: "), "{err}");
        }
        // An old file's max_attempts still loads (and no longer limits delivery).
        let old: WebhookConfig = serde_json::from_str(r#"{"url": "http://x", "max_attempts": 2}"#).unwrap();
        assert!(old.validate().is_ok());
        let err = WebhookConfig { base_ms: 400_000, ..cfg.clone() }.validate().unwrap_err();
        assert!(err.starts_with("notify.base_ms"), "{err}");
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"url": "http://x", "retries": 3}"#).is_err());
        let f: FallbackConfig = toml::from_str("kind = \"file\"\npath = \"/tmp/pages.jsonl\"").unwrap();
        assert_eq!((f.kind, f.after_secs), (FallbackKind::File, 300));
        assert!(toml::from_str::<FallbackConfig>("kind = \"sns\"\npath = \"x\"").is_err());
        assert!(toml::from_str::<FallbackConfig>("path = \"x\"\nafter = 3").is_err());
        let dir = WebhookConfig {
            fallback: Some(FallbackConfig { kind: FallbackKind::File, path: "/".into(), after_secs: 1 }),
            ..cfg
        };
        assert!(dir.validate().unwrap_err().starts_with("notify.fallback.path"));
    }

    #[test]
    fn answers_are_classified_and_retry_after_read_in_both_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_489_200);
        let hv = |s: &str| reqwest::header::HeaderValue::from_str(s).unwrap();
        assert_eq!(classify(StatusCode::NO_CONTENT, None, now), Attempt::Delivered { status: 204 });
        for code in [400, 401, 403, 404, 410, 413, 422] {
            let st = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(st, None, now), Attempt::Permanent { .. }), "{code}");
        }
        for code in [408, 425, 429, 500, 502, 503, 504] {
            let st = StatusCode::from_u16(code).unwrap();
            assert!(matches!(classify(st, None, now), Attempt::Retry { retry_after: None, .. }), "{code}");
        }
        let ra = |v: &str| match classify(StatusCode::TOO_MANY_REQUESTS, Some(&hv(v)), now) {
            Attempt::Retry { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(ra("60"), Some(Duration::from_secs(60)));
        assert_eq!(ra(" 2 "), Some(Duration::from_secs(2)));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(ra(&date), Some(Duration::from_secs(90)));
        assert_eq!(ra("Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO), "a date in the past");
        assert_eq!(ra("soon"), None);
        assert_eq!(ra("999999999"), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn backoff_is_full_jitter_within_the_capped_ceiling() {
        let cfg = WebhookConfig { base_ms: 100, cap_ms: 1_000, ..WebhookConfig::new("http://127.0.0.1:1/") };
        let n = Notifier::new(cfg, 7).unwrap();
        for attempt in 1..=10 {
            let ceiling = (100u64 << (attempt - 1)).min(1_000);
            for _ in 0..50 {
                assert!(n.backoff_ms(attempt) <= ceiling);
            }
        }
        assert!(n.backoff_ms(200) <= 1_000, "huge attempt numbers saturate");
    }
}
