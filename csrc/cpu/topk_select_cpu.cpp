// CPU kernel of relground::topk_select: top-k of each row among its valid entries, ties to the lower index.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "relground/op_host.h"
#include "relground/score_order.h"

namespace relground::ops {

namespace {

template <typename scalar_t>
void topk_select_forward_kernel(const scalar_t* scores, const bool* valid, scalar_t* values, int64_t* indices,
                                int64_t R, int64_t M, int64_t k) {
  using acc_t = at::opmath_type<scalar_t>;
  // Tasks of whole rows (M elements each), about at::internal::GRAIN_SIZE elements per task: small batches
  // stay on one thread, where a fork/join would cost more than the work.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(M, 1));
  at::parallel_for(0, R, grain, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> order;
    order.reserve(M);
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = scores + r * M;
      order.clear();
      for (int64_t j = 0; j < M; ++j) {
        if (valid == nullptr || valid[r * M + j]) {
          order.push_back(j);
        }
      }
      // A strict total order, so the result does not depend on the sort algorithm.
      auto entry_before = [row](int64_t a, int64_t b) {
        return ranks_before(static_cast<acc_t>(row[a]), a, static_cast<acc_t>(row[b]), b);
      };
      const int64_t found = std::min<int64_t>(k, static_cast<int64_t>(order.size()));
      std::partial_sort(order.begin(), order.begin() + found, order.end(), entry_before);
      scalar_t* values_row = values + r * k;
      int64_t* indices_row = indices + r * k;
      for (int64_t s = 0; s < found; ++s) {
        values_row[s] = row[order[s]];
        indices_row[s] = order[s];
      }
      for (int64_t s = found; s < k; ++s) {  // fewer than k valid entries
        values_row[s] = -std::numeric_limits<scalar_t>::infinity();
        indices_row[s] = -1;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> topk_select_forward_cpu(const at::Tensor& scores, int64_t k,
                                                           const std::optional<at::Tensor>& valid) {
  check_topk_select_inputs(scores, k, valid, c10::DeviceType::CPU);
  auto [values, indices] = empty_topk_select_outputs(scores, k);  // [R, k] each
  if (values.numel() == 0) {
    return {values, indices};
  }
  const at::Tensor s = scores.contiguous(), v = contiguous_or_undefined(valid);
  const int64_t R = s.size(0), M = s.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, s.scalar_type(), "topk_select_forward_cpu", [&] {
    topk_select_forward_kernel<scalar_t>(s.const_data_ptr<scalar_t>(), v.defined() ? v.const_data_ptr<bool>() : nullptr,
                                         values.mutable_data_ptr<scalar_t>(), indices.mutable_data_ptr<int64_t>(), R, M,
                                         k);
  });
  return {values, indices};
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, CPU, m) {
  m.impl("topk_select", &relground::ops::topk_select_forward_cpu);
}
