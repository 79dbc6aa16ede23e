// The visual cross-encoder's ops (BLIP's image-text matching model), twins of src/backend/cpu.rs.
//
// patchify: n images [3, size, size] (CHW) as rows of patches for the patch embedding's GEMM
//   (im2col): row i·g² + py·g + px (g = size / patch) is image i's patch (py, px), its 3·patch²
//   values in (channel, y, x) order. A copy: bit for bit. Grid-stride, one element per thread.
// vit_embed: n images of g² patch rows, width wide, into rows of g² + 1: the class token, then
//   the patches, each plus its learned position (f32 sum, one rounding). One block per row.
// cross_attention: each query row of the text batch (sequence s) attends to every key/value row
//   of image image_of[s] (rows image_of[s]·image_rows onwards), no mask; one image's rows serve
//   every pair that scores it: softmax(q·Kᵀ / sqrt(d))·V. kv rows hold K | V,
//   heads contiguous in each. One warp per (query row, head), lanes splitting head_dim
//   (lane L holds columns L, L + 32, ...; d one of 16, 32, 64, 128: `HEAD_DIMS`); an online softmax in f32 over the keys,
//   P never rounded to storage; one rounding of the output. Grid (sequences, heads), 4 warps
//   per block, each taking every 4th query row of its sequence. Simple and exact rather than
//   fast: the text side has tens of rows, so this is far from the forward's cost (the ViT is).
#include "common.cuh"

namespace cr {

template <typename T>
__device__ void patchify(const T* __restrict__ pixels, T* __restrict__ out, int n, int size,
                         int patch) {
    const int g = size / patch;
    const int pp = patch * patch;
    const long long k = 3LL * pp;
    const long long total = (long long)n * g * g * k;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < total;
         e += (long long)gridDim.x * blockDim.x) {
        const long long row = e / k;
        const int col = int(e - row * k);
        const int image = int(row / (g * g));
        const int p = int(row - (long long)image * g * g);
        const int py = p / g, px = p % g;
        const int c = col / pp, r = col % pp;
        const int y = r / patch, x = r % patch;
        out[e] = pixels[(((long long)image * 3 + c) * size + py * patch + y) * size + px * patch + x];
    }
}

template <typename T>
__device__ void vit_embed(const T* __restrict__ patches, const T* __restrict__ cls,
                          const T* __restrict__ positions, T* __restrict__ out, int rows,
                          int width) {
    const int r = blockIdx.x;  // out row: image r / rows, position r % rows
    const int image = r / rows, j = r % rows;
    const T* src = j == 0 ? cls : patches + ((long long)image * (rows - 1) + j - 1) * width;
    const T* pos = positions + (long long)j * width;
    T* o = out + (long long)r * width;
    for (int c = threadIdx.x; c < width; c += blockDim.x) {
        o[c] = from_float<T>(to_float(src[c]) + to_float(pos[c]));
    }
}

template <typename T, int D>
__device__ void cross_attention(const T* __restrict__ q, const int* __restrict__ cu_q,
                                const T* __restrict__ kv, const int* __restrict__ image_of,
                                int image_rows, T* __restrict__ out, int heads) {
    // Lane L holds columns L, L + 32, ...; for D = 16 the upper half-warp holds none.
    constexpr int kPer = (D + kWarp - 1) / kWarp;
    const int seq = blockIdx.x, head = blockIdx.y;
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    const int warps = blockDim.x / kWarp;
    const int h = heads * D;
    const int q0 = cu_q[seq], q1 = cu_q[seq + 1];
    const int k0 = image_of[seq] * image_rows, k1 = k0 + image_rows;
    // Scores in base 2: exp(x) = exp2(x·log2 e), the scale folded into q.
    const float scale = rsqrtf(float(D)) * 1.4426950408889634f;
    for (int row = q0 + warp; row < q1; row += warps) {
        float qv[kPer], acc[kPer];
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int c = lane + i * kWarp;
            qv[i] = c < D ? to_float(q[(long long)row * h + head * D + c]) * scale : 0.f;
            acc[i] = 0.f;
        }
        float m = -INFINITY, l = 0.f;
        for (int j = k0; j < k1; ++j) {
            const T* krow = kv + (long long)j * 2 * h + head * D;
            const T* vrow = krow + h;
            float dot = 0.f;
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int c = lane + i * kWarp;
                dot += qv[i] * (c < D ? to_float(krow[c]) : 0.f);
            }
            dot = warp_sum(dot);
            const float mn = fmaxf(m, dot);
            const float corr = exp2f(m - mn);  // 0 on the first key (m = -inf)
            const float p = exp2f(dot - mn);
            l = l * corr + p;
#pragma unroll
            for (int i = 0; i < kPer; ++i) {
                const int c = lane + i * kWarp;
                acc[i] = acc[i] * corr + p * (c < D ? to_float(vrow[c]) : 0.f);
            }
            m = mn;
        }
        // An image of no rows (not produced by the model) leaves zeros, as the CPU twin does.
        const float inv = l > 0.f ? 1.f / l : 0.f;
#pragma unroll
        for (int i = 0; i < kPer; ++i) {
            const int c = lane + i * kWarp;
            if (c < D) out[(long long)row * h + head * D + c] = from_float<T>(acc[i] * inv);
        }
    }
}

}  // namespace cr

#define CR_CROSS_ATTENTION(T, DT, D)                                                         \
    extern "C" __global__ __launch_bounds__(128) void cross_attention_d##D##_##DT(            \
        const T* q, const int* cu_q, const T* kv, const int* image_of, int image_rows, T* out, \
        int heads) {                                                                          \
        cr::cross_attention<T, D>(q, cu_q, kv, image_of, image_rows, out, heads);             \
    }

#define CR_VISION_OPS(T, DT)                                                                 \
    extern "C" __global__ __launch_bounds__(256) void patchify_##DT(                          \
        const T* pixels, T* out, int n, int size, int patch) {                                \
        cr::patchify<T>(pixels, out, n, size, patch);                                         \
    }                                                                                         \
    extern "C" __global__ __launch_bounds__(256) void vit_embed_##DT(                         \
        const T* patches, const T* cls, const T* positions, T* out, int rows, int width) {    \
        cr::vit_embed<T>(patches, cls, positions, out, rows, width);                          \
    }                                                                                         \
    CR_CROSS_ATTENTION(T, DT, 16)                                                             \
    CR_CROSS_ATTENTION(T, DT, 32)                                                             \
    CR_CROSS_ATTENTION(T, DT, 64)                                                             \
    CR_CROSS_ATTENTION(T, DT, 128)

CR_VISION_OPS(__half, f16)
CR_VISION_OPS(__nv_bfloat16, bf16)
