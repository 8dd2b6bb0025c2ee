#!/usr/bin/env bash
# Sharded training (issue 18 part 4): single-process training against N
# shards trained as parallel processes, the shard index in the environment
# (JOB_COMPLETION_INDEX, as a Kubernetes Indexed Job sets it), folded with
# `selfheal fleet merge`; every model evaluated on the same held-out seeds.
#
# Usage: benches/shard_train.sh [EPISODES] [SEEDS] [SHARD_COUNTS]
#   defaults: 400000 (the shipped policy's count), 300000..300500 (seeds no
#   default evaluation range and no training episode uses), "2 4".
# Env: SELFHEAL_BIN (default target/release/selfheal), SEED (training seed, 1).
#
# Columns: wall time from the first training process's start to the merged
# model on disk (all shards run at once, `--threads 1` each; the single
# process uses every core, its default); the largest peak RSS of one training
# process and the CPU time (user + system) of all training processes and of
# the longest one (`/usr/bin/time -f "%M %U %S"`): on N machines, the wall
# time of a fan-out is about the longest shard's CPU time (one thread each);
# the learned policy's % of oracle, mean MTTR (steps) and unresolved
# incidents on SEEDS (`selfheal evaluate`, which runs the oracle and the
# baselines on the same seeds).
set -euo pipefail
cd "$(dirname "$0")/.."
episodes=${1:-400000}
seeds=${2:-300000..300500}
counts=${3:-2 4}
seed=${SEED:-1}
bin=${SELFHEAL_BIN:-target/release/selfheal}
[ -x "$bin" ] || { echo "build first: cargo build --release --bin selfheal" >&2; exit 1; }
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; apt-get install time)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# evaluate MODEL -> "pct mttr unresolved" of the q-learning row
score() {
    "$bin" evaluate --policy "$1" --seeds "$seeds" --format json |
        python3 -c 'import json,sys
d = json.load(sys.stdin)
q = next(p for p in d["policies"] if p["name"] == "learned")
m = q["mttr_steps"]
print("%.2f %s %d" % (q["pct_of_oracle"], "-" if m is None else "%.2f" % m, q["unresolved"]))'
}

# usage FILE... -> "max RSS (MB) | CPU s, sum | CPU s, longest" over the files ("%M %U %S" each)
usage() {
    cat "$@" | awk '{ r = $1 > r ? $1 : r; c = $2 + $3; s += c; m = c > m ? c : m }
        END { printf "%.1f | %.1f | %.1f", r / 1000, s, m }'
}

now() { date +%s.%N; }

echo "selfheal $("$bin" --version | cut -d' ' -f2), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), episodes $episodes, seed $seed, held-out seeds $seeds"
printf '| shards | episodes per shard | wall time (s) | peak RSS per process (MB) | CPU s, all processes | CPU s, longest process | %% of oracle | MTTR (steps) | unresolved |\n'
printf '|---|---:|---:|---:|---:|---:|---:|---:|---:|\n'

start=$(now)
/usr/bin/time -f "%M %U %S" -o "$dir/single.rss" \
    "$bin" train --episodes "$episodes" --seed "$seed" --out "$dir/single.json" 2>"$dir/single.log"
wall=$(echo "$(now) - $start" | bc)
read -r pct mttr unres < <(score "$dir/single.json")
printf '| 1 (one process, all cores) | %s | %.1f | %s | %s | %s | %s |\n' \
    "$episodes" "$wall" "$(usage "$dir/single.rss")" "$pct" "$mttr" "$unres"

for n in $counts; do
    start=$(now)
    pids=()
    for ((i = 0; i < n; i++)); do
        JOB_COMPLETION_INDEX=$i /usr/bin/time -f "%M %U %S" -o "$dir/n$n-$i.rss" \
            "$bin" train --shards "$n" --episodes "$episodes" --seed "$seed" --threads 1 \
            --out "$dir/n$n-shard$i.json" 2>"$dir/n$n-$i.log" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do
        wait "$p" || { echo "a shard of $n failed:" >&2; cat "$dir"/n$n-*.log >&2; exit 1; }
    done
    "$bin" fleet merge --out "$dir/n$n.json" "$dir"/n$n-shard*.json 2>"$dir/n$n-merge.log"
    wall=$(echo "$(now) - $start" | bc)
    read -r pct mttr unres < <(score "$dir/n$n.json")
    per=$(python3 -c "print($episodes // $n)")
    printf '| %s (processes in parallel, merged) | %s | %.1f | %s | %s | %s | %s |\n' \
        "$n" "$per" "$wall" "$(usage "$dir"/n$n-*.rss)" "$pct" "$mttr" "$unres"
done
