// LayerNorm, in three forms:
//   add_layernorm       hidden = LN(hidden + delta), in place (BERT's post-norm residual);
//   residual_layernorm  hidden += delta, then out = LN(hidden) (a pre-norm block's residual and
//                       the next norm in one pass: ModernBERT);
//   layernorm           out = LN(x).
// A bias-free LayerNorm (ModernBERT's norm_bias false) comes with a zero beta.
//
// Shapes: rows x width activations, row-major (fp16 or bf16), width % 8 == 0 and width <= 8 * 1024.
// One block per row, one 16-byte vector (8 columns) per thread; blockDim.x = width / 8 rounded
// up to a multiple of 32, and threads past the row's end only take part in the reductions.
// The row stays in registers between the statistics and the store: one read, one write.
// Statistics in fp32 (two-pass: mean, then mean squared deviation), as the reference does in f64.
// In place is safe: each thread rewrites only the columns it read itself. residual_layernorm
// normalises the f32 sum, not its fp16 rounding, as the f32 reference does.
#include "common.cuh"

namespace cr {

template <typename T>
__device__ void add_layernorm(const T* __restrict__ delta, T* __restrict__ hidden,
                              const T* __restrict__ gamma, const T* __restrict__ beta, int width,
                              float eps) {
    const size_t row = blockIdx.x;
    const int col = threadIdx.x * kVec;
    const bool active = col < width;
    Vec8 x = zero_vec();
    if (active) {
        const Vec8 h = load_vec(hidden + row * width + col);
        const Vec8 d = load_vec(delta + row * width + col);
#pragma unroll
        for (int i = 0; i < kVec; ++i) x.v[i] = h.v[i] + d.v[i];
    }
    const Vec8 y = layer_norm_vec(x, active, width, gamma, beta, col, eps);
    if (active) store_vec(hidden + row * width + col, y);
}

template <typename T>
__device__ void residual_layernorm(const T* __restrict__ delta, T* __restrict__ hidden,
                                   T* __restrict__ out, const T* __restrict__ gamma,
                                   const T* __restrict__ beta, int width, float eps) {
    const size_t row = blockIdx.x;
    const int col = threadIdx.x * kVec;
    const bool active = col < width;
    Vec8 x = zero_vec();
    if (active) {
        const Vec8 h = load_vec(hidden + row * width + col);
        const Vec8 d = load_vec(delta + row * width + col);
#pragma unroll
        for (int i = 0; i < kVec; ++i) x.v[i] = h.v[i] + d.v[i];
        store_vec(hidden + row * width + col, x);
    }
    const Vec8 y = layer_norm_vec(x, active, width, gamma, beta, col, eps);
    if (active) store_vec(out + row * width + col, y);
}

template <typename T>
__device__ void layernorm(const T* __restrict__ x, T* __restrict__ out, const T* __restrict__ gamma,
                          const T* __restrict__ beta, int width, float eps) {
    const size_t row = blockIdx.x;
    const int col = threadIdx.x * kVec;
    const bool active = col < width;
    const Vec8 v = active ? load_vec(x + row * width + col) : zero_vec();
    const Vec8 y = layer_norm_vec(v, active, width, gamma, beta, col, eps);
    if (active) store_vec(out + row * width + col, y);
}

}  // namespace cr

#define CR_LAYERNORM_OPS(T, DT)                                                           \
    extern "C" __global__ __launch_bounds__(1024) void add_layernorm_##DT(                \
        const T* delta, T* hidden, const T* gamma, const T* beta, int width, float eps) { \
        cr::add_layernorm<T>(delta, hidden, gamma, beta, width, eps);                     \
    }                                                                                     \
    extern "C" __global__ __launch_bounds__(1024) void residual_layernorm_##DT(           \
        const T* delta, T* hidden, T* out, const T* gamma, const T* beta, int width,      \
        float eps) {                                                                      \
        cr::residual_layernorm<T>(delta, hidden, out, gamma, beta, width, eps);           \
    }                                                                                     \
    extern "C" __global__ __launch_bounds__(1024) void layernorm_##DT(                    \
        const T* x, T* out, const T* gamma, const T* beta, int width, float eps) {        \
        cr::layernorm<T>(x, out, gamma, beta, width, eps);                                \
    }

CR_LAYERNORM_OPS(__half, f16)
CR_LAYERNORM_OPS(__nv_bfloat16, bf16)
