// Embeddings: out[t] = LayerNorm(word[ids[t]] + token_type[types[t]] + position[pos[t]]).
//
// Shapes: ids / types / pos u32 [rows] (the launcher has checked every index against its table);
// tables [entries, width] and out [rows, width], row-major fp16, width % 8 == 0, width <= 8192.
// One block per token, one 16-byte vector (8 columns) per thread; blockDim.x = width / 8 rounded
// up to a multiple of 32, and threads past the row's end only take part in the reductions.
// Gather, sum and LayerNorm in one pass: the row stays in registers, one write.
#include "common.cuh"

namespace cr {

template <typename T>
__device__ void embed_layernorm(const uint32_t* __restrict__ ids,
                                const uint32_t* __restrict__ types,
                                const uint32_t* __restrict__ pos, const T* __restrict__ word,
                                const T* __restrict__ position, const T* __restrict__ token_type,
                                const T* __restrict__ gamma, const T* __restrict__ beta,
                                T* __restrict__ out, int width, float eps) {
    const size_t row = blockIdx.x;
    const int col = threadIdx.x * kVec;
    const bool active = col < width;
    Vec8 x = zero_vec();
    if (active) {
        const Vec8 w = load_vec(word + size_t(ids[row]) * width + col);
        const Vec8 p = load_vec(position + size_t(pos[row]) * width + col);
        const Vec8 t = load_vec(token_type + size_t(types[row]) * width + col);
        // transformers' order (and the reference's): (word + token_type) + position.
#pragma unroll
        for (int i = 0; i < kVec; ++i) x.v[i] = (w.v[i] + t.v[i]) + p.v[i];
    }
    const Vec8 y = layer_norm_vec(x, active, width, gamma, beta, col, eps);
    if (active) store_vec(out + row * width + col, y);
}

}  // namespace cr

#define CR_EMBED_OPS(T, DT)                                                                   \
    extern "C" __global__ __launch_bounds__(1024) void embed_layernorm_##DT(                  \
        const uint32_t* ids, const uint32_t* types, const uint32_t* pos, const T* word,       \
        const T* position, const T* token_type, const T* gamma, const T* beta, T* out,        \
        int width, float eps) {                                                               \
        cr::embed_layernorm<T>(ids, types, pos, word, position, token_type, gamma, beta, out, \
                               width, eps);                                                   \
    }

CR_EMBED_OPS(__half, f16)
CR_EMBED_OPS(__nv_bfloat16, bf16)

// embed_tokens: out[t] = table[ids[t]], the token embeddings alone (ModernBERT: no position or
// type table; its norm is a separate op). One block per token, 16-byte copies; width % 8 == 0.
namespace cr {

template <typename T>
__device__ void embed_tokens(const uint32_t* __restrict__ ids, const T* __restrict__ table,
                             T* __restrict__ out, int width) {
    const size_t row = blockIdx.x;
    const uint4* from = reinterpret_cast<const uint4*>(table + size_t(ids[row]) * width);
    uint4* to = reinterpret_cast<uint4*>(out + row * width);
    for (int c = threadIdx.x; c < width / kVec; c += blockDim.x) to[c] = from[c];
}

}  // namespace cr

#define CR_EMBED_TOKENS_OPS(T, DT)                                                     \
    extern "C" __global__ __launch_bounds__(128) void embed_tokens_##DT(               \
        const uint32_t* ids, const T* table, T* out, int width) {                      \
        cr::embed_tokens<T>(ids, table, out, width);                                   \
    }

CR_EMBED_TOKENS_OPS(__half, f16)
CR_EMBED_TOKENS_OPS(__nv_bfloat16, bf16)
