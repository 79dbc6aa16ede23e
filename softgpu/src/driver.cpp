// The software GPU's stand-in for libcuda.so: the driver functions crossrank's CUDA backend
// calls through cudarc (docs: shared/notes/software-gpu-facts.md lists them), with the real
// signatures (cuda.h) and error codes, over the kernel runtime (runtime.cpp).
//
// Stricter than the real driver, on purpose:
// - Stream work is deferred until the host waits (cuStreamSynchronize, cuEventSynchronize, a
//   synchronous copy): a result read before the wait is not there yet, and pinned host memory
//   is read and written when the copy runs, not when it is enqueued.
// - During a stream capture, what the real driver refuses is refused with its code and
//   invalidates the capture (a synchronous copy or allocation from the capturing thread, a
//   sync or query of the capturing stream, a copy to or from pageable memory); so are
//   stream-ordered allocations and frees on the capturing stream, which the real driver would
//   record as graph nodes: a forward that allocates breaks the engine's own rule.
// - Launches: block and grid limits, the kernel's __launch_bounds__, 48 KiB of dynamic shared
//   memory without an opt-in, and every pointer argument inside a live device allocation.
// - Device memory is poisoned (0xFF) when allocated; guard pages follow every allocation.
// - A fault in a kernel (runtime.cpp) is sticky: every later call returns
//   CUDA_ERROR_ILLEGAL_ADDRESS, as after a real device fault.
// Events time a virtual clock (each operation advances it by a modelled cost): deterministic,
// plausible in magnitude, and meaningless as a speed figure, which nothing here is.

#define __CUDA_API_VERSION_INTERNAL 1
#include <cuda.h>
#include <dlfcn.h>
#include <libgen.h>

#include <atomic>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "runtime.h"

#define SG_API extern "C" __attribute__((visibility("default")))

struct Op {
    std::string what;
    std::function<void()> fn;
    uint64_t cost_ns;
};

struct CUgraph_st {
    std::vector<Op> ops;
};
struct CUgraphExec_st {
    std::vector<Op> ops;
};

struct CUstream_st {
    std::mutex mu;       // the queue and capture state
    std::mutex exec_mu;  // held while ops run: one flusher at a time, in order
    std::deque<Op> queue;
    bool capturing = false;
    bool invalidated = false;
    CUstreamCaptureMode mode = CU_STREAM_CAPTURE_MODE_GLOBAL;
    std::thread::id capture_thread;
    std::unique_ptr<CUgraph_st> graph;
    std::string invalid_why;
};

struct CUevent_st {
    unsigned flags = 0;
    std::atomic<bool> recorded{false};
    std::atomic<bool> done{false};
    std::atomic<uint64_t> time_ns{0};
    CUstream stream = nullptr;
};

struct CUctx_st {
    int device = 0;
    int refs = 0;
};

struct CUfunc_st {
    const softgpu_kernel_entry* entry = nullptr;
    unsigned max_dynamic_shared = 48 * 1024;
};

struct CUmod_st {
    std::vector<std::unique_ptr<CUfunc_st>> functions;
};

namespace {

std::mutex g_mu;  // the handle tables below
// Streams are shared: a context-wide synchronisation on one thread (cuMemFreeHost, cuMemFree,
// cuCtxSynchronize) runs the queues of streams that another thread may destroy meanwhile.
std::map<CUstream, std::shared_ptr<CUstream_st>> g_streams;
std::set<CUevent> g_events;
std::set<CUmodule> g_modules;
std::set<CUgraph> g_graphs;
std::set<CUgraphExec> g_execs;
std::map<uintptr_t, size_t> g_pinned;  // cuMemHostAlloc'd ranges
CUstream_st g_legacy_stream;
std::vector<std::unique_ptr<CUctx_st>> g_ctx;
std::atomic<bool> g_initialised{false};
std::atomic<uint64_t> g_clock_ns{1000000};
std::atomic<int> g_global_captures{0};
thread_local int t_captures = 0;  // non-relaxed captures this thread began and has not ended
thread_local CUcontext t_ctx = nullptr;

int device_count() {
    const char* s = getenv("CROSSRANK_SOFTGPU_DEVICES");
    if (!s) return 1;
    int n = atoi(s);
    return n < 0 ? 0 : (n > 16 ? 16 : n);
}

void note(const std::string& what) { fprintf(stderr, "softgpu: %s\n", what.c_str()); }

CUresult refuse(CUresult r, const std::string& what) {
    note(what);
    return r;
}

#define STICKY()                                              \
    do {                                                      \
        if (sg::faulted()) return CUDA_ERROR_ILLEGAL_ADDRESS; \
        if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED; \
    } while (0)

CUstream_st* stream_of(CUstream s) { return s ? s : &g_legacy_stream; }

bool live_stream(CUstream s) {
    if (!s) return true;
    std::lock_guard<std::mutex> lock(g_mu);
    return g_streams.count(s) != 0;
}

// The stream an event was recorded on, kept alive for the caller; null if it has been
// destroyed since (its work ran when it was) or is the legacy stream.
std::shared_ptr<CUstream_st> held(CUstream s) {
    std::lock_guard<std::mutex> lock(g_mu);
    auto it = g_streams.find(s);
    return it == g_streams.end() ? nullptr : it->second;
}

bool is_pinned(const void* p, size_t n) {
    std::lock_guard<std::mutex> lock(g_mu);
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = g_pinned.upper_bound(a);
    if (it == g_pinned.begin()) return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

// Invalidates every capture that an unsafe call on this thread breaks (the real driver's rule
// for GLOBAL and THREAD_LOCAL captures), and says whether there was one.
bool unsafe_call(const char* what) {
    if (g_global_captures.load() == 0 && t_captures == 0) return false;
    std::lock_guard<std::mutex> lock(g_mu);
    for (auto& [s, owner] : g_streams) {
        std::lock_guard<std::mutex> l2(s->mu);
        if (!s->capturing || s->mode == CU_STREAM_CAPTURE_MODE_RELAXED) continue;
        if (s->mode == CU_STREAM_CAPTURE_MODE_THREAD_LOCAL && s->capture_thread != std::this_thread::get_id()) continue;
        s->invalidated = true;
        s->invalid_why = std::string(what) + " during the capture";
    }
    note(std::string(what) + " is not allowed while a stream capture is in progress "
         "(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the capture is invalidated");
    return true;
}

// Runs everything queued on `s`, in order. Returns the sticky fault's code if one happened.
CUresult flush(CUstream_st* s) {
    std::lock_guard<std::mutex> exec(s->exec_mu);
    while (true) {
        Op op;
        {
            std::lock_guard<std::mutex> lock(s->mu);
            if (s->queue.empty()) break;
            op = std::move(s->queue.front());
            s->queue.pop_front();
        }
        if (sg::faulted()) continue;  // a dead context runs nothing more
        g_clock_ns += op.cost_ns;
        op.fn();
    }
    return sg::faulted() ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

CUresult flush_all() {
    std::vector<std::shared_ptr<CUstream_st>> all;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        for (auto& kv : g_streams) all.push_back(kv.second);
    }
    CUresult r = flush(&g_legacy_stream);
    for (auto& s : all) {
        CUresult q = flush(s.get());
        if (q != CUDA_SUCCESS) r = q;
    }
    return r;
}

// Queues `op` on `s`, or records it when `s` is being captured.
CUresult push(CUstream s, std::string what, std::function<void()> fn, uint64_t cost_ns) {
    if (!live_stream(s)) return refuse(CUDA_ERROR_INVALID_HANDLE, what + ": invalid stream");
    CUstream_st* st = stream_of(s);
    std::lock_guard<std::mutex> lock(st->mu);
    Op op{std::move(what), std::move(fn), cost_ns};
    if (st->capturing) {
        if (st->invalidated) return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
        st->graph->ops.push_back(std::move(op));
    } else {
        st->queue.push_back(std::move(op));
    }
    return CUDA_SUCCESS;
}

bool capturing_stream(CUstream s) {
    CUstream_st* st = stream_of(s);
    std::lock_guard<std::mutex> lock(st->mu);
    return st->capturing;
}

// Refuses `what` on a capturing stream (and invalidates the capture).
bool refused_in_capture(CUstream s, const std::string& what) {
    CUstream_st* st = stream_of(s);
    std::lock_guard<std::mutex> lock(st->mu);
    if (!st->capturing) return false;
    st->invalidated = true;
    st->invalid_why = what + " during the capture";
    note(what + " on a stream being captured is refused (CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED); the capture is invalidated");
    return true;
}

uint64_t copy_cost(size_t bytes) { return 2000 + bytes / 25; }  // ~25 GB/s over PCIe, 2 us

std::string self_dir() {
    Dl_info info;
    if (!dladdr(reinterpret_cast<void*>(&self_dir), &info) || !info.dli_fname) return ".";
    std::string p = info.dli_fname;
    auto slash = p.rfind('/');
    return slash == std::string::npos ? "." : p.substr(0, slash);
}

}  // namespace

// ---- sg:: internal interface for the cuBLASLt stand-in -------------------------------------

namespace sg {
int enqueue(void* stream, std::string what, std::function<void()> op) {
    if (sg::faulted()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    return push(static_cast<CUstream>(stream), std::move(what), std::move(op), 5000);
}
bool capturing(void* stream) { return capturing_stream(static_cast<CUstream>(stream)); }
}  // namespace sg

// ---- Initialisation, devices, contexts -----------------------------------------------------

SG_API CUresult cuInit(unsigned int flags) {
    if (flags != 0) return CUDA_ERROR_INVALID_VALUE;
    g_initialised = true;
    // The device's name says what it is; this line only on request, so that a command's
    // one-line error stays one line.
    static std::once_flag once;
    std::call_once(once, [] {
        if (getenv("CROSSRANK_SOFTGPU_VERBOSE"))
            note("the software GPU is in use: " + sg::describe() + ". It is not a GPU.");
    });
    return CUDA_SUCCESS;
}

SG_API CUresult cuDriverGetVersion(int* v) {
    if (!v) return CUDA_ERROR_INVALID_VALUE;
    *v = 13000;
    return CUDA_SUCCESS;
}

SG_API CUresult cuDeviceGetCount(int* count) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!count) return CUDA_ERROR_INVALID_VALUE;
    *count = device_count();
    return CUDA_SUCCESS;
}

SG_API CUresult cuDeviceGet(CUdevice* dev, int ordinal) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (ordinal < 0 || ordinal >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *dev = ordinal;
    return CUDA_SUCCESS;
}

SG_API CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!name || len <= 0) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    snprintf(name, size_t(len), "crossrank software GPU (CPU emulation, not a GPU)");
    return CUDA_SUCCESS;
}

SG_API CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!bytes) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    *bytes = sg::kTotalMemory;
    return CUDA_SUCCESS;
}

SG_API CUresult cuDeviceGetUuid_v2(CUuuid* uuid, CUdevice dev) {
    if (!uuid) return CUDA_ERROR_INVALID_VALUE;
    memset(uuid, 0, sizeof *uuid);
    memcpy(uuid->bytes, "softgpu", 7);
    uuid->bytes[15] = char(dev);
    return CUDA_SUCCESS;
}
SG_API CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) { return cuDeviceGetUuid_v2(uuid, dev); }

// An H100-like sm_90 part. An attribute not listed is refused, loudly, rather than guessed.
SG_API CUresult cuDeviceGetAttribute(int* pi, CUdevice_attribute attrib, CUdevice dev) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!pi) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    switch (attrib) {
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: *pi = 9; break;
        case CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: *pi = 0; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: *pi = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: *pi = 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: *pi = 64; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: *pi = 2147483647; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: *pi = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: *pi = 65535; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: *pi = 48 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: *pi = 227 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR: *pi = 228 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_WARP_SIZE: *pi = 32; break;
        case CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: *pi = 132; break;
        case CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: *pi = 50 * 1024 * 1024; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED: *pi = 1; break;
        case CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR: *pi = 2048; break;
        case CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK: *pi = 65536; break;
        case CU_DEVICE_ATTRIBUTE_CLOCK_RATE: *pi = 1980000; break;
        case CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: *pi = 2619000; break;
        case CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: *pi = 5120; break;
        case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *pi = 1; break;
        case CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS: *pi = 1; break;
        case CU_DEVICE_ATTRIBUTE_INTEGRATED: *pi = 0; break;
        case CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: *pi = 0x53; break;
        case CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: *pi = dev; break;
        case CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: *pi = 0; break;
        default:
            note("cuDeviceGetAttribute: attribute " + std::to_string(int(attrib)) +
                 " is not modelled by the software GPU");
            return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS;
}

SG_API CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_ctx.empty())
        for (int i = 0; i < 16; ++i) {
            g_ctx.push_back(std::make_unique<CUctx_st>());
            g_ctx.back()->device = i;
        }
    g_ctx[size_t(dev)]->refs++;
    *ctx = g_ctx[size_t(dev)].get();
    return CUDA_SUCCESS;
}

SG_API CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
    if (dev < 0 || dev >= device_count()) return CUDA_ERROR_INVALID_DEVICE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_ctx.empty() || g_ctx[size_t(dev)]->refs == 0) return CUDA_ERROR_INVALID_CONTEXT;
    g_ctx[size_t(dev)]->refs--;
    return CUDA_SUCCESS;
}

SG_API CUresult cuCtxSetCurrent(CUcontext ctx) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    t_ctx = ctx;
    return CUDA_SUCCESS;
}

SG_API CUresult cuCtxGetCurrent(CUcontext* ctx) {
    if (!g_initialised) return CUDA_ERROR_NOT_INITIALIZED;
    if (!ctx) return CUDA_ERROR_INVALID_VALUE;
    *ctx = t_ctx;
    return CUDA_SUCCESS;
}

SG_API CUresult cuCtxGetDevice(CUdevice* dev) {
    if (!dev) return CUDA_ERROR_INVALID_VALUE;
    if (!t_ctx) return CUDA_ERROR_INVALID_CONTEXT;
    *dev = t_ctx->device;
    return CUDA_SUCCESS;
}

SG_API CUresult cuCtxSynchronize() {
    STICKY();
    if (unsafe_call("cuCtxSynchronize")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return flush_all();
}

SG_API CUresult cuCtxSetFlags(unsigned int) { return CUDA_SUCCESS; }

// ---- Streams ---------------------------------------------------------------------------------

SG_API CUresult cuStreamCreate(CUstream* s, unsigned int flags) {
    STICKY();
    if (!s || (flags & ~1u)) return CUDA_ERROR_INVALID_VALUE;
    auto st = std::make_shared<CUstream_st>();
    std::lock_guard<std::mutex> lock(g_mu);
    g_streams.emplace(st.get(), st);
    *s = st.get();
    return CUDA_SUCCESS;
}

SG_API CUresult cuStreamCreateWithPriority(CUstream* s, unsigned int flags, int) {
    return cuStreamCreate(s, flags);
}

SG_API CUresult cuStreamDestroy_v2(CUstream s) {
    if (!s || !live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    // The real driver lets queued work finish after the destroy returns; run it now.
    flush(s);
    std::lock_guard<std::mutex> lock(g_mu);
    g_streams.erase(s);  // freed when no flush holds it any more
    return CUDA_SUCCESS;
}

SG_API CUresult cuStreamSynchronize(CUstream s) {
    STICKY();
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (refused_in_capture(s, "cuStreamSynchronize")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return s ? flush(s) : flush_all();
}

SG_API CUresult cuStreamQuery(CUstream s) {
    STICKY();
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (refused_in_capture(s, "cuStreamQuery")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    CUstream_st* st = stream_of(s);
    std::lock_guard<std::mutex> lock(st->mu);
    return st->queue.empty() ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

SG_API CUresult cuStreamWaitEvent(CUstream s, CUevent ev, unsigned int flags) {
    STICKY();
    if (!live_stream(s) || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    }
    if (refused_in_capture(s, "cuStreamWaitEvent (cross-stream capture is not modelled)"))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    // Work after this point on `s` may not start before the event: with deferred streams, run
    // the event's stream up to now.
    if (ev->recorded && ev->stream != s) {
        if (!ev->stream) return flush(&g_legacy_stream);
        auto other = held(ev->stream);
        return other ? flush(other.get()) : CUDA_SUCCESS;
    }
    return CUDA_SUCCESS;
}

SG_API CUresult cuStreamBeginCapture_v2(CUstream s, CUstreamCaptureMode mode) {
    STICKY();
    if (!s) return refuse(CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, "cuStreamBeginCapture on the legacy default stream");
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (mode != CU_STREAM_CAPTURE_MODE_GLOBAL && mode != CU_STREAM_CAPTURE_MODE_THREAD_LOCAL &&
        mode != CU_STREAM_CAPTURE_MODE_RELAXED)
        return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(s->mu);
    if (s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
    s->capturing = true;
    s->invalidated = false;
    s->invalid_why.clear();
    s->mode = mode;
    s->capture_thread = std::this_thread::get_id();
    s->graph = std::make_unique<CUgraph_st>();
    if (mode == CU_STREAM_CAPTURE_MODE_GLOBAL) g_global_captures++;
    if (mode != CU_STREAM_CAPTURE_MODE_RELAXED) t_captures++;
    return CUDA_SUCCESS;
}
SG_API CUresult cuStreamBeginCapture(CUstream s) { return cuStreamBeginCapture_v2(s, CU_STREAM_CAPTURE_MODE_GLOBAL); }

SG_API CUresult cuStreamEndCapture(CUstream s, CUgraph* graph) {
    if (!graph) return CUDA_ERROR_INVALID_VALUE;
    *graph = nullptr;
    if (!s || !live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    std::lock_guard<std::mutex> lock(s->mu);
    if (!s->capturing) return CUDA_ERROR_ILLEGAL_STATE;
    if (s->mode != CU_STREAM_CAPTURE_MODE_RELAXED && s->capture_thread != std::this_thread::get_id())
        return CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD;
    s->capturing = false;
    if (s->mode == CU_STREAM_CAPTURE_MODE_GLOBAL) g_global_captures--;
    if (s->mode != CU_STREAM_CAPTURE_MODE_RELAXED) t_captures--;
    auto g = std::move(s->graph);
    if (s->invalidated) {
        note("cuStreamEndCapture: the capture was invalidated (" + s->invalid_why + ")");
        return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED;
    }
    if (sg::faulted()) return CUDA_ERROR_ILLEGAL_ADDRESS;
    CUgraph out = g.release();
    std::lock_guard<std::mutex> l2(g_mu);
    g_graphs.insert(out);
    *graph = out;
    return CUDA_SUCCESS;
}

SG_API CUresult cuStreamIsCapturing(CUstream s, CUstreamCaptureStatus* status) {
    if (!status) return CUDA_ERROR_INVALID_VALUE;
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    CUstream_st* st = stream_of(s);
    std::lock_guard<std::mutex> lock(st->mu);
    *status = !st->capturing ? CU_STREAM_CAPTURE_STATUS_NONE
              : st->invalidated ? CU_STREAM_CAPTURE_STATUS_INVALIDATED
                                : CU_STREAM_CAPTURE_STATUS_ACTIVE;
    return CUDA_SUCCESS;
}

// ---- Graphs ----------------------------------------------------------------------------------

SG_API CUresult cuGraphInstantiateWithFlags(CUgraphExec* exec, CUgraph graph, unsigned long long flags) {
    STICKY();
    if (!exec || flags != 0) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_graphs.count(graph)) return CUDA_ERROR_INVALID_HANDLE;
    auto* e = new CUgraphExec_st;
    e->ops = graph->ops;
    g_execs.insert(e);
    *exec = e;
    return CUDA_SUCCESS;
}

SG_API CUresult cuGraphLaunch(CUgraphExec exec, CUstream s) {
    STICKY();
    std::vector<Op> ops;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_execs.count(exec)) return CUDA_ERROR_INVALID_HANDLE;
        ops = exec->ops;
    }
    uint64_t cost = 3000;
    for (auto& op : ops) cost += op.cost_ns / 4;  // a graph saves the launch overheads
    return push(s, "cuGraphLaunch", [ops] {
        for (auto& op : ops) {
            if (sg::faulted()) return;
            op.fn();
        }
    }, cost);
}

SG_API CUresult cuGraphUpload(CUgraphExec exec, CUstream) {
    std::lock_guard<std::mutex> lock(g_mu);
    return g_execs.count(exec) ? CUDA_SUCCESS : CUDA_ERROR_INVALID_HANDLE;
}

SG_API CUresult cuGraphExecDestroy(CUgraphExec exec) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_execs.erase(exec)) return CUDA_ERROR_INVALID_HANDLE;
    delete exec;
    return CUDA_SUCCESS;
}

SG_API CUresult cuGraphDestroy(CUgraph graph) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_graphs.erase(graph)) return CUDA_ERROR_INVALID_HANDLE;
    delete graph;
    return CUDA_SUCCESS;
}

// ---- Memory ----------------------------------------------------------------------------------

static CUresult alloc(CUdeviceptr* p, size_t bytes, const char* what) {
    if (!p || bytes == 0) return CUDA_ERROR_INVALID_VALUE;
    std::string why;
    void* d = sg::device_alloc(bytes, &why);
    if (!d) return refuse(CUDA_ERROR_OUT_OF_MEMORY, std::string(what) + ": " + why);
    *p = reinterpret_cast<CUdeviceptr>(d);
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
    STICKY();
    if (unsafe_call("cuMemAlloc")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return alloc(p, bytes, "cuMemAlloc");
}

SG_API CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, CUstream s) {
    STICKY();
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (refused_in_capture(s, "cuMemAllocAsync (an allocation inside a captured forward)"))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return alloc(p, bytes, "cuMemAllocAsync");
}

SG_API CUresult cuMemFree_v2(CUdeviceptr p) {
    if (unsafe_call("cuMemFree")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    flush_all();  // cuMemFree synchronises: queued work may still use the memory
    std::string why;
    if (!sg::device_free(reinterpret_cast<void*>(p), &why)) return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemFree: " + why);
    return sg::faulted() ? CUDA_ERROR_ILLEGAL_ADDRESS : CUDA_SUCCESS;
}

SG_API CUresult cuMemFreeAsync(CUdeviceptr p, CUstream s) {
    if (!live_stream(s)) return CUDA_ERROR_INVALID_HANDLE;
    if (refused_in_capture(s, "cuMemFreeAsync (a free inside a captured forward)"))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    uintptr_t base;
    size_t size;
    if (!sg::device_find(reinterpret_cast<void*>(p), &base, &size) || base != p)
        return refuse(CUDA_ERROR_INVALID_VALUE, "cuMemFreeAsync: not the start of a live device allocation");
    // Freed in stream order: work queued before it still sees the memory.
    return push(s, "cuMemFreeAsync", [p] {
        std::string why;
        if (!sg::device_free(reinterpret_cast<void*>(p), &why)) sg::fault("cuMemFreeAsync: " + why);
    }, 500);
}

SG_API CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    STICKY();
    if (!free_bytes || !total) return CUDA_ERROR_INVALID_VALUE;
    *total = sg::kTotalMemory;
    *free_bytes = sg::kTotalMemory - sg::device_used();
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned int flags) {
    STICKY();
    if (!p || bytes == 0 || (flags & ~0xFu)) return CUDA_ERROR_INVALID_VALUE;
    if (unsafe_call("cuMemHostAlloc")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    size_t len = (bytes + 4095) & ~size_t(4095);
    void* h = aligned_alloc(4096, len);
    if (!h) return CUDA_ERROR_OUT_OF_MEMORY;
    memset(h, 0xA5, len);  // pinned memory starts uninitialised
    std::lock_guard<std::mutex> lock(g_mu);
    g_pinned[reinterpret_cast<uintptr_t>(h)] = bytes;
    *p = h;
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemFreeHost(void* p) {
    flush_all();  // queued copies may still read or write it
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_pinned.erase(reinterpret_cast<uintptr_t>(p))) return CUDA_ERROR_INVALID_VALUE;
    free(p);
    return CUDA_SUCCESS;
}

static CUresult check_dev(CUdeviceptr p, size_t n, const char* what) {
    std::string why;
    if (n == 0) return CUDA_SUCCESS;
    if (!sg::device_range(reinterpret_cast<void*>(p), n, &why))
        return refuse(CUDA_ERROR_INVALID_VALUE, std::string(what) + ": " + why);
    return CUDA_SUCCESS;
}

// Checked again when the copy runs: the memory may have been freed in between.
static void run_check(CUdeviceptr p, size_t n, const char* what) {
    std::string why;
    if (n && !sg::device_range(reinterpret_cast<void*>(p), n, &why)) sg::fault(std::string(what) + " when it ran: " + why);
}

SG_API CUresult cuMemsetD8Async(CUdeviceptr p, unsigned char v, size_t n, CUstream s) {
    STICKY();
    if (CUresult r = check_dev(p, n, "cuMemsetD8Async")) return r;
    return push(s, "cuMemsetD8Async", [=] {
        run_check(p, n, "cuMemsetD8Async");
        if (!sg::faulted()) memset(reinterpret_cast<void*>(p), v, n);
    }, copy_cost(n) / 4);
}

SG_API CUresult cuMemsetD8_v2(CUdeviceptr p, unsigned char v, size_t n) {
    STICKY();
    if (unsafe_call("cuMemsetD8")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (CUresult r = check_dev(p, n, "cuMemsetD8")) return r;
    if (CUresult r = flush_all()) return r;
    memset(reinterpret_cast<void*>(p), v, n);
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, CUstream s) {
    STICKY();
    if (n && !src) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_dev(dst, n, "cuMemcpyHtoDAsync")) return r;
    if (is_pinned(src, n)) {
        // Read when the copy runs, as the DMA engine does: the host must not touch it before.
        return push(s, "cuMemcpyHtoDAsync", [=] {
            run_check(dst, n, "cuMemcpyHtoDAsync");
            if (!sg::faulted()) memcpy(reinterpret_cast<void*>(dst), src, n);
        }, copy_cost(n));
    }
    if (refused_in_capture(s, "cuMemcpyHtoDAsync from pageable host memory"))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    // Pageable: the driver stages the source before returning.
    auto staged = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src), static_cast<const unsigned char*>(src) + n);
    return push(s, "cuMemcpyHtoDAsync", [=] {
        run_check(dst, n, "cuMemcpyHtoDAsync");
        if (!sg::faulted() && n) memcpy(reinterpret_cast<void*>(dst), staged->data(), n);
    }, copy_cost(n));
}

SG_API CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, CUstream s) {
    STICKY();
    if (n && !dst) return CUDA_ERROR_INVALID_VALUE;
    if (CUresult r = check_dev(src, n, "cuMemcpyDtoHAsync")) return r;
    auto op = [=] {
        run_check(src, n, "cuMemcpyDtoHAsync");
        if (!sg::faulted() && n) memcpy(dst, reinterpret_cast<void*>(src), n);
    };
    if (is_pinned(dst, n)) return push(s, "cuMemcpyDtoHAsync", op, copy_cost(n));
    if (refused_in_capture(s, "cuMemcpyDtoHAsync to pageable host memory"))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    // Pageable: returns once the copy is done, which means the stream's work before it too.
    if (CUresult r = push(s, "cuMemcpyDtoHAsync", op, copy_cost(n))) return r;
    return s ? flush(s) : flush_all();
}

SG_API CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s) {
    STICKY();
    if (CUresult r = check_dev(dst, n, "cuMemcpyDtoDAsync (destination)")) return r;
    if (CUresult r = check_dev(src, n, "cuMemcpyDtoDAsync (source)")) return r;
    return push(s, "cuMemcpyDtoDAsync", [=] {
        run_check(dst, n, "cuMemcpyDtoDAsync");
        run_check(src, n, "cuMemcpyDtoDAsync");
        if (!sg::faulted() && n) memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n);
    }, copy_cost(n) / 8);
}

SG_API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void* src, size_t n) {
    STICKY();
    if (unsafe_call("cuMemcpyHtoD")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (CUresult r = check_dev(dst, n, "cuMemcpyHtoD")) return r;
    if (CUresult r = flush_all()) return r;
    if (n) memcpy(reinterpret_cast<void*>(dst), src, n);
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemcpyDtoH_v2(void* dst, CUdeviceptr src, size_t n) {
    STICKY();
    if (unsafe_call("cuMemcpyDtoH")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (CUresult r = check_dev(src, n, "cuMemcpyDtoH")) return r;
    if (CUresult r = flush_all()) return r;
    if (n) memcpy(dst, reinterpret_cast<void*>(src), n);
    return CUDA_SUCCESS;
}

SG_API CUresult cuMemcpyDtoD_v2(CUdeviceptr dst, CUdeviceptr src, size_t n) {
    STICKY();
    if (unsafe_call("cuMemcpyDtoD")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    if (CUresult r = check_dev(dst, n, "cuMemcpyDtoD")) return r;
    if (CUresult r = check_dev(src, n, "cuMemcpyDtoD")) return r;
    if (CUresult r = flush_all()) return r;
    if (n) memmove(reinterpret_cast<void*>(dst), reinterpret_cast<void*>(src), n);
    return CUDA_SUCCESS;
}

// ---- Events ----------------------------------------------------------------------------------

SG_API CUresult cuEventCreate(CUevent* ev, unsigned int flags) {
    STICKY();
    if (!ev || (flags & ~0xFu)) return CUDA_ERROR_INVALID_VALUE;
    auto* e = new CUevent_st;
    e->flags = flags;
    std::lock_guard<std::mutex> lock(g_mu);
    g_events.insert(e);
    *ev = e;
    return CUDA_SUCCESS;
}

SG_API CUresult cuEventDestroy_v2(CUevent ev) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_events.erase(ev)) return CUDA_ERROR_INVALID_HANDLE;
    // A record still queued refers to it: keep the object (a few bytes) rather than free it
    // under the queue.
    return CUDA_SUCCESS;
}

SG_API CUresult cuEventRecord(CUevent ev, CUstream s) {
    STICKY();
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    }
    ev->recorded = true;
    ev->done = false;
    ev->stream = s;
    return push(s, "cuEventRecord", [ev] {
        ev->time_ns = g_clock_ns.load();
        ev->done = true;
    }, 0);
}

SG_API CUresult cuEventQuery(CUevent ev) {
    STICKY();
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    }
    auto st = ev->stream ? held(ev->stream) : nullptr;
    if (ev->recorded && (ev->stream ? st && capturing_stream(st.get()) : capturing_stream(nullptr)))
        return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return !ev->recorded || ev->done ? CUDA_SUCCESS : CUDA_ERROR_NOT_READY;
}

SG_API CUresult cuEventSynchronize(CUevent ev) {
    STICKY();
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_events.count(ev)) return CUDA_ERROR_INVALID_HANDLE;
    }
    if (!ev->recorded) return CUDA_SUCCESS;
    if (!ev->stream) return flush(&g_legacy_stream);
    auto st = held(ev->stream);
    if (!st) return CUDA_SUCCESS;  // destroyed since: its work ran then
    if (refused_in_capture(st.get(), "cuEventSynchronize")) return CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED;
    return flush(st.get());
}

SG_API CUresult cuEventElapsedTime_v2(float* ms, CUevent start, CUevent end) {
    STICKY();
    if (!ms) return CUDA_ERROR_INVALID_VALUE;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (!g_events.count(start) || !g_events.count(end)) return CUDA_ERROR_INVALID_HANDLE;
    }
    if ((start->flags | end->flags) & CU_EVENT_DISABLE_TIMING) return CUDA_ERROR_INVALID_HANDLE;
    if (!start->recorded || !end->recorded) return CUDA_ERROR_INVALID_HANDLE;
    if (!start->done || !end->done) return CUDA_ERROR_NOT_READY;
    *ms = float(double(int64_t(end->time_ns - start->time_ns)) / 1e6);
    return CUDA_SUCCESS;
}
SG_API CUresult cuEventElapsedTime(float* ms, CUevent start, CUevent end) {
    return cuEventElapsedTime_v2(ms, start, end);
}

// ---- Modules and launches --------------------------------------------------------------------

SG_API CUresult cuModuleLoadData(CUmodule* module, const void* image) {
    STICKY();
    if (!module || !image) return CUDA_ERROR_INVALID_VALUE;
    uint32_t magic;
    memcpy(&magic, image, 4);
    const char* text = static_cast<const char*>(image);
    // A fatbin (0xBA55ED50) or PTX text: the image is checked for what it claims to be, and the
    // kernels come from the same kernels/*.cu compiled as host C++ next to this library.
    if (magic != 0xBA55ED50u && strncmp(text, "//", 2) != 0 && strncmp(text, ".version", 8) != 0)
        return refuse(CUDA_ERROR_INVALID_IMAGE, "cuModuleLoadData: the image is neither a fatbin nor PTX");
    static std::once_flag once;
    static void* lib = nullptr;
    static std::string lib_path;
    std::call_once(once, [] {
        lib_path = self_dir() + "/libsoftgpu_kernels.so";
        lib = dlopen(lib_path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!lib) note(std::string("cannot load the kernels: ") + dlerror());
        else sg::set_kernel_library(lib, lib_path);
    });
    if (!lib) return CUDA_ERROR_INVALID_IMAGE;
    auto table = reinterpret_cast<const softgpu_kernel_entry*>(dlsym(lib, "softgpu_kernels"));
    auto count = reinterpret_cast<const int*>(dlsym(lib, "softgpu_kernel_count"));
    if (!table || !count) return refuse(CUDA_ERROR_INVALID_IMAGE, "the kernels library has no kernel table");
    auto* m = new CUmod_st;
    for (int i = 0; i < *count; ++i) {
        m->functions.push_back(std::make_unique<CUfunc_st>());
        m->functions.back()->entry = &table[i];
    }
    std::lock_guard<std::mutex> lock(g_mu);
    g_modules.insert(m);
    *module = m;
    return CUDA_SUCCESS;
}

SG_API CUresult cuModuleGetFunction(CUfunction* f, CUmodule m, const char* name) {
    STICKY();
    if (!f || !name) return CUDA_ERROR_INVALID_VALUE;
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_modules.count(m)) return CUDA_ERROR_INVALID_HANDLE;
    for (auto& fn : m->functions)
        if (strcmp(fn->entry->name, name) == 0) {
            *f = fn.get();
            return CUDA_SUCCESS;
        }
    return CUDA_ERROR_NOT_FOUND;
}

SG_API CUresult cuModuleUnload(CUmodule m) {
    flush_all();
    std::lock_guard<std::mutex> lock(g_mu);
    if (!g_modules.erase(m)) return CUDA_ERROR_INVALID_HANDLE;
    delete m;
    return CUDA_SUCCESS;
}

SG_API CUresult cuFuncGetAttribute(int* pi, CUfunction_attribute attrib, CUfunction f) {
    if (!pi || !f) return CUDA_ERROR_INVALID_VALUE;
    switch (attrib) {
        case CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: *pi = f->entry->max_threads ? f->entry->max_threads : 1024; break;
        case CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: *pi = int(f->max_dynamic_shared); break;
        case CU_FUNC_ATTRIBUTE_NUM_REGS: *pi = 0; break;
        case CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: *pi = 0; break;
        default: return CUDA_ERROR_NOT_SUPPORTED;
    }
    return CUDA_SUCCESS;
}

SG_API CUresult cuFuncSetAttribute(CUfunction f, CUfunction_attribute attrib, int value) {
    if (!f) return CUDA_ERROR_INVALID_VALUE;
    if (attrib != CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) return CUDA_ERROR_NOT_SUPPORTED;
    if (value < 0 || value > 227 * 1024) return CUDA_ERROR_INVALID_VALUE;
    f->max_dynamic_shared = unsigned(value);
    return CUDA_SUCCESS;
}

SG_API CUresult cuLaunchKernel(CUfunction f, unsigned int gx, unsigned int gy, unsigned int gz,
                               unsigned int bx, unsigned int by, unsigned int bz,
                               unsigned int shared, CUstream s, void** params, void** extra) {
    STICKY();
    if (!f) return CUDA_ERROR_INVALID_HANDLE;
    const softgpu_kernel_entry* k = f->entry;
    std::string name = k->name;
    auto bad = [&](CUresult r, const std::string& why) {
        return refuse(r, "cuLaunchKernel " + name + ": " + why);
    };
    if (extra) return bad(CUDA_ERROR_INVALID_VALUE, "`extra` launch parameters are not modelled");
    if (gx == 0 || gy == 0 || gz == 0 || gx > 2147483647u || gy > 65535 || gz > 65535)
        return bad(CUDA_ERROR_INVALID_VALUE, "grid (" + std::to_string(gx) + "," + std::to_string(gy) + "," + std::to_string(gz) + ") is outside the device's limits");
    uint64_t threads = uint64_t(bx) * by * bz;
    if (bx == 0 || by == 0 || bz == 0 || bx > 1024 || by > 1024 || bz > 64 || threads > 1024)
        return bad(CUDA_ERROR_INVALID_VALUE, "block (" + std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) + ") is outside the device's limits");
    if (k->max_threads && threads > uint64_t(k->max_threads))
        return bad(CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES, std::to_string(threads) + " threads per block, past its __launch_bounds__(" + std::to_string(k->max_threads) + ")");
    if (shared > f->max_dynamic_shared)
        return bad(CUDA_ERROR_INVALID_VALUE, std::to_string(shared) + " bytes of dynamic shared memory, more than the " + std::to_string(f->max_dynamic_shared) + " allowed");
    if (k->num_params > 0 && !params) return bad(CUDA_ERROR_INVALID_VALUE, "no kernel parameters");
    auto launch = std::make_shared<sg::Launch>();
    launch->kernel = k;
    launch->grid = {gx, gy, gz};
    launch->block = {bx, by, bz};
    launch->shared_bytes = shared;
    for (int i = 0; i < k->num_params; ++i) {
        if (!params[i]) return bad(CUDA_ERROR_INVALID_VALUE, "parameter " + std::to_string(i) + " is null");
        auto* p = static_cast<const unsigned char*>(params[i]);
        launch->params.emplace_back(p, p + k->param_sizes[i]);
        if (k->param_is_ptr[i]) {
            void* ptr;
            memcpy(&ptr, p, sizeof ptr);
            uintptr_t base;
            size_t size;
            // Inside a live allocation, or one past its end (an empty view's pointer).
            if (ptr && !sg::device_find(ptr, &base, &size) &&
                !sg::device_find(static_cast<char*>(ptr) - 1, &base, &size)) {
                std::string why;
                sg::device_range(ptr, 1, &why);
                return bad(CUDA_ERROR_INVALID_VALUE, "pointer parameter " + std::to_string(i) + ": " + why);
            }
        }
    }
    uint64_t cost = 3000 + (uint64_t(gx) * gy * gz * threads) / 50;
    return push(s, "kernel " + name, [launch] { sg::run_launch(*launch); }, cost);
}

// ---- Errors ----------------------------------------------------------------------------------

static const char* error_name(CUresult r) {
    switch (r) {
        case CUDA_SUCCESS: return "CUDA_SUCCESS";
        case CUDA_ERROR_INVALID_VALUE: return "CUDA_ERROR_INVALID_VALUE";
        case CUDA_ERROR_OUT_OF_MEMORY: return "CUDA_ERROR_OUT_OF_MEMORY";
        case CUDA_ERROR_NOT_INITIALIZED: return "CUDA_ERROR_NOT_INITIALIZED";
        case CUDA_ERROR_INVALID_DEVICE: return "CUDA_ERROR_INVALID_DEVICE";
        case CUDA_ERROR_INVALID_IMAGE: return "CUDA_ERROR_INVALID_IMAGE";
        case CUDA_ERROR_INVALID_CONTEXT: return "CUDA_ERROR_INVALID_CONTEXT";
        case CUDA_ERROR_INVALID_HANDLE: return "CUDA_ERROR_INVALID_HANDLE";
        case CUDA_ERROR_ILLEGAL_STATE: return "CUDA_ERROR_ILLEGAL_STATE";
        case CUDA_ERROR_NOT_FOUND: return "CUDA_ERROR_NOT_FOUND";
        case CUDA_ERROR_NOT_READY: return "CUDA_ERROR_NOT_READY";
        case CUDA_ERROR_ILLEGAL_ADDRESS: return "CUDA_ERROR_ILLEGAL_ADDRESS";
        case CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: return "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES";
        case CUDA_ERROR_NOT_SUPPORTED: return "CUDA_ERROR_NOT_SUPPORTED";
        case CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: return "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED";
        case CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: return "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED";
        case CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD: return "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD";
        default: return nullptr;
    }
}

SG_API CUresult cuGetErrorName(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}

SG_API CUresult cuGetErrorString(CUresult r, const char** s) {
    if (!s) return CUDA_ERROR_INVALID_VALUE;
    if (r == CUDA_ERROR_ILLEGAL_ADDRESS) {
        *s = "the software GPU found a fault in a kernel or copy (see the 'softgpu: FAULT' line on stderr)";
        return CUDA_SUCCESS;
    }
    *s = error_name(r);
    return *s ? CUDA_SUCCESS : CUDA_ERROR_INVALID_VALUE;
}
