//! The webhook notifier against a real local HTTP receiver.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use selfheal_sidecar::notify::{Attempt, Escalation, Notifier, WebhookConfig, WebhookFormat};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the receiver saw, and what it answers next.
#[derive(Default)]
struct Receiver {
    /// (Idempotency-Key header, body) per request.
    seen: Mutex<Vec<(Option<String>, serde_json::Value)>>,
    /// Status codes for the first requests; 200 afterwards.
    script: Mutex<Vec<u16>>,
    /// Delay before answering the first request.
    first_delay: Mutex<Option<Duration>>,
}

async fn hook(State(rx): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let key = headers.get("idempotency-key").map(|v| v.to_str().unwrap().to_owned());
    let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body));
    rx.seen.lock().unwrap().push((key, json));
    let delay = rx.first_delay.lock().unwrap().take();
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut script = rx.script.lock().unwrap();
    let code = if script.is_empty() { 200 } else { script.remove(0) };
    StatusCode::from_u16(code).unwrap()
}

/// Starts a receiver on 127.0.0.1:0 answering `script` first; returns its URL.
async fn receiver(script: &[u16]) -> (String, Arc<Receiver>) {
    let rx = Arc::new(Receiver { script: Mutex::new(script.to_vec()), ..Receiver::default() });
    let app = Router::new().route("/hook", post(hook)).with_state(rx.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

fn config(url: &str, format: WebhookFormat) -> WebhookConfig {
    WebhookConfig { timeout_ms: 2_000, base_ms: 1, cap_ms: 5, format, ..WebhookConfig::new(url) }
}

fn escalation() -> Escalation {
    Escalation {
        id: "d-1795402800000-42".into(),
        pipeline: "p2".into(),
        summary: "03:12:05.123 p2 d-1795402800000-42 anomalous (score 0.81, signature 3) → escalate [escalated: unknown signature]".into(),
        detail: serde_json::json!({"score": 0.81, "signature": 3, "chosen": "escalate", "verdict": "escalated"}),
    }
}

#[tokio::test]
async fn slack_body_arrives_with_the_id() {
    let (url, rx) = receiver(&[]).await;
    let n = Notifier::new(config(&url, WebhookFormat::Slack), 1).unwrap();
    assert_eq!(n.attempt(&escalation()).await, Attempt::Delivered { status: 200 });
    let seen = rx.seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let (key, body) = &seen[0];
    assert_eq!(key.as_deref(), Some("d-1795402800000-42"));
    let text = body["text"].as_str().unwrap();
    assert!(text.contains("d-1795402800000-42") && text.contains("p2"), "{text}");
    assert!(text.contains("unknown signature"), "the summary is in the message: {text}");
    assert_eq!(body.as_object().unwrap().len(), 1, "only `text`: {body}");
}

#[tokio::test]
async fn generic_body_arrives_with_the_id_and_detail() {
    let (url, rx) = receiver(&[]).await;
    let n = Notifier::new(config(&url, WebhookFormat::Generic), 1).unwrap();
    let e = escalation();
    assert!(matches!(n.attempt(&e).await, Attempt::Delivered { .. }));
    let seen = rx.seen.lock().unwrap();
    let (key, body) = &seen[0];
    assert_eq!(key.as_deref(), Some(e.id.as_str()));
    assert_eq!(
        body,
        &serde_json::json!({
            "event": "selfheal.escalation",
            "id": e.id,
            "pipeline": "p2",
            "summary": e.summary,
            "detail": e.detail,
        })
    );
}

#[tokio::test]
async fn server_errors_and_rate_limits_are_transient_with_the_same_idempotency_key() {
    let (url, rx) = receiver(&[503, 429, 408]).await;
    let n = Notifier::new(config(&url, WebhookFormat::Generic), 2).unwrap();
    for code in [503, 429, 408] {
        match n.attempt(&escalation()).await {
            Attempt::Retry { status, why, .. } => {
                assert_eq!(status, Some(code));
                assert!(why.contains(&code.to_string()), "{why}");
            }
            other => panic!("{code}: {other:?}"),
        }
    }
    assert!(matches!(n.attempt(&escalation()).await, Attempt::Delivered { .. }));
    let seen = rx.seen.lock().unwrap();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|(key, _)| key.as_deref() == Some("d-1795402800000-42")));
}

#[tokio::test]
async fn client_errors_are_permanent() {
    let (url, _rx) = receiver(&[400]).await;
    let n = Notifier::new(config(&url, WebhookFormat::Slack), 4).unwrap();
    match n.attempt(&escalation()).await {
        Attempt::Permanent { status, why } => {
            assert_eq!(status, Some(400));
            assert!(why.contains("400"), "{why}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_slow_receiver_times_out_as_a_transient_failure() {
    let (url, rx) = receiver(&[]).await;
    *rx.first_delay.lock().unwrap() = Some(Duration::from_millis(1_500));
    let cfg = WebhookConfig { timeout_ms: 300, ..config(&url, WebhookFormat::Slack) };
    let n = Notifier::new(cfg, 5).unwrap();
    match n.attempt(&escalation()).await {
        Attempt::Retry { status: None, why, .. } => assert!(why.contains("timed out"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(n.attempt(&escalation()).await, Attempt::Delivered { .. }));
}

#[tokio::test]
async fn an_unreachable_webhook_is_a_transient_failure() {
    // Bind and drop a listener: nothing listens on that port any more.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let n = Notifier::new(config(&format!("http://127.0.0.1:{port}/hook"), WebhookFormat::Slack), 6).unwrap();
    match n.attempt(&escalation()).await {
        Attempt::Retry { status: None, why, .. } => assert!(why.to_lowercase().contains("connect"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_from_toml_uses_defaults_and_rejects_unknown_keys() {
    let cfg: WebhookConfig = toml::from_str("url = \"https://hooks.slack.com/services/T/B/X\"").unwrap();
    assert_eq!(cfg, WebhookConfig::new("https://hooks.slack.com/services/T/B/X"));
    let cfg: WebhookConfig = toml::from_str("url = \"http://h/x\"\nformat = \"generic\"\nmax_attempts = 2").unwrap();
    assert_eq!((cfg.format, cfg.max_attempts), (WebhookFormat::Generic, Some(2)));
    let cfg: WebhookConfig = toml::from_str(
        "url = \"http://h/x\"\n[fallback]\nkind = \"file\"\npath = \"/var/tmp/p.jsonl\"\nafter_secs = 60",
    )
    .unwrap();
    assert_eq!(cfg.fallback.unwrap().after_secs, 60);
    assert!(toml::from_str::<WebhookConfig>("url = \"http://h/x\"\nformat = \"teams\"").is_err());
    assert!(toml::from_str::<WebhookConfig>("url = \"http://h/x\"\nretries = 2").is_err());
}

#[test]
fn invalid_urls_are_refused_naming_the_key() {
    for url in ["ftp://host/x", "hooks.slack.com/x", ""] {
        let err = WebhookConfig::new(url).validate().unwrap_err();
        assert!(err.starts_with("notify.url:"), "{err}");
        assert!(Notifier::new(WebhookConfig::new(url), 0).unwrap_err().to_string().starts_with("notify.url:"));
    }
}
