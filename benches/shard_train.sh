#!/usr/bin/env bash
# Sharded training (issue 18 part 4): single-process training against N = 2
# and 4 shards trained as parallel processes (the shard index in the
# environment, JOB_COMPLETION_INDEX, as on a Kubernetes Indexed Job), merged
# with `selfheal fleet merge`, all evaluated on held-out seeds.
# Usage: benches/shard_train.sh [EPISODES] [SEEDS]   (defaults 40000, 200000..200500)
set -euo pipefail
cd "$(dirname "$0")/.."
episodes=${1:-40000}
seeds=${2:-200000..200500}
bin=target/release/selfheal
[ -x "$bin" ] || { echo "build first: cargo build --release --bin selfheal" >&2; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

pct() {
    "$bin" evaluate --policy "$1" --seeds "$seeds" --format json |
        python3 -c 'import json,sys; d=json.load(sys.stdin); print(next(p["pct_of_oracle"] for p in d["policies"] if p["name"]=="q-learning"))'
}

printf '| shards | episodes | wall time (s) | %% of oracle on %s |\n|---:|---:|---:|---:|\n' "$seeds"
start=$(date +%s.%N)
"$bin" train --episodes "$episodes" --seed 1 --threads 1 --out "$dir/single.json" 2>/dev/null
wall=$(echo "$(date +%s.%N) - $start" | bc)
printf '| 1 | %s | %.1f | %.1f |\n' "$episodes" "$wall" "$(pct "$dir/single.json")"
for n in 2 4; do
    start=$(date +%s.%N)
    pids=()
    for ((i = 0; i < n; i++)); do
        JOB_COMPLETION_INDEX=$i "$bin" train --shards "$n" --episodes "$episodes" --seed 1 --threads 1 \
            --out "$dir/n$n-shard$i.json" 2>/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p"; done
    "$bin" fleet merge --out "$dir/n$n.json" "$dir"/n$n-shard*.json 2>/dev/null
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    printf '| %s | %s | %.1f | %.1f |\n' "$n" "$episodes" "$wall" "$(pct "$dir/n$n.json")"
done
