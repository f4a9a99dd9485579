// CUDA kernel of relground::self_taught_targets: one block per (image, phrase), one launch per call. The block first
// reduces the anchor (first valid argmax), then each thread fills the targets of its boxes.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "cuda_helpers.cuh"
#include "relground/op_host.h"
#include "relground/score_order.h"
#include "relground/self_taught_target.h"

namespace relground::ops {

namespace {

constexpr int kThreads = 128;  // power of two, for the tree reduction

template <typename scalar_t>
__global__ void self_taught_targets_forward_kernel(const scalar_t* __restrict__ boxes,
                                                   const scalar_t* __restrict__ scores, const bool* __restrict__ valid,
                                                   scalar_t* __restrict__ deltas, bool* __restrict__ selected,
                                                   scalar_t* __restrict__ weight, int64_t* __restrict__ anchor,
                                                   int64_t first_bp, int64_t P, int64_t M,
                                                   SelfTaughtParams<at::opmath_type<scalar_t>> params) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t best_value[kThreads];
  __shared__ int64_t best_index[kThreads];
  const int64_t bp = first_bp + blockIdx.x;  // b * P + p
  const int64_t b = bp / P;
  const scalar_t* s = scores + bp * M;
  const bool* v = valid == nullptr ? nullptr : valid + b * M;
  const scalar_t* image_boxes = boxes + b * M * 4;

  acc_t my_value = 0;
  int64_t my_index = -1;
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) {
    if (v != nullptr && !v[m]) continue;
    const acc_t x = s[m];
    if (ranks_before_or_none(x, m, my_value, my_index)) {
      my_value = x;
      my_index = m;
    }
  }
  best_value[threadIdx.x] = my_value;
  best_index[threadIdx.x] = my_index;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride &&
        ranks_before_or_none(best_value[threadIdx.x + stride], best_index[threadIdx.x + stride],
                             best_value[threadIdx.x], best_index[threadIdx.x])) {
      best_value[threadIdx.x] = best_value[threadIdx.x + stride];
      best_index[threadIdx.x] = best_index[threadIdx.x + stride];
    }
    __syncthreads();
  }
  const int64_t a = best_index[0];
  if (threadIdx.x == 0) anchor[bp] = a;

  // Without a valid box (a = -1) no box is eligible and the all-zero anchor is never used.
  const auto anchor_box =
      a >= 0 ? make_self_taught_anchor<acc_t>(image_boxes + a * 4, s[a]) : SelfTaughtAnchor<acc_t>{};
  for (int64_t m = threadIdx.x; m < M; m += blockDim.x) {
    if (v == nullptr || v[m]) {  // the CPU kernel's check_finite_boxes, on the device (padding may hold anything)
      const scalar_t* box = image_boxes + m * 4;
      bool finite = true;
      for (int c = 0; c < 4; ++c) finite = finite && static_cast<acc_t>(box[c]) - static_cast<acc_t>(box[c]) == acc_t(0);
      RELGROUND_DEVICE_CHECK(finite, "relground.ops.self_taught_targets: `boxes` must be finite (valid boxes)",
                             b * M + m);
    }
    const int64_t out = bp * M + m;
    const bool eligible = a >= 0 && m != a && (v == nullptr || v[m]);
    write_self_taught_target(anchor_box, image_boxes + m * 4, s[m], eligible, params, selected + out,
                             deltas + out * 4, weight + out);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_taught_targets_forward_cuda(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double score_gap,
    at::ArrayRef<double> weights, const std::optional<at::Tensor>& valid) {
  check_self_taught_targets_inputs(boxes, scores, iou_threshold, score_gap, weights, valid, cuda::kKernelDevice);
  const c10::cuda::CUDAGuard device_guard(boxes.device());
  auto [deltas, selected, weight, anchor] = empty_self_taught_targets_outputs(boxes, scores);
  if (anchor.numel() == 0) {
    return {deltas, selected, weight, anchor};
  }
  const at::Tensor bx = boxes.contiguous(), sc = scores.contiguous(), v = contiguous_or_undefined(valid);
  const int64_t B = sc.size(0), P = sc.size(1), M = sc.size(2);
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bx.scalar_type(), "self_taught_targets_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // One block per (image, phrase): more than a grid holds are launched in chunks.
    for (int64_t first = 0; first < B * P; first += cuda::max_grid_x()) {
      const int64_t count = std::min<int64_t>(B * P - first, cuda::max_grid_x());
      cuda::launch_kernel("self_taught_targets_forward_kernel", self_taught_targets_forward_kernel<scalar_t>,
                          cuda::grid_1d("self_taught_targets", count), kThreads, 0, stream,
                          bx.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(),
                          v.defined() ? v.const_data_ptr<bool>() : nullptr, deltas.mutable_data_ptr<scalar_t>(),
                          selected.mutable_data_ptr<bool>(), weight.mutable_data_ptr<scalar_t>(),
                          anchor.mutable_data_ptr<int64_t>(), first, P, M,
                          make_self_taught_params<acc_t>(iou_threshold, score_gap, weights.data()));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {deltas, selected, weight, anchor};
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, RELGROUND_KERNEL_DISPATCH_KEY, m) {
  m.impl("self_taught_targets", &relground::ops::self_taught_targets_forward_cuda);
}
