// Schemas of roi_align_avg (RoIAlign at P x P fused with the mean over the P x P bins) and its
// backward, plus the argument checks shared by the CPU and CUDA host functions. The kernels
// register themselves in csrc/cpu/roi_align_avg_cpu.cpp and kernels/roi_align_avg_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "relground/checks.h"
#include "relground/op_host.h"

namespace relground {

// Validates the arguments of roi_align_avg on any device. Declared in the CPU and CUDA kernel files.
// The value checks (finite boxes, batch index in range) cost one reduction and, on CUDA, one sync:
// a bad box otherwise reads out of bounds or silently yields garbage.
void check_roi_align_avg_args(const at::Tensor& input, const at::Tensor& rois, int64_t pooled_height,
                              int64_t pooled_width, double spatial_scale, c10::DeviceType device_type) {
  constexpr const char* op = "roi_align_avg";
  check_device(input, op, "input", device_type);
  check_same_device(input, rois, op, "input", "rois");
  check_rank(input, op, "input", 4);
  check_rank(rois, op, "rois", 2);
  check_last_dim(rois, op, "rois", 5);
  check_floating(input, op, "input");
  check_same_dtype(input, rois, op, "input", "rois");
  RELGROUND_CHECK_ARG(pooled_height > 0 && pooled_width > 0, op, "`output_size` must be positive, got (",
                      pooled_height, ", ", pooled_width, ")");
  RELGROUND_CHECK_ARG(std::isfinite(spatial_scale) && spatial_scale > 0, op,
                      "`spatial_scale` must be a positive finite number, got ", spatial_scale);
  if (rois.numel() == 0) return;
  // Coordinates are scaled in the kernels' accumulation type: a finite box that overflows there would
  // become a NaN sample position and an out-of-range index.
  const at::Tensor scaled = rois.narrow(1, 1, 4).to(at::toOpMathType(rois.scalar_type())) * spatial_scale;
  const at::Tensor finite = at::isfinite(rois).all().logical_and_(at::isfinite(scaled).all());
  const at::Tensor batch_index = rois.select(1, 0);
  const at::Tensor index_ok =
      (batch_index >= 0).logical_and_(batch_index < input.size(0)).logical_and_(batch_index == batch_index.floor());
  const at::Tensor all_ok = finite.logical_and(index_ok.all());
  if (all_ok.item<bool>()) return;  // the only sync of the fast path
  RELGROUND_CHECK_ARG(finite.item<bool>(), op, "`rois` contains NaN or infinite values, or coordinates that overflow once multiplied by `spatial_scale`");
  RELGROUND_CHECK_ARG(false, op, "`rois[:, 0]` (batch index) must be integers in [0, ", input.size(0),
                      ") for `input` of shape ", input.sizes(), ", got values in [", batch_index.min().item<double>(),
                      ", ", batch_index.max().item<double>(), "]");
}

}  // namespace relground

TORCH_LIBRARY_FRAGMENT(relground, m) {
  m.def(
      "roi_align_avg(Tensor input, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_avg_backward(Tensor grad, Tensor rois, int pooled_height, int pooled_width, float spatial_scale, "
      "int sampling_ratio, bool aligned, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
      "bool channels_last) -> Tensor");
}
