// Rotary position embeddings (RoPE), in place on the Q and K parts of the fused projection, with
// Qwen3's per-head RMSNorm of Q and K before it (qk_norm_rope).
//
// Shapes: qkv [tokens, (H + 2 * KV) * D] row-major (fp16 or bf16): Q's H heads, K's KV heads,
// V's KV heads, each head's D values contiguous (as attention.cu reads it; KV = H for
// ModernBERT); pos u32 [tokens], the token's position id. q_norm, k_norm [D] (qk_norm_rope).
// Within a head, element i pairs with i + D/2 (transformers' rotate_half) and the pair turns by
// the angle pos * inv_freq[i], inv_freq[i] = 1 / theta^(2i / D):
//   x[i] = a cos - b sin,  x[i + D/2] = b cos + a sin,  (a, b) = (x[i], x[i + D/2]).
// qk_norm_rope first replaces the head by x * rsqrt(mean(x^2) + eps) * norm, in fp32 (the
// rotation then reads the normed values, never their rounding).
//
// One block per token, one warp per head at a time (Q's heads, then K's; V untouched); lane l
// holds pairs i = l, l + 32, ... < D/2, so a head's loads are contiguous and its sum of squares
// is one warp reduction. Each lane works out its angles once per token, as the reference does
// (inv_freq in f64 rounded to f32, the angle a f32 product). The angle (up to 8192 rad at 8192
// positions; 40960 for Qwen's contexts) is reduced to [-pi, pi] in f64, exactly enough, then
// __sincosf (abs error ~2^-21.4, far under the 16-bit rounding of the result): precise sincosf
// would carry a Payne-Hanek path for huge arguments that needs a stack frame. D even, D <= 256.
#include "common.cuh"

namespace cr {

constexpr int kRopeMaxPairs = 4;  // pairs per lane: D / 2 <= 4 * 32

template <typename T, bool kNorm>
__device__ void rope(T* __restrict__ qkv, const uint32_t* __restrict__ pos,
                     const T* __restrict__ q_norm, const T* __restrict__ k_norm, int heads,
                     int kv_heads, int head_dim, float eps, double theta) {
    const int half = head_dim / 2;
    const int token = blockIdx.x;
    const int lane = threadIdx.x % kWarp;
    const int warp = threadIdx.x / kWarp;
    const int warps = blockDim.x / kWarp;
    const double two_pi = 6.283185307179586;
    float sn[kRopeMaxPairs], cs[kRopeMaxPairs];
#pragma unroll
    for (int k = 0; k < kRopeMaxPairs; ++k) {
        const int i = lane + k * kWarp;
        sn[k] = 0.f;
        cs[k] = 1.f;
        if (i < half) {
            const float inv_freq = float(1.0 / pow(theta, double(2 * i) / double(head_dim)));
            const float angle = float(pos[token]) * inv_freq;
            const double reduced = double(angle) - two_pi * rint(double(angle) / two_pi);
            __sincosf(float(reduced), &sn[k], &cs[k]);
        }
    }
    T* row = qkv + size_t(token) * (heads + 2 * kv_heads) * head_dim;
    for (int h = warp; h < heads + kv_heads; h += warps) {  // warp-uniform: the norm shuffles
        T* x = row + size_t(h) * head_dim;
        float a[kRopeMaxPairs], b[kRopeMaxPairs];
        float ss = 0.f;
#pragma unroll
        for (int k = 0; k < kRopeMaxPairs; ++k) {
            const int i = lane + k * kWarp;
            a[k] = i < half ? to_float(x[i]) : 0.f;
            b[k] = i < half ? to_float(x[i + half]) : 0.f;
            ss += a[k] * a[k] + b[k] * b[k];
        }
        if constexpr (kNorm) {
            const float inv = rsqrtf(warp_sum(ss) / head_dim + eps);
            const T* w = h < heads ? q_norm : k_norm;
#pragma unroll
            for (int k = 0; k < kRopeMaxPairs; ++k) {
                const int i = lane + k * kWarp;
                if (i < half) {
                    a[k] = a[k] * inv * to_float(w[i]);
                    b[k] = b[k] * inv * to_float(w[i + half]);
                }
            }
        }
#pragma unroll
        for (int k = 0; k < kRopeMaxPairs; ++k) {
            const int i = lane + k * kWarp;
            if (i < half) {
                x[i] = from_float<T>(a[k] * cs[k] - b[k] * sn[k]);
                x[i + half] = from_float<T>(b[k] * cs[k] + a[k] * sn[k]);
            }
        }
    }
}

}  // namespace cr

#define CR_ROPE_OPS(T, DT)                                                                     \
    extern "C" __global__ __launch_bounds__(128) void rope_##DT(                               \
        T* qkv, const uint32_t* pos, int heads, int kv_heads, int head_dim, double theta) {    \
        cr::rope<T, false>(qkv, pos, nullptr, nullptr, heads, kv_heads, head_dim, 0.f, theta); \
    }                                                                                          \
    extern "C" __global__ __launch_bounds__(128) void qk_norm_rope_##DT(                       \
        T* qkv, const uint32_t* pos, const T* q_norm, const T* k_norm, int heads,              \
        int kv_heads, int head_dim, float eps, double theta) {                                 \
        cr::rope<T, true>(qkv, pos, q_norm, k_norm, heads, kv_heads, head_dim, eps, theta);    \
    }

CR_ROPE_OPS(__half, f16)
CR_ROPE_OPS(__nv_bfloat16, bf16)
