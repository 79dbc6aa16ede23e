#!/usr/bin/env bash
# Installs NVIDIA's CUDA 13.0 compiler from its pinned PyPI wheels into .nvcc/ (ignored by git)
# and prints the path of nvcc on its last line. Idempotent: a second run installs nothing.
#
# Why these exact versions: the GPU machines run driver 580 (CUDA 13.0), which refuses PTX
# written by a newer nvcc, and the embedded compute_80 PTX must stay loadable there. nvcc's own
# requirements are unpinned (they would pull the newest nvvm), so every wheel is pinned here and
# installed with --no-deps. nvcc also needs a host C++ compiler (gcc/g++) on PATH.
#
# Usage: NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-python3}"
DEST=.nvcc
WHEELS=(
    nvidia-cuda-nvcc==13.0.88
    nvidia-cuda-crt==13.0.88
    nvidia-nvvm==13.0.88
    nvidia-cuda-runtime==13.0.96
    nvidia-cuda-cccl==13.0.85
)
# The wheels unpack to nvidia/cu13/{bin,include,lib,nvvm}; nvcc.profile finds cicc, libdevice
# and the headers relative to bin/, so nothing needs setting up after the install.
NVCC_PATH="$(pwd)/$DEST/nvidia/cu13/bin/nvcc"
STAMP="$DEST/.installed"
WANT="${WHEELS[*]}"

if [ ! -x "$NVCC_PATH" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    rm -rf "$DEST"
    mkdir -p "$DEST"
    echo "install-nvcc: installing ${WHEELS[*]} into $DEST/" >&2
    "$PY" -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
        --target "$DEST" "${WHEELS[@]}" >&2
    echo "$WANT" >"$STAMP"
fi

if ! command -v g++ >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    echo "install-nvcc: nvcc needs a host compiler: install gcc and g++ (e.g. apt-get install g++)" >&2
    exit 1
fi
if ! "$NVCC_PATH" --version >/dev/null; then
    echo "install-nvcc: $NVCC_PATH does not run" >&2
    exit 1
fi
echo "$NVCC_PATH"
