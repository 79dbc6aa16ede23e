// The software GPU's kernel runtime: device memory, and the execution of one launch.
//
// A block's threads are fibers on the calling OS thread, switched by a few lines of assembly
// (ucontext's swapcontext makes a system call per switch, which would dominate: every
// collective switches every thread of the warp). A thread runs until it reaches a collective
// (a barrier, a shuffle, mma, ldmatrix) or ends; the scheduler then picks the next runnable
// thread in the order of the configured schedule:
//   lockstep     round robin in thread order: each thread runs to its next collective in turn
//   warp-serial  always the lowest-numbered runnable thread: warp 0 runs to the barrier first
//   reversed     round robin in reverse thread order, and blocks in reverse order
//   random:SEED  a seeded random runnable thread each time, and blocks in a seeded order
// A missing barrier hides under some orders and not others, so the tests run them all; the
// race checker (below) finds it under any.
//
// Checks, beyond what hardware does:
// - every collective: all threads that must take part arrive at the same call site with the
//   same mask; a divergent barrier, a lane that skips a shuffle, a thread that exits while
//   others wait, or a mask naming lanes past the block's end is a fault naming block, thread,
//   file and line (never a hang);
// - with the checked kernels library (compiled with -fsanitize=thread, whose instrumentation
//   calls the __tsan_* hooks defined here instead of ThreadSanitizer's runtime): every load
//   and store the kernel makes to device memory must lie inside one live allocation, and to
//   shared memory inside the block's static or dynamic shared memory; every 2-, 4-, 8- and
//   16-byte access must be aligned to its size; and shared memory is race-checked by barrier
//   epochs (a read and a write, or two writes, of one byte by different threads with no barrier
//   between them), and a read of shared memory that this block never wrote is a fault;
// - shared memory is filled with 0xFF bytes (fp16 NaN) before every block, device memory when
//   allocated, so that a value read before it is written shows.
// A fault is reported once (sg::fault), ends the launch and makes the context's error sticky,
// as a device fault does.

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "runtime.h"
#include "warp_models.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define SG_ASAN 1
#else
#define SG_ASAN 0
#endif

#define SG_EXPORT extern "C" __attribute__((visibility("default")))

namespace sg {

static std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
static std::string format(const char* fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return buf;
}

// ---- Configuration ------------------------------------------------------------------------

enum class Schedule { Lockstep, WarpSerial, Reversed, Random };

struct Config {
    Schedule schedule = Schedule::Lockstep;
    uint64_t seed = 1;
    std::string name = "lockstep";
};

static const Config& config() {
    static const Config cfg = [] {
        Config c;
        const char* s = getenv("CROSSRANK_SOFTGPU_SCHEDULE");
        std::string v = s ? s : "lockstep";
        if (v == "lockstep") {
            c.schedule = Schedule::Lockstep;
        } else if (v == "warp-serial") {
            c.schedule = Schedule::WarpSerial;
        } else if (v == "reversed") {
            c.schedule = Schedule::Reversed;
        } else if (v.rfind("random", 0) == 0) {
            c.schedule = Schedule::Random;
            if (v.size() > 7 && v[6] == ':') c.seed = strtoull(v.c_str() + 7, nullptr, 10);
        } else {
            fprintf(stderr,
                    "softgpu: CROSSRANK_SOFTGPU_SCHEDULE=%s is not one of lockstep, warp-serial, "
                    "reversed, random:SEED\n",
                    v.c_str());
            abort();
        }
        c.name = v;
        return c;
    }();
    return cfg;
}

#if defined(SOFTGPU_CHECKED_KERNELS)
static const bool kChecked = true;
#else
static const bool kChecked = false;
#endif

std::string describe() {
    std::string s = "software GPU (not a GPU: CPU emulation for tests; no speed figure means anything), schedule " + config().name;
    s += kChecked ? ", checked kernels (bounds, alignment, shared-memory races)" : "";
    s += SG_ASAN ? ", AddressSanitizer" : "";
    return s;
}

// ---- Faults -------------------------------------------------------------------------------

static std::atomic<bool> g_faulted{false};
static std::mutex g_fault_mu;
static void kill_current_launch();

int fault(const std::string& what, int cu_result) {
    {
        std::lock_guard<std::mutex> lock(g_fault_mu);
        fprintf(stderr, "softgpu: FAULT %s\n", what.c_str());
        fflush(stderr);
    }
    g_faulted.store(true);
    kill_current_launch();  // returns at once when no kernel runs on this thread
    return cu_result;
}

bool faulted() { return g_faulted.load(); }

// ---- Device memory ------------------------------------------------------------------------
// One reserved range; each allocation gets its own pages, its data placed at the END of them
// (256-byte aligned), followed by never-mapped guard space: an access past the end faults even
// in a build without the checked hooks. Addresses are never reused, so a stale pointer always
// finds its dead allocation.

namespace {
constexpr size_t kPage = 4096;
constexpr size_t kGuard = 1 << 20;
constexpr uint64_t kArenaBytes = 1ull << 40;
constexpr size_t kMaxAllocs = 1 << 20;

struct Allocation {
    uintptr_t base;
    size_t size;
    uintptr_t map_lo;
    size_t map_len;
    std::atomic<bool> live;
};

struct Arena {
    uintptr_t lo = 0, hi = 0, cursor = 0;
    Allocation* table = nullptr;
    std::atomic<size_t> count{0};
    std::atomic<uint64_t> frees{0};  // bumps on every free: invalidates per-thread caches
    std::atomic<uint64_t> used{0};
    std::mutex mu;
};

Arena& arena() {
    static Arena* a = [] {
        auto* a = new Arena;
        void* p = mmap(nullptr, kArenaBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                       -1, 0);
        void* t = mmap(nullptr, kMaxAllocs * sizeof(Allocation), PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED || t == MAP_FAILED) {
            fprintf(stderr, "softgpu: cannot reserve the device address range\n");
            abort();
        }
        a->lo = a->cursor = reinterpret_cast<uintptr_t>(p) + kGuard;
        a->hi = reinterpret_cast<uintptr_t>(p) + kArenaBytes;
        a->table = static_cast<Allocation*>(t);
        return a;
    }();
    return *a;
}

// The allocation whose pages hold `a` (live or dead), or nullptr.
const Allocation* find_alloc(uintptr_t a) {
    Arena& ar = arena();
    size_t n = ar.count.load(std::memory_order_acquire);
    size_t lo = 0, hi = n;
    while (lo < hi) {  // last entry with map_lo <= a
        size_t mid = (lo + hi) / 2;
        if (ar.table[mid].map_lo <= a) lo = mid + 1; else hi = mid;
    }
    if (lo == 0) return nullptr;
    const Allocation* al = &ar.table[lo - 1];
    if (a >= al->map_lo + al->map_len + kGuard) return nullptr;
    return al;
}
}  // namespace

void* device_alloc(size_t bytes, std::string* why) {
    Arena& ar = arena();
    size_t rounded = (std::max<size_t>(bytes, 1) + 255) & ~size_t(255);
    size_t map_len = (rounded + kPage - 1) & ~(kPage - 1);
    std::lock_guard<std::mutex> lock(ar.mu);
    if (ar.used.load() + rounded > kTotalMemory) {
        if (why) *why = format("out of memory: %zu bytes asked, %" PRIu64 " of %" PRIu64 " in use", bytes, ar.used.load(), kTotalMemory);
        return nullptr;
    }
    size_t idx = ar.count.load();
    if (idx >= kMaxAllocs || ar.cursor + map_len + kGuard > ar.hi) {
        if (why) *why = "the software GPU's address range is exhausted";
        return nullptr;
    }
    uintptr_t map_lo = ar.cursor;
    if (mprotect(reinterpret_cast<void*>(map_lo), map_len, PROT_READ | PROT_WRITE) != 0) {
        if (why) *why = "mprotect failed (host out of memory)";
        return nullptr;
    }
    ar.cursor += map_len + kGuard;
    uintptr_t base = map_lo + map_len - rounded;
    memset(reinterpret_cast<void*>(base), 0xFF, bytes);  // uninitialised device memory: NaNs
#if SG_ASAN
    // Unpoison exactly the allocation: the slack before it and the rounding after are off limits.
    __asan_poison_memory_region(reinterpret_cast<void*>(map_lo), map_len);
    __asan_unpoison_memory_region(reinterpret_cast<void*>(base), bytes);
#endif
    Allocation& al = ar.table[idx];
    al.base = base;
    al.size = bytes;
    al.map_lo = map_lo;
    al.map_len = map_len;
    al.live.store(true);
    ar.count.store(idx + 1, std::memory_order_release);
    ar.used += rounded;
    return reinterpret_cast<void*>(base);
}

bool device_free(void* p, std::string* why) {
    Arena& ar = arena();
    std::lock_guard<std::mutex> lock(ar.mu);
    auto* al = const_cast<Allocation*>(find_alloc(reinterpret_cast<uintptr_t>(p)));
    if (!al || al->base != reinterpret_cast<uintptr_t>(p)) {
        if (why) *why = format("%p is not the start of a device allocation", p);
        return false;
    }
    if (!al->live.load()) {
        if (why) *why = format("%p was already freed", p);
        return false;
    }
    al->live.store(false);
    ar.frees++;
    ar.used -= (al->size + 255) & ~size_t(255);
    // Freed pages become inaccessible: a use after free faults even without the hooks.
    mprotect(reinterpret_cast<void*>(al->map_lo), al->map_len, PROT_NONE);
    madvise(reinterpret_cast<void*>(al->map_lo), al->map_len, MADV_DONTNEED);
    return true;
}

uint64_t device_used() { return arena().used.load(); }

bool device_find(const void* p, uintptr_t* base, size_t* size) {
    const Allocation* al = find_alloc(reinterpret_cast<uintptr_t>(p));
    if (!al || !al->live.load()) return false;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a < al->base || a >= al->base + al->size) return false;
    *base = al->base;
    *size = al->size;
    return true;
}

static std::string describe_addr(uintptr_t a, size_t bytes) {
    const Allocation* al = find_alloc(a);
    if (!al) return format("%#" PRIxPTR " (%zu bytes) is in no device allocation", a, bytes);
    std::string state = al->live.load() ? "" : "freed ";
    long long off = (long long)(a - al->base);
    return format("%#" PRIxPTR " (%zu bytes) is at offset %lld of the %sallocation %#" PRIxPTR
                  " of %zu bytes",
                  a, bytes, off, state.c_str(), al->base, al->size);
}

bool device_range(const void* p, size_t bytes, std::string* why) {
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    const Allocation* al = find_alloc(a);
    if (al && al->live.load() && a >= al->base && bytes <= al->size &&
        a - al->base <= al->size - bytes)
        return true;
    if (why) *why = describe_addr(a, bytes);
    return false;
}

// ---- Fibers -------------------------------------------------------------------------------

extern "C" void sg_fiber_switch(void** save_sp, void* new_sp);
extern "C" void sg_fiber_start();

#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word of the current context on
// its stack, stores its stack pointer in *save_sp, and resumes the context whose stack pointer
// is new_sp (System V x86-64).
asm(R"(
    .text
    .globl sg_fiber_switch
    .hidden sg_fiber_switch
    .type sg_fiber_switch, @function
sg_fiber_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size sg_fiber_switch, .-sg_fiber_switch
)");
#else
#error "the software GPU's fibers are written for x86-64"
#endif

namespace {

enum class FiberState : uint8_t { Runnable, AtBarrier, AtWarp, Done };
enum class Kind : uint8_t { None, Shfl, SyncWarp, Vote, Mma, Ldmatrix };

const char* kind_name(Kind k) {
    switch (k) {
        case Kind::Shfl: return "a shuffle";
        case Kind::SyncWarp: return "__syncwarp";
        case Kind::Vote: return "a vote";
        case Kind::Mma: return "mma.sync";
        case Kind::Ldmatrix: return "ldmatrix";
        default: return "nothing";
    }
}

struct Fiber {
    void* sp = nullptr;
    char* stack = nullptr;  // lowest address of the usable stack
    size_t stack_size = 0;
    uint32_t linear = 0;
    softgpu_dim3 tid{0, 0, 0};
    FiberState state = FiberState::Runnable;
    const char* file = nullptr;  // where it waits
    int line = 0;
};

struct Warp {
    Kind kind = Kind::None;
    const char* file = nullptr;
    int line = 0;
    unsigned mask = 0;
    uint32_t arrived = 0;  // lanes arrived, as a mask
    uint32_t val[32];
    int b[32], c[32], mode[32];
    uint32_t* out[32];
    float* d[32];
    uint32_t a[32][4];
    uint32_t bb[32][2];
    const void* row[32];
    int num = 0, trans = 0, elem = 0;
};

struct Shadow {
    uint32_t wep, rep;
    uint16_t wt, rt;
};
constexpr uint16_t kManyReaders = 0xFFFF;

// Runnable threads, in the schedule's order.
class RunQueue {
public:
    void reset(Schedule s, uint64_t seed) {
        s_ = s;
        fifo_.clear();
        heap_ = {};
        pool_.clear();
        rng_.seed(seed);
    }
    void push(uint32_t t) {
        switch (s_) {
            case Schedule::Lockstep:
            case Schedule::Reversed: fifo_.push_back(t); break;
            case Schedule::WarpSerial: heap_.push(t); break;
            case Schedule::Random: pool_.push_back(t); break;
        }
    }
    bool pop(uint32_t* t) {
        switch (s_) {
            case Schedule::Lockstep:
            case Schedule::Reversed:
                if (fifo_.empty()) return false;
                *t = fifo_.front();
                fifo_.pop_front();
                return true;
            case Schedule::WarpSerial:
                if (heap_.empty()) return false;
                *t = heap_.top();
                heap_.pop();
                return true;
            case Schedule::Random: {
                if (pool_.empty()) return false;
                size_t i = rng_() % pool_.size();
                *t = pool_[i];
                pool_[i] = pool_.back();
                pool_.pop_back();
                return true;
            }
        }
        return false;
    }
    bool descending() const { return s_ == Schedule::Reversed; }

private:
    Schedule s_ = Schedule::Lockstep;
    std::deque<uint32_t> fifo_;
    std::priority_queue<uint32_t, std::vector<uint32_t>, std::greater<uint32_t>> heap_;
    std::vector<uint32_t> pool_;
    std::mt19937_64 rng_;
};

// The kernels library's thread-local storage is exactly the kernels' static __shared__ arrays
// (and one anchor byte): found once per OS thread.
struct KernelLib {
    void* handle = nullptr;
    std::string path;
    size_t tls_size = 0;
    void* (*anchor)() = nullptr;
    // Bytes of the TLS block that are not shared memory: the guard variables gcc gives a
    // thread_local array of a class type (such as __half), checked and set by the kernel code
    // itself. Exempt from the shared-memory checks.
    std::vector<uint8_t> not_shared;
};
KernelLib g_lib;

constexpr unsigned kMaxDynamicShared = 227 * 1024;

struct Exec {
    const Launch* launch = nullptr;
    std::vector<Fiber> fibers;
    std::vector<Warp> warps;
    uint32_t nthreads = 0;
    softgpu_dim3 block_dim{1, 1, 1}, grid_dim{1, 1, 1}, block{0, 0, 0};
    Fiber* cur = nullptr;
    void* sched_sp = nullptr;
    RunQueue queue;
    uint32_t at_barrier = 0, done = 0;
    bool killed = false;
    bool running = false;   // a launch runs on this OS thread
    bool in_fiber = false;  // and one of its threads is executing now
    void* sched_bottom = nullptr;  // the scheduler's stack, for AddressSanitizer's fiber switches
    size_t sched_size = 0;
    // Shared memory: the kernels library's TLS block (static) and the dynamic buffer.
    uintptr_t static_lo = 0;
    size_t static_size = 0;
    uintptr_t dyn_lo = 0;
    size_t dyn_size = 0;  // this launch's bytes
    std::vector<Shadow> static_shadow, dyn_shadow;
    uint32_t epoch = 0, block_epoch = 0;
    std::vector<void*> param_ptrs;
    // Per-thread cache of the last device allocation hit by a hook.
    uintptr_t cache_base = 0;
    size_t cache_size = 0;
    uint64_t cache_frees = ~0ull;
    std::string kernel_name;
};

thread_local Exec* t_exec = nullptr;
size_t g_stack_size = SG_ASAN ? (512 << 10) : (128 << 10);

std::string where(const Exec* e, const Fiber* f) {
    if (!f) return format("kernel %s block (%u,%u,%u)", e->kernel_name.c_str(), e->block.x, e->block.y, e->block.z);
    return format("kernel %s block (%u,%u,%u) thread (%u,%u,%u)", e->kernel_name.c_str(),
                  e->block.x, e->block.y, e->block.z, f->tid.x, f->tid.y, f->tid.z);
}

Exec& exec_for_thread() {
    thread_local Exec e;
    return e;
}

void fiber_main();

void init_fiber(Fiber& f) {
    if (!f.stack) {
        // A guard page below each stack: an overflow faults instead of corrupting a neighbour.
        size_t len = g_stack_size + kPage;
        void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "softgpu: cannot map a fiber stack\n");
            abort();
        }
        mprotect(p, kPage, PROT_NONE);
        f.stack = static_cast<char*>(p) + kPage;
        f.stack_size = g_stack_size;
    }
#if SG_ASAN
    // A reused stack still holds the redzones of the frames its last fiber never returned from
    // (a finished fiber leaves fiber_main through yield_to_scheduler; a killed one anywhere):
    // stale poison that the next fiber's locals would trip over.
    __asan_unpoison_memory_region(f.stack, f.stack_size);
#endif
    // The initial frame sg_fiber_switch pops: MXCSR/x87 CW, six registers, then the return
    // address sg_fiber_start, entered with the stack 8 bytes off 16-byte alignment, as after a
    // call.
    uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + f.stack_size) & ~uintptr_t(15);
    uint64_t* sp = reinterpret_cast<uint64_t*>(top - 72);
    uint32_t mxcsr = 0x1F80;
    uint16_t fpcw = 0x037F;
    memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
    memcpy(reinterpret_cast<char*>(sp) + 4, &fpcw, 2);
    for (int i = 1; i <= 6; ++i) sp[i] = 0;
    sp[7] = reinterpret_cast<uint64_t>(&sg_fiber_start);
    sp[8] = 0;
    f.sp = sp;
}

// From the scheduler into fiber f.
void switch_to(Exec* e, Fiber* f) {
    e->cur = f;
    e->in_fiber = true;
#if SG_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, f->stack, f->stack_size);
    sg_fiber_switch(&e->sched_sp, f->sp);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    sg_fiber_switch(&e->sched_sp, f->sp);
#endif
    e->in_fiber = false;
    e->cur = nullptr;
}

// From the running fiber back to the scheduler.
void yield_to_scheduler(Exec* e, bool finished) {
    Fiber* f = e->cur;
#if SG_ASAN
    void* fake = nullptr;
    __sanitizer_start_switch_fiber(finished ? nullptr : &fake, e->sched_bottom, e->sched_size);
    sg_fiber_switch(&f->sp, e->sched_sp);
    __sanitizer_finish_switch_fiber(fake, const_cast<const void**>(&e->sched_bottom), &e->sched_size);
#else
    (void)finished;
    sg_fiber_switch(&f->sp, e->sched_sp);
#endif
}

void fiber_main() {
    Exec* e = t_exec;
#if SG_ASAN
    __sanitizer_finish_switch_fiber(nullptr, const_cast<const void**>(&e->sched_bottom), &e->sched_size);
#endif
    e->launch->kernel->invoke(e->param_ptrs.data());
    Fiber* f = e->cur;
    f->state = FiberState::Done;
    e->done++;
    yield_to_scheduler(e, true);
    abort();  // a finished fiber is never resumed
}

}  // namespace

extern "C" __attribute__((used)) void sg_fiber_entry_c() { fiber_main(); }

asm(R"(
    .text
    .globl sg_fiber_start
    .hidden sg_fiber_start
    .type sg_fiber_start, @function
sg_fiber_start:
    pushq $0
    call sg_fiber_entry_c
    ud2
    .size sg_fiber_start, .-sg_fiber_start
)");

namespace {

// A fault inside a launch: the launch ends here, as a device fault ends a kernel.
[[noreturn]] void die_in_fiber(Exec* e) {
    e->killed = true;
    yield_to_scheduler(e, true);
    abort();
}

}  // namespace

static void kill_current_launch() {
    Exec* e = t_exec;
    if (!e || !e->running) return;
    e->killed = true;
    if (e->in_fiber) die_in_fiber(e);
}

namespace {

void find_static_shared(Exec* e) {
    if (!g_lib.handle || !g_lib.anchor) return;
    g_lib.anchor();  // makes sure this thread's TLS block for the library exists
    void* base = nullptr;
    if (dlinfo(g_lib.handle, RTLD_DI_TLS_DATA, &base) != 0 || !base) {
        fprintf(stderr, "softgpu: cannot find the kernels' shared memory (dlinfo: %s)\n", dlerror());
        abort();
    }
    e->static_lo = reinterpret_cast<uintptr_t>(base);
    e->static_size = g_lib.tls_size;
    e->static_shadow.assign(e->static_size, Shadow{0, 0, 0, 0});
}

void fault_here(Exec* e, const std::string& what) {
    fault(where(e, e->cur) + ": " + what);
}

// ---- Shared-memory race checker (barrier epochs) ----

void shared_access(Exec* e, Shadow* sh, uintptr_t a, size_t n, bool write, const char* region) {
    uint16_t t = static_cast<uint16_t>(e->cur->linear);
    for (size_t i = 0; i < n; ++i) {
        Shadow& s = sh[i];
        bool written_here = s.wep >= e->block_epoch && s.wep != 0;
        if (write) {
            if (written_here && s.wep == e->epoch && s.wt != t)
                fault_here(e, format("shared-memory race: %s byte %#" PRIxPTR " written by thread %u and by this thread with no barrier between", region, a + i, s.wt));
            if (s.rep == e->epoch && s.rep >= e->block_epoch && s.rt != t)
                fault_here(e, format("shared-memory race: %s byte %#" PRIxPTR " read by %s and written by this thread with no barrier between", region, a + i, s.rt == kManyReaders ? std::string("other threads").c_str() : format("thread %u", s.rt).c_str()));
            s.wep = e->epoch;
            s.wt = t;
        } else {
            if (!written_here)
                fault_here(e, format("read of %s byte %#" PRIxPTR " that no thread of this block has written", region, a + i));
            if (s.wep == e->epoch && s.wt != t)
                fault_here(e, format("shared-memory race: %s byte %#" PRIxPTR " written by thread %u and read by this thread with no barrier between", region, a + i, s.wt));
            if (s.rep == e->epoch && s.rt != t)
                s.rt = kManyReaders;
            else if (s.rep != e->epoch) {
                s.rep = e->epoch;
                s.rt = t;
            }
        }
    }
}

// Every access the checked kernels make. Returns after checking; faults end the launch.
inline void check_access(const void* p, size_t n, bool write, bool aligned_access) {
    Exec* e = t_exec;
    if (!e || !e->in_fiber) return;
    uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if (a - e->static_lo < e->static_size) {
        if (g_lib.not_shared[a - e->static_lo]) return;
        if (a + n > e->static_lo + e->static_size)
            fault_here(e, format("%zu-byte access at %#" PRIxPTR " runs past the static shared memory", n, a));
        if (aligned_access && n > 1 && a % n != 0)
            fault_here(e, format("misaligned %zu-byte shared-memory access at %#" PRIxPTR, n, a));
        shared_access(e, &e->static_shadow[a - e->static_lo], a, n, write, "static shared");
        return;
    }
    if (a - e->dyn_lo < kMaxDynamicShared) {
        if (a + n > e->dyn_lo + e->dyn_size)
            fault_here(e, format("%zu-byte access at offset %zu of dynamic shared memory, past the launch's %zu bytes", n, size_t(a - e->dyn_lo), e->dyn_size));
        if (aligned_access && n > 1 && a % n != 0)
            fault_here(e, format("misaligned %zu-byte shared-memory access at %#" PRIxPTR, n, a));
        shared_access(e, &e->dyn_shadow[a - e->dyn_lo], a, n, write, "dynamic shared");
        return;
    }
    Arena& ar = arena();
    if (a - ar.lo >= ar.hi - ar.lo) return;  // the thread's own stack, or host memory
    uint64_t frees = ar.frees.load(std::memory_order_relaxed);
    if (!(frees == e->cache_frees && a - e->cache_base < e->cache_size &&
          n <= e->cache_size - (a - e->cache_base))) {
        uintptr_t base;
        size_t size;
        std::string why;
        if (!device_range(p, n, &why))
            fault_here(e, format("%s of device memory: %s", write ? "write" : "read", why.c_str()));
        device_find(p, &base, &size);
        e->cache_base = base;
        e->cache_size = size;
        e->cache_frees = frees;
    }
    if (aligned_access && n > 1 && a % n != 0)
        fault_here(e, format("misaligned %zu-byte %s of device memory at %#" PRIxPTR, n, write ? "write" : "read", a));
}

// ---- Collectives ----

Fiber* current(const char* what) {
    Exec* e = t_exec;
    if (!e || !e->in_fiber || !e->cur) {
        fprintf(stderr, "softgpu: %s called outside a kernel\n", what);
        abort();
    }
    return e->cur;
}

void release_barrier(Exec* e) {
    const Fiber& first = e->fibers[0];
    for (uint32_t i = 1; i < e->nthreads; ++i) {
        const Fiber& f = e->fibers[i];
        if (f.line != first.line || (f.file != first.file && strcmp(f.file, first.file) != 0))
            fault_here(e, format("divergent __syncthreads: thread (%u,%u,%u) waits at %s:%d, thread (%u,%u,%u) at %s:%d", first.tid.x, first.tid.y, first.tid.z, first.file, first.line, f.tid.x, f.tid.y, f.tid.z, f.file, f.line));
    }
    e->epoch++;
    e->at_barrier = 0;
    for (uint32_t k = 0; k < e->nthreads; ++k) {
        uint32_t i = e->queue.descending() ? e->nthreads - 1 - k : k;
        e->fibers[i].state = FiberState::Runnable;
        e->queue.push(i);
    }
}

// Lanes of warp w that exist (a last, partial warp has fewer).
uint32_t existing_lanes(const Exec* e, uint32_t w) {
    uint32_t first = w * 32;
    uint32_t n = std::min<uint32_t>(32, e->nthreads - first);
    return n == 32 ? 0xFFFFFFFFu : ((1u << n) - 1);
}

void complete_warp(Exec* e, uint32_t wi) {
    Warp& w = e->warps[wi];
    switch (w.kind) {
        case Kind::Shfl:
            for (int l = 0; l < 32; ++l) {
                if (!(w.arrived >> l & 1)) continue;
                bool in_range = false;
                int src = warp::shfl_source(static_cast<warp::Shfl>(w.mode[l]), l, w.b[l], w.c[l], &in_range);
                if (in_range && !(w.arrived >> src & 1)) {
                    e->cur = &e->fibers[wi * 32 + l];
                    fault_here(e, format("shuffle at %s:%d reads lane %d, which is not in the mask %#x", w.file, w.line, src, w.mask));
                }
                *w.out[l] = in_range ? w.val[src] : w.val[l];
            }
            break;
        case Kind::SyncWarp:
            break;
        case Kind::Vote: {
            uint32_t ballot = 0;
            for (int l = 0; l < 32; ++l)
                if ((w.arrived >> l & 1) && w.val[l]) ballot |= 1u << l;
            for (int l = 0; l < 32; ++l) {
                if (!(w.arrived >> l & 1)) continue;
                uint32_t r = ballot;
                if (w.mode[l] == 1) r = ballot != 0;
                if (w.mode[l] == 2) r = ballot == w.arrived;
                *w.out[l] = r;
            }
            break;
        }
        case Kind::Mma: {
            float c[32][4], d[32][4];
            for (int l = 0; l < 32; ++l)
                for (int i = 0; i < 4; ++i) c[l][i] = w.d[l][i];
            warp::mma_m16n8k16(w.elem ? warp::Elem::BF16 : warp::Elem::F16, w.a, w.bb, c, d);
            for (int l = 0; l < 32; ++l)
                for (int i = 0; i < 4; ++i) w.d[l][i] = d[l][i];
            break;
        }
        case Kind::Ldmatrix: {
            // Lanes 0 .. 8*num-1 give the row addresses: each must be a 16-byte aligned row
            // inside shared memory, and its read is checked as that lane's.
            for (int l = 0; l < 8 * w.num; ++l) {
                uintptr_t a = reinterpret_cast<uintptr_t>(w.row[l]);
                Fiber* f = &e->fibers[wi * 32 + l];
                e->cur = f;
                bool in_static = a - e->static_lo < e->static_size && a + 16 <= e->static_lo + e->static_size;
                bool in_dyn = a - e->dyn_lo < e->dyn_size && a + 16 <= e->dyn_lo + e->dyn_size;
                if (!in_static && !in_dyn)
                    fault_here(e, format("ldmatrix at %s:%d: row address %#" PRIxPTR " is not 16 bytes inside shared memory", w.file, w.line, a));
                if (a % 16 != 0)
                    fault_here(e, format("ldmatrix at %s:%d: row address %#" PRIxPTR " is not 16-byte aligned", w.file, w.line, a));
                if (kChecked) {
                    Shadow* sh = in_static ? &e->static_shadow[a - e->static_lo] : &e->dyn_shadow[a - e->dyn_lo];
                    shared_access(e, sh, a, 16, false, in_static ? "static shared" : "dynamic shared");
                }
            }
            uint32_t out[32][4];
            for (int l = 0; l < 32; ++l)
                for (int i = 0; i < 4; ++i) out[l][i] = 0;
            warp::ldmatrix(w.num, w.trans != 0, w.row, out);
            for (int l = 0; l < 32; ++l)
                for (int i = 0; i < w.num; ++i) w.out[l][i] = out[l][i];
            break;
        }
        case Kind::None:
            break;
    }
    uint32_t lanes = w.arrived;
    w.kind = Kind::None;
    w.arrived = 0;
    for (int k = 0; k < 32; ++k) {
        int l = e->queue.descending() ? 31 - k : k;
        if (!(lanes >> l & 1)) continue;
        Fiber& f = e->fibers[wi * 32 + l];
        f.state = FiberState::Runnable;
        e->queue.push(wi * 32 + l);
    }
}

// The calling lane arrives at a warp collective; returns when it is complete. `deposit` fills
// this lane's inputs.
template <typename F>
void warp_collective(Kind kind, unsigned mask, const char* file, int line, F deposit) {
    Exec* e = t_exec;
    Fiber* f = current(kind_name(kind));
    uint32_t wi = f->linear / 32, lane = f->linear % 32;
    Warp& w = e->warps[wi];
    uint32_t exist = existing_lanes(e, wi);
    if ((mask & ~exist) != 0)
        fault_here(e, format("%s at %s:%d names lanes %#x, past the block's last thread", kind_name(kind), file, line, mask & ~exist));
    if (!(mask >> lane & 1))
        fault_here(e, format("%s at %s:%d by a lane outside its mask %#x", kind_name(kind), file, line, mask));
    if (w.kind == Kind::None) {
        w.kind = kind;
        w.file = file;
        w.line = line;
        w.mask = mask;
    } else if (w.kind != kind || w.line != line || w.mask != mask ||
               (w.file != file && strcmp(w.file, file) != 0)) {
        fault_here(e, format("divergent warp collective: lanes of warp %u wait at %s (%s:%d, mask %#x) while this lane reaches %s (%s:%d, mask %#x)", wi, kind_name(w.kind), w.file, w.line, w.mask, kind_name(kind), file, line, mask));
    }
    deposit(w, lane);
    w.arrived |= 1u << lane;
    f->state = FiberState::AtWarp;
    f->file = file;
    f->line = line;
    if (w.arrived == mask) complete_warp(e, wi);
    e->cur = f;
    yield_to_scheduler(e, false);
}

// Why the block cannot go on: every live thread waits and nothing completes.
std::string diagnose_stall(Exec* e) {
    for (uint32_t wi = 0; wi < e->warps.size(); ++wi) {
        Warp& w = e->warps[wi];
        if (w.kind == Kind::None) continue;
        for (int l = 0; l < 32; ++l) {
            if (!(w.mask >> l & 1) || (w.arrived >> l & 1)) continue;
            Fiber& f = e->fibers[wi * 32 + l];
            e->cur = &f;
            const char* state = f.state == FiberState::Done ? "has exited" : "waits at __syncthreads";
            std::string at = f.state == FiberState::AtBarrier ? format(" (%s:%d)", f.file, f.line) : std::string();
            return where(e, &f) + format(": never reaches %s at %s:%d that the rest of warp %u waits at: it %s%s", kind_name(w.kind), w.file, w.line, wi, state, at.c_str());
        }
    }
    for (uint32_t i = 0; i < e->nthreads; ++i) {
        Fiber& f = e->fibers[i];
        if (f.state == FiberState::Done && e->at_barrier > 0) {
            for (auto& g : e->fibers)
                if (g.state == FiberState::AtBarrier) {
                    e->cur = &f;
                    return where(e, &f) + format(": exits while other threads wait at __syncthreads (%s:%d): a divergent barrier", g.file, g.line);
                }
        }
    }
    return "the block stalled for no reason the runtime knows (a runtime bug)";
}

bool run_block(Exec* e) {
    e->epoch++;
    e->block_epoch = e->epoch;
    e->at_barrier = 0;
    e->done = 0;
    e->queue.reset(config().schedule, config().seed ^ (uint64_t(e->block.x) << 20) ^ (uint64_t(e->block.y) << 40) ^ e->block.z);
    for (auto& w : e->warps) {
        w.kind = Kind::None;
        w.arrived = 0;
    }
    if (e->static_size) memset(reinterpret_cast<void*>(e->static_lo), 0xFF, e->static_size);
    if (e->dyn_size) memset(reinterpret_cast<void*>(e->dyn_lo), 0xFF, e->dyn_size);
    for (uint32_t k = 0; k < e->nthreads; ++k) {
        uint32_t i = e->queue.descending() ? e->nthreads - 1 - k : k;
        Fiber& f = e->fibers[i];
        init_fiber(f);
        f.state = FiberState::Runnable;
        e->queue.push(i);
    }
    uint32_t next;
    while (true) {
        if (!e->queue.pop(&next)) {
            if (e->done == e->nthreads) return true;
            fault(diagnose_stall(e));  // from the scheduler: marks the launch killed
            return false;
        }
        Fiber* f = &e->fibers[next];
        if (f->state != FiberState::Runnable) continue;
        switch_to(e, f);
        if (e->killed) return false;
        if (f->state == FiberState::AtBarrier && e->at_barrier == e->nthreads) {
            e->cur = f;
            release_barrier(e);
            e->cur = nullptr;
        }
        if (e->killed) return false;
    }
}

}  // namespace

bool run_launch(const Launch& L) {
    Exec* e = &exec_for_thread();
    if (e->running) {
        fprintf(stderr, "softgpu: a kernel launched from inside a kernel\n");
        abort();
    }
    if (e->static_size == 0 && g_lib.handle) find_static_shared(e);
    e->launch = &L;
    e->kernel_name = L.kernel->name;
    e->nthreads = static_cast<uint32_t>(L.block.count());
    e->block_dim = {L.block.x, L.block.y, L.block.z};
    e->grid_dim = {L.grid.x, L.grid.y, L.grid.z};
    if (e->fibers.size() < e->nthreads) e->fibers.resize(e->nthreads);
    e->warps.resize((e->nthreads + 31) / 32);
    for (uint32_t i = 0; i < e->nthreads; ++i) {
        Fiber& f = e->fibers[i];
        f.linear = i;
        f.tid = {i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
    }
    static thread_local void* dyn = nullptr;
    if (!dyn) {
        dyn = aligned_alloc(128, kMaxDynamicShared);
        e->dyn_shadow.assign(kMaxDynamicShared, Shadow{0, 0, 0, 0});
    }
    e->dyn_lo = reinterpret_cast<uintptr_t>(dyn);
    e->dyn_size = L.shared_bytes;
    e->param_ptrs.clear();
    for (auto& p : L.params) e->param_ptrs.push_back(const_cast<unsigned char*>(p.data()));
    e->cache_frees = ~0ull;

    // Block order: natural, reversed, or seeded, by schedule.
    uint64_t blocks = L.grid.count();
    std::vector<uint64_t> order(blocks);
    for (uint64_t i = 0; i < blocks; ++i) order[i] = i;
    if (config().schedule == Schedule::Reversed) std::reverse(order.begin(), order.end());
    if (config().schedule == Schedule::Random) {
        std::mt19937_64 rng(config().seed);
        std::shuffle(order.begin(), order.end(), rng);
    }
    t_exec = e;
    e->running = true;
    e->killed = false;
    bool ok = true;
    for (uint64_t b : order) {
        e->block = {unsigned(b % L.grid.x), unsigned((b / L.grid.x) % L.grid.y), unsigned(b / (uint64_t(L.grid.x) * L.grid.y))};
        if (!run_block(e)) {
            ok = false;
            break;
        }
    }
    e->running = false;
    e->cur = nullptr;
    t_exec = nullptr;
    return ok;
}

void set_kernel_library(void* handle, const std::string& path) {
    g_lib.handle = handle;
    g_lib.path = path;
    g_lib.anchor = reinterpret_cast<void* (*)()>(dlsym(handle, "softgpu_kernels_tls_anchor"));
    struct Ctx {
        std::string path;
        size_t size;
        void* anchor;
    } ctx{path, 0, reinterpret_cast<void*>(g_lib.anchor)};
    // The PT_TLS segment of the library that holds the anchor function.
    dl_iterate_phdr(
        [](dl_phdr_info* info, size_t, void* data) -> int {
            auto* c = static_cast<Ctx*>(data);
            bool mine = false;
            for (int i = 0; i < info->dlpi_phnum; ++i) {
                const auto& ph = info->dlpi_phdr[i];
                if (ph.p_type != PT_LOAD) continue;
                uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
                uintptr_t a = reinterpret_cast<uintptr_t>(c->anchor);
                if (a >= lo && a < lo + ph.p_memsz) mine = true;
            }
            if (!mine) return 0;
            for (int i = 0; i < info->dlpi_phnum; ++i)
                if (info->dlpi_phdr[i].p_type == PT_TLS) c->size = info->dlpi_phdr[i].p_memsz;
            return 1;
        },
        &ctx);
    g_lib.tls_size = ctx.size;
    g_lib.not_shared.assign(ctx.size, 0);
    // The guard variables (_ZGV...) among the library's TLS symbols, from its symbol table.
    int fd = open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    off_t len = lseek(fd, 0, SEEK_END);
    void* map = mmap(nullptr, size_t(len), PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return;
    auto* base = static_cast<const unsigned char*>(map);
    auto* eh = reinterpret_cast<const Elf64_Ehdr*>(base);
    auto* sh = reinterpret_cast<const Elf64_Shdr*>(base + eh->e_shoff);
    for (int pass = 0; pass < 2; ++pass) {
        for (int i = 0; i < eh->e_shnum; ++i) {
            if (sh[i].sh_type != (pass == 0 ? SHT_SYMTAB : SHT_DYNSYM)) continue;
            auto* syms = reinterpret_cast<const Elf64_Sym*>(base + sh[i].sh_offset);
            const char* names = reinterpret_cast<const char*>(base + sh[sh[i].sh_link].sh_offset);
            size_t count = sh[i].sh_size / sizeof(Elf64_Sym);
            for (size_t k = 0; k < count; ++k) {
                if (ELF64_ST_TYPE(syms[k].st_info) != STT_TLS) continue;
                if (strncmp(names + syms[k].st_name, "_ZGV", 4) != 0) continue;
                for (size_t b = 0; b < syms[k].st_size && syms[k].st_value + b < ctx.size; ++b)
                    g_lib.not_shared[syms[k].st_value + b] = 1;
            }
        }
    }
    munmap(map, size_t(len));
}

}  // namespace sg

using sg::t_exec;

// ---- What the kernels call (softgpu/include/softgpu_kernel.h) ------------------------------

SG_EXPORT softgpu_dim3 softgpu_thread_idx() { return sg::current("threadIdx")->tid; }
SG_EXPORT softgpu_dim3 softgpu_block_idx() { sg::current("blockIdx"); return t_exec->block; }
SG_EXPORT softgpu_dim3 softgpu_block_dim() { sg::current("blockDim"); return t_exec->block_dim; }
SG_EXPORT softgpu_dim3 softgpu_grid_dim() { sg::current("gridDim"); return t_exec->grid_dim; }

SG_EXPORT void* softgpu_dynamic_shared() {
    sg::current("dynamic shared memory");
    return reinterpret_cast<void*>(t_exec->dyn_lo);
}

SG_EXPORT void softgpu_barrier(const char* file, int line) {
    sg::Exec* e = t_exec;
    sg::Fiber* f = sg::current("__syncthreads");
    f->state = sg::FiberState::AtBarrier;
    f->file = file;
    f->line = line;
    e->at_barrier++;
    sg::yield_to_scheduler(e, false);
}

SG_EXPORT uint32_t softgpu_shfl(int mode, unsigned mask, uint32_t value, int b, int c,
                                const char* file, int line) {
    uint32_t result = 0;
    sg::warp_collective(sg::Kind::Shfl, mask, file, line, [&](sg::Warp& w, uint32_t lane) {
        w.val[lane] = value;
        w.mode[lane] = mode;
        w.b[lane] = b;
        w.c[lane] = c;
        w.out[lane] = &result;
    });
    return result;
}

SG_EXPORT void softgpu_syncwarp(unsigned mask, const char* file, int line) {
    sg::warp_collective(sg::Kind::SyncWarp, mask, file, line, [](sg::Warp&, uint32_t) {});
}

SG_EXPORT unsigned softgpu_vote(int mode, unsigned mask, int predicate, const char* file,
                                int line) {
    uint32_t result = 0;
    sg::warp_collective(sg::Kind::Vote, mask, file, line, [&](sg::Warp& w, uint32_t lane) {
        w.val[lane] = predicate != 0;
        w.mode[lane] = mode;
        w.out[lane] = &result;
    });
    return result;
}

SG_EXPORT void softgpu_mma_m16n8k16(int elem, float* d, const uint32_t* a, uint32_t b0,
                                    uint32_t b1, const char* file, int line) {
    sg::warp_collective(sg::Kind::Mma, 0xFFFFFFFFu, file, line, [&](sg::Warp& w, uint32_t lane) {
        if (w.arrived == 0) w.elem = elem;
        for (int i = 0; i < 4; ++i) w.a[lane][i] = a[i];
        w.bb[lane][0] = b0;
        w.bb[lane][1] = b1;
        w.d[lane] = d;
    });
}

SG_EXPORT void softgpu_ldmatrix(int num, int trans, uint32_t* r, const void* row,
                                const char* file, int line) {
    sg::warp_collective(sg::Kind::Ldmatrix, 0xFFFFFFFFu, file, line, [&](sg::Warp& w, uint32_t lane) {
        if (w.arrived == 0) {
            w.num = num;
            w.trans = trans;
        }
        w.row[lane] = row;
        w.out[lane] = r;
    });
}

// ---- ThreadSanitizer's instrumentation, pointed at the checks ------------------------------
// The checked kernels library is compiled with -fsanitize=thread but not linked with TSan's
// runtime: these definitions receive every load and store it makes.

#define SG_TSAN_ACCESS(N)                                                                       \
    SG_EXPORT void __tsan_read##N(void* p) { sg::check_access(p, N, false, true); }             \
    SG_EXPORT void __tsan_write##N(void* p) { sg::check_access(p, N, true, true); }             \
    SG_EXPORT void __tsan_unaligned_read##N(void* p) { sg::check_access(p, N, false, true); }   \
    SG_EXPORT void __tsan_unaligned_write##N(void* p) { sg::check_access(p, N, true, true); }   \
    SG_EXPORT void __tsan_volatile_read##N(void* p) { sg::check_access(p, N, false, true); }    \
    SG_EXPORT void __tsan_volatile_write##N(void* p) { sg::check_access(p, N, true, true); }
SG_TSAN_ACCESS(1)
SG_TSAN_ACCESS(2)
SG_TSAN_ACCESS(4)
SG_TSAN_ACCESS(8)
SG_TSAN_ACCESS(16)
SG_EXPORT void __tsan_read_range(void* p, unsigned long n) { sg::check_access(p, n, false, false); }
SG_EXPORT void __tsan_write_range(void* p, unsigned long n) { sg::check_access(p, n, true, false); }
SG_EXPORT void __tsan_init() {}
SG_EXPORT void __tsan_func_entry(void*) {}
SG_EXPORT void __tsan_func_exit() {}
SG_EXPORT void __tsan_vptr_update(void**, void*) {}
SG_EXPORT void __tsan_vptr_read(void**) {}
