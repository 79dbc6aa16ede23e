#!/usr/bin/env bash
# A bounded load run of `crossrank serve` on loopback (CPU backend unless DEVICE is set):
# for each model, start the release server on a free port, run examples/serve_load.rs for
# LOAD_SECONDS (default 20, at most 60) with CONCURRENCY clients (default 16), print throughput and
# p50/p99, stop the server with SIGTERM (exit 0 required).
# Models: the committed tiny bert-f32, and the real all-MiniLM-L6-v2 encoder under the seeded
# test head (tests/data/minilm-head) when scripts/fetch-minilm.sh can provide it.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN="${LOAD_SECONDS:-20}"
CONCURRENCY="${CONCURRENCY:-16}"
DOCS="${DOCS:-32}"
WORDS="${WORDS:-40}"
DEVICE="${DEVICE:-cpu}"

cargo build --quiet --release --bin crossrank --example serve_load

MODELS=(tests/data/models/bert-f32)
if ENCODER="$(bash scripts/fetch-minilm.sh 2>/dev/null | tail -n 1)"; then
    # The same assembly as tests/parity.rs: the real encoder plus the committed seeded head.
    MINILM=target/minilm-reranker
    mkdir -p "$MINILM"
    ln -sf "$ENCODER/model.safetensors" "$MINILM/encoder.safetensors"
    cp "$ENCODER/tokenizer.json" "$ENCODER/tokenizer_config.json" "$MINILM/"
    cp tests/data/minilm-head/config.json tests/data/minilm-head/head.safetensors \
       tests/data/minilm-head/model.safetensors.index.json "$MINILM/"
    MODELS+=("$MINILM")
else
    echo "serve-load: all-MiniLM-L6-v2 not available (scripts/fetch-minilm.sh); tiny model only" >&2
fi

echo "serve-load: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), device $DEVICE"
for MODEL in "${MODELS[@]}"; do
    LOG="$(mktemp)"
    target/release/crossrank serve --model "$MODEL" --device "$DEVICE" --port 0 2>"$LOG" &
    PID=$!
    BASE=""
    for _ in $(seq 1 600); do
        BASE="$(sed -n 's/^crossrank serve: listening on //p' "$LOG")"
        [ -n "$BASE" ] && break
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$BASE" ]; then
        cat "$LOG" >&2; kill "$PID" 2>/dev/null || true; rm -f "$LOG"
        echo "serve-load: the server for $MODEL did not start" >&2; exit 1
    fi
    echo "== $(basename "$MODEL"): $(head -n 1 "$LOG" | sed 's/^crossrank serve: //')"
    target/release/examples/serve_load --url "$BASE" --seconds "$SECONDS_PER_RUN" \
        --concurrency "$CONCURRENCY" --docs "$DOCS" --words "$WORDS"
    kill -TERM "$PID"
    STATUS=0
    wait "$PID" || STATUS=$?
    rm -f "$LOG"
    [ "$STATUS" -eq 0 ] || { echo "serve-load: server exited with $STATUS after SIGTERM" >&2; exit 1; }
done
