// The kernel runtime of the software GPU: device memory, and running one kernel launch's
// blocks as fibers under a chosen schedule with the checkers on. Used by driver.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "internal.h"
#include "softgpu_abi.h"

namespace sg {

// ---- Device memory ------------------------------------------------------------------------
// An H100-like part: total memory the stand-in reports and never exceeds.
constexpr uint64_t kTotalMemory = 80ull << 30;
void* device_alloc(size_t bytes, std::string* why);  // nullptr and `why` when out of memory
bool device_free(void* p, std::string* why);         // false: not a live allocation's base
uint64_t device_used();
// The live allocation holding `p`: its base and size; false if none.
bool device_find(const void* p, uintptr_t* base, size_t* size);

// ---- Kernels ------------------------------------------------------------------------------
struct Dim3 {
    unsigned x = 1, y = 1, z = 1;
    uint64_t count() const { return uint64_t(x) * y * z; }
};

// One launch, its parameters copied by value (so that it can run later, or again from a
// graph). Runs every block to completion on the calling OS thread, in the configured schedule;
// returns false after a fault (already reported through sg::fault).
struct Launch {
    const softgpu_kernel_entry* kernel = nullptr;
    Dim3 grid, block;
    unsigned shared_bytes = 0;
    std::vector<std::vector<unsigned char>> params;
};
bool run_launch(const Launch& launch);

// The kernels library, once loaded (its thread-local storage is the static shared memory).
void set_kernel_library(void* handle, const std::string& path);

// The configured schedule and checks, for `crossrank info` style reports and test output.
std::string describe();

}  // namespace sg
