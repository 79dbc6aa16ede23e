#!/usr/bin/env bash
# Every CUDA test (tests/cuda_*.rs) on the software GPU (softgpu/README.md), the real backend and
# kernel sources running on the CPU, under every schedule and checker:
#   1. the software GPU's own unit tests (the PTX fragment and shuffle models, cuBLASLt);
#   2. the checked build (bounds, alignment, shared-memory races) under each schedule:
#      lockstep, warp-serial, reversed and a seeded random one;
#   3. the AddressSanitizer build, lockstep.
# CROSSRANK_REQUIRE_GPU=1 makes a test that would skip for want of a device fail instead: no
# CUDA test is skipped here. Exits non-zero on any failure; part of scripts/test.sh (CI).
# Its cargo output carries the usual `test result:` lines, which test.sh adds up.
#
# SOFTGPU_SCHEDULES overrides the schedule list (e.g. "lockstep" for a quick run).
set -uo pipefail
cd "$(dirname "$0")/.."

NVCC="$(bash scripts/install-nvcc.sh | tail -n 1)"
export NVCC
if [ -z "${CROSSRANK_MINILM_DIR:-}" ]; then
    CROSSRANK_MINILM_DIR="$(bash scripts/fetch-minilm.sh | tail -n 1)"
    export CROSSRANK_MINILM_DIR
fi
SCHEDULES="${SOFTGPU_SCHEDULES:-lockstep warp-serial reversed random:20261130}"
FAILED=()
step() { echo "test-softgpu.sh: $*"; }

# 1. The models and cuBLASLt against their plain definitions.
mkdir -p target/softgpu
for t in warp_models:warp_models cublaslt:cublaslt; do
    name="${t%%:*}"
    src="${t##*:}"
    bin="target/softgpu/test-$name"
    if g++ -std=c++17 -O2 -pthread -Wall -Wextra -Werror -Isoftgpu/src "softgpu/src/$src.cpp" \
        "softgpu/tests/test_$name.cpp" -o "$bin" && "$bin" >"$bin.log" 2>&1; then
        step "softgpu/tests/test_$name.cpp: ok ($(grep -c . "$bin.log") lines of checks)"
        echo "test result: ok. 1 passed; 0 failed (softgpu/tests/test_$name.cpp)"
    else
        tail -n 20 "$bin.log" 2>/dev/null
        step "softgpu/tests/test_$name.cpp FAILED"
        echo "test result: FAILED. 0 passed; 1 failed (softgpu/tests/test_$name.cpp)"
        FAILED+=("test_$name")
    fi
done

# 2. and 3. Build both variants and the CUDA test binaries once.
CHECKED="$(bash scripts/softgpu.sh checked | tail -n 1)" || { step "building the checked software GPU failed"; exit 1; }
ASAN_DIR="$(bash scripts/softgpu.sh asan | tail -n 1)" || { step "building the ASan software GPU failed"; exit 1; }
TESTS=()
for f in tests/cuda_*.rs; do TESTS+=(--test "$(basename "$f" .rs)"); done
BINS="$(cargo test --features cuda "${TESTS[@]}" --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')" || { step "building the CUDA tests failed"; exit 1; }
[ -n "$BINS" ] || { step "no CUDA test binary was built"; exit 1; }

run_all() { # label, then environment assignments for the test processes
    local label="$1"
    shift
    local start=$SECONDS ok=1
    for bin in $BINS; do
        if ! env "$@" CROSSRANK_REQUIRE_GPU=1 "$bin" --test-threads 2 2>&1 | sed "s|^|[$label] |"; then
            ok=0
        fi
    done
    if [ $ok = 1 ]; then
        step "$label: every CUDA test passed ($((SECONDS - start)) s)"
    else
        step "$label: FAILED"
        FAILED+=("$label")
    fi
}

for schedule in $SCHEDULES; do
    run_all "checked $schedule" LD_LIBRARY_PATH="$CHECKED" CROSSRANK_SOFTGPU_SCHEDULE="$schedule"
done
LIBASAN="$(g++ -print-file-name=libasan.so)"
run_all "asan lockstep" LD_LIBRARY_PATH="$ASAN_DIR" LD_PRELOAD="$LIBASAN" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 CROSSRANK_SOFTGPU_SCHEDULE=lockstep

if [ ${#FAILED[@]} -eq 0 ]; then
    step "all passed on the software GPU (schedules: $SCHEDULES; checked and ASan builds)"
    exit 0
fi
step "FAILED: ${FAILED[*]}"
exit 1
