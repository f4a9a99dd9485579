// The pybind11 module relground._C. It only reports build facts: the ops themselves are
// reached through the PyTorch dispatcher (torch.ops.relground.*), registered in csrc/ops,
// csrc/cpu and kernels/.
#include <torch/extension.h>

#include <string>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef WITH_CUDA
  info["cuda_compiled"] = true;
  info["cuda_runtime_version"] = CUDART_VERSION;
#else
  info["cuda_compiled"] = false;
  info["cuda_runtime_version"] = pybind11::none();
#endif
  info["cuda_arch_list"] = std::string(RELGROUND_CUDA_ARCH_LIST);
  info["torch_version"] = std::string(TORCH_VERSION);
#ifdef _OPENMP
  info["openmp"] = true;
#else
  info["openmp"] = false;
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "relground native ops (registered with the PyTorch dispatcher as torch.ops.relground.*)";
  m.def("build_info", &build_info, "Facts about how relground._C was built.");
}
