// Schemas of roi_align_avg (RoIAlign at P x P fused with the mean over the P x P bins) and its
// backward, plus the argument checks shared by the CPU and CUDA host functions (and the CPU's value checks). The kernels
// register themselves in csrc/cpu/roi_align_avg_cpu.cpp and kernels/roi_align_avg_cuda.cu.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include "relground/checks.h"
#include "relground/op_host.h"

namespace relground {

// Validates the arguments of roi_align_avg on any device: shapes, dtypes, devices and the scalar arguments, all
// known on the host. The values inside `rois` are checked where they are: by check_roi_align_avg_rois on the CPU,
// inside the weights kernel on CUDA (a device-side check: reading them here would sync the device on every call
// and break CUDA-graph capture).
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
}

// The values of a CPU `rois` [K, 5]: finite coordinates that stay finite once scaled (they are scaled in the
// kernels' accumulation type; an overflow there would become a NaN sample position and an out-of-range index) and
// batch indices that are integers in [0, batch_size). The CUDA weights kernel makes the same checks on the device.
void check_roi_align_avg_rois(const at::Tensor& rois, int64_t batch_size, double spatial_scale, const char* op) {
  TORCH_INTERNAL_ASSERT(rois.device().is_cpu(), "check_roi_align_avg_rois reads values: CPU tensors only");
  if (rois.numel() == 0) return;
  const at::Tensor scaled = rois.narrow(1, 1, 4).to(at::toOpMathType(rois.scalar_type())) * spatial_scale;
  const bool finite = at::isfinite(rois).all().logical_and_(at::isfinite(scaled).all()).item<bool>();
  RELGROUND_CHECK_ARG(finite, op, "`rois` contains NaN or infinite values, or coordinates that overflow once "
                      "multiplied by `spatial_scale`");
  const at::Tensor batch_index = rois.select(1, 0);
  const at::Tensor index_ok =
      (batch_index >= 0).logical_and_(batch_index < batch_size).logical_and_(batch_index == batch_index.floor());
  RELGROUND_CHECK_ARG(index_ok.all().item<bool>(), op, "`rois[:, 0]` (batch index) must be integers in [0, ",
                      batch_size, "), got values in [", batch_index.min().item<double>(), ", ",
                      batch_index.max().item<double>(), "]");
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
