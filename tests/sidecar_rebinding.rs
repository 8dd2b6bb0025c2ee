//! The control plane without a token (the loopback default) against a
//! browser: DNS rebinding (a foreign `Host`), cross-site POSTs (a foreign
//! `Origin`, `text/plain` bodies). Real daemon, raw HTTP/1.1.

mod common;

use common::{wait_for, Sidecar, Start};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One request with exactly these headers (no `Host` added); status and body.
fn raw(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

#[test]
fn a_rebound_host_or_a_cross_site_post_is_refused_without_a_token() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let cfg = "[source]\nkind = \"simulator\"\ntick_ms = 50\npipelines = 2\n\
               [guard]\nmode = \"recommend\"\napproval_ttl_secs = 120\n\
               [guard.budget]\nactions_per_hour = 1000\ncooldown_secs = 0\nblast_radius = 10\n";
    let env = [("SELFHEAL_CONTROL_TOKEN", "")];
    let d = Sidecar::start(Start { work: work.path(), state: &state, config: Some(cfg), args: &[], env: &env });
    assert!(d.token.is_empty());
    wait_for(Duration::from_secs(30), "a proposal in GET /approvals", || !d.approvals().is_empty());
    let pid = d.approvals()[0].0.clone();
    let port = d.control.rsplit_once(':').unwrap().1.to_string();
    let evil = format!("evil.example:{port}");
    let evil_origin = format!("http://{evil}");

    // DNS rebinding: the page is the attacker's origin, pointed at 127.0.0.1.
    let (code, body) = raw(&d.control, "GET", "/ui", &[("Host", &evil)], "");
    assert_eq!(code, 421, "a foreign Host gets no page (nor its CSRF token): {body}");
    assert!(!body.contains("name=\"csrf\""), "{body}");
    let form =
        [("Host", evil.as_str()), ("Origin", &evil_origin), ("Content-Type", "application/x-www-form-urlencoded")];
    let (code, body) = raw(&d.control, "POST", &format!("/ui/approvals/{pid}"), &form, "csrf=x&decision=approve");
    assert_eq!(code, 421, "{body}");
    let json = [("Host", evil.as_str()), ("Content-Type", "application/json")];
    let (code, body) = raw(&d.control, "POST", &format!("/approvals/{pid}"), &json, r#"{"decision":"approve"}"#);
    assert_eq!(code, 421, "{body}");
    assert!(body.contains("Host"), "the refusal says why: {body}");
    let (code, _) = raw(&d.control, "GET", "/approvals", &[("Host", &evil)], "");
    assert_eq!(code, 421);

    // A cross-site POST to the daemon's own name: a foreign Origin.
    let own = [("Host", d.control.as_str()), ("Origin", "http://evil.example"), ("Content-Type", "text/plain")];
    let (code, body) = raw(&d.control, "POST", "/resume", &own, "{}");
    assert_eq!(code, 403, "{body}");
    // No Origin but not JSON (a form or text/plain body): 415.
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let h = [("Host", d.control.as_str()), ("Content-Type", ct)];
        let (code, body) = raw(&d.control, "POST", "/pause", &h, "{}");
        assert_eq!(code, 415, "{ct}: {body}");
        let (code, body) = raw(&d.control, "POST", &format!("/approvals/{pid}"), &h, r#"{"decision":"approve"}"#);
        assert_eq!(code, 415, "{ct}: {body}");
    }
    let (code, _) = raw(&d.control, "POST", "/resume", &[("Host", d.control.as_str())], "");
    assert_eq!(code, 415, "no Content-Type at all");
    assert!(d.approvals().iter().any(|p| p.0 == pid), "nothing refused was answered");
    let m = d.metrics();
    assert_eq!(common::metric(&m, "selfheal_paused"), Some(0.0), "nothing refused paused the daemon:\n{m}");

    // The daemon's own names still work: localhost, and the CLI (JSON).
    let local = format!("localhost:{port}");
    let h = [("Host", local.as_str()), ("Origin", &format!("http://{local}")), ("Content-Type", "application/json")];
    let (code, body) = raw(&d.control, "POST", &format!("/approvals/{pid}"), &h, r#"{"decision":"reject"}"#);
    assert_eq!(code, 200, "{body}");
    let out = std::process::Command::new(common::bin())
        .args(["pause", "--addr", &d.control, "--reason", "rebinding test"])
        .env_remove("SELFHEAL_CONTROL_TOKEN")
        .output()
        .unwrap();
    assert!(out.status.success(), "the CLI still pauses: {}", String::from_utf8_lossy(&out.stderr));
}
