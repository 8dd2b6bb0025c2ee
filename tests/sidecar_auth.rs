//! The control plane's authentication and least exposure, end to end against
//! the real `selfheal run`: two listeners, a bearer token (401 without, 403
//! wrong), refusal to start an open control plane on a non-loopback address,
//! the CLI with `--token-file`, body and line limits.

mod common;

use common::{http, selfheal, wait_for, Sidecar, Start};
use selfheal_sidecar::auth::token_id;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("selfheal-auth-").tempdir().unwrap()
}

const SECRET: &str = "file-secret-5f1c";

/// An http-source daemon whose control token comes from a file (mode 0644,
/// which must be warned about), with a small body limit.
fn start(work: &Path) -> Sidecar {
    let token_file = work.join("control-token");
    std::fs::write(&token_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = format!(
        "[daemon]\ncontrol_token_file = \"{}\"\nmax_body_bytes = 200000\n\
         [source]\nkind = \"http\"\nwindow_secs = 60\n[actuator]\nkind = \"dry-run\"\n",
        token_file.display()
    );
    let state = work.join("state");
    // No environment token: the file is the only one.
    let mut d = Sidecar::start(Start {
        work,
        state: &state,
        config: Some(&cfg),
        args: &[],
        env: &[("SELFHEAL_CONTROL_TOKEN", "")],
    });
    d.token = SECRET.into();
    d
}

#[test]
fn control_routes_need_the_token_and_live_only_on_the_control_listener() {
    let work = tempdir();
    let mut d = start(work.path());
    let c = d.control.clone();
    let bearer = |t: &str| format!("Bearer {t}");
    for (method, path, body) in [
        ("GET", "/approvals", ""),
        ("POST", "/approvals/x-1", r#"{"decision":"approve"}"#),
        ("POST", "/pause", "{}"),
        ("POST", "/resume", "{}"),
        ("POST", "/ingest", ""),
    ] {
        let r = http(&c, method, path, &[], body).unwrap();
        assert_eq!(r.status, 401, "{method} {path} without a token: {}", r.body);
        assert!(r.headers.iter().any(|(k, v)| k == "www-authenticate" && v == "Bearer"), "{:?}", r.headers);
        let r = http(&c, method, path, &[("Authorization", "Basic Zm9vOmJhcg==")], body).unwrap();
        assert_eq!(r.status, 401, "{method} {path} with a non-bearer credential: {}", r.body);
        let r = http(&c, method, path, &[("Authorization", &bearer("not-the-token"))], body).unwrap();
        assert_eq!(r.status, 403, "{method} {path} with a wrong token: {}", r.body);
        let r = http(&c, method, path, &[("Authorization", &bearer(&format!("{SECRET}x")))], body).unwrap();
        assert_eq!(r.status, 403, "{method} {path} with the token and one more byte: {}", r.body);
        // The metrics listener does not serve it at all, token or not.
        let r = http(&d.addr, method, path, &[("Authorization", &bearer(SECRET))], body).unwrap();
        assert_eq!(r.status, 404, "{method} {path} on the metrics listener: {}", r.body);
        assert!(r.body.contains("daemon.control_listen"), "the 404 names the right listener: {}", r.body);
    }
    // With the token: accepted.
    let r = d.control_http("GET", "/approvals", &[], "").unwrap();
    assert_eq!((r.status, r.body.trim()), (200, "[]"));
    let r = d.post("/approvals/no-such-id", r#"{"decision":"approve"}"#);
    assert_eq!(r.status, 404, "past the token, an unknown id: {}", r.body);
    let r = d.post("/pause", r#"{"reason":"auth test"}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(&format!("auth test (token {})", token_id(SECRET))), "who paused: {}", r.body);
    let r = d.post("/resume", "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    // Metrics and health need no token, and are not on the control listener.
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = d.get(path).unwrap();
        assert_eq!(r.status, 200, "GET {path} on the metrics listener without a token: {}", r.body);
        let r = d.control_http("GET", path, &[], "").unwrap();
        assert_eq!(r.status, 404, "GET {path} on the control listener: {}", r.body);
        assert!(r.body.contains("daemon.listen"), "{}", r.body);
    }

    // Every control request is logged with route, method, remote address,
    // token id and status; never the token itself.
    wait_for(Duration::from_secs(5), "the log lines", || {
        std::fs::read_to_string(&d.stderr).unwrap().contains("/resume")
    });
    let st = d.terminate(Duration::from_secs(15));
    assert!(st.success(), "{st}:\n{}", d.stderr_tail());
    let log = std::fs::read_to_string(&d.stderr).unwrap();
    assert!(!log.contains(SECRET), "the token is in the daemon's log:\n{log}");
    assert!(log.contains("chmod 600"), "a world-readable token file is warned about:\n{log}");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("control request")).collect();
    let ok = lines
        .iter()
        .find(|l| l.contains("/pause") && l.contains("status=200"))
        .unwrap_or_else(|| panic!("no logged /pause:\n{log}"));
    for part in ["method=POST", "remote=127.0.0.1:", &format!("token_id={}", token_id(SECRET))] {
        assert!(ok.contains(part), "{part} missing from {ok}");
    }
    assert!(
        lines.iter().any(|l| l.contains("refused") && l.contains("/approvals") && l.contains("status=401")),
        "refusals are logged:\n{log}"
    );
    assert!(lines
        .iter()
        .any(|l| l.contains(&format!("token_id={}", token_id("not-the-token"))) && l.contains("status=403")));
}

#[test]
fn the_cli_sends_the_token_from_a_file() {
    let work = tempdir();
    let d = start(work.path());
    let token_file = work.path().join("cli-token");
    std::fs::write(&token_file, format!("{SECRET}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let tf = token_file.to_str().unwrap();
    let cli = |args: &[&str], env_token: &str| {
        Command::new(common::bin())
            .args(args)
            .args(["--addr", &d.control])
            .env("SELFHEAL_CONTROL_TOKEN", env_token)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let out = cli(&["pause", "--reason", "from the cli", "--token-file", tf], "");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("paused: from the cli"), "{out:?}");
    common::wait_for(Duration::from_secs(5), "selfheal_paused 1", || {
        common::metric(&d.metrics(), "selfheal_paused") == Some(1.0)
    });
    // Without a token: refused, and told how to give one.
    let out = cli(&["resume"], "");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && err.contains("--token-file") && err.contains("SELFHEAL_CONTROL_TOKEN"), "{err}");
    // A wrong one from the environment: 403.
    let out = cli(&["resume"], "wrong");
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"), "{out:?}");
    // The right one from the environment.
    let out = cli(&["resume"], SECRET);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // approve past the token: the daemon answers about the id, not the token.
    let out = cli(&["approve", "no-such-id", "--token-file", tf], "");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("404"), "{err}");
    // Pointed at the metrics listener by mistake: said so.
    let out = Command::new(common::bin())
        .args(["pause", "--addr", &d.addr, "--token-file", tf])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("metrics listener"), "{err}");
}

#[test]
fn oversized_bodies_get_413_and_long_lines_are_refused_by_number() {
    let work = tempdir();
    let d = start(work.path());
    // Over max_body_bytes (200000): 413, on ingest and on the other routes.
    let big = "x".repeat(250_000);
    let r = d.control_http("POST", "/ingest", &[], &big).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    let r = d.control_http("POST", "/pause", &[("Content-Type", "application/json")], &big).unwrap();
    assert_eq!(r.status, 413, "{}", r.body);
    // Without the token an oversized body is refused before it is read: 401.
    let r = http(&d.control, "POST", "/ingest", &[], &big).unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    // Within the body limit, a line over 64 KiB is refused alone, by its number.
    let t0 = 1_795_402_800_000i64;
    let good = format!(r#"{{"ts": {t0}, "pipeline": "orders", "metrics": {{"pipeline.latency.p95": 10}}}}"#);
    let long = format!(r#"{{"ts": {t0}, "pipeline": "{}", "metrics": {{}}}}"#, "p".repeat(70_000));
    let r = d.ingest(&[good.as_str(), long.as_str()].join("\n"));
    assert_eq!(r.status, 422, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["accepted"], 1, "{v}");
    assert_eq!(v["rejected"][0]["line"], 2, "{v}");
    assert!(v["rejected"][0]["error"].as_str().unwrap().contains("longer than the limit of 65536"), "{v}");
}

/// Wait for a process to exit within `within`; kill it and fail otherwise.
fn exits_within(mut child: std::process::Child, within: Duration) -> (bool, String) {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.success(), err);
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("selfheal run did not exit within {within:?}: it started with an open, exposed control plane");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_exposed_control_plane_without_a_token_is_refused() {
    let work = tempdir();
    let state = work.path().join("state");
    let child = Command::new(common::bin())
        .args(["run", "--listen", "127.0.0.1:0", "--control-listen", "0.0.0.0:0", "--state-dir"])
        .arg(&state)
        .env_remove("SELFHEAL_CONTROL_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, err) = exits_within(child, Duration::from_secs(30));
    assert!(!ok, "started anyway:\n{err}");
    for key in ["daemon.control_listen", "0.0.0.0:0", "daemon.control_token_file", "SELFHEAL_CONTROL_TOKEN"] {
        assert!(err.contains(key), "{key} missing from the error:\n{err}");
    }

    // `selfheal validate` says the same; with a token in the environment it passes.
    let cfg = work.path().join("exposed.toml");
    std::fs::write(&cfg, "[daemon]\ncontrol_listen = \"0.0.0.0:9478\"\n").unwrap();
    let out = Command::new(common::bin())
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .env_remove("SELFHEAL_CONTROL_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("daemon.control_listen"), "{err}");
    let out = Command::new(common::bin())
        .args(["validate", "--config", cfg.to_str().unwrap()])
        .env("SELFHEAL_CONTROL_TOKEN", "t")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("token {}", token_id("t"))), "{stdout}");
    // A token file that does not exist is named.
    std::fs::write(&cfg, "[daemon]\ncontrol_token_file = \"/no/such/token\"\n").unwrap();
    let out = selfheal(&["validate", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("daemon.control_token_file"), "{err}");
}
