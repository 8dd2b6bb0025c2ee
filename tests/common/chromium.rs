//! Headless Chromium for the browser tests (`report_browser`, `sidecar_ui`):
//! Debian's `chromium` found on PATH (a clear panic with how to install it
//! when missing: the tests never skip), started with a fresh profile and
//! kept off the network.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `chromium` or `chromium-browser` on PATH; panics saying how to install it.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "\n\nchromium is not installed, and this test needs it (it opens a page in a headless browser).\n\
         Install it with:  apt-get update && apt-get install -y chromium\n\
         (tests/run.sh installs it when missing.)\n\n"
    );
}

/// A headless Chromium command with the profile `profile`, no GPU, sandbox,
/// QUIC, sync or background traffic, and `--host-resolver-rules=RULES`
/// (e.g. `MAP * ~NOTFOUND`: every host name resolves nowhere, so a page
/// that reaches out fails). Add the URL and any flags, then run it.
pub fn headless_chromium(profile: &Path, host_rules: &str) -> Command {
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ]);
    cmd.arg(format!("--host-resolver-rules={host_rules}"));
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd
}
