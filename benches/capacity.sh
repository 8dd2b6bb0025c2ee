#!/usr/bin/env bash
# Cost per pipeline (issue 18 part 1): one `selfheal run` watching 10, 100 and
# 1,000 pipelines, with the simulated source and with a CloudWatch source
# against a local AWS API server (moto), and what each point costs.
#
#   benches/capacity.sh                              # both sources, 10 100 1000, 40 s a point
#   COUNTS="100" SOURCES=sim SECS=60 benches/capacity.sh
#   SELFHEAL_MOTO_SERVER=/path/to/moto_server benches/capacity.sh
#   SELFHEAL_BIN=/tmp/selfheal benches/capacity.sh   # that binary, no build
#
# Per point: release build, a fresh state directory, a free port, act mode,
# the shipped models and defaults (learning on), `[daemon] max_pipelines` at
# twice the count; stopped with SIGTERM after SECS seconds.
# - sim: `[source] kind = "simulator"`, `pipelines = N`, `tick_ms = TICK_MS`
#   (250, the default: each pipeline closes 4 windows a second), the simulator
#   actuator.
# - cloudwatch: a fresh moto_server per point, seeded by benches/capacity_seed.py
#   (4 Glue job metrics, `JobRunId=ALL`, one datapoint a minute for jobs
#   job-0..job-N-1, from LOOKBACK s ago to the end of the run, so new periods
#   close while it runs); `[source] kind = "cloudwatch"`, period 60 s, lag 0,
#   `lookback_secs = LOOKBACK` (120: the first poll reads 2 periods),
#   poll every POLL_SECS s, `metrics` listed (no ListMetrics discovery), the
#   dry-run actuator; the SDK reaches moto through AWS_ENDPOINT_URL.
#   GetMetricData is called with 500 queries at most (4 N queries a poll).
#   moto answers such a call slowly (it scans every datapoint per query and
#   period: ~25 s for 500 queries at 1,000 jobs), so a CloudWatch point runs
#   past SECS until two polls are done, up to MAX_SECS (300); the "secs"
#   column is the time measured. `capacity_seed.py --probe` times one call of
#   moto alone, and is run once per CloudWatch point before the daemon starts.
#
# Columns:
# - cpu/win: the daemon's CPU time (utime + stime from /proc/PID/stat) from
#   /readyz answering to the end, over the windows decided in that time
#   (selfheal_windows_total); it includes polling and the provenance log.
#   cpu%: the same CPU time over the wall time (100 % = one core).
# - RSS, HWM, HWM/N: VmRSS at the end, the kernel's peak (VmHWM), and VmHWM
#   over N; the marginal cost of a pipeline is printed after the table (the
#   VmHWM difference between the largest and smallest count over the
#   pipelines added).
# - decide, logged: selfheal_decision_seconds, one window in the daemon loop,
#   stage "decide" (Controller::on_window, what the 50 µs target is about) and
#   stage "logged" (decided, appended to the provenance log, durably with an
#   fsync when it acts, plan started): the mean (_sum / _count) and the upper
#   bound of the bucket holding the 99th percentile (buckets 5, 10, 25, 50,
#   100, 250, 500 µs, 1, 2.5, 5, 10, 50 ms, …).
# - polls, poll mean, poll max≤: selfheal_source_poll_seconds (one
#   GetMetricData round for all pipelines), and moto's own CPU seconds over the
#   run (/proc/MOTO/stat), to tell whose time a slow poll is.
#
# Targets (benches/RESULTS.md): decision p99 ≤ 50 µs (sample → decision) and
# RSS ≤ 50 MB (the daemon with 100 pipelines). A point "holds" when its VmHWM
# is ≤ 50 MB and its "decide" p99 bucket bound is ≤ 50 µs.
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${SECS:-40}
COUNTS=${COUNTS:-"10 100 1000"}
SOURCES=${SOURCES:-"sim cloudwatch"}
TICK_MS=${TICK_MS:-250}
POLL_SECS=${POLL_SECS:-5}
LOOKBACK=${LOOKBACK:-120}
MAX_SECS=${MAX_SECS:-300}
MOTO=${SELFHEAL_MOTO_SERVER:-/work/lead/.venv/bin/moto_server}

die() {
    echo "capacity.sh: $*" >&2
    exit 1
}
# shellcheck source=benches/common.sh
. benches/common.sh

py=python3
case " $SOURCES " in *" cloudwatch "*)
    [ -x "$MOTO" ] || die "moto_server not found at $MOTO: pip install 'moto[server]==5.2.5' and set SELFHEAL_MOTO_SERVER"
    [ -x "$(dirname "$MOTO")/python" ] && py="$(dirname "$MOTO")/python"
    "$py" -c 'import boto3' 2>/dev/null || die "$py has no boto3 (it comes with moto[server])"
    ;;
esac

moto_pid=""
stop_moto() {
    if [ -n "$moto_pid" ]; then
        kill -TERM "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
        moto_pid=""
    fi
}
trap 'stop_moto; cleanup' EXIT

hz=$(getconf CLK_TCK)
# CPU seconds (user + system) of a process.
cpu() { awk -v hz="$hz" '{ sub(/^.*\) /, ""); printf "%.3f", ($12 + $13) / hz }' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
metric() { awk -v k="$1" '$1 == k { print $2 }' "$tmp/metrics"; }
# The upper bound of the bucket holding quantile $2 of the histogram series
# whose bucket lines start with $1 (`name_bucket{labels,`), in µs.
quantile_us() {
    awk -v f="$1" -v q="$2" '
        index($0, f) == 1 { match($0, /le="[^"]*"/); le[n] = substr($0, RSTART + 4, RLENGTH - 5); c[n++] = $2 }
        END {
            if (n == 0 || c[n-1] == 0) { print "-"; exit }
            for (i = 0; i < n; i++) if (c[i] >= q * c[n-1]) break
            if (le[i] == "+Inf") print "inf"; else printf "%g", le[i] * 1e6
        }' "$tmp/metrics"
}
# The mean of a histogram series in µs: $1 its name, $2 its labels (`{…}` or "").
mean_us() {
    awk -v s="$(metric "$1_sum$2")" -v c="$(metric "$1_count$2")" \
        'BEGIN { if (c > 0) printf "%.1f", s / c * 1e6; else print "-" }'
}

endpoint=""
start_moto() {
    local port
    port=$(free_port)
    "$MOTO" -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
    moto_pid=$!
    endpoint="http://127.0.0.1:$port"
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$endpoint/moto-api/" 2>/dev/null && return 0
        kill -0 "$moto_pid" 2>/dev/null || { tail -20 "$tmp/moto.log" >&2; die "moto_server exited"; }
        sleep 0.1
    done
    die "moto_server did not answer on $endpoint within 30 s"
}

# The daemon's configuration for a point (the simulator, or CloudWatch at $endpoint).
config() {
    local src=$1 n=$2 port=$3
    printf '[daemon]\nlisten = "127.0.0.1:%s"\nstate_dir = "%s"\nmax_pipelines = %s\n\n[guard]\nmode = "act"\n\n' \
        "$port" "$tmp/state" $((n * 2))
    if [ "$src" = sim ]; then
        printf '[source]\nkind = "simulator"\npipelines = %s\ntick_ms = %s\n\n[actuator]\nkind = "simulator"\n' \
            "$n" "$TICK_MS"
        return
    fi
    printf '[source]\nkind = "cloudwatch"\nperiod_secs = 60\nlag_secs = 0\npoll_secs = %s\nlookback_secs = %s\n' \
        "$POLL_SECS" "$LOOKBACK"
    printf 'metrics = ["glue.driver.aggregate.numFailedTasks", "glue.ALL.jvm.heap.usage", '
    printf '"glue.ALL.system.cpuSystemLoad", "glue.driver.aggregate.recordsRead"]\n'
    for i in $(seq 0 $((n - 1))); do
        printf '[[source.pipelines]]\nname = "p%d"\njob_name = "job-%d"\n' "$i" "$i"
    done
    printf '\n[actuator]\nkind = "dry-run"\n'
}

# point SOURCE N: run the daemon once, append a row to $tmp/rows.
point() {
    local src=$1 n=$2 port now moto_cpu0=0 seeded=""
    local -a env=()
    port=$(free_port)
    rm -rf "$tmp/state"
    printf '==> %s, %s pipelines, %s s\n' "$src" "$n" "$SECS"
    if [ "$src" = cloudwatch ]; then
        start_moto
        now=$(date +%s)
        seeded=$("$py" benches/capacity_seed.py "$endpoint" "$n" $((now - LOOKBACK)) $((now + SECS + 60)))
        env=(AWS_ENDPOINT_URL="$endpoint" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
            AWS_REGION=us-east-1)
        printf '  moto seeded (datapoints, s): %s\n' "$seeded"
        printf '  moto alone, one GetMetricData call of min(4 N, 500) queries over the lookback (s, datapoints): %s\n' \
            "$("$py" benches/capacity_seed.py --probe "$endpoint" "$n" $(((now - LOOKBACK) / 60 * 60)) $((now / 60 * 60)))"
        moto_cpu0=$(cpu "$moto_pid")
    fi
    config "$src" "$n" "$port" >"$tmp/sidecar.toml"
    env "${env[@]}" "$bin" run --config "$tmp/sidecar.toml" 2>"$tmp/daemon.log" &
    pid=$!
    for _ in $(seq 1 600); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp/daemon.log" >&2; die "the daemon exited"; }
        sleep 0.05
    done
    local cpu0 win0 t0 cpu1 rss hwm t1 win1 mcpu="-"
    cpu0=$(cpu "$pid")
    t0=$(date +%s.%N)
    curl -fsS "http://127.0.0.1:$port/metrics" >"$tmp/metrics"
    win0=$(metric selfheal_windows_total)
    sleep "$SECS"
    if [ "$src" = cloudwatch ]; then
        # A slow server: run on until two polls are done (one past the backlog), up to MAX_SECS.
        local waited=$SECS
        while [ "$waited" -lt "$MAX_SECS" ]; do
            curl -fsS "http://127.0.0.1:$port/metrics" >"$tmp/metrics"
            [ "$(metric selfheal_source_poll_seconds_count)" -ge 2 ] && break
            sleep 5
            waited=$((waited + 5))
        done
    fi
    kill -0 "$pid" 2>/dev/null || { tail -20 "$tmp/daemon.log" >&2; die "the daemon exited"; }
    cpu1=$(cpu "$pid")
    t1=$(date +%s.%N)
    rss=$(kb "$pid" VmRSS)
    hwm=$(kb "$pid" VmHWM)
    curl -fsS "http://127.0.0.1:$port/metrics" >"$tmp/metrics"
    win1=$(metric selfheal_windows_total)
    if [ "$src" = cloudwatch ]; then
        mcpu=$(awk -v a="$moto_cpu0" -v b="$(cpu "$moto_pid")" 'BEGIN { printf "%.1f", b - a }')
    fi
    kill -TERM "$pid"
    wait "$pid" || die "the daemon exited with status $?"
    pid=""
    stop_moto
    local w=$((win1 - win0)) pmean pmax
    pmean=$(mean_us selfheal_source_poll_seconds "")
    pmax=$(quantile_us 'selfheal_source_poll_seconds_bucket{' 1)
    local d=selfheal_decision_seconds
    echo "$src $n $w" \
        "$(awk -v w="$w" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", w / (b - a) }')" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v w="$w" 'BEGIN { if (w > 0) printf "%.1f", (b - a) / w * 1e6; else print "-" }')" \
        "$(awk -v a="$cpu0" -v b="$cpu1" -v x="$t0" -v y="$t1" 'BEGIN { printf "%.1f", (b - a) / (y - x) * 100 }')" \
        "$rss $hwm $(mean_us $d '{stage="decide"}') $(quantile_us "${d}_bucket{stage=\"decide\"," 0.99)" \
        "$(mean_us $d '{stage="logged"}') $(quantile_us "${d}_bucket{stage=\"logged\"," 0.99)" \
        "$(metric selfheal_source_poll_seconds_count)" \
        "$(awk -v u="$pmean" 'BEGIN { if (u == "-") print "-"; else printf "%.3f", u / 1e6 }')" \
        "$(awk -v u="$pmax" 'BEGIN { if (u == "-" || u == "inf") print u; else printf "%g", u / 1e6 }')" \
        "$mcpu $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')" >>"$tmp/rows"
}

echo "capacity.sh: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, ${SECS} s a point," \
    "sources: $SOURCES, counts: $COUNTS"
: >"$tmp/rows"
for src in $SOURCES; do
    for n in $COUNTS; do
        point "$src" "$n"
    done
done

printf '\n| source | N | windows | win/s | cpu/win µs | cpu %% | RSS MB | HWM MB | HWM/N kB | decide mean µs | decide p99 ≤ µs | logged mean µs | logged p99 ≤ µs | polls | poll mean s | poll max ≤ s | moto cpu s | secs | holds |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n'
while read -r src n w rate cpw cpct rss hwm dmean dp99 lmean lp99 polls pmean pmax mcpu secs; do
    holds=$(awk -v h="$hwm" -v p="$dp99" \
        'BEGIN { print (h <= 50 * 1024 && p != "-" && p != "inf" && p + 0 <= 50 ? "yes" : "no") }')
    printf '| %s | %s | %s | %s | %s | %s | %.1f | %.1f | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "$src" "$n" \
        "$w" "$rate" "$cpw" "$cpct" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" \
        "$(awk -v k="$hwm" 'BEGIN { print k / 1024 }')" "$(awk -v k="$hwm" -v n="$n" 'BEGIN { print k / n }')" \
        "$dmean" "$dp99" "$lmean" "$lp99" "$polls" "$pmean" "$pmax" "$mcpu" "$secs" "$holds"
done <"$tmp/rows"
printf '\nmarginal RSS per pipeline (VmHWM, largest minus smallest count):\n'
for src in $SOURCES; do
    awk -v s="$src" '$1 == s {
            if (lo == "" || $2 + 0 < lo) { lo = $2 + 0; hl = $8 }
            if (hi == "" || $2 + 0 > hi) { hi = $2 + 0; hh = $8 }
        }
        END { if (hi > lo) printf "  %s: %.1f kB per pipeline (%d → %d)\n", s, (hh - hl) / (hi - lo), lo, hi }' \
        "$tmp/rows"
done
printf '\nlargest count holding decision p99 ≤ 50 µs and VmHWM ≤ 50 MB:\n'
for src in $SOURCES; do
    awk -v s="$src" '$1 == s && $8 <= 50 * 1024 && $10 != "-" && $10 != "inf" && $10 + 0 <= 50 && $2 + 0 > best {
            best = $2 + 0
        }
        END { printf "  %s: %s\n", s, best ? best : "none" }' "$tmp/rows"
done
