// CUDA kernel of relground::topk_select: one block per row, one launch per call. Each valid entry computes its
// rank (how many valid entries come before it) and, if the rank is < k, writes itself to that slot. Ranks of a
// strict total order are a permutation, so every slot below the row's valid count is written exactly once and the
// result is deterministic (no sort, no atomics). O(M^2) comparisons per row, cheap for proposal counts (M ~ 100).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>

#include "cuda_helpers.cuh"
#include "relground/op_host.h"
#include "relground/score_order.h"

namespace relground::ops {

namespace {

constexpr int kMaxThreads = 256;

template <typename scalar_t>
__global__ void topk_select_forward_kernel(const scalar_t* __restrict__ scores, const bool* __restrict__ valid,
                                           scalar_t* __restrict__ values, int64_t* __restrict__ indices, int64_t M,
                                           int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t r = blockIdx.x;
  const scalar_t* row = scores + r * M;
  const bool* valid_row = valid == nullptr ? nullptr : valid + r * M;
  scalar_t* values_row = values + r * k;
  int64_t* indices_row = indices + r * k;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    const bool j_valid = valid_row == nullptr || valid_row[j];
    const acc_t vj = row[j];
    int64_t rank = 0, num_valid = 0;
    for (int64_t i = 0; i < M; ++i) {
      if (valid_row != nullptr && !valid_row[i]) continue;
      ++num_valid;
      rank += ranks_before<acc_t>(row[i], i, vj, j);
    }
    if (j_valid && rank < k) {
      values_row[rank] = row[j];
      indices_row[rank] = j;
    }
    if (j < k && j >= num_valid) {  // fewer than k valid entries: pad slot j
      values_row[j] = -std::numeric_limits<scalar_t>::infinity();
      indices_row[j] = -1;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> topk_select_forward_cuda(const at::Tensor& scores, int64_t k,
                                                            const std::optional<at::Tensor>& valid) {
  check_topk_select_inputs(scores, k, valid, cuda::kKernelDevice);
  const c10::cuda::CUDAGuard device_guard(scores.device());
  auto [values, indices] = empty_topk_select_outputs(scores, k);  // [R, k] each
  if (values.numel() == 0) {
    return {values, indices};
  }
  const at::Tensor s = scores.contiguous(), v = contiguous_or_undefined(valid);
  const int64_t R = s.size(0), M = s.size(1);
  // One warp-multiple block per row, no larger than the row needs.
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (M + 31) / 32 * 32));
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "topk_select_forward_cuda", [&] {
    const bool* valid_ptr = v.defined() ? v.const_data_ptr<bool>() : nullptr;
    // One block per row: more rows than a grid holds are launched in chunks of rows.
    for (int64_t first = 0; first < R; first += cuda::max_grid_x()) {
      const int64_t rows = std::min<int64_t>(R - first, cuda::max_grid_x());
      cuda::launch_kernel("topk_select_forward_kernel", topk_select_forward_kernel<scalar_t>,
                          cuda::grid_1d("topk_select", rows), threads, 0, stream,
                          s.const_data_ptr<scalar_t>() + first * M, valid_ptr ? valid_ptr + first * M : nullptr,
                          values.mutable_data_ptr<scalar_t>() + first * k,
                          indices.mutable_data_ptr<int64_t>() + first * k, M, k);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {values, indices};
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, RELGROUND_KERNEL_DISPATCH_KEY, m) {
  m.impl("topk_select", &relground::ops::topk_select_forward_cuda);
}
