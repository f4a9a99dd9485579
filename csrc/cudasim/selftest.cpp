// Kernels that break one CUDA rule each, built into the CUDA-semantics runtime's library only
// (scripts/build_cudasim.py): torch.ops.relground_cudasim._selftest(case) launches one, and the runtime must report
// it (tests/cudasim/test_runtime_checks.py). "correct" breaks none and must pass.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include <string>

#include "cuda_helpers.cuh"

namespace relground::cudasim_selftest {

namespace {

// A block-wide sum through shared memory and a warp reduction: every rule kept.
__global__ void correct_kernel(float* out) {
  __shared__ float partial[cuda::kWarpsPerBlock];
  const float sum = cuda::warp_reduce_sum(static_cast<float>(threadIdx.x));
  if (threadIdx.x % cuda::kWarpSize == 0) partial[threadIdx.x / cuda::kWarpSize] = sum;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (int w = 0; w < cuda::kWarpsPerBlock; ++w) total += partial[w];
    out[blockIdx.x] = total;
  }
}

__global__ void empty_kernel(float*) {}

// The first half of the block returns before the barrier the second half waits at.
__global__ void divergent_syncthreads_kernel(float* out) {
  if (threadIdx.x < blockDim.x / 2) return;
  __syncthreads();
  out[0] = 1;
}

// Lane 31 leaves before the full-mask reduction the other lanes run.
__global__ void shuffle_exited_lane_kernel(float* out) {
  if (threadIdx.x % cuda::kWarpSize == 31) return;
  out[threadIdx.x] = cuda::warp_reduce_sum(1.0f);
}

// A full-mask shuffle in a block of 48 threads: the second warp has lanes 0-15 only.
__global__ void shuffle_absent_lane_kernel(float* out) { out[threadIdx.x] = cuda::warp_reduce_sum(1.0f); }

// Lane 0 shuffles twice while the others shuffle once and wait at the barrier: nobody can go on.
__global__ void deadlock_kernel(float* out) {
  float v = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
  if (threadIdx.x == 0) v += __shfl_xor_sync(0xffffffffu, v, 1);
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void device_check_kernel(float* out) {
  RELGROUND_DEVICE_CHECK(threadIdx.x != 5, "selftest: thread 5 has a bad value", threadIdx.x);
  out[threadIdx.x] = 1;
}

void selftest(c10::string_view which) {
  const std::string name(which);
  at::Tensor out = at::zeros({4096}, at::kFloat);
  float* p = out.mutable_data_ptr<float>();
  if (name == "correct") {
    cuda::launch_kernel("correct_kernel", correct_kernel, dim3(3), dim3(cuda::kThreadsPerBlock), 0, nullptr, p);
  } else if (name == "block_too_large") {
    cuda::launch_kernel("empty_kernel", empty_kernel, dim3(1), dim3(2048), 0, nullptr, p);
  } else if (name == "grid_too_large") {
    cuda::launch_kernel("empty_kernel", empty_kernel, dim3(1, 70000), dim3(32), 0, nullptr, p);
  } else if (name == "divergent_syncthreads") {
    cuda::launch_kernel("divergent_syncthreads_kernel", divergent_syncthreads_kernel, dim3(1), dim3(64), 0, nullptr, p);
  } else if (name == "shuffle_exited_lane") {
    cuda::launch_kernel("shuffle_exited_lane_kernel", shuffle_exited_lane_kernel, dim3(1), dim3(32), 0, nullptr, p);
  } else if (name == "shuffle_absent_lane") {
    cuda::launch_kernel("shuffle_absent_lane_kernel", shuffle_absent_lane_kernel, dim3(1), dim3(48), 0, nullptr, p);
  } else if (name == "deadlock") {
    cuda::launch_kernel("deadlock_kernel", deadlock_kernel, dim3(1), dim3(32), 0, nullptr, p);
  } else if (name == "device_check") {
    cuda::launch_kernel("device_check_kernel", device_check_kernel, dim3(1), dim3(32), 0, nullptr, p);
  } else {
    TORCH_CHECK(false, "cudasim selftest: unknown case '", name, "'");
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (name == "correct") {  // 0 + 1 + ... + 255 per block
    TORCH_CHECK(out[0].item<float>() == 32640.0f && out[2].item<float>() == 32640.0f, "cudasim selftest: wrong sum");
  }
}

}  // namespace
}  // namespace relground::cudasim_selftest

// A catch-all kernel: the op has no tensor argument to dispatch on.
TORCH_LIBRARY_FRAGMENT(relground, m) {
  m.def("_selftest(str case) -> ()", &relground::cudasim_selftest::selftest);
}
