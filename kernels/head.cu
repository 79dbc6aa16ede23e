// Classification head on the [CLS] rows: logit[s] = w2 . tanh(W1 x_s + b1) + b2, in fp32.
//
// Shapes: hidden [tokens, width] fp16, row-major; x_s is row cu_seqlens[s] (the first token of
// sequence s). W1 [width, width] row-major ([out, in], as the checkpoint), b1 [width], w2
// [width] (the single-logit projection), b2 [1]; logits f32 [n]. width % 8 == 0, width <= 4096.
// One block per sequence (blockDim.x a multiple of 32): the [CLS] row and the pooled vector live
// in dynamic shared memory as fp32 (2 * width floats); one warp per output of W1 at a time, its
// lanes reading the weight row in coalesced 16-byte vectors. W1 is read once per sequence and
// stays in L2 across blocks. Only these n floats go back to the host.
#include "common.cuh"

namespace cr {

template <typename T>
__device__ void cls_head(const T* __restrict__ hidden, const int* __restrict__ cu_seqlens,
                         const T* __restrict__ w1, const T* __restrict__ b1,
                         const T* __restrict__ w2, const T* __restrict__ b2,
                         float* __restrict__ logits, int width) {
    extern __shared__ float smem[];
    float* x = smem;
    float* pooled = smem + width;
    const int seq = blockIdx.x;
    const T* row = hidden + size_t(cu_seqlens[seq]) * width;
    for (int c = threadIdx.x * kVec; c < width; c += blockDim.x * kVec) {
        const Vec8 v = load_vec(row + c);
#pragma unroll
        for (int i = 0; i < kVec; ++i) x[c + i] = v.v[i];
    }
    __syncthreads();
    const int lane = threadIdx.x % kWarp;
    const int warps = blockDim.x / kWarp;
    for (int j = threadIdx.x / kWarp; j < width; j += warps) {
        const T* wrow = w1 + size_t(j) * width;
        float dot = 0.f;
        // Unrolled by 2, not fully: ptxas 13.0 for sm_90 spilled 8 bytes with the default.
#pragma unroll 2
        for (int c = lane * kVec; c < width; c += kWarp * kVec) {
            const Vec8 w = load_vec(wrow + c);
#pragma unroll
            for (int i = 0; i < kVec; ++i) dot += w.v[i] * x[c + i];
        }
        dot = warp_sum(dot);
        if (lane == 0) pooled[j] = tanhf(dot + __half2float(b1[j]));
    }
    __syncthreads();
    float part = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) part += pooled[i] * __half2float(w2[i]);
    const float total = block_sum(part);
    if (threadIdx.x == 0) logits[seq] = total + __half2float(b2[0]);
}

}  // namespace cr

#define CR_HEAD_OPS(T, DT)                                                                  \
    extern "C" __global__ void __launch_bounds__(256) cls_head_##DT(                        \
        const T* hidden, const int* cu_seqlens, const T* w1, const T* b1, const T* w2,      \
        const T* b2, float* logits, int width) {                                            \
        cr::cls_head<T>(hidden, cu_seqlens, w1, b1, w2, b2, logits, width);                 \
    }

CR_HEAD_OPS(__half, f16)
