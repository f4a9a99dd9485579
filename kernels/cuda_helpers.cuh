// Small helpers shared by the CUDA kernels in kernels/*.cu, and the one place where a kernel file differs between
// nvcc and the CPU CUDA-semantics runtime (csrc/cudasim, built by scripts/build_cudasim.py with RELGROUND_CUDASIM):
// the launch, the device-side check, the device type and dispatch key the host functions register for.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <utility>

#include "relground/checks.h"

#ifdef RELGROUND_CUDASIM
#include "cudasim/runtime.h"
// The kernels' host functions register for CPU tensors: the runtime runs on the CPU.
#define RELGROUND_KERNEL_DISPATCH_KEY CPU
#else
#include <cassert>
#include <cstdio>
#define RELGROUND_KERNEL_DISPATCH_KEY CUDA
#endif

// A check of a value in device memory, made where the value is (no device-to-host copy, so CUDA-graph capture and
// the asynchronous queue are kept): on a GPU a device-side assert with `message` (the CUDA context is then lost,
// as for any device-side assert: the error is a bug in the caller's inputs); in the runtime an error of the launch.
// `row` is printed with it (e.g. the RoI).
#ifdef RELGROUND_CUDASIM
#define RELGROUND_DEVICE_CHECK(cond, message, row) \
  if (!(cond)) ::cudasim::device_check_failed(message, static_cast<long long>(row))
#else
#define RELGROUND_DEVICE_CHECK(cond, message, row)                                              \
  if (!(cond)) {                                                                                \
    printf("relground device-side check failed: %s (row %lld)\n", message, static_cast<long long>(row)); \
    __assert_fail(message, __FILE__, static_cast<unsigned int>(__LINE__), __func__);            \
  }
#endif

namespace relground {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kThreadsPerBlock = 256;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;

// The device type the host functions of kernels/*.cu check their tensors against.
constexpr c10::DeviceType kKernelDevice = c10::DeviceType::RELGROUND_KERNEL_DISPATCH_KEY;

// ceil(a / b) for positive integers, e.g. the number of blocks covering `a` items.
template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// The largest grid.x of a launch (2^31 - 1 on every GPU since sm_30; the runtime can lower it to test the split).
inline int64_t max_grid_x() {
#ifdef RELGROUND_CUDASIM
  return static_cast<int64_t>(::cudasim::max_grid_x());
#else
  return 2147483647;
#endif
}

// A 1-D grid of `blocks` blocks, or an error naming `op` when it is out of CUDA's range (callers with an unbounded
// count split it first, see topk_select_cuda.cu).
inline dim3 grid_1d(const char* op, int64_t blocks) {
  RELGROUND_CHECK_ARG(blocks >= 1 && blocks <= max_grid_x(), op, "a launch of ", blocks,
                      " blocks is outside CUDA's grid limit [1, ", max_grid_x(), "]");
  return dim3(static_cast<unsigned>(blocks));
}

// kernel<<<grid, block, shared_bytes, stream>>>(args...) under nvcc; the runtime's launch (which checks the launch
// and runs it on the CPU) under RELGROUND_CUDASIM. `name` names the kernel in the runtime's reports.
template <typename... Params, typename... Args>
inline void launch_kernel(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                          cudaStream_t stream, Args&&... args) {
#ifdef RELGROUND_CUDASIM
  ::cudasim::launch(name, kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
#else
  (void)name;
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
}

// Sum over the 32 lanes of a warp; every lane gets the total.
template <typename T>
__device__ __forceinline__ T warp_reduce_sum(T value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

}  // namespace cuda
}  // namespace relground
