#!/usr/bin/env bash
# HTTP ingest throughput of the sidecar (issue 7): wrk in a second process POSTs
# JSON lines to `selfheal run`'s /ingest (on its control listener) on loopback.
#
#   benches/ingest.sh                 # every run below, 15 s each
#   DURATION=30s benches/ingest.sh    # longer runs
#   RUNS="1000:2 1:2" benches/ingest.sh   # only these LINES:CONNECTIONS runs
#   SELFHEAL_BIN=/tmp/selfheal benches/ingest.sh   # that binary, no build
#
# The daemon: release build, `[source] kind = "http"` with 60 s windows,
# `[actuator] kind = "dry-run"`, `[guard] mode = "observe"` (decisions are made
# and logged, nothing is acted on), a fresh state directory and a free port.
# It is started anew for every run and stopped with SIGTERM.
#
# The load: benches/ingest.lua (read it for the body format). Each wrk thread
# has one connection (-tN -cN) and its own 100 pipelines, so every pipeline's
# samples arrive in order and none is late (a late sample is a 422, which fails
# the run). Each pipeline gets about 100 samples per window, so a window closes
# (and the daemon decides) once per 100 samples.
#
# Per run it prints wrk's own summary, the script's requests/s × lines =
# samples/s and status counts, and from /metrics: lines accepted and rejected,
# windows decided by the end of the load and 3 s later (a number still growing
# after the load stopped is a backlog of the decision loop).
#
# Target: ≥ 1,000,000 samples/s in batches of 1,000 lines. Needs wrk (Debian
# package `wrk`; installed here with apt-get when missing) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
RUNS=${RUNS:-"1000:1 1000:2 1000:4 1:2 1:4"}
PIPELINES=${PIPELINES:-100}
SAMPLES=${SAMPLES:-100}

say() { printf '\n==> %s\n' "$*"; }
die() {
    echo "ingest.sh: $*" >&2
    exit 1
}

# shellcheck source=benches/common.sh
. benches/common.sh
need_wrk

start_daemon() {
    port=$(free_port)
    cport=$(free_port)
    rm -rf "$tmp/state"
    http_config "$tmp/state"
    "$bin" run --config "$tmp/sidecar.toml" 2>"$tmp/daemon.log" &
    pid=$!
    wait_ready
}

stop_daemon() {
    kill -TERM "$pid"
    wait "$pid" || die "the daemon exited with status $? (log: see above)"
    pid=""
}

echo "ingest.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
failed=0
for run in $RUNS; do
    lines=${run%%:*}
    conns=${run##*:}
    say "batches of $lines line(s), $conns connection(s) (wrk -t$conns -c$conns -d$DURATION)"
    start_daemon
    wrk -t"$conns" -c"$conns" -d"$DURATION" --latency -s benches/ingest.lua \
        "http://127.0.0.1:$cport/ingest" -- "$lines" "$PIPELINES" "$SAMPLES" "l$lines-c$conns" | tee "$tmp/wrk.out"
    scrape
    windows_end=$(metric selfheal_windows_total)
    sleep 3
    scrape
    accepted=$(metric 'selfheal_ingest_lines_total{result="accepted"}')
    rejected=$(metric 'selfheal_ingest_lines_total{result="rejected"}')
    windows=$(metric selfheal_windows_total)
    echo "daemon: lines accepted $accepted, rejected $rejected; windows decided $windows_end at the end of the load, $windows 3 s later"
    rss=$(awk '/VmHWM/ { print $2 }' "/proc/$pid/status")
    echo "daemon: peak RSS $((rss / 1024)) MB"
    stop_daemon
    if ! grep -q "; 422: 0; not 200: 0;" "$tmp/wrk.out" || [ "$rejected" != 0 ]; then
        echo "ingest.sh: FAILED: some lines were refused (see the status counts above)" >&2
        failed=1
    fi
done
exit "$failed"
