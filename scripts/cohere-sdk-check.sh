#!/usr/bin/env bash
# The official cohere Python SDK, pointed at `crossrank serve` (base_url), reranks unchanged.
#   1. installs cohere (pinned) into target/cohere-venv/ (PyPI; a few seconds once cached);
#   2. builds crossrank and starts `crossrank serve` on a free loopback port with an API key,
#      on two committed tiny test models (the default one is not the one the SDK names, so the
#      SDK's `model` must route its requests);
#   3. runs scripts/cohere_sdk_check.py (Client.rerank v1, ClientV2.rerank v2, a wrong key);
#   4. stops the server with SIGTERM and requires exit status 0.
set -euo pipefail
cd "$(dirname "$0")/.."

COHERE_VERSION=7.3.1
VENV=target/cohere-venv
MODEL=tests/data/models/bert-f32
DEFAULT=tests/data/models/xlmr-bf16

if ! "$VENV/bin/python" -c "import cohere, sys; sys.exit(cohere.__version__ != '$COHERE_VERSION')" 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "cohere==$COHERE_VERSION"
fi

# CROSSRANK_FEATURES (e.g. cuda, from scripts/test.sh) reuses the build the tests just made.
cargo build --quiet --bin crossrank ${CROSSRANK_FEATURES:+--features "$CROSSRANK_FEATURES"}
LOG="$(mktemp)"
"${CARGO_TARGET_DIR:-target}/debug/crossrank" serve --model "$DEFAULT" --model "$MODEL" --port 0 --api-key sdk-check-key 2>"$LOG" &
PID=$!
trap 'kill "$PID" 2>/dev/null || true; rm -f "$LOG"' EXIT

BASE=""
for _ in $(seq 1 300); do
    BASE="$(sed -n 's/^crossrank serve: listening on //p' "$LOG")"
    [ -n "$BASE" ] && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG" >&2; echo "cohere-sdk-check: the server exited" >&2; exit 1; }
    sleep 0.1
done
[ -n "$BASE" ] || { cat "$LOG" >&2; echo "cohere-sdk-check: no listening line in 30 s" >&2; exit 1; }

"$VENV/bin/python" scripts/cohere_sdk_check.py "$BASE" sdk-check-key "$(basename "$MODEL")"

kill -TERM "$PID"
STATUS=0
wait "$PID" || STATUS=$?
trap 'rm -f "$LOG"' EXIT
if [ "$STATUS" -ne 0 ]; then
    cat "$LOG" >&2
    echo "cohere-sdk-check: the server exited with $STATUS after SIGTERM" >&2
    exit 1
fi
echo "cohere-sdk-check: ok (server log: $(grep -c ' /v[12]/rerank ' "$LOG") rerank requests, exit 0 after SIGTERM)"
