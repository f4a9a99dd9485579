// Argument checks shared by the host functions of every op. Messages name the op and the
// argument so a user can tell which input is wrong without reading C++.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#define RELGROUND_CHECK_ARG(cond, op, ...) TORCH_CHECK(cond, "relground.ops.", op, ": ", __VA_ARGS__)

namespace relground {

inline void check_rank(const at::Tensor& t, const char* op, const char* name, int64_t rank) {
  RELGROUND_CHECK_ARG(t.dim() == rank, op, "`", name, "` must have ", rank, " dimensions, got shape ", t.sizes());
}

inline void check_last_dim(const at::Tensor& t, const char* op, const char* name, int64_t size) {
  RELGROUND_CHECK_ARG(t.dim() >= 1 && t.size(-1) == size, op, "`", name, "` must have last dimension ", size,
                      ", got shape ", t.sizes());
}

inline void check_floating(const at::Tensor& t, const char* op, const char* name) {
  RELGROUND_CHECK_ARG(at::isFloatingType(t.scalar_type()), op, "`", name,
                      "` must be a floating-point tensor, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                              const char* name_b) {
  RELGROUND_CHECK_ARG(a.device() == b.device(), op, "`", name_a, "` is on ", a.device(), " but `", name_b,
                      "` is on ", b.device(), "; move both to the same device");
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* op, const char* name_a,
                             const char* name_b) {
  RELGROUND_CHECK_ARG(a.scalar_type() == b.scalar_type(), op, "`", name_a, "` has dtype ", a.scalar_type(),
                      " but `", name_b, "` has dtype ", b.scalar_type());
}

inline void check_device(const at::Tensor& t, const char* op, const char* name, c10::DeviceType type) {
  RELGROUND_CHECK_ARG(t.device().type() == type, op, "`", name, "` must be a ", c10::DeviceTypeName(type),
                      " tensor here, got ", t.device());
}

}  // namespace relground
