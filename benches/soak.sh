#!/usr/bin/env bash
# Soak of the sidecar's bounded memory and disk (issue 16): one hour of sample
# time pushed to `selfheal run`'s /ingest as fast as the daemon takes it, with
# 10,000 distinct pipeline names rotating through, each live for a slice of
# the hour and then silent, so that eviction must make room.
#
#   benches/soak.sh                               # the defaults below
#   SAMPLES=200 benches/soak.sh                   # lighter: fewer samples per window
#   NAMES=2000 LIFE_S=600 benches/soak.sh         # fewer names, live longer
#   SELFHEAL_BIN=/tmp/selfheal benches/soak.sh    # that binary, no build
#
# The daemon: release build, `[source] kind = "http"` with 60 s windows,
# `[actuator] kind = "dry-run"`, `[guard] mode = "observe"` (as benches/ingest.sh),
# `[daemon] max_pipelines = CAP` (4,000) and `pipeline_idle_secs = IDLE_S`
# (300), every decision logged (`log_healthy = true`, so the log grows about
# 0.6 kB per window) and rotated small (`log_max_bytes` = LOG_MB MiB, 4;
# `log_keep = 2`) so that retention bounds the disk; a fresh state directory
# and a free port; stopped with SIGTERM at the end.
#
# The load: benches/soak.lua (read it for the rotation of names), with wrk,
# THREADS threads of one connection each (1), LINES lines per request (1,000),
# SAMPLES samples per live name per window (1,000). With the defaults about
# 1,000 names are live at once and 60 M samples make the hour. One thread by
# default: each wrk thread keeps its own sample clock, and two threads drift
# apart by minutes of sample time, more than a live feed's pushers do; the
# daemon's data clock follows the one ahead, and the other's names then look
# idle and are evicted and re-admitted (THREADS=2 showed 27,136 evictions of
# 10,000 names).
#
# Once a second it reads VmRSS from /proc/PID/status, the state directory's
# size (du -sb) and the live-pipeline gauges from /metrics; it prints a line
# every 5 s, and at the end: RSS at start, middle and end of the load, max
# VmRSS and VmHWM, the largest state directory, pipelines live at peak, the
# evictions, lines accepted and refused, windows decided, and wrk's samples/s.
# It fails if any request was answered other than 200.
#
# Needs wrk (Debian package `wrk`; installed with apt-get when missing) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

NAMES=${NAMES:-10000}
LIFE_S=${LIFE_S:-360}
SAMPLES=${SAMPLES:-1000}
LINES=${LINES:-1000}
THREADS=${THREADS:-1}
CAP=${CAP:-4000}
IDLE_S=${IDLE_S:-300}
LOG_MB=${LOG_MB:-4}
MAX_WALL=${MAX_WALL:-30m}

say() { printf '\n==> %s\n' "$*"; }
die() {
    echo "soak.sh: $*" >&2
    exit 1
}

# shellcheck source=benches/common.sh
. benches/common.sh
need_wrk

kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$pid/status"; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

port=$(free_port)
cport=$(free_port)
state="$tmp/state"
http_config "$state" \
    "log_healthy = true" \
    "log_max_bytes = $((LOG_MB * 1024 * 1024))" \
    "log_keep = 2" \
    "max_pipelines = $CAP" \
    "pipeline_idle_secs = $IDLE_S"
echo "soak.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, $NAMES names live ${LIFE_S} s each, $SAMPLES samples/window, cap $CAP, idle ${IDLE_S} s"
"$bin" run --config "$tmp/sidecar.toml" 2>"$tmp/daemon.log" &
pid=$!
wait_ready

say "wrk -t$THREADS -c$THREADS (stops itself once the hour is covered; at most $MAX_WALL)"
wrk -t"$THREADS" -c"$THREADS" -d"$MAX_WALL" --timeout 10s -s benches/soak.lua \
    "http://127.0.0.1:$cport/ingest" -- "$LINES" "$NAMES" "$LIFE_S" "$SAMPLES" "$THREADS" "$tmp" >"$tmp/wrk.out" 2>&1 &
wrk_pid=$!
: >"$tmp/series"
t0=$SECONDS
while kill -0 "$wrk_pid" 2>/dev/null; do
    sleep 1
    s=$((SECONDS - t0)) # wall seconds since the load started (a busy machine skips some)
    kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp/daemon.log" >&2; die "the daemon exited"; }
    rss=$(kb VmRSS)
    bytes=$(du -sb "$state" | cut -f1)
    scrape
    live_i=$(metric 'selfheal_pipelines{holder="ingest"}')
    live_d=$(metric 'selfheal_pipelines{holder="decide"}')
    echo "$s $rss $bytes $live_i $live_d" >>"$tmp/series"
    if [ "$(find "$tmp" -maxdepth 1 -name 'done.*' | wc -l)" -ge "$THREADS" ]; then
        kill -INT "$wrk_pid" 2>/dev/null || true # every thread has covered the hour
    fi
    if [ $(($(wc -l <"$tmp/series") % 5)) = 0 ]; then
        echo "  t=${s}s VmRSS $(mb "$rss") MB, state dir $(mb $((bytes / 1024))) MB, live pipelines ingest $live_i / decide $live_d"
    fi
done
wait "$wrk_pid" || true
grep -q "^soak: status counts" "$tmp/wrk.out" || die "wrk failed: $(cat "$tmp/wrk.out")"
cat "$tmp/wrk.out"
sleep 2
scrape
hwm=$(kb VmHWM)
n=$(wc -l <"$tmp/series")
[ "$n" -ge 3 ] || die "the load took under 3 s: too short to read anything (raise SAMPLES)"
row() { sed -n "$1p" "$tmp/series"; }
rss_at() { row "$1" | awk '{ print $2 }'; }
t_at() { row "$1" | awk '{ print $1 }'; }
max_col() { awk -v c="$1" '$c > m { m = $c } END { print m + 0 }' "$tmp/series"; }
accepted=$(metric 'selfheal_ingest_lines_total{result="accepted"}')
rejected=$(metric 'selfheal_ingest_lines_total{result="rejected"}')
capped=$(metric 'selfheal_ingest_refused_total{reason="pipeline_cap"}')
ev_i=$(metric 'selfheal_pipelines_evicted_total{holder="ingest"}')
ev_d=$(metric 'selfheal_pipelines_evicted_total{holder="decide"}')
windows=$(metric selfheal_windows_total)
say "result"
echo "VmRSS start (t=$(t_at 1) s) $(mb "$(rss_at 1)") MB, middle (t=$(t_at $((n / 2))) s) $(mb "$(rss_at $((n / 2)))") MB, end (t=$(t_at "$n") s) $(mb "$(rss_at "$n")") MB"
echo "max VmRSS $(mb "$(max_col 2)") MB, VmHWM $(mb "$hwm") MB"
echo "state dir: max $(mb $(($(max_col 3) / 1024))) MB, at the end $(mb $(($(du -sb "$state" | cut -f1) / 1024))) MB ($(ls "$state" | tr '\n' ' '))"
echo "pipelines live at peak: ingest $(max_col 4), decide $(max_col 5); evicted: ingest $ev_i, decide $ev_d"
echo "lines accepted $accepted, rejected $rejected (pipeline cap $capped); windows decided $windows"
kill -TERM "$pid"
wait "$pid" || die "the daemon exited with status $?"
pid=""
grep -q "; not 200: 0;" "$tmp/wrk.out" || die "FAILED: some requests were answered other than 200 (see the status counts above)"
[ "$rejected" = 0 ] || die "FAILED: $rejected lines were refused"
