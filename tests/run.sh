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

# Install a Debian package when its command is missing, before anything is
# built, so a machine without it fails in seconds rather than after the build.
# Uses sudo when not root; waits up to 5 min for another apt/dpkg; runs
# `apt-get update` once if the first install fails.
ensure_debian() { # ensure_debian PACKAGE COMMAND...
    local pkg="$1"; shift
    local have=""
    for c in "$@"; do command -v "$c" >/dev/null && have="$c"; done
    if [ -z "$have" ]; then
        local sudo=""
        if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
        apt_install() {
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y \
                --no-install-recommends "$pkg"
        }
        apt_install || { $sudo apt-get -o DPkg::Lock::Timeout=300 update && apt_install; } || true
        for c in "$@"; do command -v "$c" >/dev/null && have="$c"; done
    fi
    if [ -z "$have" ]; then
        echo "tests/run.sh: none of [$*] is on PATH and Debian's $pkg could not be installed." >&2
        echo "  Install it (Debian/Ubuntu: sudo apt-get install -y --no-install-recommends $pkg) and run again." >&2
        exit 1
    fi
    # (Debian's chromium wrapper prints a harmless shell warning on stderr.)
    "$have" --version 2>/dev/null | sed -n 1p
}

# The end-to-end tests check /metrics with `promtool check metrics`.
stage "promtool (Debian package prometheus) for the end-to-end tests"
ensure_debian prometheus promtool

# tests/report_browser.rs opens report.html in headless Chromium.
stage "chromium (Debian package) for the report browser test"
ensure_debian chromium chromium chromium-browser

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

stage "cargo fmt --check"
cargo fmt --all -- --check

stage "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

stage "cargo test (unit, property, integration, end-to-end; benches once)"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet

stage "all tests passed"
