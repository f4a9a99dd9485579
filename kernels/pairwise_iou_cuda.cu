// CUDA kernel of relground::pairwise_iou: one thread per (image, box1, box2) output, one launch per call.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "cuda_helpers.cuh"
#include "relground/box_math.h"
#include "relground/op_host.h"

namespace relground::ops {

namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void pairwise_iou_forward_kernel(const scalar_t* __restrict__ boxes1, const scalar_t* __restrict__ boxes2,
                                            scalar_t* __restrict__ out, int64_t B, int64_t N, int64_t M) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t total = B * N * M;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t m = i % M;
    const int64_t row = i / M;  // b * N + n
    const int64_t b = row / N;
    const scalar_t* a = boxes1 + row * 4;
    const scalar_t* o = boxes2 + (b * M + m) * 4;
    const acc_t box_a[4] = {a[0], a[1], a[2], a[3]};
    const acc_t box_b[4] = {o[0], o[1], o[2], o[3]};
    out[i] = static_cast<scalar_t>(box_iou(box_a, box_b));
  }
}

at::Tensor pairwise_iou_forward_cuda(const at::Tensor& boxes1, const at::Tensor& boxes2) {
  check_pairwise_iou_inputs(boxes1, boxes2, cuda::kKernelDevice);
  const c10::cuda::CUDAGuard device_guard(boxes1.device());
  const int64_t B = boxes1.size(0), N = boxes1.size(1), M = boxes2.size(1);
  at::Tensor out = at::empty({B, N, M}, boxes1.options());
  if (out.numel() == 0) {
    return out;
  }
  const at::Tensor b1 = boxes1.contiguous(), b2 = boxes2.contiguous();
  // Grid-stride loop: cap the grid (at 65535 blocks, or lower where the runtime lowers the grid limit to make the
  // loop iterate in tests), each thread covers several outputs when there are many.
  const int64_t blocks = std::min({(out.numel() + kThreads - 1) / kThreads, int64_t{65535}, cuda::max_grid_x()});
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, b1.scalar_type(), "pairwise_iou_forward_cuda", [&] {
    cuda::launch_kernel("pairwise_iou_forward_kernel", pairwise_iou_forward_kernel<scalar_t>,
                        cuda::grid_1d("pairwise_iou", blocks), kThreads, 0, stream, b1.const_data_ptr<scalar_t>(),
                        b2.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), B, N, M);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, RELGROUND_KERNEL_DISPATCH_KEY, m) {
  m.impl("pairwise_iou", &relground::ops::pairwise_iou_forward_cuda);
}
