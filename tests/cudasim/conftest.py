"""The CUDA kernels built for the CPU CUDA-semantics runtime (scripts/build_cudasim.py), loaded once per session.

RELGROUND_CUDASIM_LIB=path uses an already built library (scripts/sanitize.sh, scripts/inject_kernel_bugs.py);
RELGROUND_CUDASIM=0 skips these tests (e.g. a machine without g++). Otherwise the library is built, or found in the
build/cudasim cache, and a build failure is a test error, not a skip.
"""
from __future__ import annotations

import importlib.util
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _builder():
    spec = importlib.util.spec_from_file_location("build_cudasim", ROOT / "scripts" / "build_cudasim.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def cudasim():
    """``torch.ops.relground_cudasim``: the kernels of kernels/*.cu, run on CPU tensors."""
    if os.environ.get("RELGROUND_CUDASIM", "1") == "0":
        pytest.skip("RELGROUND_CUDASIM=0")
    lib = os.environ.get("RELGROUND_CUDASIM_LIB") or _builder().build()
    if not hasattr(torch.ops.relground_cudasim, "_selftest"):
        torch.ops.load_library(lib)
    return torch.ops.relground_cudasim
