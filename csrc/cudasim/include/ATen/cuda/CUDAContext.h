// cudasim stand-in for ATen/cuda/CUDAContext.h: the current stream, which the runtime ignores (launches are
// synchronous on the CPU).
#pragma once
#include <cstdint>

#include "cudasim/runtime.h"

namespace at::cuda {
inline cudaStream_t getCurrentCUDAStream(int8_t /*device*/ = -1) { return nullptr; }
}  // namespace at::cuda
