// Helpers shared by every kernel family: 16-byte vector loads and stores, storage <-> fp32, and
// the warp / block reductions that every reduction goes through.
//
// Conventions: storage is 16-bit, T = `__half` (fp16: the encoder families) or `__nv_bfloat16`
// (bf16: the decoder LLMs, whose activations outgrow fp16's range); every kernel is one template
// instantiated for both, exported as `{op}_f16` and `{op}_bf16`. Arithmetic and accumulation are
// fp32. A "vec" is 8 values = 16 bytes, the widest load one thread issues; row widths are
// multiples of 8 and rows start 16-byte aligned (the Rust launchers check both).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include <type_traits>

#define CR_DEVICE __device__ __forceinline__

// Dynamic shared memory as an array `name` of T: the launch's shared_mem_bytes. (The software
// GPU, softgpu/, gives each block its own buffer in place of the extern declaration.)
#ifdef CROSSRANK_SOFTGPU
#define CR_DYNAMIC_SHARED(T, name) CR_SOFTGPU_DYNAMIC_SHARED(T, name)
#else
#define CR_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

namespace cr {

constexpr int kWarp = 32;
constexpr int kVec = 8;  // halves per 16-byte access

// One storage type's conversions: a value and a pair (two values in 32 bits, low one first).
template <typename T>
struct Storage;

template <>
struct Storage<__half> {
    using Pair = __half2;
    static CR_DEVICE float to_float(__half x) { return __half2float(x); }
    static CR_DEVICE __half from_float(float x) { return __float2half_rn(x); }
    static CR_DEVICE float2 to_float2(Pair p) { return __half22float2(p); }
    static CR_DEVICE Pair from_float2(float lo, float hi) { return __floats2half2_rn(lo, hi); }
};

template <>
struct Storage<__nv_bfloat16> {
    using Pair = __nv_bfloat162;
    static CR_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
    static CR_DEVICE __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
    static CR_DEVICE float2 to_float2(Pair p) { return __bfloat1622float2(p); }
    static CR_DEVICE Pair from_float2(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
};

template <typename T>
CR_DEVICE float to_float(T x) {
    return Storage<T>::to_float(x);
}

template <typename T>
CR_DEVICE T from_float(float x) {
    return Storage<T>::from_float(x);
}

// Two values rounded to T and packed into one 32-bit register, `lo` in the low half: an mma
// operand, or a 4-byte store.
template <typename T>
CR_DEVICE uint32_t pack2(float lo, float hi) {
    const typename Storage<T>::Pair p = Storage<T>::from_float2(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&p);
}

// 8 stored values converted to fp32.
struct Vec8 {
    float v[kVec];
};

template <typename T>
CR_DEVICE Vec8 load_vec(const T* p) {
    using Pair = typename Storage<T>::Pair;
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const Pair* h = reinterpret_cast<const Pair*>(&raw);
    Vec8 out;
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) {
        const float2 f = Storage<T>::to_float2(h[i]);
        out.v[2 * i] = f.x;
        out.v[2 * i + 1] = f.y;
    }
    return out;
}

template <typename T>
CR_DEVICE void store_vec(T* p, const Vec8& x) {
    using Pair = typename Storage<T>::Pair;
    uint4 raw;
    Pair* h = reinterpret_cast<Pair*>(&raw);
#pragma unroll
    for (int i = 0; i < kVec / 2; ++i) h[i] = Storage<T>::from_float2(x.v[2 * i], x.v[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
}

CR_DEVICE Vec8 zero_vec() {
    Vec8 out;
#pragma unroll
    for (int i = 0; i < kVec; ++i) out.v[i] = 0.f;
    return out;
}

CR_DEVICE float warp_sum(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

CR_DEVICE float warp_max(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block; every thread gets the total. blockDim.x must be a multiple of 32
// (full warps: the shuffles name all 32 lanes). Ends with a barrier so that a second call may
// reuse the scratch at once.
CR_DEVICE float block_sum(float v) {
    __shared__ float scratch[kWarp];
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x / kWarp;
        float t = lane < warps ? scratch[lane] : 0.f;
        t = warp_sum(t);
        if (lane == 0) scratch[0] = t;
    }
    __syncthreads();
    const float total = scratch[0];
    __syncthreads();
    return total;
}

// LayerNorm of one row held as one Vec8 per thread (threads past the row's end hold zeros and
// pass active = false). Two-pass statistics over registers: mean first, then the mean of the
// squared deviations, which avoids the cancellation of E[x^2] - E[x]^2.
template <typename T>
CR_DEVICE Vec8 layer_norm_vec(const Vec8& x, bool active, int width, const T* gamma, const T* beta,
                              int col, float eps) {
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) s += x.v[i];
    const float mean = block_sum(s) / width;
    float q = 0.f;
    if (active) {
#pragma unroll
        for (int i = 0; i < kVec; ++i) {
            const float d = x.v[i] - mean;
            q += d * d;
        }
    }
    const float inv = rsqrtf(block_sum(q) / width + eps);
    Vec8 y = zero_vec();
    if (active) {
        const Vec8 g = load_vec(gamma + col);
        const Vec8 b = load_vec(beta + col);
#pragma unroll
        for (int i = 0; i < kVec; ++i) y.v[i] = (x.v[i] - mean) * inv * g.v[i] + b.v[i];
    }
    return y;
}

// Tensor-core MMA, m16n8k16, T inputs (fp16 or bf16), fp32 accumulate in place: d += a * b.
// Fragment layouts (PTX ISA, "mma.m16n8k16"), g = lane / 4, t = lane % 4:
//   a[0] = A[g][2t..2t+1]    a[1] = A[g+8][2t..2t+1]   a[2] = A[g][2t+8..]   a[3] = A[g+8][2t+8..]
//   b[0] = B[2t..2t+1][g]    b[1] = B[2t+8..2t+9][g]
//   d[0..1] = D[g][2t..2t+1] d[2..3] = D[g+8][2t..2t+1]
template <typename T>
CR_DEVICE void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    constexpr bool kBf16 = std::is_same<T, __nv_bfloat16>::value;
    static_assert(kBf16 || std::is_same<T, __half>::value, "mma_16816 takes fp16 or bf16");
#ifdef CROSSRANK_SOFTGPU
    // The software GPU (softgpu/): a warp-collective model written from the PTX ISA's tables.
    softgpu_mma_16816(kBf16 ? SOFTGPU_BF16 : SOFTGPU_F16, d, a, b0, b1);
#else
    if constexpr (kBf16) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
}

// Four 8x8 16-bit matrices from shared memory, transposed: lane l gives the address of row l % 8
// of matrix l / 8 (16 bytes, 16-byte aligned) and receives, from matrix i, register r[i] =
// { M_i[2(l%4)][l/4], M_i[2(l%4)+1][l/4] }: exactly an mma B fragment of a row-major [k][n] tile.
template <typename T>
CR_DEVICE void ldmatrix_x4_trans(uint32_t (&r)[4], const T* smem_row) {
#ifdef CROSSRANK_SOFTGPU
    softgpu_ldmatrix_x(r, true, smem_row);
#else
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#endif
}

}  // namespace cr
