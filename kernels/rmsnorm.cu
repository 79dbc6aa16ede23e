// RMSNorm (the decoder LLMs' norm), in two forms:
//   rmsnorm           out = x * rsqrt(mean(x^2) + eps) * weight;
//   residual_rmsnorm  hidden += delta, then out = RMSNorm(hidden): a pre-norm block's residual
//                     and the next norm in one pass.
//
// Shapes: rows x width activations, row-major (fp16 or bf16), width % 8 == 0 and width <= 8 *
// 1024; weight [width]. One block per row, one 16-byte vector (8 columns) per thread; blockDim.x
// = width / 8 rounded up to a multiple of 32, and threads past the row's end only take part in
// the reduction. The row stays in registers between the sum of squares (fp32) and the store.
// residual_rmsnorm normalises the fp32 sum, not its 16-bit rounding, as the f32 reference does;
// each thread rewrites only the columns it read itself.
#include "common.cuh"

namespace cr {

template <typename T, bool kResidual>
__device__ void rmsnorm(const T* __restrict__ delta, T* __restrict__ hidden, T* __restrict__ out,
                        const T* __restrict__ weight, int width, float eps) {
    const size_t row = blockIdx.x;
    const int col = threadIdx.x * kVec;
    const bool active = col < width;
    Vec8 x = zero_vec();
    if (active) {
        x = load_vec(hidden + row * width + col);
        if constexpr (kResidual) {
            const Vec8 d = load_vec(delta + row * width + col);
#pragma unroll
            for (int i = 0; i < kVec; ++i) x.v[i] += d.v[i];
            store_vec(hidden + row * width + col, x);
        }
    }
    float q = 0.f;
#pragma unroll
    for (int i = 0; i < kVec; ++i) q += x.v[i] * x.v[i];
    const float inv = rsqrtf(block_sum(q) / width + eps);
    if (active) {
        const Vec8 w = load_vec(weight + col);
        Vec8 y;
#pragma unroll
        for (int i = 0; i < kVec; ++i) y.v[i] = x.v[i] * inv * w.v[i];
        store_vec(out + row * width + col, y);
    }
}

}  // namespace cr

#define CR_RMSNORM_OPS(T, DT)                                                                \
    extern "C" __global__ __launch_bounds__(1024) void rmsnorm_##DT(                         \
        const T* x, T* out, const T* weight, int width, float eps) {                         \
        cr::rmsnorm<T, false>(nullptr, const_cast<T*>(x), out, weight, width, eps);          \
    }                                                                                        \
    extern "C" __global__ __launch_bounds__(1024) void residual_rmsnorm_##DT(                \
        const T* delta, T* hidden, T* out, const T* weight, int width, float eps) {          \
        cr::rmsnorm<T, true>(delta, hidden, out, weight, width, eps);                        \
    }

CR_RMSNORM_OPS(__half, f16)
CR_RMSNORM_OPS(__nv_bfloat16, bf16)
