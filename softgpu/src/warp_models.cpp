// Warp-instruction models; see warp_models.h for the PTX ISA sections each one follows.
#include "warp_models.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace sg {
namespace warp {

namespace {

[[noreturn]] void misuse(const char* what) {
    std::fprintf(stderr, "softgpu: warp model misuse: %s\n", what);
    std::abort();
}

float float_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t half_of(uint32_t reg, int half) {
    return static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
}

float elem_to_float(Elem e, uint16_t bits) {
    return e == Elem::F16 ? f16_to_float(bits) : bf16_to_float(bits);
}

// One output element: sum over k = 0..15 of the products, in that order, then + c. Each product
// is formed in double (exact: 11- or 8-bit significands) and rounded once to float, so neither
// the compiler's FMA contraction nor the host's precision can change a bit of it. Shared by the
// whole-warp and per-lane entry points, which is what makes them bit-identical.
float dot16(const float* a_row, const float* b_col, float c) {
    float s = 0.f;
    for (int k = 0; k < 16; ++k) {
        s += static_cast<float>(static_cast<double>(a_row[k]) * static_cast<double>(b_col[k]));
    }
    float r = s + c;
    if (std::isnan(r)) r = float_from_bits(0x7fffffffu);  // the GPU's canonical NaN
    return r;
}

// Inverse of the coordinate maps: which lane and which 16-bit slot (2 * reg + half) holds each
// element. Derived from the forward maps, so the PTX table is written down once.
struct Inverse {
    uint8_t a_lane[16][16], a_slot[16][16];
    uint8_t b_lane[16][8], b_slot[16][8];
};

const Inverse& inverse() {
    static const Inverse inv = [] {
        Inverse t;
        int a_seen[16][16] = {}, b_seen[16][8] = {};
        for (int lane = 0; lane < 32; ++lane) {
            for (int slot = 0; slot < 8; ++slot) {
                int r, c;
                mma_a_coord(lane, slot / 2, slot % 2, &r, &c);
                if (r < 0 || r >= 16 || c < 0 || c >= 16 || a_seen[r][c]++)
                    misuse("mma A fragment map is not a bijection");
                t.a_lane[r][c] = static_cast<uint8_t>(lane);
                t.a_slot[r][c] = static_cast<uint8_t>(slot);
            }
            for (int slot = 0; slot < 4; ++slot) {
                int r, c;
                mma_b_coord(lane, slot / 2, slot % 2, &r, &c);
                if (r < 0 || r >= 16 || c < 0 || c >= 8 || b_seen[r][c]++)
                    misuse("mma B fragment map is not a bijection");
                t.b_lane[r][c] = static_cast<uint8_t>(lane);
                t.b_slot[r][c] = static_cast<uint8_t>(slot);
            }
        }
        return t;
    }();
    return inv;
}

uint16_t load_b16(const void* row, int col) {
    uint16_t v;
    std::memcpy(&v, static_cast<const unsigned char*>(row) + 2 * col, sizeof v);
    return v;
}

}  // namespace

// ---- Conversions ------------------------------------------------------------------------------

float f16_to_float(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) {
        // Inf (man == 0) or NaN; the payload moves to the top of the float's significand, so a
        // quiet NaN stays quiet.
        return float_from_bits(sign | 0x7f800000u | (man << 13));
    }
    if (exp == 0) {
        if (man == 0) return float_from_bits(sign);  // +-0
        // Subnormal: man * 2^-24. Normalise: shift until the implicit bit (bit 10) is set.
        int e = -14;
        while (!(man & 0x400u)) {
            man <<= 1;
            --e;
        }
        man &= 0x3ffu;
        return float_from_bits(sign | (static_cast<uint32_t>(e + 127) << 23) | (man << 13));
    }
    return float_from_bits(sign | ((exp - 15 + 127) << 23) | (man << 13));
}

float bf16_to_float(uint16_t h) { return float_from_bits(static_cast<uint32_t>(h) << 16); }

// ---- mma.m16n8k16 fragment maps (PTX ISA, m16n8k16 floating point, .f16/.bf16) -----------------
//
//   groupID = %laneid >> 2, threadID_in_group = %laneid % 4
//   A:   row = groupID       for ai where 0 <= i < 2 || 4 <= i < 6,  groupID + 8 otherwise
//        col = threadID_in_group * 2 + (i & 0x1)       for ai where i < 4
//              threadID_in_group * 2 + (i & 0x1) + 8   for ai where i >= 4
//   B:   row = threadID_in_group * 2 + (i & 0x1)       for bi where i < 2
//              threadID_in_group * 2 + (i & 0x1) + 8   for bi where i >= 2
//        col = groupID
//   C/D: row = groupID for ci where i < 2, groupID + 8 for ci where i >= 2
//        col = threadID_in_group * 2 + (i & 0x1)
// Elements are listed low to high across the .f16x2 registers: ai is in register i / 2, half i % 2.

void mma_a_coord(int lane, int reg, int half, int* row, int* col) {
    if (lane < 0 || lane >= 32 || reg < 0 || reg >= 4 || half < 0 || half > 1)
        misuse("mma_a_coord argument out of range");
    const int group = lane >> 2, tig = lane % 4, i = 2 * reg + half;
    *row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? group : group + 8;
    *col = i < 4 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
}

void mma_b_coord(int lane, int reg, int half, int* row, int* col) {
    if (lane < 0 || lane >= 32 || reg < 0 || reg >= 2 || half < 0 || half > 1)
        misuse("mma_b_coord argument out of range");
    const int group = lane >> 2, tig = lane % 4, i = 2 * reg + half;
    *row = i < 2 ? tig * 2 + (i & 1) : tig * 2 + (i & 1) + 8;
    *col = group;
}

void mma_cd_coord(int lane, int index, int* row, int* col) {
    if (lane < 0 || lane >= 32 || index < 0 || index >= 4)
        misuse("mma_cd_coord argument out of range");
    const int group = lane >> 2, tig = lane % 4, i = index;
    *row = i < 2 ? group : group + 8;
    *col = tig * 2 + (i & 1);
}

// ---- mma.m16n8k16 -----------------------------------------------------------------------------

void mma_m16n8k16(Elem e, const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4],
                  float d[32][4]) {
    // Scatter the fragments into the matrices with the forward maps (the per-lane entry point
    // gathers with the inverse maps instead: two routes to the same elements).
    float A[16][16], Bt[8][16];  // Bt[n][k] = B[k][n]: a contiguous column for dot16
    for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
            for (int half = 0; half < 2; ++half) {
                int r, col;
                mma_a_coord(lane, reg, half, &r, &col);
                A[r][col] = elem_to_float(e, half_of(a[lane][reg], half));
            }
        }
        for (int reg = 0; reg < 2; ++reg) {
            for (int half = 0; half < 2; ++half) {
                int k, n;
                mma_b_coord(lane, reg, half, &k, &n);
                Bt[n][k] = elem_to_float(e, half_of(b[lane][reg], half));
            }
        }
    }
    float out[32][4];
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
            int m, n;
            mma_cd_coord(lane, i, &m, &n);
            out[lane][i] = dot16(A[m], Bt[n], c[lane][i]);
        }
    }
    std::memcpy(d, out, sizeof out);  // only now: d may alias c
}

void mma_m16n8k16_lane(Elem e, int lane, const uint32_t a[32][4], const uint32_t b[32][2],
                       const float c[4], float d[4]) {
    if (lane < 0 || lane >= 32) misuse("mma_m16n8k16_lane: lane out of range");
    const Inverse& inv = inverse();
    float out[4];
    for (int i = 0; i < 4; ++i) {
        int m, n;
        mma_cd_coord(lane, i, &m, &n);
        float a_row[16], b_col[16];
        for (int k = 0; k < 16; ++k) {
            const int as = inv.a_slot[m][k], bs = inv.b_slot[k][n];
            a_row[k] = elem_to_float(e, half_of(a[inv.a_lane[m][k]][as / 2], as % 2));
            b_col[k] = elem_to_float(e, half_of(b[inv.b_lane[k][n]][bs / 2], bs % 2));
        }
        out[i] = dot16(a_row, b_col, c[i]);
    }
    for (int i = 0; i < 4; ++i) d[i] = out[i];  // d may alias c
}

// ---- ldmatrix (PTX ISA "Warp-level matrix load instruction: ldmatrix", .m8n8 .b16) -------------
//
// Threads 8i..8i+7 hold addr(8i)..addr(8i+7), the rows of matrix i. "Each thread in a warp loads
// fragments of a row, with thread 0 receiving the first fragment in its register r, and so on. A
// group of four threads loads an entire row of the matrix" (Figure: ldmatrix fragment layout for
// one 8x8 matrix with 16-bit elements): lane l holds row l / 4, columns 2 * (l % 4) and
// 2 * (l % 4) + 1. Matrix i goes to destination register i. ".trans indicates that the matrix is
// loaded in column-major format": the same fragment layout applied to the transpose, so lane l
// holds column l / 4, rows 2 * (l % 4) and 2 * (l % 4) + 1 of the matrix as stored.

void ldmatrix(int num, bool trans, const void* const rows[32], uint32_t out[32][4]) {
    if (num != 1 && num != 2 && num != 4) misuse("ldmatrix: .num must be 1, 2 or 4");
    for (int i = 0; i < num; ++i) {
        for (int r = 0; r < 8; ++r)
            if (rows[8 * i + r] == nullptr) misuse("ldmatrix: null row address");
    }
    for (int i = 0; i < num; ++i) {
        const void* const* m = rows + 8 * i;  // m[r]: row r of matrix i
        for (int lane = 0; lane < 32; ++lane) {
            const int fr = lane / 4, fc = 2 * (lane % 4);  // fragment row, first column
            uint16_t lo, hi;
            if (!trans) {
                lo = load_b16(m[fr], fc);
                hi = load_b16(m[fr], fc + 1);
            } else {
                lo = load_b16(m[fc], fr);
                hi = load_b16(m[fc + 1], fr);
            }
            out[lane][i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
        }
    }
}

// ---- shfl.sync (PTX ISA Semantics) -------------------------------------------------------------

int shfl_source(Shfl mode, int lane, int b, int c, bool* in_range) {
    if (lane < 0 || lane >= 32) misuse("shfl_source: lane out of range");
    const int bval = static_cast<int>(static_cast<unsigned>(b) & 0x1fu);
    const int cval = static_cast<int>(static_cast<unsigned>(c) & 0x1fu);
    const int segmask = static_cast<int>((static_cast<unsigned>(c) >> 8) & 0x1fu);
    const int max_lane = (lane & segmask) | (cval & ~segmask);
    const int min_lane = lane & segmask;
    int j = lane;
    bool pval = false;
    switch (mode) {
        case Shfl::Up:
            j = lane - bval;
            pval = j >= max_lane;
            break;
        case Shfl::Down:
            j = lane + bval;
            pval = j <= max_lane;
            break;
        case Shfl::Bfly:
            j = lane ^ bval;
            pval = j <= max_lane;
            break;
        case Shfl::Idx:
            j = min_lane | (bval & ~segmask);
            pval = j <= max_lane;
            break;
    }
    if (!pval) j = lane;
    if (in_range) *in_range = pval;
    return j;
}

int shfl_c_for_width(Shfl mode, int width) {
    // Unsigned so that a width above 32 wraps as the device's int arithmetic does, without UB.
    const int seg = static_cast<int>(static_cast<unsigned>(32 - width) << 8);
    return mode == Shfl::Up ? seg : (seg | 0x1f);
}

}  // namespace warp
}  // namespace sg
