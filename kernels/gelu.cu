// GELU, exact erf form, in place: x = 0.5 x (1 + erf(x / sqrt 2)), transformers' "gelu".
//
// Shapes: x is [rows, cols] fp16 with the bias already added by the GEMM epilogue; the kernel
// sees it as n = rows * cols elements from a 16-byte aligned base (a whole buffer). A
// grid-stride loop over 16-byte vectors (8 values per thread per step), then the n % 8 tail
// one value at a time: cols need not be a multiple of 8 (one test model has 100).
// Not cuBLASLt's GELU epilogue: that one is the tanh approximation, which "gelu" is not.
//
// geglu: out[r, c] = gelu(x[r, c]) * x[r, inter + c] (ModernBERT's MLP: Wi's output [rows,
// 2 * inter] is chunked into input | gate, transformers' order). out [rows, inter]. swiglu is
// the same with SiLU: out = silu(gate_proj) * up_proj, the two fused at load as gate | up. 16-byte
// vectors when inter % 8 == 0 (every published config), else one value at a time.
#include "common.cuh"

namespace cr {

CR_DEVICE float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// SiLU, x * sigmoid(x); expf keeps it within a few ulp of the f32 reference for every x (for
// x < -88, expf(-x) is inf and the result 0 with the right sign, as the reference's).
CR_DEVICE float silu(float x) { return x / (1.f + expf(-x)); }

// The gate's activation of a gated MLP: GeGLU (ModernBERT) or SwiGLU (the decoder LLMs).
enum class Gate { kGelu, kSilu };

template <Gate G>
CR_DEVICE float gate_act(float x) {
    return G == Gate::kGelu ? gelu_erf(x) : silu(x);
}

template <typename T>
__device__ void gelu(T* __restrict__ x, size_t n) {
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    const size_t first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    const size_t vecs = n / kVec;
    for (size_t i = first; i < vecs; i += stride) {
        Vec8 v = load_vec(x + i * kVec);
#pragma unroll
        for (int j = 0; j < kVec; ++j) v.v[j] = gelu_erf(v.v[j]);
        store_vec(x + i * kVec, v);
    }
    for (size_t i = vecs * kVec + first; i < n; i += stride)
        x[i] = from_float<T>(gelu_erf(to_float(x[i])));
}

template <typename T, Gate G>
__device__ void geglu(const T* __restrict__ x, T* __restrict__ out, size_t rows, int inter) {
    const size_t stride = size_t(gridDim.x) * blockDim.x;
    const size_t first = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
    if (inter % kVec == 0) {
        const size_t per_row = inter / kVec;
        for (size_t i = first; i < rows * per_row; i += stride) {
            const size_t r = i / per_row;
            const size_t c = (i % per_row) * kVec;
            const Vec8 a = load_vec(x + r * 2 * inter + c);
            const Vec8 g = load_vec(x + r * 2 * inter + inter + c);
            Vec8 y;
#pragma unroll
            for (int j = 0; j < kVec; ++j) y.v[j] = gate_act<G>(a.v[j]) * g.v[j];
            store_vec(out + r * inter + c, y);
        }
        return;
    }
    for (size_t i = first; i < rows * inter; i += stride) {
        const size_t r = i / inter;
        const size_t c = i % inter;
        const float a = to_float(x[r * 2 * inter + c]);
        const float g = to_float(x[r * 2 * inter + inter + c]);
        out[i] = from_float<T>(gate_act<G>(a) * g);
    }
}

}  // namespace cr

#define CR_GELU_OPS(T, DT)                                                              \
    extern "C" __global__ __launch_bounds__(256) void gelu_##DT(T* x, size_t n) {       \
        cr::gelu<T>(x, n);                                                              \
    }                                                                                   \
    extern "C" __global__ __launch_bounds__(256) void geglu_##DT(const T* x, T* out,    \
                                                                 size_t rows, int inter) { \
        cr::geglu<T, cr::Gate::kGelu>(x, out, rows, inter);                             \
    }                                                                                   \
    extern "C" __global__ __launch_bounds__(256) void swiglu_##DT(const T* x, T* out,   \
                                                                  size_t rows, int inter) { \
        cr::geglu<T, cr::Gate::kSilu>(x, out, rows, inter);                             \
    }

CR_GELU_OPS(__half, f16)
CR_GELU_OPS(__nv_bfloat16, bf16)
