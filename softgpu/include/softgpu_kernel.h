// Force-included (g++ -include) before every kernels/*.cu when the software GPU compiles them as
// host C++. It maps CUDA's device dialect onto the software GPU's runtime (softgpu/src/runtime.cpp):
//
// - A block's threads are fibers on one OS thread, so `__shared__` is `thread_local`: every
//   thread of the block sees the same array, and blocks running on other OS threads have their
//   own. The runtime poisons it (0xFF bytes) before each block.
// - threadIdx / blockIdx / blockDim / gridDim come from the running fiber.
// - __syncthreads, warp shuffles, mma.sync and ldmatrix are collectives: a thread arrives,
//   yields, and the runtime completes the collective when every thread that must take part has
//   arrived at the same call site; anything else (a divergent barrier, a lane that skipped a
//   shuffle, a partial warp) is a reported fault with block, thread, file and line.
//
// Nothing here pretends to be hardware: it exists so that the same kernel source runs in CI.
#pragma once

#define CROSSRANK_SOFTGPU 1

#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <vector_functions.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

// The CUDA headers define the execution-space keywords as nothing for a host compiler; give
// them the software GPU's meaning.
#undef __global__
#undef __device__
#undef __shared__
#undef __launch_bounds__
#undef __constant__
#define __device__
#define __constant__ const
#define __shared__ thread_local
#ifdef SOFTGPU_SCAN
// The registry generator (scripts/softgpu.sh) preprocesses the kernels with these markers to
// find every exported kernel's name and launch bound.
#define __global__ softgpu_scan_global
#define __launch_bounds__(...) softgpu_scan_bounds(__VA_ARGS__)
#else
#define __global__
#define __launch_bounds__(...)
#endif

#include "softgpu_abi.h"

#define threadIdx (softgpu_thread_idx())
#define blockIdx (softgpu_block_idx())
#define blockDim (softgpu_block_dim())
#define gridDim (softgpu_grid_dim())
constexpr int warpSize = 32;

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    softgpu_barrier(file, line);
}

inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
    softgpu_syncwarp(mask, file, line);
}

// Shuffle modes as softgpu_shfl takes them (sg::warp::Shfl).
enum { SOFTGPU_SHFL_IDX = 0, SOFTGPU_SHFL_UP = 1, SOFTGPU_SHFL_DOWN = 2, SOFTGPU_SHFL_BFLY = 3 };

// PTX's c operand for a CUDA width: the segment mask in bits 8..12, the clamp in bits 0..4
// (shfl.up clamps at the segment's first lane, 0; the others at its last, 0x1f).
inline int softgpu_shfl_c(int mode, int width) {
    return ((32 - width) << 8) | (mode == SOFTGPU_SHFL_UP ? 0 : 0x1f);
}

template <typename T>
inline T softgpu_shfl_any(int mode, unsigned mask, T v, int b, int width, const char* file,
                          int line) {
    static_assert(std::is_trivially_copyable<T>::value && (sizeof(T) == 4 || sizeof(T) == 8),
                  "the software GPU shuffles 4- and 8-byte values");
    const int c = softgpu_shfl_c(mode, width);
    if constexpr (sizeof(T) == 4) {
        uint32_t bits;
        std::memcpy(&bits, &v, 4);
        bits = softgpu_shfl(mode, mask, bits, b, c, file, line);
        std::memcpy(&v, &bits, 4);
    } else {
        uint32_t bits[2];
        std::memcpy(bits, &v, 8);
        bits[0] = softgpu_shfl(mode, mask, bits[0], b, c, file, line);
        bits[1] = softgpu_shfl(mode, mask, bits[1], b, c, file, line);
        std::memcpy(&v, bits, 8);
    }
    return v;
}

template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32,
                     const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return softgpu_shfl_any(SOFTGPU_SHFL_IDX, mask, v, src, width, file, line);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return softgpu_shfl_any(SOFTGPU_SHFL_UP, mask, v, int(delta), width, file, line);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return softgpu_shfl_any(SOFTGPU_SHFL_DOWN, mask, v, int(delta), width, file, line);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    return softgpu_shfl_any(SOFTGPU_SHFL_BFLY, mask, v, lane_mask, width, file, line);
}

inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    return softgpu_vote(0, mask, pred, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return softgpu_vote(1, mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
    return softgpu_vote(2, mask, pred, file, line) != 0;
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32, d += a * b, one warp.
inline void softgpu_mma_16816(int elem, float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                              uint32_t b1, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
    softgpu_mma_m16n8k16(elem, d, a, b0, b1, file, line);
}
enum { SOFTGPU_F16 = 0, SOFTGPU_BF16 = 1 };

// ldmatrix.sync.aligned.m8n8.x{num}{.trans}.shared.b16: `row` is this lane's row address.
template <int N>
inline void softgpu_ldmatrix_x(uint32_t (&r)[N], bool trans, const void* row,
                               const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
    softgpu_ldmatrix(N, trans ? 1 : 0, r, row, file, line);
}

// Dynamic shared memory (`extern __shared__ T name[]` on the device): the launch's bytes.
#define CR_SOFTGPU_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(softgpu_dynamic_shared())

// glibc has no rsqrtf; the device's is approximate (2 ulp), this one is exact-ish, which the
// kernels' tolerances must not depend on either way.
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
// CUDA's integer min and max (device functions in the global namespace).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
// The device's fast sine and cosine (abs error ~2^-21.4 on [-pi, pi]); here the exact ones.
inline void __sincosf(float x, float* s, float* c) {
    *s = std::sin(x);
    *c = std::cos(x);
}
