"""Builds the one native extension, ``relground._C``.

CPU kernels (``csrc/**/*.cpp``) are always compiled. CUDA kernels (``kernels/*.cu``) are
compiled when a CUDA toolkit is found or ``FORCE_CUDA=1`` (compile-only works without a GPU).

Switches (environment variables):
  FORCE_CUDA=1        build the CUDA kernels even when no GPU is visible.
  FORCE_ONLY_CPU=1    never build the CUDA kernels (fast local iteration).
  TORCH_CUDA_ARCH_LIST  CUDA targets, e.g. "8.9" or "8.0;9.0+PTX". Unset: the visible GPUs' own architectures,
                      or without a GPU torch's own wheel list plus PTX ("7.5;8.0;8.6;9.0;10.0;12.0+PTX" for
                      torch 2.14 cu130; relground/ops/_cuda_arch.py).
  DEBUG=1             -O0 -g.
  MAX_JOBS            ninja parallelism (torch's cpp_extension reads it).
  RELGROUND_SKIP_EXT=1  declare no extension (used by scripts/setup.sh after an in-place build).
  RELGROUND_NO_LOCAL_VERSION=1  version without the +pt<XY><cu<XYZ>|cpu> label.
  RELGROUND_ALLOW_ISOLATED_BUILD=1  build even inside an isolated build environment (its torch must be the
                      one you will run).

The extension is compiled against the torch installed in the environment that runs this script, so build
without build isolation: ``pip install --no-build-isolation .`` (docs/install.md). The version carries a
local label naming that torch and CUDA, as pytorch_scatter's wheels: ``0.1.0+pt214cu130``, ``0.1.0+pt213cpu``.
"""
import glob
import os
import re
import shutil
import sys
import tempfile

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_HOME = "/usr/local/cuda-13.0"
NO_ISOLATION_HINT = (
    "Install torch first (the one you will run relground with), then build against it without build isolation:\n"
    "    pip install --no-build-isolation .          (or -e . for a checkout; wheels: bash scripts/build_wheel.sh)\n"
    "See docs/install.md."
)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _fail(message: str):
    """Stops the build with ``message`` (no traceback: pip and build show it as the backend's error)."""
    sys.stderr.write("\nrelground setup.py: error: " + message + "\n\n")
    raise SystemExit(1)


def _isolated_build_env(paths) -> str | None:
    """The isolated build environment among ``paths`` (sys.prefix, PYTHONPATH, torch's folder), if any.

    pip builds in a temporary ``pip-build-env-*`` folder: a venv there (pip >= 25.3) or, before, ``normal``
    and ``overlay`` prefixes reached through PYTHONPATH's sitecustomize; ``python -m build`` builds in a
    temporary ``build-env-*`` venv; uv in ``.../builds-v0/.tmp*``. Their torch is not the user's.
    """
    tmp = os.path.realpath(tempfile.gettempdir())
    for path in paths:
        if not path:
            continue
        real = os.path.realpath(path)
        parts = real.replace("\\", "/").split("/")
        if any(part.startswith("pip-build-env-") for part in parts) or "/builds-v0/" in real.replace("\\", "/"):
            return path
        rel = os.path.relpath(real, tmp)
        if not rel.startswith("..") and rel.split(os.sep)[0].startswith("build-env-"):
            return path
    return None


# pyproject.toml's `license = "MIT"` (a PEP 639 expression) needs setuptools >= 77; older ones fail obscurely.
try:
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        _fail(
            f"setuptools {setuptools.__version__} is too old for pyproject.toml (PEP 639 license); without build "
            "isolation the environment's own setuptools builds: pip install 'setuptools>=77' wheel ninja"
        )
except ValueError:  # pragma: no cover - an unparsable development version
    pass

# --- the torch to build against: the one installed where relground will run ------------------------------------
_isolated = _isolated_build_env([sys.prefix] + os.environ.get("PYTHONPATH", "").split(os.pathsep))
try:
    import torch  # noqa: E402
except ImportError as exc:
    if _isolated:
        _fail(
            f"torch is not importable inside the isolated build environment ({_isolated}). relground is a C++/CUDA "
            "extension of torch and must be compiled against the torch it will run with, which build isolation "
            "hides.\n" + NO_ISOLATION_HINT
        )
    _fail(f"torch is required to build relground and is not installed ({exc}).\n" + NO_ISOLATION_HINT)
_isolated = _isolated or _isolated_build_env([os.path.dirname(torch.__file__)])
if _isolated and not _flag("RELGROUND_ALLOW_ISOLATED_BUILD"):
    _fail(
        f"this build runs in an isolated build environment ({_isolated}) with its own torch {torch.__version__} "
        f"({torch.__file__}), not the torch that will import relground: the extension would not fit that one "
        "(another version or C++ ABI). RELGROUND_ALLOW_ISOLATED_BUILD=1 builds anyway, for a build environment "
        "that pins the very torch you will run.\n" + NO_ISOLATION_HINT
    )


def _find_cuda_toolkit() -> str | None:
    """A CUDA toolkit folder (bin/nvcc and include/cuda_runtime_api.h): nvcc on PATH, /usr/local/cuda, 13.0.

    torch's own search takes the parent of whatever `nvcc` is on PATH, which on the project machines is a
    wrapper script in /usr/local/bin (CUDA_HOME=/usr/local, no headers): look for a real toolkit instead.
    """
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    for home in candidates + ["/usr/local/cuda", DEFAULT_CUDA_HOME]:
        if os.path.isfile(os.path.join(home, "bin", "nvcc")) and os.path.isfile(
            os.path.join(home, "include", "cuda_runtime_api.h")
        ):
            return home
    return None


# torch's cpp_extension reads CUDA_HOME at import time, so it must be set first.
if not _flag("FORCE_ONLY_CPU") and not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
    _toolkit = _find_cuda_toolkit()
    if _toolkit:
        os.environ["CUDA_HOME"] = _toolkit


def _load_cuda_arch():
    """relground/ops/_cuda_arch.py, loaded by path: relground itself is not importable before it is built."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_relground_cuda_arch", os.path.join(ROOT, "relground", "ops",
                                                                                         "_cuda_arch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def choose_cuda_arch_list() -> str:
    """TORCH_CUDA_ARCH_LIST when set; else the visible GPUs (a build for this machine's card); else torch's own
    wheel list plus PTX (a build without a GPU: CI, wheels). Exported so that torch's cpp_extension uses it."""
    cuda_arch = _load_cuda_arch()
    visible = []
    if not os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() and torch.cuda.is_available():
        visible = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    torch_flags = torch._C._cuda_getArchFlags() if hasattr(torch._C, "_cuda_getArchFlags") else ""
    arch_list, why = cuda_arch.default_arch_list(os.environ.get("TORCH_CUDA_ARCH_LIST"), visible, torch_flags)
    cuda_arch.parse_arch_list(arch_list)  # a malformed list stops here, not deep inside nvcc's flags
    print(f"relground: CUDA architectures {arch_list} ({why})")
    return arch_list


from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def _with_cuda() -> bool:
    """Whether the CUDA kernels are built (a toolkit is found or FORCE_CUDA=1, and FORCE_ONLY_CPU is unset)."""
    with_cuda = not _flag("FORCE_ONLY_CPU") and (_flag("FORCE_CUDA") or CUDA_HOME is not None)
    if with_cuda and (CUDA_HOME is None or torch.version.cuda is None):
        if _flag("FORCE_CUDA"):
            raise RuntimeError(
                "FORCE_CUDA=1 but no usable CUDA toolkit was found (CUDA_HOME=%r, torch.version.cuda=%r); "
                "set CUDA_HOME to the toolkit folder, e.g. /usr/local/cuda-13.0" % (CUDA_HOME, torch.version.cuda)
            )
        with_cuda = False
    return with_cuda


def _base_version() -> str:
    """``relground.__version__`` read from the source (the package cannot be imported before it is built)."""
    with open(os.path.join(ROOT, "relground", "__init__.py"), encoding="utf-8") as f:
        match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", f.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError("relground/__init__.py has no __version__ = \"...\" line")
    return match.group(1)


def local_version_label(torch_version: str, cuda_version: str | None, with_cuda: bool) -> str:
    """The PEP 440 local label naming the torch and CUDA, as pytorch_scatter's wheels: ``pt214cu130``, ``pt213cpu``.

    ``ptXY`` is torch's major and minor version (the extension fits any patch release of it); ``cuXYZ`` is the
    CUDA version of torch when the CUDA kernels are built, ``cpu`` when they are not.
    """
    major, minor = re.match(r"(\d+)\.(\d+)", torch_version).groups()
    device = "cu" + cuda_version.replace(".", "") if with_cuda and cuda_version else "cpu"
    return f"pt{major}{minor}{device}"


def package_version(with_cuda: bool) -> str:
    if _flag("RELGROUND_NO_LOCAL_VERSION"):  # e.g. for an index that refuses local versions
        return _base_version()
    return _base_version() + "+" + local_version_label(torch.__version__, torch.version.cuda, with_cuda)


def _pip_cuda_include_dirs():
    """CUDA library headers (cusparse.h, ...) ship in the pip ``nvidia/cu13/include`` folders."""
    dirs = []
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include"):
            d = os.path.join(entry, sub)
            if os.path.isdir(d) and d not in dirs:
                dirs.append(d)
    return dirs


def make_extension(with_cuda: bool):
    # csrc/cudasim is the CPU CUDA-semantics runtime's (scripts/build_cudasim.py), not part of relground._C.
    sources = sorted(p for p in glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True)
                     if not p.startswith(os.path.join("csrc", "cudasim") + os.sep))
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
        # The toolkit's headers first (cuda_runtime_api.h needs its crt/); the pip folders add what it lacks.
        include_dirs += [os.path.join(CUDA_HOME, "include")] + _pip_cuda_include_dirs()
        # -fmad=false: no contraction of a * b + c into one FMA, so that the IoU, the R-CNN deltas and the sample
        # positions round as in the CPU kernels (box_math.h; tests/cudasim checks the kernels bit for bit on the
        # CPU). These kernels are bound by memory, not by arithmetic.
        extra_compile_args["nvcc"] = opt + ["-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "-fmad=false"]
    print(f"relground: building relground._C with_cuda={with_cuda} arch={arch_list!r} sources={len(sources)}")
    return ext_cls(
        "relground._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args=extra_compile_args,
        extra_link_args=extra_link_args,
    )


WITH_CUDA = _with_cuda()
if WITH_CUDA:
    os.environ["TORCH_CUDA_ARCH_LIST"] = choose_cuda_arch_list()
VERSION = package_version(WITH_CUDA)
print(f"relground: version {VERSION} against torch {torch.__version__} ({torch.__file__})")

setup(
    # The version is dynamic (pyproject.toml): relground.__version__ plus the torch/CUDA label, e.g. 0.1.0+pt214cu130.
    version=VERSION,
    # The YAML configs ship inside the package as relground.configs (read by relground.config.find_config), so
    # `relground demo` and `--config synthetic.yaml` work from a wheel as from the checkout.
    packages=find_packages(include=["relground", "relground.*"]) + ["relground.configs"],
    package_dir={"relground.configs": "configs"},
    package_data={"relground.configs": ["*.yaml"]},
    # scripts/setup.sh builds the extension in place first (incremental, ./build) and then registers the
    # editable package with RELGROUND_SKIP_EXT=1, so that a re-run does not recompile everything.
    ext_modules=[] if _flag("RELGROUND_SKIP_EXT") else [make_extension(WITH_CUDA)],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
