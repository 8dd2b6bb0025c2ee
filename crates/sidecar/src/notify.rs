//! Escalation reaches a human: a webhook notifier.
//!
//! When the agent chooses `escalate`, or the guardrails refuse an action that
//! something must still be done about, the sidecar does not act and a person has to.
//! A line in a log nobody is watching is not an escalation, so the notifier posts it
//! to a webhook (a Slack incoming webhook, or any HTTP endpoint taking JSON) and tries
//! hard to get it there: connection errors, timeouts, 5xx and 429 answers are retried
//! with full-jitter exponential backoff (a 429's `Retry-After` is honoured up to the
//! cap); any other 4xx means the request itself is wrong and is not retried. Every
//! attempt carries the decision id as `Idempotency-Key`, so a receiver that saw an
//! attempt whose answer got lost can drop the duplicate. The result ([`Delivery`]) is
//! written to the provenance log as an escalation record, delivered or not.
//!
//! The backoff RNG is seeded, like every random stream in selfheal, so a run can be
//! replayed.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Duration;

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
    /// Attempts in total, the first included.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Backoff base: the delay before retry n is uniform in [0, min(cap, base·2^(n-1))].
    #[serde(default = "default_base_ms")]
    pub base_ms: u64,
    /// Backoff cap.
    #[serde(default = "default_cap_ms")]
    pub cap_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_max_attempts() -> u32 {
    4
}
fn default_base_ms() -> u64 {
    500
}
fn default_cap_ms() -> u64 {
    10_000
}

impl WebhookConfig {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            format: WebhookFormat::default(),
            timeout_ms: default_timeout_ms(),
            max_attempts: default_max_attempts(),
            base_ms: default_base_ms(),
            cap_ms: default_cap_ms(),
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
        if self.max_attempts == 0 {
            return Err("notify.max_attempts: must be at least 1".to_owned());
        }
        if self.base_ms > self.cap_ms {
            return Err(format!("notify.base_ms: must not exceed notify.cap_ms ({})", self.cap_ms));
        }
        Ok(())
    }
}

/// What to tell the human.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Escalation {
    /// The decision id (also the idempotency key).
    pub id: String,
    /// The pipeline concerned.
    pub pipeline: String,
    /// One-line provenance summary (see [`crate::provenance::one_line`]).
    pub summary: String,
    /// Structured facts: score, signature, chosen action, verdict, reason, ...
    pub detail: serde_json::Value,
}

/// How a [`Notifier::send`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The webhook answered 2xx.
    pub delivered: bool,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any attempt failed.
    pub last_error: Option<String>,
}

/// Posts escalations to the configured webhook, with retries.
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

    /// Posts `e`, retrying transient failures up to `max_attempts` times in all.
    /// Never fails: the outcome, good or bad, is in the returned [`Delivery`].
    pub async fn send(&self, e: &Escalation) -> Delivery {
        let body = self.body(e);
        let mut last_error = None;
        for attempt in 1..=self.cfg.max_attempts {
            let result =
                self.client.post(&self.cfg.url).header("Idempotency-Key", e.id.as_str()).json(&body).send().await;
            let (error, retryable, retry_after_ms) = match result {
                Ok(resp) if resp.status().is_success() => {
                    tracing::info!(id = %e.id, pipeline = %e.pipeline, attempt, "escalation delivered");
                    return Delivery { delivered: true, attempts: attempt, last_error };
                }
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after_ms = retry_after_ms(&resp);
                    let retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
                    (format!("webhook answered HTTP {status}"), retryable, retry_after_ms)
                }
                Err(err) => {
                    let retryable = err.is_connect() || err.is_timeout() || err.is_request();
                    (error_chain(&err), retryable, None)
                }
            };
            tracing::warn!(id = %e.id, pipeline = %e.pipeline, attempt, retryable, error = %error, "escalation attempt failed");
            last_error = Some(error);
            if !retryable {
                return Delivery { delivered: false, attempts: attempt, last_error };
            }
            if attempt < self.cfg.max_attempts {
                let wait = self.backoff_ms(attempt).max(retry_after_ms.unwrap_or(0).min(self.cfg.cap_ms));
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        }
        Delivery { delivered: false, attempts: self.cfg.max_attempts, last_error }
    }

    /// Full jitter: uniform in [0, min(cap, base·2^(attempt-1))].
    fn backoff_ms(&self, attempt: u32) -> u64 {
        let ceiling = self.cfg.base_ms.saturating_mul(2u64.saturating_pow(attempt - 1)).min(self.cfg.cap_ms);
        let mut rng = self.rng.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        rng.gen_range(0..=ceiling)
    }

    fn body(&self, e: &Escalation) -> serde_json::Value {
        match self.cfg.format {
            WebhookFormat::Slack => serde_json::json!({
                "text": format!(
                    "selfheal escalation on pipeline *{}* (decision `{}`)\n{}\nRun `selfheal explain {}` for the full provenance.",
                    e.pipeline, e.id, e.summary, e.id
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

/// A `Retry-After` given in seconds, as ms.
fn retry_after_ms(resp: &reqwest::Response) -> Option<u64> {
    let secs: u64 = resp.headers().get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(secs.saturating_mul(1_000))
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
    fn defaults_and_validation() {
        let cfg: WebhookConfig = serde_json::from_str(r#"{"url": "https://hooks.example.com/x"}"#).unwrap();
        assert_eq!(cfg, WebhookConfig::new("https://hooks.example.com/x"));
        assert_eq!(
            (cfg.format, cfg.timeout_ms, cfg.max_attempts, cfg.base_ms, cfg.cap_ms),
            (WebhookFormat::Slack, 5_000, 4, 500, 10_000)
        );
        assert!(cfg.validate().is_ok());
        for bad in ["ftp://x/y", "not a url", "file:///etc/passwd"] {
            let err = WebhookConfig::new(bad).validate().unwrap_err();
            assert!(err.starts_with("notify.url: "), "{err}");
        }
        let err = WebhookConfig { max_attempts: 0, ..cfg.clone() }.validate().unwrap_err();
        assert!(err.starts_with("notify.max_attempts"), "{err}");
        let err = WebhookConfig { base_ms: 20_000, ..cfg }.validate().unwrap_err();
        assert!(err.starts_with("notify.base_ms"), "{err}");
        assert!(serde_json::from_str::<WebhookConfig>(r#"{"url": "http://x", "retries": 3}"#).is_err());
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
