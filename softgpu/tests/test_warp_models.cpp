// Tests of softgpu/src/warp_models.{h,cpp} (mma.m16n8k16, ldmatrix, shfl.sync models) against
// definitions written again here, independently, from the PTX ISA and the CUDA programming guide.
// Build and run from the repository root:
//
//   g++ -std=c++17 -O2 -Wall -Wextra -Werror softgpu/src/warp_models.cpp softgpu/tests/test_warp_models.cpp -o target/softgpu-test-warp-models && ./target/softgpu-test-warp-models
//
// Prints one line per check ("ok   name" or "FAIL name: detail"); exits 1 if any check fails.
#include "../src/warp_models.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace sg::warp;

namespace {

int g_failures = 0;

void report(bool ok, const std::string& name, const std::string& detail = "") {
    if (ok) {
        std::printf("ok   %s\n", name.c_str());
    } else {
        std::printf("FAIL %s: %s\n", name.c_str(), detail.c_str());
        ++g_failures;
    }
}

std::string fmt(const char* f, long long a = 0, long long b = 0, long long c = 0, long long d = 0,
                long long e = 0, long long g = 0, long long h = 0) {
    char buf[256];
    std::snprintf(buf, sizeof buf, f, a, b, c, d, e, g, h);
    return buf;
}

uint32_t fbits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// ---- Reference conversions, from the IEEE formats' definitions (not bit tricks) ----------------

// f16: 1 sign, 5 exponent (bias 15), 10 fraction bits. bf16: 1, 8 (bias 127), 7.
double ref_f16(uint16_t h, bool* nan, bool* inf) {
    const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    *nan = e == 31 && m != 0;
    *inf = e == 31 && m == 0;
    const double mag = e == 0 ? std::ldexp(double(m), -24) : std::ldexp(double(1024 + m), e - 25);
    return s ? -mag : mag;
}

double ref_bf16(uint16_t h, bool* nan, bool* inf) {
    const int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    *nan = e == 255 && m != 0;
    *inf = e == 255 && m == 0;
    const double mag = e == 0 ? std::ldexp(double(m), -133) : std::ldexp(double(128 + m), e - 134);
    return s ? -mag : mag;
}

// Encode an exactly representable value (small integer times a power of two) as f16 / bf16 bits,
// by looking it up among all finite bit patterns (+0 for zero).
uint16_t encode(Elem e, double v) {
    static std::map<double, uint16_t> tables[2];
    std::map<double, uint16_t>& t = tables[e == Elem::F16 ? 0 : 1];
    if (t.empty()) {
        for (uint32_t h = 0; h < 65536; ++h) {
            bool nan, inf;
            const double r = e == Elem::F16 ? ref_f16(uint16_t(h), &nan, &inf)
                                            : ref_bf16(uint16_t(h), &nan, &inf);
            if (!nan && !inf && !(r == 0 && (h >> 15))) t.emplace(r, uint16_t(h));
        }
    }
    const auto it = t.find(v);
    if (it == t.end()) {
        std::printf("FAIL encode: %g is not representable\n", v);
        std::exit(1);
    }
    return it->second;
}

void check_conversions() {
    int bad = 0, first = -1;
    for (uint32_t h = 0; h < 65536; ++h) {
        bool nan, inf;
        const double r = ref_f16(uint16_t(h), &nan, &inf);
        const float got = f16_to_float(uint16_t(h));
        const bool sign_ok = std::signbit(got) == bool(h >> 15);
        bool ok;
        if (nan) ok = std::isnan(got) && sign_ok;
        else if (inf) ok = std::isinf(got) && sign_ok;
        else ok = double(got) == r && sign_ok;
        if (!ok && bad++ == 0) first = int(h);
    }
    report(bad == 0, "f16_to_float exact for all 65536 bit patterns",
           fmt("%lld wrong, first 0x%llx", bad, first));
    bad = 0;
    for (uint32_t h = 0; h < 65536; ++h) {
        bool nan, inf;
        const double r = ref_bf16(uint16_t(h), &nan, &inf);
        const float got = bf16_to_float(uint16_t(h));
        const bool sign_ok = std::signbit(got) == bool(h >> 15);
        bool ok;
        if (nan) ok = std::isnan(got) && sign_ok;
        else if (inf) ok = std::isinf(got) && sign_ok;
        else ok = double(got) == r && sign_ok;
        if (!ok && bad++ == 0) first = int(h);
    }
    report(bad == 0, "bf16_to_float exact for all 65536 bit patterns",
           fmt("%lld wrong, first 0x%llx", bad, first));
    // A quiet f16 NaN stays a quiet float NaN (bit 22 set).
    report((fbits(f16_to_float(0x7e00)) & 0x7fc00000u) == 0x7fc00000u, "f16 quiet NaN stays quiet");
}

// ---- The PTX fragment tables, written again (m16n8k16, .f16/.bf16, element index form) ---------
// groupID g = lane >> 2, threadID_in_group t = lane % 4; element i lives in register i / 2,
// 16-bit half i % 2.
//   A:   a0,a1: (g, 2t+{0,1})  a2,a3: (g+8, 2t+{0,1})  a4,a5: (g, 2t+8+{0,1})  a6,a7: (g+8, 2t+8+{0,1})
//   B:   b0,b1: (2t+{0,1}, g)  b2,b3: (2t+8+{0,1}, g)
//   C/D: c0,c1: (g, 2t+{0,1})  c2,c3: (g+8, 2t+{0,1})
void ptx_a(int lane, int i, int* r, int* c) {
    const int g = lane >> 2, t = lane & 3;
    *r = g + 8 * ((i >> 1) & 1);
    *c = 2 * t + (i & 1) + 8 * (i >> 2);
}
void ptx_b(int lane, int i, int* r, int* c) {
    const int g = lane >> 2, t = lane & 3;
    *r = 2 * t + (i & 1) + 8 * (i >> 1);
    *c = g;
}
void ptx_cd(int lane, int i, int* r, int* c) {
    const int g = lane >> 2, t = lane & 3;
    *r = g + 8 * (i >> 1);
    *c = 2 * t + (i & 1);
}

void check_coordinate_maps() {
    int bad = 0;
    std::string detail;
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 8; ++i) {
            int r, c, er, ec;
            mma_a_coord(lane, i / 2, i % 2, &r, &c);
            ptx_a(lane, i, &er, &ec);
            if (r != er || c != ec) {
                if (!bad++) detail = fmt("lane %lld a%lld: (%lld,%lld), PTX says (%lld,%lld)", lane, i, r, c, er, ec);
            }
        }
    }
    report(bad == 0, "mma_a_coord matches the PTX A table", detail);
    bad = 0;
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
            int r, c, er, ec;
            mma_b_coord(lane, i / 2, i % 2, &r, &c);
            ptx_b(lane, i, &er, &ec);
            if (r != er || c != ec) {
                if (!bad++) detail = fmt("lane %lld b%lld: (%lld,%lld), PTX says (%lld,%lld)", lane, i, r, c, er, ec);
            }
        }
    }
    report(bad == 0, "mma_b_coord matches the PTX B table", detail);
    bad = 0;
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
            int r, c, er, ec;
            mma_cd_coord(lane, i, &r, &c);
            ptx_cd(lane, i, &er, &ec);
            if (r != er || c != ec) {
                if (!bad++) detail = fmt("lane %lld c%lld: (%lld,%lld), PTX says (%lld,%lld)", lane, i, r, c, er, ec);
            }
        }
    }
    report(bad == 0, "mma_cd_coord matches the PTX C/D table", detail);

    // Spot values read off the PTX figures (T0, T5, T31), typed in literally.
    struct Spot { int lane, i, r, c; };
    const Spot a_spots[] = {{0, 0, 0, 0},   {0, 1, 0, 1},   {0, 2, 8, 0},    {0, 3, 8, 1},
                            {0, 4, 0, 8},   {0, 5, 0, 9},   {0, 6, 8, 8},    {0, 7, 8, 9},
                            {5, 0, 1, 2},   {5, 3, 9, 3},   {5, 4, 1, 10},   {5, 7, 9, 11},
                            {31, 0, 7, 6},  {31, 2, 15, 6}, {31, 5, 7, 15},  {31, 7, 15, 15}};
    const Spot b_spots[] = {{0, 0, 0, 0},  {0, 1, 1, 0},  {0, 2, 8, 0},   {0, 3, 9, 0},
                            {5, 0, 2, 1},  {5, 3, 11, 1}, {31, 0, 6, 7},  {31, 3, 15, 7}};
    const Spot cd_spots[] = {{0, 0, 0, 0}, {0, 1, 0, 1}, {0, 2, 8, 0},  {0, 3, 8, 1},
                             {5, 0, 1, 2}, {5, 3, 9, 3}, {31, 1, 7, 7}, {31, 2, 15, 6}};
    bad = 0;
    for (const Spot& s : a_spots) {
        int r, c;
        mma_a_coord(s.lane, s.i / 2, s.i % 2, &r, &c);
        if (r != s.r || c != s.c) ++bad;
    }
    for (const Spot& s : b_spots) {
        int r, c;
        mma_b_coord(s.lane, s.i / 2, s.i % 2, &r, &c);
        if (r != s.r || c != s.c) ++bad;
    }
    for (const Spot& s : cd_spots) {
        int r, c;
        mma_cd_coord(s.lane, s.i, &r, &c);
        if (r != s.r || c != s.c) ++bad;
    }
    report(bad == 0, "fragment maps give the PTX figures' spot values (T0, T5, T31)",
           fmt("%lld spot values wrong", bad));

    // Each map covers its matrix exactly once.
    int a_count[16][16] = {}, b_count[16][8] = {}, d_count[16][8] = {};
    bool range_ok = true;
    for (int lane = 0; lane < 32; ++lane) {
        for (int reg = 0; reg < 4; ++reg) {
            for (int h = 0; h < 2; ++h) {
                int r, c;
                mma_a_coord(lane, reg, h, &r, &c);
                if (r < 0 || r >= 16 || c < 0 || c >= 16) range_ok = false;
                else ++a_count[r][c];
            }
        }
        for (int reg = 0; reg < 2; ++reg) {
            for (int h = 0; h < 2; ++h) {
                int r, c;
                mma_b_coord(lane, reg, h, &r, &c);
                if (r < 0 || r >= 16 || c < 0 || c >= 8) range_ok = false;
                else ++b_count[r][c];
            }
        }
        for (int i = 0; i < 4; ++i) {
            int r, c;
            mma_cd_coord(lane, i, &r, &c);
            if (r < 0 || r >= 16 || c < 0 || c >= 8) range_ok = false;
            else ++d_count[r][c];
        }
    }
    bool once = range_ok;
    for (int r = 0; r < 16; ++r) {
        for (int c = 0; c < 16; ++c) once = once && a_count[r][c] == 1;
        for (int c = 0; c < 8; ++c) once = once && b_count[r][c] == 1 && d_count[r][c] == 1;
    }
    report(once, "A 16x16, B 16x8, C/D 16x8 each covered exactly once by the maps");
}

// ---- mma ------------------------------------------------------------------------------------------

struct MmaCase {
    float A[16][16], B[16][8], C[16][8];  // values
    uint32_t a[32][4], b[32][2];
    float c[32][4];
};

// Fragments from the matrices with the test's own PTX table (not the model's maps).
void pack(Elem e, MmaCase* t) {
    std::memset(t->a, 0, sizeof t->a);
    std::memset(t->b, 0, sizeof t->b);
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 8; ++i) {
            int r, c;
            ptx_a(lane, i, &r, &c);
            t->a[lane][i / 2] |= uint32_t(encode(e, t->A[r][c])) << (16 * (i % 2));
        }
        for (int i = 0; i < 4; ++i) {
            int r, c;
            ptx_b(lane, i, &r, &c);
            t->b[lane][i / 2] |= uint32_t(encode(e, t->B[r][c])) << (16 * (i % 2));
        }
        for (int i = 0; i < 4; ++i) {
            int r, c;
            ptx_cd(lane, i, &r, &c);
            t->c[lane][i] = t->C[r][c];
        }
    }
}

// D from fragments vs the exact plain product A * B + C (double; every value is a small integer
// times a power of two, so float and double results agree exactly).
bool check_product(const float d[32][4], const float A[16][16], const float B[16][8],
                   const float C[16][8], std::string* detail) {
    for (int lane = 0; lane < 32; ++lane) {
        for (int i = 0; i < 4; ++i) {
            int m, n;
            ptx_cd(lane, i, &m, &n);
            double want = C[m][n];
            for (int k = 0; k < 16; ++k) want += double(A[m][k]) * double(B[k][n]);
            if (double(d[lane][i]) != want) {
                *detail = fmt("D[%lld][%lld] (lane %lld, d%lld) = %lld/16, want %lld/16", m, n, lane,
                              i, (long long)(d[lane][i] * 16), (long long)(want * 16));
                return false;
            }
        }
    }
    return true;
}

void check_mma_iota(Elem e, const char* name) {
    MmaCase t;
    // Distinct small integers (exact in f16 and bf16: |v| <= 30 needs 5 bits), scaled by powers
    // of two; C distinct too. Products and sums stay exact in float.
    for (int i = 0; i < 16; ++i)
        for (int k = 0; k < 16; ++k) t.A[i][k] = float((i * 16 + k) % 61 - 30) * 0.5f;
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 8; ++n) t.B[k][n] = float((k * 8 + n) * 7 % 59 - 29) * 0.25f;
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) t.C[m][n] = float((m * 8 + n) % 67 - 33);
    pack(e, &t);
    float d[32][4];
    mma_m16n8k16(e, t.a, t.b, t.c, d);
    std::string detail;
    report(check_product(d, t.A, t.B, t.C, &detail),
           std::string("mma ") + name + " iota: D = A*B + C exactly (whole warp)", detail);
    for (int lane = 0; lane < 32; ++lane) mma_m16n8k16_lane(e, lane, t.a, t.b, t.c[lane], d[lane]);
    report(check_product(d, t.A, t.B, t.C, &detail),
           std::string("mma ") + name + " iota: D = A*B + C exactly (per lane)", detail);
}

// Random exactly representable values over a wide exponent range: the float sums round, so this
// pins the accumulation order (k = 0..15 from +0, then + C) down to the bit.
void check_mma_rounding(Elem e, const char* name, std::mt19937* rng) {
    std::uniform_int_distribution<int> mant(-15, 15), ex(-6, 6);
    int bad = 0, order_sensitive = 0;
    std::string detail;
    for (int trial = 0; trial < 20; ++trial) {
        MmaCase t;
        for (auto& row : t.A) for (float& v : row) v = std::ldexp(float(mant(*rng)), ex(*rng));
        for (auto& row : t.B) for (float& v : row) v = std::ldexp(float(mant(*rng)), ex(*rng));
        for (auto& row : t.C) for (float& v : row) v = std::ldexp(float(mant(*rng)), ex(*rng) - 4);
        pack(e, &t);
        float d[32][4];
        mma_m16n8k16(e, t.a, t.b, t.c, d);
        for (int lane = 0; lane < 32; ++lane) {
            for (int i = 0; i < 4; ++i) {
                int m, n;
                ptx_cd(lane, i, &m, &n);
                float s = 0.f, rev = 0.f;
                for (int k = 0; k < 16; ++k) s += float(double(t.A[m][k]) * double(t.B[k][n]));
                for (int k = 15; k >= 0; --k) rev += float(double(t.A[m][k]) * double(t.B[k][n]));
                const float want = s + t.C[m][n];
                if (rev + t.C[m][n] != want) ++order_sensitive;
                if (fbits(d[lane][i]) != fbits(want) && bad++ == 0)
                    detail = fmt("trial %lld lane %lld d%lld: bits 0x%llx, want 0x%llx", trial, lane,
                                 i, fbits(d[lane][i]), fbits(want));
            }
        }
    }
    report(bad == 0 && order_sensitive > 0,
           std::string("mma ") + name + " random values: sum in k order then + C, bit-exact",
           bad ? detail : "test data not order-sensitive");
}

void check_lane_vs_warp(Elem e, const char* name, std::mt19937* rng) {
    int bad = 0;
    std::string detail;
    std::uniform_int_distribution<uint32_t> bits;
    std::uniform_real_distribution<float> cval(-100.f, 100.f);
    for (int trial = 0; trial < 200; ++trial) {
        uint32_t a[32][4], b[32][2];
        float c[32][4], d[32][4];
        const bool finite_only = trial % 2 == 0;  // odd trials: arbitrary bits (NaN, Inf too)
        for (auto& r : a)
            for (uint32_t& v : r) {
                v = bits(*rng);
                if (finite_only) v &= 0xbfffbfffu;  // exponent's top bit clear: finite
            }
        for (auto& r : b)
            for (uint32_t& v : r) {
                v = bits(*rng);
                if (finite_only) v &= 0xbfffbfffu;
            }
        for (auto& r : c) for (float& v : r) v = cval(*rng);
        if (trial == 1) c[3][2] = NAN;
        mma_m16n8k16(e, a, b, c, d);
        for (int lane = 0; lane < 32; ++lane) {
            float dl[4];
            mma_m16n8k16_lane(e, lane, a, b, c[lane], dl);
            for (int i = 0; i < 4; ++i)
                if (fbits(dl[i]) != fbits(d[lane][i]) && bad++ == 0)
                    detail = fmt("trial %lld lane %lld d%lld: lane 0x%llx, warp 0x%llx", trial, lane,
                                 i, fbits(dl[i]), fbits(d[lane][i]));
        }
        // In place (d aliasing c) for both entry points.
        float c2[32][4], c3[32][4];
        std::memcpy(c2, c, sizeof c);
        std::memcpy(c3, c, sizeof c);
        mma_m16n8k16(e, a, b, c2, c2);
        for (int lane = 0; lane < 32; ++lane) mma_m16n8k16_lane(e, lane, a, b, c3[lane], c3[lane]);
        if ((std::memcmp(c2, d, sizeof d) != 0 || std::memcmp(c3, d, sizeof d) != 0) && bad++ == 0)
            detail = fmt("trial %lld: in-place result differs", trial);
    }
    report(bad == 0, std::string("mma ") + name + " per-lane == whole warp, bit for bit (200 random warps, in place too)",
           detail);
}

// ---- ldmatrix -------------------------------------------------------------------------------------

constexpr int kStride = 24;  // halves per buffer row: 48 bytes, padded (a 16-byte multiple, not 16)

uint16_t code(int m, int r, int c) { return uint16_t(0x1000 * (m + 1) + 0x100 * r + 0x10 * c + 7); }

void check_ldmatrix(int num, bool trans) {
    // Four 8x8 matrices in a 40-row buffer; matrix m row r sits at buffer row perm(m, r) (rows
    // not in order, not contiguous) and column offset 8 * (m % 2) + 8 (16-byte aligned).
    std::vector<uint16_t> buf(40 * kStride, 0xeeee);
    auto row_of = [](int m, int r) { return 10 * m + (r * 5 + 3) % 8 + 1; };
    for (int m = 0; m < 4; ++m)
        for (int r = 0; r < 8; ++r)
            for (int c = 0; c < 8; ++c) buf[row_of(m, r) * kStride + 8 * (m % 2) + 8 + c] = code(m, r, c);
    const void* rows[32];
    for (int l = 0; l < 32; ++l) {
        const int m = l / 8, r = l % 8;
        rows[l] = m < num ? static_cast<const void*>(&buf[row_of(m, r) * kStride + 8 * (m % 2) + 8])
                          : nullptr;  // ignored lanes
    }
    uint32_t out[32][4];
    for (auto& o : out) for (uint32_t& v : o) v = 0xdeadbeefu;
    ldmatrix(num, trans, rows, out);

    // PTX: a group of four threads loads a row; lane l holds row l/4, cols 2(l%4), 2(l%4)+1 of
    // the (for .trans: transposed) matrix; matrix m goes to register m.
    int bad = 0;
    std::string detail;
    for (int m = 0; m < num; ++m) {
        for (int r = 0; r < 8; ++r) {
            for (int c = 0; c < 8; ++c) {
                const int fr = trans ? c : r, fc = trans ? r : c;  // coordinates in the fragment
                const int lane = 4 * fr + fc / 2, half = fc % 2;
                const uint16_t got = uint16_t(out[lane][m] >> (16 * half));
                if (got != code(m, r, c) && bad++ == 0)
                    detail = fmt("matrix %lld (%lld,%lld) expected in lane %lld half %lld, got 0x%llx",
                                 m, r, c, lane, half, got);
            }
        }
    }
    for (int l = 0; l < 32; ++l)
        for (int m = num; m < 4; ++m)
            if (out[l][m] != 0xdeadbeefu && bad++ == 0)
                detail = fmt("lane %lld register %lld (>= num) was written", l, m);
    report(bad == 0,
           fmt("ldmatrix .x%lld", num) + (trans ? ".trans" : "") +
               ": each element in its PTX lane/register, registers >= num untouched",
           detail);
}

// How attention.cu uses it: V as a row-major [k][n] tile in shared memory (padded rows), lane l
// addressing key row (l % 8) + 8 * ((l / 8) % 2), column block 8 * (l / 16), then
// ldmatrix.x4.trans: registers 0/1 are the B fragment of n-tile 0, 2/3 of n-tile 1.
// And the A operand from a row-major [m][k] tile with plain ldmatrix.x4: lane l addresses row
// l % 16, column block 8 * (l / 16).
void check_ldmatrix_feeds_mma() {
    const Elem e = Elem::F16;
    float A[16][16], V[16][16], zero[16][8] = {};
    for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 16; ++k) A[m][k] = float((m * 16 + k) % 61 - 30) * 0.25f;
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n) V[k][n] = float((k * 16 + n) * 11 % 53 - 26) * 0.5f;
    std::vector<uint16_t> a_tile(16 * kStride, 0), v_tile(16 * kStride, 0);
    for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 16; ++k) a_tile[m * kStride + k] = encode(e, A[m][k]);
    for (int k = 0; k < 16; ++k)
        for (int n = 0; n < 16; ++n) v_tile[k * kStride + n] = encode(e, V[k][n]);

    const void* rows[32];
    uint32_t bx[32][4], ax[32][4];
    for (int l = 0; l < 32; ++l) rows[l] = &v_tile[((l % 8) + 8 * ((l / 8) % 2)) * kStride + 8 * (l / 16)];
    ldmatrix(4, true, rows, bx);
    for (int l = 0; l < 32; ++l) rows[l] = &a_tile[(l % 16) * kStride + 8 * (l / 16)];
    ldmatrix(4, false, rows, ax);

    // Reference A fragments from the test's PTX table: the plain ldmatrix.x4 must give exactly these.
    MmaCase t;
    std::memcpy(t.A, A, sizeof A);
    for (int nt = 0; nt < 2; ++nt) {
        for (int k = 0; k < 16; ++k)
            for (int n = 0; n < 8; ++n) t.B[k][n] = V[k][8 * nt + n];
        std::memcpy(t.C, zero, sizeof zero);
        pack(e, &t);
        bool a_same = std::memcmp(ax, t.a, sizeof t.a) == 0;
        uint32_t b[32][2];
        bool b_same = true;
        for (int l = 0; l < 32; ++l) {
            b[l][0] = bx[l][2 * nt];
            b[l][1] = bx[l][2 * nt + 1];
            b_same = b_same && b[l][0] == t.b[l][0] && b[l][1] == t.b[l][1];
        }
        float d[32][4];
        mma_m16n8k16(e, ax, b, t.c, d);
        std::string detail;
        const bool ok = check_product(d, t.A, t.B, t.C, &detail);
        report(ok && a_same && b_same,
               fmt("ldmatrix.x4 (A) + ldmatrix.x4.trans (B, regs %lld/%lld) into mma = A * V[:, %lld:%lld]",
                   2 * nt, 2 * nt + 1, 8 * nt, 8 * nt + 8),
               !a_same ? "A fragments differ from the PTX A layout"
                       : !b_same ? "B fragments differ from the PTX B layout" : detail);
    }
}

// ---- shfl.sync ------------------------------------------------------------------------------------
// Plain definitions from the CUDA C++ programming guide (warp shuffle functions), for a
// power-of-two width: the warp splits into segments of `width` lanes.
//   __shfl_sync: lane srcLane % width of the caller's segment (always in range).
//   __shfl_up_sync: lane - delta if that stays in the caller's segment, else the caller's own.
//   __shfl_down_sync: lane + delta if that stays in the caller's segment, else its own.
//   __shfl_xor_sync: lane ^ laneMask, unless that lies in a LATER segment (then its own);
//     "each group of width consecutive threads are able to access elements from earlier groups".
int guide_source(Shfl mode, int lane, int b, int width, bool* in_range) {
    const int seg = lane / width * width;
    int j = lane;
    bool ok = false;
    switch (mode) {
        case Shfl::Idx:
            j = seg + ((b % width) + width) % width;
            ok = true;
            break;
        case Shfl::Up:
            ok = lane - b >= seg;
            j = ok ? lane - b : lane;
            break;
        case Shfl::Down:
            ok = lane + b < seg + width;
            j = ok ? lane + b : lane;
            break;
        case Shfl::Bfly:
            ok = (lane ^ b) / width <= lane / width;
            j = ok ? (lane ^ b) : lane;
            break;
    }
    *in_range = ok;
    return j;
}

void check_shfl() {
    // c as the CUDA headers compute it (sm_30_intrinsics.hpp: up (32-w)<<8, others | 0x1f).
    struct CW { Shfl mode; int width; int c; };
    const CW cws[] = {{Shfl::Idx, 32, 0x001f},  {Shfl::Up, 32, 0x0000},   {Shfl::Down, 32, 0x001f},
                      {Shfl::Bfly, 32, 0x001f}, {Shfl::Bfly, 16, 0x101f}, {Shfl::Up, 16, 0x1000},
                      {Shfl::Down, 8, 0x181f},  {Shfl::Idx, 4, 0x1c1f},   {Shfl::Up, 2, 0x1e00},
                      {Shfl::Idx, 1, 0x1f1f},   {Shfl::Up, 1, 0x1f00}};
    int bad = 0;
    for (const CW& x : cws) bad += shfl_c_for_width(x.mode, x.width) != x.c;
    report(bad == 0, "shfl_c_for_width gives the CUDA headers' c", fmt("%lld wrong", bad));

    const Shfl modes[] = {Shfl::Idx, Shfl::Up, Shfl::Down, Shfl::Bfly};
    const char* names[] = {"__shfl_sync (idx)", "__shfl_up_sync", "__shfl_down_sync", "__shfl_xor_sync (bfly)"};
    for (int mi = 0; mi < 4; ++mi) {
        const Shfl mode = modes[mi];
        bad = 0;
        std::string detail;
        for (int width = 1; width <= 32; width *= 2) {
            const int c = shfl_c_for_width(mode, width);
            // idx: any srcLane, negative and >= 32 too (reduced mod width); others: 0..31.
            const int b_lo = mode == Shfl::Idx ? -64 : 0, b_hi = mode == Shfl::Idx ? 95 : 31;
            for (int lane = 0; lane < 32; ++lane) {
                for (int b = b_lo; b <= b_hi; ++b) {
                    bool p = false, ep = false;
                    const int j = shfl_source(mode, lane, b, c, &p);
                    const int ej = guide_source(mode, lane, b, width, &ep);
                    if ((j != ej || p != ep) && bad++ == 0)
                        detail = fmt("width %lld lane %lld b %lld: source %lld (p %lld), guide says %lld (p %lld)",
                                     width, lane, b, j, p, ej, ep);
                }
            }
        }
        report(bad == 0, std::string(names[mi]) + ": source lane and predicate for widths 1..32, all lanes",
               detail);
    }

    // The PTX pseudo-code's own corners: only b[4:0] counts; the PTX scan example's shfl.up with
    // c = 0; a null predicate pointer is allowed.
    bool p = true;
    bad = 0;
    bad += shfl_source(Shfl::Down, 0, 33, 0x1f, &p) != 1 || !p;
    bad += shfl_source(Shfl::Up, 0, 1, 0x0, &p) != 0 || p;
    bad += shfl_source(Shfl::Up, 5, 1, 0x0, &p) != 4 || !p;
    bad += shfl_source(Shfl::Bfly, 3, 16, 0x1f, nullptr) != 19;
    bad += shfl_source(Shfl::Idx, 9, 34, 0x181f, &p) != 10 || !p;  // width 8: segment 8..15, 34 % 8 = 2
    report(bad == 0, "shfl.sync PTX corners (b[4:0], shfl.up c=0 scan, null predicate)",
           fmt("%lld wrong", bad));

    // warp_sum of common.cuh (xor 16, 8, 4, 2, 1, full width) leaves the total in every lane, and
    // the attention kernel's xor 1, 2 reduces each group of four lanes.
    double v[32], w[32];
    for (int l = 0; l < 32; ++l) v[l] = l * l + 1;
    const int cx = shfl_c_for_width(Shfl::Bfly, 32);
    for (int o = 16; o > 0; o >>= 1) {
        for (int l = 0; l < 32; ++l) w[l] = v[l] + v[shfl_source(Shfl::Bfly, l, o, cx, nullptr)];
        std::memcpy(v, w, sizeof v);
    }
    double total = 0;
    for (int l = 0; l < 32; ++l) total += l * l + 1;
    bool all = true;
    for (int l = 0; l < 32; ++l) all = all && v[l] == total;
    for (int l = 0; l < 32; ++l) v[l] = l;
    for (int o = 1; o <= 2; o <<= 1) {
        for (int l = 0; l < 32; ++l) w[l] = v[l] + v[shfl_source(Shfl::Bfly, l, o, cx, nullptr)];
        std::memcpy(v, w, sizeof v);
    }
    for (int l = 0; l < 32; ++l) all = all && v[l] == 4 * (l / 4 * 4) + 6;
    report(all, "xor-shuffle reductions: warp_sum total in all lanes, xor 1,2 sums each group of 4");
}

}  // namespace

int main() {
    std::mt19937 rng(20240611);
    check_conversions();
    check_coordinate_maps();
    check_mma_iota(Elem::F16, "f16");
    check_mma_iota(Elem::BF16, "bf16");
    check_mma_rounding(Elem::F16, "f16", &rng);
    check_mma_rounding(Elem::BF16, "bf16", &rng);
    check_lane_vs_warp(Elem::F16, "f16", &rng);
    check_lane_vs_warp(Elem::BF16, "bf16", &rng);
    for (int num : {1, 2, 4})
        for (bool trans : {false, true}) check_ldmatrix(num, trans);
    check_ldmatrix_feeds_mma();
    check_shfl();
    if (g_failures) {
        std::printf("%d check(s) FAILED\n", g_failures);
        return 1;
    }
    std::printf("all checks passed\n");
    return 0;
}
