#!/usr/bin/env bash
# The software GPU's mutation check (scripts/softgpu_mutants.py): plants kernel bugs one at a
# time in a copy of kernels/ and shows each caught by the CUDA tests on the software GPU. Not in
# CI (about a minute a mutant on 2 cores); its last table is in softgpu/README.md.
# Usage: bash scripts/softgpu-mutants.sh [MUTANT...]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
export NVCC
if [ -z "${CROSSRANK_MINILM_DIR:-}" ]; then
    CROSSRANK_MINILM_DIR="$(bash scripts/fetch-minilm.sh | tail -n 1)"
    export CROSSRANK_MINILM_DIR
fi
exec python3 scripts/softgpu_mutants.py "$@"
