// GELU, exact erf form, in place: x = 0.5 x (1 + erf(x / sqrt 2)), transformers' "gelu".
//
// Shapes: x is [rows, cols] fp16 with the bias already added by the GEMM epilogue; the kernel
// sees it as n = rows * cols elements from a 16-byte aligned base (a whole buffer). A
// grid-stride loop over 16-byte vectors (8 values per thread per step), then the n % 8 tail
// one value at a time: cols need not be a multiple of 8 (one test model has 100).
// Not cuBLASLt's GELU epilogue: that one is the tanh approximation, which "gelu" is not.
#include "common.cuh"

namespace cr {

CR_DEVICE float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

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
        x[i] = __float2half_rn(gelu_erf(__half2float(x[i])));
}

}  // namespace cr

#define CR_GELU_OPS(T, DT)                                                              \
    extern "C" __global__ __launch_bounds__(256) void gelu_##DT(T* x, size_t n) {       \
        cr::gelu<T>(x, n);                                                              \
    }

CR_GELU_OPS(__half, f16)
