// CPU kernel of relground::self_taught_targets (paper Sec. 3.3): per (image, phrase), the argmax-score box is the
// anchor; every other valid box overlapping it by IoU >= iou_threshold gets the R-CNN delta towards the anchor.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "relground/checks.h"
#include "relground/op_host.h"
#include "relground/score_order.h"
#include "relground/self_taught_target.h"

namespace relground::ops {

namespace {

template <typename scalar_t>
void self_taught_targets_forward_kernel(const scalar_t* boxes, const scalar_t* scores, const bool* valid,
                                        scalar_t* deltas, bool* selected, scalar_t* weight, int64_t* anchor,
                                        int64_t B, int64_t P, int64_t M, double iou_threshold, double score_gap,
                                        const double* wts) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto params = make_self_taught_params<acc_t>(iou_threshold, score_gap, wts);
  // Tasks of whole rows (M elements each), about at::internal::GRAIN_SIZE elements per task: small batches
  // stay on one thread, where a fork/join would cost more than the work.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(M, 1));
  at::parallel_for(0, B * P, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / P;
      const scalar_t* s = scores + bp * M;
      const bool* v = valid == nullptr ? nullptr : valid + b * M;
      // Anchor: the first valid entry of the highest rank (NaN counts as the largest score, as in torch.argmax).
      int64_t a = -1;
      acc_t best = 0;
      for (int64_t m = 0; m < M; ++m) {
        if (v != nullptr && !v[m]) continue;
        const acc_t x = s[m];
        if (ranks_before_or_none(x, m, best, a)) {
          a = m;
          best = x;
        }
      }
      anchor[bp] = a;
      scalar_t* d_out = deltas + bp * M * 4;
      bool* sel_out = selected + bp * M;
      scalar_t* w_out = weight + bp * M;
      if (a < 0) {  // image without a valid box: nothing selected
        std::fill(d_out, d_out + M * 4, scalar_t(0));
        std::fill(sel_out, sel_out + M, false);
        std::fill(w_out, w_out + M, scalar_t(0));
        continue;
      }
      const scalar_t* image_boxes = boxes + b * M * 4;
      const auto anchor_box = make_self_taught_anchor<acc_t>(image_boxes + a * 4, s[a]);
      for (int64_t m = 0; m < M; ++m) {
        const bool eligible = m != a && (v == nullptr || v[m]);
        write_self_taught_target(anchor_box, image_boxes + m * 4, s[m], eligible, params, sel_out + m,
                                 d_out + m * 4, w_out + m);
      }
    }
  });
}

// Only valid boxes are checked: padding rows may hold anything. (The CUDA kernel makes the same check on
// the device, RELGROUND_DEVICE_CHECK, so that no value is read on the host.)
template <typename scalar_t>
void check_finite_boxes(const scalar_t* boxes, const bool* valid, int64_t B, int64_t M) {
  for (int64_t i = 0; i < B * M; ++i) {
    if (valid != nullptr && !valid[i]) continue;
    for (int c = 0; c < 4; ++c) {
      RELGROUND_CHECK_ARG(std::isfinite(static_cast<double>(boxes[i * 4 + c])), "self_taught_targets",
                          "`boxes` must be finite, got ", static_cast<double>(boxes[i * 4 + c]), " at boxes[",
                          i / M, ", ", i % M, ", ", c, "]");
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> self_taught_targets_forward_cpu(
    const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold, double score_gap,
    at::ArrayRef<double> weights, const std::optional<at::Tensor>& valid) {
  check_self_taught_targets_inputs(boxes, scores, iou_threshold, score_gap, weights, valid, c10::DeviceType::CPU);
  auto [deltas, selected, weight, anchor] = empty_self_taught_targets_outputs(boxes, scores);
  if (anchor.numel() == 0) {
    return {deltas, selected, weight, anchor};
  }
  const at::Tensor bx = boxes.contiguous(), sc = scores.contiguous(), v = contiguous_or_undefined(valid);
  const int64_t B = sc.size(0), P = sc.size(1), M = sc.size(2);
  const bool* v_ptr = v.defined() ? v.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, bx.scalar_type(), "self_taught_targets_forward_cpu", [&] {
    check_finite_boxes(bx.const_data_ptr<scalar_t>(), v_ptr, B, M);
    self_taught_targets_forward_kernel<scalar_t>(
        bx.const_data_ptr<scalar_t>(), sc.const_data_ptr<scalar_t>(), v_ptr, deltas.mutable_data_ptr<scalar_t>(),
        selected.mutable_data_ptr<bool>(), weight.mutable_data_ptr<scalar_t>(), anchor.mutable_data_ptr<int64_t>(), B,
        P, M, iou_threshold, score_gap, weights.data());
  });
  return {deltas, selected, weight, anchor};
}

}  // namespace
}  // namespace relground::ops

TORCH_LIBRARY_IMPL(relground, CPU, m) {
  m.impl("self_taught_targets", &relground::ops::self_taught_targets_forward_cpu);
}
