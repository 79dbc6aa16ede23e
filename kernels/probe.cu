// Fragment probe: attention.cu's tensor-core step (A fragments loaded from memory, B fragments
// from ldmatrix.x4.trans, two m16n8k16 MMAs) run once on known inputs, with every register it
// touched written out. It exists so that the first real GPU can confirm the software GPU's
// fragment models (softgpu/src/warp_models.h): tests/cuda_probe.rs checks the registers against
// the PTX ISA's tables and compares them bit for bit with the software GPU's answer. The model
// never launches it.
//
// Shapes: a [16][16] fp16 row-major (M x K), b [16][16] fp16 row-major ([k][n]: two 8-wide
// n-tiles), both 16-byte aligned. One block of one warp. g = lane / 4, t = lane % 4.
//   frags [32][8] u32, lane l's row: the A registers, loaded as attention.cu loads Q (u32 reads
//     of a[g][2t..], a[g+8][2t..], then the same 8 columns on), then the 4 registers
//     ldmatrix.x4.trans gives for b, with the lane addresses attention.cu forms for V (b first
//     copied to shared memory, rows padded as attention.cu pads them).
//   d [32][8] f32, lane l's row: the accumulators of n-tile 0 (columns 0..7), then of n-tile 1
//     (8..15), after D = A B + C with C[i][j] = i * 16 + j placed by the accumulator layout.
// Written raw, in register order: a mismatch names its lane and register.
#include "common.cuh"

namespace cr {

struct ProbeTraits {
    static constexpr int kM = 16;
    static constexpr int kN = 16;                // two m16n8k16 n-tiles
    static constexpr int kPad = 8;               // halves, as AttentionTraits::kPad
    static constexpr int kStride = kN + kPad;    // shared row stride in halves (16-byte multiple)
    static constexpr int kFrags = 8;             // u32 per lane in `frags`
    static constexpr int kAcc = 8;               // f32 per lane in `d`
};

template <typename T>
__device__ void fragment_probe(const T* __restrict__ a, const T* __restrict__ b,
                               uint32_t* __restrict__ frags, float* __restrict__ d) {
    using Tr = ProbeTraits;
    __shared__ __align__(16) T b_tile[16 * Tr::kStride];

    const int lane = threadIdx.x % kWarp;
    const int g = lane / 4;
    const int t = lane % 4;

    // b to shared memory: 16 rows of 2 vecs, one vec per lane.
    {
        const int r = lane / 2;
        const int c = (lane % 2) * kVec;
        *reinterpret_cast<uint4*>(&b_tile[r * Tr::kStride + c]) =
            *reinterpret_cast<const uint4*>(b + r * Tr::kN + c);
    }

    // A as attention.cu's Q: rows g and g + 8, columns 2t.. and 2t + 8...
    const uint32_t* p0 = reinterpret_cast<const uint32_t*>(a + g * 16 + 2 * t);
    const uint32_t* p1 = reinterpret_cast<const uint32_t*>(a + (g + 8) * 16 + 2 * t);
    const uint32_t af[4] = {p0[0], p1[0], p0[4], p1[4]};
    __syncthreads();

    // B as attention.cu's V (kk = 0, dt = 0): lane l addresses row (l % 8) + 8 * ((l / 8) % 2),
    // column block 8 * (l / 16); matrices 0/1 are b0/b1 of n-tile 0, 2/3 of n-tile 1.
    const int key = (lane % 8) + 8 * ((lane / 8) % 2);
    const int col = 8 * (lane / 16);
    uint32_t bf[4];
    ldmatrix_x4_trans(bf, &b_tile[key * Tr::kStride + col]);

    // C by the accumulator layout: acc[nt][e] is D[g + 8 (e / 2)][nt * 8 + 2t + (e % 2)].
    float acc[2][4];
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const int row = g + 8 * (e / 2);
            const int c = nt * 8 + 2 * t + (e % 2);
            acc[nt][e] = float(row * Tr::kN + c);
        }
    mma_16816<T>(acc[0], af, bf[0], bf[1]);
    mma_16816<T>(acc[1], af, bf[2], bf[3]);

    uint32_t* fo = frags + lane * Tr::kFrags;
    float* dout = d + lane * Tr::kAcc;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        fo[i] = af[i];
        fo[4 + i] = bf[i];
        dout[i] = acc[0][i];
        dout[4 + i] = acc[1][i];
    }
}

}  // namespace cr

#define CR_PROBE_OP(T, DT)                                                                 \
    extern "C" __global__ __launch_bounds__(32) void fragment_probe_##DT(                  \
        const T* a, const T* b, uint32_t* frags, float* d) {                               \
        cr::fragment_probe<T>(a, b, frags, d);                                             \
    }

CR_PROBE_OP(__half, f16)
CR_PROBE_OP(__nv_bfloat16, bf16)
