#!/usr/bin/env bash
# Every test of selfheal, as CI runs it (`.ci/run` calls exactly this script).
#
#   ./tests/run.sh
#
# Formatting, lints (warnings are errors), then unit, property, integration and
# end-to-end tests of the binary, and every criterion bench once in test mode.
# One build profile (dev) serves every stage, so nothing compiles twice.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n==> %s\n' "$*"; }

# The end-to-end tests check /metrics with `promtool check metrics`; promtool
# comes with Debian's `prometheus` package. Installed here when missing (it
# takes about half a minute), before anything else, so a machine without it
# fails in seconds rather than after the build.
stage "promtool (Debian package prometheus) for the end-to-end tests"
if ! command -v promtool >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    # Wait up to 5 min for another apt/dpkg to finish rather than fail at once.
    apt_install() {
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
            --no-install-recommends prometheus
    }
    apt_install || { $sudo apt-get -o DPkg::Lock::Timeout=300 update && apt_install; } || true
fi
if ! command -v promtool >/dev/null; then
    echo "tests/run.sh: promtool is not on PATH and could not be installed." >&2
    echo "  Install it (Debian/Ubuntu: sudo apt-get install -y --no-install-recommends prometheus," >&2
    echo "  or a release from https://github.com/prometheus/prometheus/releases) and run again." >&2
    exit 1
fi
promtool --version 2>&1 | sed -n 1p

# The AWS end-to-end tests (tests/aws.rs) run against moto's standalone server,
# a real local AWS API server, installed here into the ignored .venv (pinned:
# DESIGN.md §5 records what this version serves). SELFHEAL_MOTO_SERVER may
# point the tests at another moto_server instead.
stage "moto_server (pip moto[server]==5.2.5 in .venv) for the AWS end-to-end tests"
moto_server="${SELFHEAL_MOTO_SERVER:-.venv/bin/moto_server}"
if [ ! -x "$moto_server" ] && [ -z "${SELFHEAL_MOTO_SERVER:-}" ]; then
    if [ ! -x .venv/bin/pip ]; then
        python3 -m venv .venv || {
            echo "tests/run.sh: python3 -m venv .venv failed; install python3 with venv" >&2
            echo "  (Debian/Ubuntu: sudo apt-get install -y python3-venv) and run again." >&2
            exit 1
        }
    fi
    .venv/bin/pip install --quiet 'moto[server]==5.2.5' || {
        echo "tests/run.sh: pip install 'moto[server]==5.2.5' into .venv failed (network? proxy?)." >&2
        exit 1
    }
fi
if [ ! -x "$moto_server" ]; then
    echo "tests/run.sh: $moto_server is missing or not executable; the AWS end-to-end tests need it." >&2
    echo "  Create it: python3 -m venv .venv && .venv/bin/pip install 'moto[server]==5.2.5'" >&2
    exit 1
fi
"$(dirname "$moto_server")/python" -c 'import moto; print("moto", moto.__version__)' 2>/dev/null \
    || echo "moto_server at $moto_server"

# tests/report_browser.rs opens report.html in headless Chromium (Debian package chromium).
stage "chromium (Debian package) for the report browser test"
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    chromium_install() {
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
            --no-install-recommends chromium
    }
    chromium_install || { $sudo apt-get -o DPkg::Lock::Timeout=300 update && chromium_install; } || true
fi
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
    echo "tests/run.sh: chromium is not on PATH and could not be installed." >&2
    echo "  Install it (Debian/Ubuntu: sudo apt-get install -y chromium) and run again." >&2
    exit 1
fi
chromium --version 2>/dev/null || chromium-browser --version

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

stage "cargo test (unit, property, integration, end-to-end; benches once)"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet

stage "all tests passed"
