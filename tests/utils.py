"""Shared test helpers: device parametrisation, tolerances, paths to the real data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# The real annotations live beside the checkout (../shared/data); RELGROUND_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("RELGROUND_SHARED_DATA", REPO.parent / "shared" / "data"))

needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")


def cpu_and_cuda():
    """Parametrise over devices; the CUDA case carries the ``needs_cuda`` mark (skipped without a GPU)."""
    return ("cpu", pytest.param("cuda", marks=pytest.mark.needs_cuda))


# Forward tolerances per dtype (atol, rtol), as in torchvision's test_ops.
TOLERANCES = {
    torch.float64: (1e-7, 1e-7),
    torch.float32: (1e-5, 1e-5),
    torch.float16: (5e-3, 5e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual, expected, dtype=None):
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected.to(actual.dtype), atol=atol, rtol=rtol, equal_nan=True)
