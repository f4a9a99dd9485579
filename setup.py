"""Builds the one native extension, ``relground._C``.

CPU kernels (``csrc/**/*.cpp``) are always compiled. CUDA kernels (``kernels/*.cu``) are
compiled when a CUDA toolkit is found or ``FORCE_CUDA=1`` (compile-only works without a GPU).

Switches (environment variables):
  FORCE_CUDA=1        build the CUDA kernels even when no GPU is visible.
  FORCE_ONLY_CPU=1    never build the CUDA kernels (fast local iteration).
  TORCH_CUDA_ARCH_LIST  CUDA targets, default "9.0" (H100/H200) plus PTX for newer cards.
  DEBUG=1             -O0 -g.
  MAX_JOBS            ninja parallelism (torch's cpp_extension reads it).
  RELGROUND_SKIP_EXT=1  declare no extension (used by scripts/setup.sh after an in-place build).
"""
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


# torch's cpp_extension reads CUDA_HOME at import time, so it must be set first.
if not _flag("FORCE_ONLY_CPU") and "CUDA_HOME" not in os.environ and os.path.isdir(DEFAULT_CUDA_HOME):
    if not os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = DEFAULT_CUDA_HOME
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0+PTX")

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _pip_cuda_include_dirs():
    """CUDA library headers (cusparse.h, ...) ship in the pip ``nvidia/cu13/include`` folders."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = os.path.join(entry, sub)
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def make_extension():
    with_cuda = not _flag("FORCE_ONLY_CPU") and (_flag("FORCE_CUDA") or CUDA_HOME is not None)
    if with_cuda and (CUDA_HOME is None or torch.version.cuda is None):
        if _flag("FORCE_CUDA"):
            raise RuntimeError(
                "FORCE_CUDA=1 but no usable CUDA toolkit was found (CUDA_HOME=%r, torch.version.cuda=%r); "
                "set CUDA_HOME to the toolkit folder, e.g. /usr/local/cuda-13.0" % (CUDA_HOME, torch.version.cuda)
            )
        with_cuda = False

    sources = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "") if with_cuda else ""
    define_macros = [("RELGROUND_CUDA_ARCH_LIST", '"%s"' % arch_list)]
    opt = ["-O0", "-g"] if _flag("DEBUG") else ["-O3"]
    extra_compile_args = {"cxx": opt + ["-std=c++20", "-fopenmp"]}
    extra_link_args = ["-fopenmp"]
    ext_cls = CppExtension
    if with_cuda:
        ext_cls = CUDAExtension
        sources += sorted(glob.glob(os.path.join("kernels", "*.cu")))
        define_macros.append(("WITH_CUDA", None))
        include_dirs += _pip_cuda_include_dirs()
        extra_compile_args["nvcc"] = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"]
    print(f"relground: building relground._C with_cuda={with_cuda} arch={arch_list!r} sources={len(sources)}")
    return ext_cls(
        "relground._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )


setup(
    # The YAML configs ship inside the package as relground.configs (read by relground.config.find_config), so
    # `relground demo` and `--config synthetic.yaml` work from a wheel as from the checkout.
    packages=find_packages(include=["relground", "relground.*"]) + ["relground.configs"],
    package_dir={"relground.configs": "configs"},
    package_data={"relground.configs": ["*.yaml"]},
    # scripts/setup.sh builds the extension in place first (incremental, ./build) and then registers the
    # editable package with RELGROUND_SKIP_EXT=1, so that a re-run does not recompile everything.
    ext_modules=[] if _flag("RELGROUND_SKIP_EXT") else [make_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
