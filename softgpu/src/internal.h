// The software GPU's internal interface: what the driver stand-in (driver.cpp), the cuBLASLt
// stand-in (cublaslt.cpp) and the kernel runtime (runtime.cpp) offer each other. All three are
// built into ONE shared library, installed as libcuda.so.1 and, through a symlink to the same
// file, as libcublasLt.so.13 (the dynamic loader sees one object under both names). The kernels
// (kernels/*.cu compiled as host C++) are a second library, libsoftgpu_kernels.so, loaded by
// cuModuleLoadData.
//
// Nothing here is a GPU: it runs our kernel sources on the CPU under checks stricter than the
// hardware's, and it never produces a speed figure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace sg {

// ---- Faults -------------------------------------------------------------------------------
// A fault is something real hardware or a real library would fault on, refuse, or leave
// undefined (an access outside an allocation, a misaligned vector access, a divergent barrier,
// a race on shared memory, a bad leading dimension...). It is printed at once as one line
// "softgpu: FAULT <what>" on stderr, and made sticky: the context is broken, as after a real
// device fault, and every later driver call returns CUDA_ERROR_ILLEGAL_ADDRESS (or the code
// given) until the process ends. Returns the CUresult to hand back.
int fault(const std::string& what, int cu_result = 700 /* CUDA_ERROR_ILLEGAL_ADDRESS */);
// Whether a sticky fault has happened (tests of the checkers read it).
bool faulted();

// ---- Device memory ------------------------------------------------------------------------
// Every device allocation is its own region of a reserved address range, 256-byte aligned,
// with inaccessible guard pages after it. Returns true when [p, p + bytes) lies inside ONE live
// device allocation; otherwise false, with `why` naming the nearest allocation and the offset.
bool device_range(const void* p, size_t bytes, std::string* why);

// ---- Streams ------------------------------------------------------------------------------
// Work on a stream is deferred, as on a real GPU: an enqueued op runs when the host waits for
// the stream (cuStreamSynchronize, cuEventSynchronize of a later event, a synchronous copy,
// cuCtxSynchronize), in order. While the stream is being captured (cuStreamBeginCapture), the op
// is recorded into the graph instead and runs each time the graph is launched.
//
// `stream` is the CUstream handle as the caller got it (nullptr: the legacy default stream).
// `what` names the op in fault messages ("cublasLtMatmul 64x48 * 48x144"). Everything the op
// needs must be captured by value at enqueue time (descriptors may be destroyed right after).
// Returns CUDA_SUCCESS (0) or the CUresult the real driver would give (an invalid stream,
// a sticky fault).
int enqueue(void* stream, std::string what, std::function<void()> op);
// Whether `stream` is being captured now.
bool capturing(void* stream);

}  // namespace sg
