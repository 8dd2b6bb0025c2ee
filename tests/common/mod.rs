//! Helpers of the sidecar's end-to-end tests: start the real `selfheal run`
//! as a process, talk to it over plain HTTP/1.1 (std only), stop it, read its
//! provenance log. Shared by `tests/sidecar.rs` and `tests/sidecar_kill.rs`;
//! each uses a part, hence the `dead_code` allowance.
#![allow(dead_code)]

mod chromium;
mod hook;
mod http;
#[allow(unused_imports)] // each test uses a part
pub use chromium::*;
#[allow(unused_imports)]
pub use hook::*;
pub use http::*;

use selfheal_sidecar::provenance::{read_log, CallRecord, DecisionRecord, LogRead, OutcomeRecord, Record};
use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_selfheal")
}

/// Run `selfheal ARGS` to completion.
pub fn selfheal(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .output()
        .expect("run selfheal")
}

/// Wall clock, Unix ms (the daemon's clock too: same machine).
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Poll `cond` every 20 ms until it holds; panic naming `what` after `timeout`.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The value of one series (`name{labels}` exactly as rendered) in a metrics body.
pub fn metric(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series).and_then(|(_, v)| v.parse().ok()))
}

/// `promtool check metrics` on `body`; fails loudly if promtool is missing.
pub fn promtool_check(body: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is required by this test and could not be started ({e}).\n\
             Install it: `apt-get install -y prometheus` (Debian/Ubuntu; it ships /usr/bin/promtool), \
             or put promtool from https://prometheus.io/download/ on PATH."
        ),
    };
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejected /metrics:\n{}{}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write an executable `sh` script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A scenario where faults come often and last (for guard tests that need
/// pipelines in trouble most of the time).
pub fn fault_heavy_scenario(dir: &Path) -> PathBuf {
    let path = dir.join("fault-heavy.toml");
    std::fs::write(
        &path,
        r#"name = "fault-heavy"
description = "Faults nearly all the time, two at once, none of them fading by itself"
horizon = 240

[faults]
rate = 0.5
max_concurrent = 2

[faults.mix]
schema_drift = 1.0
memory_pressure = 1.0
stuck_job = 1.0
poison_records = 1.0
"#,
    )
    .unwrap();
    path
}

/// Lines of a text file (empty if it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|s| s.lines().map(String::from).collect()).unwrap_or_default()
}

/// The control token the tests' daemons run with (unless a test's `env`
/// sets `SELFHEAL_CONTROL_TOKEN` itself; empty = no token).
pub const TEST_TOKEN: &str = "e2e-control-token";

/// A running `selfheal run`, killed (SIGKILL) when dropped, even on panic.
pub struct Sidecar {
    child: Option<Child>,
    /// The metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub addr: String,
    /// The control listener (`/approvals`, `/pause`, `/resume`, `/ingest`).
    pub control: String,
    /// The control token (empty: none).
    pub token: String,
    pub state: PathBuf,
    pub stderr: PathBuf,
}

/// How to start one.
pub struct Start<'a> {
    /// Temp dir for the config file and the daemon's stderr.
    pub work: &'a Path,
    /// `--state-dir`.
    pub state: &'a Path,
    /// Config file text; None runs without `--config`.
    pub config: Option<&'a str>,
    /// More arguments of `selfheal run`.
    pub args: &'a [&'a str],
    /// Environment variables of the daemon.
    pub env: &'a [(&'a str, &'a str)],
}

static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Sidecar {
    /// Start and wait for /readyz 200 (retrying on another port if the free
    /// port was taken meanwhile).
    pub fn start(s: Start<'_>) -> Sidecar {
        let mut last = String::new();
        for _ in 0..3 {
            let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let addr = format!("127.0.0.1:{}", free_port());
            let control = format!("127.0.0.1:{}", free_port());
            let stderr = s.work.join(format!("daemon-{n}.stderr"));
            let mut cmd = Command::new(bin());
            cmd.arg("run").args(["--listen", &addr, "--control-listen", &control]).arg("--state-dir").arg(s.state);
            if let Some(text) = s.config {
                let path = s.work.join(format!("sidecar-{n}.toml"));
                std::fs::write(&path, text).unwrap();
                cmd.arg("--config").arg(path);
            }
            let token = s
                .env
                .iter()
                .rev()
                .find(|(k, _)| *k == "SELFHEAL_CONTROL_TOKEN")
                .map_or(TEST_TOKEN, |(_, v)| *v)
                .to_string();
            cmd.args(s.args)
                .env("SELFHEAL_CONTROL_TOKEN", TEST_TOKEN)
                .envs(s.env.iter().copied())
                .env("NO_COLOR", "1")
                .current_dir(s.work)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&stderr).unwrap());
            let child = cmd.spawn().expect("start selfheal run");
            let mut sc = Sidecar { child: Some(child), addr, control, token, state: s.state.to_path_buf(), stderr };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(r) = sc.get("/readyz") {
                    if r.status == 200 {
                        return sc;
                    }
                }
                if let Some(st) = sc.child.as_mut().unwrap().try_wait().unwrap() {
                    last = format!("exited with {st} before it was ready:\n{}", sc.stderr_tail());
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if !last.contains("cannot listen") {
                break;
            }
        }
        panic!("selfheal run did not get ready: {last}");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// The last lines of the daemon's stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(40)..].join("\n")
    }

    pub fn get(&self, path: &str) -> std::io::Result<Response> {
        http(&self.addr, "GET", path, &[], "")
    }

    /// `Authorization: Bearer <token>`, if the daemon has a token.
    pub fn auth(&self) -> Vec<(&'static str, String)> {
        if self.token.is_empty() {
            Vec::new()
        } else {
            vec![("Authorization", format!("Bearer {}", self.token))]
        }
    }

    /// A request to the control listener with the control token and `headers`.
    pub fn control_http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> std::io::Result<Response> {
        let auth = self.auth();
        let mut all: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(headers);
        http(&self.control, method, path, &all, body)
    }

    /// POST JSON to a control route, with the control token.
    pub fn post(&self, path: &str, body: &str) -> Response {
        self.control_http("POST", path, &[("Content-Type", "application/json")], body)
            .unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", self.stderr_tail()))
    }

    /// POST a body of JSON lines to `/ingest`, with the control token.
    pub fn ingest(&self, body: &str) -> Response {
        self.control_http("POST", "/ingest", &[], body)
            .unwrap_or_else(|e| panic!("POST /ingest: {e}\n{}", self.stderr_tail()))
    }

    pub fn metrics(&self) -> String {
        let r = self.get("/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.stderr_tail()));
        assert_eq!(r.status, 200, "GET /metrics: {}", r.body);
        r.body
    }

    /// Pending proposals as (id, expires_at_ms, pipeline, action).
    pub fn approvals(&self) -> Vec<(String, i64, String, String)> {
        let r = self.control_http("GET", "/approvals", &[], "").expect("GET /approvals");
        assert_eq!(r.status, 200, "GET /approvals: {}", r.body);
        let v: serde_json::Value = serde_json::from_str(&r.body).expect("approvals JSON");
        v.as_array()
            .expect("a list")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["expires_at_ms"].as_i64().unwrap(),
                    p["pipeline"].as_str().unwrap().to_string(),
                    p["action"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn log_path(&self) -> PathBuf {
        self.state.join("provenance.jsonl")
    }

    /// The provenance log as it is now (records of the last ~0.5 s may still be buffered).
    pub fn log(&self) -> LogRead {
        if !self.log_path().exists() {
            return LogRead::default();
        }
        read_log(&self.log_path()).expect("read the provenance log")
    }

    /// SIGTERM; the exit status, which must come within `within`.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        let pid = self.pid().to_string();
        let st = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            if start.elapsed() > within {
                panic!("selfheal run did not exit within {within:?} of SIGTERM:\n{}", self.stderr_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no grace.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Run a client command (`approve ID`, `pause`, ...) against this
    /// daemon's control listener, with its token in `SELFHEAL_CONTROL_TOKEN`.
    pub fn client(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--addr", &self.control]);
        Command::new(bin())
            .args(&all)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("SELFHEAL_CONTROL_TOKEN", &self.token)
            .stdin(Stdio::null())
            .output()
            .expect("run selfheal")
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Decision records.
pub fn decisions(recs: &[Record]) -> Vec<&DecisionRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Decision(d) => Some(d),
            _ => None,
        })
        .collect()
}

/// Call records.
pub fn calls(recs: &[Record]) -> Vec<&CallRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Call(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Outcome records.
pub fn outcomes(recs: &[Record]) -> Vec<&OutcomeRecord> {
    recs.iter()
        .filter_map(|r| match r {
            Record::Outcome(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// Outcome status by decision id (the last one, if several).
pub fn outcome_of(recs: &[Record]) -> HashMap<String, String> {
    outcomes(recs).into_iter().map(|o| (o.id.clone(), o.status.to_string())).collect()
}
