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

namespace relground::ops {

void check_self_taught_targets_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                      double score_gap, at::ArrayRef<double> weights,
                                      const std::optional<at::Tensor>& valid, c10::DeviceType device);

namespace {

// Same arithmetic as pairwise_iou (csrc/cpu/pairwise_iou_cpu.cpp), so `selected` agrees with that op's IoU.
template <typename T>
inline T box_iou(const T* a, const T* b) {
  auto area = [](const T* x) {
    T w = x[2] - x[0], h = x[3] - x[1];
    w = w < T(0) ? T(0) : w;  // keeps NaN
    h = h < T(0) ? T(0) : h;
    return w * h;
  };
  T iw = std::min(a[2], b[2]) - std::max(a[0], b[0]);
  T ih = std::min(a[3], b[3]) - std::max(a[1], b[1]);
  iw = iw < T(0) ? T(0) : iw;
  ih = ih < T(0) ? T(0) : ih;
  const T inter = iw * ih;
  const T uni = area(a) + area(b) - inter;
  return uni > T(0) ? inter / uni : T(0);
}

template <typename scalar_t>
void self_taught_targets_forward_kernel(const scalar_t* boxes, const scalar_t* scores, const bool* valid,
                                        scalar_t* deltas, bool* selected, scalar_t* weight, int64_t* anchor,
                                        int64_t B, int64_t P, int64_t M, double iou_threshold, double score_gap,
                                        const double* wts) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t thr = iou_threshold, gap = score_gap;
  const acc_t wx = wts[0], wy = wts[1], ww = wts[2], wh = wts[3];
  // Tasks of whole rows (M elements each), about at::internal::GRAIN_SIZE elements per task: small batches
  // stay on one thread, where a fork/join would cost more than the work.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(M, 1));
  at::parallel_for(0, B * P, grain, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / P;
      const scalar_t* s = scores + bp * M;
      const bool* v = valid == nullptr ? nullptr : valid + b * M;
      // Anchor: first valid argmax; NaN counts as the largest score, as in torch.argmax.
      int64_t a = -1;
      acc_t best = 0;
      for (int64_t m = 0; m < M; ++m) {
        if (v != nullptr && !v[m]) continue;
        const acc_t x = s[m];
        if (a < 0 || (std::isnan(x) && !std::isnan(best)) || (!std::isnan(best) && x > best)) {
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
      acc_t ab[4];
      for (int i = 0; i < 4; ++i) ab[i] = image_boxes[a * 4 + i];
      // R-CNN encoding as torchvision's encode_boxes: the anchor is the reference ("gt") box.
      const acc_t gt_w = ab[2] - ab[0], gt_h = ab[3] - ab[1];
      const acc_t gt_x = ab[0] + acc_t(0.5) * gt_w, gt_y = ab[1] + acc_t(0.5) * gt_h;
      const acc_t anchor_score = s[a];
      for (int64_t m = 0; m < M; ++m) {
        acc_t bm[4];
        for (int i = 0; i < 4; ++i) bm[i] = image_boxes[m * 4 + i];
        const bool identical = bm[0] == ab[0] && bm[1] == ab[1] && bm[2] == ab[2] && bm[3] == ab[3];
        const bool is_selected =
            m != a && (v == nullptr || v[m]) && !identical && box_iou(ab, bm) >= thr;
        sel_out[m] = is_selected;
        if (!is_selected) {
          d_out[m * 4 + 0] = d_out[m * 4 + 1] = d_out[m * 4 + 2] = d_out[m * 4 + 3] = scalar_t(0);
          w_out[m] = scalar_t(0);
          continue;
        }
        const acc_t ex_w = bm[2] - bm[0], ex_h = bm[3] - bm[1];
        const acc_t ex_x = bm[0] + acc_t(0.5) * ex_w, ex_y = bm[1] + acc_t(0.5) * ex_h;
        d_out[m * 4 + 0] = static_cast<scalar_t>(wx * (gt_x - ex_x) / ex_w);
        d_out[m * 4 + 1] = static_cast<scalar_t>(wy * (gt_y - ex_y) / ex_h);
        d_out[m * 4 + 2] = static_cast<scalar_t>(ww * std::log(gt_w / ex_w));
        d_out[m * 4 + 3] = static_cast<scalar_t>(wh * std::log(gt_h / ex_h));
        w_out[m] = static_cast<scalar_t>(anchor_score - static_cast<acc_t>(s[m]) >= gap ? 1 : 0);
      }
    }
  });
}

// Only valid boxes are checked: padding rows may hold anything. (The CUDA kernel skips this check
// to avoid a device sync; there a non-finite box simply gets IoU 0 and is never selected.)
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
  const int64_t B = scores.size(0), P = scores.size(1), M = scores.size(2);
  at::Tensor deltas = at::empty({B, P, M, 4}, boxes.options());
  at::Tensor selected = at::empty({B, P, M}, boxes.options().dtype(at::kBool));
  at::Tensor weight = at::empty({B, P, M}, scores.options());
  at::Tensor anchor = at::empty({B, P}, scores.options().dtype(at::kLong));
  if (anchor.numel() == 0) {
    return {deltas, selected, weight, anchor};
  }
  const at::Tensor bx = boxes.contiguous(), sc = scores.contiguous();
  const at::Tensor v = valid.has_value() ? valid->contiguous() : at::Tensor();
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
