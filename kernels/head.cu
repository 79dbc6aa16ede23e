// The [CLS] rows and the classification head on them.
//
// gather_cls: out[s] = src[cu_seqlens[s]], [n, width] from [tokens, width]; width % 8 == 0;
// an empty sequence gets a zero row. One block per sequence, 16-byte copies. The last layer runs
// on these n rows only. gather_last: the same with each sequence's last row (the decoder LLMs').
//
// cls_head: logit[s] = w2 . tanh(W1 x_s + b1) + b2, in fp32.
// Shapes: cls [n, width] fp16, row-major; x_s is row s (packed by gather_cls). W1 [width, width] row-major ([out, in], as the checkpoint), b1 [width], w2
// [width] (the single-logit projection), b2 [1]; logits f32 [n]. width % 8 == 0, width <= 4096.
// One block per sequence (blockDim.x a multiple of 32): the [CLS] row and the pooled vector live
// in dynamic shared memory as fp32 (2 * width floats); one warp per output of W1 at a time, its
// lanes reading the weight row in coalesced 16-byte vectors. W1 is read once per sequence and
// stays in L2 across blocks. Only these n floats go back to the host.
//
// mean_pool: out[s] = the mean of sequence s's rows of src, [n, width] fp16 from [tokens, width]
// (ModernBERT's classifier_pooling "mean"); sums in fp32; an empty sequence gets a zero row. One
// block per sequence, one thread per 8 columns, rows walked in order (the reference's order).
//
// classify: logit[s] = w . x_s + b in fp32, x [n, width] fp16, w [width], b [1] (a head's last,
// one-logit projection: ModernBERT's classifier). One block per sequence; width % 8 == 0.
#include "common.cuh"

namespace cr {

template <typename T, bool kLast>
__device__ void gather_row(const T* __restrict__ src, const int* __restrict__ cu_seqlens,
                           T* __restrict__ out, int width) {
    const int seq = blockIdx.x;
    const int start = cu_seqlens[seq];
    const int end = cu_seqlens[seq + 1];
    uint4* to = reinterpret_cast<uint4*>(out + size_t(seq) * width);
    if (end == start) {
        // An empty sequence (a padded batch's) has no row, and row `start` may lie past the
        // batch: a zero row keeps the head's output finite.
        for (int c = threadIdx.x; c < width / kVec; c += blockDim.x) to[c] = make_uint4(0, 0, 0, 0);
        return;
    }
    const int row = kLast ? end - 1 : start;
    const uint4* from = reinterpret_cast<const uint4*>(src + size_t(row) * width);
    for (int c = threadIdx.x; c < width / kVec; c += blockDim.x) to[c] = from[c];
}

template <typename T>
__device__ void cls_head(const T* __restrict__ cls, const T* __restrict__ w1, const T* __restrict__ b1,
                         const T* __restrict__ w2, const T* __restrict__ b2,
                         float* __restrict__ logits, int width) {
    CR_DYNAMIC_SHARED(float, smem);
    float* x = smem;
    float* pooled = smem + width;
    const int seq = blockIdx.x;
    const T* row = cls + size_t(seq) * width;
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
        if (lane == 0) pooled[j] = tanhf(dot + to_float(b1[j]));
    }
    __syncthreads();
    float part = 0.f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) part += pooled[i] * to_float(w2[i]);
    const float total = block_sum(part);
    if (threadIdx.x == 0) logits[seq] = total + to_float(b2[0]);
}

template <typename T>
__device__ void mean_pool(const T* __restrict__ src, const int* __restrict__ cu_seqlens,
                          T* __restrict__ out, int width) {
    const int seq = blockIdx.x;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    for (int c = threadIdx.x * kVec; c < width; c += blockDim.x * kVec) {
        Vec8 acc = zero_vec();
        for (int r = 0; r < len; ++r) {
            const Vec8 v = load_vec(src + size_t(start + r) * width + c);
#pragma unroll
            for (int i = 0; i < kVec; ++i) acc.v[i] += v.v[i];
        }
        const float inv = len > 0 ? 1.f / float(len) : 0.f;
#pragma unroll
        for (int i = 0; i < kVec; ++i) acc.v[i] *= inv;
        store_vec(out + size_t(seq) * width + c, acc);
    }
}

template <typename T>
__device__ void classify(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ b,
                         float* __restrict__ logits, int width) {
    const int seq = blockIdx.x;
    const T* row = x + size_t(seq) * width;
    float part = 0.f;
    for (int c = threadIdx.x * kVec; c < width; c += blockDim.x * kVec) {
        const Vec8 xv = load_vec(row + c);
        const Vec8 wv = load_vec(w + c);
#pragma unroll
        for (int i = 0; i < kVec; ++i) part += xv.v[i] * wv.v[i];
    }
    const float total = block_sum(part);
    if (threadIdx.x == 0) logits[seq] = total + to_float(b[0]);
}

}  // namespace cr

#define CR_HEAD_OPS(T, DT)                                                                  \
    extern "C" __global__ __launch_bounds__(128) void gather_cls_##DT(                      \
        const T* src, const int* cu_seqlens, T* out, int width) {                           \
        cr::gather_row<T, false>(src, cu_seqlens, out, width);                              \
    }                                                                                       \
    extern "C" __global__ __launch_bounds__(128) void gather_last_##DT(                     \
        const T* src, const int* cu_seqlens, T* out, int width) {                           \
        cr::gather_row<T, true>(src, cu_seqlens, out, width);                               \
    }                                                                                       \
    extern "C" __global__ __launch_bounds__(256) void cls_head_##DT(                        \
        const T* cls, const T* w1, const T* b1, const T* w2, const T* b2, float* logits,    \
        int width) {                                                                        \
        cr::cls_head<T>(cls, w1, b1, w2, b2, logits, width);                                \
    }                                                                                       \
    extern "C" __global__ __launch_bounds__(128) void mean_pool_##DT(                       \
        const T* src, const int* cu_seqlens, T* out, int width) {                           \
        cr::mean_pool<T>(src, cu_seqlens, out, width);                                      \
    }                                                                                       \
    extern "C" __global__ __launch_bounds__(128) void classify_##DT(                        \
        const T* x, const T* w, const T* b, float* logits, int width) {                     \
        cr::classify<T>(x, w, b, logits, width);                                            \
    }

CR_HEAD_OPS(__half, f16)
CR_HEAD_OPS(__nv_bfloat16, bf16)
