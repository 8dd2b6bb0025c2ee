# Shared by the benches/*.sh scripts (sourced, not run): the binary under
# test, a free loopback port, a temp dir whose daemon is stopped and whose
# files are removed on exit, and for the HTTP load scripts (ingest.sh,
# soak.sh): wrk, the wait for /readyz and /metrics scrapes. The sourcing
# script defines `die` (and `say` where it calls need_wrk).

command -v curl >/dev/null || die "curl is missing (apt-get install -y curl)"

if [ -n "${SELFHEAL_BIN:-}" ]; then
    bin=$SELFHEAL_BIN # a binary built elsewhere (to compare two builds)
else
    printf '==> cargo build --release\n'
    cargo build --release --quiet
    bin=target/release/selfheal
fi

free_port() {
    if command -v python3 >/dev/null; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        local p
        while :; do
            p=$((20000 + RANDOM % 40000))
            ss -ltn "sport = :$p" | grep -q LISTEN || break
        done
        echo "$p"
    fi
}

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# Install wrk when missing (Debian package `wrk`), or fail saying how.
need_wrk() {
    command -v wrk >/dev/null && return 0
    say "installing wrk (apt-get install -y wrk)"
    local sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
    $sudo apt-get install -y wrk || { $sudo apt-get update && $sudo apt-get install -y wrk; } || true
    command -v wrk >/dev/null || die "wrk is missing: install the Debian package (apt-get install -y wrk) or https://github.com/wg/wrk"
}

# Wait up to 10 s for the daemon $pid to answer /readyz on $port; die with
# its log ($tmp/daemon.log) if it exits or is not ready by then.
wait_ready() {
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$tmp/daemon.log" >&2; die "the daemon exited"; }
        sleep 0.1
    done
    cat "$tmp/daemon.log" >&2
    die "the daemon was not ready within 10 s"
}

# Save the daemon's /metrics (on $port) to $tmp/metrics.
scrape() { curl -fsS "http://127.0.0.1:$port/metrics" >"$tmp/metrics"; }

# metric NAME_WITH_LABELS: its value in the last scrape.
metric() { awk -v m="$1" '$1 == m { print $2 }' "$tmp/metrics"; }

# http_config STATE_DIR [DAEMON_LINE ...]: write $tmp/sidecar.toml for the HTTP
# load scripts: metrics on $port, control (and /ingest) on $cport, state in
# STATE_DIR, the extra [daemon] lines given, `[source] kind = "http"` with
# 60 s windows, `[actuator] kind = "dry-run"`, `[guard] mode = "observe"`.
http_config() {
    local state=$1
    shift
    {
        printf '[daemon]\nlisten = "127.0.0.1:%s"\ncontrol_listen = "127.0.0.1:%s"\nstate_dir = "%s"\n' "$port" "$cport" "$state"
        [ $# -eq 0 ] || printf '%s\n' "$@"
        printf '\n[source]\nkind = "http"\nwindow_secs = 60\n\n[actuator]\nkind = "dry-run"\n\n[guard]\nmode = "observe"\n'
    } >"$tmp/sidecar.toml"
}
