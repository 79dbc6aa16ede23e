// Unit test of the cuBLASLt stand-in (softgpu/src/cublaslt.cpp) against its own stub of the
// software GPU's internal interface (no driver.cpp needed). Build and run from the repository
// root:
//   g++ -std=c++17 -O2 -Wall -Wextra -Werror -Isoftgpu/src softgpu/src/cublaslt.cpp softgpu/tests/test_cublaslt.cpp -o target/softgpu-test-cublaslt -pthread
//   target/softgpu-test-cublaslt
// Exits 0 when every check passes, 1 otherwise (each failure printed with its line).
//
// What it checks:
//   - every algorithm of the catalogue against a double-precision reference on seeded random
//     fp16 and bf16 inputs, ragged shapes (n = 1, 63, 64, 65, 130; k = 48, 100; m = 144, 100),
//     all four transpose combinations, padded leading dimensions, the bias epilogue, alpha/beta
//     with a separate C and in place (C = D, beta 0, C holding NaN); D's padding rows and the
//     bytes after the workspace stay untouched;
//   - exact rounding (to nearest, ties to even) of fp16 and bf16 outputs, subnormals, overflow;
//   - that the algorithms' accumulation orders differ;
//   - that the op is deferred (nothing happens before the stub's flush), reads alpha/beta at the
//     call and A/B when it runs, and survives its descriptors being destroyed;
//   - the refusal paths with their exact statuses (nothing is enqueued for any of them), the
//     out-of-allocation faults (at the call and when the op runs);
//   - the heuristic's order, count limit, workspace and reduction-scheme filtering, alignment
//     preferences, and gemm.rs's bucket-then-exact-shape fallback;
//   - attribute set/get, and that destroyed objects are refused rather than crashed on.
#include "cublaslt_types.h"
#include "internal.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

// ---- Stub of the software GPU's internal interface --------------------------------------

namespace stub {
struct Buf {
    uintptr_t base;
    size_t size;
};
std::vector<Buf> bufs;
struct Op {
    void* stream;
    std::string what;
    std::function<void()> fn;
};
std::vector<Op> queue;
std::vector<std::string> faults;
int enqueue_result = 0;
}  // namespace stub

namespace sg {
int fault(const std::string& what, int cu_result) {
    stub::faults.push_back(what);
    return cu_result;
}
bool faulted() { return !stub::faults.empty(); }
bool device_range(const void* p, size_t bytes, std::string* why) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (const stub::Buf& b : stub::bufs)
        if (a >= b.base && a - b.base <= b.size && bytes <= b.size - (a - b.base)) return true;
    if (why) *why = "no registered buffer holds it";
    return false;
}
int enqueue(void* stream, std::string what, std::function<void()> op) {
    if (stub::enqueue_result != 0) return stub::enqueue_result;
    stub::queue.push_back({stream, std::move(what), std::move(op)});
    return 0;
}
bool capturing(void*) { return false; }
}  // namespace sg

namespace {

void flush() {
    std::vector<stub::Op> q;
    q.swap(stub::queue);
    for (stub::Op& op : q) op.fn();
}

// "Device" memory: 256-byte aligned, registered with the stub for exactly `bytes`.
void* dev_alloc(size_t bytes) {
    size_t rounded = (bytes + 255) / 256 * 256 + 256;
    void* p = std::aligned_alloc(256, rounded);
    std::memset(p, 0, rounded);
    stub::bufs.push_back({reinterpret_cast<uintptr_t>(p), bytes});
    return p;
}
void dev_unregister(void* p) {
    for (size_t i = 0; i < stub::bufs.size(); i++)
        if (stub::bufs[i].base == reinterpret_cast<uintptr_t>(p)) {
            stub::bufs.erase(stub::bufs.begin() + long(i));
            return;
        }
}

int failures = 0;
int checks = 0;
#define CHECK(cond, ...)                                              \
    do {                                                              \
        checks++;                                                     \
        if (!(cond)) {                                                \
            failures++;                                               \
            std::fprintf(stderr, "FAIL line %d: %s: ", __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                        \
            std::fprintf(stderr, "\n");                               \
        }                                                             \
    } while (0)

const char* status_name(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS: return "SUCCESS";
        case CUBLAS_STATUS_NOT_INITIALIZED: return "NOT_INITIALIZED";
        case CUBLAS_STATUS_INVALID_VALUE: return "INVALID_VALUE";
        case CUBLAS_STATUS_EXECUTION_FAILED: return "EXECUTION_FAILED";
        case CUBLAS_STATUS_NOT_SUPPORTED: return "NOT_SUPPORTED";
        default: return "other";
    }
}

// The test's own decoders (independent of the stand-in's).
double dec16(uint16_t h) {
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? std::ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY)
                                                     : std::ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}
double decbf(uint16_t h) {
    uint32_t b = uint32_t(h) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

// Random values of magnitude [1/16, 2) with a random sign, as fp16 or bf16 bits.
uint16_t rand_bits(std::mt19937_64& rng, bool f16) {
    uint64_t r = rng();
    if (f16) return uint16_t((r & 0x83ff) | (uint16_t(11 + (r >> 16) % 5) << 10));
    return uint16_t((r & 0x807f) | (uint16_t(123 + (r >> 16) % 5) << 7));
}

const uint16_t kSentinel = 0x7e5a;  // a NaN in both formats, never written by a correct op

cublasLtMatrixLayout_t layout(cudaDataType t, uint64_t rows, uint64_t cols, int64_t ld) {
    cublasLtMatrixLayout_t l = nullptr;
    CHECK(cublasLtMatrixLayoutCreate(&l, t, rows, cols, ld) == CUBLAS_STATUS_SUCCESS, "layout");
    return l;
}

cublasLtMatmulDesc_t make_desc(int ta, int tb, uint32_t epilogue, const void* bias) {
    cublasLtMatmulDesc_t d = nullptr;
    CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F) == CUBLAS_STATUS_SUCCESS,
          "desc");
    int32_t a = ta, b = tb;
    uint64_t bp = reinterpret_cast<uintptr_t>(bias);
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &a, 4) == 0, "transa");
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &b, 4) == 0, "transb");
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, 4) == 0,
          "epilogue");
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bp, 8) == 0,
          "bias");
    return d;
}

cublasLtMatmulPreference_t make_pref(uint64_t max_ws, uint32_t mask = 7, uint32_t align = 256) {
    cublasLtMatmulPreference_t p = nullptr;
    CHECK(cublasLtMatmulPreferenceCreate(&p) == CUBLAS_STATUS_SUCCESS, "pref");
    CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                               &max_ws, 8) == 0, "ws");
    CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                               &mask, 4) == 0, "mask");
    for (int a = CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES;
         a <= CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES; a++)
        CHECK(cublasLtMatmulPreferenceSetAttribute(
                  p, cublasLtMatmulPreferenceAttributes_t(a), &align, 4) == 0, "align");
    return p;
}

int algo_id(const cublasLtMatmulAlgo_t& a) {
    int32_t id = -1;
    size_t w = 0;
    CHECK(cublasLtMatmulAlgoConfigGetAttribute(&a, CUBLASLT_ALGO_CONFIG_ID, &id, 4, &w) == 0,
          "config id");
    return id;
}

// The heuristic's answer as a list of algorithm ids (and the results themselves).
struct Found {
    cublasStatus_t status;
    int count;
    cublasLtMatmulHeuristicResult_t r[8];
    std::vector<int> ids() const {
        std::vector<int> v;
        for (int i = 0; i < count; i++) v.push_back(algo_id(r[i].algo));
        return v;
    }
};

Found heuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t dd,
                cublasLtMatmulPreference_t p, int requested = 8) {
    Found f;
    std::memset(&f.r, 0xab, sizeof f.r);
    f.count = -7;
    f.status = cublasLtMatmulAlgoGetHeuristic(h, d, a, b, c, dd, p, requested, f.r, &f.count);
    return f;
}

std::string ids_str(const std::vector<int>& v) {
    std::string s = "[";
    for (int i : v) s += std::to_string(i) + " ";
    return s + "]";
}

const int kTile64 = 0, kGeneral = 1, kSplitK2 = 2, kAligned16 = 3;
const char* const kNames[] = {"tile64", "general", "splitk2", "aligned16"};

// ---- Numerics -------------------------------------------------------------------------------

struct Case {
    bool f16;
    uint64_t m, n, k;
    bool ta, tb;
    bool bias;
    bool in_place;  // C = D, beta 0 (as gemm.rs); otherwise a separate C with beta != 0
    int pad;        // added to every ld
};

// Runs `c` with algorithm `want` (if the heuristic offers it); returns the bit patterns of D
// (m x n, packed) or empty when the algorithm does not fit the shape.
std::vector<uint16_t> run_case(cublasLtHandle_t h, const Case& c, int want, uint64_t seed,
                               bool check_numerics) {
    cudaDataType t = c.f16 ? CUDA_R_16F : CUDA_R_16BF;
    std::mt19937_64 rng(seed);
    uint64_t a_rows = c.ta ? c.k : c.m, a_cols = c.ta ? c.m : c.k;
    uint64_t b_rows = c.tb ? c.n : c.k, b_cols = c.tb ? c.k : c.n;
    int64_t lda = int64_t(a_rows) + c.pad, ldb = int64_t(b_rows) + c.pad;
    int64_t ldd = int64_t(c.m) + c.pad, ldc = int64_t(c.m) + (c.in_place ? c.pad : 8);
    std::vector<uint16_t> A(size_t(lda) * a_cols), B(size_t(ldb) * b_cols),
        C(size_t(ldc) * c.n, kSentinel), bias(c.m);
    for (auto& v : A) v = rand_bits(rng, c.f16);
    for (auto& v : B) v = rand_bits(rng, c.f16);
    for (auto& v : bias) v = rand_bits(rng, c.f16);
    if (!c.in_place)
        for (uint64_t j = 0; j < c.n; j++)
            for (uint64_t i = 0; i < c.m; i++) C[i + j * ldc] = rand_bits(rng, c.f16);
    float alpha = c.in_place ? 1.0f : 0.75f, beta = c.in_place ? 0.0f : -0.5f;

    void* dA = dev_alloc(A.size() * 2);
    void* dB = dev_alloc(B.size() * 2);
    void* dBias = dev_alloc(bias.size() * 2);
    void* dD = dev_alloc(size_t(ldd) * c.n * 2);
    void* dC = c.in_place ? dD : dev_alloc(C.size() * 2);
    std::memcpy(dA, A.data(), A.size() * 2);
    std::memcpy(dB, B.data(), B.size() * 2);
    std::memcpy(dBias, bias.data(), bias.size() * 2);
    {
        std::vector<uint16_t> fill(size_t(ldd) * c.n, kSentinel);  // NaN: in place, beta 0
        std::memcpy(dD, fill.data(), fill.size() * 2);            // must not read it
    }
    if (!c.in_place) std::memcpy(dC, C.data(), C.size() * 2);

    auto la = layout(t, a_rows, a_cols, lda), lb = layout(t, b_rows, b_cols, ldb),
         lc = layout(t, c.m, c.n, ldc), ld = layout(t, c.m, c.n, ldd);
    auto desc = make_desc(c.ta ? CUBLAS_OP_T : CUBLAS_OP_N, c.tb ? CUBLAS_OP_T : CUBLAS_OP_N,
                          c.bias ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT, dBias);
    auto pref = make_pref(64 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    Found f = heuristic(h, desc, la, lb, c.in_place ? ld : lc, ld, pref);
    std::vector<uint16_t> out;
    int at = -1;
    for (int i = 0; i < f.count; i++)
        if (algo_id(f.r[i].algo) == want) at = i;
    bool fits = (want == kTile64 ? c.n % 64 == 0 : true) &&
                (want == kAligned16 ? lda % 8 == 0 && ldb % 8 == 0 && ldc % 8 == 0 &&
                                          ldd % 8 == 0
                                    : true);
    CHECK(f.status == CUBLAS_STATUS_SUCCESS, "heuristic %s", status_name(f.status));
    CHECK((at >= 0) == fits, "%s offered=%d for m=%llu n=%llu k=%llu ld=%lld,%lld,%lld",
          kNames[want], at >= 0, (unsigned long long)c.m, (unsigned long long)c.n,
          (unsigned long long)c.k, (long long)lda, (long long)ldb, (long long)ldd);
    if (at >= 0) {
        size_t need = f.r[at].workspaceSize;
        CHECK(need == (want == kSplitK2 ? (8 * c.m * c.n + 255) / 256 * 256 : 0),
              "workspace %zu", need);
        // The workspace, exactly as large as asked, followed by canary bytes in the same
        // allocation that the op must not touch.
        unsigned char* ws = need ? static_cast<unsigned char*>(dev_alloc(need + 256)) : nullptr;
        if (ws) std::memset(ws + need, 0xc5, 256);
        cublasStatus_t st = cublasLtMatmul(h, desc, &alpha, dA, la, dB, lb, &beta, dC,
                                           c.in_place ? ld : lc, dD, ld, &f.r[at].algo, ws, need,
                                           nullptr);
        CHECK(st == CUBLAS_STATUS_SUCCESS, "matmul %s with %s", status_name(st), kNames[want]);
        flush();
        if (ws) {
            bool canary = true;
            for (int i = 0; i < 256; i++) canary = canary && ws[need + i] == 0xc5;
            CHECK(canary, "%s wrote past its workspace", kNames[want]);
            dev_unregister(ws);
            std::free(ws);
        }
        const uint16_t* D = static_cast<const uint16_t*>(dD);
        double rel = c.f16 ? std::ldexp(1.0, -10) : std::ldexp(1.0, -7);
        auto dec = c.f16 ? dec16 : decbf;
        int bad = 0;
        for (uint64_t j = 0; j < c.n; j++) {
            for (uint64_t i = 0; i < c.m; i++) {
                out.push_back(D[i + j * ldd]);
                if (!check_numerics) continue;
                double ref = 0;
                for (uint64_t p = 0; p < c.k; p++) {
                    double a = dec(A[c.ta ? p + i * lda : i + p * lda]);
                    double b = dec(B[c.tb ? j + p * ldb : p + j * ldb]);
                    ref += a * b;
                }
                ref *= alpha;
                if (!c.in_place) ref += beta * dec(C[i + j * ldc]);
                if (c.bias) ref += dec(bias[i]);
                // Tolerance |out - ref| <= rel * |ref| + 1e-3. The output is rounded once to
                // the output type: at most half an ulp, 2^-11 relative for fp16 (2^-8 for
                // bf16), so rel is twice that, 2^-10 (2^-7); the fp32 accumulation in an
                // algorithm's own order adds at most about k * 2^-24 * sum|a*b| (< 4e-4 for
                // these k <= 100 and |a|, |b| < 2), well inside the 1e-3. A transposed operand
                // read the wrong way, a bias on the wrong axis, a lost term all miss by ~0.1+.
                double got = dec(D[i + j * ldd]);
                if (!(std::fabs(got - ref) <= rel * std::fabs(ref) + 1e-3)) {
                    if (bad++ < 3)
                        CHECK(false, "%s %s m=%llu n=%llu k=%llu ta=%d tb=%d bias=%d inplace=%d "
                              "D(%llu,%llu)=%.6f ref %.6f", kNames[want], c.f16 ? "f16" : "bf16",
                              (unsigned long long)c.m, (unsigned long long)c.n,
                              (unsigned long long)c.k, c.ta, c.tb, c.bias, c.in_place,
                              (unsigned long long)i, (unsigned long long)j, got, ref);
                }
            }
            for (int64_t i = int64_t(c.m); i < ldd; i++)
                CHECK(D[i + j * ldd] == kSentinel, "padding row %lld of column %llu written",
                      (long long)i, (unsigned long long)j);
        }
        checks++;
        if (bad) failures++;
    }
    cublasLtMatmulPreferenceDestroy(pref);
    cublasLtMatmulDescDestroy(desc);
    for (auto l : {la, lb, lc, ld}) cublasLtMatrixLayoutDestroy(l);
    for (void* p : {dA, dB, dBias, dD}) {
        dev_unregister(p);
        std::free(p);
    }
    if (!c.in_place) {
        dev_unregister(dC);
        std::free(dC);
    }
    return out;
}

void test_numerics(cublasLtHandle_t h) {
    int ran[4] = {0, 0, 0, 0};
    uint64_t seed = 1;
    for (bool f16 : {true, false})
        for (uint64_t m : {144, 100})
            for (uint64_t k : {48, 100})
                for (uint64_t n : {1, 63, 64, 65, 130})
                    for (int tr = 0; tr < 4; tr++)
                        for (int algo = 0; algo < 4; algo++) {
                            Case c;
                            c.f16 = f16;
                            c.m = m;
                            c.n = n;
                            c.k = k;
                            c.ta = tr & 1;
                            c.tb = tr & 2;
                            c.bias = (seed % 3) != 0;
                            c.in_place = (seed % 2) == 0;
                            // aligned16 needs every ld a multiple of 8: pad so that it can run
                            // on some shapes; the others get odd pads too.
                            c.pad = algo == kAligned16 ? (m == 144 && k == 48 ? 0 : 8)
                                                       : int(seed % 4 == 1 ? 3 : 0);
                            if (algo == kAligned16 && c.in_place == false) c.pad = 0;
                            auto out = run_case(h, c, algo, seed++, true);
                            if (!out.empty()) ran[algo]++;
                        }
    // Large enough (m * n * k >= 2^22) for the stand-in to split the columns over threads.
    for (bool f16 : {true, false})
        for (int algo = 0; algo < 4; algo++) {
            Case big{f16, 144, 320, 104, true, false, true, algo != kAligned16, algo == kAligned16 ? 0 : 3};
            if (run_case(h, big, algo, seed++, true).empty())
                CHECK(false, "%s did not run on the threaded case", kNames[algo]);
        }
    for (int a = 0; a < 4; a++) CHECK(ran[a] >= 8, "%s ran on only %d cases", kNames[a], ran[a]);
    std::printf("numerics: tile64 %d, general %d, splitk2 %d, aligned16 %d cases\n", ran[0],
                ran[1], ran[2], ran[3]);

    // The four accumulation orders differ: on one shape every pair of algorithms disagrees in
    // at least one fp16 output bit pattern (k = 1000 makes the fp32 orders matter).
    Case c{true, 144, 128, 1000, true, false, true, true, 0};
    std::vector<uint16_t> outs[4];
    for (int a = 0; a < 4; a++) outs[a] = run_case(h, c, a, 99, false);
    for (int a = 0; a < 4; a++)
        for (int b = a + 1; b < 4; b++) {
            int diff = 0;
            for (size_t i = 0; i < outs[a].size() && i < outs[b].size(); i++)
                diff += outs[a][i] != outs[b][i];
            CHECK(!outs[a].empty() && diff > 0, "%s and %s agree everywhere", kNames[a],
                  kNames[b]);
        }
}

// Exact rounding: D = a * x + a * y (k = 2, m = 1), every product and the sum exact in fp32
// (so the same for every algorithm), rounded once to the output type.
void test_rounding(cublasLtHandle_t h) {
    const uint16_t H16 = 0x3800, ONE16 = 0x3c00, HBF = 0x3f00, ONEBF = 0x3f80;  // 0.5, 1
    struct R {
        bool f16;
        uint16_t a, x, y, want;
        const char* what;
    };
    const R cases[] = {
        {true, H16, 0x4000, 0x1400, 0x3c00, "fp16 1+2^-11: tie, to even (down)"},
        {true, H16, 0x4001, 0x1400, 0x3c02, "fp16 1+3*2^-11: tie, to even (up)"},
        {true, H16, 0x4000, 0x1401, 0x3c01, "fp16 just above a tie: up"},
        {true, H16, 0xc000, 0x9400, 0xbc00, "fp16 negative tie"},
        {true, H16, 0x4000, 0x4c00, 0x4880, "fp16 exact 9"},
        {true, ONE16, 0x7bff, 0x4c00, 0x7c00, "fp16 65504+16: tie, to even = infinity"},
        {true, ONE16, 0x7bff, 0x4bc0, 0x7bff, "fp16 65504+15.5: 65504"},
        {true, ONE16, 0xfbff, 0xcc40, 0xfc00, "fp16 -65504-17: -infinity"},
        {true, H16, 0x0001, 0x0000, 0x0000, "fp16 2^-25: tie to zero"},
        {true, H16, 0x0003, 0x0000, 0x0002, "fp16 1.5*2^-24: tie to even 2"},
        {true, H16, 0x0005, 0x0000, 0x0002, "fp16 2.5*2^-24: tie to even 2"},
        {true, H16, 0x0007, 0x0000, 0x0004, "fp16 3.5*2^-24: tie to even 4"},
        {true, H16, 0x0800, 0x0000, 0x0400, "fp16 2^-14: min normal"},
        {true, H16, 0x07ff, 0x0000, 0x0400, "fp16 1023.5*2^-24: tie, carries into normal"},
        {true, H16, 0x0001, 0x0002, 0x0002, "fp16 1.5*2^-24 from subnormal inputs"},
        {false, HBF, 0x4000, 0x3c00, 0x3f80, "bf16 1+2^-8: tie, to even (down)"},
        {false, HBF, 0x4001, 0x3c00, 0x3f82, "bf16 1+3*2^-8: tie, to even (up)"},
        {false, HBF, 0x4000, 0x3c01, 0x3f81, "bf16 just above a tie: up"},
        {false, HBF, 0x7f7f, 0x7f7f, 0x7f7f, "bf16 max"},
        {false, ONEBF, 0x7f7f, 0x7b00, 0x7f80, "bf16 max + half ulp: tie, to even = infinity"},
        {false, ONEBF, 0x7f7f, 0x7a80, 0x7f7f, "bf16 max + quarter ulp: max"},
    };
    for (const R& q : cases) {
        cudaDataType t = q.f16 ? CUDA_R_16F : CUDA_R_16BF;
        uint16_t* a = static_cast<uint16_t*>(dev_alloc(4));
        uint16_t* b = static_cast<uint16_t*>(dev_alloc(4));
        uint16_t* d = static_cast<uint16_t*>(dev_alloc(2));
        a[0] = a[1] = q.a;
        b[0] = q.x;
        b[1] = q.y;
        auto la = layout(t, 1, 2, 1), lb = layout(t, 2, 1, 2), ld = layout(t, 1, 1, 1);
        auto desc = make_desc(CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr);
        float alpha = 1, beta = 0;
        // algo NULL: the implicit heuristic query picks one (general, for n = 1).
        cublasStatus_t st = cublasLtMatmul(h, desc, &alpha, a, la, b, lb, &beta, d, ld, d, ld,
                                           nullptr, nullptr, 0, nullptr);
        CHECK(st == CUBLAS_STATUS_SUCCESS, "%s", status_name(st));
        flush();
        CHECK(d[0] == q.want, "%s: got 0x%04x want 0x%04x", q.what, d[0], q.want);
        cublasLtMatmulDescDestroy(desc);
        for (auto l : {la, lb, ld}) cublasLtMatrixLayoutDestroy(l);
        for (void* p : {(void*)a, (void*)b, (void*)d}) {
            dev_unregister(p);
            std::free(p);
        }
    }
}

// ---- A fixture shaped like gemm.rs's linear: D[144 x n] = op(A)[144 x 100] * B[100 x n] + bias

struct Fixture {
    cublasLtHandle_t h;
    uint64_t m = 144, k = 100, n;
    uint16_t *A, *B, *D, *bias;
    unsigned char* ws;
    size_t ws_size = 1 << 20;
    cublasLtMatrixLayout_t la, lb, ld;
    cublasLtMatmulDesc_t desc;
    cublasLtMatmulPreference_t pref;
    cublasLtMatmulAlgo_t algo;  // the heuristic's first choice
    float alpha = 1, beta = 0;

    Fixture(cublasLtHandle_t handle, uint64_t cols) : h(handle), n(cols) {
        std::mt19937_64 rng(7);
        A = static_cast<uint16_t*>(dev_alloc(k * m * 2 + 512));  // slack for offset pointers
        B = static_cast<uint16_t*>(dev_alloc(k * n * 2));
        D = static_cast<uint16_t*>(dev_alloc(m * n * 2));
        bias = static_cast<uint16_t*>(dev_alloc(m * 2 + 64));
        ws = static_cast<unsigned char*>(dev_alloc(ws_size));
        for (uint64_t i = 0; i < k * m + 256; i++) A[i] = rand_bits(rng, true);
        for (uint64_t i = 0; i < k * n; i++) B[i] = rand_bits(rng, true);
        for (uint64_t i = 0; i < m + 32; i++) bias[i] = rand_bits(rng, true);
        la = layout(CUDA_R_16F, k, m, int64_t(k));
        lb = layout(CUDA_R_16F, k, n, int64_t(k));
        ld = layout(CUDA_R_16F, m, n, int64_t(m));
        desc = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, bias);
        pref = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
        Found f = heuristic(h, desc, la, lb, ld, ld, pref, 1);
        CHECK(f.status == CUBLAS_STATUS_SUCCESS && f.count == 1, "fixture heuristic");
        algo = f.r[0].algo;
    }
    ~Fixture() {
        cublasLtMatmulPreferenceDestroy(pref);
        cublasLtMatmulDescDestroy(desc);
        for (auto l : {la, lb, ld}) cublasLtMatrixLayoutDestroy(l);
        for (void* p : {(void*)A, (void*)B, (void*)D, (void*)bias, (void*)ws}) {
            dev_unregister(p);
            std::free(p);
        }
    }
    // Reference D(i, j) in double (A read transposed, bias down the rows), with `alpha_used`.
    double ref(uint64_t i, uint64_t j, double alpha_used) const {
        double s = 0;
        for (uint64_t p = 0; p < k; p++) s += dec16(A[p + i * k]) * dec16(B[p + j * k]);
        return alpha_used * s + dec16(bias[i]);
    }
};

// One cublasLtMatmul call, every argument overridable.
struct Call {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t desc;
    const float *alpha, *beta;
    const void* A;
    cublasLtMatrixLayout_t la;
    const void* B;
    cublasLtMatrixLayout_t lb;
    const void* C;
    cublasLtMatrixLayout_t lc;
    void* D;
    cublasLtMatrixLayout_t ld;
    const cublasLtMatmulAlgo_t* algo;
    void* ws;
    size_t ws_size;
    explicit Call(const Fixture& f)
        : h(f.h), desc(f.desc), alpha(&f.alpha), beta(&f.beta), A(f.A), la(f.la), B(f.B),
          lb(f.lb), C(f.D), lc(f.ld), D(f.D), ld(f.ld), algo(&f.algo), ws(f.ws),
          ws_size(f.ws_size) {}
    cublasStatus_t run() const {
        return cublasLtMatmul(h, desc, alpha, A, la, B, lb, beta, C, lc, D, ld, algo, ws, ws_size,
                              reinterpret_cast<cudaStream_t>(uintptr_t(0x5000)));
    }
};

// The call returns `want`, enqueues nothing, and faults only when `fault_has` is given (then
// the fault message must contain it).
void expect(const Call& c, cublasStatus_t want, const char* what, const char* fault_has = nullptr) {
    size_t q = stub::queue.size(), nf = stub::faults.size();
    cublasStatus_t got = c.run();
    CHECK(got == want, "%s: got %s, want %s", what, status_name(got), status_name(want));
    if (want != CUBLAS_STATUS_SUCCESS)
        CHECK(stub::queue.size() == q, "%s: enqueued although refused", what);
    if (fault_has) {
        CHECK(stub::faults.size() == nf + 1 &&
                  stub::faults.back().find(fault_has) != std::string::npos,
              "%s: expected a fault naming '%s', got %s", what, fault_has,
              stub::faults.size() > nf ? stub::faults.back().c_str() : "none");
    } else {
        CHECK(stub::faults.size() == nf, "%s: unexpected fault %s", what,
              stub::faults.size() > nf ? stub::faults.back().c_str() : "");
    }
    if (got == CUBLAS_STATUS_SUCCESS) flush();
}

void test_deferred(cublasLtHandle_t h) {
    Fixture f(h, 64);
    CHECK(algo_id(f.algo) == kTile64, "n = 64 prefers tile64, got %d", algo_id(f.algo));
    for (uint64_t i = 0; i < f.m * f.n; i++) f.D[i] = kSentinel;
    float alpha = 0.5f, beta = 0.0f;
    // Descriptors of its own, destroyed right after the call.
    auto la = layout(CUDA_R_16F, f.k, f.m, int64_t(f.k));
    auto lb = layout(CUDA_R_16F, f.k, f.n, int64_t(f.k));
    auto ld = layout(CUDA_R_16F, f.m, f.n, int64_t(f.m));
    auto desc = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
    void* stream = reinterpret_cast<void*>(uintptr_t(0x5000));
    cublasStatus_t st = cublasLtMatmul(h, desc, &alpha, f.A, la, f.B, lb, &beta, f.D, ld, f.D, ld,
                                       &f.algo, f.ws, f.ws_size, static_cast<cudaStream_t>(stream));
    CHECK(st == CUBLAS_STATUS_SUCCESS, "deferred call %s", status_name(st));
    CHECK(stub::queue.size() == 1, "one op enqueued, %zu", stub::queue.size());
    if (stub::queue.size() == 1) {
        CHECK(stub::queue[0].stream == stream, "on the caller's stream");
        CHECK(stub::queue[0].what.rfind("cublasLtMatmul 144x100 * 100x64", 0) == 0, "name '%s'",
              stub::queue[0].what.c_str());
    }
    bool untouched = true;
    for (uint64_t i = 0; i < f.m * f.n; i++) untouched = untouched && f.D[i] == kSentinel;
    CHECK(untouched, "D written before the stream ran");
    // After the call: the scalars change (must not matter), A changes (must matter: the op
    // reads its inputs when it runs, as a kernel does), the descriptors go away.
    alpha = 3.0f;
    beta = 1.0f;
    f.A[5] = 0x4400;  // 4.0 at A(5, 0): op(A)(0, 5)
    cublasLtMatmulDescDestroy(desc);
    for (auto l : {la, lb, ld}) cublasLtMatrixLayoutDestroy(l);
    flush();
    int bad = 0;
    for (uint64_t j = 0; j < f.n; j++)
        for (uint64_t i = 0; i < f.m; i++) {
            double ref = f.ref(i, j, 0.5), got = dec16(f.D[i + j * f.m]);
            bad += !(std::fabs(got - ref) <= std::ldexp(1.0, -10) * std::fabs(ref) + 1e-3);
        }
    CHECK(bad == 0, "deferred result: %d elements off (alpha read late, or A read early?)", bad);
}

void test_refusals(cublasLtHandle_t h) {
    Fixture f(h, 64);
    expect(Call(f), CUBLAS_STATUS_SUCCESS, "the baseline");

    // Handles and descriptors.
    {
        Call c(f);
        c.h = nullptr;
        expect(c, CUBLAS_STATUS_NOT_INITIALIZED, "null handle");
        cublasLtHandle_t dead;
        cublasLtCreate(&dead);
        CHECK(cublasLtDestroy(dead) == CUBLAS_STATUS_SUCCESS, "destroy");
        CHECK(cublasLtDestroy(dead) == CUBLAS_STATUS_NOT_INITIALIZED, "double destroy");
        c.h = dead;
        expect(c, CUBLAS_STATUS_NOT_INITIALIZED, "destroyed handle");
        c.h = reinterpret_cast<cublasLtHandle_t>(uintptr_t(0x1234560));
        expect(c, CUBLAS_STATUS_NOT_INITIALIZED, "garbage handle");
    }
    {
        Call c(f);
        c.desc = nullptr;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "null desc");
        auto d = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
        CHECK(cublasLtMatmulDescDestroy(d) == 0, "destroy desc");
        CHECK(cublasLtMatmulDescDestroy(d) == CUBLAS_STATUS_INVALID_VALUE, "double destroy desc");
        c.desc = d;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "destroyed desc");
        c.desc = reinterpret_cast<cublasLtMatmulDesc_t>(f.la);
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "a layout passed as the desc");
        int32_t op = CUBLAS_OP_T;
        CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &op, 4) ==
                  CUBLAS_STATUS_INVALID_VALUE, "set on destroyed desc");
    }
    {
        Call c(f);
        auto l = layout(CUDA_R_16F, f.k, f.m, int64_t(f.k));
        CHECK(cublasLtMatrixLayoutDestroy(l) == 0, "destroy layout");
        CHECK(cublasLtMatrixLayoutDestroy(l) == CUBLAS_STATUS_INVALID_VALUE, "double destroy");
        c.la = l;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "destroyed A layout");
        c.la = f.la;
        c.lc = nullptr;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "null C layout");
        auto p = make_pref(0);
        CHECK(cublasLtMatmulPreferenceDestroy(p) == 0, "destroy pref");
        CHECK(cublasLtMatmulPreferenceDestroy(p) == CUBLAS_STATUS_INVALID_VALUE, "double");
        uint64_t ws = 1;
        CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                   &ws, 8) == CUBLAS_STATUS_INVALID_VALUE,
              "set on destroyed pref");
    }
    // Scalars: present, on the host.
    {
        Call c(f);
        c.alpha = nullptr;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "null alpha");
        c = Call(f);
        c.beta = reinterpret_cast<const float*>(f.ws);
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "beta in device memory (host pointer mode)");
    }
    // Leading dimensions and shapes.
    {
        Call c(f);
        auto bad_a = layout(CUDA_R_16F, f.k, f.m, int64_t(f.k) - 1);
        c.la = bad_a;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "lda < rows");
        auto bad_d = layout(CUDA_R_16F, f.m, f.n, int64_t(f.m) - 1);
        c = Call(f);
        c.ld = c.lc = bad_d;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "ldd < rows");
        auto b99 = layout(CUDA_R_16F, f.k - 1, f.n, int64_t(f.k));
        c = Call(f);
        c.lb = b99;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "op(B) has 99 rows, op(A) 100 columns");
        auto d65 = layout(CUDA_R_16F, f.m, f.n + 1, int64_t(f.m));
        c = Call(f);
        c.ld = d65;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "D has one column more than C and op(B)");
        auto c143 = layout(CUDA_R_16F, f.m - 1, f.n, int64_t(f.m));
        c = Call(f);
        c.lc = c143;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "C rows differ from D's");
        auto zero = layout(CUDA_R_16F, f.k, 0, int64_t(f.k));
        c = Call(f);
        c.lb = zero;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "an empty B");
        // transA N: op(A) would be 100 x 144, so m = 100 against D's 144 rows.
        auto dn = make_desc(CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
        c = Call(f);
        c.desc = dn;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "transA ignored would fit; N must not");
        for (auto l : {bad_a, bad_d, b99, d65, c143, zero}) cublasLtMatrixLayoutDestroy(l);
        cublasLtMatmulDescDestroy(dn);
    }
    // Types, compute, modes, epilogues.
    {
        auto bf = layout(CUDA_R_16BF, f.k, f.n, int64_t(f.k));
        Call c(f);
        c.lb = bf;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "B bf16, A fp16");
        auto d32 = layout(CUDA_R_32F, f.m, f.n, int64_t(f.m));
        c = Call(f);
        c.ld = c.lc = d32;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "fp32 C/D");
        cublasLtMatmulDesc_t d16;
        CHECK(cublasLtMatmulDescCreate(&d16, CUBLAS_COMPUTE_16F, CUDA_R_16F) == 0, "desc16");
        int32_t t = CUBLAS_OP_T;
        cublasLtMatmulDescSetAttribute(d16, CUBLASLT_MATMUL_DESC_TRANSA, &t, 4);
        c = Call(f);
        c.desc = d16;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "compute 16F");
        cublasLtMatmulDesc_t s16;
        CHECK(cublasLtMatmulDescCreate(&s16, CUBLAS_COMPUTE_32F, CUDA_R_16F) == 0, "s16");
        cublasLtMatmulDescSetAttribute(s16, CUBLASLT_MATMUL_DESC_TRANSA, &t, 4);
        c.desc = s16;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "scale type 16F");
        for (uint32_t epi : {uint32_t(CUBLASLT_EPILOGUE_GELU), uint32_t(CUBLASLT_EPILOGUE_GELU_BIAS),
                             uint32_t(CUBLASLT_EPILOGUE_BGRADA)}) {
            auto de = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, epi, f.bias);
            c.desc = de;
            expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "an epilogue not modelled");
            cublasLtMatmulDescDestroy(de);
        }
        auto dm = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
        int32_t mode = CUBLASLT_POINTER_MODE_DEVICE;
        CHECK(cublasLtMatmulDescSetAttribute(dm, CUBLASLT_MATMUL_DESC_POINTER_MODE, &mode, 4) == 0,
              "set mode");
        c.desc = dm;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "device pointer mode");
        auto db = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
        int32_t bt = CUDA_R_32F;
        CHECK(cublasLtMatmulDescSetAttribute(db, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, 4) == 0,
              "bias type");
        c.desc = db;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "fp32 bias with fp16 D");
        auto dc = make_desc(CUBLAS_OP_C, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias);
        c.desc = dc;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "transA = C");
        auto row = layout(CUDA_R_16F, f.k, f.n, int64_t(f.k));
        int32_t order = CUBLASLT_ORDER_ROW;
        CHECK(cublasLtMatrixLayoutSetAttribute(row, CUBLASLT_MATRIX_LAYOUT_ORDER, &order, 4) == 0,
              "order");
        c = Call(f);
        c.lb = row;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "row-major B");
        auto batch = layout(CUDA_R_16F, f.k, f.n, int64_t(f.k));
        int32_t two = 2;
        CHECK(cublasLtMatrixLayoutSetAttribute(batch, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &two,
                                               4) == 0, "batch");
        c.lb = batch;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "a batch of 2");
        for (auto l : {bf, d32, row, batch}) cublasLtMatrixLayoutDestroy(l);
        for (auto d : {d16, s16, dm, db, dc}) cublasLtMatmulDescDestroy(d);
    }
    // Pointers: present, aligned as the algorithm needs, not overlapping.
    {
        Call c(f);
        c.B = nullptr;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "null B");
        c = Call(f);
        c.A = f.A + 1;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "A only element-aligned");
        c.A = f.A + 8;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "A 16-aligned, the heuristic assumed 256");
        auto p16 = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 16);
        Found f16 = heuristic(h, f.desc, f.la, f.lb, f.ld, f.ld, p16, 1);
        c.algo = &f16.r[0].algo;
        expect(c, CUBLAS_STATUS_SUCCESS, "A 16-aligned, the heuristic was told 16");
        c.A = f.A + 4;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "A 8-aligned, the heuristic was told 16");
        cublasLtMatmulPreferenceDestroy(p16);
        auto d2 = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias + 1);
        c = Call(f);
        c.desc = d2;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "bias element-aligned only");
        auto d16 = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias + 8);
        c.desc = d16;
        expect(c, CUBLAS_STATUS_SUCCESS, "bias 16-aligned");
        auto d0 = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, nullptr);
        c.desc = d0;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "bias epilogue, no bias pointer");
        for (auto d : {d2, d16, d0}) cublasLtMatmulDescDestroy(d);
        uint16_t* other = static_cast<uint16_t*>(dev_alloc((f.m + 8) * f.n * 2 + 512));
        c = Call(f);
        auto lc_wide = layout(CUDA_R_16F, f.m, f.n, int64_t(f.m) + 8);
        c.lc = lc_wide;
        c.C = c.D = other;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "C = D with a different ld");
        c = Call(f);
        c.D = f.A;
        c.C = f.A;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "D overlaps A");
        c = Call(f);
        c.C = other;
        c.D = other + 128;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "C and D overlap without being equal");
        c = Call(f);
        c.C = other;  // a separate C is fine
        expect(c, CUBLAS_STATUS_SUCCESS, "separate C");
        cublasLtMatrixLayoutDestroy(lc_wide);
        dev_unregister(other);
        std::free(other);
    }
    // Algorithms: garbage, tampered, and constraints the problem breaks.
    {
        Call c(f);
        cublasLtMatmulAlgo_t zero;
        std::memset(&zero, 0, sizeof zero);
        c.algo = &zero;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "zeroed algo");
        cublasLtMatmulAlgo_t junk;
        std::mt19937_64 rng(3);
        for (auto& v : junk.data) v = rng();
        c.algo = &junk;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "random algo");
        cublasLtMatmulAlgo_t t = f.algo;
        t.data[1] ^= 1;
        c.algo = &t;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "algo with its id changed");
        t = f.algo;
        t.data[2] ^= 0x100;
        c.algo = &t;
        expect(c, CUBLAS_STATUS_INVALID_VALUE, "algo with its alignment changed");
        int32_t id = 0;
        CHECK(cublasLtMatmulAlgoConfigGetAttribute(&zero, CUBLASLT_ALGO_CONFIG_ID, &id, 4,
                                                   nullptr) == CUBLAS_STATUS_INVALID_VALUE,
              "config of a zeroed algo");
    }
    {
        // tile64 from n = 64, run on n = 100 (gemm.rs's bucket case) and n = 1.
        for (uint64_t n : {100, 1}) {
            Fixture g(h, n);
            Call c(g);
            c.algo = &f.algo;
            expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "tile64 on n not a multiple of 64");
        }
        // aligned16 (every ld a multiple of 8) run with lda = 100.
        auto la8 = layout(CUDA_R_16F, 104, f.m, 104), lb8 = layout(CUDA_R_16F, 104, 64, 104);
        Found a8 = heuristic(h, f.desc, la8, lb8, f.ld, f.ld, f.pref);
        CHECK(a8.count >= 2 && algo_id(a8.r[1].algo) == kAligned16, "aligned16 second: %s",
              ids_str(a8.ids()).c_str());
        Call c(f);
        c.algo = &a8.r[1].algo;
        expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "aligned16 with lda 100");
        cublasLtMatrixLayoutDestroy(la8);
        cublasLtMatrixLayoutDestroy(lb8);
    }
    // Workspace (splitk2: 8 * 144 * 64 = 73728 bytes).
    {
        Found all = heuristic(h, f.desc, f.la, f.lb, f.ld, f.ld, f.pref);
        int at = -1;
        for (int i = 0; i < all.count; i++)
            if (algo_id(all.r[i].algo) == kSplitK2) at = i;
        CHECK(at >= 0, "splitk2 offered");
        if (at >= 0) {
            const size_t need = 73728;
            CHECK(all.r[at].workspaceSize == need, "need %zu", all.r[at].workspaceSize);
            Call c(f);
            c.algo = &all.r[at].algo;
            c.ws_size = need - 1;
            expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "workspace one byte short");
            c.ws_size = 0;
            expect(c, CUBLAS_STATUS_NOT_SUPPORTED, "no workspace");
            c.ws_size = need;
            c.ws = nullptr;
            expect(c, CUBLAS_STATUS_INVALID_VALUE, "workspace size given, pointer null");
            c.ws = f.ws + 16;
            expect(c, CUBLAS_STATUS_INVALID_VALUE, "workspace not 256-aligned");
            c.ws = f.ws;
            c.C = c.D = f.ws + 4096;
            expect(c, CUBLAS_STATUS_INVALID_VALUE, "workspace overlapping D");
            c.C = c.D = f.D;
            for (uint64_t i = 0; i < f.m * f.n; i++) f.D[i] = kSentinel;
            expect(c, CUBLAS_STATUS_SUCCESS, "workspace exactly as large as needed");
            int bad = 0;
            for (uint64_t j = 0; j < f.n; j++)
                for (uint64_t i = 0; i < f.m; i++) {
                    double ref = f.ref(i, j, 1.0), got = dec16(f.D[i + j * f.m]);
                    bad += !(std::fabs(got - ref) <= std::ldexp(1.0, -10) * std::fabs(ref) + 1e-3);
                }
            CHECK(bad == 0, "splitk2 through the fixture: %d off", bad);
            // Host memory as the workspace, and a registered one that is too small.
            void* host = std::aligned_alloc(256, need);
            c.ws = host;
            expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "host memory as workspace",
                   "operand workspace");
            std::free(host);
            void* small = dev_alloc(need - 256);
            c.ws = small;
            expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "workspace allocation smaller than said",
                   "operand workspace");
            dev_unregister(small);
            std::free(small);
            // A too-small workspace is filtered by the heuristic.
            auto p_short = make_pref(need - 1, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
            Found s = heuristic(h, f.desc, f.la, f.lb, f.ld, f.ld, p_short);
            for (int id : s.ids()) CHECK(id != kSplitK2, "splitk2 offered with %zu bytes", need - 1);
            cublasLtMatmulPreferenceDestroy(p_short);
        }
    }
    // Out-of-allocation operands: a device fault, EXECUTION_FAILED, nothing enqueued.
    {
        uint16_t* a_short = static_cast<uint16_t*>(dev_alloc(f.k * f.m * 2 - 2));
        Call c(f);
        c.A = a_short;
        expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "A one element short", "operand A");
        auto wide = layout(CUDA_R_16F, f.k, f.n, 2 * int64_t(f.k));
        c = Call(f);
        c.lb = wide;
        expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "B's ld reaches past its allocation",
               "operand B");
        cublasLtMatrixLayoutDestroy(wide);
        void* host = std::aligned_alloc(256, f.m * f.n * 2);
        c = Call(f);
        c.D = host;
        c.C = host;
        expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "host memory as D", "operand C");
        auto db = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, f.bias + 40);
        c = Call(f);
        c.desc = db;
        expect(c, CUBLAS_STATUS_EXECUTION_FAILED, "bias past its allocation", "operand bias");
        cublasLtMatmulDescDestroy(db);
        std::free(host);
        dev_unregister(a_short);
        std::free(a_short);
        // Freed between the call and the stream running: the op faults and writes nothing.
        uint16_t* b2 = static_cast<uint16_t*>(dev_alloc(f.k * f.n * 2));
        for (uint64_t i = 0; i < f.m * f.n; i++) f.D[i] = kSentinel;
        c = Call(f);
        c.B = b2;
        size_t nf = stub::faults.size();
        CHECK(c.run() == CUBLAS_STATUS_SUCCESS, "call before the free");
        dev_unregister(b2);
        flush();
        CHECK(stub::faults.size() == nf + 1 &&
                  stub::faults.back().find("when the matmul ran") != std::string::npos,
              "late free: %s", stub::faults.size() > nf ? stub::faults.back().c_str() : "no fault");
        CHECK(f.D[0] == kSentinel, "wrote D after faulting");
        std::free(b2);
    }
    // The stream refuses the op (a sticky fault, a bad stream).
    {
        stub::enqueue_result = 700;
        expect(Call(f), CUBLAS_STATUS_EXECUTION_FAILED, "enqueue refused");
        stub::enqueue_result = 0;
    }
    // algo NULL: an implicit heuristic query (default preferences, the workspace given).
    {
        Call c(f);
        c.algo = nullptr;
        expect(c, CUBLAS_STATUS_SUCCESS, "implicit algorithm");
    }
}

void test_heuristic(cublasLtHandle_t h) {
    // m 144, k 48, n 128: every ld a multiple of 8, n a multiple of 64.
    auto desc = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, nullptr);
    auto la = layout(CUDA_R_16F, 48, 144, 48), lb = layout(CUDA_R_16F, 48, 128, 48),
         ld = layout(CUDA_R_16F, 144, 128, 144);
    const size_t need = 8 * 144 * 128;
    auto big = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    Found f = heuristic(h, desc, la, lb, ld, ld, big);
    CHECK(f.status == 0 && f.ids() == std::vector<int>({kTile64, kAligned16, kSplitK2, kGeneral}),
          "order %s", ids_str(f.ids()).c_str());
    for (int i = 0; i < f.count; i++) {
        CHECK(f.r[i].state == CUBLAS_STATUS_SUCCESS, "state");
        CHECK(f.r[i].workspaceSize == (i == 2 ? need : 0), "ws %zu", f.r[i].workspaceSize);
        CHECK(f.r[i].wavesCount > 0, "waves");
    }
    Found two = heuristic(h, desc, la, lb, ld, ld, big, 2);
    CHECK(two.status == 0 && two.ids() == std::vector<int>({kTile64, kAligned16}), "two: %s",
          ids_str(two.ids()).c_str());
    unsigned char untouched[sizeof(cublasLtMatmulHeuristicResult_t)];
    std::memset(untouched, 0xab, sizeof untouched);
    CHECK(std::memcmp(&two.r[2], untouched, sizeof untouched) == 0, "wrote past the count");
    Found zero_req = heuristic(h, desc, la, lb, ld, ld, big, 0);
    CHECK(zero_req.status == CUBLAS_STATUS_INVALID_VALUE, "0 requested: %s",
          status_name(zero_req.status));
    int count = 5;
    CHECK(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, big, 1, nullptr, &count) ==
              CUBLAS_STATUS_INVALID_VALUE, "null results");
    CHECK(cublasLtMatmulAlgoGetHeuristic(h, desc, la, lb, ld, ld, big, 1, f.r, nullptr) ==
              CUBLAS_STATUS_INVALID_VALUE, "null count");
    CHECK(heuristic(nullptr, desc, la, lb, ld, ld, big).status == CUBLAS_STATUS_NOT_INITIALIZED,
          "null handle");
    CHECK(heuristic(h, desc, la, lb, ld, ld, nullptr).status == CUBLAS_STATUS_INVALID_VALUE,
          "null pref");

    // Workspace limits and the reduction scheme.
    cublasLtMatmulPreference_t dflt;
    cublasLtMatmulPreferenceCreate(&dflt);
    Found d = heuristic(h, desc, la, lb, ld, ld, dflt);
    CHECK(d.ids() == std::vector<int>({kTile64, kAligned16, kGeneral}), "default pref: %s",
          ids_str(d.ids()).c_str());
    auto shy = make_pref(need - 1, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    CHECK(heuristic(h, desc, la, lb, ld, ld, shy).count == 3, "need - 1 bytes");
    auto exact = make_pref(need, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE);
    Found e = heuristic(h, desc, la, lb, ld, ld, exact);
    CHECK(e.count == 4 && e.r[2].workspaceSize == need, "need bytes: %d", e.count);
    auto inplace = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_INPLACE |
                                           CUBLASLT_REDUCTION_SCHEME_OUTPUT_TYPE);
    CHECK(heuristic(h, desc, la, lb, ld, ld, inplace).ids() ==
              std::vector<int>({kTile64, kAligned16, kGeneral}),
          "no compute-type reduction, no splitk2");
    auto none = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_NONE);
    CHECK(heuristic(h, desc, la, lb, ld, ld, none).count == 3, "reduction NONE");

    // Ragged n, odd lds: splitk2 then general.
    auto lb100 = layout(CUDA_R_16F, 100, 100, 100), la100 = layout(CUDA_R_16F, 100, 144, 100),
         ld100 = layout(CUDA_R_16F, 144, 100, 144);
    Found r = heuristic(h, desc, la100, lb100, ld100, ld100, big);
    CHECK(r.ids() == std::vector<int>({kSplitK2, kGeneral}), "ragged: %s", ids_str(r.ids()).c_str());
    CHECK(heuristic(h, desc, la100, lb100, ld100, ld100, dflt).ids() == std::vector<int>({kGeneral}),
          "ragged, no workspace");

    // Nothing fits: an alignment promise below 16 bytes, or an epilogue not modelled.
    auto a8 = make_pref(32 << 20, CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE, 8);
    Found n8 = heuristic(h, desc, la, lb, ld, ld, a8);
    CHECK(n8.status == CUBLAS_STATUS_NOT_SUPPORTED && n8.count == 0, "8-byte alignment: %s %d",
          status_name(n8.status), n8.count);
    auto gelu = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_GELU, nullptr);
    Found g = heuristic(h, gelu, la, lb, ld, ld, big);
    CHECK(g.status == CUBLAS_STATUS_NOT_SUPPORTED && g.count == 0, "gelu: %s %d",
          status_name(g.status), g.count);
    auto waves = make_pref(32 << 20);
    float w = 1e-6f;
    CHECK(cublasLtMatmulPreferenceSetAttribute(waves, CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, &w,
                                               4) == 0, "waves");
    CHECK(heuristic(h, desc, la, lb, ld, ld, waves).status == CUBLAS_STATUS_NOT_SUPPORTED,
          "max waves");
    auto short_ld = layout(CUDA_R_16F, 144, 128, 100);
    CHECK(heuristic(h, desc, la, lb, short_ld, short_ld, big).status ==
              CUBLAS_STATUS_INVALID_VALUE, "heuristic: ld < rows");

    // gemm.rs: the heuristic at the bucket (128 rows), run at the exact count (100): refused
    // NOT_SUPPORTED; the heuristic at the exact shape then gives one that runs.
    {
        const uint64_t o = 144, in = 48;
        uint16_t* w = static_cast<uint16_t*>(dev_alloc(o * in * 2));
        uint16_t* x = static_cast<uint16_t*>(dev_alloc(100 * in * 2));
        uint16_t* out = static_cast<uint16_t*>(dev_alloc(100 * o * 2));
        uint16_t* b = static_cast<uint16_t*>(dev_alloc(o * 2));
        void* ws = dev_alloc(32 << 20);
        auto bd = make_desc(CUBLAS_OP_T, CUBLAS_OP_N, CUBLASLT_EPILOGUE_BIAS, b);
        auto a = layout(CUDA_R_16F, in, o, in), b128 = layout(CUDA_R_16F, in, 128, in),
             d128 = layout(CUDA_R_16F, o, 128, o), b100 = layout(CUDA_R_16F, in, 100, in),
             d100 = layout(CUDA_R_16F, o, 100, o);
        Found bucket = heuristic(h, bd, a, b128, d128, d128, big, 1);
        CHECK(bucket.count == 1 && algo_id(bucket.r[0].algo) == kTile64, "bucket choice");
        float one = 1, zero = 0;
        CHECK(cublasLtMatmul(h, bd, &one, w, a, x, b100, &zero, out, d100, out, d100,
                             &bucket.r[0].algo, ws, 32 << 20, nullptr) ==
                  CUBLAS_STATUS_NOT_SUPPORTED, "bucket algo at 100 rows");
        Found ex = heuristic(h, bd, a, b100, d100, d100, big, 1);
        CHECK(ex.count == 1 && algo_id(ex.r[0].algo) == kAligned16, "exact choice %d",
              ex.count ? algo_id(ex.r[0].algo) : -1);
        CHECK(cublasLtMatmul(h, bd, &one, w, a, x, b100, &zero, out, d100, out, d100,
                             &ex.r[0].algo, ws, 32 << 20, nullptr) == CUBLAS_STATUS_SUCCESS,
              "exact algo");
        CHECK(stub::queue.size() == 1, "one op");
        flush();
        cublasLtMatmulDescDestroy(bd);
        for (auto l : {a, b128, d128, b100, d100}) cublasLtMatrixLayoutDestroy(l);
        for (void* p : {(void*)w, (void*)x, (void*)out, (void*)b, ws}) {
            dev_unregister(p);
            std::free(p);
        }
    }
    for (auto p : {big, dflt, shy, exact, inplace, none, a8, waves})
        cublasLtMatmulPreferenceDestroy(p);
    for (auto l : {la, lb, ld, lb100, la100, ld100, short_ld}) cublasLtMatrixLayoutDestroy(l);
    cublasLtMatmulDescDestroy(desc);
    cublasLtMatmulDescDestroy(gelu);
}

void test_attributes() {
    cublasLtMatmulDesc_t d;
    CHECK(cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F) == 0, "create");
    CHECK(cublasLtMatmulDescCreate(nullptr, CUBLAS_COMPUTE_32F, CUDA_R_32F) ==
              CUBLAS_STATUS_INVALID_VALUE, "create into null");
    uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, 8) ==
              CUBLAS_STATUS_INVALID_VALUE, "wrong size");
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, nullptr, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "null buffer");
    uint32_t bogus = 3;
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &bogus, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "not an epilogue");
    CHECK(cublasLtMatmulDescSetAttribute(d, cublasLtMatmulDescAttributes_t(9), &epi, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "no attribute 9");
    int8_t fast = 1;
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast, 1) ==
              CUBLAS_STATUS_NOT_SUPPORTED, "fast accum not modelled");
    CHECK(cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, 4) == 0, "set");
    uint32_t got = 0;
    size_t written = 0;
    CHECK(cublasLtMatmulDescGetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, nullptr, 0,
                                         &written) == 0 && written == 4, "size query");
    CHECK(cublasLtMatmulDescGetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &got, 4, &written) ==
              0 && got == CUBLASLT_EPILOGUE_BIAS, "read back");
    int32_t bias_type = 0;
    CHECK(cublasLtMatmulDescGetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, 4,
                                         nullptr) == 0 && bias_type == -1, "bias type default");
    cublasLtMatmulDescDestroy(d);
    CHECK(cublasLtMatmulDescGetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &got, 4, &written) ==
              CUBLAS_STATUS_INVALID_VALUE, "get on destroyed");

    cublasLtMatrixLayout_t l = layout(CUDA_R_16F, 3, 4, 5);
    uint64_t rows = 0;
    int64_t ld = 0;
    CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &rows, 8, nullptr) ==
              0 && rows == 3, "rows");
    CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_LD, &ld, 8, nullptr) == 0 &&
              ld == 5, "ld");
    ld = 9;
    CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_LD, &ld, 8) == 0, "set ld");
    CHECK(cublasLtMatrixLayoutGetAttribute(l, CUBLASLT_MATRIX_LAYOUT_LD, &ld, 4, nullptr) ==
              CUBLAS_STATUS_INVALID_VALUE, "short read");
    int32_t zero = 0;
    CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &zero, 4) ==
              CUBLAS_STATUS_INVALID_VALUE, "batch 0");
    cublasLtMatrixLayoutDestroy(l);

    cublasLtMatmulPreference_t p;
    cublasLtMatmulPreferenceCreate(&p);
    uint64_t ws = 7;
    uint32_t mask = 0, align = 0;
    CHECK(cublasLtMatmulPreferenceGetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, 8,
                                               nullptr) == 0 && ws == 0, "default workspace 0");
    CHECK(cublasLtMatmulPreferenceGetAttribute(p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                               &mask, 4, nullptr) == 0 && mask == 7, "mask");
    CHECK(cublasLtMatmulPreferenceGetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                               &align, 4, nullptr) == 0 && align == 256, "align");
    mask = 8;
    CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                               &mask, 4) == CUBLAS_STATUS_INVALID_VALUE, "mask 8");
    align = 24;
    CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                               &align, 4) == CUBLAS_STATUS_INVALID_VALUE, "24");
    CHECK(cublasLtMatmulPreferenceSetAttribute(p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                               4) == CUBLAS_STATUS_INVALID_VALUE, "u64 as u32");
    cublasLtMatmulPreferenceDestroy(p);
}

}  // namespace

int main() {
    cublasLtHandle_t h = nullptr;
    CHECK(cublasLtCreate(&h) == CUBLAS_STATUS_SUCCESS && h, "create handle");
    CHECK(cublasLtCreate(nullptr) == CUBLAS_STATUS_INVALID_VALUE, "create into null");
    test_attributes();
    test_rounding(h);
    test_deferred(h);
    test_refusals(h);
    test_heuristic(h);
    test_numerics(h);
    CHECK(stub::queue.empty(), "ops left unflushed: %zu", stub::queue.size());
    CHECK(cublasLtDestroy(h) == CUBLAS_STATUS_SUCCESS, "destroy handle");
    CHECK(cublasLtDestroy(nullptr) == CUBLAS_STATUS_NOT_INITIALIZED, "destroy null handle");
    std::printf("%d checks, %d failed\n", checks, failures);
    return failures ? 1 : 0;
}
