// What the CPU host functions (csrc/cpu/<op>_cpu.cpp) and the CUDA host functions (kernels/<op>_cuda.cu) of
// each op share: the argument checks, the outputs in the shapes and dtypes of the op's schema, and the inputs in
// the layout the kernels read. Only the kernel launch (and, on CUDA, the device guard) differs between devices.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <tuple>

#include "relground/checks.h"

namespace relground {

// Defined in csrc/ops/roi_align_avg.cpp. Host checks only (no value of a device tensor is read).
void check_roi_align_avg_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                              int64_t pooled_width, double spatial_scale, c10::DeviceType device_type);
// The values of a CPU `rois` (finite, batch index in [0, batch_size)); on CUDA the weights kernel checks them.
void check_roi_align_avg_rois(const at::Tensor& rois, int64_t batch_size, double spatial_scale, const char* op);

namespace ops {

// Defined in csrc/ops/<op>.cpp.
void check_pairwise_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::DeviceType device);
void check_topk_select_inputs(const at::Tensor& scores, int64_t k, const std::optional<at::Tensor>& valid,
                              c10::DeviceType device);
void check_self_taught_targets_inputs(const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold,
                                      double score_gap, at::ArrayRef<double> weights,
                                      const std::optional<at::Tensor>& valid, c10::DeviceType device);

}  // namespace ops

// An optional argument made contiguous, or an undefined tensor when it is absent.
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? tensor->contiguous() : at::Tensor();
}

// topk_select's outputs, uninitialised: (values Tensor[R, k] in scores' dtype, indices Tensor[R, k] int64).
inline std::tuple<at::Tensor, at::Tensor> empty_topk_select_outputs(const at::Tensor& scores /* [R, M] */,
                                                                    int64_t k) {
  const int64_t R = scores.size(0);
  return {at::empty({R, k}, scores.options()), at::empty({R, k}, scores.options().dtype(at::kLong))};
}

// self_taught_targets' outputs, uninitialised: (deltas Tensor[B, P, M, 4] in boxes' dtype, selected
// Tensor[B, P, M] bool, weight Tensor[B, P, M] in scores' dtype, anchor Tensor[B, P] int64).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> empty_self_taught_targets_outputs(
    const at::Tensor& boxes /* [B, M, 4] */, const at::Tensor& scores /* [B, P, M] */) {
  const int64_t B = scores.size(0), P = scores.size(1), M = scores.size(2);
  return {at::empty({B, P, M, 4}, boxes.options()), at::empty({B, P, M}, boxes.options().dtype(at::kBool)),
          at::empty({B, P, M}, scores.options()), at::empty({B, P}, scores.options().dtype(at::kLong))};
}

// Whether roi_align_avg reads `input` in place as NHWC (channels_last storage, no NCHW copy); any other layout
// is read as NCHW after .contiguous().
inline bool roi_align_avg_reads_channels_last(const at::Tensor& input /* [N, C, H, W] */) {
  return input.is_contiguous(at::MemoryFormat::ChannelsLast) && !input.is_contiguous();
}

// The argument checks of _roi_align_avg_backward on `device_type` (the forward's are check_roi_align_avg_args).
inline void check_roi_align_avg_backward_args(const at::Tensor& grad /* [K, C] */, const at::Tensor& rois /* [K, 5] */,
                                              int64_t channels, c10::DeviceType device_type) {
  constexpr const char* op = "_roi_align_avg_backward";
  check_device(grad, op, "grad", device_type);
  check_same_device(grad, rois, op, "grad", "rois");
  check_rank(grad, op, "grad", 2);
  check_rank(rois, op, "rois", 2);
  check_last_dim(rois, op, "rois", 5);
  check_same_dtype(grad, rois, op, "grad", "rois");
  RELGROUND_CHECK_ARG(grad.size(0) == rois.size(0) && grad.size(1) == channels, op, "`grad` must have shape [",
                      rois.size(0), ", ", channels, "], got ", grad.sizes());
}

// The gradient accumulator of _roi_align_avg_backward: zeros Tensor[N, C, H, W] in grad's opmath dtype (float
// for half/bfloat16, because many RoIs add into the same pixel), NHWC storage when `channels_last`.
inline at::Tensor zeros_roi_align_avg_grad_input(const at::Tensor& grad, int64_t batch_size, int64_t channels,
                                                 int64_t height, int64_t width, bool channels_last) {
  const auto memory_format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const auto acc_dtype = at::toOpMathType(grad.scalar_type());
  return at::empty({batch_size, channels, height, width}, grad.options().dtype(acc_dtype), memory_format).zero_();
}

// The accumulator from zeros_roi_align_avg_grad_input in grad's dtype, keeping its memory format.
inline at::Tensor roi_align_avg_grad_input_as_grad_dtype(const at::Tensor& grad_input, const at::Tensor& grad,
                                                         bool channels_last) {
  if (grad_input.scalar_type() == grad.scalar_type()) return grad_input;
  const auto memory_format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return grad_input.to(grad.scalar_type(), /*non_blocking=*/false, /*copy=*/false, memory_format);
}

}  // namespace relground
