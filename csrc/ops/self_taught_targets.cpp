// Schema of relground::self_taught_targets and the argument checks shared by its CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "relground/checks.h"
#include "relground/op_host.h"

namespace relground::ops {

// Called first by self_taught_targets_forward_cpu / _cuda; `device` is the backend's device type.
void check_self_taught_targets_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                      double score_gap, at::ArrayRef<double> weights,
                                      const std::optional<at::Tensor>& valid, c10::DeviceType device) {
  constexpr const char* op = "self_taught_targets";
  check_device(boxes, op, "boxes", device);
  check_same_device(boxes, scores, op, "boxes", "scores");
  check_rank(boxes, op, "boxes", 3);
  check_last_dim(boxes, op, "boxes", 4);
  check_rank(scores, op, "scores", 3);
  check_floating(boxes, op, "boxes");
  check_same_dtype(boxes, scores, op, "boxes", "scores");
  RELGROUND_CHECK_ARG(scores.size(0) == boxes.size(0) && scores.size(2) == boxes.size(1), op,
                      "`scores` must have shape [B, P, M] with B, M from `boxes` [B, M, 4] ", boxes.sizes(), ", got ",
                      scores.sizes());
  // A threshold of 0 would select zero-area boxes, whose encoding divides by zero.
  RELGROUND_CHECK_ARG(iou_threshold > 0.0 && iou_threshold <= 1.0, op, "`iou_threshold` must be in (0, 1], got ",
                      iou_threshold);
  RELGROUND_CHECK_ARG(std::isfinite(score_gap), op, "`score_gap` must be finite, got ", score_gap);
  RELGROUND_CHECK_ARG(weights.size() == 4, op, "`weights` must have 4 values (wx, wy, ww, wh), got ", weights.size());
  for (double w : weights) {
    RELGROUND_CHECK_ARG(std::isfinite(w), op, "`weights` must be finite, got ", weights);
  }
  if (valid.has_value()) {
    check_same_device(boxes, *valid, op, "boxes", "valid");
    RELGROUND_CHECK_ARG(valid->scalar_type() == at::kBool, op, "`valid` must be a bool tensor, got ",
                        valid->scalar_type());
    RELGROUND_CHECK_ARG(valid->dim() == 2 && valid->size(0) == boxes.size(0) && valid->size(1) == boxes.size(1), op,
                        "`valid` must have shape [B, M] = [", boxes.size(0), ", ", boxes.size(1), "], got ",
                        valid->sizes());
  }
}

}  // namespace relground::ops

TORCH_LIBRARY_FRAGMENT(relground, m) {
  m.def(
      "self_taught_targets(Tensor boxes, Tensor scores, float iou_threshold=0.6, float score_gap=0.1, "
      "float[] weights=[10.0, 10.0, 5.0, 5.0], Tensor? valid=None) "
      "-> (Tensor deltas, Tensor selected, Tensor weight, Tensor anchor)");
}
