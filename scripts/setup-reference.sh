#!/usr/bin/env bash
# Creates .venv-ref/: the Hugging Face reference stack that makes the goldens under tests/data/.
# Only PyPI is reachable, so torch comes from its ordinary PyPI wheel (about 5 GB, about 70 s).
# Versions are pinned: the goldens are byte-for-byte what these versions produce.
# sentencepiece only supplies the nmt_nfkc normalization map that XLM-R-style tokenizers carry.
# Usage: bash scripts/setup-reference.sh && .venv-ref/bin/python scripts/make_goldens.py
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
if [ ! -x .venv-ref/bin/python ]; then
    "$PY" -m venv .venv-ref
fi
.venv-ref/bin/python -m pip install --quiet --upgrade pip
.venv-ref/bin/python -m pip install --quiet \
    torch==2.11.0 transformers==5.24.0 sentence-transformers==6.2.0 tokenizers==0.23.3 \
    safetensors==0.8.0 sentencepiece==0.2.3 numpy==2.4.6
.venv-ref/bin/python - <<'PY'
import torch, transformers, sentence_transformers, tokenizers, safetensors
print("torch", torch.__version__, "| transformers", transformers.__version__,
      "| sentence-transformers", sentence_transformers.__version__,
      "| tokenizers", tokenizers.__version__, "| safetensors", safetensors.__version__)
PY
