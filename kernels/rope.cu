// Rotary position embeddings (RoPE), in place on the Q and K thirds of the fused projection.
//
// Shapes: qkv [tokens, 3 * H] fp16 row-major, H = heads * D, Q | K | V per row with the heads
// contiguous inside each (as attention.cu reads it); pos u32 [tokens], the token's position id.
// Within a head, element i pairs with i + D/2 (transformers' rotate_half) and the pair turns by
// the angle pos * inv_freq[i], inv_freq[i] = 1 / theta^(2i / D):
//   x[i] = a cos - b sin,  x[i + D/2] = b cos + a sin,  (a, b) = (x[i], x[i + D/2]).
// One thread per (token, i): it works out its angle once, as the reference does (inv_freq in
// f64 rounded to f32, the angle a f32 product), and turns pair i of every Q and K head of its
// token. The angle (up to 8192 rad at 8192 positions) is reduced to [-pi, pi] in f64, exactly
// enough, then __sincosf (abs error ~2^-21.4, far under the fp16 rounding of the result):
// precise sincosf would carry a Payne-Hanek path for huge arguments that needs a stack frame.
// A warp's lanes hold consecutive i, so each head's loads and stores are contiguous. D even,
// D / 2 <= blockDim.x.
#include "common.cuh"

namespace cr {

template <typename T>
__device__ void rope(T* __restrict__ qkv, const uint32_t* __restrict__ pos, int tokens, int heads,
                     int head_dim, double theta) {
    const int half = head_dim / 2;
    const int per_block = blockDim.x / half;  // tokens per block
    const int local = threadIdx.x / half;
    const int i = threadIdx.x % half;
    const int token = blockIdx.x * per_block + local;
    if (local >= per_block || token >= tokens) return;
    const float inv_freq = float(1.0 / pow(theta, double(2 * i) / double(head_dim)));
    const float angle = float(pos[token]) * inv_freq;
    const double two_pi = 6.283185307179586;
    const double reduced = double(angle) - two_pi * rint(double(angle) / two_pi);
    float sn, cs;
    __sincosf(float(reduced), &sn, &cs);
    T* row = qkv + size_t(token) * 3 * heads * head_dim;
    // Q's heads, then K's: 2 * heads heads of head_dim, back to back.
    for (int h = 0; h < 2 * heads; ++h) {
        T* x = row + size_t(h) * head_dim;
        const float a = __half2float(x[i]);
        const float b = __half2float(x[i + half]);
        x[i] = __float2half_rn(a * cs - b * sn);
        x[i + half] = __float2half_rn(b * cs + a * sn);
    }
}

}  // namespace cr

#define CR_ROPE_OPS(T, DT)                                                                   \
    extern "C" __global__ __launch_bounds__(256) void rope_##DT(                             \
        T* qkv, const uint32_t* pos, int tokens, int heads, int head_dim, double theta) {    \
        cr::rope<T>(qkv, pos, tokens, heads, head_dim, theta);                               \
    }

CR_ROPE_OPS(__half, f16)
