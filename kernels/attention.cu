// Attention over the packed variable-length batch: per (sequence, head),
// ctx = softmax(Q K^T / sqrt(D)) V, with no padding anywhere. One kernel serves every family:
// BERT's full attention, ModernBERT's sliding window, and the decoder LLMs' causal grouped-query
// attention with a shared prefix.
//
// Shapes: qkv [tokens, (H + 2 * KV) * D] row-major (fp16 or bf16), H query heads and KV key/value
// heads (KV divides H; KV = H for the encoders): row t holds Q | K | V, and inside each the heads
// are contiguous (head h at columns h * D .. h * D + D of its part). Query head h reads K/V head
// h / (H / KV). ctx [tokens, H * D], same head layout. Sequence s owns rows cu_seqlens[s] ..
// cu_seqlens[s + 1] (i32, n + 1 entries). D in {16, 32, 64, 128}; rows start 16-byte aligned
// (H * D % 8 == 0; the launcher checks).
//
// Grid (sequences, heads, ceil(max_seqlen / kBlockM)), kWarps warps per block. A block takes
// kBlockM query rows of one (sequence, head) and works out the sequence's offset and length
// once; a block whose first row is past its sequence's end returns at once. Each warp owns 16
// query rows: its Q fragments stay in registers for the whole kernel. K and V tiles of kBlockN
// keys go through shared memory (rows padded by kPad values so that the 8 rows one mma
// fragment touches fall in distinct banks); keys past the end are zero-filled and masked to
// -inf. S = Q K^T and O += P V use mma.sync m16n8k16 (T in, fp32 accumulate); the
// accumulator layout of S is reused as the A operand of P V without going through memory, and
// V's B operand comes from ldmatrix.trans. Softmax is online (running max and sum per row, in
// fp32, in the exp2 domain), so any length works: tiles loop over K/V (512 for BERT, 8192 for
// bge-reranker-v2-m3) with constant registers and shared memory.
//
// Which keys a query row i sees, on a key axis that puts the shared prefix first:
// - A shared prefix (`*prefix` = P > 0, read from device memory so that a recorded graph serves
//   every prefix length): sequence 0 is the prefix, and every later sequence's key axis starts
//   with the prefix's P rows (rows 0 .. P - 1 of the batch, seen by every query row), then its
//   own rows. Key k < P is prefix row k; key k >= P is own row k - P.
// - `causal`: own key j only when j <= i (the prefix precedes every own row).
// - A window (ModernBERT's sliding layers, never with a prefix): with `window` >= 0, own key j
//   only when |i - j| <= window. A block's kBlockM rows see keys q0 - window .. q0 + kBlockM - 1
//   + window at most, so its tile loop covers only that range: every K/V tile wholly outside
//   the window is skipped, never loaded; causal blocks likewise stop at their last row.
// Keys inside the tile range but not visible to a row are masked to -inf. The first tile holds
// a key of every real row (the prefix's first, own key 0, or the window's first); a row past
// the sequence's end (computed, never stored) may have none in any tile: its running max stays
// -inf and the update uses 0 in its place, so no NaN or inf is ever formed. `window` < 0 and
// `causal` 0 is full attention (BERT's).
#include "common.cuh"

namespace cr {

template <int D>
struct AttentionTraits {
    static_assert(D % 16 == 0 && D <= 128, "head_dim must be a multiple of 16, at most 128");
    static constexpr int kWarps = 4;
    static constexpr int kBlockM = 16 * kWarps;  // query rows per block
    static constexpr int kBlockN = 64;           // keys per K/V tile
    static constexpr int kPad = 8;               // halves: keeps rows 16-byte aligned, shifts banks
    static constexpr int kStride = D + kPad;     // shared row stride in halves
    static constexpr int kThreads = kWarps * kWarp;
};

template <typename T, int D>
__device__ void attention(const T* __restrict__ qkv, const int* __restrict__ cu_seqlens,
                          const uint32_t* __restrict__ prefix, T* __restrict__ ctx, int heads,
                          int kv_heads, float scale_log2, int window, int causal) {
    using Tr = AttentionTraits<D>;
    __shared__ __align__(16) T k_tile[Tr::kBlockN * Tr::kStride];
    __shared__ __align__(16) T v_tile[Tr::kBlockN * Tr::kStride];

    const int seq = blockIdx.x;
    const int head = blockIdx.y;
    const int start = cu_seqlens[seq];
    const int len = cu_seqlens[seq + 1] - start;
    const int q0 = blockIdx.z * Tr::kBlockM;
    if (q0 >= len) return;  // no work for tokens that do not exist

    const int hidden = heads * D;
    const int kv_head = head / (heads / kv_heads);
    const size_t row_stride = size_t(heads + 2 * kv_heads) * D;
    const T* q_base = qkv + size_t(start) * row_stride + size_t(head) * D;
    // K and V of key k on this sequence's key axis (the shared prefix's rows first).
    const int pre = seq > 0 ? int(prefix[0]) : 0;
    const T* k_head = qkv + size_t(hidden) + size_t(kv_head) * D;
    const T* v_head = k_head + size_t(kv_heads) * D;

    const int warp = threadIdx.x / kWarp;
    const int lane = threadIdx.x % kWarp;
    const int g = lane / 4;  // fragment row group
    const int t = lane % 4;  // thread in group
    const int r0 = q0 + warp * 16 + g;  // this thread's two query rows (r0, r0 + 8)
    const int r1 = r0 + 8;

    // Q as mma A fragments, k-steps of 16 columns; rows past the end are zeros (never stored).
    uint32_t qf[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        const int c = ks * 16 + 2 * t;
        const uint32_t* p0 = reinterpret_cast<const uint32_t*>(q_base + size_t(r0) * row_stride + c);
        const uint32_t* p1 = reinterpret_cast<const uint32_t*>(q_base + size_t(r1) * row_stride + c);
        qf[ks][0] = r0 < len ? p0[0] : 0u;
        qf[ks][1] = r1 < len ? p1[0] : 0u;
        qf[ks][2] = r0 < len ? p0[4] : 0u;  // +8 halves
        qf[ks][3] = r1 < len ? p1[4] : 0u;
    }

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of the raw scores, rows r0 and r1
    float l[2] = {0.f, 0.f};              // running sum of exp, this thread's columns only

    constexpr int kVecsPerRow = D / kVec;
    const bool windowed = window >= 0;
    // The tile range on the key axis: the prefix, then own keys up to the block's last visible.
    const int own_begin = windowed ? max(0, q0 - window) : 0;
    const int own_end = windowed ? min(len, q0 + Tr::kBlockM + window)
                        : causal ? min(len, q0 + Tr::kBlockM)
                                 : len;
    const int k_begin = pre > 0 ? 0 : own_begin;
    const int k_end = pre + own_end;
    for (int k0 = k_begin; k0 < k_end; k0 += Tr::kBlockN) {
        __syncthreads();  // every warp is done reading the previous tile
        for (int i = threadIdx.x; i < Tr::kBlockN * kVecsPerRow; i += Tr::kThreads) {
            const int r = i / kVecsPerRow;
            const int c = (i % kVecsPerRow) * kVec;
            uint4 kv = make_uint4(0, 0, 0, 0);
            uint4 vv = make_uint4(0, 0, 0, 0);
            const int key = k0 + r;
            if (key < pre + len) {
                const size_t row = key < pre ? size_t(key) : size_t(start + key - pre);
                kv = *reinterpret_cast<const uint4*>(k_head + row * row_stride + c);
                vv = *reinterpret_cast<const uint4*>(v_head + row * row_stride + c);
            }
            *reinterpret_cast<uint4*>(&k_tile[r * Tr::kStride + c]) = kv;
            *reinterpret_cast<uint4*>(&v_tile[r * Tr::kStride + c]) = vv;
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the tile's kBlockN keys.
        float s[Tr::kBlockN / 8][4];
#pragma unroll
        for (int nt = 0; nt < Tr::kBlockN / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
            const T* krow = &k_tile[(nt * 8 + g) * Tr::kStride + 2 * t];
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks) {
                const uint32_t b0 = *reinterpret_cast<const uint32_t*>(krow + ks * 16);
                const uint32_t b1 = *reinterpret_cast<const uint32_t*>(krow + ks * 16 + 8);
                mma_16816<T>(s[nt], qf[ks], b0, b1);
            }
        }
        // Masking only where a tile reaches past the sequence, past some row's window, or past
        // the block's first row under the causal mask (own keys k0 - pre ...).
        const int j0 = k0 - pre;  // own index of the tile's first key (negative in the prefix)
        const bool edge = (windowed && (j0 < q0 + Tr::kBlockM - 1 - window ||
                                        j0 + Tr::kBlockN - 1 > q0 + window)) ||
                          (causal && j0 + Tr::kBlockN - 1 > q0);
        if (k0 + Tr::kBlockN > pre + len || edge) {
#pragma unroll
            for (int nt = 0; nt < Tr::kBlockN / 8; ++nt)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int j = j0 + nt * 8 + 2 * t + (e & 1);
                    if (j < 0) continue;  // a prefix key: every row sees it
                    const int dist = (e < 2 ? r0 : r1) - j;
                    if (j >= len || (causal && dist < 0) ||
                        (windowed && (dist > window || -dist > window)))
                        s[nt][e] = -INFINITY;
                }
        }

        // Online softmax. Every real row has a key in the first tile, so its max is finite from
        // then on; a row past the end may have none (max -inf, used as 0).
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < Tr::kBlockN / 8; ++nt) {
            mx[0] = fmaxf(mx[0], fmaxf(s[nt][0], s[nt][1]));
            mx[1] = fmaxf(mx[1], fmaxf(s[nt][2], s[nt][3]));
        }
        float corr[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            // The 4 threads of a group hold the same row: reduce over them.
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 1));
            mx[i] = fmaxf(mx[i], __shfl_xor_sync(0xffffffffu, mx[i], 2));
            const float m_prev = m[i];
            m[i] = mx[i];                                      // -inf while the row has no key
            if (mx[i] == -INFINITY) mx[i] = 0.f;               // and then every p below is 0
            corr[i] = exp2f((m_prev - mx[i]) * scale_log2);  // 0 while m_prev is -inf
        }
        float rs[2] = {0.f, 0.f};
#pragma unroll
        for (int nt = 0; nt < Tr::kBlockN / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                s[nt][e] = exp2f((s[nt][e] - mx[e / 2]) * scale_log2);
                rs[e / 2] += s[nt][e];
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) l[i] = l[i] * corr[i] + rs[i];
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            o[dt][0] *= corr[0];
            o[dt][1] *= corr[0];
            o[dt][2] *= corr[1];
            o[dt][3] *= corr[1];
        }

        // O += P V: P (rounded to T) from the S accumulators, 16 keys per k-step.
#pragma unroll
        for (int kk = 0; kk < Tr::kBlockN / 16; ++kk) {
            const uint32_t a[4] = {
                pack2<T>(s[2 * kk][0], s[2 * kk][1]),
                pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3]),
            };
            // Lane l addresses key row kk*16 + (l % 8) + 8 * ((l / 8) % 2), column block
            // 8 * (l / 16): matrices 0/1 give b0/b1 of one 8-wide n-tile, 2/3 of the next.
            const int key = kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2);
            const int col = 8 * (lane / 16);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t b[4];
                ldmatrix_x4_trans(b, &v_tile[key * Tr::kStride + dt * 8 + col]);
                mma_16816<T>(o[dt], a, b[0], b[1]);
                mma_16816<T>(o[dt + 1], a, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < 2; ++i) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
    const float inv0 = 1.f / l[0];
    const float inv1 = 1.f / l[1];
    T* out0 = ctx + size_t(start + r0) * hidden + size_t(head) * D + 2 * t;
    T* out1 = ctx + size_t(start + r1) * hidden + size_t(head) * D + 2 * t;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        if (r0 < len)
            *reinterpret_cast<uint32_t*>(out0 + dt * 8) = pack2<T>(o[dt][0] * inv0, o[dt][1] * inv0);
        if (r1 < len)
            *reinterpret_cast<uint32_t*>(out1 + dt * 8) = pack2<T>(o[dt][2] * inv1, o[dt][3] * inv1);
    }
}

}  // namespace cr

#define CR_ATTENTION_OP(T, DT, D)                                                          \
    extern "C" __global__ __launch_bounds__(cr::AttentionTraits<D>::kThreads) void         \
        attention_d##D##_##DT(const T* qkv, const int* cu_seqlens, const uint32_t* prefix,  \
                              T* ctx, int heads, int kv_heads, float scale_log2, int window, \
                              int causal) {                                                \
        cr::attention<T, D>(qkv, cu_seqlens, prefix, ctx, heads, kv_heads, scale_log2,     \
                            window, causal);                                               \
    }

#define CR_ATTENTION_OPS(T, DT) \
    CR_ATTENTION_OP(T, DT, 16)  \
    CR_ATTENTION_OP(T, DT, 32)  \
    CR_ATTENTION_OP(T, DT, 64)  \
    CR_ATTENTION_OP(T, DT, 128)

CR_ATTENTION_OPS(__half, f16)
CR_ATTENTION_OPS(__nv_bfloat16, bf16)
