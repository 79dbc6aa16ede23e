// Models of the warp-wide instructions our kernels use, written from the PTX ISA (not from the
// comments in kernels/*.cu, so that a wrong comment there shows up as a failing kernel test):
//
//   mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32
//       PTX ISA "Matrix Fragments for mma.m16n8k16 with floating point type" (the section
//       number moves between releases: 9.7.14.5.8 in ISA 9.2, 9.7.15.5.8 in others).
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//       PTX ISA "Warp-level matrix load instruction: ldmatrix" (Figure "ldmatrix fragment layout
//       for one 8x8 Matrix with 16-bit elements").
//   shfl.sync.{idx,up,down,bfly}.b32
//       PTX ISA "Data Movement and Conversion Instructions: shfl.sync", the Semantics pseudo-code.
//
// Plain C++17, no CUDA headers: f16 / bf16 values are their uint16_t bit patterns. A 32-bit
// register holding two 16-bit elements keeps the lower-index element in its lower 16 bits (what
// a 32-bit load of two consecutive halves gives on the little-endian GPU).
//
// Everything here is a pure function of its arguments; the runtime does the address checks
// (shared-memory bounds, 16-byte alignment, converged warps) before calling in.
#pragma once

#include <cstdint>

namespace sg {
namespace warp {

// ---- Element conversions (exact: every f16 and bf16 value is a float) ------------------------
float f16_to_float(uint16_t bits);
float bf16_to_float(uint16_t bits);

// ---- mma.m16n8k16, f32 accumulate -------------------------------------------------------------
enum class Elem { F16, BF16 };

// Fragment -> matrix coordinates, straight from the PTX table (groupID = lane >> 2,
// threadID_in_group = lane % 4). The PTX names elements a0..a7 / b0..b3 / c0..c3 "low to high":
// register r holds elements 2r (lower 16 bits, half 0) and 2r + 1 (upper 16 bits, half 1).
//   A (16x16, M x K): lane 0..31, reg 0..3, half 0..1.
//   B (16x8,  K x N): lane 0..31, reg 0..1, half 0..1.  *row = k, *col = n.
//   C/D (16x8, M x N, one f32 per index): lane 0..31, index 0..3.
void mma_a_coord(int lane, int reg, int half, int* row, int* col);
void mma_b_coord(int lane, int reg, int half, int* row, int* col);
void mma_cd_coord(int lane, int index, int* row, int* col);

// The whole warp: D = A * B + C. a[l] / b[l] / c[l] / d[l] are lane l's fragment registers.
// Arithmetic: each product A[m][k] * B[k][n] is formed exactly and rounded once to float (exact
// for f16 x f16; for bf16 x bf16 exact unless it leaves the float range), the products are summed
// in float in k order 0..15 starting from +0, and C is added last (float, round to nearest even).
// A NaN result is the canonical NaN 0x7fffffff (the pattern NVIDIA documents for f32 arithmetic
// results involving NaN), so the bits do not depend on which input NaN the host CPU would have
// propagated. d may alias c.
void mma_m16n8k16(Elem e, const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4],
                  float d[32][4]);

// Lane `lane`'s four outputs only (c, d: that lane's accumulators; d may alias c). Bit-identical
// to mma_m16n8k16's d[lane]; it reads only the A and B registers that lane's outputs need.
void mma_m16n8k16_lane(Elem e, int lane, const uint32_t a[32][4], const uint32_t b[32][2],
                       const float c[4], float d[4]);

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 ---------------------------------
// num = 1, 2 or 4 matrices. Lanes 8*i .. 8*i+7 supply the addresses of rows 0..7 of matrix i
// (i < num), each 16 bytes = 8 b16 elements; rows[] of other lanes are not read (may be null).
// out[l][i] (i < num) receives lane l's register for matrix i:
//   without .trans: { M_i[l/4][2*(l%4)], M_i[l/4][2*(l%4)+1] }  (low half, high half)
//   with .trans:    { M_i[2*(l%4)][l/4], M_i[2*(l%4)+1][l/4] }  (the matrix read column-major)
// where M_i[r][c] is the c-th 16-bit element at rows[8*i + r]. out[l][i] for i >= num is not
// written. num outside {1, 2, 4} aborts (a bug in the caller: the PTX has no such form).
void ldmatrix(int num, bool trans, const void* const rows[32], uint32_t out[32][4]);

// ---- shfl.sync ---------------------------------------------------------------------------------
enum class Shfl { Idx, Up, Down, Bfly };

// The source lane of shfl.sync.<mode>.b32 d|p, a, b, c, membermask for lane `lane`, exactly as
// the PTX Semantics pseudo-code computes it:
//   bval = b[4:0]; cval = c[4:0]; segmask = c[12:8];
//   maxLane = (lane & segmask) | (cval & ~segmask);  minLane = lane & segmask;
//   up:   j = lane - bval;  p = j >= maxLane        down: j = lane + bval;  p = j <= maxLane
//   bfly: j = lane ^ bval;  p = j <= maxLane        idx:  j = minLane | (bval & ~segmask);
//                                                         p = j <= maxLane
//   if (!p) j = lane;
// Returns j (the lane whose `a` this lane receives); *in_range (if not null) receives p.
// Note that only b[4:0] counts: a CUDA delta or srcLane of 32 + x acts as x.
//
// How CUDA's intrinsics fill b and c (cuda/include/sm_30_intrinsics.hpp, and the __half /
// __nv_bfloat16 overloads in cuda_fp16.hpp / cuda_bf16.hpp, warpSize = 32):
//   __shfl_sync(mask, v, srcLane, width)      -> shfl.sync.idx,  b = srcLane,  c = ((32 - width) << 8) | 0x1f
//   __shfl_up_sync(mask, v, delta, width)     -> shfl.sync.up,   b = delta,    c = (32 - width) << 8
//   __shfl_down_sync(mask, v, delta, width)   -> shfl.sync.down, b = delta,    c = ((32 - width) << 8) | 0x1f
//   __shfl_xor_sync(mask, v, laneMask, width) -> shfl.sync.bfly, b = laneMask, c = ((32 - width) << 8) | 0x1f
// For a power-of-two width, (32 - width) = ~(width - 1) & 0x1f: segmask keeps the segment's
// upper lane bits, and cval (0 for up, 0x1f otherwise) puts maxLane at the segment's first lane
// (up) or its last lane (the others).
int shfl_source(Shfl mode, int lane, int b, int c, bool* in_range);

// c as the CUDA intrinsics compute it for `width` (the formula above, evaluated as the header
// does for any int width; only 1, 2, 4, 8, 16, 32 are meaningful).
int shfl_c_for_width(Shfl mode, int width);

}  // namespace warp
}  // namespace sg
