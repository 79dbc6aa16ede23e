// The software GPU's stand-in for libcublasLt.so.13: the part of cuBLASLt that
// src/backend/cuda/gemm.rs uses through cudarc 0.19 (handles, matmul descriptors, matrix
// layouts, preferences, the algorithm heuristic and cublasLtMatmul), with the real C signatures
// and status codes (see cublaslt_types.h).
//
// It is stricter than the real library, never looser:
//   - One problem family: D = alpha * op(A) * op(B) + beta * C (+ bias down D's rows, optionally
//     ReLU), A/B/C/D all CUDA_R_16F or all CUDA_R_16BF, column-major, one batch, compute
//     CUBLAS_COMPUTE_32F with scale type CUDA_R_32F, alpha/beta host pointers read at call time.
//     Anything else is refused with CUBLAS_STATUS_NOT_SUPPORTED (the real library does more).
//   - Every check a real call could fail (or leave undefined) is made at call time, with the
//     real status: null/destroyed handle -> NOT_INITIALIZED; null/destroyed/wrong-kind
//     descriptor, bad leading dimension, mismatched shapes, misaligned or overlapping pointers,
//     a garbage algorithm -> INVALID_VALUE; an algorithm whose constraints the problem breaks,
//     too small a workspace -> NOT_SUPPORTED. An operand that is not inside one live device
//     allocation is a device fault (sg::fault) and CUBLAS_STATUS_EXECUTION_FAILED.
//   - Handles are numbers, never pointers: a destroyed object's number is never reused, so a
//     use after destroy is always caught, never a crash.
//   - The work itself is handed to sg::enqueue and runs later, in stream order (or is recorded
//     into a graph); it reads A, B, C and the bias when it runs, as a kernel would.
//
// The algorithm catalogue (each with its own accumulation order, so that code which depends on
// one algorithm's rounding shows up in tests):
//   id 0 "tile64":    n (D's columns) a multiple of 64; sums k in order.          No workspace.
//   id 1 "general":   any shape; four interleaved partial sums (p mod 4), added
//                     as (s0 + s1) + (s2 + s3).                                    No workspace.
//   id 2 "splitk2":   k >= 2; two fp32 partial sums (k halves) written to the workspace, then
//                     reduced in fp32 (reduction scheme COMPUTE_TYPE).  Workspace:
//                     8 * m * n bytes rounded up to 256, 256-byte aligned.
//   id 3 "aligned16": every ld a multiple of 8 elements (16 bytes); sums blocks of 8 in order,
//                     then adds the block sums.                                    No workspace.
// The heuristic offers, in this order of preference, those that fit: tile64, aligned16,
// splitk2, general. Every algorithm needs 16-byte aligned A/B/C/D/bias pointers; an algorithm
// the heuristic returns also records the alignment the preference promised for A, B, C and D
// (MIN_ALIGNMENT_*_BYTES, default 256, capped at 256) and cublasLtMatmul refuses a pointer
// that is less aligned than that, as a real kernel chosen under that promise may fault. A
// preference promising less than 16 bytes leaves no algorithm. The algorithm struct carries a
// magic number and a checksum: a zeroed or garbage one is refused with INVALID_VALUE.

#include "cublaslt_types.h"
#include "internal.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <exception>
#include <string>
#include <system_error>
#include <thread>
#include <unordered_map>

#define SG_LT_API extern "C" __attribute__((visibility("default")))

namespace {

// ---- fp16 / bf16 <-> float -----------------------------------------------------------------

float bits_to_f32(uint32_t b) {
    float f;
    std::memcpy(&f, &b, 4);
    return f;
}

uint32_t f32_to_bits(float f) {
    uint32_t b;
    std::memcpy(&b, &f, 4);
    return b;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = uint32_t(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_to_f32(sign | 0x7f800000u | (man << 13));
    if (exp != 0) return bits_to_f32(sign | ((exp + 112) << 23) | (man << 13));
    float v = float(man) * 0x1p-24f;  // subnormal or zero: exact
    return sign ? -v : v;
}

// Round to nearest, ties to even; overflow to infinity; NaN stays a (quiet) NaN.
uint16_t f32_to_f16(float f) {
    uint32_t x = f32_to_bits(f);
    uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
    if (a >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520: rounds to infinity
    if (a >= 0x38800000u) {                                 // normal in fp16 (>= 2^-14)
        uint32_t h = ((((a >> 23) - 112) << 10) | ((a >> 13) & 0x3ffu));
        uint32_t rem = a & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
        return uint16_t(sign | h);
    }
    if (a <= 0x33000000u) return sign;  // <= 2^-25: ties to even gives zero
    uint32_t man = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - (a >> 23);  // 14..24
    uint32_t h = man >> shift;
    uint32_t rem = man & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return uint16_t(sign | h);
}

float bf16_to_f32(uint16_t h) { return bits_to_f32(uint32_t(h) << 16); }

uint16_t f32_to_bf16(float f) {
    uint32_t x = f32_to_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return uint16_t(x >> 16);
}

// ---- Objects --------------------------------------------------------------------------------

enum class Kind : uint64_t { Handle = 1, Desc = 2, Layout = 3, Pref = 4 };

constexpr int kMaxAttr = 40;
constexpr uint64_t kHandleTag = 0x5347ull << 48;  // "SG"

struct Object {
    Kind kind;
    uint64_t attr[kMaxAttr];  // raw little-endian bits of each attribute, zero-extended
};

struct Registry {
    std::mutex mu;
    std::unordered_map<uint64_t, Object> live;
    uint64_t next = 1;
};

// Never destroyed: a handle dropped during process exit must still find it.
Registry& registry() {
    static Registry* r = new Registry;
    return *r;
}

uint64_t make_handle(Kind kind, const Object& o) {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    uint64_t id = kHandleTag | (uint64_t(kind) << 40) | (r.next++ & ((1ull << 40) - 1));
    r.live.emplace(id, o);
    return id;
}

// The live object behind `h` of kind `kind`, or null. Caller holds the registry lock.
Object* find_locked(const void* h, Kind kind) {
    uint64_t id = uint64_t(reinterpret_cast<uintptr_t>(h));
    if (id == 0 || (id >> 48) != (kHandleTag >> 48) || ((id >> 40) & 0xff) != uint64_t(kind))
        return nullptr;
    auto it = registry().live.find(id);
    if (it == registry().live.end() || it->second.kind != kind) return nullptr;
    return &it->second;
}

bool snapshot(const void* h, Kind kind, Object* out) {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    Object* o = find_locked(h, kind);
    if (!o) return false;
    *out = *o;
    return true;
}

bool destroy(const void* h, Kind kind) {
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    if (!find_locked(h, kind)) return false;
    r.live.erase(uint64_t(reinterpret_cast<uintptr_t>(h)));
    return true;
}

// ---- Attributes -----------------------------------------------------------------------------

// Whether a value may be stored: SUCCESS, INVALID_VALUE (not a value of the type) or
// NOT_SUPPORTED (a value the stand-in does not model).
typedef cublasStatus_t (*Check)(uint64_t bits);

struct Spec {
    uint32_t id;
    uint32_t size;    // bytes; 0: a real attribute this stand-in does not model
    Check check;
};

int32_t as_i32(uint64_t b) { return int32_t(uint32_t(b)); }

bool valid_dtype(int64_t t) { return t >= 0 && t <= 33; }

cublasStatus_t any_value(uint64_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t check_compute(uint64_t b) {
    int32_t v = as_i32(b);
    return ((v >= 64 && v <= 75 && v != 66 && v != 67) || v == 77 || v == 78 || v == 79)
               ? CUBLAS_STATUS_SUCCESS
               : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_dtype(uint64_t b) {
    return valid_dtype(as_i32(b)) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_pointer_mode(uint64_t b) {
    int32_t v = as_i32(b);
    return v >= 0 && v <= 4 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_op(uint64_t b) {
    int32_t v = as_i32(b);
    return v >= 0 && v <= 3 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_fill(uint64_t b) {
    int32_t v = as_i32(b);
    return v >= 0 && v <= 2 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_epilogue(uint64_t b) {
    switch (uint32_t(b)) {
        case 1: case 2: case 4: case 6: case 32: case 36: case 130: case 134: case 136:
        case 152: case 160: case 164: case 192: case 208: case 256: case 512:
            return CUBLAS_STATUS_SUCCESS;
        default:
            return CUBLAS_STATUS_INVALID_VALUE;
    }
}
cublasStatus_t check_nonneg_i32(uint64_t b) {
    return as_i32(b) >= 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_bias_type(uint64_t b) {
    int32_t v = as_i32(b);
    return v == -1 || valid_dtype(v) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_order(uint64_t b) {
    int32_t v = as_i32(b);
    return v >= 0 && v <= 4 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_batch_count(uint64_t b) {
    return as_i32(b) >= 1 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_batch_mode(uint64_t b) {
    int32_t v = as_i32(b);
    return v == 0 || v == 1 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_search(uint64_t b) {
    uint32_t v = uint32_t(b);
    if (v == 0) return CUBLAS_STATUS_SUCCESS;
    return v <= 9 ? CUBLAS_STATUS_NOT_SUPPORTED : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_reduction_mask(uint64_t b) {
    return uint32_t(b) <= 7 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_alignment(uint64_t b) {
    uint32_t v = uint32_t(b);
    return v != 0 && (v & (v - 1)) == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}
cublasStatus_t check_waves(uint64_t b) {
    float f = bits_to_f32(uint32_t(b));
    return f >= 0.0f ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;  // NaN fails too
}
cublasStatus_t check_impl_mask(uint64_t b) {
    return b == ~0ull ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

const Spec kDescSpecs[] = {
    {CUBLASLT_MATMUL_DESC_COMPUTE_TYPE, 4, check_compute},
    {CUBLASLT_MATMUL_DESC_SCALE_TYPE, 4, check_dtype},
    {CUBLASLT_MATMUL_DESC_POINTER_MODE, 4, check_pointer_mode},
    {CUBLASLT_MATMUL_DESC_TRANSA, 4, check_op},
    {CUBLASLT_MATMUL_DESC_TRANSB, 4, check_op},
    {CUBLASLT_MATMUL_DESC_TRANSC, 4, check_op},
    {CUBLASLT_MATMUL_DESC_FILL_MODE, 4, check_fill},
    {CUBLASLT_MATMUL_DESC_EPILOGUE, 4, check_epilogue},
    {CUBLASLT_MATMUL_DESC_BIAS_POINTER, 8, any_value},
    {CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, 8, any_value},
    {CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, 4, check_nonneg_i32},  // a hint: stored, no effect
    {CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, 4, check_bias_type},
    // Real attributes not modelled: setting or reading them is NOT_SUPPORTED.
    {11, 0, nullptr}, {12, 0, nullptr}, {13, 0, nullptr}, {14, 0, nullptr}, {17, 0, nullptr},
    {18, 0, nullptr}, {19, 0, nullptr}, {20, 0, nullptr}, {21, 0, nullptr}, {22, 0, nullptr},
    {23, 0, nullptr}, {24, 0, nullptr}, {25, 0, nullptr}, {31, 0, nullptr}, {32, 0, nullptr},
    {33, 0, nullptr}, {34, 0, nullptr}, {35, 0, nullptr}, {36, 0, nullptr}, {37, 0, nullptr},
    {38, 0, nullptr},
};

const Spec kLayoutSpecs[] = {
    {CUBLASLT_MATRIX_LAYOUT_TYPE, 4, check_dtype},
    {CUBLASLT_MATRIX_LAYOUT_ORDER, 4, check_order},
    {CUBLASLT_MATRIX_LAYOUT_ROWS, 8, any_value},
    {CUBLASLT_MATRIX_LAYOUT_COLS, 8, any_value},
    {CUBLASLT_MATRIX_LAYOUT_LD, 8, any_value},
    {CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, 4, check_batch_count},
    {CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, 8, any_value},
    {CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET, 8, any_value},
    {CUBLASLT_MATRIX_LAYOUT_BATCH_MODE, 4, check_batch_mode},
};

const Spec kPrefSpecs[] = {
    {CUBLASLT_MATMUL_PREF_SEARCH_MODE, 4, check_search},
    {CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, 8, any_value},
    {CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, 4, check_reduction_mask},
    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, 4, check_alignment},
    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, 4, check_alignment},
    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, 4, check_alignment},
    {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, 4, check_alignment},
    {CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT, 4, check_waves},
    {CUBLASLT_MATMUL_PREF_IMPL_MASK, 8, check_impl_mask},
};

template <size_t N>
const Spec* find_spec(const Spec (&specs)[N], uint32_t id) {
    for (const Spec& s : specs)
        if (s.id == id) return &s;
    return nullptr;
}

template <size_t N>
cublasStatus_t set_attr(const void* h, Kind kind, const Spec (&specs)[N], uint32_t id,
                        const void* buf, size_t size) {
    const Spec* s = find_spec(specs, id);
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    Object* o = find_locked(h, kind);
    if (!o || !s) return CUBLAS_STATUS_INVALID_VALUE;
    if (s->size == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (!buf || size != s->size) return CUBLAS_STATUS_INVALID_VALUE;
    uint64_t bits = 0;
    std::memcpy(&bits, buf, size);
    cublasStatus_t st = s->check(bits);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    o->attr[id] = bits;
    return CUBLAS_STATUS_SUCCESS;
}

// sizeInBytes 0: *sizeWritten gets the size needed; otherwise it must be the attribute's size.
template <size_t N>
cublasStatus_t get_attr(const void* h, Kind kind, const Spec (&specs)[N], uint32_t id, void* buf,
                        size_t size, size_t* written) {
    const Spec* s = find_spec(specs, id);
    Registry& r = registry();
    std::lock_guard<std::mutex> g(r.mu);
    Object* o = find_locked(h, kind);
    if (!o || !s) return CUBLAS_STATUS_INVALID_VALUE;
    if (s->size == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (size == 0) {
        if (!written) return CUBLAS_STATUS_INVALID_VALUE;
        *written = s->size;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (!buf || size != s->size) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(buf, &o->attr[id], size);
    if (written) *written = size;
    return CUBLAS_STATUS_SUCCESS;
}

// ---- Snapshots of the descriptors -----------------------------------------------------------

struct Layout {
    int32_t type, order, batch, batch_mode;
    uint64_t rows, cols;
    int64_t ld, plane_offset;
};

struct Desc {
    int32_t compute, scale, pointer_mode, ta, tb, tc, fill, bias_type;
    uint32_t epilogue;
    uint64_t bias;
};

struct Pref {
    uint64_t max_workspace;
    uint32_t reduction_mask;
    uint32_t align[4];  // A, B, C, D
    float max_waves;
};

bool get_layout(const void* h, Layout* l) {
    Object o;
    if (!snapshot(h, Kind::Layout, &o)) return false;
    l->type = as_i32(o.attr[CUBLASLT_MATRIX_LAYOUT_TYPE]);
    l->order = as_i32(o.attr[CUBLASLT_MATRIX_LAYOUT_ORDER]);
    l->rows = o.attr[CUBLASLT_MATRIX_LAYOUT_ROWS];
    l->cols = o.attr[CUBLASLT_MATRIX_LAYOUT_COLS];
    l->ld = int64_t(o.attr[CUBLASLT_MATRIX_LAYOUT_LD]);
    l->batch = as_i32(o.attr[CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT]);
    l->plane_offset = int64_t(o.attr[CUBLASLT_MATRIX_LAYOUT_PLANE_OFFSET]);
    l->batch_mode = as_i32(o.attr[CUBLASLT_MATRIX_LAYOUT_BATCH_MODE]);
    return true;
}

bool get_desc(const void* h, Desc* d) {
    Object o;
    if (!snapshot(h, Kind::Desc, &o)) return false;
    d->compute = as_i32(o.attr[CUBLASLT_MATMUL_DESC_COMPUTE_TYPE]);
    d->scale = as_i32(o.attr[CUBLASLT_MATMUL_DESC_SCALE_TYPE]);
    d->pointer_mode = as_i32(o.attr[CUBLASLT_MATMUL_DESC_POINTER_MODE]);
    d->ta = as_i32(o.attr[CUBLASLT_MATMUL_DESC_TRANSA]);
    d->tb = as_i32(o.attr[CUBLASLT_MATMUL_DESC_TRANSB]);
    d->tc = as_i32(o.attr[CUBLASLT_MATMUL_DESC_TRANSC]);
    d->fill = as_i32(o.attr[CUBLASLT_MATMUL_DESC_FILL_MODE]);
    d->bias_type = as_i32(o.attr[CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE]);
    d->epilogue = uint32_t(o.attr[CUBLASLT_MATMUL_DESC_EPILOGUE]);
    d->bias = o.attr[CUBLASLT_MATMUL_DESC_BIAS_POINTER];
    return true;
}

Pref default_pref() {
    Pref p;
    p.max_workspace = 0;
    p.reduction_mask = CUBLASLT_REDUCTION_SCHEME_MASK;
    for (uint32_t& a : p.align) a = 256;
    p.max_waves = 0.0f;
    return p;
}

bool get_pref(const void* h, Pref* p) {
    Object o;
    if (!snapshot(h, Kind::Pref, &o)) return false;
    p->max_workspace = o.attr[CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES];
    p->reduction_mask = uint32_t(o.attr[CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK]);
    for (int i = 0; i < 4; i++)
        p->align[i] = uint32_t(o.attr[CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i]);
    p->max_waves = bits_to_f32(uint32_t(o.attr[CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT]));
    return true;
}

// ---- The problem ----------------------------------------------------------------------------

constexpr uint64_t kMaxDim = (1ull << 31) - 1;

struct Problem {
    uint64_t m, n, k;
    bool ta, tb;
    int32_t type;  // of A, B, C, D and the bias
    uint64_t a_rows, a_cols, b_rows, b_cols;
    int64_t lda, ldb, ldc, ldd;
    bool bias, relu;
};

// Element count a column-major rows x cols matrix with leading dimension ld spans.
uint64_t span_elems(uint64_t rows, uint64_t cols, int64_t ld) {
    return (cols - 1) * uint64_t(ld) + rows;
}

cublasStatus_t check_problem(const Desc& d, const Layout& la, const Layout& lb, const Layout& lc,
                             const Layout& ld, Problem* p) {
    const Layout* ls[4] = {&la, &lb, &lc, &ld};
    for (const Layout* l : ls)
        if (l->order != CUBLASLT_ORDER_COL || l->batch != 1 || l->batch_mode != 0 ||
            l->plane_offset != 0)
            return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((d.ta != CUBLAS_OP_N && d.ta != CUBLAS_OP_T) || (d.tb != CUBLAS_OP_N && d.tb != CUBLAS_OP_T))
        return CUBLAS_STATUS_NOT_SUPPORTED;
    for (const Layout* l : ls) {
        if (l->rows < 1 || l->rows > kMaxDim || l->cols < 1 || l->cols > kMaxDim)
            return CUBLAS_STATUS_INVALID_VALUE;
        if (l->ld < int64_t(l->rows) || l->ld > int64_t(kMaxDim)) return CUBLAS_STATUS_INVALID_VALUE;
    }
    p->ta = d.ta == CUBLAS_OP_T;
    p->tb = d.tb == CUBLAS_OP_T;
    p->m = p->ta ? la.cols : la.rows;
    p->k = p->ta ? la.rows : la.cols;
    uint64_t bk = p->tb ? lb.cols : lb.rows;
    p->n = p->tb ? lb.rows : lb.cols;
    if (bk != p->k || lc.rows != p->m || ld.rows != p->m || lc.cols != p->n || ld.cols != p->n)
        return CUBLAS_STATUS_INVALID_VALUE;
    if ((la.type != CUDA_R_16F && la.type != CUDA_R_16BF) || lb.type != la.type ||
        lc.type != la.type || ld.type != la.type)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F ||
        d.pointer_mode != CUBLASLT_POINTER_MODE_HOST || d.tc != CUBLAS_OP_N ||
        d.fill != CUBLAS_FILL_MODE_FULL)
        return CUBLAS_STATUS_NOT_SUPPORTED;
    switch (d.epilogue) {
        case CUBLASLT_EPILOGUE_DEFAULT: p->bias = false; p->relu = false; break;
        case CUBLASLT_EPILOGUE_BIAS: p->bias = true; p->relu = false; break;
        case CUBLASLT_EPILOGUE_RELU: p->bias = false; p->relu = true; break;
        case CUBLASLT_EPILOGUE_RELU_BIAS: p->bias = true; p->relu = true; break;
        default: return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (p->bias && d.bias_type != -1 && d.bias_type != ld.type) return CUBLAS_STATUS_NOT_SUPPORTED;
    p->type = la.type;
    p->a_rows = la.rows;
    p->a_cols = la.cols;
    p->b_rows = lb.rows;
    p->b_cols = lb.cols;
    p->lda = la.ld;
    p->ldb = lb.ld;
    p->ldc = lc.ld;
    p->ldd = ld.ld;
    return CUBLAS_STATUS_SUCCESS;
}

// ---- Algorithms -----------------------------------------------------------------------------

enum AlgoId : uint32_t { kTile64 = 0, kGeneral = 1, kSplitK2 = 2, kAligned16 = 3, kAlgoCount = 4 };
const uint32_t kPreference[kAlgoCount] = {kTile64, kAligned16, kSplitK2, kGeneral};
const char* const kAlgoNames[kAlgoCount] = {"tile64", "general", "splitk2", "aligned16"};
constexpr uint64_t kAlgoMagic = 0x53474c5441474f31ull;  // "SGLTAGO1"
constexpr uint32_t kMinAlign = 16, kMaxAlign = 256;
constexpr float kSmCount = 132.0f;  // only for wavesCount, an estimate

bool algo_fits(uint32_t id, const Problem& p) {
    switch (id) {
        case kTile64: return p.n % 64 == 0;
        case kGeneral: return true;
        case kSplitK2: return p.k >= 2;
        case kAligned16: return p.lda % 8 == 0 && p.ldb % 8 == 0 && p.ldc % 8 == 0 && p.ldd % 8 == 0;
    }
    return false;
}

uint64_t algo_workspace(uint32_t id, const Problem& p) {
    if (id != kSplitK2) return 0;
    return (8 * p.m * p.n + 255) / 256 * 256;  // two fp32 partial sums of D
}

float algo_waves(uint32_t id, const Problem& p) {
    float tiles = float((p.m + 63) / 64) * float((p.n + 63) / 64);
    return (id == kSplitK2 ? 2.0f : 1.0f) * tiles / kSmCount;
}

uint64_t algo_checksum(const cublasLtMatmulAlgo_t& a) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < 7; i++) {
        h ^= a.data[i];
        h *= 0x100000001b3ull;
        h ^= h >> 29;
    }
    return h;
}

struct Algo {
    uint32_t id;
    uint32_t align[4];  // A, B, C, D: what the heuristic was promised
};

cublasLtMatmulAlgo_t encode_algo(const Algo& a) {
    cublasLtMatmulAlgo_t out;
    std::memset(&out, 0, sizeof out);
    out.data[0] = kAlgoMagic;
    out.data[1] = a.id;
    for (int i = 0; i < 4; i++) out.data[2] |= uint64_t(a.align[i]) << (16 * i);
    out.data[7] = algo_checksum(out);
    return out;
}

bool decode_algo(const cublasLtMatmulAlgo_t* in, Algo* a) {
    if (!in || in->data[0] != kAlgoMagic || in->data[7] != algo_checksum(*in) ||
        in->data[1] >= kAlgoCount)
        return false;
    for (int i = 3; i < 7; i++)
        if (in->data[i] != 0) return false;
    a->id = uint32_t(in->data[1]);
    for (int i = 0; i < 4; i++) {
        uint32_t v = uint32_t((in->data[2] >> (16 * i)) & 0xffff);
        if (v < kMinAlign || v > kMaxAlign || (v & (v - 1)) != 0) return false;
        a->align[i] = v;
    }
    return true;
}

// The algorithms that fit, in order of preference; returns how many (at most `max`).
int candidates(const Problem& p, const Pref& pref, cublasLtMatmulHeuristicResult_t* out, int max) {
    for (uint32_t a : pref.align)
        if (a < kMinAlign) return 0;  // every algorithm needs 16-byte aligned operands
    int n = 0;
    for (uint32_t id : kPreference) {
        if (n >= max) break;
        if (!algo_fits(id, p)) continue;
        uint64_t ws = algo_workspace(id, p);
        if (ws > pref.max_workspace) continue;
        if (id == kSplitK2 && !(pref.reduction_mask & CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE))
            continue;
        float waves = algo_waves(id, p);
        if (pref.max_waves > 0.0f && waves > pref.max_waves) continue;
        Algo a;
        a.id = id;
        for (int i = 0; i < 4; i++) a.align[i] = pref.align[i] < kMaxAlign ? pref.align[i] : kMaxAlign;
        cublasLtMatmulHeuristicResult_t& r = out[n++];
        std::memset(&r, 0, sizeof r);
        r.algo = encode_algo(a);
        r.workspaceSize = size_t(ws);
        r.state = CUBLAS_STATUS_SUCCESS;
        r.wavesCount = waves;
    }
    return n;
}

// ---- The operation --------------------------------------------------------------------------

struct Operand {
    const char* name;
    uint64_t addr;
    uint64_t bytes;
};

struct Job {
    Problem p;
    uint32_t algo;
    float alpha, beta;
    uint64_t a, b, c, d, bias, workspace, workspace_bytes;
    std::string what;
};

struct FloatBuf {
    float* v;
    explicit FloatBuf(uint64_t n) : v(new float[n ? n : 1]) {}
    ~FloatBuf() { delete[] v; }
    FloatBuf(const FloatBuf&) = delete;
    FloatBuf& operator=(const FloatBuf&) = delete;
};

float dot_in_order(const float* a, const float* b, uint64_t from, uint64_t to) {
    float acc = 0.0f;
    for (uint64_t p = from; p < to; p++) acc += a[p] * b[p];
    return acc;
}

float dot_interleaved4(const float* a, const float* b, uint64_t k) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (uint64_t p = 0; p < k; p++) s[p & 3] += a[p] * b[p];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

float dot_blocks8(const float* a, const float* b, uint64_t k) {
    float acc = 0.0f;
    for (uint64_t p0 = 0; p0 < k; p0 += 8) {
        uint64_t end = p0 + 8 < k ? p0 + 8 : k;
        acc += dot_in_order(a, b, p0, end);
    }
    return acc;
}

// Eight dot products at once, rows i0..i0+7 of op(A) (a_t: op(A) transposed, k rows of m floats)
// with one row of op(B)^T, each summed exactly as the algorithm's scalar dot product above sums
// it: the eight are independent chains, which the compiler keeps in vector registers. So the
// numerics are the algorithm's, and only the speed changes.
constexpr int kRows = 8;
typedef float V4 __attribute__((vector_size(16)));  // SSE lanes: IEEE per lane, as scalars
struct V8 {
    V4 lo, hi;
};
inline V8 operator+(V8 x, V8 y) { return {x.lo + y.lo, x.hi + y.hi}; }
inline V8& operator+=(V8& x, V8 y) { return x = x + y; }
inline V8 madd(const float* a, float b) {  // a[0..8) * b, as eight scalar products
    V4 lo, hi;
    std::memcpy(&lo, a, sizeof lo);
    std::memcpy(&hi, a + 4, sizeof hi);
    return {lo * b, hi * b};
}
// panel: eight rows of op(A) interleaved, panel[p * 8 + r] = op(A)[i0 + r][p], so the loop
// streams through memory.
void dot8(uint32_t algo, const float* panel, const float* b, uint64_t k, uint64_t from,
          uint64_t to, float out[kRows]) {
    V8 acc = {};
    if (algo == kGeneral) {
        V8 s[4] = {};
        for (uint64_t p = 0; p < k; p++) s[p & 3] += madd(panel + p * kRows, b[p]);
        acc = (s[0] + s[1]) + (s[2] + s[3]);
    } else if (algo == kAligned16) {
        for (uint64_t p0 = 0; p0 < k; p0 += 8) {
            uint64_t end = p0 + 8 < k ? p0 + 8 : k;
            V8 blk = {};
            for (uint64_t p = p0; p < end; p++) blk += madd(panel + p * kRows, b[p]);
            acc += blk;
        }
    } else {  // in order over [from, to): tile64, and each half of splitk2
        for (uint64_t p = from; p < to; p++) acc += madd(panel + p * kRows, b[p]);
    }
    std::memcpy(out, &acc.lo, sizeof acc.lo);
    std::memcpy(out + 4, &acc.hi, sizeof acc.hi);
}

// Columns [j0, j1) of D. at: op(A) as m rows of k floats, a_t the same as panels of eight rows
// (dot8); bt: op(B)^T as n rows of k floats.
void run_columns(const Job& job, const float* at, const float* a_t, const float* bt,
                 const float* bias, uint64_t j0, uint64_t j1) {
    const Problem& p = job.p;
    const bool f16 = p.type == CUDA_R_16F;
    const uint16_t* c = reinterpret_cast<const uint16_t*>(uintptr_t(job.c));
    uint16_t* d = reinterpret_cast<uint16_t*>(uintptr_t(job.d));
    float* part0 = reinterpret_cast<float*>(uintptr_t(job.workspace));
    float* part1 = part0 + p.m * p.n;
    uint64_t half = p.k / 2;
    const uint64_t m8 = p.m - p.m % kRows;  // rows done eight at a time; the rest one by one
    if (job.algo == kSplitK2) {
        // Pass 1: the two partial sums, in the workspace as a real split-K kernel keeps them.
        for (uint64_t j = j0; j < j1; j++) {
            for (uint64_t i = 0; i < m8; i += kRows) {
                dot8(kTile64, a_t + i * p.k, bt + j * p.k, p.k, 0, half, &part0[j * p.m + i]);
                dot8(kTile64, a_t + i * p.k, bt + j * p.k, p.k, half, p.k, &part1[j * p.m + i]);
            }
            for (uint64_t i = m8; i < p.m; i++) {
                part0[j * p.m + i] = dot_in_order(at + i * p.k, bt + j * p.k, 0, half);
                part1[j * p.m + i] = dot_in_order(at + i * p.k, bt + j * p.k, half, p.k);
            }
        }
    }
    float acc8[kRows];
    for (uint64_t j = j0; j < j1; j++) {
        const float* bj = bt + j * p.k;
        for (uint64_t i = 0; i < p.m; i++) {
            const float* ai = at + i * p.k;
            float acc;
            if (job.algo == kSplitK2) {
                acc = part0[j * p.m + i] + part1[j * p.m + i];
            } else if (i < m8) {
                if (i % kRows == 0) dot8(job.algo, a_t + i * p.k, bj, p.k, 0, p.k, acc8);
                acc = acc8[i % kRows];
            } else {
                switch (job.algo) {
                    case kTile64: acc = dot_in_order(ai, bj, 0, p.k); break;
                    case kGeneral: acc = dot_interleaved4(ai, bj, p.k); break;
                    default: acc = dot_blocks8(ai, bj, p.k); break;
                }
            }
            float v = job.alpha * acc;
            if (job.beta != 0.0f) {  // beta 0: C is not read (it may hold NaN), as in cuBLAS
                uint16_t cv = c[i + j * uint64_t(p.ldc)];
                v += job.beta * (f16 ? f16_to_f32(cv) : bf16_to_f32(cv));
            }
            if (p.bias) v += bias[i];
            if (p.relu && v < 0.0f) v = 0.0f;
            d[i + j * uint64_t(p.ldd)] = f16 ? f32_to_f16(v) : f32_to_bf16(v);
        }
    }
}

// The operands a job touches, for the range checks; returns how many.
int operands(const Job& j, Operand* out) {
    const Problem& p = j.p;
    int n = 0;
    out[n++] = {"A", j.a, 2 * span_elems(p.a_rows, p.a_cols, p.lda)};
    out[n++] = {"B", j.b, 2 * span_elems(p.b_rows, p.b_cols, p.ldb)};
    out[n++] = {"C", j.c, 2 * span_elems(p.m, p.n, p.ldc)};
    out[n++] = {"D", j.d, 2 * span_elems(p.m, p.n, p.ldd)};
    if (p.bias) out[n++] = {"bias", j.bias, 2 * p.m};
    if (j.workspace_bytes) out[n++] = {"workspace", j.workspace, j.workspace_bytes};
    return n;
}

// Faults on the first operand that is not inside one live device allocation.
bool ranges_ok(const Job& j, const char* when) {
    Operand ops[6];
    int n = operands(j, ops);
    for (int i = 0; i < n; i++) {
        std::string why;
        if (!sg::device_range(reinterpret_cast<const void*>(uintptr_t(ops[i].addr)), ops[i].bytes,
                              &why)) {
            char range[96];
            std::snprintf(range, sizeof range, " [0x%llx, +%llu bytes)",
                          (unsigned long long)ops[i].addr, (unsigned long long)ops[i].bytes);
            std::string msg = j.what;
            msg.append(": operand ").append(ops[i].name).append(range);
            msg.append(" is not inside one live device allocation ").append(when);
            sg::fault(msg.append(": ").append(why));
            return false;
        }
    }
    return true;
}

void run_job_checked(const Job& job) {
    const Problem& p = job.p;
    const bool f16 = p.type == CUDA_R_16F;
    auto load = [f16](const uint16_t* base, uint64_t idx) {
        return f16 ? f16_to_f32(base[idx]) : bf16_to_f32(base[idx]);
    };
    const uint16_t* a = reinterpret_cast<const uint16_t*>(uintptr_t(job.a));
    const uint16_t* b = reinterpret_cast<const uint16_t*>(uintptr_t(job.b));
    FloatBuf at(p.m * p.k), a_t(p.m * p.k), bt(p.n * p.k), bias(p.m);
    for (uint64_t i = 0; i < p.m; i++)
        for (uint64_t q = 0; q < p.k; q++) {
            float v = load(a, p.ta ? q + i * uint64_t(p.lda) : i + q * uint64_t(p.lda));
            at.v[i * p.k + q] = v;
            if (i < p.m - p.m % kRows)  // dot8's panels; the last m % 8 rows go one by one
                a_t.v[(i - i % kRows) * p.k + q * kRows + i % kRows] = v;
        }
    for (uint64_t j = 0; j < p.n; j++)
        for (uint64_t q = 0; q < p.k; q++)
            bt.v[j * p.k + q] = load(b, p.tb ? j + q * uint64_t(p.ldb) : q + j * uint64_t(p.ldb));
    if (p.bias) {
        const uint16_t* bias_ptr = reinterpret_cast<const uint16_t*>(uintptr_t(job.bias));
        for (uint64_t i = 0; i < p.m; i++) bias.v[i] = load(bias_ptr, i);
    }
    // Every element's arithmetic is fixed by the algorithm alone, so splitting the columns over
    // threads changes no bit of the result.
    uint64_t work = p.m * p.n * p.k;
    unsigned threads = std::thread::hardware_concurrency();
    if (threads > 16) threads = 16;
    if (work < (1ull << 22) || threads < 2 || p.n < 2) {
        run_columns(job, at.v, a_t.v, bt.v, bias.v, 0, p.n);
        return;
    }
    if (threads > p.n) threads = unsigned(p.n);
    std::thread pool[16];
    uint64_t per = (p.n + threads - 1) / threads;
    for (unsigned t = 0; t < threads; t++) {
        uint64_t j0 = t * per, j1 = j0 + per < p.n ? j0 + per : p.n;
        if (j0 >= j1) break;
        try {
            pool[t] = std::thread([&job, &at, &a_t, &bt, &bias, j0, j1] {
                run_columns(job, at.v, a_t.v, bt.v, bias.v, j0, j1);
            });
        } catch (const std::system_error&) {  // no thread to be had: the rest on this one
            run_columns(job, at.v, a_t.v, bt.v, bias.v, j0, p.n);
            break;
        }
    }
    for (std::thread& t : pool)
        if (t.joinable()) t.join();
}

void run_job(const Job& job) {
    // The memory may have been freed since the call: a kernel would fault on it now.
    if (!ranges_ok(job, "when the matmul ran")) return;
    try {
        run_job_checked(job);
    } catch (const std::exception& e) {  // nothing may escape into the stream's runner
        std::string msg = job.what;
        sg::fault(msg.append(": the stand-in failed to run it: ").append(e.what()));
    }
}

bool overlap(const Operand& x, const Operand& y) {
    return x.addr < y.addr + y.bytes && y.addr < x.addr + x.bytes;
}

bool is_host_readable_scalar(const void* p) {
    std::string why;
    // A host-pointer-mode scalar in device memory would be a host access to device memory.
    return !sg::device_range(p, sizeof(float), &why);
}

}  // namespace

// ---- The exported C API ---------------------------------------------------------------------

SG_LT_API cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
    if (!handle) return CUBLAS_STATUS_INVALID_VALUE;
    Object o;
    std::memset(&o, 0, sizeof o);
    o.kind = Kind::Handle;
    *handle = reinterpret_cast<cublasLtHandle_t>(uintptr_t(make_handle(Kind::Handle, o)));
    return CUBLAS_STATUS_SUCCESS;
}

SG_LT_API cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
    return destroy(handle, Kind::Handle) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_INITIALIZED;
}

SG_LT_API cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc,
                                                  cublasComputeType_t computeType,
                                                  cudaDataType_t scaleType) {
    if (!desc || check_compute(uint32_t(computeType)) != CUBLAS_STATUS_SUCCESS ||
        !valid_dtype(int32_t(scaleType)))
        return CUBLAS_STATUS_INVALID_VALUE;
    Object o;
    std::memset(&o, 0, sizeof o);
    o.kind = Kind::Desc;
    o.attr[CUBLASLT_MATMUL_DESC_COMPUTE_TYPE] = uint32_t(computeType);
    o.attr[CUBLASLT_MATMUL_DESC_SCALE_TYPE] = uint32_t(scaleType);
    o.attr[CUBLASLT_MATMUL_DESC_POINTER_MODE] = CUBLASLT_POINTER_MODE_HOST;
    o.attr[CUBLASLT_MATMUL_DESC_TRANSA] = CUBLAS_OP_N;
    o.attr[CUBLASLT_MATMUL_DESC_TRANSB] = CUBLAS_OP_N;
    o.attr[CUBLASLT_MATMUL_DESC_TRANSC] = CUBLAS_OP_N;
    o.attr[CUBLASLT_MATMUL_DESC_FILL_MODE] = CUBLAS_FILL_MODE_FULL;
    o.attr[CUBLASLT_MATMUL_DESC_EPILOGUE] = CUBLASLT_EPILOGUE_DEFAULT;
    o.attr[CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE] = uint32_t(-1);
    *desc = reinterpret_cast<cublasLtMatmulDesc_t>(uintptr_t(make_handle(Kind::Desc, o)));
    return CUBLAS_STATUS_SUCCESS;
}

SG_LT_API cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
    return destroy(desc, Kind::Desc) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

SG_LT_API cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc,
                                                        cublasLtMatmulDescAttributes_t attr,
                                                        const void* buf, size_t sizeInBytes) {
    return set_attr(desc, Kind::Desc, kDescSpecs, uint32_t(attr), buf, sizeInBytes);
}

SG_LT_API cublasStatus_t cublasLtMatmulDescGetAttribute(cublasLtMatmulDesc_t desc,
                                                        cublasLtMatmulDescAttributes_t attr,
                                                        void* buf, size_t sizeInBytes,
                                                        size_t* sizeWritten) {
    return get_attr(desc, Kind::Desc, kDescSpecs, uint32_t(attr), buf, sizeInBytes, sizeWritten);
}

SG_LT_API cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout,
                                                    cudaDataType type, uint64_t rows,
                                                    uint64_t cols, int64_t ld) {
    if (!layout || !valid_dtype(int32_t(type))) return CUBLAS_STATUS_INVALID_VALUE;
    Object o;
    std::memset(&o, 0, sizeof o);
    o.kind = Kind::Layout;
    o.attr[CUBLASLT_MATRIX_LAYOUT_TYPE] = uint32_t(type);
    o.attr[CUBLASLT_MATRIX_LAYOUT_ORDER] = CUBLASLT_ORDER_COL;
    o.attr[CUBLASLT_MATRIX_LAYOUT_ROWS] = rows;
    o.attr[CUBLASLT_MATRIX_LAYOUT_COLS] = cols;
    o.attr[CUBLASLT_MATRIX_LAYOUT_LD] = uint64_t(ld);
    o.attr[CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT] = 1;
    *layout = reinterpret_cast<cublasLtMatrixLayout_t>(uintptr_t(make_handle(Kind::Layout, o)));
    return CUBLAS_STATUS_SUCCESS;
}

SG_LT_API cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
    return destroy(layout, Kind::Layout) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

SG_LT_API cublasStatus_t cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout,
                                                          cublasLtMatrixLayoutAttribute_t attr,
                                                          const void* buf, size_t sizeInBytes) {
    return set_attr(layout, Kind::Layout, kLayoutSpecs, uint32_t(attr), buf, sizeInBytes);
}

SG_LT_API cublasStatus_t cublasLtMatrixLayoutGetAttribute(cublasLtMatrixLayout_t layout,
                                                          cublasLtMatrixLayoutAttribute_t attr,
                                                          void* buf, size_t sizeInBytes,
                                                          size_t* sizeWritten) {
    return get_attr(layout, Kind::Layout, kLayoutSpecs, uint32_t(attr), buf, sizeInBytes,
                    sizeWritten);
}

SG_LT_API cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
    if (!pref) return CUBLAS_STATUS_INVALID_VALUE;
    Object o;
    std::memset(&o, 0, sizeof o);
    o.kind = Kind::Pref;
    Pref d = default_pref();
    o.attr[CUBLASLT_MATMUL_PREF_SEARCH_MODE] = CUBLASLT_SEARCH_BEST_FIT;
    o.attr[CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES] = d.max_workspace;
    o.attr[CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK] = d.reduction_mask;
    for (int i = 0; i < 4; i++) o.attr[CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i] = d.align[i];
    o.attr[CUBLASLT_MATMUL_PREF_MAX_WAVES_COUNT] = f32_to_bits(d.max_waves);
    o.attr[CUBLASLT_MATMUL_PREF_IMPL_MASK] = ~0ull;
    *pref = reinterpret_cast<cublasLtMatmulPreference_t>(uintptr_t(make_handle(Kind::Pref, o)));
    return CUBLAS_STATUS_SUCCESS;
}

SG_LT_API cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
    return destroy(pref, Kind::Pref) ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_INVALID_VALUE;
}

SG_LT_API cublasStatus_t cublasLtMatmulPreferenceSetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
    size_t sizeInBytes) {
    return set_attr(pref, Kind::Pref, kPrefSpecs, uint32_t(attr), buf, sizeInBytes);
}

SG_LT_API cublasStatus_t cublasLtMatmulPreferenceGetAttribute(
    cublasLtMatmulPreference_t pref, cublasLtMatmulPreferenceAttributes_t attr, void* buf,
    size_t sizeInBytes, size_t* sizeWritten) {
    return get_attr(pref, Kind::Pref, kPrefSpecs, uint32_t(attr), buf, sizeInBytes, sizeWritten);
}

SG_LT_API cublasStatus_t cublasLtMatmulAlgoGetHeuristic(
    cublasLtHandle_t handle, cublasLtMatmulDesc_t operationDesc, cublasLtMatrixLayout_t Adesc,
    cublasLtMatrixLayout_t Bdesc, cublasLtMatrixLayout_t Cdesc, cublasLtMatrixLayout_t Ddesc,
    cublasLtMatmulPreference_t preference, int requestedAlgoCount,
    cublasLtMatmulHeuristicResult_t heuristicResultsArray[], int* returnAlgoCount) {
    Object h;
    if (!snapshot(handle, Kind::Handle, &h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    if (!returnAlgoCount || !heuristicResultsArray || requestedAlgoCount < 1)
        return CUBLAS_STATUS_INVALID_VALUE;
    *returnAlgoCount = 0;
    Desc d;
    Layout la, lb, lc, ld;
    Pref pref;
    if (!get_desc(operationDesc, &d) || !get_layout(Adesc, &la) || !get_layout(Bdesc, &lb) ||
        !get_layout(Cdesc, &lc) || !get_layout(Ddesc, &ld) || !get_pref(preference, &pref))
        return CUBLAS_STATUS_INVALID_VALUE;
    Problem p;
    cublasStatus_t st = check_problem(d, la, lb, lc, ld, &p);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    int n = candidates(p, pref, heuristicResultsArray, requestedAlgoCount);
    *returnAlgoCount = n;
    return n > 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_NOT_SUPPORTED;
}

SG_LT_API cublasStatus_t cublasLtMatmulAlgoConfigGetAttribute(
    const cublasLtMatmulAlgo_t* algo, cublasLtMatmulAlgoConfigAttributes_t attr, void* buf,
    size_t sizeInBytes, size_t* sizeWritten) {
    Algo a;
    if (!decode_algo(algo, &a)) return CUBLAS_STATUS_INVALID_VALUE;
    uint32_t value;
    switch (uint32_t(attr)) {
        case CUBLASLT_ALGO_CONFIG_ID: value = a.id; break;  // int32_t
        case CUBLASLT_ALGO_CONFIG_TILE_ID: value = 0; break;  // CUBLASLT_MATMUL_TILE_UNDEFINED
        case CUBLASLT_ALGO_CONFIG_SPLITK_NUM: value = a.id == kSplitK2 ? 2 : 1; break;
        case CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME:
            value = a.id == kSplitK2 ? CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE
                                     : CUBLASLT_REDUCTION_SCHEME_NONE;
            break;
        default:
            return uint32_t(attr) <= CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID
                       ? CUBLAS_STATUS_NOT_SUPPORTED
                       : CUBLAS_STATUS_INVALID_VALUE;
    }
    if (sizeInBytes == 0) {
        if (!sizeWritten) return CUBLAS_STATUS_INVALID_VALUE;
        *sizeWritten = 4;
        return CUBLAS_STATUS_SUCCESS;
    }
    if (!buf || sizeInBytes != 4) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(buf, &value, 4);
    if (sizeWritten) *sizeWritten = 4;
    return CUBLAS_STATUS_SUCCESS;
}

SG_LT_API cublasStatus_t cublasLtMatmul(
    cublasLtHandle_t lightHandle, cublasLtMatmulDesc_t computeDesc, const void* alpha,
    const void* A, cublasLtMatrixLayout_t Adesc, const void* B, cublasLtMatrixLayout_t Bdesc,
    const void* beta, const void* C, cublasLtMatrixLayout_t Cdesc, void* D,
    cublasLtMatrixLayout_t Ddesc, const cublasLtMatmulAlgo_t* algo, void* workspace,
    size_t workspaceSizeInBytes, cudaStream_t stream) {
    Object h;
    if (!snapshot(lightHandle, Kind::Handle, &h)) return CUBLAS_STATUS_NOT_INITIALIZED;
    Desc d;
    Layout la, lb, lc, ld;
    if (!get_desc(computeDesc, &d) || !get_layout(Adesc, &la) || !get_layout(Bdesc, &lb) ||
        !get_layout(Cdesc, &lc) || !get_layout(Ddesc, &ld))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (!alpha || !beta || !is_host_readable_scalar(alpha) || !is_host_readable_scalar(beta))
        return CUBLAS_STATUS_INVALID_VALUE;
    Problem p;
    cublasStatus_t st = check_problem(d, la, lb, lc, ld, &p);
    if (st != CUBLAS_STATUS_SUCCESS) return st;

    // The algorithm: the caller's, or (algo NULL) the heuristic's first choice under the
    // default preferences with the workspace given.
    Algo a;
    if (algo) {
        if (!decode_algo(algo, &a)) return CUBLAS_STATUS_INVALID_VALUE;
        if (!algo_fits(a.id, p)) return CUBLAS_STATUS_NOT_SUPPORTED;
    } else {
        Pref pref = default_pref();
        pref.max_workspace = workspaceSizeInBytes;
        cublasLtMatmulHeuristicResult_t r;
        if (candidates(p, pref, &r, 1) != 1) return CUBLAS_STATUS_NOT_SUPPORTED;
        decode_algo(&r.algo, &a);
    }

    Job job;
    job.p = p;
    job.algo = a.id;
    job.a = uint64_t(uintptr_t(A));
    job.b = uint64_t(uintptr_t(B));
    job.c = uint64_t(uintptr_t(C));
    job.d = uint64_t(uintptr_t(D));
    job.bias = p.bias ? d.bias : 0;
    job.workspace = uint64_t(uintptr_t(workspace));
    job.workspace_bytes = algo_workspace(a.id, p);

    // Pointers: present, aligned to what the algorithm was chosen for; the workspace.
    const uint64_t ptrs[4] = {job.a, job.b, job.c, job.d};
    for (int i = 0; i < 4; i++)
        if (ptrs[i] == 0 || ptrs[i] % a.align[i] != 0) return CUBLAS_STATUS_INVALID_VALUE;
    if (p.bias && (job.bias == 0 || job.bias % kMinAlign != 0)) return CUBLAS_STATUS_INVALID_VALUE;
    if (job.workspace_bytes > workspaceSizeInBytes) return CUBLAS_STATUS_NOT_SUPPORTED;
    if (job.workspace_bytes > 0 && (job.workspace == 0 || job.workspace % 256 != 0))
        return CUBLAS_STATUS_INVALID_VALUE;

    // Every operand inside one live allocation (else a device fault, as the kernel would
    // fault), then no output overlapping another operand (undefined in the real library).
    char what[160];
    std::snprintf(what, sizeof what, "cublasLtMatmul %llux%llu * %llux%llu (%s)",
                  (unsigned long long)p.m, (unsigned long long)p.k, (unsigned long long)p.k,
                  (unsigned long long)p.n, kAlgoNames[a.id]);
    job.what = what;
    if (!ranges_ok(job, "at the call")) return CUBLAS_STATUS_EXECUTION_FAILED;
    Operand ops[6];
    int nops = operands(job, ops);  // A, B, C, D, [bias], [workspace]
    if (job.c == job.d) {
        if (p.ldc != p.ldd) return CUBLAS_STATUS_INVALID_VALUE;  // in place needs one layout
    } else if (overlap(ops[2], ops[3])) {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (int i = 0; i < nops; i++)
        for (int j = i + 1; j < nops; j++) {
            bool d_or_ws = i == 3 || j == 3 || std::strcmp(ops[j].name, "workspace") == 0;
            if (i == 2 && j == 3) continue;  // C and D: handled above
            if (d_or_ws && overlap(ops[i], ops[j])) return CUBLAS_STATUS_INVALID_VALUE;
        }


    // Host pointer mode: the scalars are read now, as the real library reads them.
    std::memcpy(&job.alpha, alpha, sizeof(float));
    std::memcpy(&job.beta, beta, sizeof(float));
    int rc = sg::enqueue(stream, job.what, [job] { run_job(job); });
    return rc == 0 ? CUBLAS_STATUS_SUCCESS : CUBLAS_STATUS_EXECUTION_FAILED;
}
