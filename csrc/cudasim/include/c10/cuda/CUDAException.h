// cudasim stand-in for c10/cuda/CUDAException.h: the launch check throws what the runtime found in the launch.
#pragma once
#include "cudasim/runtime.h"

#define C10_CUDA_KERNEL_LAUNCH_CHECK() ::cudasim::check_last_launch()
#define C10_CUDA_CHECK(expr) (void)(expr)
