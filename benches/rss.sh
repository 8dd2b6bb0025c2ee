#!/usr/bin/env bash
# Resident memory of the sidecar daemon (issue 7): `selfheal run` with 100
# simulated pipelines in act mode, VmRSS from /proc/PID/status once a second.
#
#   benches/rss.sh                        # tick 250 ms (the default) and 20 ms, 30 s each
#   SECS=60 TICKS="250" benches/rss.sh    # one tick, longer
#   SELFHEAL_BIN=/tmp/selfheal benches/rss.sh   # that binary, no build
#
# The daemon: release build, `[source] kind = "simulator"` with `pipelines = 100`
# (PIPELINES) and each tick in TICKS, the simulator actuator, act mode and the
# other defaults (the shipped models, learning on, checkpoints every 500
# updates), a fresh state directory and a free port; stopped with SIGTERM.
# Per run it prints the RSS every 5 s, the largest sample, the kernel's peak
# (VmHWM, which also catches peaks between samples), and from /metrics the
# windows decided, so the load is visible.
#
# Target: ≤ 50 MB.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-30}
TICKS=${TICKS:-"250 20"}
PIPELINES=${PIPELINES:-100}

die() {
    echo "rss.sh: $*" >&2
    exit 1
}
# shellcheck source=benches/common.sh
. benches/common.sh

kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

echo "rss.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $PIPELINES pipelines, ${SECS} s per run"
worst=0
for tick in $TICKS; do
    printf '\n==> %s pipelines, tick_ms = %s, act mode, %s s\n' "$PIPELINES" "$tick" "$SECS"
    port=$(free_port)
    rm -rf "$tmp/state"
    cat >"$tmp/sidecar.toml" <<EOF
[daemon]
listen = "127.0.0.1:$port"
state_dir = "$tmp/state"

[source]
kind = "simulator"
pipelines = $PIPELINES
tick_ms = $tick

[actuator]
kind = "simulator"

[guard]
mode = "act"
EOF
    "$bin" run --config "$tmp/sidecar.toml" 2>"$tmp/daemon.log" &
    pid=$!
    max=0
    for s in $(seq 1 "$SECS"); do
        sleep 1
        kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp/daemon.log" >&2; die "the daemon exited"; }
        rss=$(kb VmRSS)
        [ "$rss" -gt "$max" ] && max=$rss
        if [ $((s % 5)) = 0 ]; then echo "  t=${s}s VmRSS $(mb "$rss") MB"; fi
    done
    hwm=$(kb VmHWM)
    windows=$(curl -fsS "http://127.0.0.1:$port/metrics" | awk '$1 == "selfheal_windows_total" { print $2 }')
    kill -TERM "$pid"
    wait "$pid" || die "the daemon exited with status $?"
    pid=""
    log_kb=$(du -k "$tmp/state/provenance.jsonl" | cut -f1)
    echo "max VmRSS $(mb "$max") MB, VmHWM $(mb "$hwm") MB; $windows windows decided ($(awk -v w="$windows" -v s="$SECS" 'BEGIN { printf "%.0f", w / s }')/s); provenance log $(mb "$log_kb") MB"
    [ "$hwm" -gt "$worst" ] && worst=$hwm
done
printf '\nrss.sh: peak over all runs %s MB (target ≤ 50 MB: %s)\n' "$(mb "$worst")" \
    "$(awk -v k="$worst" 'BEGIN { print (k <= 50 * 1024 ? "met" : "MISSED") }')"
