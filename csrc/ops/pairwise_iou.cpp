// Schema of relground::pairwise_iou and the argument checks shared by its CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "relground/checks.h"
#include "relground/op_host.h"

namespace relground::ops {

// Called first by pairwise_iou_forward_cpu / _cuda; `device` is the backend's device type.
void check_pairwise_iou_inputs(const at::Tensor& boxes1, const at::Tensor& boxes2, c10::DeviceType device) {
  constexpr const char* op = "pairwise_iou";
  check_device(boxes1, op, "boxes1", device);
  check_same_device(boxes1, boxes2, op, "boxes1", "boxes2");
  check_rank(boxes1, op, "boxes1", 3);
  check_rank(boxes2, op, "boxes2", 3);
  check_last_dim(boxes1, op, "boxes1", 4);
  check_last_dim(boxes2, op, "boxes2", 4);
  check_floating(boxes1, op, "boxes1");
  check_same_dtype(boxes1, boxes2, op, "boxes1", "boxes2");
  RELGROUND_CHECK_ARG(boxes1.size(0) == boxes2.size(0), op, "`boxes1` and `boxes2` must have the same batch size, got ",
                      boxes1.sizes(), " and ", boxes2.sizes());
}

}  // namespace relground::ops

TORCH_LIBRARY_FRAGMENT(relground, m) {
  m.def("pairwise_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}
