#!/usr/bin/env bash
# Builds the software GPU (softgpu/, see its README.md) from the current kernels/ and prints, as
# its last line, the directory holding its libcuda.so.1 and libcublasLt.so.13. With
# LD_LIBRARY_PATH set to that directory, a crossrank built with --features cuda runs its CUDA
# backend, unchanged, on the CPU: a test device, never a GPU and never a speed figure.
#
# Usage: bash scripts/softgpu.sh [checked|asan|plain]
#   checked (default)  kernels instrumented for the bounds, alignment and shared-memory race
#                      checks (gcc -fsanitize=thread's hooks, pointed at the runtime's checks)
#   asan               everything under AddressSanitizer; the process needs
#                      LD_PRELOAD="$(g++ -print-file-name=libasan.so)"
#   plain              no instrumentation (the collective and launch checks stay)
# The schedule is chosen when it runs: CROSSRANK_SOFTGPU_SCHEDULE=lockstep (default),
# warp-serial, reversed or random:SEED. CROSSRANK_SOFTGPU_DEVICES=N shows N devices.
# Needs g++ and the CUDA headers of scripts/install-nvcc.sh (cuda.h, cuda_fp16.h).
set -euo pipefail
cd "$(dirname "$0")/.."

VARIANT="${1:-checked}"
case "$VARIANT" in
    checked | asan | plain) ;;
    *)
        echo "softgpu.sh: unknown variant '$VARIANT' (checked, asan or plain)" >&2
        exit 2
        ;;
esac
NVCC_PATH="$(bash scripts/install-nvcc.sh | tail -n 1)"
INC="$(cd "$(dirname "$NVCC_PATH")/../include" && pwd)"
CXX="${CXX:-g++}"
# SOFTGPU_OUT: another directory (the mutation check builds its mutants beside the real one).
OUT="${SOFTGPU_OUT:-target/softgpu/$VARIANT}"
OBJ="$OUT/obj"
mkdir -p "$OBJ"

# SOFTGPU_KERNELS: another kernels directory (the mutation check's planted bugs).
KDIR="$(cd "${SOFTGPU_KERNELS:-kernels}" && pwd)"
KERNELS=()
for f in "$KDIR"/*.cu; do KERNELS+=("$f"); done

COMMON=(-std=c++17 -O2 -g -fPIC -fno-strict-aliasing -Wall -Wno-unknown-pragmas -Isoftgpu/include -Isoftgpu/src -I"$INC")
# The kernels: compiled as host C++ with the shim force-included. thread_local is __shared__
# (a block's threads are fibers on one OS thread); no vectoriser or store merging, which would
# turn the kernels' own accesses into wider ones the alignment check would then judge.
KFLAGS=("${COMMON[@]}" -include softgpu/include/softgpu_kernel.h -I"$KDIR" -fno-extern-tls-init
    -fno-tree-vectorize -fno-tree-slp-vectorize -fno-store-merging -Wno-unused-variable)
RFLAGS=("${COMMON[@]}" -fvisibility=hidden)
LFLAGS=()
case "$VARIANT" in
    checked)
        KFLAGS+=(-fsanitize=thread --param=tsan-instrument-func-entry-exit=0 --param=tsan-distinguish-volatile=0)
        RFLAGS+=(-DSOFTGPU_CHECKED_KERNELS)
        ;;
    asan)
        KFLAGS+=(-fsanitize=address -fno-omit-frame-pointer)
        RFLAGS+=(-fsanitize=address -fno-omit-frame-pointer)
        LFLAGS+=(-fsanitize=address)
        ;;
    plain) ;;
esac

# Rebuild only what changed: the runtime library when softgpu/ or its flags did, the kernels
# library when kernels/ did (a mutation run rebuilds only the latter).
hash() { cat "$@" | sha256sum | cut -c1-16; }
RT_WANT="$(hash softgpu/include/*.h softgpu/src/* scripts/softgpu.sh) $CXX ${RFLAGS[*]} ${LFLAGS[*]}"
K_WANT="$(hash softgpu/include/*.h softgpu/gen_registry.py "${KERNELS[@]}" "$KDIR"/*.cuh scripts/softgpu.sh) $CXX ${KFLAGS[*]} $RT_WANT"
RT_OK=0
K_OK=0
[ -f "$OUT/libcuda.so.1" ] && [ "$(cat "$OUT/.runtime" 2>/dev/null)" = "$RT_WANT" ] && RT_OK=1
[ -f "$OUT/libsoftgpu_kernels.so" ] && [ "$(cat "$OUT/.kernels" 2>/dev/null)" = "$K_WANT" ] && K_OK=1
if [ $RT_OK = 1 ] && [ $K_OK = 1 ]; then
    echo "softgpu.sh: $VARIANT is up to date" >&2
    (cd "$OUT" && pwd)
    exit 0
fi
echo "softgpu.sh: building the $VARIANT software GPU into $OUT/" >&2

pids=()
if [ $RT_OK = 0 ]; then
    # 1. The runtime, the driver and cuBLASLt: one library, libcuda.so.1, also installed as
    #    libcublasLt.so.13 (a symlink: the loader maps the one file once).
    for src in runtime driver cublaslt warp_models; do
        "$CXX" "${RFLAGS[@]}" -c "softgpu/src/$src.cpp" -o "$OBJ/$src.o" &
        pids+=($!)
    done
fi
# 2. The kernels: one unit with every kernels/*.cu and the registry of their exported names.
python3 softgpu/gen_registry.py unit "$OBJ/scan.cpp" "${KERNELS[@]}"
"$CXX" "${COMMON[@]}" -include softgpu/include/softgpu_kernel.h -I"$KDIR" -DSOFTGPU_SCAN -E -P "$OBJ/scan.cpp" \
    | python3 softgpu/gen_registry.py registry "$OBJ/kernels.cpp" "${KERNELS[@]}" || exit 1
"$CXX" "${KFLAGS[@]}" -c "$OBJ/kernels.cpp" -o "$OBJ/kernels.o" &
pids+=($!)
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ $status = 0 ] || { echo "softgpu.sh: compiling the $VARIANT software GPU failed" >&2; exit 1; }

if [ $RT_OK = 0 ]; then
    "$CXX" -shared -o "$OUT/libcuda.so.1" -Wl,-soname,libcuda.so.1 "${LFLAGS[@]}" \
        "$OBJ/runtime.o" "$OBJ/driver.o" "$OBJ/cublaslt.o" "$OBJ/warp_models.o" -ldl -lpthread
    ln -sf libcuda.so.1 "$OUT/libcuda.so"
    ln -sf libcuda.so.1 "$OUT/libcublasLt.so.13"
    ln -sf libcuda.so.1 "$OUT/libcublasLt.so"
    echo "$RT_WANT" >"$OUT/.runtime"
fi
"$CXX" -shared -o "$OUT/libsoftgpu_kernels.so" "${LFLAGS[@]}" "$OBJ/kernels.o" \
    -L"$OUT" -l:libcuda.so.1 -Wl,-rpath,'$ORIGIN' -lm
echo "$K_WANT" >"$OUT/.kernels"
(cd "$OUT" && pwd)
