// Schema of relground::topk_select and the argument checks shared by its CPU and CUDA kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "relground/checks.h"
#include "relground/op_host.h"

namespace relground::ops {

// Called first by topk_select_forward_cpu / _cuda; `device` is the backend's device type.
void check_topk_select_inputs(const at::Tensor& scores, int64_t k, const std::optional<at::Tensor>& valid,
                              c10::DeviceType device) {
  constexpr const char* op = "topk_select";
  check_device(scores, op, "scores", device);
  check_rank(scores, op, "scores", 2);
  check_floating(scores, op, "scores");
  RELGROUND_CHECK_ARG(k >= 0, op, "`k` must be >= 0, got ", k);
  RELGROUND_CHECK_ARG(k <= scores.size(1), op, "`k` (", k, ") must be <= the number of columns M of `scores` (",
                      scores.size(1), ")");
  if (valid.has_value()) {
    check_same_device(scores, *valid, op, "scores", "valid");
    RELGROUND_CHECK_ARG(valid->scalar_type() == at::kBool, op, "`valid` must be a bool tensor, got ",
                        valid->scalar_type());
    RELGROUND_CHECK_ARG(valid->sizes() == scores.sizes(), op, "`valid` must have the shape of `scores` ",
                        scores.sizes(), ", got ", valid->sizes());
  }
}

}  // namespace relground::ops

TORCH_LIBRARY_FRAGMENT(relground, m) {
  m.def("topk_select(Tensor scores, int k, Tensor? valid=None) -> (Tensor values, Tensor indices)");
}
