//! A real local AWS API server for the tests: moto's standalone server
//! (`moto_server`, from `pip install 'moto[server]==5.2.5'`), one per test on a
//! free loopback port, killed when the guard drops, even when the test panics.

use crate::common::{free_port, http};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to get moto when it is missing.
const HINT: &str = "run ./tests/run.sh (it creates .venv and pip installs moto[server]==5.2.5), \
     or: python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5'";

/// The `moto_server` executable: `$SELFHEAL_MOTO_SERVER`, else `.venv/bin/moto_server`
/// in the workspace. Missing is a failure, never a skip.
pub fn moto_server() -> PathBuf {
    let path = match std::env::var_os("SELFHEAL_MOTO_SERVER") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server"),
    };
    assert!(
        path.is_file(),
        "the AWS end-to-end tests need moto's server at {} (SELFHEAL_MOTO_SERVER overrides the path), \
         and it is not there: {HINT}",
        path.display()
    );
    path
}

/// A running `moto_server`; killed (and reaped) on drop.
pub struct Moto {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    log: PathBuf,
}

impl Moto {
    /// Start one on a free port and wait (at most 30 s) until it answers;
    /// its request log goes to `log`.
    pub fn start(log: &Path) -> Moto {
        let bin = moto_server();
        let mut last = String::new();
        // A free port may be taken between the probe and moto's bind: try again.
        for _ in 0..3 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let child = Command::new(&bin)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).expect("moto log file"))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}; {HINT}", bin.display()));
            let mut m = Moto { child, url: format!("http://{addr}"), addr, log: log.to_path_buf() };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if matches!(http(&m.addr, "GET", "/moto-api/", &[], ""), Ok(r) if r.status == 200) {
                    m.reset();
                    return m;
                }
                if let Some(st) = m.child.try_wait().expect("poll moto") {
                    last = format!("moto_server exited with {st}:\n{}", m.log_tail());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if last.is_empty() {
                last = format!("moto_server did not answer on {} within 30 s:\n{}", m.addr, m.log_tail());
                break;
            }
        }
        panic!("{last}");
    }

    /// Forget every resource (`POST /moto-api/reset`).
    pub fn reset(&self) {
        let r = http(&self.addr, "POST", "/moto-api/reset", &[], "").expect("POST /moto-api/reset");
        assert_eq!(r.status, 200, "moto reset: {}", r.body);
    }

    /// The last lines of moto's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
