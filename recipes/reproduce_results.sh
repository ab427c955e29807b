#!/usr/bin/env bash
# Every results table of the README, from the experiment files in recipes/experiments. Finished runs are cached
# per configuration in docs/results/cache (committed), so a rerun trains only what is missing; delete a file there
# (or pass another --cache-dir) to train it again. One torch thread per process, as the tables were made, except
# the float-order check, which reruns the chosen configurations under two threads.
# Usage: bash recipes/reproduce_results.sh [a|b|c|threads|tables|all]
#   a, b and c are training queues that can run side by side (one per core); `threads` (the float-order rerun)
#   takes both cores; `tables` then writes what two queues share (the text task's table, from both shots settings)
#   and the claims summary, from the cache (it trains nothing once the rest is done); the other tables are written
#   by their queues. `all` runs everything one after another.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
compare() {  # experiment name, then extra options
  local name=$1; shift
  "$PY" recipes/compare.py --experiment "recipes/experiments/$name.json" --cache-dir docs/results/cache \
    --output-dir "docs/results/$name" "$@"
}
partial() {  # one shots setting of an experiment whose other settings another queue runs: its table is `tables`'s
  local name=$1 shots=$2; shift 2
  compare "$name" --shots "$shots" --output-dir "runs/partial/$name-$shots" "$@"
}
queue_a() {
  compare fashion_mnist-efficientnet_lite0 --search --seeds 0 1 2 3 4 --threads 1
  compare fashion_mnist-efficientnet_lite0-400_steps --search --seeds 0 1 2 3 4 --threads 1
  compare fashion_mnist-mobilenetv2 --search --seeds 0 1 2 3 4 --threads 1
}
queue_b() {
  partial rotten_tomatoes-minilm full --search --seeds 0 1 2 3 4 --threads 1
  compare efficientnet_lite0-digits --search --seeds 0 1 2 --threads 1
}
queue_c() {
  partial rotten_tomatoes-minilm 50 --search --seeds 0 1 2 3 4 --threads 1
}
threads() {  # float order, one cause at a time (both cores: run it alone). 1 thread on this CPU from an empty cache,
  # against the committed table (made on another CPU), then 2 threads on this CPU against that
  compare fashion_mnist-efficientnet_lite0 --shots full --seeds 0 1 2 --threads 1 \
    --cache-dir docs/results/cache-cpu_rerun --output-dir docs/results/fashion_mnist-efficientnet_lite0-cpu_rerun
  compare fashion_mnist-efficientnet_lite0 --shots full --seeds 0 1 2 --threads 2 \
    --output-dir docs/results/fashion_mnist-efficientnet_lite0-cpu_rerun-2_threads
  compare efficientnet_lite0-digits --shots full --methods scl-ft --seeds 0 1 2 --threads 2 \
    --output-dir docs/results/efficientnet_lite0-digits-2_threads
}
tables() {
  compare rotten_tomatoes-minilm --seeds 0 1 2 3 4 --threads 1
  "$PY" recipes/report.py
}
case "${1:-all}" in
  a) queue_a ;;
  b) queue_b ;;
  c) queue_c ;;
  threads) threads ;;
  tables) tables ;;
  all) queue_a; queue_b; queue_c; threads; tables ;;
  *) echo "usage: $0 [a|b|c|threads|tables|all]" >&2; exit 2 ;;
esac
