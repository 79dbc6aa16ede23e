#!/usr/bin/env bash
# A bounded load run of `crossrank serve` on loopback (CPU backend unless DEVICE is set):
# for each model, start the release server on a free port, run examples/serve_load.rs for
# LOAD_SECONDS (default 20, at most 60) with CONCURRENCY clients (default 16), print throughput and
# p50/p99, stop the server with SIGTERM (exit 0 required).
# Models: the committed tiny bert-f32, and the real all-MiniLM-L6-v2 encoder under the seeded
# test head (tests/data/minilm-head) when scripts/fetch-minilm.sh can provide it.
#
# FAIRNESS=1: instead, the small-behind-big mix of issue 14 on MiniLM only, with
# --max-batch-tokens ${MAX_BATCH_TOKENS:-4096}: small requests (10 docs of 60 words, SMALL_RATE
# a second (0.5), open loop) alone for SMALL_SECONDS (20), then beside one client sending 300-doc
# requests back to back for MIX_SECONDS (40), then that big client alone for BIG_SECONDS (30). Each
# scenario runs on every server of SERVERS ("label=binary ...", default this checkout's release
# build), one after the other, so a before/after comparison shares the machine's state.
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
    [ "${FAIRNESS:-0}" = 1 ] && { echo "serve-load: FAIRNESS=1 needs all-MiniLM-L6-v2 (scripts/fetch-minilm.sh)" >&2; exit 1; }
    echo "serve-load: all-MiniLM-L6-v2 not available (scripts/fetch-minilm.sh); tiny model only" >&2
fi

# start_server BINARY MODEL [ARGS...]: sets PID and BASE, and prints the server's summary line.
start_server() {
    local bin="$1" model="$2"
    shift 2
    LOG="$(mktemp)"
    "$bin" serve --model "$model" --device "$DEVICE" --port 0 "$@" 2>"$LOG" &
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
        echo "serve-load: the server for $model did not start" >&2; exit 1
    fi
    echo "== $(basename "$model"): $(head -n 1 "$LOG" | sed 's/^crossrank serve: //')"
}

# stop_server: SIGTERM, and exit status 0 required.
stop_server() {
    kill -TERM "$PID"
    local status=0
    wait "$PID" || status=$?
    rm -f "$LOG"
    [ "$status" -eq 0 ] || { echo "serve-load: server exited with $status after SIGTERM" >&2; exit 1; }
}

echo "serve-load: $(date -u +%Y-%m-%dT%H:%MZ), commit $(git rev-parse --short HEAD), $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), device $DEVICE, load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [ "${FAIRNESS:-0}" = 1 ]; then
    read -r -a SERVER_LIST <<<"${SERVERS:-HEAD=target/release/crossrank}"
    SMALL=(--docs 10 --words 60 --rate "${SMALL_RATE:-0.5}")
    SCENARIOS=(
        "small requests alone|--seconds ${SMALL_SECONDS:-20} ${SMALL[*]}"
        "small requests beside big ones|--seconds ${MIX_SECONDS:-40} ${SMALL[*]} --big-clients 1 --big-docs 300"
        "big requests alone|--seconds ${BIG_SECONDS:-30} --docs 0 --words 60 --big-clients 1 --big-docs 300"
    )
    for scenario in "${SCENARIOS[@]}"; do
        for server in "${SERVER_LIST[@]}"; do
            echo "## ${scenario%%|*}, server ${server%%=*}"
            start_server "${server#*=}" "$MINILM" --max-batch-tokens "${MAX_BATCH_TOKENS:-4096}"
            read -r -a ARGS <<<"${scenario#*|}"
            target/release/examples/serve_load --url "$BASE" "${ARGS[@]}"
            stop_server
        done
    done
    exit 0
fi
for MODEL in "${MODELS[@]}"; do
    start_server target/release/crossrank "$MODEL"
    target/release/examples/serve_load --url "$BASE" --seconds "$SECONDS_PER_RUN" \
        --concurrency "$CONCURRENCY" --docs "$DOCS" --words "$WORDS"
    stop_server
done
